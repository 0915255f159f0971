//! The SQS side: each record is a job for `shared::refresh::Worker`; the
//! answer lists the records to retry (`ReportBatchItemFailures`).

use aws_lambda_events::{
    event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent},
    sqs::SqsMessage,
};
use shared::{
    platform::deadline::Deadline,
    refresh::{JobMessage, JobOutcome, Worker},
};
use tracing::Instrument;

pub struct WorkerApp {
    pub worker: Worker,
}

impl WorkerApp {
    /// Handles a batch. A malformed message is dropped (retrying cannot fix
    /// it); a busy lock or a database/queue error is retried by SQS.
    pub async fn handle(&self, event: SqsEvent, deadline: Deadline) -> SqsBatchResponse {
        let mut failures = Vec::new();
        for record in event.records {
            if !self.handle_record(&record, deadline).await {
                if let Some(id) = record.message_id.clone() {
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    failures.push(failure);
                }
            }
        }
        let mut resp = SqsBatchResponse::default();
        resp.batch_item_failures = failures;
        resp
    }

    /// True when the record is done with (handled or not worth retrying).
    async fn handle_record(&self, record: &SqsMessage, deadline: Deadline) -> bool {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        let job = match JobMessage::parse(body) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(message_id, error = %e, "dropping a malformed full-refresh job");
                return true;
            }
        };
        let span = tracing::info_span!("full_refresh_job", run_id = %job.run_id, message_id);
        match self.worker.process(&job, deadline).instrument(span).await {
            Ok(JobOutcome::Busy) => false,
            Ok(outcome) => {
                tracing::info!(run_id = %job.run_id, ?outcome, "full-refresh job handled");
                true
            }
            Err(e) => {
                tracing::error!(run_id = %job.run_id, error = %e, "full-refresh job failed; SQS will retry it");
                false
            }
        }
    }
}
