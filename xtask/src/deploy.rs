//! What `sam build` and `sam deploy` will do, checked without AWS: the
//! template's functions are exactly the workspace's function binaries
//! (each built by `cargo lambda build --release --bin <Binary>` from the
//! workspace root, as `bootstrap`), and `samconfig.toml` gives build and
//! deploy the same architecture. `template.yaml` is read line by line: the
//! few keys checked here sit at fixed places, and no YAML crate is needed.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{local::FUNCTIONS, root};

/// Checks the template, the workspace and `samconfig.toml` against each other.
pub fn check() -> Result<()> {
    let template = std::fs::read_to_string(root().join("template.yaml"))?;
    let declared = template_binaries(&template)?;
    let built = function_binaries()?;
    let expected: BTreeSet<String> = FUNCTIONS.iter().map(|s| s.to_string()).collect();
    if declared != built || built != expected {
        bail!(
            "template.yaml builds {declared:?}, functions/* define the binaries {built:?}, \
             and the local system serves {expected:?}: they must be the same five"
        );
    }
    let samconfig =
        std::fs::read_to_string(root().join("samconfig.toml")).context("read samconfig.toml")?;
    let arch = samconfig_architecture(&samconfig)?;
    eprintln!(
        "xtask: template.yaml builds exactly {} ({}); sam build and deploy both use {arch}",
        built.len(),
        built.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// `BuildProperties.Binary` of every `AWS::Serverless::Function`, after
/// checking each is built by cargo-lambda from the workspace root as `bootstrap`.
fn template_binaries(template: &str) -> Result<BTreeSet<String>> {
    for global in [
        "Handler: bootstrap",
        "CodeUri: ./",
        "Runtime: provided.al2023",
    ] {
        if !template.lines().any(|l| l.trim() == global) {
            bail!("template.yaml's Globals lack `{global}`");
        }
    }
    let mut binaries = BTreeSet::new();
    // Resources are the two-space-indented keys; their lines follow until the next.
    let mut resources: Vec<(String, Vec<&str>)> = Vec::new();
    for line in template.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 2 && line.trim_end().ends_with(':') && !line.trim().starts_with('#') {
            resources.push((line.trim().trim_end_matches(':').to_string(), Vec::new()));
        } else if indent > 2 {
            if let Some((_, lines)) = resources.last_mut() {
                lines.push(line.trim());
            }
        }
    }
    for (name, lines) in resources {
        if !lines.contains(&"Type: AWS::Serverless::Function") {
            continue;
        }
        if !lines.contains(&"BuildMethod: rust-cargolambda") {
            bail!("{name} is not built with BuildMethod: rust-cargolambda");
        }
        let binary = lines
            .iter()
            .find_map(|l| l.strip_prefix("Binary: "))
            .with_context(|| format!("{name} has no BuildProperties.Binary"))?;
        if !binaries.insert(binary.trim().to_string()) {
            bail!("two functions build the binary {binary}");
        }
    }
    Ok(binaries)
}

/// The binary targets of the packages under `functions/`, from `cargo metadata`.
fn function_binaries() -> Result<BTreeSet<String>> {
    let out = crate::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")?;
    let functions = root().join("functions");
    let mut bins = BTreeSet::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        let manifest = package["manifest_path"].as_str().unwrap_or_default();
        if !std::path::Path::new(manifest).starts_with(&functions) {
            continue;
        }
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                bins.insert(name.to_string());
            }
        }
    }
    Ok(bins)
}

/// The `Architecture=` override that `samconfig.toml` gives both `sam build`
/// and `sam deploy`; an error when either lacks it or they disagree.
fn samconfig_architecture(samconfig: &str) -> Result<String> {
    let mut section = "";
    let mut found: Vec<(&str, String)> = Vec::new();
    for line in samconfig.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some(rest) = line.strip_prefix("parameter_overrides") {
            let arch = rest
                .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .find_map(|w| w.strip_prefix("Architecture="));
            if let Some(arch) = arch {
                found.push((section, arch.to_string()));
            }
        }
    }
    let of = |s: &str| found.iter().find(|(sec, _)| *sec == s).map(|(_, a)| a);
    match (
        of("[default.build.parameters]"),
        of("[default.deploy.parameters]"),
    ) {
        (Some(b), Some(d)) if b == d && (b == "x86_64" || b == "arm64") => Ok(b.clone()),
        (b, d) => bail!(
            "samconfig.toml must give `Architecture=` to both [default.build.parameters] and \
             [default.deploy.parameters], the same arm64 or x86_64 (build {b:?}, deploy {d:?})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_workspace_and_samconfig_agree() {
        check().unwrap();
    }

    #[test]
    fn a_samconfig_whose_build_and_deploy_disagree_is_refused() {
        let text = "[default.build.parameters]\nparameter_overrides = \"Architecture=x86_64\"\n\
                    [default.deploy.parameters]\nparameter_overrides = \"Architecture=arm64\"\n";
        assert!(samconfig_architecture(text).is_err());
        let one = "[default.build.parameters]\nparameter_overrides = \"Architecture=x86_64\"\n";
        assert!(samconfig_architecture(one).is_err());
    }

    #[test]
    fn a_function_without_a_binary_is_refused() {
        let t = "Globals:\n  Function:\n    Handler: bootstrap\n    CodeUri: ./\n    \
                 Runtime: provided.al2023\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    \
                 Metadata:\n      BuildMethod: rust-cargolambda\n";
        let err = template_binaries(t).unwrap_err().to_string();
        assert!(err.contains("F has no BuildProperties.Binary"), "{err}");
    }
}
