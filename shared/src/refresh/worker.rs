//! The worker: one job message = one Lambda invocation's worth of work on a
//! run, resumed from the run's checkpoint.
//!
//! Fetching pages Kommo by id, so a continuation can resume at a page
//! number and skip anything at or below the highest id already staged;
//! each page is staged together with the new checkpoint in one transaction.
//! Every invocation fetches at least one page before it looks at the
//! deadline, so a run always makes progress however short the time left.

use std::{collections::BTreeSet, sync::Arc};

use chrono::{FixedOffset, TimeZone};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    alert::Alerter,
    job::{Deadline, JobMessage, JobQueue, MemoryQueue},
    runs::{self, RunRecord, RunStatus, StartOutcome},
    settings::RefreshSettings,
    staging::{self, StagedContact, StagedLead, StagedPage, StagedVehicle},
    swap::{swap, SwapOutcome},
    RefreshError,
};
use crate::{
    kommo::{
        map_contact, map_lead, mapping::STATUS_LOST, KommoClient, KommoError, Lead, MappingConfig,
    },
    platform::config::YearBounds,
    platform::db::DbPool,
    platform::flags::{FeatureFlags, Flag},
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

/// The `created_at` bounds of `year`: local midnights at `offset`, or UTC.
pub fn year_bounds(year: i32, offset: Option<FixedOffset>) -> Option<(i64, i64)> {
    let tz = offset.unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    let start = tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single()?;
    let end = tz.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).single()?;
    Some((start.timestamp(), end.timestamp() - 1))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Checkpointed near the deadline; a continuation job was queued.
    Continued,
    Finished(RunStatus),
    /// The run is unknown or already over: nothing to do.
    Skipped,
    /// Another worker holds the lock; the message should be retried later.
    Busy,
}

/// Why fetching stopped early.
enum Stop {
    Kommo {
        page: u32,
        error: KommoError,
    },
    Db(RefreshError),
    /// The run was closed by someone else meanwhile.
    Closed,
}

impl From<RefreshError> for Stop {
    fn from(e: RefreshError) -> Self {
        Stop::Db(e)
    }
}

impl From<tokio_postgres::Error> for Stop {
    fn from(e: tokio_postgres::Error) -> Self {
        Stop::Db(e.into())
    }
}

/// Everything a worker invocation needs, built once per cold start.
#[derive(Clone)]
pub struct Worker {
    pub pool: DbPool,
    pub kommo: KommoClient,
    pub queue: Arc<dyn JobQueue>,
    pub flags: Arc<FeatureFlags>,
    pub alerter: Option<Alerter>,
    pub settings: RefreshSettings,
}

