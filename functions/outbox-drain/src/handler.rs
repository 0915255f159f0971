//! EventBridge schedule → one drain run → EMF metrics and a JSON report;
//! `{"mode": "reconcile"}` → one reconcile (see [`crate::mode`]).
//!
//! EventBridge rules (`Schedule`) send a "Scheduled Event" envelope;
//! EventBridge Scheduler (`ScheduleV2`) sends whatever `Input` the schedule
//! has. Without a `mode` the body only labels the run.
//!
//! Each tick also deletes one bounded batch of expired rows
//! ([`shared::retention`]), so retention needs no schedule of its own.

use std::time::Duration;

use crate::mode::Mode;

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use shared::{
    outbox::{self, Drain, OutboxError, ReconcileLimits},
    platform::{
        db::{DbError, DbPool},
        deadline::time_left,
        slack::Slack,
        telemetry::{Metrics, Unit},
    },
    retention::{purge_batch, Purged, RetentionSettings},
};

/// Used when the runtime gives no deadline (local invokes without one).
const FALLBACK_BUDGET: Duration = Duration::from_secs(60);

/// What invoked the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An EventBridge rule (`Schedule`): the "Scheduled Event" envelope.
    Schedule { id: String, time: Option<String> },
    /// EventBridge Scheduler (`ScheduleV2`) or any other JSON input.
    SchedulerV2 { schedule: Option<String> },
}

impl Trigger {
    pub fn from_payload(v: &Value) -> Self {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let is_rule = text("detail-type").as_deref() == Some("Scheduled Event")
            && text("source").as_deref() == Some("aws.events");
        if is_rule {
            Trigger::Schedule {
                id: text("id").unwrap_or_default(),
                time: text("time"),
            }
        } else {
            Trigger::SchedulerV2 {
                schedule: text("schedule-arn").or_else(|| text("schedule")),
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Schedule { .. } => "schedule",
            Trigger::SchedulerV2 { .. } => "schedule_v2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("outbox drain failed: {0}")]
    Drain(#[from] OutboxError),
    #[error("report could not be serialised: {0}")]
    Report(#[from] serde_json::Error),
    #[error("outbox-drain event refused: {0}")]
    BadEvent(String),
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: match e {
                HandlerError::Drain(_) => "OutboxDrainFailed".into(),
                HandlerError::Report(_) => "OutboxReportFailed".into(),
                HandlerError::BadEvent(_) => "OutboxDrainBadEvent".into(),
            },
            error_message: e.to_string(),
        }
    }
}

/// The rest of a tick after the drain: retention, the outbox's size by
/// status for the dashboard and alarms, and Slack alerts.
pub struct Upkeep {
    pub pool: DbPool,
    pub settings: RetentionSettings,
    pub slack: Slack,
}

impl Upkeep {
    /// One batch; a failure is logged and left to the next tick, since
    /// the drain's own outcome is what the invocation reports.
    async fn purge(&self) -> Purged {
        let result = match self.pool.get().await {
            Ok(client) => purge_batch(&**client, &self.settings).await,
            Err(e) => Err(DbError::from(e)),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "retention purge skipped this tick");
            Purged::default()
        })
    }

    /// Posts what is wrong with the outbox (at most once an hour each).
    async fn alert(&self) {
        let posted = match self.pool.get().await {
            Ok(client) => outbox::alerts::alert(&client, &self.slack).await,
            Err(e) => Err(DbError::from(e)),
        };
        if let Err(e) = posted {
            tracing::warn!(error = %e, "outbox alerts skipped this tick");
        }
    }

    /// Rows per status, and per status and event type, as gauges; skipped
    /// when the database is unavailable.
    async fn outbox_gauges(&self, m: &mut Metrics) {
        let counts = match self.pool.get().await {
            Ok(client) => outbox::counts_by_event(&client)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbox counts unavailable");
                return;
            }
        };
        let count = |status: &str, event: Option<&str>| -> i64 {
            counts
                .iter()
                .filter(|((s, e), _)| s == status && event.is_none_or(|ev| ev == e))
                .map(|(_, n)| n)
                .sum()
        };
        use outbox::{
            EVENT_CONTACT_UPDATE as C_UPDATE, EVENT_CONTACT_UPSERT as C_UPSERT,
            EVENT_SALES_ORDER_CREATE as O_CREATE, EVENT_SALES_ORDER_UPDATE as O_UPDATE,
        };
        // Literal names, so the template's watch list can be checked against them.
        for (status, event, name) in [
            ("pending", None, "outbox_pending"),
            ("processing", None, "outbox_processing"),
            ("failed", None, "outbox_failed"),
            ("pending", Some(C_UPSERT), "outbox_pending_contact_upsert"),
            ("pending", Some(C_UPDATE), "outbox_pending_contact_update"),
            (
                "pending",
                Some(O_CREATE),
                "outbox_pending_sales_order_create",
            ),
            (
                "pending",
                Some(O_UPDATE),
                "outbox_pending_sales_order_update",
            ),
            ("failed", Some(C_UPSERT), "outbox_failed_contact_upsert"),
            ("failed", Some(C_UPDATE), "outbox_failed_contact_update"),
            ("failed", Some(O_CREATE), "outbox_failed_sales_order_create"),
            ("failed", Some(O_UPDATE), "outbox_failed_sales_order_update"),
        ] {
            m.set(name, count(status, event) as f64, Unit::Count);
        }
    }
}

