//! Every build resolves one feature set. Cargo turns on a dependency's
//! features according to the packages a build selects, so `cargo build --bin
//! webhook` (and `cargo lambda watch`) would otherwise compile the whole
//! dependency graph a second time beside `cargo test --workspace`: minutes of
//! CPU and gigabytes that once filled CI's disk. The feature floor in
//! `shared/Cargo.toml` prevents it; this check keeps the floor complete.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

/// Package name and version → the features one build turns on.
type Features = BTreeMap<String, BTreeSet<String>>;

/// The selections the test command and the local system build with.
const SELECTIONS: [&[&str]; 5] = [
    &["-p", "webhook"],
    &["-p", "full-refresh"],
    &["-p", "outbox-drain"],
    &["-p", "xtask"],
    &["--workspace", "--exclude", "xtask"],
];

pub fn check() -> Result<()> {
    let workspace = resolve(&["--workspace", "-e", "normal,build,dev"])?;
    let mut missing = Vec::new();
    for selection in SELECTIONS {
        let args: Vec<&str> = selection
            .iter()
            .copied()
            .chain(["-e", "normal,build"])
            .collect();
        for (package, features) in resolve(&args)? {
            let Some(all) = workspace.get(&package) else {
                continue;
            };
            let lacking: Vec<&str> = all.difference(&features).map(String::as_str).collect();
            if !lacking.is_empty() {
                missing.push(format!(
                    "{package} lacks {} with `{}`",
                    lacking.join(", "),
                    selection.join(" ")
                ));
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "these builds resolve other features than `cargo test --workspace`, so they would \
             compile the dependencies again; add the features to the feature floor in \
             shared/Cargo.toml:\n  {}",
            missing.join("\n  ")
        );
    }
    eprintln!(
        "xtask: the functions, xtask and the test build resolve the same dependency features"
    );
    Ok(())
}

fn resolve(args: &[&str]) -> Result<Features> {
    let out = crate::cargo()
        .args(["tree", "--locked", "--prefix", "none", "-f", "{p}|{f}"])
        .args(args)
        .output()
        .context("run cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Lines are `name vX.Y.Z [(path)]|feat,feat [(*)]`.
fn parse(tree: &str) -> Features {
    let mut features = Features::new();
    for line in tree.lines() {
        let Some((package, list)) = line.split_once('|') else {
            continue;
        };
        let key: Vec<&str> = package.split_whitespace().take(2).collect();
        let list = list.trim().trim_end_matches("(*)");
        features.entry(key.join(" ")).or_default().extend(
            list.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(String::from),
        );
    }
    features
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn repeated_and_local_packages_merge_their_features() {
        let f = parse(
            "libc v0.2.1|std (*)\nlibc v0.2.1|extra_traits,std\nshared v0.1.0 (/w/shared)|\n\
             no separator line\n",
        );
        assert_eq!(
            f["libc v0.2.1"].iter().collect::<Vec<_>>(),
            ["extra_traits", "std"]
        );
        assert!(f["shared v0.1.0"].is_empty());
        assert_eq!(f.len(), 2);
    }
}
