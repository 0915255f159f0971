//! The full refresh in-process, for tests and the benchmark: an in-memory
//! job queue, the loop that works it off (Lambda's SQS trigger in
//! production), a whole run from start to swap, and the one-`INSERT`-per-row
//! staging baseline that binary `COPY` is measured against.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use shared::{
    platform::deadline::Deadline,
    refresh::{
        runs,
        staging::{self, StagedPage, StagingTable, CONTACTS, LEADS, VEHICLES},
        JobMessage, JobQueue, RefreshError, RunRecord, StartOutcome, Worker,
    },
};
use tokio_postgres::Transaction;
use uuid::Uuid;

/// An in-process job queue.
#[derive(Default)]
pub struct MemoryQueue {
    jobs: Mutex<VecDeque<JobMessage>>,
    /// When set, `send` fails (tests of a queue outage).
    pub fail: AtomicBool,
}

impl MemoryQueue {
    pub fn pop(&self) -> Option<JobMessage> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl JobQueue for MemoryQueue {
    async fn send(&self, job: &JobMessage) -> Result<(), RefreshError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(RefreshError::Queue("memory queue set to fail".into()));
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job.clone());
        Ok(())
    }
}

/// Processes queued jobs until the queue is empty, as the SQS trigger
/// would; returns how many ran.
pub async fn process_queued_jobs(
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

/// Runs a full refresh in-process from start to end, with no deadline.
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
    process_queued_jobs(worker, queue, Deadline::none()).await?;
    let conn = worker.pool.get().await?;
    runs::get_run(&**conn, run_id)
        .await?
        .ok_or(RefreshError::UnknownRun(run_id))
}

/// How a page reaches the staging tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingMethod {
    /// Binary `COPY`, as the worker stages.
    BinaryCopy,
    /// One `INSERT` per row: the seed's design, the baseline to beat.
    RowInserts,
}

/// Writes one page into the three staging tables with `method`.
pub async fn stage_page_with(
    tx: &Transaction<'_>,
    run_id: Uuid,
    page: &StagedPage,
    method: StagingMethod,
) -> Result<(), RefreshError> {
    match method {
        StagingMethod::BinaryCopy => staging::stage_page(tx, run_id, page).await,
        StagingMethod::RowInserts => {
            insert_rows(tx, &LEADS, &run_id, &page.leads).await?;
            insert_rows(tx, &CONTACTS, &run_id, &page.contacts).await?;
            insert_rows(tx, &VEHICLES, &run_id, &page.vehicles).await?;
            Ok(())
        }
    }
}

async fn insert_rows<T, const N: usize>(
    tx: &Transaction<'_>,
    table: &StagingTable<T, N>,
    run_id: &Uuid,
    rows: &[T],
) -> Result<u64, RefreshError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let placeholders: Vec<String> = (1..=N).map(|i| format!("${i}")).collect();
    let stmt = tx
        .prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            table.columns,
            placeholders.join(", ")
        ))
        .await?;
    let mut n = 0;
    for row in rows {
        n += tx.execute(&stmt, &(table.values)(run_id, row)).await?;
    }
    Ok(n)
}
