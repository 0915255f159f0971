//! The result table: one row per figure, printed for people and written as
//! JSON for tools. Every figure sits next to what it is compared with, so a
//! reader sees the ratio that holds on a noisy machine, not only a number.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

/// A measured quantity with its unit, e.g. `12.3 ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Quantity {
    pub value: f64,
    pub unit: &'static str,
}

impl Quantity {
    pub fn new(value: f64, unit: &'static str) -> Self {
        Quantity { value, unit }
    }

    fn display(&self) -> String {
        let v = self.value;
        let num = if v == 0.0 {
            "0".to_string()
        } else if v.abs() >= 1000.0 {
            group_thousands(v.round() as i64)
        } else if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.abs() >= 10.0 {
            format!("{v:.1}")
        } else if v.abs() >= 0.01 {
            format!("{v:.2}")
        } else {
            format!("{v:.4}")
        };
        if self.unit.is_empty() {
            num
        } else {
            format!("{num} {}", self.unit)
        }
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let head = digits.len() % 3;
    let mut out = digits[..head].to_string();
    for chunk in digits.as_bytes()[head..].chunks(3) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The outcome of comparing a figure with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not judged: the run was too small or the build not the one the
    /// target is about (for example a debug binary's size).
    NotJudged,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: Quantity,
    /// What the figure is compared with, measured in the same run, or the
    /// fixed limit when there is nothing to measure.
    pub baseline_label: String,
    pub baseline: Option<Quantity>,
    /// `value / baseline` (or its inverse when a larger figure is better),
    /// written the way the target is stated.
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
    /// Sizes and conditions of the run, for the JSON reader.
    pub detail: String,
}

/// The whole run: rows plus how it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub build: String,
    pub machine: String,
    pub started_at: String,
    pub wall_seconds: f64,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn failed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .collect()
    }

    /// The table as text, with columns sized to their contents.
    pub fn render(&self) -> String {
        let header = [
            "scenario",
            "figure",
            "value",
            "baseline / limit (same run)",
            "ratio",
            "target",
            "result",
        ];
        let cells: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                let baseline = match &r.baseline {
                    Some(q) => format!("{} {}", r.baseline_label, q.display()),
                    None => r.baseline_label.clone(),
                };
                let ratio = r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default();
                let verdict = match r.verdict {
                    Verdict::Pass => "pass",
                    Verdict::Fail => "FAIL",
                    Verdict::NotJudged => "not judged",
                };
                [
                    r.scenario.clone(),
                    r.figure.clone(),
                    r.value.display(),
                    baseline,
                    ratio,
                    r.target.clone(),
                    verdict.to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: &[String]| -> String {
            let mut s = String::from("|");
            for (c, w) in cols.iter().zip(widths.iter()) {
                let pad = w - c.chars().count();
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s
        };
        let mut out = String::new();
        out.push_str(&line(&header.map(String::from)));
        out.push('\n');
        let mut sep = String::from("|");
        for w in &widths {
            let _ = write!(sep, "{}|", "-".repeat(w + 2));
        }
        out.push_str(&sep);
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
    }
}

/// Builds rows so each scenario states its comparison the same way.
pub struct RowBuilder {
    row: Row,
}

impl RowBuilder {
    pub fn new(scenario: impl Into<String>, figure: impl Into<String>, value: Quantity) -> Self {
        RowBuilder {
            row: Row {
                scenario: scenario.into(),
                figure: figure.into(),
                value,
                baseline_label: String::new(),
                baseline: None,
                ratio: None,
                target: String::new(),
                verdict: Verdict::NotJudged,
                detail: String::new(),
            },
        }
    }

    /// A baseline measured in the same run; the ratio is `value / baseline`.
    pub fn baseline(mut self, label: impl Into<String>, q: Quantity) -> Self {
        self.row.ratio = (q.value != 0.0).then(|| self.row.value.value / q.value);
        self.row.baseline_label = label.into();
        self.row.baseline = Some(q);
        self
    }

    /// Overrides the ratio, for targets stated the other way round
    /// ("20× faster" is `baseline / value` for times).
    pub fn ratio(mut self, r: Option<f64>) -> Self {
        self.row.ratio = r;
        self
    }

    pub fn target(mut self, t: impl Into<String>, pass: bool, judged: bool) -> Self {
        self.row.target = t.into();
        self.row.verdict = match (judged, pass) {
            (false, _) => Verdict::NotJudged,
            (true, true) => Verdict::Pass,
            (true, false) => Verdict::Fail,
        };
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.row.detail = d.into();
        self
    }

    pub fn build(self) -> Row {
        self.row
    }
}

/// Nearest-rank percentile of samples (any order); `p` in 0..=100.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn quantities_read_well() {
        assert_eq!(
            Quantity::new(12_345.6, "leads/s").display(),
            "12,346 leads/s"
        );
        assert_eq!(Quantity::new(4.4567, "ms").display(), "4.46 ms");
        assert_eq!(Quantity::new(1_234_567.0, "").display(), "1,234,567");
        assert_eq!(Quantity::new(-1_000.0, "s").display(), "-1,000 s");
        assert_eq!(
            Quantity::new(0.001, "calls/row").display(),
            "0.0010 calls/row"
        );
    }

    #[test]
    fn table_has_every_column_and_failures_are_found() {
        let report = Report {
            mode: "smoke".into(),
            build: "debug".into(),
            machine: "test".into(),
            started_at: "now".into(),
            wall_seconds: 1.0,
            rows: vec![
                RowBuilder::new("cold start", "webhook init p50", Quantity::new(12.0, "ms"))
                    .baseline("bench-hello", Quantity::new(3.0, "ms"))
                    .target("< 50 ms", true, true)
                    .build(),
                RowBuilder::new("outbox drain", "Zoho calls per row", Quantity::new(1.0, ""))
                    .baseline("one call per row", Quantity::new(1.0, ""))
                    .target("≤ 0.01", false, true)
                    .build(),
            ],
        };
        let text = report.render();
        assert!(text.contains("| cold start "), "{text}");
        assert!(text.contains("4.00×"), "{text}");
        assert!(text.contains("FAIL"), "{text}");
        assert_eq!(report.failed().len(), 1);
        assert_eq!(report.failed()[0].scenario, "outbox drain");
    }
}
