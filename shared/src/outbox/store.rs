//! SQL of the outbox: claim, rescue expired leases, settle, requeue.
//!
//! Every settling statement is guarded by `status = 'processing' AND
//! locked_by = <owner>`: a drain whose lease ran out and whose rows were
//! reclaimed by another drain can no longer touch them.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::{
    lockstep::{self, Table},
    OutboxError, ENTITY_BOOKING, EVENT_SALES_ORDER_CREATE,
};
use crate::erp;

/// A row claimed by a drain; `attempts` already counts this attempt.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: Uuid,
    pub entity_type: String,
    pub entity_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub attempts: i32,
}

/// Claims up to `limit` due Zoho rows for `owner` with a lease. The LIMIT sits
/// in a materialised CTE: inside `IN (subquery)` the planner may run it more
/// than once and claim more than `limit` rows.
pub async fn claim(
    client: &tokio_postgres::Client,
    limit: i64,
    lease: Duration,
    owner: &str,
) -> Result<Vec<ClaimedRow>, OutboxError> {
    let rows = client
        .query(
            "WITH due AS MATERIALIZED (
                 SELECT id
                   FROM integrations_outbox
                  WHERE status = 'pending'
                    AND next_run_at <= now()
                    AND target_system = 'zoho'
                  ORDER BY next_run_at, created_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED
             )
             UPDATE integrations_outbox o
                SET status = 'processing',
                    attempts = o.attempts + 1,
                    locked_until = now() + make_interval(secs => $2),
                    locked_by = $3,
                    updated_at = now()
               FROM due
              WHERE o.id = due.id
          RETURNING o.id, o.entity_type, o.entity_id, o.event_type, o.payload, o.attempts,
                    o.next_run_at, o.created_at",
            &[&limit, &lease.as_secs_f64(), &owner],
        )
        .await?;
    let mut out: Vec<(
        ClaimedRow,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((
            ClaimedRow {
                id: r.try_get(0)?,
                entity_type: r.try_get(1)?,
                entity_id: r.try_get(2)?,
                event_type: r.try_get(3)?,
                payload: r.try_get(4)?,
                attempts: r.try_get(5)?,
            },
            r.try_get(6)?,
            r.try_get(7)?,
        ));
    }
    // RETURNING does not keep the CTE's order.
    out.sort_by_key(|(_, next, created)| (*next, *created));
    Ok(out.into_iter().map(|(row, _, _)| row).collect())
}

/// Rows left in `processing` past their lease (the drain died): back to
/// `pending`, or `failed` when they had used their last attempt; a booking
/// whose sales order so failed is marked failed in the same transaction.
/// Returns (requeued, failed).
///
/// Those bookings are locked before any outbox row, in the order a producer
/// takes them (booking, then its outbox row): the other way round, a
/// producer queuing work for the same booking waited for this transaction
/// while it waited for the booking, and one of them was aborted as a
/// deadlock. A booking that expires between the two statements is left for
/// the next rescue rather than locked out of order.
pub async fn rescue_expired(
    client: &mut tokio_postgres::Client,
    max_attempts: i32,
) -> Result<(u64, u64), OutboxError> {
    let tx = client.transaction().await?;
    erp::snapshot::share_lock_uncached(&tx).await?;
    let doomed: Vec<Uuid> = tx
        .query(
            "SELECT entity_id FROM integrations_outbox
              WHERE status = 'processing' AND locked_until < now() AND attempts >= $1
                AND entity_type = $2 AND event_type = $3",
            &[&max_attempts, &ENTITY_BOOKING, &EVENT_SALES_ORDER_CREATE],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    erp::lock_for_zoho_outcomes(&tx, &doomed, &[]).await?;
    let rows = tx
        .query(
            "UPDATE integrations_outbox
                SET status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
                    last_error = CASE WHEN attempts >= $1
                                      THEN 'lease expired on the last attempt'
                                      ELSE coalesce(last_error, 'lease expired; reclaimed') END,
                    next_run_at = now(),
                    locked_until = NULL,
                    locked_by = NULL,
                    updated_at = now()
              WHERE status = 'processing' AND locked_until < now()
                AND (attempts < $1 OR entity_type <> $2 OR event_type <> $3
                     OR entity_id = ANY($4))
          RETURNING status, entity_type, entity_id, event_type",
            &[
                &max_attempts,
                &ENTITY_BOOKING,
                &EVENT_SALES_ORDER_CREATE,
                &doomed,
            ],
        )
        .await?;
    let (mut requeued, mut failed) = (0u64, 0u64);
    let mut failed_bookings = Vec::new();
    for r in rows {
        if r.try_get::<_, &str>(0)? != "failed" {
            requeued += 1;
            continue;
        }
        failed += 1;
        if r.try_get::<_, &str>(1)? == ENTITY_BOOKING
            && r.try_get::<_, &str>(3)? == EVENT_SALES_ORDER_CREATE
        {
            failed_bookings.push(r.try_get::<_, Uuid>(2)?);
        }
    }
    erp::bookings::mark_sync_failed(&tx, &failed_bookings).await?;
    tx.commit().await?;
    if requeued + failed > 0 {
        tracing::warn!(
            requeued,
            failed,
            "reclaimed outbox rows whose lease expired"
        );
    }
    Ok((requeued, failed))
}

/// How a claimed row ends this run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Succeeded {
        response: Value,
    },
    /// Back to pending after `delay`; the attempt stays charged.
    Retry {
        error: String,
        delay: Duration,
    },
    Failed {
        error: String,
    },
    /// Back to pending after `delay` without charging the attempt.
    Uncharged {
        reason: Option<String>,
        delay: Duration,
    },
}

