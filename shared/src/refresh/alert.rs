//! Slack alerts for runs that end `failed` or `needs_review`.
//!
//! Sent only when `enableSlackAlerts` is on and a Slack secret is configured.
//! An alert that cannot be sent is logged and never fails the run: the run
//! row already holds the outcome.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use super::runs::{RunRecord, RunStatus};
use crate::{
    platform::flags::{FeatureFlags, Flag},
    platform::secrets::{Redacted, Secrets, SlackSecret},
    platform::telemetry::{Metrics, Unit},
};

/// Counts a finished run by outcome, for the dashboard and the alarms on
/// `refresh_failed` and `refresh_needs_review`.
pub fn count_finished(status: RunStatus) {
    let name = match status {
        RunStatus::Succeeded => "refresh_succeeded",
        RunStatus::Failed => "refresh_failed",
        RunStatus::NeedsReview => "refresh_needs_review",
        RunStatus::Queued | RunStatus::Running => return,
    };
    let mut m = Metrics::new("KommoZoho", "full-refresh-worker");
    m.add(name, 1.0, Unit::Count);
    m.flush();
}

/// Where the Slack webhook URL comes from.
#[derive(Clone)]
pub enum SlackTarget {
    None,
    Secret {
        secrets: Arc<Secrets>,
        id: String,
    },
    /// A fixed URL (tests, the dev stack).
    Url(Redacted),
}

#[derive(Clone)]
pub struct Alerter {
    pub flags: Arc<FeatureFlags>,
    pub target: SlackTarget,
    http: reqwest::Client,
}

impl Alerter {
    pub fn new(flags: Arc<FeatureFlags>, target: SlackTarget) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Alerter {
            flags,
            target,
            http,
        }
    }

    /// Posts about `run` if it ended badly and alerts are on. Returns whether
    /// a message was delivered.
    pub async fn run_finished(&self, run: &RunRecord) -> bool {
        if !matches!(run.status, RunStatus::Failed | RunStatus::NeedsReview) {
            return false;
        }
        match self.flags.is_enabled(Flag::SlackAlerts).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read enableSlackAlerts; no alert sent");
                return false;
            }
        }
        let url = match &self.target {
            SlackTarget::None => return false,
            SlackTarget::Url(u) => u.clone(),
            SlackTarget::Secret { secrets, id } => {
                match secrets.get_json::<SlackSecret>(id).await {
                    Ok(s) => s.webhook_url,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the Slack secret; no alert sent");
                        return false;
                    }
                }
            }
        };
        let text = message(run);
        match self
            .http
            .post(url.expose())
            .json(&json!({ "text": text }))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(status = r.status().as_u16(), "Slack refused the alert");
                false
            }
            // reqwest errors carry the URL, which is itself a secret.
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "could not post the Slack alert");
                false
            }
        }
    }
}

/// The alert text: what happened, where to look.
pub fn message(run: &RunRecord) -> String {
    let what = match run.status {
        RunStatus::NeedsReview => "needs review",
        _ => "failed",
    };
    let mut text = format!(
        ":warning: Kommo full refresh {} for {} {what} (phase {}, {} pages, {} leads).",
        run.id, run.year, run.phase, run.pages_fetched, run.leads
    );
    if let Some(s) = run.http_status {
        text.push_str(&format!(" Kommo HTTP {s}."));
    }
    if let Some(e) = &run.error {
        let excerpt: String = e.chars().take(300).collect();
        text.push_str(&format!(" {excerpt}"));
    }
    text.push_str(" Production data was not changed; staging is kept for inspection.");
    text
}
