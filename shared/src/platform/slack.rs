//! Posting an alert to Slack: only while `enableSlackAlerts` is on and a
//! Slack secret is configured. An alert that cannot be sent is logged and
//! never fails the work that raised it.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use crate::platform::{
    flags::{FeatureFlags, Flag},
    secrets::{Redacted, Secrets, SlackSecret},
};

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
pub struct Slack {
    flags: Arc<FeatureFlags>,
    target: SlackTarget,
    http: reqwest::Client,
}

impl Slack {
    pub fn new(flags: Arc<FeatureFlags>, target: SlackTarget) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Slack {
            flags,
            target,
            http,
        }
    }

    /// Whether an alert would be sent now: the flag is on and there is a target.
    pub async fn enabled(&self) -> bool {
        if matches!(self.target, SlackTarget::None) {
            return false;
        }
        match self.flags.is_enabled(Flag::SlackAlerts).await {
            Ok(on) => on,
            Err(e) => {
                tracing::warn!(error = %e, "could not read enableSlackAlerts; no alert sent");
                false
            }
        }
    }

    /// Posts `text` if alerts are on; returns whether it was delivered.
    pub async fn post(&self, text: &str) -> bool {
        if !self.enabled().await {
            return false;
        }
        let Some(url) = self.url().await else {
            return false;
        };
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

    async fn url(&self) -> Option<Redacted> {
        match &self.target {
            SlackTarget::None => None,
            SlackTarget::Url(u) => Some(u.clone()),
            SlackTarget::Secret { secrets, id } => {
                match secrets.get_json::<SlackSecret>(id).await {
                    Ok(s) => Some(s.webhook_url),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the Slack secret; no alert sent");
                        None
                    }
                }
            }
        }
    }
}
