//! The worker: one job message = one Lambda invocation's worth of work on a
//! run, resumed from the run's checkpoint.
//!
//! Fetching ([`fetch`]) pages Kommo by id, so a continuation can resume at a
//! page number and skip anything at or below the highest id already staged;
//! each page is staged together with the new checkpoint ([`checkpoint`]) in
//! one transaction. Every invocation fetches at least one page before it
//! looks at the deadline, so a run always makes progress however short the
//! time left. An invocation that fetched does not start the swap without
//! the swap's timeout left: a fresh one confirms the leads missing from
//! staging with Kommo ([`confirm`]) and swaps. A held run an admin approved
//! comes back as a job too: the worker swaps it, since that swap may take
//! longer than an HTTP request may.

mod checkpoint;
mod confirm;
mod fetch;

use std::{ops::ControlFlow, sync::Arc};

use uuid::Uuid;

pub use checkpoint::{year_bounds, Checkpoint};
use fetch::Stop;

use super::{
    alert::{self, Alerter},
    job::{JobMessage, JobQueue},
    runs::{self, RunRecord, RunStatus},
    settings::RefreshSettings,
    staging, statuses,
    swap::{self, swap, Decision, SwapOutcome},
    zoho_work, RefreshError,
};
use crate::{
    kommo::{KommoClient, KommoError},
    platform::config::YearBounds,
    platform::db::DbPool,
    platform::deadline::Deadline,
    platform::flags::{FeatureFlags, Flag},
};

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
        if let (RunStatus::NeedsReview, Some(approver)) = (run.status, run.approved_by.as_deref()) {
            return self.swap_approved(client, run_id, approver, deadline).await;
        }
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
        let mut cp = match self.resume(client, &run).await? {
            ControlFlow::Continue(cp) => cp,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        cp.invocations += 1;
        tracing::info!(%run_id, invocation = job.invocation, page = cp.next_page, "full-refresh worker resumes");
        let fetched_now = !cp.fetch_done;
        if fetched_now {
            if let ControlFlow::Break(outcome) = self
                .fetch_or_continue(client, job, &mut cp, deadline)
                .await?
            {
                return Ok(outcome);
            }
        }
        // A fresh invocation always swaps, so a short Lambda timeout cannot
        // hand the run on forever.
        if fetched_now && !deadline.allows(self.settings.swap_timeout) {
            self.continue_later(job).await?;
            tracing::info!(%run_id, "fetched; too little time left for the swap, continuation queued");
            return Ok(JobOutcome::Continued);
        }
        if let ControlFlow::Break(outcome) = self.confirm_missing(client, run_id).await? {
            return Ok(outcome);
        }
        self.swap_and_finish(client, run_id, deadline).await
    }

    /// Queues the job's continuation: the checkpoint says where it resumes.
    async fn continue_later(&self, job: &JobMessage) -> Result<(), RefreshError> {
        let next = JobMessage {
            run_id: job.run_id,
            invocation: job.invocation + 1,
        };
        self.queue.send(&next).await
    }

    /// The run's checkpoint: the stored one of a running run, or a new one
    /// for a queued run. `Break` when the run ended instead.
    async fn resume(
        &self,
        client: &mut tokio_postgres::Client,
        run: &RunRecord,
    ) -> Result<ControlFlow<JobOutcome, Checkpoint>, RefreshError> {
        let started = match run.checkpoint.clone() {
            Some(v) if run.status == RunStatus::Running => {
                match serde_json::from_value::<Checkpoint>(v) {
                    Ok(cp) => return Ok(ControlFlow::Continue(cp)),
                    Err(e) => {
                        let msg = format!("the run's checkpoint is unreadable: {e}");
                        let outcome = self
                            .close(client, run.id, RunStatus::Failed, &msg, None)
                            .await?;
                        return Ok(ControlFlow::Break(outcome));
                    }
                }
            }
            _ => self.begin(client, run).await,
        };
        match started {
            Ok(cp) => Ok(ControlFlow::Continue(cp)),
            Err(stop) => {
                let outcome = self
                    .end_early(client, run.id, stop, |_, error| {
                        format!("Kommo account settings could not be read: {error}")
                    })
                    .await?;
                Ok(ControlFlow::Break(outcome))
            }
        }
    }

    /// Moves a queued run to running with its year bounds.
    async fn begin(
        &self,
        client: &tokio_postgres::Client,
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
        // The account's statuses, so every lead meets a labelled status.
        let pipelines = self
            .kommo
            .pipelines()
            .await
            .map_err(|error| Stop::Kommo { page: 0, error })?;
        let listed = statuses::record_pipelines(client, &pipelines).await?;
        tracing::debug!(run_id = %run.id, statuses = listed, "account statuses recorded");
        let cp = Checkpoint::start(from, to);
        checkpoint::begin(client, run.id, &cp).await?;
        tracing::info!(run_id = %run.id, year = run.year, from, to, "full refresh started");
        Ok(cp)
    }

    /// Fetches until the end (`Continue`), or queues a continuation near the
    /// deadline and ends this invocation (`Break`).
    async fn fetch_or_continue(
        &self,
        client: &mut tokio_postgres::Client,
        job: &JobMessage,
        cp: &mut Checkpoint,
        deadline: Deadline,
    ) -> Result<ControlFlow<JobOutcome>, RefreshError> {
        let run_id = job.run_id;
        match self.fetch(client, run_id, cp, deadline).await {
            Ok(true) => Ok(ControlFlow::Continue(())),
            Ok(false) => {
                self.continue_later(job).await?;
                tracing::info!(%run_id, page = cp.next_page, "deadline near; continuation queued");
                Ok(ControlFlow::Break(JobOutcome::Continued))
            }
            Err(stop) => {
                let outcome = self
                    .end_early(client, run_id, stop, |page, error| {
                        format!(
                            "Kommo failed on leads page {page}: {error}; production was left unchanged and staging is kept"
                        )
                    })
                    .await?;
                Ok(ControlFlow::Break(outcome))
            }
        }
    }

    /// Where a run goes when fetching stopped early: a Kommo failure closes
    /// it as failed (`describe` says how), a database error is returned so
    /// SQS retries the job, a run closed meanwhile is skipped.
    async fn end_early(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        stop: Stop,
        describe: impl FnOnce(u32, &KommoError) -> String,
    ) -> Result<JobOutcome, RefreshError> {
        match stop {
            Stop::Kommo { page, error } => {
                let msg = describe(page, &error);
                self.close(client, run_id, RunStatus::Failed, &msg, error.status())
                    .await
            }
            Stop::Db(e) => Err(e),
            Stop::Closed => Ok(JobOutcome::Skipped),
        }
    }

    /// Replaces production from staging and closes the run.
    async fn swap_and_finish(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        deadline: Deadline,
    ) -> Result<JobOutcome, RefreshError> {
        client
            .execute(
                "UPDATE kommo_import_runs SET phase = 'swapping', updated_at = now() WHERE id = $1",
                &[&run_id],
            )
            .await?;
        let swap_started = std::time::Instant::now();
        let swapped = swap(client, run_id, &self.settings).await;
        let swap_ms = swap_started.elapsed().as_millis() as i64;
        if swapped.as_ref().is_ok_and(|o| *o != SwapOutcome::NotOwned) {
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
                self.after_success(client, deadline).await;
                RunStatus::Succeeded
            }
            Ok(SwapOutcome::NoLeads) => RunStatus::Failed,
            Ok(SwapOutcome::NeedsReview { .. }) => RunStatus::NeedsReview,
            // Someone else closed or owns the run; its record is theirs.
            Ok(SwapOutcome::NotOwned) => return Ok(JobOutcome::Skipped),
            Err(e) => {
                tracing::error!(%run_id, error = %e, "swap failed and was rolled back");
                let msg = format!("the swap failed and was rolled back: {e}");
                return self
                    .close(client, run_id, RunStatus::Failed, &msg, None)
                    .await;
            }
        };
        alert::count_finished(status);
        self.alert(client, run_id).await;
        Ok(JobOutcome::Finished(status))
    }

    /// A held run an admin approved: its staging swapped as it is, the guard
    /// waived ([`swap::approve`]). A run discarded meanwhile stays discarded.
    async fn swap_approved(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        approver: &str,
        deadline: Deadline,
    ) -> Result<JobOutcome, RefreshError> {
        let decision = match swap::approve(client, run_id, approver, &self.settings).await {
            Ok(decision) => decision,
            Err(e) => {
                // Rolled back: the run stays held with its approval, the
                // phase says the swap failed, and SQS retries the job.
                tracing::error!(%run_id, error = %e, "the approved swap failed and was rolled back");
                let marked = client
                    .execute(
                        "UPDATE kommo_import_runs SET phase = 'approved_swap_failed', updated_at = now()
                          WHERE id = $1 AND status = 'needs_review'",
                        &[&run_id],
                    )
                    .await;
                if let Err(mark) = marked {
                    tracing::warn!(%run_id, error = %mark, "could not mark the failed approved swap");
                }
                return Err(e);
            }
        };
        match decision {
            Decision::Approved(_) => {
                self.after_success(client, deadline).await;
                alert::count_finished(RunStatus::Succeeded);
                Ok(JobOutcome::Finished(RunStatus::Succeeded))
            }
            other => {
                tracing::info!(%run_id, ?other, "approved run no longer held; job dropped");
                Ok(JobOutcome::Skipped)
            }
        }
    }

    /// After a swap commits: the Zoho work of what changed, old staging.
    async fn after_success(&self, client: &mut tokio_postgres::Client, deadline: Deadline) {
        zoho_work::after_swap(client, &self.flags, deadline).await;
        if let Err(e) = staging::cleanup(&*client, self.settings.keep_runs).await {
            tracing::warn!(error = %e, "staging cleanup failed; it is retried after the next run");
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
        if !runs::finish(&*client, run_id, status, Some(message), http_status).await? {
            tracing::info!(%run_id, "run already closed elsewhere; its record is left as it is");
            return Ok(JobOutcome::Skipped);
        }
        tracing::warn!(%run_id, status = status.as_str(), http_status, message, "full refresh ended");
        alert::count_finished(status);
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
