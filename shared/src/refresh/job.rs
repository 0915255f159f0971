//! The SQS job message, the queue it goes to, and the Lambda deadline.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::RefreshError;
use crate::platform::sqs::Queue;

/// `{"runId": "…", "invocation": 0}`: work on this run from its checkpoint.
/// A first job and a continuation are the same message, so a redelivered
/// or duplicated one is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub run_id: Uuid,
    /// How many invocations came before this one (for logs only).
    #[serde(default)]
    pub invocation: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("the job message is not valid: {0}")]
pub struct BadJob(String);

impl JobMessage {
    pub fn parse(body: &str) -> Result<Self, BadJob> {
        // serde_json's message names the field and position, never a secret.
        serde_json::from_str(body).map_err(|e| BadJob(e.to_string()))
    }

    pub fn to_body(&self) -> String {
        serde_json::json!({"runId": self.run_id, "invocation": self.invocation}).to_string()
    }
}

/// Where jobs go: SQS in Lambda, memory in tests and the benchmark.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    async fn send(&self, job: &JobMessage) -> Result<(), RefreshError>;
}

#[async_trait::async_trait]
impl JobQueue for Queue {
    async fn send(&self, job: &JobMessage) -> Result<(), RefreshError> {
        Queue::send(self, &job.to_body())
            .await
            .map(|_| ())
            .map_err(|e| RefreshError::Queue(e.to_string()))
    }
}

/// An in-process queue.
#[derive(Default)]
pub struct MemoryQueue {
    jobs: Mutex<VecDeque<JobMessage>>,
    /// When set, `send` fails (tests of a queue outage).
    pub fail: std::sync::atomic::AtomicBool,
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
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RefreshError::Queue("memory queue set to fail".into()));
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job.clone());
        Ok(())
    }
}

/// The invocation's deadline minus a safety margin.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Option<Instant>,
    margin: Duration,
}

impl Deadline {
    /// No deadline (local runs and the benchmark).
    pub fn none() -> Self {
        Deadline {
            at: None,
            margin: Duration::ZERO,
        }
    }

    pub fn after(remaining: Duration, margin: Duration) -> Self {
        Deadline {
            at: Some(Instant::now() + remaining),
            margin,
        }
    }

    /// From `lambda_runtime::Context::deadline`; see [`crate::platform::context::time_left`].
    pub fn from_epoch_ms(deadline_ms: u64, margin: Duration) -> Self {
        match crate::platform::context::time_left(deadline_ms) {
            Some(left) => Self::after(left, margin),
            None => Self::none(),
        }
    }

    /// True when less than the margin is left.
    pub fn near(&self) -> bool {
        self.at
            .is_some_and(|at| at.saturating_duration_since(Instant::now()) <= self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_messages_round_trip_and_reject_junk() {
        let job = JobMessage {
            run_id: Uuid::nil(),
            invocation: 2,
        };
        assert_eq!(JobMessage::parse(&job.to_body()).unwrap(), job);
        let minimal =
            JobMessage::parse(r#"{"runId":"00000000-0000-0000-0000-000000000000"}"#).unwrap();
        assert_eq!(minimal.invocation, 0);
        assert!(JobMessage::parse(r#"{"runId":"nope"}"#).is_err());
        assert!(JobMessage::parse("[]").is_err());
        assert!(
            JobMessage::parse(r#"{"runId":"00000000-0000-0000-0000-000000000000","x":1}"#).is_err()
        );
    }

    #[test]
    fn deadline_is_near_within_the_margin() {
        assert!(!Deadline::none().near());
        assert!(Deadline::after(Duration::from_secs(10), Duration::from_secs(20)).near());
        assert!(!Deadline::after(Duration::from_secs(60), Duration::from_secs(1)).near());
        // A second ago, in milliseconds since the epoch, as Lambda sends it.
        let passed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 1_000;
        assert!(Deadline::from_epoch_ms(passed, Duration::ZERO).near());
        // No deadline header at all, and `cargo lambda watch`'s fixed ten-minute budget.
        assert!(!Deadline::from_epoch_ms(0, Duration::from_secs(60)).near());
        assert!(!Deadline::from_epoch_ms(600_000, Duration::from_secs(60)).near());
    }
}
