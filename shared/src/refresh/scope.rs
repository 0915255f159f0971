//! A run's scope: the `created_at` bounds its fetch used, and the only
//! production leads its swap may deactivate. A refresh of 2026 must not
//! hide 2025's bookings, and a lead offset paging skipped (an earlier one
//! was deleted between pages) must not be hidden either: the leads missing
//! from staging are confirmed with Kommo first, and the ones it still has
//! are kept.

use uuid::Uuid;

use super::RefreshError;
use crate::{erp::snapshot::Scope, kommo::mapping::STATUS_LOST, kommo::Lead};

/// The run's scope as the swap applies it. A run started before scopes were
/// recorded answers for its checkpoint's bounds, else its UTC year.
pub async fn of_run(
    client: &impl tokio_postgres::GenericClient,
    run_id: Uuid,
) -> Result<Scope, RefreshError> {
    let row = client
        .query_opt(
            "SELECT coalesce(scope_from, to_timestamp((checkpoint->>'from')::bigint),
                             make_timestamptz(year, 1, 1, 0, 0, 0, 'UTC')),
                    coalesce(scope_to, to_timestamp((checkpoint->>'to')::bigint),
                             make_timestamptz(year + 1, 1, 1, 0, 0, 0, 'UTC') - interval '1 second'),
                    kept_lead_ids
               FROM kommo_import_runs WHERE id = $1",
            &[&run_id],
        )
        .await?
        .ok_or(RefreshError::UnknownRun(run_id))?;
    Ok(Scope {
        from: row.get(0),
        to: row.get(1),
        kept: row.get(2),
    })
}

/// Active Kommo leads of the scope that the run did not stage: the ones
/// the swap would deactivate, before Kommo is asked about them.
pub async fn missing_from_staging(
    client: &impl tokio_postgres::GenericClient,
    run_id: Uuid,
    scope: &Scope,
) -> Result<Vec<i64>, RefreshError> {
    Ok(client
        .query(
            "SELECT l.kommo_lead_id FROM sales_leads l
              WHERE l.source = 'Kommo' AND l.archived_at IS NULL
                AND l.kommo_created_at BETWEEN $2 AND $3
                AND NOT EXISTS (SELECT 1 FROM stg_kommo_leads s
                                 WHERE s.run_id = $1 AND s.lead_id = l.kommo_lead_id)
             UNION
             SELECT b.kommo_lead_id FROM bookings b
              WHERE b.channel = 'Kommo' AND b.is_active
                AND b.kommo_created_at BETWEEN $2 AND $3
                AND NOT EXISTS (SELECT 1 FROM stg_kommo_leads s
                                 WHERE s.run_id = $1 AND s.lead_id = b.kommo_lead_id)
             ORDER BY 1",
            &[&run_id, &scope.from, &scope.to],
        )
        .await?
        .iter()
        .filter_map(|r| r.get::<_, Option<i64>>(0))
        .collect())
}

/// The leads Kommo answered with that still belong to the scope: not
/// deleted, not lost, created inside the bounds.
pub fn still_in_scope(found: &[Lead], scope: &Scope) -> Vec<i64> {
    let (from, to) = (scope.from.timestamp(), scope.to.timestamp());
    let mut kept: Vec<i64> = found
        .iter()
        .filter(|l| {
            !l.is_deleted && l.status_id != STATUS_LOST && (from..=to).contains(&l.created_at)
        })
        .map(|l| l.id)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    kept
}

/// Records the leads to keep on a running run; false when the run is no
/// longer running.
pub async fn keep(
    client: &impl tokio_postgres::GenericClient,
    run_id: Uuid,
    kept: &[i64],
) -> Result<bool, RefreshError> {
    let n = client
        .execute(
            "UPDATE kommo_import_runs SET kept_lead_ids = $2, updated_at = now()
              WHERE id = $1 AND status = 'running'",
            &[&run_id, &kept],
        )
        .await?;
    Ok(n == 1)
}

/// Active Kommo leads of the scope in production: what the drop guard
/// compares the staged count with, so the first run of a year is guarded.
pub async fn active_in_production(
    client: &impl tokio_postgres::GenericClient,
    scope: &Scope,
) -> Result<i64, RefreshError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM sales_leads
              WHERE source = 'Kommo' AND archived_at IS NULL
                AND kommo_created_at BETWEEN $1 AND $2",
            &[&scope.from, &scope.to],
        )
        .await?
        .get(0))
}
