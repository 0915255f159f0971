//! The production swap (seed `001`, steps 1–9) in one transaction.
//!
//! Every value was mapped before staging, so this is set-based SQL over the
//! staging rows of one run. Production rows whose Kommo `updated_at` is newer
//! than the snapshot (a webhook applied a later change while the run was
//! fetching) are left alone: the snapshot must not roll them back.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::erp;

use super::{
    runs::{finish, RunStatus},
    settings::RefreshSettings,
    RefreshError,
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
    /// Too few leads against the last successful run; production is untouched.
    NeedsReview {
        leads: i64,
        previous: i64,
    },
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
    replace_production(client, run_id, &staged).await
}

/// What the run staged, and the last successful run's lead count.
struct Staged {
    started_at: DateTime<Utc>,
    counts: SwapCounts,
    previous: Option<i32>,
}

/// 1. Pre-checks: counts of the staging rows and of the last successful run.
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
    let counts = tx
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
    let (leads, excluded): (i64, i64) = (counts.get(0), counts.get(1));
    let previous: Option<i32> = tx
        .query_opt(
            "SELECT leads_count FROM kommo_import_runs
              WHERE status = 'succeeded' AND year = $1 AND id <> $2
              ORDER BY finished_at DESC NULLS LAST LIMIT 1",
            &[&year, &run_id],
        )
        .await?
        .map(|r| r.get(0));
    tx.commit().await?;
    let staged = Staged {
        started_at: run.get(1),
        counts: SwapCounts {
            leads,
            contacts: counts.get(2),
            vehicles: counts.get(3),
            bookings: leads - excluded,
            excluded,
        },
        previous,
    };
    let c = &staged.counts;
    let progress = json!({"leads": c.leads, "contacts": c.contacts, "vehicles": c.vehicles});
    tracing::info!(%run_id, %progress, previous, "swap pre-checks");
    Ok(staged)
}

/// The guard rails: no leads, or too few against the last successful run,
/// close the run and leave production alone.
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
        finish(
            client,
            run_id,
            RunStatus::Failed,
            Some("Kommo returned no leads for the year; production was left unchanged"),
            None,
        )
        .await?;
        return Ok(Some(SwapOutcome::NoLeads));
    }
    let Some(prev) = staged.previous.filter(|p| *p > 0).map(i64::from) else {
        return Ok(None);
    };
    if (leads as f64) >= (prev as f64) * (1.0 - settings.max_drop) {
        return Ok(None);
    }
    let msg = format!(
        "{leads} leads is a drop of more than {:.0}% from the {prev} of the last successful run; \
         production was left unchanged",
        settings.max_drop * 100.0
    );
    client
        .execute(
            "UPDATE kommo_import_runs SET leads_count = $2, contacts_count = $3,
                    vehicles_count = $4, last_success_count = $5 WHERE id = $1",
            &[
                &run_id,
                &(leads as i32),
                &(contacts as i32),
                &(vehicles as i32),
                &(prev as i32),
            ],
        )
        .await?;
    finish(client, run_id, RunStatus::NeedsReview, Some(&msg), None).await?;
    Ok(Some(SwapOutcome::NeedsReview {
        leads,
        previous: prev,
    }))
}

/// Steps 2–9 in one transaction, through [`crate::erp`]'s set-based writes.
async fn replace_production(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    staged: &Staged,
) -> Result<SwapOutcome, RefreshError> {
    let tx = client.transaction().await?;
    // Re-lock the run: nothing may close it between the checks and the swap.
    tx.execute(
        "SELECT 1 FROM kommo_import_runs WHERE id = $1 FOR UPDATE",
        &[&run_id],
    )
    .await?;
    write_production(&tx, run_id, staged).await?;
    tx.commit().await?;
    tracing::info!(%run_id, counts = ?staged.counts, "full refresh swapped into production");
    Ok(SwapOutcome::Succeeded(staged.counts))
}

/// Steps 2–9 inside the caller's transaction, which holds the run's lock.
async fn write_production(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    staged: &Staged,
) -> Result<(), RefreshError> {
    // 2. No outbox writes from this transaction (see migration V4).
    tx.execute(
        "SELECT set_config('integrations.outbox_suppressed', 'on', true)",
        &[],
    )
    .await?;

    // 3–7. Soft-delete current Kommo data, then clients (matched to
    //      existing ones exactly as webhook ingest does), sales leads,
    //      vehicles, bookings and their vehicle links.
    erp::snapshot::apply(tx, run_id, staged.started_at).await?;

    // 8–9. Record the outcome with the data, so `succeeded` never shows
    //      for a swap that did not commit.
    let counts = staged.counts;
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
    Ok(())
}

/// An operator's decision on a run held as `needs_review`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The run's staging is in production, as it was staged.
    Approved(SwapCounts),
    /// The run is closed; production is as it was.
    Discarded,
    /// The run is not (or no longer) held for review.
    NotHeld,
}

/// Swaps a held run's staging into production as it is, the guard waived,
/// and records who approved it, in one transaction.
pub async fn approve(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    approver: &str,
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
    write_production(&tx, run_id, &staged).await?;
    tx.execute(
        "INSERT INTO audit_log (actor, action, subject, previous, current)
         VALUES ($1, 'refresh.approve', $2, $3, $4)",
        &[
            &approver,
            &run_id.to_string(),
            &json!({"status": "needs_review", "error": guard, "previous_leads": staged.previous}),
            &json!({"status": "succeeded", "leads": staged.counts.leads}),
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(%run_id, approver, counts = ?staged.counts, "held full refresh approved and swapped");
    Ok(Decision::Approved(staged.counts))
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