impl Worker {
    /// Works on the job's run until it finishes or the deadline nears.
    /// `Err` means the message should be retried (database or queue down);
    /// the checkpoint makes the retry resume where this one stopped.
    pub async fn process(
        &self,
        job: &JobMessage,
        deadline: Deadline,
    ) -> Result<JobOutcome, RefreshError> {
        let mut conn = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&self.settings.lock_key],
            )
            .await?
            .get(0);
        if !locked {
            tracing::info!(run_id = %job.run_id, "another full-refresh worker holds the lock");
            return Ok(JobOutcome::Busy);
        }
        let result = self.process_locked(client, job, deadline).await;
        // Session locks outlive the invocation on a pooled connection.
        if let Err(e) = client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.settings.lock_key])
            .await
        {
            tracing::warn!(error = %e, "could not release the full-refresh lock");
        }
        result
    }

    async fn process_locked(
        &self,
        client: &mut tokio_postgres::Client,
        job: &JobMessage,
        deadline: Deadline,
    ) -> Result<JobOutcome, RefreshError> {
        let run_id = job.run_id;
        let Some(run) = runs::get_run(&*client, run_id).await? else {
            tracing::warn!(%run_id, "job for an unknown run; dropped");
            return Ok(JobOutcome::Skipped);
        };
        if !run.status.is_active() {
            tracing::info!(%run_id, status = run.status.as_str(), "run already over; job dropped");
            return Ok(JobOutcome::Skipped);
        }
        if !self
            .flags
            .is_enabled(Flag::KommoLive)
            .await
            .map_err(RefreshError::Db)?
        {
            return self
                .close(
                    client,
                    run_id,
                    RunStatus::Failed,
                    "enableKommoLive was turned off; the run stopped before changing production",
                    None,
                )
                .await;
        }

        let mut cp = match run.checkpoint.clone() {
            Some(v) if run.status == RunStatus::Running => {
                match serde_json::from_value::<Checkpoint>(v) {
                    Ok(cp) => cp,
                    Err(e) => {
                        let msg = format!("the run's checkpoint is unreadable: {e}");
                        return self
                            .close(client, run_id, RunStatus::Failed, &msg, None)
                            .await;
                    }
                }
            }
            _ => match self.begin(client, &run).await {
                Ok(cp) => cp,
                Err(Stop::Kommo { error, .. }) => {
                    let msg = format!("Kommo account settings could not be read: {error}");
                    return self
                        .close(client, run_id, RunStatus::Failed, &msg, error.status())
                        .await;
                }
                Err(Stop::Db(e)) => return Err(e),
                Err(Stop::Closed) => return Ok(JobOutcome::Skipped),
            },
        };
        cp.invocations += 1;
        tracing::info!(%run_id, invocation = job.invocation, page = cp.next_page, "full-refresh worker resumes");

        if !cp.fetch_done {
            match self.fetch(client, run_id, &mut cp, deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    let next = JobMessage {
                        run_id,
                        invocation: job.invocation + 1,
                    };
                    self.queue.send(&next).await?;
                    tracing::info!(%run_id, page = cp.next_page, "deadline near; continuation queued");
                    return Ok(JobOutcome::Continued);
                }
                Err(Stop::Kommo { page, error }) => {
                    let msg = format!(
                        "Kommo failed on leads page {page}: {error}; production was left unchanged and staging is kept"
                    );
                    return self
                        .close(client, run_id, RunStatus::Failed, &msg, error.status())
                        .await;
                }
                Err(Stop::Db(e)) => return Err(e),
                Err(Stop::Closed) => return Ok(JobOutcome::Skipped),
            }
        }

        client
            .execute(
                "UPDATE kommo_import_runs SET phase = 'swapping', updated_at = now() WHERE id = $1",
                &[&run_id],
            )
            .await?;
        let swap_started = std::time::Instant::now();
        let swapped = swap(client, run_id, &self.settings).await;
        let swap_ms = swap_started.elapsed().as_millis() as i64;
        if swapped.is_ok() {
            client
                .execute(
                    "UPDATE kommo_import_runs
                        SET checkpoint = coalesce(checkpoint, '{}'::jsonb) || jsonb_build_object('swapMs', $2::bigint)
                      WHERE id = $1",
                    &[&run_id, &swap_ms],
                )
                .await?;
        }
        let status = match swapped {
            Ok(SwapOutcome::Succeeded(_)) => {
                if let Err(e) = staging::cleanup(&*client, self.settings.keep_runs).await {
                    tracing::warn!(error = %e, "staging cleanup failed; it is retried after the next run");
                }
                RunStatus::Succeeded
            }
            Ok(SwapOutcome::NoLeads) => RunStatus::Failed,
            Ok(SwapOutcome::NeedsReview { .. }) => RunStatus::NeedsReview,
            Err(e) => {
                tracing::error!(%run_id, error = %e, "swap failed and was rolled back");
                let msg = format!("the swap failed and was rolled back: {e}");
                return self
                    .close(client, run_id, RunStatus::Failed, &msg, None)
                    .await;
            }
        };
        self.alert(client, run_id).await;
        Ok(JobOutcome::Finished(status))
    }

    /// Moves a queued run to running with its year bounds.
    async fn begin(
        &self,
        client: &mut tokio_postgres::Client,
        run: &RunRecord,
    ) -> Result<Checkpoint, Stop> {
        let offset = match self.settings.year_bounds {
            YearBounds::Utc => None,
            YearBounds::AccountTimezone => {
                let tz = self
                    .kommo
                    .account_timezone()
                    .await
                    .map_err(|error| Stop::Kommo { page: 0, error })?;
                let offset = tz.fixed_offset();
                if offset.is_none() {
                    tracing::warn!(timezone = %tz.timezone, "account has no usable offset; using UTC year bounds");
                }
                offset
            }
        };
        let (from, to) = year_bounds(run.year, offset).ok_or_else(|| {
            Stop::Db(RefreshError::Internal(format!(
                "year {} has no bounds",
                run.year
            )))
        })?;
        let cp = Checkpoint {
            from,
            to,
            next_page: 1,
            max_lead_id: 0,
            fetch_done: false,
            skipped: 0,
            invocations: 0,
            staging_ms: 0,
        };
        let cp_json = serde_json::to_value(&cp)
            .map_err(|e| Stop::Db(RefreshError::Internal(e.to_string())))?;
        let n = client
            .execute(
                "UPDATE kommo_import_runs
                    SET status = 'running', phase = 'fetching', checkpoint = $2, updated_at = now()
                  WHERE id = $1 AND status IN ('queued', 'running')",
                &[&run.id, &cp_json],
            )
            .await?;
        if n == 0 {
            return Err(Stop::Closed);
        }
        tracing::info!(run_id = %run.id, year = run.year, from, to, "full refresh started");
        Ok(cp)
    }

    /// Fetches pages until the end (`Ok(true)`) or the deadline (`Ok(false)`).
    async fn fetch(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        cp: &mut Checkpoint,
        deadline: Deadline,
    ) -> Result<bool, Stop> {
        let mapping = MappingConfig::load(&*client)
            .await
            .map_err(|e| Stop::Db(RefreshError::Mapping(e)))?;
        let mut pages_now = 0u32;
        loop {
            if pages_now > 0 && deadline.near() {
                return Ok(false);
            }
            let page_no = cp.next_page;
            let page = self
                .kommo
                .leads_page(cp.from, cp.to, page_no, self.settings.page_limit)
                .await
                .map_err(|error| Stop::Kommo {
                    page: page_no,
                    error,
                })?;
            let mut skipped = page.invalid.len() as u64;
            let page_max = page.leads.iter().map(|l| l.id).max().unwrap_or(0);
            let mut last = cp.max_lead_id;
            let wanted: Vec<&Lead> = page
                .leads
                .iter()
                .filter(|l| {
                    // Re-checked here: the API's filters are not trusted.
                    let keep = l.status_id != STATUS_LOST
                        && !l.is_deleted
                        && l.created_at >= cp.from
                        && l.created_at <= cp.to
                        && l.id > last;
                    if l.id > last {
                        last = l.id;
                    }
                    keep
                })
                .collect();

            let mut staged = StagedPage::default();
            let mut contact_ids = BTreeSet::new();
            for lead in wanted {
                let m = match map_lead(lead, &mapping) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "lead skipped");
                        skipped += 1;
                        continue;
                    }
                };
                if !m.warnings.is_empty() {
                    tracing::info!(lead_id = m.lead_id, warnings = ?m.warnings, "lead mapped with warnings");
                }
                if let Some(c) = m.main_contact_id {
                    contact_ids.insert(c);
                }
                if let Some(v) = m.vehicle_enum_id {
                    staged.vehicles.push(StagedVehicle {
                        lead_id: m.lead_id,
                        vehicle_enum_id: v,
                        vehicle_name: m.vehicle_name.clone(),
                        is_primary: true,
                    });
                }
                staged.leads.push(StagedLead {
                    lead_id: m.lead_id,
                    payload: lead.raw.clone(),
                    contact_id: m.main_contact_id,
                    vehicle_enum_id: m.vehicle_enum_id,
                    source_enum_id: m.source_enum_id,
                    created_at: Some(m.created_at),
                    updated_at: Some(m.kommo_updated_at),
                    name: m.name,
                    status_id: m.status_id,
                    pipeline_id: Some(m.pipeline_id),
                    price: m.price,
                    responsible_user_id: m.responsible_user_id,
                    owner_id: m.owner_staff_id,
                    booking_status: m.booking_status,
                    excluded: m.excluded,
                    start_at: m.start_at,
                    end_at: m.end_at,
                    lead_source: m.source,
                    closed_at: m.closed_at,
                });
            }

            // Contacts shared with earlier pages are already staged.
            let ids: Vec<i64> = contact_ids.into_iter().collect();
            let known: BTreeSet<i64> = client
                .query(
                    "SELECT contact_id FROM stg_kommo_contacts WHERE run_id = $1 AND contact_id = ANY($2)",
                    &[&run_id, &ids],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<i64> = ids.into_iter().filter(|i| !known.contains(i)).collect();
            if !missing.is_empty() {
                let contacts = self
                    .kommo
                    .contacts_by_ids(&missing)
                    .await
                    .map_err(|error| Stop::Kommo {
                        page: page_no,
                        error,
                    })?;
                let mut seen = BTreeSet::new();
                for c in contacts {
                    if !seen.insert(c.id) || known.contains(&c.id) {
                        continue;
                    }
                    match map_contact(&c) {
                        Ok(mc) => staged.contacts.push(StagedContact {
                            contact_id: mc.contact_id,
                            payload: c.raw.clone(),
                            full_name: mc.full_name,
                            first_name: mc.first_name,
                            last_name: mc.last_name,
                            email: mc.email,
                            phone: mc.phone,
                            phone_normalized: mc.phone_normalized,
                            updated_at: mc.updated_at,
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "contact skipped");
                            skipped += 1;
                        }
                    }
                }
            }

            cp.next_page = page_no + 1;
            cp.max_lead_id = cp.max_lead_id.max(page_max);
            cp.skipped += skipped;
            cp.fetch_done = !page.has_next;
            let write_started = std::time::Instant::now();
            let tx = client.transaction().await?;
            staging::stage_page(&tx, run_id, &staged, self.settings.staging).await?;
            cp.staging_ms += write_started.elapsed().as_millis() as u64;
            let cp_json = serde_json::to_value(&*cp)
                .map_err(|e| Stop::Db(RefreshError::Internal(e.to_string())))?;
            let n = tx
                .execute(
                    "UPDATE kommo_import_runs
                        SET checkpoint = $2, pages_fetched = pages_fetched + 1,
                            leads_count = leads_count + $3, contacts_count = contacts_count + $4,
                            vehicles_count = vehicles_count + $5, updated_at = now()
                      WHERE id = $1 AND status = 'running'",
                    &[
                        &run_id,
                        &cp_json,
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
            pages_now += 1;
            tracing::debug!(%run_id, page = page_no, leads = staged.leads.len(), contacts = staged.contacts.len(), "page staged");
            if cp.fetch_done {
                return Ok(true);
            }
        }
    }

    async fn close(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        status: RunStatus,
        message: &str,
        http_status: Option<u16>,
    ) -> Result<JobOutcome, RefreshError> {
        tracing::warn!(%run_id, status = status.as_str(), http_status, message, "full refresh ended");
        runs::finish(&*client, run_id, status, Some(message), http_status).await?;
        self.alert(client, run_id).await;
        Ok(JobOutcome::Finished(status))
    }

    async fn alert(&self, client: &tokio_postgres::Client, run_id: Uuid) {
        let Some(alerter) = &self.alerter else { return };
        match runs::get_run(client, run_id).await {
            Ok(Some(run)) => {
                alerter.run_finished(&run).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the run for the alert"),
        }
    }
}

/// Runs a full refresh in-process from start to end, with an in-memory job
/// queue and no deadline: for the benchmark, the dev stack and tests.
/// `worker.queue` must be `queue`.
pub async fn run_to_completion(
    worker: &Worker,
    queue: &MemoryQueue,
    triggered_by: &str,
    year: i32,
) -> Result<RunRecord, RefreshError> {
    let run_id = {
        let mut conn = worker.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        match runs::start_run(
            client,
            queue,
            triggered_by,
            year,
            worker.settings.stale_after,
        )
        .await?
        {
            StartOutcome::Started(run) => run.id,
            StartOutcome::AlreadyActive(run) => {
                return Err(RefreshError::Internal(format!(
                    "run {} is already {}",
                    run.id,
                    run.status.as_str()
                )))
            }
        }
    };
    drain(worker, queue, Deadline::none()).await?;
    let conn = worker.pool.get().await?;
    runs::get_run(&**conn, run_id)
        .await?
        .ok_or(RefreshError::UnknownRun(run_id))
}

/// Processes queued jobs until the queue is empty; returns how many ran.
pub async fn drain(
    worker: &Worker,
    queue: &MemoryQueue,
    deadline: Deadline,
) -> Result<usize, RefreshError> {
    let mut n = 0;
    while let Some(job) = queue.pop() {
        worker.process(&job, deadline).await?;
        n += 1;
    }
    Ok(n)
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
