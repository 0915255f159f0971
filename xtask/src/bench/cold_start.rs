//! Scenario 5: cold start and binary size of each function binary.
//!
//! Each binary is started as Lambda would start it, with
//! `AWS_LAMBDA_RUNTIME_API` pointing at [`Emulator`]; init ends when it first
//! asks for an event. The same is done for `bench-hello`, a function with
//! nothing but the runtime, so the ratio says what our init code adds on this
//! machine. Functions that read a secret at init get it from the emulator,
//! which answers at once, and the database settings are a URL (no secret), so
//! the figure excludes the network as the target requires.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    emulator::{Emulator, RuntimeCall},
    table::{percentile, Quantity, RowBuilder},
    Bench, Binaries,
};

const INIT_TARGET_MS: f64 = 50.0;
const SIZE_TARGET_MB: f64 = 8.0;

/// The secrets functions may read at init, served by the emulator.
fn secrets() -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(
        "bench/kommo".to_string(),
        serde_json::json!({
            "base_url": "http://127.0.0.1:9",
            "access_token": "bench-access-token",
            "webhook_token": "bench-webhook-token",
            "account_id": 31_361_463,
        })
        .to_string(),
    );
    m.insert(
        "bench/zoho".to_string(),
        serde_json::json!({
            "client_id": "bench",
            "client_secret": "bench",
            "refresh_token": "bench",
            "accounts_url": "http://127.0.0.1:9",
            "api_domain": "http://127.0.0.1:9",
        })
        .to_string(),
    );
    m.insert(
        "bench/staff-jwt".to_string(),
        // The functions refuse to start with a key under 32 bytes or no issuer/audience.
        serde_json::json!({
            "hs256_secret": "bench-staff-jwt-key-of-at-least-32-bytes",
            "issuer": "bench",
            "audience": "bench",
        })
        .to_string(),
    );
    m
}

/// Environment every function reads at init. Queue URLs only need to be
/// well formed: nothing is sent before the first event.
fn function_env(db_url: &str, emu: &Emulator, name: &str) -> Vec<(String, String)> {
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        kv("AWS_LAMBDA_RUNTIME_API", &emu.runtime_api()),
        kv("AWS_ENDPOINT_URL_SECRETS_MANAGER", &emu.secrets_endpoint()),
        kv("AWS_LAMBDA_FUNCTION_NAME", name),
        kv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        kv("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        kv("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        kv("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        kv("DATABASE_URL", db_url),
        kv("KOMMO_SECRET_ID", "bench/kommo"),
        kv("ZOHO_SECRET_ID", "bench/zoho"),
        kv("STAFF_JWT_SECRET_ID", "bench/staff-jwt"),
        kv(
            "KOMMO_EVENTS_QUEUE_URL",
            "http://127.0.0.1:1/000000000000/kommo-events",
        ),
        kv(
            "FULL_REFRESH_QUEUE_URL",
            "http://127.0.0.1:1/000000000000/full-refresh",
        ),
    ]
}

/// Starts `bin` once and returns the time until it asked for an event.
async fn one_start(emu: &mut Emulator, bin: &Path, env: &[(String, String)]) -> Result<Duration> {
    emu.clear();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Region and dummy credentials, as a deployed function has them from Lambda.
    for (k, v) in std::env::vars() {
        if k.starts_with("AWS_")
            && !k.starts_with("AWS_LAMBDA_")
            && !env.iter().any(|(e, _)| *e == k)
        {
            cmd.env(k, v);
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let outcome = tokio::select! {
        call = emu.calls.recv() => match call {
            Some(RuntimeCall::Next(at)) => Ok(at.saturating_duration_since(started)),
            Some(RuntimeCall::InitError(body)) => Err(anyhow::anyhow!("init error: {body}")),
            None => Err(anyhow::anyhow!("the runtime emulator stopped")),
        },
        status = child.wait() => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            let tail: String = err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(anyhow::anyhow!("exited ({}) before asking for an event:\n{tail}", status.map(|s| s.to_string()).unwrap_or_default()))
        }
        _ = tokio::time::sleep(Duration::from_secs(20)) => Err(anyhow::anyhow!("did not ask for an event within 20 s")),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    outcome.with_context(|| format!("cold start of {}", bin.display()))
}

/// Median and worst init time over `runs` starts, after one unmeasured start
/// so the first run does not also pay for reading the file from disk.
async fn measure(
    emu: &mut Emulator,
    bin: &Path,
    env: &[(String, String)],
    runs: usize,
) -> Result<(f64, f64)> {
    one_start(emu, bin, env).await?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        ms.push(one_start(emu, bin, env).await?.as_secs_f64() * 1000.0);
    }
    Ok((
        percentile(&ms, 50.0),
        ms.iter().copied().fold(0.0, f64::max),
    ))
}

fn size_mb(path: &Path) -> Result<f64> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    Ok(len as f64 / 1_000_000.0)
}

pub async fn run(b: &mut Bench, bins: &Binaries) -> Result<()> {
    let runs = b.sizes.cold_starts;
    let db = testkit::TestDb::new().await;
    let mut emu = Emulator::start(secrets()).await?;
    let judged_size = b.judged();

    let hello: &PathBuf = &bins.hello;
    let hello_env = function_env(&db.url, &emu, "bench-hello");
    let (hello_p50, hello_max) = measure(&mut emu, hello, &hello_env, runs).await?;
    let hello_mb = size_mb(hello)?;
    if bins.functions.is_empty() {
        bail!("no function binaries were built");
    }
    for (name, path) in &bins.functions {
        let env = function_env(&db.url, &emu, name);
        let (p50, max) = measure(&mut emu, path, &env, runs).await?;
        b.push(
            RowBuilder::new(
                "cold start",
                format!("{name}: init p50"),
                Quantity::new(p50, "ms"),
            )
            .baseline("bench-hello p50", Quantity::new(hello_p50, "ms"))
            .target(
                format!("< {INIT_TARGET_MS:.0} ms"),
                p50 < INIT_TARGET_MS,
                b.judged(),
            )
            .detail(format!(
                "{runs} starts after a warm-up start; worst {max:.1} ms (bench-hello worst {hello_max:.1} ms); \
                 time from spawn to the first GET /runtime/invocation/next"
            ))
            .build(),
        );
        let mb = size_mb(path)?;
        b.push(
            RowBuilder::new(
                "binary size",
                format!("{name}{}", if b.release { "" } else { " (debug)" }),
                Quantity::new(mb, "MB"),
            )
            .baseline("bench-hello", Quantity::new(hello_mb, "MB"))
            .target(
                format!("< {SIZE_TARGET_MB:.0} MB"),
                mb < SIZE_TARGET_MB,
                judged_size,
            )
            .detail(format!(
                "{} bytes{}",
                std::fs::metadata(path)?.len(),
                if b.release {
                    ", release profile (fat LTO, opt-level s, stripped)"
                } else {
                    ", debug build: not stripped, size not judged"
                }
            ))
            .build(),
        );
    }
    Ok(())
}
