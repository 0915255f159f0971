//! `cargo xtask bench`: our performance figures next to their baselines and
//! limits, measured in the same run, in one table (also written as JSON to
//! `target/bench/latest.json`). `docs/benchmarks.md` explains each row.
//!
//! The full run measures release builds: a debug `cargo xtask bench` builds
//! the release binaries and hands over to the release build of itself, so
//! the code measured in-process is optimised too. `--smoke` runs small sizes
//! on the debug build for CI, reusing what the test build compiled.

mod cold_start;
mod emulator;
mod kommo_budget;
mod lockstep;
mod outbox;
mod processor;
mod receiver;
mod refresh;
mod table;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::stack;
use table::{Quantity, Report, Row, RowBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    Receiver,
    Processor,
    Outbox,
    Refresh,
    ColdStart,
    KommoBudget,
    Lockstep,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Small sizes on the debug build, for CI (well under 2 minutes). Targets are shown but not judged.
    #[arg(long)]
    pub smoke: bool,
    /// Full sizes on the debug build, to try the scenarios without a release build. Not judged.
    #[arg(long, conflicts_with = "smoke")]
    pub debug: bool,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// Webhook receiver: deliveries to time (default 10,000; smoke 500).
    #[arg(long)]
    pub deliveries: Option<usize>,
    /// Webhook processor: leads to ingest (default 3,000; smoke 200).
    #[arg(long)]
    pub leads: Option<usize>,
    /// Outbox drain: contact.upsert rows (default 10,000; smoke 300).
    #[arg(long)]
    pub outbox_rows: Option<usize>,
    /// Zoho lockstep: mixed changes to drain (default 10,000; smoke 500).
    #[arg(long)]
    pub lockstep_changes: Option<usize>,
    /// Zoho lockstep: in-step bookings to reconcile (default 50,000; smoke 2,000).
    #[arg(long)]
    pub reconcile_bookings: Option<usize>,
    /// Full refresh: leads the refresh imports (default 50,000; smoke 1,000); the sandbox also holds closed-lost ones.
    #[arg(long)]
    pub refresh_leads: Option<usize>,
    /// Full refresh: contacts in the Kommo sandbox (default 75,000, of which the leads link about 35,000; smoke 1,000).
    #[arg(long)]
    pub refresh_contacts: Option<usize>,
    /// Cold start: measured starts per binary (default 20; smoke 3).
    #[arg(long)]
    pub cold_starts: Option<usize>,
    /// Where to write the JSON table (default target/bench/latest.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one full refresh as the measured child process.
    #[arg(long, hide = true)]
    pub child_refresh: Option<String>,
}

/// How big each scenario runs.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub deliveries: usize,
    pub leads: usize,
    pub outbox_rows: usize,
    pub lockstep_changes: usize,
    pub reconcile_bookings: usize,
    pub refresh_leads: usize,
    pub refresh_contacts: usize,
    pub cold_starts: usize,
}

impl Sizes {
    fn from_args(a: &BenchArgs) -> Self {
        let pick = |v: Option<usize>, full: usize, smoke: usize| {
            v.unwrap_or(if a.smoke { smoke } else { full }).max(1)
        };
        Sizes {
            deliveries: pick(a.deliveries, 10_000, 500),
            leads: pick(a.leads, 3_000, 200),
            outbox_rows: pick(a.outbox_rows, 10_000, 300),
            lockstep_changes: pick(a.lockstep_changes, 10_000, 500),
            reconcile_bookings: pick(a.reconcile_bookings, 50_000, 2_000),
            refresh_leads: pick(a.refresh_leads, 50_000, 1_000),
            refresh_contacts: pick(a.refresh_contacts, 75_000, 1_000),
            cold_starts: pick(a.cold_starts, 20, 3),
        }
    }
}

/// Shared state of a run: sizes and the rows gathered so far.
pub struct Bench {
    pub smoke: bool,
    pub release: bool,
    pub sizes: Sizes,
    rows: Vec<Row>,
}

impl Bench {
    pub fn push(&mut self, row: Row) {
        println!(
            "bench: {} / {}: {:.3} {}",
            row.scenario, row.figure, row.value.value, row.value.unit
        );
        self.rows.push(row);
    }

    /// Targets are about full sizes on release builds; anything else is
    /// shown for information only.
    pub fn judged(&self) -> bool {
        self.release && !self.smoke
    }
}

/// The function binaries and the baseline binary, as built for this run.
pub struct Binaries {
    pub functions: BTreeMap<String, PathBuf>,
    pub hello: PathBuf,
}

/// The release build: everything in one cargo call, so dependencies are
/// compiled once, with one feature set, for the functions and for the
/// release xtask that measures in-process.
const RELEASE_PACKAGES: &[&str] = &[
    "xtask",
    "webhook",
    "full-refresh",
    "outbox-drain",
    "bench-hello",
];

