//! The production swap (seed `001`, steps 1–9) in one transaction.
//!
//! Every value was mapped before staging, so this is set-based SQL over the
//! staging rows of one run. Production rows whose Kommo `updated_at` is newer
//! than the snapshot (a webhook applied a later change while the run was
//! fetching) are left alone: the snapshot must not roll them back; nor does
//! it bring back a lead deleted in Kommo after its page was fetched. Only
//! the leads created inside the run's scope ([`super::scope`]) are
//! deactivated. The swap holds the snapshot lock exclusively against the
//! webhook processor, each statement has the account's timeout, and it
//! commits only while its run is still `running` and no other worker holds
//! the run lock.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::erp::{self, snapshot::Scope};

use super::{
    runs::{finish, RunStatus},
    scope,
    settings::RefreshSettings,
    statuses, RefreshError,
};

/// What the swap wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapCounts {
    /// Staged leads (every status but 143, in the year).
    pub leads: i64,
    /// Staged contacts (distinct main contacts).
    pub contacts: i64,
    /// Distinct booking–vehicle links of bookable leads.
    pub vehicles: i64,
    /// Leads that became active bookings.
    pub bookings: i64,
    /// Leads in excluded statuses: in `sales_leads`, not in `bookings`.
    pub excluded: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapOutcome {
    Succeeded(SwapCounts),
    /// Nothing was staged; production is untouched and the run failed.
    NoLeads,
    /// Too few leads against what is active in production inside the
    /// scope (`previous`); production is untouched.
    NeedsReview {
        leads: i64,
        previous: i64,
    },
    /// The run was closed meanwhile (as stale) or another worker holds the
    /// run lock: nothing was written, the run is left as it is.
    NotOwned,
}

/// Pre-checks, then replaces the Kommo-derived rows and marks the run
/// `succeeded` in the same transaction. Any error rolls everything back.
pub async fn swap(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    settings: &RefreshSettings,
) -> Result<SwapOutcome, RefreshError> {
    let staged = pre_check(client, run_id).await?;
    if let Some(refused) = refuse(client, run_id, &staged, settings).await? {
        return Ok(refused);
    }
    replace_production(client, run_id, &staged, settings).await
}

/// What the run staged, its scope, and what production holds inside it.
struct Staged {
    started_at: DateTime<Utc>,
    counts: SwapCounts,
    scope: Scope,
    /// Active Kommo leads in production inside the scope.
    previous: Option<i32>,
}

/// 1. Pre-checks: counts of the staging rows and of production inside the
///    run's scope, and the leads in unmapped statuses.
async fn pre_check(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
) -> Result<Staged, RefreshError> {
    let tx = client.transaction().await?;
    let run = tx
        .query_opt(
            "SELECT year, started_at FROM kommo_import_runs WHERE id = $1 FOR UPDATE",
            &[&run_id],
        )
        .await?
        .ok_or(RefreshError::UnknownRun(run_id))?;
    let year: i32 = run.get(0);
    let counts = staged_counts(&tx, run_id).await?;
    let scope = scope::of_run(&tx, run_id).await?;
    let active = scope::active_in_production(&tx, &scope).await?;
    let previous = Some(i32::try_from(active).unwrap_or(i32::MAX));
    statuses::record_unmapped(&tx, run_id).await?;
    tx.commit().await?;
    let staged = Staged {
        started_at: run.get(1),
        counts,
        scope,
        previous,
    };
    let c = &staged.counts;
    let progress = json!({"leads": c.leads, "contacts": c.contacts, "vehicles": c.vehicles});
    tracing::info!(%run_id, %progress, year, active_in_scope = active, kept = staged.scope.kept.len(), "swap pre-checks");
    Ok(staged)
}

/// What the run's staging holds, as the swap will write it.
async fn staged_counts(
    client: &impl tokio_postgres::GenericClient,
    run_id: Uuid,
) -> Result<SwapCounts, RefreshError> {
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1),
                    (SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1 AND excluded),
                    (SELECT count(*) FROM stg_kommo_contacts WHERE run_id = $1),
                    (SELECT count(*) FROM (SELECT DISTINCT v.lead_id, v.vehicle_enum_id
                                             FROM stg_kommo_booking_vehicles v
                                             JOIN stg_kommo_leads s ON s.run_id = v.run_id AND s.lead_id = v.lead_id
                                            WHERE v.run_id = $1 AND NOT s.excluded) x)",
            &[&run_id],
        )
        .await?;
    let (leads, excluded): (i64, i64) = (counts.try_get(0)?, counts.try_get(1)?);
    Ok(SwapCounts {
        leads,
        contacts: counts.try_get(2)?,
        vehicles: counts.try_get(3)?,
        bookings: leads - excluded,
        excluded,
    })
}

