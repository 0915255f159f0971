//! One drain run: claim due rows, send them to Zoho, settle them.
//!
//! Rules that are easy to break and matter:
//! - With `enableZohoLive` off, claimed rows succeed as `{"mode":"stubbed"}`
//!   and nothing is sent (the seed's MVP behaviour and the kill switch).
//! - A token is obtained before anything is claimed, so an open throttle
//!   circuit claims nothing and charges nothing.
//! - Rows that were claimed but not sent (deadline near, throttle, broken
//!   credentials) go back to `pending` with the attempt uncharged.
//! - A sales order needs its client's Zoho contact: missing contacts are
//!   upserted first in the same run, together with the batch's contacts.
//!
//! This file is the loop; [`plan`] sorts a batch out, [`load`] reads the
//! ERP rows it needs, [`records`] builds the Zoho records, [`batch`] sends
//! them and [`report`] counts what happened.

mod batch;
mod load;
mod plan;
mod records;
mod report;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

pub use report::{DrainReport, StopReason};

use super::{
    store::{self, ClaimedRow, Effect, Outcome, Settlement},
    OutboxError, ReconcileLimits, ReconcileReport, ENTITY_BOOKING, EVENT_SALES_ORDER_CREATE,
};
use crate::{
    platform::config::OutboxSettings,
    platform::db::DbPool,
    platform::deadline::Deadline,
    platform::flags::{FeatureFlags, Flag},
    zoho::{LazyZohoClient, ZohoClient, ZohoError},
};
use batch::Batch;

/// The outbox drain. Build once per container; `run` once per tick.
pub struct Drain {
    pool: DbPool,
    flags: Arc<FeatureFlags>,
    settings: OutboxSettings,
    zoho: Arc<LazyZohoClient>,
}

impl Drain {
    pub fn new(
        pool: DbPool,
        flags: Arc<FeatureFlags>,
        settings: OutboxSettings,
        zoho: Arc<LazyZohoClient>,
    ) -> Self {
        Drain {
            pool,
            flags,
            settings,
            zoho,
        }
    }

    /// The drain of a Lambda container: the Zoho client is built from
    /// `ZOHO_SECRET_ID` the first time the flag is on.
    pub fn from_context(ctx: &crate::platform::context::AppContext) -> Self {
        let zoho = match &ctx.config.zoho_secret_id {
            Some(id) => LazyZohoClient::from_secret(
                ctx.secrets.clone(),
                id.clone(),
                ctx.config.zoho.clone(),
                ctx.pool.clone(),
            ),
            None => LazyZohoClient::unconfigured(),
        };
        Drain::new(
            ctx.pool.clone(),
            ctx.flags.clone(),
            ctx.config.outbox.clone(),
            Arc::new(zoho),
        )
    }

    /// One reconcile on a connection of this drain's pool (see
    /// [`super::reconcile`]); skipped while `enableZohoLive` is off.
    pub async fn reconcile(
        &self,
        deadline: Deadline,
        limits: ReconcileLimits,
    ) -> Result<ReconcileReport, OutboxError> {
        let mut conn = self.pool.get().await?;
        super::reconcile_live(&mut conn, &self.flags, deadline, limits).await
    }

    /// The deadline `remaining` from now, less this drain's safety margin
    /// (`OUTBOX_DEADLINE_MARGIN_MS`): no Zoho call starts inside the margin.
    pub fn deadline_in(&self, remaining: Duration) -> Deadline {
        Deadline::after(remaining, self.settings.deadline_margin)
    }

    /// Drains until the queue has nothing due, the deadline nears, or Zoho
    /// says stop. Database errors end the run; claimed rows then wait for
    /// their lease to expire.
    pub async fn run(&self, deadline: Deadline) -> Result<DrainReport, OutboxError> {
        let mut report = DrainReport {
            live: self.flags.is_enabled(Flag::ZohoLive).await?,
            ..DrainReport::default()
        };
        let zoho = if report.live {
            match self.prepare_zoho().await {
                Ok(z) => Some(z),
                Err(e) => {
                    tracing::warn!(error = %e, "zoho is not usable; nothing claimed");
                    report.stop(StopReason::for_token_error(&e), e.to_string());
                    self.finish(&mut report, None).await?;
                    return Ok(report);
                }
            }
        } else {
            None
        };

        {
            let mut conn = self.pool.get().await?;
            let (requeued, failed) =
                store::rescue_expired(&mut conn, self.settings.max_attempts).await?;
            report.reclaimed = requeued;
            report.failed += failed;
        }

        loop {
            if deadline.near() {
                report.stop(StopReason::Deadline, "deadline margin reached");
                break;
            }
            if !self.run_batch(zoho.as_ref(), deadline, &mut report).await? {
                break;
            }
            if report.stopped.is_some() {
                break;
            }
        }
        self.finish(&mut report, zoho.as_deref()).await?;
        Ok(report)
    }

