//! `cargo xtask events`: every sample event in `events/` invoked with the
//! real `cargo lambda invoke` against the local system, and its answer
//! checked against what that event must produce.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    dev,
    devstack::wait_until,
    local::{LocalOptions, LocalSystem},
    root, stack,
};

/// What a sample event must produce, by file name.
fn expectation(file: &str) -> Option<(&'static str, Expect)> {
    let e = match file {
        "webhook-bad-token.json" => ("webhook", Expect::Status(401)),
        "webhook-contact-update.json" => ("webhook", Expect::Status(200)),
        "webhook-lead-status.json" => ("webhook", Expect::Status(200)),
        "webhook-manual-booking.json" => ("webhook", Expect::Status(201)),
        "webhook-processor-sqs.json" => ("webhook-processor", Expect::NoBatchFailures),
        "outbox-drain-schedule.json" | "outbox-drain-schedule-v2.json" => {
            ("outbox-drain", Expect::DrainedAll)
        }
        "outbox-drain-reconcile.json" => ("outbox-drain", Expect::Reconciled),
        "full-refresh-start.json" => ("full-refresh", Expect::Status(202)),
        "full-refresh-status.json" => ("full-refresh", Expect::StatusOneOf(&[200, 404])),
        "full-refresh-list.json" => ("full-refresh", Expect::Status(200)),
        "full-refresh-worker-sqs.json" => ("full-refresh-worker", Expect::NoBatchFailures),
        _ => return None,
    };
    Some(e)
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Status(u16),
    StatusOneOf(&'static [u16]),
    NoBatchFailures,
    /// A drain report that ran until the queue was empty (no `stopped` reason).
    DrainedAll,
    /// A reconcile report whose pass reached the end of the bookings.
    Reconciled,
}

fn check(expect: Expect, out: &Value) -> Result<(), String> {
    let status = out["statusCode"].as_u64().map(|s| s as u16);
    match expect {
        Expect::Status(want) if status == Some(want) => Ok(()),
        Expect::StatusOneOf(set) if status.is_some_and(|s| set.contains(&s)) => Ok(()),
        Expect::NoBatchFailures
            if out["batchItemFailures"]
                .as_array()
                .is_some_and(|a| a.is_empty()) =>
        {
            Ok(())
        }
        Expect::DrainedAll
            if out.get("errorType").is_none()
                && out.get("claimed").is_some()
                && out["stopped"].is_null() =>
        {
            Ok(())
        }
        Expect::Reconciled if out["mode"] == "reconcile" && out["complete"] == true => Ok(()),
        _ => Err(format!("expected {expect:?}, got {out}")),
    }
}

/// Invokes every file in `events/` through `cargo lambda watch` with `cargo lambda invoke`.
pub fn run() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // The schedule stays quiet: the drain's sample events do the draining.
        let sys = LocalSystem::start(LocalOptions::scripted(Duration::from_secs(3600))?).await?;
        let cargo_lambda = stack::ensure_pip_tool("cargo-lambda", "cargo-lambda")?;
        let files = sample_files()?;
        let mut failures = BTreeMap::new();
        for file in &files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let verdict = match expectation(name) {
                Some((function, expect)) => {
                    let verdict = invoke(&cargo_lambda, sys.port, function, file)?
                        .and_then(|v| check(expect, &v));
                    match &verdict {
                        Ok(()) => eprintln!("xtask: events/{name} → {function}: ok"),
                        Err(e) => eprintln!("xtask: events/{name} → {function}: FAILED: {e}"),
                    }
                    verdict
                }
                None => Err("no expectation: add one to xtask/src/events.rs".to_string()),
            };
            if let Err(e) = verdict {
                failures.insert(name.to_string(), e);
            }
        }
        if !failures.is_empty() {
            bail!(
                "{} sample event(s) did not produce the expected result: {:?}",
                failures.len(),
                failures.keys().collect::<Vec<_>>()
            );
        }
        eprintln!(
            "xtask: all {} sample events behave as expected",
            files.len()
        );
        run_printed_commands(&sys).await
    })
}

/// Runs every command `cargo xtask dev` prints, as pasted into a shell, against
/// this system; each must exit 0 (curl with `--fail-with-body` fails on an HTTP error).
async fn run_printed_commands(sys: &LocalSystem) -> Result<()> {
    let lead = sys.lead_for_banner("Events: printed commands")?;
    // The sample start event queued a refresh; the printed start would meet it and answer 409.
    let db = sys.dev.db().await?;
    refresh_finished(&db).await?;
    let mut failed = Vec::new();
    let mut count = 0;
    for line in dev::tries(sys, &lead).into_iter().flat_map(|t| t.commands) {
        count += 1;
        let out = Command::new("sh")
            .args(["-c", &line])
            .current_dir(root())
            .output()
            .context("run sh")?;
        let first = line.lines().next().unwrap_or_default();
        if out.status.success() {
            eprintln!("xtask: printed command ok: {first}");
        } else {
            eprintln!(
                "xtask: printed command FAILED ({}): {line}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            failed.push(first.to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of the commands `cargo xtask dev` prints failed: {failed:?}",
            failed.len()
        );
    }
    // The printed start queued one too; left queued, it would answer the next run's start.
    refresh_finished(&db).await?;
    eprintln!("xtask: all {count} commands that `cargo xtask dev` prints work");
    Ok(())
}

/// The JSON files in `events/`, sorted.
fn sample_files() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("events"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// The function's answer to the event in `file`, or why there is none; an
/// error only when `cargo lambda invoke` could not be run at all.
fn invoke(
    cargo_lambda: &Path,
    port: u16,
    function: &str,
    file: &Path,
) -> Result<Result<Value, String>> {
    let out = Command::new(cargo_lambda)
        .args([
            "lambda",
            "invoke",
            function,
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--data-file",
        ])
        .arg(file)
        .current_dir(root())
        .output()
        .context("run cargo lambda invoke")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Ok(Err(format!(
            "cargo lambda invoke failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(serde_json::from_str::<Value>(text.trim())
        .map_err(|e| format!("response is not JSON ({e}): {text}")))
}

/// Waits until no full refresh is queued or running.
async fn refresh_finished(db: &tokio_postgres::Client) -> Result<()> {
    let idle = wait_until(Duration::from_secs(300), || async {
        let active: i64 = db
            .query_one(
                "SELECT count(*) FROM kommo_import_runs WHERE status IN ('queued', 'running')",
                &[],
            )
            .await?
            .get(0);
        Ok(active == 0)
    })
    .await?;
    if !idle {
        bail!("a full refresh is still queued or running after five minutes");
    }
    Ok(())
}