/// The guard rails: no leads, or too few against what is active in
/// production inside the scope (the leads Kommo confirmed it still has
/// count as kept), close the run and leave production alone.
async fn refuse(
    client: &tokio_postgres::Client,
    run_id: Uuid,
    staged: &Staged,
    settings: &RefreshSettings,
) -> Result<Option<SwapOutcome>, RefreshError> {
    let SwapCounts {
        leads,
        contacts,
        vehicles,
        ..
    } = staged.counts;
    if leads == 0 {
        let closed = finish(
            client,
            run_id,
            RunStatus::Failed,
            Some("Kommo returned no leads for the year; production was left unchanged"),
            None,
        )
        .await?;
        return Ok(Some(if closed {
            SwapOutcome::NoLeads
        } else {
            SwapOutcome::NotOwned
        }));
    }
    let Some(prev) = staged.previous.filter(|p| *p > 0).map(i64::from) else {
        return Ok(None);
    };
    let kept = staged.scope.kept.len() as i64;
    if ((leads + kept) as f64) >= (prev as f64) * (1.0 - settings.max_drop) {
        return Ok(None);
    }
    let msg = format!(
        "{leads} leads is a drop of more than {:.0}% from the {prev} active in production for the \
         run's year; production was left unchanged",
        settings.max_drop * 100.0
    );
    // Only a run still running is held: one a start closed as stale must
    // not become approvable.
    let counted = client
        .execute(
            "UPDATE kommo_import_runs SET leads_count = $2, contacts_count = $3,
                    vehicles_count = $4, last_success_count = $5
              WHERE id = $1 AND status = 'running'",
            &[
                &run_id,
                &(leads as i32),
                &(contacts as i32),
                &(vehicles as i32),
                &(prev as i32),
            ],
        )
        .await?;
    if counted == 0 || !finish(client, run_id, RunStatus::NeedsReview, Some(&msg), None).await? {
        return Ok(Some(SwapOutcome::NotOwned));
    }
    Ok(Some(SwapOutcome::NeedsReview {
        leads,
        previous: prev,
    }))
}

/// Steps 2–9 in one transaction, through [`crate::erp`]'s set-based writes,
/// committed only while the run is still the worker's.
async fn replace_production(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    staged: &Staged,
    settings: &RefreshSettings,
) -> Result<SwapOutcome, RefreshError> {
    let tx = client.transaction().await?;
    // Locks the run row: nothing may close it between here and the commit,
    // and only this session can release its worker lock.
    if !owned(&tx, run_id, settings.lock_key).await? {
        tracing::warn!(%run_id, "the run is no longer running or this session does not hold the worker lock; swap skipped");
        return Ok(SwapOutcome::NotOwned);
    }
    let counts = write_production(&tx, run_id, staged, settings).await?;
    tx.commit().await?;
    tracing::info!(%run_id, ?counts, "full refresh swapped into production");
    Ok(SwapOutcome::Succeeded(counts))
}

/// Whether the run is still `running` (its row locked for the transaction)
/// and this session holds the worker's run lock (`lock_key`, a `bigint`
/// key; advisory locks are per database, `pg_locks` is not).
async fn owned(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    lock_key: i64,
) -> Result<bool, RefreshError> {
    let row = tx
        .query_opt(
            "SELECT status = 'running' AND EXISTS (
                        SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = ($2::bigint >> 32)::oid
                           AND l.objid = ($2::bigint & 4294967295)::oid
                           AND l.pid = pg_backend_pid())
               FROM kommo_import_runs WHERE id = $1 FOR UPDATE",
            &[&run_id, &lock_key],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Steps 2–9 inside the caller's transaction, which holds the run's row.
/// Returns what was written: the staged counts less the leads deleted in
/// Kommo since their page was fetched.
async fn write_production(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    staged: &Staged,
    settings: &RefreshSettings,
) -> Result<SwapCounts, RefreshError> {
    // Each statement of the swap, not the whole of it, gets the timeout. JIT
    // off: the client match's estimate can pass `jit_above_cost`, and compiling
    // took 0.55 s for 0.3 s of work (docs/benchmarks.md, the swap's profile).
    let timeout = format!("{}ms", settings.swap_timeout.as_millis());
    tx.execute(
        "SELECT set_config('statement_timeout', $1, true), set_config('jit', 'off', true)",
        &[&timeout],
    )
    .await?;
    // Before any row lock: deliveries in flight finish, later ones wait.
    erp::snapshot::exclusive_lock(tx).await?;
    // A delete the processor applied after the lead's page was fetched wins
    // over the staged copy; the staging row goes with the transaction.
    let deleted = tx
        .execute(
            "DELETE FROM stg_kommo_leads s USING kommo_lead_deletions d
              WHERE s.run_id = $1 AND d.lead_id = s.lead_id AND d.deleted_at >= $2",
            &[&run_id, &staged.started_at],
        )
        .await?;
    let counts = if deleted > 0 {
        tracing::info!(%run_id, deleted, "staged leads deleted in Kommo since their page was fetched are left out");
        staged_counts(tx, run_id).await?
    } else {
        staged.counts
    };

    // 2. No outbox writes from this transaction (see migration V4).
    tx.execute(
        "SELECT set_config('integrations.outbox_suppressed', 'on', true)",
        &[],
    )
    .await?;

    // 3–7. Soft-delete current Kommo data, then clients (matched to
    //      existing ones exactly as webhook ingest does), sales leads,
    //      vehicles, bookings and their vehicle links.
    let deactivated = erp::snapshot::apply(tx, run_id, staged.started_at, &staged.scope).await?;
    tracing::info!(%run_id, deactivated, "Kommo rows of the scope missing from the snapshot deactivated");

    // 8–9. Record the outcome with the data, so `succeeded` never shows
    //      for a swap that did not commit.
    tx.execute(
        "UPDATE kommo_import_runs
            SET status = 'succeeded', phase = 'succeeded', finished_at = now(), updated_at = now(),
                leads_count = $2, contacts_count = $3, vehicles_count = $4,
                last_success_count = $5, error = NULL
          WHERE id = $1",
        &[
            &run_id,
            &(counts.leads as i32),
            &(counts.contacts as i32),
            &(counts.vehicles as i32),
            &staged.previous,
        ],
    )
    .await?;
    Ok(counts)
}

/// An operator's decision on a run held as `needs_review`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The run's staging is in production, as it was staged.
    Approved(SwapCounts),
    /// The approval is recorded; the worker swaps the run.
    ApprovalQueued,
    /// The run is closed; production is as it was.
    Discarded,
    /// The run is not (or no longer) held for review.
    NotHeld,
}