fn build(release: bool) -> Result<Binaries> {
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--locked",
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
        for p in RELEASE_PACKAGES {
            cmd.args(["-p", p]);
        }
    } else {
        // With the feature floor in shared/Cargo.toml this resolves the
        // features `cargo test --workspace` does, so the smoke run reuses the
        // test build. xtask is already built: it is running.
        cmd.args(["--workspace", "--exclude", "xtask"]);
    }
    eprintln!(
        "xtask: building the {} binaries…",
        if release { "release" } else { "debug" }
    );
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    let functions_dir = crate::root().join("functions");
    let mut functions = BTreeMap::new();
    let mut hello = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "bin"));
        let (Some(exe), Some(name), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        if !is_bin {
            continue;
        }
        if name == "bench-hello" {
            hello = Some(PathBuf::from(exe));
        } else if Path::new(manifest).starts_with(&functions_dir) {
            functions.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(Binaries {
        functions,
        hello: hello.context("cargo did not report the bench-hello binary")?,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, load average at start {load}")
}

fn json_path(args: &BenchArgs) -> PathBuf {
    args.json
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("bench").join("latest.json"))
}

/// Points the process at PostgreSQL and moto, starting throwaway ones when
/// `DATABASE_URL` / `AWS_ENDPOINT_URL` are not set. Must run before any
/// thread is started, since it sets environment variables.
fn prepare_stack() -> Result<()> {
    let work = crate::workdir()?;
    let pg = stack::postgres(&work)?;
    std::env::set_var("DATABASE_URL", &pg.admin_url);
    let endpoint = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) => {
            eprintln!("xtask: using the AWS endpoint at AWS_ENDPOINT_URL");
            url
        }
        Err(_) => stack::moto(&work)?,
    };
    for (k, v) in stack::aws_env(&endpoint) {
        if std::env::var_os(&k).is_none() || k == "AWS_ENDPOINT_URL" {
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

/// `cargo xtask bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(spec) = &args.child_refresh {
        return refresh::child_main(spec);
    }
    let release = !args.smoke && !args.debug;
    if release && cfg!(debug_assertions) {
        return hand_over_to_release();
    }
    prepare_stack()?;
    let bins = build(release)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = rt.block_on(run_scenarios(&args, release, &bins));
    drop(rt);
    let report = report?;
    println!("\n{}", report.render());
    let path = json_path(&args);
    report.write_json(&path)?;
    println!("bench: table written to {}", path.display());
    let failed = report.failed();
    if !failed.is_empty() {
        let names: Vec<String> = failed
            .iter()
            .map(|r| format!("{} / {}", r.scenario, r.figure))
            .collect();
        bail!("{} row(s) failed: {}", failed.len(), names.join("; "));
    }
    Ok(())
}

/// The smoke benchmark, for `cargo xtask test`: small sizes on the debug
/// build, against the PostgreSQL admin URL and AWS settings given.
pub fn run_smoke(admin_url: &str, aws_env: &[(String, String)]) -> Result<()> {
    std::env::set_var("DATABASE_URL", admin_url);
    for (k, v) in aws_env {
        std::env::set_var(k, v);
    }
    run(BenchArgs {
        smoke: true,
        ..BenchArgs::default()
    })
}

/// Builds everything in release and runs the release build of xtask with
/// the same arguments; its stack and cleanup are its own.
fn hand_over_to_release() -> Result<()> {
    build(true)?;
    let exe = crate::target_dir().join("release").join("xtask");
    eprintln!("xtask: running the release build of the benchmark");
    let status = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .status()
        .with_context(|| format!("run {}", exe.display()))?;
    if !status.success() {
        bail!("the release benchmark failed ({status})");
    }
    Ok(())
}

async fn run_scenarios(args: &BenchArgs, release: bool, bins: &Binaries) -> Result<Report> {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let machine = machine();
    let t0 = Instant::now();
    let mut b = Bench {
        smoke: args.smoke,
        release,
        sizes: Sizes::from_args(args),
        rows: Vec::new(),
    };
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    for s in [
        Scenario::Receiver,
        Scenario::Processor,
        Scenario::Outbox,
        Scenario::Refresh,
        Scenario::ColdStart,
        Scenario::KommoBudget,
        Scenario::Lockstep,
    ] {
        if !wanted(s) {
            continue;
        }
        eprintln!("\nxtask: ── bench {s:?} ──");
        let result = match s {
            Scenario::Receiver => receiver::run(&mut b).await,
            Scenario::Processor => processor::run(&mut b).await,
            Scenario::Outbox => outbox::run(&mut b).await,
            Scenario::Refresh => refresh::run(&mut b).await,
            Scenario::ColdStart => cold_start::run(&mut b, bins).await,
            Scenario::KommoBudget => kommo_budget::run(&mut b).await,
            Scenario::Lockstep => lockstep::run(&mut b).await,
        };
        if let Err(e) = result {
            eprintln!("xtask: bench {s:?} failed: {e:#}");
            b.rows.push(
                RowBuilder::new(
                    format!("{s:?}"),
                    format!("error: {e}"),
                    Quantity::new(0.0, ""),
                )
                .target("runs to completion", false, true)
                .build(),
            );
        }
    }
    let report = Report {
        mode: if args.smoke { "smoke" } else { "full" }.into(),
        build: if release { "release" } else { "debug" }.into(),
        machine,
        started_at,
        wall_seconds: t0.elapsed().as_secs_f64(),
        rows: b.rows,
    };
    Ok(report)
}