/// The time this invocation has left, from the runtime's deadline.
fn time_left_of(ctx: &lambda_runtime::Context) -> Duration {
    time_left(ctx.deadline).unwrap_or(FALLBACK_BUDGET)
}

pub async fn handle(
    drain: &Drain,
    upkeep: &Upkeep,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mode = Mode::from_payload(&event.payload).map_err(HandlerError::BadEvent)?;
    let trigger = Trigger::from_payload(&event.payload);
    let deadline = drain.deadline_in(time_left_of(&event.context));
    if let Mode::Reconcile(limits) = mode {
        return reconcile(drain, deadline, limits, &event.context).await;
    }
    tracing::info!(trigger = trigger.kind(), ?trigger, "outbox drain started");
    let report = drain.run(deadline).await.inspect_err(|e| {
        tracing::error!(error = %e, "outbox drain failed");
    })?;
    let purged = upkeep.purge().await;
    let mut metrics = Metrics::new("KommoZoho", "outbox-drain");
    report.record(&mut metrics);
    purged.record(&mut metrics);
    upkeep.outbox_gauges(&mut metrics).await;
    upkeep.alert().await;
    metrics.property("requestId", event.context.request_id.clone());
    metrics.property("trigger", trigger.kind());
    metrics.flush();
    tracing::info!(
        claimed = report.claimed,
        succeeded = report.succeeded,
        retried = report.retried,
        failed = report.failed,
        handed_back = report.handed_back,
        stopped = ?report.stopped,
        "outbox drain finished"
    );
    let mut out = serde_json::to_value(&report)?;
    if let Value::Object(obj) = &mut out {
        obj.insert("purged".into(), serde_json::to_value(purged)?);
    }
    Ok(out)
}

