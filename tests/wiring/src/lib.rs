//! Local AWS wiring: what `cargo lambda watch` does not provide.
//!
//! In AWS, Lambda's event-source mapping polls SQS and EventBridge invokes the
//! outbox drain every minute. Locally nothing does, so this crate:
//! - provisions the queues (each with a dead-letter queue and a redrive
//!   policy) and the secrets in moto, pointing the secrets at the sandboxes;
//! - pumps an SQS queue into a function with a real `SqsEvent`, honouring
//!   `batchItemFailures` the way the event-source mapping does;
//! - ticks a function with an EventBridge `Scheduled Event`.
//!
//! Functions are reached through [`Invoker`]: in process (tests, benchmarks)
//! or over HTTP through `cargo lambda watch` (the dev stack).

mod batch;
mod error;
mod invoke;
mod provision;
mod pump;
mod queues;
mod receipts;
mod redrive;
mod schedule;
mod secrets;
mod stop;

pub use batch::failed_items;
pub use error::WiringError;
pub use invoke::{HttpInvoker, InProcess, InvokeError, Invoker, CARGO_LAMBDA_WATCH_URL};
pub use provision::{aws_config_from_env, provision, ProvisionSpec, Provisioned};
pub use pump::{PollOutcome, PumpConfig, SqsPump};
pub use queues::{QueuePair, FULL_REFRESH_JOBS_QUEUE, KOMMO_EVENTS_QUEUE};
pub use redrive::Redrive;
pub use schedule::{scheduled_event, ScheduleTicker};
pub use secrets::{
    secret_documents, DbSecretSpec, KommoSecretSpec, StaffJwtSecretSpec, ZohoSecretSpec,
};
pub use stop::StopHandle;
