//! The SQS job message and the queue it goes to.

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

/// Where jobs go: SQS in Lambda; tests and the benchmark use an in-memory
/// queue from `testkit`.
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
}
