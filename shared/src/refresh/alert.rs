//! Slack alerts for runs that end `failed` or `needs_review`, through
//! [`crate::platform::slack`]. An alert that cannot be sent never fails the
//! run: the run row already holds the outcome.

use std::sync::Arc;

use super::runs::{RunRecord, RunStatus};
pub use crate::platform::slack::SlackTarget;
use crate::{
    platform::flags::FeatureFlags,
    platform::slack::Slack,
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

/// Posts the runs that end badly.
#[derive(Clone)]
pub struct Alerter {
    slack: Slack,
}

impl Alerter {
    pub fn new(flags: Arc<FeatureFlags>, target: SlackTarget) -> Self {
        Alerter {
            slack: Slack::new(flags, target),
        }
    }

    /// Posts about `run` if it ended badly and alerts are on. Returns whether
    /// a message was delivered.
    pub async fn run_finished(&self, run: &RunRecord) -> bool {
        if !matches!(run.status, RunStatus::Failed | RunStatus::NeedsReview) {
            return false;
        }
        self.slack.post(&message(run)).await
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
    if run.status == RunStatus::NeedsReview {
        text.push_str(&format!(
            " A refresh admin decides: POST /integrations/kommo/full-refresh/{}/approve or …/discard.",
            run.id
        ));
    }
    text
}
