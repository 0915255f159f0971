//! Run records (`kommo_import_runs`): start with the one-active-run rule,
//! live progress, terminal states, and the JSON the API returns.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{
    job::{JobMessage, JobQueue},
    RefreshError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    NeedsReview,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::NeedsReview => "needs_review",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "needs_review" => RunStatus::NeedsReview,
            _ => return None,
        })
    }

    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// One `kommo_import_runs` row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: Uuid,
    pub triggered_by: Option<String>,
    pub status: RunStatus,
    pub year: i32,
    pub phase: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub leads: i32,
    pub contacts: i32,
    pub vehicles: i32,
    pub pages_fetched: i32,
    pub last_success_count: Option<i32>,
    pub checkpoint: Option<Value>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// The `created_at` bounds the run fetched and answers for.
    pub scope_from: Option<DateTime<Utc>>,
    pub scope_to: Option<DateTime<Utc>>,
    /// Leads missing from staging that Kommo confirmed it still has.
    pub kept_leads: i32,
    /// Staged leads in statuses nobody has mapped, and which statuses.
    pub unmapped_leads: i32,
    pub unmapped_statuses: Value,
    /// Who approved a held run, and when; the worker swaps it.
    pub approved_by: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
}

pub(crate) const RUN_COLUMNS: &str =
    "id, triggered_by, status, year, phase, started_at, finished_at, \
     leads_count, contacts_count, vehicles_count, pages_fetched, last_success_count, checkpoint, \
     http_status, error, updated_at, scope_from, scope_to, \
     cardinality(kept_lead_ids) AS kept_leads, unmapped_leads, unmapped_statuses, \
     approved_by, approved_at";

impl RunRecord {
    pub(crate) fn from_row(r: &Row) -> Self {
        let status: String = r.get("status");
        RunRecord {
            id: r.get("id"),
            triggered_by: r.get("triggered_by"),
            // The CHECK constraint allows only the five known values.
            status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
            year: r.get("year"),
            phase: r.get("phase"),
            started_at: r.get("started_at"),
            finished_at: r.get("finished_at"),
            leads: r.get("leads_count"),
            contacts: r.get("contacts_count"),
            vehicles: r.get("vehicles_count"),
            pages_fetched: r.get("pages_fetched"),
            last_success_count: r.get("last_success_count"),
            checkpoint: r.get("checkpoint"),
            http_status: r.get("http_status"),
            error: r.get("error"),
            updated_at: r.get("updated_at"),
            scope_from: r.get("scope_from"),
            scope_to: r.get("scope_to"),
            kept_leads: r.get("kept_leads"),
            unmapped_leads: r.get("unmapped_leads"),
            unmapped_statuses: r.get("unmapped_statuses"),
            approved_by: r.get("approved_by"),
            approved_at: r.get("approved_at"),
        }
    }

    /// The API's view: the seed's `{runId, status, leads, contacts, vehicles}`
    /// plus live progress.
    pub fn to_json(&self) -> Value {
        json!({
            "runId": self.id,
            "status": self.status.as_str(),
            "leads": self.leads,
            "contacts": self.contacts,
            "vehicles": self.vehicles,
            "year": self.year,
            "phase": self.phase,
            "pagesFetched": self.pages_fetched,
            "triggeredBy": self.triggered_by,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "updatedAt": self.updated_at,
            "lastSuccessCount": self.last_success_count,
            "httpStatus": self.http_status,
            "error": self.error,
            "scope": {"createdFrom": self.scope_from, "createdTo": self.scope_to},
            "keptLeads": self.kept_leads,
            "unmappedLeads": self.unmapped_leads,
            "unmappedStatuses": self.unmapped_statuses,
            "approval": self.approved_by.as_ref().map(|by| json!({"by": by, "at": self.approved_at})),
        })
    }
}

#[derive(Debug, Clone)]
pub enum StartOutcome {
    Started(RunRecord),
    /// Another run is queued or running; nothing was created.
    AlreadyActive(RunRecord),
}

const ACTIVE_INDEX: &str = "kommo_import_runs_one_active_idx";

