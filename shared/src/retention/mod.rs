//! Retention: deletes rows that have served their purpose, a bounded batch
//! per call, so a backlog of months is worked off over many drain ticks
//! instead of one long lock-holding statement.
//!
//! Raw Kommo payloads and outbox payloads hold personal data, so they are
//! not kept longer than the setting (30 days by default). Only finished rows
//! go: a pending, processing or failed outbox row, a delivery not yet
//! processed, and the staging of a queued, running or held run stay.
//!
//! The module reads the tables of several flows (outbox, ingest, refresh)
//! and writes nothing but deletes; it sits beside them in the layout.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::platform::{
    config::{ConfigError, Env},
    db::DbError,
    telemetry::{Metrics, Unit},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Finished rows older than this many days go (`RETENTION_DAYS`, 30).
    pub keep_days: u64,
    /// At most this many rows per table per call (`RETENTION_BATCH_ROWS`, 1000).
    pub batch_rows: u64,
    /// Staging of this many most recent runs stays (`FULL_REFRESH_KEEP_RUNS`, 3).
    pub keep_runs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            keep_days: 30,
            batch_rows: 1000,
            keep_runs: 3,
        }
    }
}

impl RetentionSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Env::load_process(Self::read)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Env::load(lookup, Self::read)
    }

    pub fn read(env: &mut Env<'_>) -> Self {
        let d = RetentionSettings::default();
        RetentionSettings {
            keep_days: env.positive("RETENTION_DAYS", d.keep_days),
            batch_rows: env.positive("RETENTION_BATCH_ROWS", d.batch_rows),
            keep_runs: env.positive("FULL_REFRESH_KEEP_RUNS", d.keep_runs),
        }
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs(self.keep_days.saturating_mul(86_400))
    }
}

/// Rows deleted by one call, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub outbox: u64,
    pub webhook_events: u64,
    pub staging: u64,
    pub idempotency_keys: u64,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.outbox + self.webhook_events + self.staging + self.idempotency_keys
    }

    pub fn record(&self, m: &mut Metrics) {
        m.add("purged_rows", self.total() as f64, Unit::Count);
    }
}

/// Succeeded outbox rows, by the partial index on their `updated_at`.
const OUTBOX: &str = "DELETE FROM integrations_outbox WHERE id IN (
    SELECT id FROM integrations_outbox
     WHERE status = 'succeeded' AND updated_at < now() - $1::float8 * interval '1 second'
     ORDER BY updated_at LIMIT $2)";

/// Processed deliveries; failed and rejected ones stay for the runbook's replay.
const WEBHOOK_EVENTS: &str = "DELETE FROM kommo_webhook_events WHERE id IN (
    SELECT id FROM kommo_webhook_events
     WHERE status = 'processed' AND processed_at < now() - $1::float8 * interval '1 second'
     ORDER BY processed_at LIMIT $2)";

/// Answers kept for `Idempotency-Key` retries; a retry comes within minutes.
const IDEMPOTENCY_KEYS: &str =
    "DELETE FROM staff_idempotency_keys WHERE (staff_sub, idempotency_key) IN (
    SELECT staff_sub, idempotency_key FROM staff_idempotency_keys
     WHERE created_at < now() - $1::float8 * interval '1 second'
     ORDER BY created_at LIMIT $2)";

/// Staging of runs past the newest `$1`, unless the run is still open
/// (queued or running) or held for review.
fn staging(table: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
            SELECT s.ctid FROM {table} s
             WHERE s.run_id IN (
                   SELECT id FROM kommo_import_runs
                    WHERE status NOT IN ('queued', 'running', 'needs_review')
                    ORDER BY started_at DESC OFFSET $1)
             LIMIT $2))"
    )
}

const STAGING_TABLES: [&str; 3] = [
    "stg_kommo_booking_vehicles",
    "stg_kommo_contacts",
    "stg_kommo_leads",
];

/// Deletes one bounded batch of each kind of expired row.
pub async fn purge_batch(
    client: &impl GenericClient,
    settings: &RetentionSettings,
) -> Result<Purged, DbError> {
    let age = settings.max_age().as_secs_f64();
    let limit = i64::try_from(settings.batch_rows).unwrap_or(i64::MAX);
    let keep_runs = i64::try_from(settings.keep_runs).unwrap_or(i64::MAX);
    let mut purged = Purged {
        outbox: client.execute(OUTBOX, &[&age, &limit]).await?,
        webhook_events: client.execute(WEBHOOK_EVENTS, &[&age, &limit]).await?,
        idempotency_keys: client.execute(IDEMPOTENCY_KEYS, &[&age, &limit]).await?,
        staging: 0,
    };
    for table in STAGING_TABLES {
        purged.staging += client
            .execute(&staging(table), &[&keep_runs, &limit])
            .await?;
    }
    if purged.total() > 0 {
        tracing::info!(?purged, "retention purged expired rows");
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            RetentionSettings::from_lookup(|_| None).unwrap(),
            RetentionSettings::default()
        );
        let s = RetentionSettings::from_lookup(|k| (k == "RETENTION_DAYS").then(|| "7".into()))
            .unwrap();
        assert_eq!(s.max_age(), Duration::from_secs(7 * 86_400));
        let e =
            RetentionSettings::from_lookup(|k| (k == "RETENTION_BATCH_ROWS").then(|| "0".into()))
                .unwrap_err();
        assert_eq!(
            e.problems,
            vec!["RETENTION_BATCH_ROWS must be a positive whole number"]
        );
    }
}