/// Records an admin's approval of a held run, for the worker to carry out
/// with [`approve`]. The first approver stands; approving again only says
/// whether the run is still held. `NotHeld` when it is not.
pub async fn request_approval(
    client: &tokio_postgres::Client,
    run_id: Uuid,
    approver: &str,
) -> Result<Decision, RefreshError> {
    let known = client
        .query_opt(
            "UPDATE kommo_import_runs
                SET approved_by = coalesce(approved_by, $2),
                    approved_at = coalesce(approved_at, now()),
                    phase = 'approved', updated_at = now()
              WHERE id = $1 AND status = 'needs_review'
          RETURNING approved_by",
            &[&run_id, &approver],
        )
        .await?;
    if known.is_some() {
        tracing::warn!(%run_id, approver, "held full refresh approved; the worker swaps it");
        return Ok(Decision::ApprovalQueued);
    }
    let exists = client
        .query_opt("SELECT 1 FROM kommo_import_runs WHERE id = $1", &[&run_id])
        .await?;
    match exists {
        Some(_) => Ok(Decision::NotHeld),
        None => Err(RefreshError::UnknownRun(run_id)),
    }
}

/// Swaps a held run's staging into production as it is, the guard waived,
/// and records who approved it, in one transaction.
pub async fn approve(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    approver: &str,
    settings: &RefreshSettings,
) -> Result<Decision, RefreshError> {
    let staged = pre_check(client, run_id).await?;
    let tx = client.transaction().await?;
    let held = tx
        .query_opt(
            "SELECT error FROM kommo_import_runs WHERE id = $1 AND status = 'needs_review' FOR UPDATE",
            &[&run_id],
        )
        .await?;
    let Some(held) = held else {
        return Ok(Decision::NotHeld);
    };
    let guard: Option<String> = held.try_get(0)?;
    let counts = write_production(&tx, run_id, &staged, settings).await?;
    tx.execute(
        "INSERT INTO audit_log (actor, action, subject, previous, current)
         VALUES ($1, 'refresh.approve', $2, $3, $4)",
        &[
            &approver,
            &run_id.to_string(),
            &json!({"status": "needs_review", "error": guard, "previous_leads": staged.previous}),
            &json!({"status": "succeeded", "leads": counts.leads}),
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(%run_id, approver, ?counts, "held full refresh approved and swapped");
    Ok(Decision::Approved(counts))
}

/// Closes a held run without touching production (`discard_import_run`,
/// which records it in `audit_log` for `actor`).
pub async fn discard(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    actor: &str,
) -> Result<Decision, RefreshError> {
    let tx = client.transaction().await?;
    tx.query_one("SELECT set_config('audit.actor', $1, true)", &[&actor])
        .await?;
    let done: bool = tx
        .query_one("SELECT discard_import_run($1, NULL)", &[&run_id])
        .await?
        .try_get(0)?;
    tx.commit().await?;
    Ok(if done {
        Decision::Discarded
    } else {
        Decision::NotHeld
    })
}