/// One reconcile: queues the work of every client and booking Zoho is
/// behind on; the drain's ticks send it.
async fn reconcile(
    drain: &Drain,
    deadline: shared::platform::deadline::Deadline,
    limits: ReconcileLimits,
    ctx: &lambda_runtime::Context,
) -> Result<Value, HandlerError> {
    let report = drain
        .reconcile(deadline, limits)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "zoho reconcile failed"))?;
    let mut metrics = Metrics::new("KommoZoho", "outbox-drain");
    metrics.add("reconcile_enqueued", report.enqueued as f64, Unit::Count);
    let scanned = report.clients_scanned + report.bookings_scanned;
    metrics.add("reconcile_scanned", scanned as f64, Unit::Count);
    metrics.property("requestId", ctx.request_id.clone());
    metrics.property("trigger", "reconcile");
    metrics.flush();
    let mut out = serde_json::to_value(&report)?;
    if let Value::Object(obj) = &mut out {
        obj.insert("mode".into(), Value::from("reconcile"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use shared::{
        outbox,
        platform::{config::OutboxSettings, flags::FeatureFlags},
        zoho::LazyZohoClient,
    };

    fn sample(name: &str) -> Value {
        let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn both_schedule_payloads_are_recognised() {
        let v1 = Trigger::from_payload(&sample("outbox-drain-schedule.json"));
        assert!(
            matches!(v1, Trigger::Schedule { ref id, .. } if !id.is_empty()),
            "{v1:?}"
        );
        let v2 = Trigger::from_payload(&sample("outbox-drain-schedule-v2.json"));
        assert_eq!(v2.kind(), "schedule_v2");
        assert_eq!(Trigger::from_payload(&Value::Null).kind(), "schedule_v2");
    }

    #[test]
    fn a_passed_deadline_leaves_no_time() {
        let mut ctx = lambda_runtime::Context::default();
        // One second before now, in milliseconds since the epoch, as Lambda sends it.
        ctx.deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 1_000;
        assert_eq!(time_left_of(&ctx), Duration::ZERO);
        // `cargo lambda watch` sends a fixed 600000: a budget, not an instant in 1970.
        ctx.deadline = 600_000;
        assert!(time_left_of(&ctx) > Duration::from_secs(590));
        // No deadline at all: the fallback budget.
        ctx.deadline = 0;
        assert_eq!(time_left_of(&ctx), FALLBACK_BUDGET);
    }

    /// A new client and the outbox row that sends it to Zoho.
    async fn client_with_pending_upsert(db: &testkit::TestDb, name: &str) -> uuid::Uuid {
        let mut c = db.client().await;
        let tx = c.transaction().await.unwrap();
        let id = tx
            .query_one(
                "INSERT INTO clients (full_name) VALUES ($1) RETURNING id",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        outbox::enqueue_contact_upsert(&tx, id).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Status, attempts and last response of a client's outbox row.
    async fn outbox_row(
        db: &testkit::TestDb,
        client_id: uuid::Uuid,
    ) -> (String, i32, Option<Value>) {
        let sql =
            "SELECT status, attempts, last_response FROM integrations_outbox WHERE entity_id = $1";
        let row = db
            .client()
            .await
            .query_one(sql, &[&client_id])
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// A drain and its upkeep over `db`, without a Zoho secret.
    fn drain_and_upkeep(db: &testkit::TestDb) -> (Drain, Upkeep) {
        let pool = db.pool();
        let settings = OutboxSettings {
            batch_size: 10,
            max_attempts: 5,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            zoho_concurrency: 2,
            deadline_margin: Duration::from_secs(1),
            defer: Duration::from_secs(60),
        };
        let upkeep = Upkeep {
            pool: pool.clone(),
            settings: RetentionSettings::default(),
            slack: Slack::new(
                Arc::new(FeatureFlags::new(pool.clone(), Duration::ZERO)),
                shared::platform::slack::SlackTarget::None,
            ),
        };
        let drain = Drain::new(
            pool.clone(),
            Arc::new(FeatureFlags::new(pool, Duration::ZERO)),
            settings,
            Arc::new(LazyZohoClient::unconfigured()),
        );
        (drain, upkeep)
    }

    #[tokio::test]
    async fn a_scheduled_run_with_the_flag_off_stubs_rows_without_a_zoho_secret() {
        let db = testkit::TestDb::new().await;
        let client_id = client_with_pending_upsert(&db, "A B").await;
        let (drain, upkeep) = drain_and_upkeep(&db);
        for name in [
            "outbox-drain-schedule.json",
            "outbox-drain-schedule-v2.json",
        ] {
            let event = LambdaEvent::new(sample(name), lambda_runtime::Context::default());
            let out = handle(&drain, &upkeep, event).await.unwrap();
            assert!(out["stopped"].is_null(), "{out}");
        }
        let (status, _, response) = outbox_row(&db, client_id).await;
        assert_eq!(status, "succeeded");
        assert_eq!(response, Some(serde_json::json!({"mode": "stubbed"})));

        // Live without a secret: the drain stops before claiming anything.
        db.set_flag("enableZohoLive", true).await;
        let id2 = client_with_pending_upsert(&db, "C D").await;
        let event = LambdaEvent::new(sample("outbox-drain-schedule.json"), Default::default());
        let out = handle(&drain, &upkeep, event).await.unwrap();
        assert_eq!(out["stopped"], "systemic");
        assert_eq!(out["claimed"], 0);
        let (status, attempts, _) = outbox_row(&db, id2).await;
        assert_eq!((status.as_str(), attempts), ("pending", 0));
    }

    #[tokio::test]
    async fn the_reconcile_event_queues_what_zoho_is_behind_on_and_bad_events_are_refused() {
        let db = testkit::TestDb::new().await;
        let client_id = client_with_pending_upsert(&db, "A B").await;
        let (drain, upkeep) = drain_and_upkeep(&db);
        // Stubbed while Zoho was off: the contact never reached Zoho.
        let tick = LambdaEvent::new(sample("outbox-drain-schedule.json"), Default::default());
        handle(&drain, &upkeep, tick).await.unwrap();
        assert_eq!(outbox_row(&db, client_id).await.0, "succeeded");
        // Still off: reconciling would only queue more stubs.
        let event = LambdaEvent::new(sample("outbox-drain-reconcile.json"), Default::default());
        let out = handle(&drain, &upkeep, event).await.unwrap();
        assert_eq!(out["skipped"], "enableZohoLive is off", "{out}");

        db.set_flag("enableZohoLive", true).await;
        let reconcile = sample("outbox-drain-reconcile.json");
        let event = LambdaEvent::new(reconcile.clone(), Default::default());
        let out = handle(&drain, &upkeep, event).await.unwrap();
        assert_eq!(out["mode"], "reconcile", "{out}");
        assert_eq!(
            (out["enqueued"].as_i64(), out["complete"].as_bool()),
            (Some(1), Some(true))
        );
        let pending = "SELECT count(*) FROM integrations_outbox WHERE status = 'pending'";
        let n: i64 = db
            .client()
            .await
            .query_one(pending, &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        // Again: the row is already queued, nothing more.
        let out = handle(
            &drain,
            &upkeep,
            LambdaEvent::new(reconcile, Default::default()),
        )
        .await
        .unwrap();
        assert_eq!(out["enqueued"], 0);

        let bad = serde_json::json!({"mode": "reconcle"});
        let err = handle(&drain, &upkeep, LambdaEvent::new(bad, Default::default()))
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::BadEvent(_)), "{err}");
        assert!(err.to_string().contains("unknown mode"), "{err}");
    }
}
