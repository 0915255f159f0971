//! SQL of the outbox: claim, rescue expired leases, settle, requeue.
//!
//! Every settling statement is guarded by `status = 'processing' AND
//! locked_by = <owner>`: a drain whose lease ran out and whose rows were
//! reclaimed by another drain can no longer touch them.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::OutboxError;
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
/// `pending`, or `failed` when they had used their last attempt. Returns
/// (requeued, failed).
pub async fn rescue_expired(
    client: &tokio_postgres::Client,
    max_attempts: i32,
) -> Result<(u64, u64), OutboxError> {
    let rows = client
        .query(
            "WITH expired AS (
                 UPDATE integrations_outbox
                    SET status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
                        last_error = CASE WHEN attempts >= $1
                                          THEN 'lease expired on the last attempt'
                                          ELSE coalesce(last_error, 'lease expired; reclaimed') END,
                        next_run_at = now(),
                        locked_until = NULL,
                        locked_by = NULL,
                        updated_at = now()
                  WHERE status = 'processing' AND locked_until < now()
              RETURNING id, status, entity_type, entity_id, event_type
             ),
             failed_bookings AS (
                 UPDATE bookings b
                    SET zoho_sync_status = 'failed', updated_at = now()
                   FROM expired e
                  WHERE e.status = 'failed' AND e.event_type = 'sales_order.create'
                    AND e.entity_type = 'booking' AND b.id = e.entity_id
                    AND b.zoho_sync_status <> 'synced'
             )
             SELECT status, count(*) FROM expired GROUP BY status",
            &[&max_attempts],
        )
        .await?;
    let (mut requeued, mut failed) = (0u64, 0u64);
    for r in rows {
        let status: String = r.try_get(0)?;
        let n: i64 = r.try_get(1)?;
        match status.as_str() {
            "failed" => failed += n as u64,
            _ => requeued += n as u64,
        }
    }
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

/// A change to an ERP row that goes with a settled outbox row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    ContactId { client_id: Uuid, zoho_id: String },
    SalesOrder { booking_id: Uuid, zoho_id: String },
    BookingFailed { booking_id: Uuid },
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
    let (mut ok_ids, mut ok_resp) = (Vec::new(), Vec::new());
    let (mut retry_ids, mut retry_err, mut retry_delay) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fail_ids, mut fail_err) = (Vec::new(), Vec::new());
    let (mut back_ids, mut back_reason, mut back_delay) = (Vec::new(), Vec::new(), Vec::new());
    for s in settlements {
        match &s.outcome {
            Outcome::Succeeded { response } => {
                ok_ids.push(s.id);
                ok_resp.push(response.clone());
            }
            Outcome::Retry { error, delay } => {
                retry_ids.push(s.id);
                retry_err.push(error.clone());
                retry_delay.push(delay.as_secs_f64());
            }
            Outcome::Failed { error } => {
                fail_ids.push(s.id);
                fail_err.push(error.clone());
            }
            Outcome::Uncharged { reason, delay } => {
                back_ids.push(s.id);
                back_reason.push(reason.clone());
                back_delay.push(delay.as_secs_f64());
            }
        }
    }

    let tx = client.transaction().await?;
    let mut owned: Vec<Uuid> = Vec::with_capacity(settlements.len());
    let mut collect = |rows: Vec<tokio_postgres::Row>| -> Result<(), OutboxError> {
        for r in rows {
            owned.push(r.try_get(0)?);
        }
        Ok(())
    };
    if !ok_ids.is_empty() {
        collect(
            tx.query(
                "UPDATE integrations_outbox o
                    SET status = 'succeeded', last_error = NULL, last_response = u.resp,
                        locked_until = NULL, locked_by = NULL, updated_at = now()
                   FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, resp)
                  WHERE o.id = u.id AND o.status = 'processing' AND o.locked_by = $3
              RETURNING o.id",
                &[&ok_ids, &ok_resp, &owner],
            )
            .await?,
        )?;
    }
    if !retry_ids.is_empty() {
        collect(
            tx.query(
                "UPDATE integrations_outbox o
                    SET status = 'pending', last_error = u.err,
                        next_run_at = now() + make_interval(secs => u.delay),
                        locked_until = NULL, locked_by = NULL, updated_at = now()
                   FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS u(id, err, delay)
                  WHERE o.id = u.id AND o.status = 'processing' AND o.locked_by = $4
              RETURNING o.id",
                &[&retry_ids, &retry_err, &retry_delay, &owner],
            )
            .await?,
        )?;
    }
    if !fail_ids.is_empty() {
        collect(
            tx.query(
                "UPDATE integrations_outbox o
                    SET status = 'failed', last_error = u.err,
                        locked_until = NULL, locked_by = NULL, updated_at = now()
                   FROM unnest($1::uuid[], $2::text[]) AS u(id, err)
                  WHERE o.id = u.id AND o.status = 'processing' AND o.locked_by = $3
              RETURNING o.id",
                &[&fail_ids, &fail_err, &owner],
            )
            .await?,
        )?;
    }
    if !back_ids.is_empty() {
        collect(
            tx.query(
                "UPDATE integrations_outbox o
                    SET status = 'pending', attempts = greatest(o.attempts - 1, 0),
                        last_error = coalesce(u.reason, o.last_error),
                        next_run_at = now() + make_interval(secs => u.delay),
                        locked_until = NULL, locked_by = NULL, updated_at = now()
                   FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS u(id, reason, delay)
                  WHERE o.id = u.id AND o.status = 'processing' AND o.locked_by = $4
              RETURNING o.id",
                &[&back_ids, &back_reason, &back_delay, &owner],
            )
            .await?,
        )?;
    }

    let held: std::collections::HashSet<Uuid> = owned.iter().copied().collect();
    let (mut c_ids, mut c_zoho) = (Vec::new(), Vec::new());
    let (mut b_ids, mut b_zoho) = (Vec::new(), Vec::new());
    let mut failed_bookings = Vec::new();
    for s in settlements.iter().filter(|s| held.contains(&s.id)) {
        for e in &s.effects {
            match e {
                Effect::ContactId { client_id, zoho_id } => {
                    c_ids.push(*client_id);
                    c_zoho.push(zoho_id.clone());
                }
                Effect::SalesOrder {
                    booking_id,
                    zoho_id,
                } => {
                    b_ids.push(*booking_id);
                    b_zoho.push(zoho_id.clone());
                }
                Effect::BookingFailed { booking_id } => failed_bookings.push(*booking_id),
            }
        }
    }
    erp::clients::set_zoho_contact_ids(&tx, &c_ids, &c_zoho).await?;
    erp::bookings::set_sales_orders(&tx, &b_ids, &b_zoho).await?;
    erp::bookings::mark_sync_failed(&tx, &failed_bookings).await?;
    tx.commit().await?;
    if owned.len() < settlements.len() {
        tracing::warn!(
            lost = settlements.len() - owned.len(),
            "some claimed rows were reclaimed by another drain before they were settled"
        );
    }
    Ok(owned)
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
    let rows = client
        .query(
            "SELECT status, count(*) FROM integrations_outbox GROUP BY status",
            &[],
        )
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        out.insert(r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?);
    }
    Ok(out)
}
