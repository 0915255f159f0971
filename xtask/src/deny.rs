//! `cargo deny check bans licenses sources` as a step of `cargo xtask test`:
//! the rules of `deny.toml` (one TLS stack, rustls on ring; no aws-lc; the
//! licences we accept; crates.io only) checked on every run.
//!
//! Advisories are left out: they need the RustSec database from GitHub, and
//! CI reaches only the package registries. Run `cargo deny check advisories`
//! by hand where GitHub is reachable.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, stack::which, step};

/// Installed when no cargo-deny is found. Pinned, so a release that changes
/// the `deny.toml` schema cannot break the test command unannounced.
const VERSION: &str = "0.20.2";

/// Names a cargo-deny binary to use instead of looking for one.
const OVERRIDE: &str = "CARGO_DENY";

pub fn check() -> Result<()> {
    let deny = binary()?;
    step(
        "cargo deny check bans licenses sources",
        Command::new(deny)
            .current_dir(root())
            .args(["--locked", "check", "bans", "licenses", "sources"]),
    )
}

/// `$CARGO_DENY`, else `cargo-deny` on PATH or in cargo's bin directory,
/// else a fresh `cargo install`.
fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(OVERRIDE) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{OVERRIDE}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let installed = cargo_bin().join("cargo-deny");
    if let Some(found) = which("cargo-deny").or_else(|| is_file(&installed)) {
        return Ok(found);
    }
    eprintln!(
        "xtask: `cargo-deny` is missing; installing cargo-deny {VERSION} with \
         `cargo install --locked` (a few minutes, once). Set {OVERRIDE} to use another binary."
    );
    let status = cargo()
        .args(["install", "--locked", "cargo-deny", "--version", VERSION])
        .status()
        .context("run cargo install")?;
    if !status.success() {
        bail!("`cargo install --locked cargo-deny --version {VERSION}` failed ({status}); install it yourself and retry");
    }
    which("cargo-deny")
        .or_else(|| is_file(&installed))
        .with_context(|| {
            format!(
                "installed cargo-deny but found it neither on PATH nor at {}",
                installed.display()
            )
        })
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else
/// `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("CARGO_INSTALL_ROOT")
        .or_else(|| std::env::var_os("CARGO_HOME"))
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cargo"))
        .join("bin")
}

fn is_file(path: &Path) -> Option<PathBuf> {
    path.is_file().then(|| path.to_path_buf())
}
