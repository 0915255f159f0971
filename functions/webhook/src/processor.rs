//! The SQS consumer of `kommo-events`: turns a batch of queue messages into
//! a call on [`shared::ingest::Pipeline`] (record, dedupe, fetch, apply) and
//! its result into a batch response.
//!
//! Failures are returned as batch item failures, so SQS retries only those.
//! A message that failed on its own comes back after the visibility timeout
//! and, after the queue's receive limit, moves to the dead-letter queue; the
//! events table says why. One that failed for a reason outside itself (an
//! outage) is held back for longer each time ([`shared::ingest::outage`]), so
//! an outage of hours does not spend its receives.

use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use shared::{
    ingest::{outage, BatchOutcome, BatchReport, Pipeline, QueuedMessage},
    platform::{deadline::Deadline, sqs::Queue},
};

pub struct Processor {
    pub pipeline: Pipeline,
    /// Where held-back messages get their longer wait; None leaves them to
    /// the queue's visibility timeout.
    pub hold_back: Option<HoldBack>,
}

/// The queue the batch came from, and the first wait of a held-back message.
pub struct HoldBack {
    pub queue: Queue,
    pub base: Duration,
}

impl From<Pipeline> for Processor {
    fn from(pipeline: Pipeline) -> Self {
        Processor {
            pipeline,
            hold_back: None,
        }
    }
}

impl Processor {
    /// Handles one SQS batch; the response lists the records to retry.
    pub async fn handle(&self, event: SqsEvent) -> (SqsBatchResponse, BatchReport) {
        self.handle_until(event, &Deadline::none()).await
    }

    /// [`Processor::handle`], handing back what is left when `deadline` nears.
    pub async fn handle_until(
        &self,
        event: SqsEvent,
        deadline: &Deadline,
    ) -> (SqsBatchResponse, BatchReport) {
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
        let outcome = self.pipeline.process_until(&messages, deadline).await;
        self.hold(&event.records, &outcome).await;
        let mut resp = SqsBatchResponse::default();
        resp.batch_item_failures = outcome.retry.into_iter().map(failure).collect();
        (resp, outcome.report)
    }

    /// Gives each held-back record its growing wait, and a handed-back one
    /// none. A failure here only means the record comes back after the
    /// visibility timeout.
    async fn hold(&self, records: &[SqsMessage], outcome: &BatchOutcome) {
        let Some(hold) = &self.hold_back else { return };
        for r in records {
            let listed = |ids: &[String]| r.message_id.as_ref().is_some_and(|id| ids.contains(id));
            let (held, handed_back) = (listed(&outcome.held_back), listed(&outcome.handed_back));
            let Some(receipt) = r.receipt_handle.as_deref().filter(|_| held || handed_back) else {
                continue;
            };
            let received = r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let wait = match held {
                true => outage::hold_back(received, hold.base),
                false => Duration::ZERO,
            };
            match hold.queue.hold(receipt, wait).await {
                Ok(()) if handed_back => {
                    tracing::info!(
                        message_id = r.message_id.as_deref(),
                        "processor: deadline near, delivery handed back"
                    )
                }
                Ok(()) => tracing::warn!(
                    message_id = r.message_id.as_deref(),
                    received,
                    wait_seconds = wait.as_secs(),
                    cause = outcome.cause.as_deref(),
                    "processor: outage, holding the delivery back"
                ),
                Err(e) => tracing::error!(error = %e, "processor: could not hold a delivery back"),
            }
        }
    }
}

fn failure(id: String) -> BatchItemFailure {
    let mut f = BatchItemFailure::default();
    f.item_identifier = id;
    f
}
