//! Every metric in namespace `KommoZoho` that an alarm or the dashboard of
//! `template.yaml` watches is one the code emits, under the `service` the
//! code gives it. A renamed metric otherwise leaves an alarm that can never
//! fire.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (metric, service) pairs of the alarms on KommoZoho metrics, read from
/// each resource block of the template.
fn alarm_metrics(template: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let blocks = resource_blocks(template);
    let alarms = blocks
        .iter()
        .filter(|b| b.contains("AWS::CloudWatch::Alarm"));
    for block in alarms.filter(|b| b.contains("Namespace: KommoZoho")) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("alarm without {key}:\n{block}"))
        };
        let service = block
            .lines()
            .skip_while(|l| !l.contains("Name: service"))
            .nth(1)
            .and_then(|l| l.trim().strip_prefix("Value:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("KommoZoho alarm without a service dimension:\n{block}"));
        out.insert((field("MetricName:"), service));
    }
    out
}

/// The template's top-level entries (two spaces, then a name), one text each.
fn resource_blocks(template: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in template.lines() {
        let top =
            line.starts_with("  ") && !line.starts_with("   ") && !line.trim().starts_with('#');
        if top || blocks.is_empty() {
            blocks.push(String::new());
        }
        let last = blocks.last_mut().expect("a block was pushed");
        last.push_str(line);
        last.push('\n');
    }
    blocks
}

/// (metric, service) pairs of the dashboard's KommoZoho graphs.
fn dashboard_metrics(template: &str) -> BTreeSet<(String, String)> {
    let start = template
        .find("DashboardBody: !Sub |")
        .expect("the template has a dashboard");
    let body: String = template[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("        ") || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let doc: Value = serde_json::from_str(&body).expect("the dashboard body is JSON");
    let mut out = BTreeSet::new();
    for w in doc["widgets"].as_array().expect("widgets") {
        for m in w["properties"]["metrics"].as_array().into_iter().flatten() {
            let text = |i: usize| m[i].as_str().unwrap_or_default().to_string();
            if text(0) == "KommoZoho" {
                assert_eq!(text(2), "service", "{m}");
                out.insert((text(1), text(3)));
            }
        }
    }
    out
}

/// The production part (before `#[cfg(test)]`) of every Rust file that
/// records EMF metrics, under `shared/src` and `functions/*/src`.
fn emitting_sources() -> Vec<(PathBuf, String)> {
    let mut dirs = vec![root().join("shared/src")];
    for f in std::fs::read_dir(root().join("functions")).unwrap() {
        dirs.push(f.unwrap().path().join("src"));
    }
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let prod = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                if prod.contains("Unit::") {
                    files.push((path, prod));
                }
            }
        }
    }
    files
}

#[test]
fn every_watched_metric_is_emitted_by_the_code() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let alarms = alarm_metrics(&template);
    let dashboard = dashboard_metrics(&template);
    for expected in [
        "failed",
        "oldest_pending_age",
        "throttled",
        "refresh_failed",
        "refresh_needs_review",
    ] {
        assert!(
            alarms.iter().any(|(m, _)| m == expected),
            "no alarm on {expected}: {alarms:?}"
        );
    }
    assert!(dashboard.len() >= 15, "{dashboard:?}");

    let sources = emitting_sources();
    let emitted = |literal: &str| {
        let quoted = format!("\"{literal}\"");
        sources.iter().any(|(_, text)| text.contains(&quoted))
    };
    let services: BTreeSet<String> = sources
        .iter()
        .flat_map(|(_, t)| t.split("Metrics::new(\"KommoZoho\", ").skip(1))
        .filter_map(|rest| {
            rest.strip_prefix('"')?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();
    let functions = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .flat_map(|d| walk_text(&d.unwrap().path().join("src")))
        .collect::<String>();
    for (metric, service) in alarms.iter().chain(&dashboard) {
        assert!(
            emitted(metric),
            "`{metric}` is watched but no code emits it"
        );
        // `cold_start` is emitted under each function's name at start.
        let named = services.contains(service)
            || (metric == "cold_start"
                && functions.contains(&format!("AppContext::start(\"{service}\"")));
        assert!(
            named,
            "`{metric}` is watched under service `{service}`, which no code uses ({services:?})"
        );
    }
}

fn walk_text(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_text(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}
