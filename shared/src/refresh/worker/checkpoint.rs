//! The run's checkpoint: where fetching stands, stored in
//! `kommo_import_runs.checkpoint` and written with each staged page, so a
//! continuation resumes exactly where the last invocation stopped.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::fetch::Stop;
use crate::refresh::{
    staging::{self, StagedPage},
    RefreshError,
};

/// Where fetching stands; stored in `kommo_import_runs.checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// `created_at` bounds, Unix seconds, both inclusive (Kommo's filter is).
    pub from: i64,
    pub to: i64,
    pub next_page: u32,
    /// Highest lead id seen; with `order[id]=asc`, anything at or below it
    /// on a later page is a repeat caused by offset paging over live data.
    pub max_lead_id: i64,
    pub fetch_done: bool,
    /// Leads or contacts that could not be parsed or mapped.
    pub skipped: u64,
    pub invocations: u32,
    /// Milliseconds spent writing staging rows and checkpoints (the
    /// database side of fetching, for operators and the benchmark).
    #[serde(default)]
    pub staging_ms: u64,
}

impl Checkpoint {
    /// The checkpoint of a run that has not fetched anything yet.
    pub fn start(from: i64, to: i64) -> Self {
        Checkpoint {
            from,
            to,
            next_page: 1,
            max_lead_id: 0,
            fetch_done: false,
            skipped: 0,
            invocations: 0,
            staging_ms: 0,
        }
    }

    fn to_json(&self) -> Result<serde_json::Value, Stop> {
        serde_json::to_value(self).map_err(|e| Stop::Db(RefreshError::Internal(e.to_string())))
    }
}

/// The `created_at` bounds of `year`: local midnights at `offset`, or UTC.
pub fn year_bounds(year: i32, offset: Option<FixedOffset>) -> Option<(i64, i64)> {
    let tz = offset.unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    let start = tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single()?;
    let end = tz.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).single()?;
    Some((start.timestamp(), end.timestamp() - 1))
}

/// Moves a queued run to running (phase `fetching`) with its first
/// checkpoint, and records its scope: the swap answers for the leads
/// created inside the bounds this fetch uses, and no others.
pub(super) async fn begin(
    client: &tokio_postgres::Client,
    run_id: Uuid,
    cp: &Checkpoint,
) -> Result<(), Stop> {
    let bound = |secs: i64| {
        DateTime::<Utc>::from_timestamp(secs, 0)
            .ok_or_else(|| Stop::Db(RefreshError::Internal(format!("bound {secs} is no time"))))
    };
    let n = client
        .execute(
            "UPDATE kommo_import_runs
                SET status = 'running', phase = 'fetching', checkpoint = $2, updated_at = now(),
                    scope_from = $3, scope_to = $4
              WHERE id = $1 AND status IN ('queued', 'running')",
            &[&run_id, &cp.to_json()?, &bound(cp.from)?, &bound(cp.to)?],
        )
        .await?;
    if n == 0 {
        return Err(Stop::Closed);
    }
    Ok(())
}

/// Stages a page and saves the checkpoint that follows it in one
/// transaction: staging always matches the checkpoint.
pub(super) async fn save_page(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    cp: &mut Checkpoint,
    staged: &StagedPage,
) -> Result<(), Stop> {
    let write_started = std::time::Instant::now();
    let tx = client.transaction().await?;
    staging::stage_page(&tx, run_id, staged).await?;
    cp.staging_ms += write_started.elapsed().as_millis() as u64;
    let n = tx
        .execute(
            "UPDATE kommo_import_runs
                SET checkpoint = $2, pages_fetched = pages_fetched + 1,
                    leads_count = leads_count + $3, contacts_count = contacts_count + $4,
                    vehicles_count = vehicles_count + $5, updated_at = now()
              WHERE id = $1 AND status = 'running'",
            &[
                &run_id,
                &cp.to_json()?,
                &(staged.leads.len() as i32),
                &(staged.contacts.len() as i32),
                &(staged.vehicles.len() as i32),
            ],
        )
        .await?;
    if n == 0 {
        return Err(Stop::Closed);
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_bounds_are_utc_by_default_and_local_on_request() {
        assert_eq!(
            year_bounds(2025, None),
            Some((1_735_689_600, 1_767_225_599))
        );
        let dubai = FixedOffset::east_opt(4 * 3600);
        assert_eq!(
            year_bounds(2025, dubai),
            Some((1_735_689_600 - 4 * 3600, 1_767_225_599 - 4 * 3600))
        );
    }
}