    /// Claims one batch, sends it (or stubs it when Zoho is off) and
    /// settles it. False when nothing was due.
    async fn run_batch(
        &self,
        zoho: Option<&Arc<ZohoClient>>,
        deadline: Deadline,
        report: &mut DrainReport,
    ) -> Result<bool, OutboxError> {
        let owner = format!("drain-{}", Uuid::new_v4());
        let rows = {
            let conn = self.pool.get().await?;
            store::claim(&conn, self.settings.batch_size, self.settings.lease, &owner).await?
        };
        if rows.is_empty() {
            return Ok(false);
        }
        report.claimed += rows.len() as u64;
        let span = tracing::info_span!("outbox_batch", owner = %owner, rows = rows.len());

        let settlements = match zoho {
            None => stubbed(&rows),
            Some(z) => {
                let batch = Batch::new(self, z.clone(), deadline);
                let s = batch.dispatch(rows.clone()).instrument(span).await?;
                if let Some((reason, detail)) = batch.stopped() {
                    report.stop(reason, detail);
                }
                s
            }
        };
        let settlements = self.charge_limits(&rows, settlements);
        let owned: HashSet<Uuid> = {
            let mut conn = self.pool.get().await?;
            store::settle(&mut conn, &owner, &settlements)
                .await?
                .into_iter()
                .collect()
        };
        report.tally(&settlements, &owned, zoho.is_none());
        Ok(true)
    }

    async fn prepare_zoho(&self) -> Result<Arc<ZohoClient>, ZohoError> {
        let z = self.zoho.get().await?;
        z.access_token().await?;
        z.stats().take();
        Ok(z)
    }

    async fn finish(
        &self,
        report: &mut DrainReport,
        zoho: Option<&ZohoClient>,
    ) -> Result<(), OutboxError> {
        if let Some(z) = zoho {
            let s = z.stats().take();
            report.zoho_calls = s.calls;
            report.zoho_latency_max_ms = s.max_ms;
            report.zoho_credits_remaining = s.credits_remaining;
            if s.calls > 0 {
                report.zoho_latency_avg_ms = s.total_ms as f64 / s.calls as f64;
            }
        }
        let conn = self.pool.get().await?;
        report.oldest_pending_age_seconds = load::oldest_pending_age(&conn).await?;
        Ok(())
    }

    /// A retry on the last allowed attempt becomes a failure; a failed order
    /// marks its booking `zoho_sync_status = 'failed'`.
    fn charge_limits(&self, rows: &[ClaimedRow], settlements: Vec<Settlement>) -> Vec<Settlement> {
        let by_id: HashMap<Uuid, &ClaimedRow> = rows.iter().map(|r| (r.id, r)).collect();
        settlements
            .into_iter()
            .map(|mut s| {
                let Some(row) = by_id.get(&s.id) else {
                    return s;
                };
                if let Outcome::Retry { error, .. } = &s.outcome {
                    if row.attempts >= self.settings.max_attempts {
                        s.outcome = Outcome::Failed {
                            error: format!("gave up after {} attempts: {error}", row.attempts),
                        };
                    }
                }
                let is_order =
                    row.event_type == EVENT_SALES_ORDER_CREATE && row.entity_type == ENTITY_BOOKING;
                if is_order && matches!(s.outcome, Outcome::Failed { .. }) {
                    s.effects.push(Effect::BookingFailed {
                        booking_id: row.entity_id,
                    });
                }
                s
            })
            .collect()
    }
}

/// With Zoho switched off every claimed row succeeds without a call.
fn stubbed(rows: &[ClaimedRow]) -> Vec<Settlement> {
    rows.iter()
        .map(|r| Settlement {
            id: r.id,
            outcome: Outcome::Succeeded {
                response: json!({"mode": "stubbed"}),
            },
            effects: Vec::new(),
        })
        .collect()
}
