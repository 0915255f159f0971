//! What one drain run did: counts, Zoho latency, why it stopped; returned
//! by the handler and recorded as EMF metrics.

use std::collections::HashSet;

use serde::Serialize;
use uuid::Uuid;

use crate::{
    outbox::store::{Outcome, Settlement},
    platform::telemetry::{Metrics, Unit},
    zoho::{ErrorClass, ZohoError},
};

/// Why a run stopped before the queue was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Less than the safety margin was left before the Lambda deadline.
    Deadline,
    /// Zoho's token endpoint throttle (circuit open).
    Throttled,
    /// Zoho answered 429: the rest waits for the next tick.
    RateLimited,
    /// Credentials or configuration are broken; an operator must act.
    Systemic,
    /// The token endpoint could not be reached.
    TokenUnavailable,
}

impl StopReason {
    /// Why a run that could not get a usable Zoho client stops.
    pub(super) fn for_token_error(e: &ZohoError) -> Self {
        match e.class() {
            ErrorClass::Throttled => StopReason::Throttled,
            ErrorClass::Systemic => StopReason::Systemic,
            _ => StopReason::TokenUnavailable,
        }
    }
}

/// What one run did; also recorded as EMF metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub live: bool,
    pub claimed: u64,
    pub succeeded: u64,
    pub stubbed: u64,
    pub retried: u64,
    pub failed: u64,
    /// Claimed, not sent, attempt not charged (hand-back and contact-first deferral).
    pub handed_back: u64,
    /// Expired leases put back to pending at the start of the run.
    pub reclaimed: u64,
    pub zoho_calls: u64,
    pub zoho_latency_avg_ms: f64,
    pub zoho_latency_max_ms: u64,
    /// Zoho's API credits left in its rolling 24 hours, once Zoho says
    /// (from half the day's credits used on).
    pub zoho_credits_remaining: Option<u64>,
    pub oldest_pending_age_seconds: f64,
    pub stopped: Option<StopReason>,
    pub stop_detail: Option<String>,
}

impl DrainReport {
    /// Adds this run's numbers to `m` (the handler flushes it).
    pub fn record(&self, m: &mut Metrics) {
        m.add("claimed", self.claimed as f64, Unit::Count);
        m.add("succeeded", self.succeeded as f64, Unit::Count);
        m.add("stubbed", self.stubbed as f64, Unit::Count);
        m.add("retried", self.retried as f64, Unit::Count);
        m.add("failed", self.failed as f64, Unit::Count);
        m.add("handed_back", self.handed_back as f64, Unit::Count);
        m.add("reclaimed", self.reclaimed as f64, Unit::Count);
        m.add("zoho_calls", self.zoho_calls as f64, Unit::Count);
        if let Some(n) = self.zoho_credits_remaining {
            m.set("zoho_credits_remaining", n as f64, Unit::Count);
        }
        m.set(
            "oldest_pending_age",
            self.oldest_pending_age_seconds,
            Unit::Seconds,
        );
        if self.zoho_calls > 0 {
            m.set(
                "zoho_latency_avg",
                self.zoho_latency_avg_ms,
                Unit::Milliseconds,
            );
            m.set(
                "zoho_latency_max",
                self.zoho_latency_max_ms as f64,
                Unit::Milliseconds,
            );
        }
        if self.throttled() {
            m.add("throttled", 1.0, Unit::Count);
        }
    }

    pub fn throttled(&self) -> bool {
        self.stopped == Some(StopReason::Throttled)
    }

    /// Keeps the first reason only: later ones are consequences of it.
    pub(super) fn stop(&mut self, reason: StopReason, detail: impl Into<String>) {
        if self.stopped.is_none() {
            self.stopped = Some(reason);
            self.stop_detail = Some(detail.into());
        }
    }

    /// Counts the settled rows this drain still held (`owned`); `stubbed`
    /// when nothing was sent because Zoho is switched off.
    pub(super) fn tally(
        &mut self,
        settlements: &[Settlement],
        owned: &HashSet<Uuid>,
        stubbed: bool,
    ) {
        for s in settlements.iter().filter(|s| owned.contains(&s.id)) {
            match &s.outcome {
                Outcome::Succeeded { .. } if stubbed => {
                    self.succeeded += 1;
                    self.stubbed += 1;
                }
                Outcome::Succeeded { .. } => self.succeeded += 1,
                Outcome::Retry { error, .. } => {
                    tracing::info!(outbox_id = %s.id, error = %error, "outbox row will be retried");
                    self.retried += 1;
                }
                Outcome::Failed { error } => {
                    tracing::warn!(outbox_id = %s.id, error = %error, "outbox row failed");
                    self.failed += 1;
                }
                Outcome::Uncharged { .. } => self.handed_back += 1,
            }
        }
    }
}
