//! The SQS consumer of `kommo-events`: turns a batch of queue messages into
//! a call on [`shared::ingest::Pipeline`] (record, dedupe, fetch, apply) and
//! its result into a batch response.
//!
//! Failures are returned as batch item failures, so SQS retries only those
//! and, after the queue's receive limit, moves them to the dead-letter queue;
//! the events table says why.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use shared::ingest::{BatchReport, Pipeline, QueuedMessage};

pub struct Processor {
    pub pipeline: Pipeline,
}

impl From<Pipeline> for Processor {
    fn from(pipeline: Pipeline) -> Self {
        Processor { pipeline }
    }
}

impl Processor {
    /// Handles one SQS batch; the response lists the records to retry.
    pub async fn handle(&self, event: SqsEvent) -> (SqsBatchResponse, BatchReport) {
        // A record without an id or a body is still recorded (as
        // unprocessable) rather than dropped unseen.
        let messages: Vec<QueuedMessage<'_>> = event
            .records
            .iter()
            .map(|r| QueuedMessage {
                message_id: r.message_id.as_deref().unwrap_or(""),
                body: r.body.as_deref().unwrap_or(""),
            })
            .collect();
        let outcome = self.pipeline.process(&messages).await;
        let mut resp = SqsBatchResponse::default();
        resp.batch_item_failures = outcome.retry.into_iter().map(failure).collect();
        (resp, outcome.report)
    }
}

fn failure(id: String) -> BatchItemFailure {
    let mut f = BatchItemFailure::default();
    f.item_identifier = id;
    f
}
