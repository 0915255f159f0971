//! Developer tasks, run as `cargo xtask <task>`.
//!
//! `test` is the one test command (CI runs it): it starts its own PostgreSQL
//! and moto server, runs formatting, lints, `cfn-lint`, the check that the
//! template, the function binaries and `samconfig.toml` agree, every test,
//! every sample event and every command `dev` prints through `cargo lambda
//! watch`, and the benchmark's smoke run, and stops what it started even when
//! a step fails.

mod bench;
mod demo;
mod deny;
mod deploy;
mod dev;
mod devstack;
mod env_file;
mod events;
mod features;
mod local;
mod stack;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the Kommo/Zoho integration"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Format check, clippy, every test and cfn-lint, against a throwaway PostgreSQL and moto.
    Test {
        /// Extra arguments passed to `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Applies the migrations to DATABASE_URL (or DB_SECRET_ID), as a deployment would.
    Migrate,
    /// Queues the deliveries kept as `rejected` in the last HOURS hours again, after a parser
    /// fix (DATABASE_URL or DB_SECRET_ID, and KOMMO_EVENTS_QUEUE_URL).
    ReplayRejected {
        #[arg(default_value_t = 24)]
        hours: u32,
    },
    /// Runs the whole story end to end against the sandboxes, prints a summary and exits.
    Demo,
    /// Invokes every sample event in `events/` with `cargo lambda invoke` and checks the responses.
    Events,
    /// Runs the whole system locally (PostgreSQL, moto, sandboxes, cargo lambda watch, SQS pumps,
    /// the one-minute schedule) until Ctrl-C.
    Dev {
        /// Port of `cargo lambda watch`.
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// Seconds between outbox-drain schedule ticks. AWS fires it every minute; locally
        /// a short tick shows a webhook reaching Zoho within seconds.
        #[arg(long, default_value_t = 5)]
        tick_seconds: u64,
        /// Leads in the Kommo sandbox.
        #[arg(long, default_value_t = 300)]
        leads: usize,
        /// Start everything but `cargo lambda watch`: run plain `cargo lambda watch` yourself
        /// (it reads `.env.example`, which names this stack's ports).
        #[arg(long)]
        no_watch: bool,
    },
    /// Performance figures next to their baselines and limits (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    scrub_cargo_run_env();
    let cli = Cli::parse();
    stack::install_signal_handler();
    let result = match cli.task {
        Task::Test { args } => test(&args),
        Task::Migrate => migrate(),
        Task::ReplayRejected { hours } => replay_rejected(hours),
        Task::Demo => demo::run(),
        Task::Events => events::run(),
        Task::Dev {
            port,
            tick_seconds,
            leads,
            no_watch,
        } => dev::run(dev::DevArgs {
            port,
            tick: std::time::Duration::from_secs(tick_seconds),
            leads,
            watch: !no_watch,
        }),
        Task::Bench(args) => bench::run(args),
    };
    stack::cleanup_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run` sets these for xtask itself. Inherited by the cargo calls
/// xtask makes (tests, `cargo lambda watch`, the bench build), they make
/// build scripts that watch the environment (ring's, through cc) rerun and
/// everything above them rebuild, so each call would undo the previous
/// one's cache. Runs first, before any thread exists.
fn scrub_cargo_run_env() {
    let names: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_BIN_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "LD_LIBRARY_PATH"
        })
        .collect();
    for k in names {
        std::env::remove_var(k);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory, as cargo itself picks it.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A full test run leaves about 2.5 GB in target/ (one dependency build, no
/// incremental caches under CI) and cargo-deny's install needs about 1 GB more
/// while it builds. Running out shows up as a rustc I/O error deep in the run;
/// say it up front instead.
fn warn_if_disk_is_short() {
    const NEEDED_KIB: u64 = 4 * 1024 * 1024;
    let target = target_dir();
    let probe = if target.exists() { target } else { root() };
    let free_kib = Command::new("df")
        .args(["-Pk"])
        .arg(&probe)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        });
    if let Some(free) = free_kib.filter(|free| *free < NEEDED_KIB) {
        eprintln!(
            "xtask: warning: only {:.1} GiB free at {}; a full test run needs about 4 GiB \
             (\"No space left on device\" from rustc means this)",
            free as f64 / (1024.0 * 1024.0),
            probe.display()
        );
    }
}

pub fn workdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("kommo-zoho-xtask");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\nxtask: ── {name} ──");
    let status = cmd.status().with_context(|| format!("start `{name}`"))?;
    if !status.success() {
        bail!("step `{name}` failed ({status})");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let cfn_lint = stack::ensure_pip_tool("cfn-lint", "cfn-lint")?;
    let work = workdir()?;
    if ci {
        // A CI clone builds once: incremental caches would only fill its disk
        // (about 2 GB). The cargo runs below inherit the setting.
        std::env::set_var("CARGO_INCREMENTAL", "0");
        let _ = std::fs::remove_dir_all(target_dir().join("debug").join("incremental"));
    }
    warn_if_disk_is_short();

    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cfn-lint template.yaml",
        Command::new(&cfn_lint)
            .current_dir(root())
            .arg("template.yaml"),
    )?;
    eprintln!("\nxtask: ── template.yaml, functions/* and samconfig.toml agree ──");
    deploy::check()?;
    eprintln!("\nxtask: ── one dependency build for every selection ──");
    features::check()?;
    step(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    deny::check()?;

    let pg = stack::postgres(&work)?;
    let moto = stack::moto(&work)?;
    let mut t = cargo();
    t.args(["test", "--workspace", "--locked"]);
    t.args(extra);
    t.env("DATABASE_URL", &pg.admin_url);
    for (k, v) in stack::aws_env(&moto) {
        t.env(k, v);
    }
    if ci {
        // Two cores: keep linking and the tests' own parallelism from starving each other.
        t.env("CARGO_BUILD_JOBS", "2");
    }
    step("cargo test", &mut t)?;

    // The same PostgreSQL and moto serve the two checks below; each makes
    // its own databases, queues and secrets.
    std::env::set_var("DATABASE_URL", &pg.admin_url);
    let aws_env = stack::aws_env(&moto);
    for (k, v) in &aws_env {
        std::env::set_var(k, v);
    }
    eprintln!("\nxtask: ── sample events and printed commands through cargo lambda watch ──");
    events::run()?;
    eprintln!("\nxtask: ── cargo xtask bench --smoke ──");
    bench::run_smoke(&pg.admin_url, &aws_env)?;
    eprintln!("\nxtask: all checks passed");
    Ok(())
}

fn replay_rejected(hours: u32) -> Result<()> {
    step(
        "replay-rejected",
        cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "shared",
                "--bin",
                "replay-rejected",
                "--",
            ])
            .arg(hours.to_string()),
    )
}

fn migrate() -> Result<()> {
    step(
        "migrate",
        cargo().args(["run", "--quiet", "-p", "shared", "--bin", "migrate"]),
    )
}