/// A change to an ERP row that goes with a settled outbox row. A
/// `fingerprint` is that of the fields Zoho just received (None: nothing
/// was sent, the id was only learnt).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    ContactId {
        client_id: Uuid,
        zoho_id: String,
        fingerprint: Option<String>,
    },
    SalesOrder {
        booking_id: Uuid,
        zoho_id: String,
        fingerprint: Option<String>,
    },
    BookingFailed {
        booking_id: Uuid,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    pub id: Uuid,
    pub outcome: Outcome,
    pub effects: Vec<Effect>,
}

/// Settles a claimed batch in one transaction: outbox rows first (only those
/// this owner still holds), then the ERP effects of the rows it held.
pub(crate) async fn settle(
    client: &mut tokio_postgres::Client,
    owner: &str,
    settlements: &[Settlement],
) -> Result<Vec<Uuid>, OutboxError> {
    let tx = client.transaction().await?;
    erp::snapshot::share_lock_uncached(&tx).await?;
    let (bookings, clients) = effect_targets(settlements);
    erp::lock_for_zoho_outcomes(&tx, &bookings, &clients).await?;
    let owned = settle_rows(&tx, owner, settlements).await?;
    apply_effects(&tx, settlements, &owned).await?;
    tx.commit().await?;
    if owned.len() < settlements.len() {
        tracing::warn!(
            lost = settlements.len() - owned.len(),
            "some claimed rows were reclaimed by another drain before they were settled"
        );
    }
    Ok(owned)
}

/// The bookings and clients a batch's outcomes write, whether or not this
/// owner still holds every row (locking a few too many is harmless).
fn effect_targets(settlements: &[Settlement]) -> (Vec<Uuid>, Vec<Uuid>) {
    let (mut bookings, mut clients) = (Vec::new(), Vec::new());
    for e in settlements.iter().flat_map(|s| &s.effects) {
        match e {
            Effect::ContactId { client_id, .. } => clients.push(*client_id),
            Effect::SalesOrder { booking_id, .. } | Effect::BookingFailed { booking_id } => {
                bookings.push(*booking_id)
            }
        }
    }
    (bookings, clients)
}