/// Creates a queued run unless one is active. An active run that made no
/// progress for `stale_after` is closed as failed first: its worker died,
/// and refusing every later start would need a database fix.
pub async fn create_run(
    client: &mut tokio_postgres::Client,
    triggered_by: &str,
    year: i32,
    stale_after: std::time::Duration,
) -> Result<StartOutcome, RefreshError> {
    let tx = client.transaction().await?;
    let active = tx
        .query_opt(
            &format!(
                "SELECT {RUN_COLUMNS}, updated_at < now() - make_interval(secs => $1) AS stale
                   FROM kommo_import_runs WHERE status IN ('queued', 'running') FOR UPDATE"
            ),
            &[&(stale_after.as_secs_f64())],
        )
        .await?;
    if let Some(row) = active {
        let run = RunRecord::from_row(&row);
        if !row.get::<_, bool>("stale") {
            return Ok(StartOutcome::AlreadyActive(run));
        }
        tracing::warn!(run_id = %run.id, "closing an abandoned full-refresh run");
        tx.execute(
            "UPDATE kommo_import_runs
                SET status = 'failed', phase = 'failed', finished_at = now(), updated_at = now(),
                    error = coalesce(error || '; ', '') || 'abandoned: no progress for ' || $2::text || ' s'
              WHERE id = $1",
            &[&run.id, &(stale_after.as_secs() as i64).to_string()],
        )
        .await?;
    }
    let inserted = tx
        .query_one(
            &format!(
                "INSERT INTO kommo_import_runs (triggered_by, year, status, phase)
                 VALUES ($1, $2, 'queued', 'queued') RETURNING {RUN_COLUMNS}"
            ),
            &[&triggered_by, &year],
        )
        .await;
    match inserted {
        Ok(row) => {
            tx.commit().await?;
            Ok(StartOutcome::Started(RunRecord::from_row(&row)))
        }
        // A concurrent start won between our check and insert.
        Err(e) if is_unique_violation(&e, ACTIVE_INDEX) => {
            drop(tx);
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM kommo_import_runs
                          WHERE status IN ('queued', 'running')"
                    ),
                    &[],
                )
                .await?;
            match row {
                Some(r) => Ok(StartOutcome::AlreadyActive(RunRecord::from_row(&r))),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some(constraint)
    })
}

/// Creates the run and queues its first job. If the queue refuses, the run
/// is closed as failed so it does not block the next start.
pub async fn start_run(
    client: &mut tokio_postgres::Client,
    queue: &dyn JobQueue,
    triggered_by: &str,
    year: i32,
    stale_after: std::time::Duration,
) -> Result<StartOutcome, RefreshError> {
    let outcome = create_run(client, triggered_by, year, stale_after).await?;
    if let StartOutcome::Started(run) = &outcome {
        let job = JobMessage {
            run_id: run.id,
            invocation: 0,
        };
        if let Err(e) = queue.send(&job).await {
            tracing::error!(run_id = %run.id, error = %e, "could not queue the full-refresh job");
            finish(
                &*client,
                run.id,
                RunStatus::Failed,
                Some(&e.to_string()),
                None,
            )
            .await?;
            return Err(e);
        }
        tracing::info!(run_id = %run.id, year, triggered_by, "full refresh queued");
    }
    Ok(outcome)
}

pub async fn get_run(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<RunRecord>, RefreshError> {
    Ok(client
        .query_opt(
            &format!("SELECT {RUN_COLUMNS} FROM kommo_import_runs WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(RunRecord::from_row))
}

/// The most recent runs first.
pub async fn list_runs(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<RunRecord>, RefreshError> {
    Ok(client
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM kommo_import_runs
                  ORDER BY started_at DESC, id LIMIT $1"
            ),
            &[&limit.clamp(1, 100)],
        )
        .await?
        .iter()
        .map(RunRecord::from_row)
        .collect())
}

/// Closes a run that is still queued or running in a terminal state; the
/// phase names the state too, so the UI's progress line ends where the run
/// did. False when the run was already closed (a start closed it as stale):
/// its record is left as it is.
pub async fn finish(
    client: &impl GenericClient,
    id: Uuid,
    status: RunStatus,
    error: Option<&str>,
    http_status: Option<u16>,
) -> Result<bool, RefreshError> {
    let http_status = http_status.map(i32::from);
    let n = client
        .execute(
            "UPDATE kommo_import_runs
                SET status = $2, phase = $2, finished_at = now(), updated_at = now(),
                    error = coalesce($3, error), http_status = coalesce($4, http_status)
              WHERE id = $1 AND status IN ('queued', 'running')",
            &[&id, &status.as_str(), &error, &http_status],
        )
        .await?;
    Ok(n == 1)
}
