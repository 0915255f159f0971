//! The Kommo full refresh: a push-button, resumable, all-or-nothing import of
//! one year of leads (seed `001`).
//!
//! The HTTP side only creates a run ([`runs`]) and queues a job ([`job`]);
//! the SQS worker ([`worker`]) pages Kommo into the `stg_kommo_*` tables with
//! binary `COPY` ([`staging`]), checkpointing so a run spans as many Lambda
//! invocations as it needs, then replaces the Kommo-derived production rows
//! in one transaction ([`swap`]) and queues the Zoho work of what changed
//! ([`zoho_work`]). Failed or suspicious runs raise a Slack
//! alert ([`alert`]). Everything here runs without Lambda, so tests and the
//! benchmark drive it in-process (`testkit::refresh` holds their in-memory
//! queue and the loop that works it off).

pub mod alert;
pub mod job;
pub mod runs;
pub mod scope;
pub mod settings;
pub mod staging;
pub mod statuses;
pub mod swap;
pub mod worker;
pub mod zoho_work;

pub use alert::Alerter;
pub use job::{JobMessage, JobQueue};
pub use runs::{RunRecord, RunStatus, StartOutcome};
pub use settings::RefreshSettings;
pub use worker::{Checkpoint, JobOutcome, Worker};

use crate::platform::db::DbError;

/// Why a refresh step failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("could not queue the full-refresh job: {0}")]
    Queue(String),
    #[error("full-refresh run {0} does not exist")]
    UnknownRun(uuid::Uuid),
    #[error(transparent)]
    Mapping(#[from] crate::kommo::MappingError),
    #[error("full-refresh state is inconsistent: {0}")]
    Internal(String),
}

impl From<tokio_postgres::Error> for RefreshError {
    fn from(e: tokio_postgres::Error) -> Self {
        RefreshError::Db(DbError::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for RefreshError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        RefreshError::Db(DbError::Pool(e))
    }
}