/// One statement for every outcome: each row's new status, error, response
/// and delay travel as parallel arrays; an uncharged row gives its attempt
/// back and keeps its last error when it brings no reason. Returns the ids
/// this owner still held.
async fn settle_rows(
    tx: &tokio_postgres::Transaction<'_>,
    owner: &str,
    settlements: &[Settlement],
) -> Result<Vec<Uuid>, OutboxError> {
    if settlements.is_empty() {
        return Ok(Vec::new());
    }
    let n = settlements.len();
    let mut ids = Vec::with_capacity(n);
    let mut statuses: Vec<&str> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut responses: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut delays: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut uncharged = Vec::with_capacity(n);
    for s in settlements {
        let (status, error, response, delay) = match &s.outcome {
            Outcome::Succeeded { response } => ("succeeded", None, Some(response), None),
            Outcome::Retry { error, delay } => {
                ("pending", Some(error.as_str()), None, Some(*delay))
            }
            Outcome::Failed { error } => ("failed", Some(error.as_str()), None, None),
            Outcome::Uncharged { reason, delay } => {
                ("pending", reason.as_deref(), None, Some(*delay))
            }
        };
        ids.push(s.id);
        statuses.push(status);
        errors.push(error);
        responses.push(response);
        delays.push(delay.map(|d| d.as_secs_f64()));
        uncharged.push(matches!(s.outcome, Outcome::Uncharged { .. }));
    }
    let rows = tx
        .query(
            "UPDATE integrations_outbox o
                SET status = u.status,
                    attempts = CASE WHEN u.uncharged THEN greatest(o.attempts - 1, 0)
                                    ELSE o.attempts END,
                    last_error = CASE WHEN u.uncharged THEN coalesce(u.err, o.last_error)
                                      ELSE u.err END,
                    last_response = CASE WHEN u.status = 'succeeded' THEN u.resp
                                         ELSE o.last_response END,
                    next_run_at = CASE WHEN u.delay IS NULL THEN o.next_run_at
                                       ELSE now() + make_interval(secs => u.delay) END,
                    locked_until = NULL, locked_by = NULL, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::float8[],
                           $6::bool[]) AS u(id, status, err, resp, delay, uncharged)
              WHERE o.id = u.id AND o.status = 'processing' AND o.locked_by = $7
          RETURNING o.id",
            &[
                &ids, &statuses, &errors, &responses, &delays, &uncharged, &owner,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Zoho ids and fingerprints of one table, as parallel arrays.
#[derive(Default)]
struct Synced {
    ids: Vec<Uuid>,
    zoho_ids: Vec<String>,
    fingerprints: Vec<Option<String>>,
}

impl Synced {
    fn push(&mut self, id: Uuid, zoho_id: &str, fingerprint: &Option<String>) {
        self.ids.push(id);
        self.zoho_ids.push(zoho_id.to_string());
        self.fingerprints.push(fingerprint.clone());
    }

    /// The rows that were sent: their state may have moved on meanwhile.
    fn sent(&self) -> Vec<Uuid> {
        let sent = self.ids.iter().zip(&self.fingerprints);
        sent.filter(|(_, f)| f.is_some())
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The ERP side of the rows this owner still held: Zoho ids and the
/// fingerprints of what Zoho received written back, bookings whose sales
/// order failed for good marked failed. A row changed while it was being
/// sent met the live row's dedupe key then; its work is queued now.
async fn apply_effects(
    tx: &tokio_postgres::Transaction<'_>,
    settlements: &[Settlement],
    owned: &[Uuid],
) -> Result<(), OutboxError> {
    let held: std::collections::HashSet<Uuid> = owned.iter().copied().collect();
    let (mut clients, mut bookings) = (Synced::default(), Synced::default());
    let mut failed_bookings = Vec::new();
    for s in settlements.iter().filter(|s| held.contains(&s.id)) {
        for e in &s.effects {
            match e {
                Effect::ContactId {
                    client_id,
                    zoho_id,
                    fingerprint,
                } => clients.push(*client_id, zoho_id, fingerprint),
                Effect::SalesOrder {
                    booking_id,
                    zoho_id,
                    fingerprint,
                } => bookings.push(*booking_id, zoho_id, fingerprint),
                Effect::BookingFailed { booking_id } => failed_bookings.push(*booking_id),
            }
        }
    }
    erp::clients::set_zoho_contact_ids(tx, &clients.ids, &clients.zoho_ids, &clients.fingerprints)
        .await?;
    erp::bookings::set_sales_orders(
        tx,
        &bookings.ids,
        &bookings.zoho_ids,
        &bookings.fingerprints,
    )
    .await?;
    erp::bookings::mark_sync_failed(tx, &failed_bookings).await?;
    lockstep::enqueue_changed(tx, Table::Clients, &clients.sent()).await?;
    lockstep::enqueue_changed(tx, Table::Bookings, &bookings.sent()).await?;
    Ok(())
}

/// Calls `requeue_failed_outbox` (migration V3): failed rows back to pending
/// with attempts reset. `event_type` None means every event type.
pub async fn requeue_failed(
    client: &tokio_postgres::Client,
    event_type: Option<&str>,
) -> Result<i32, OutboxError> {
    let row = client
        .query_one(
            "SELECT requeue_failed_outbox($1::text, NULL::timestamptz)",
            &[&event_type],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Rows per status, for the runbook and tests.
pub async fn status_counts(
    client: &tokio_postgres::Client,
) -> Result<std::collections::BTreeMap<String, i64>, OutboxError> {
    let mut out = std::collections::BTreeMap::new();
    for ((status, _), n) in counts_by_event(client).await? {
        *out.entry(status).or_default() += n;
    }
    Ok(out)
}

/// Rows per (status, event type), for the dashboard.
pub async fn counts_by_event(
    client: &tokio_postgres::Client,
) -> Result<std::collections::BTreeMap<(String, String), i64>, OutboxError> {
    let rows = client
        .query(
            "SELECT status, event_type, count(*) FROM integrations_outbox
              GROUP BY status, event_type",
            &[],
        )
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        out.insert((r.try_get(0)?, r.try_get(1)?), r.try_get::<_, i64>(2)?);
    }
    Ok(out)
}
