//! Lambda's SQS event-source mapping, locally: receive a batch, invoke the
//! function, delete what it handled and release what it reported failed.

use std::{collections::HashSet, sync::Arc, time::Duration};

use aws_sdk_sqs::{
    types::{Message, MessageSystemAttributeName, QueueAttributeName},
    Client as SqsClient,
};

use crate::{
    batch::{failed_items, sqs_event},
    error::{sqs_err, WiringError},
    queues::{queue_attributes, take_queue_arn},
    receipts, Invoker, Redrive, StopHandle,
};

/// SQS's cap on a long-poll wait.
const MAX_WAIT_SECS: u64 = 20;

#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub queue_url: String,
    /// Records per event, 1 to 10 (the template uses 10 for webhooks, 1 for jobs).
    pub batch_size: i32,
    /// Long-poll wait of each receive; also how quickly a stop is noticed.
    pub wait_time: Duration,
    /// How long a failed record stays invisible before it is retried. Lambda
    /// leaves it for the queue's visibility timeout; tests want it short.
    pub retry_visibility: Duration,
    /// Leave failed records as they are, as Lambda does: they come back after
    /// the queue's visibility timeout, or whatever the function set.
    pub leave_failed: bool,
    /// Redrive done by the pump when the emulator does not do it. `None` reads
    /// the queue's `RedrivePolicy`; moto applies that policy on receive itself,
    /// so the pump's own redrive is then only a fallback.
    pub redrive: Option<Redrive>,
}

impl PumpConfig {
    pub fn new(queue_url: impl Into<String>) -> Self {
        PumpConfig {
            queue_url: queue_url.into(),
            batch_size: 10,
            wait_time: Duration::from_secs(2),
            retry_visibility: Duration::from_secs(5),
            leave_failed: false,
            redrive: None,
        }
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub received: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Moved to the dead-letter queue by the pump (not by the emulator).
    pub redriven: usize,
}

/// Polls a queue and invokes a function with each batch, like Lambda's SQS
/// event-source mapping with `ReportBatchItemFailures`.
pub struct SqsPump {
    sqs: SqsClient,
    config: PumpConfig,
    invoker: Arc<dyn Invoker>,
    queue_arn: String,
    region: String,
    redrive: Option<Redrive>,
}

impl SqsPump {
    pub async fn new(
        sdk: &aws_config::SdkConfig,
        config: PumpConfig,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, WiringError> {
        if !(1..=10).contains(&config.batch_size) {
            return Err(WiringError::Setting(format!(
                "batch_size must be 1 to 10, not {}",
                config.batch_size
            )));
        }
        let sqs = SqsClient::new(sdk);
        let mut attrs = queue_attributes(&sqs, &config.queue_url).await?;
        let queue_arn = take_queue_arn(&mut attrs, &config.queue_url)?;
        let redrive = match &config.redrive {
            Some(r) => Some(r.clone()),
            None => match attrs.remove(&QueueAttributeName::RedrivePolicy) {
                Some(policy) => Some(Redrive::from_policy(&sqs, &config.queue_url, &policy).await?),
                None => None,
            },
        };
        // arn:aws:sqs:<region>:<account>:<name>
        let region = queue_arn
            .split(':')
            .nth(3)
            .unwrap_or("us-east-1")
            .to_string();
        Ok(SqsPump {
            sqs,
            config,
            invoker,
            queue_arn,
            region,
            redrive,
        })
    }

    pub fn queue_arn(&self) -> &str {
        &self.queue_arn
    }

    /// Receives one batch (waiting up to `wait_time`) and hands it to the function.
    pub async fn poll_once(&self) -> Result<PollOutcome, WiringError> {
        let messages = self.receive().await?;
        let mut outcome = PollOutcome {
            received: messages.len(),
            ..PollOutcome::default()
        };
        let batch = self.redrive_exhausted(messages, &mut outcome).await?;
        if batch.is_empty() {
            return Ok(outcome);
        }
        let failed_ids = self.invoke(&batch).await?;
        let (failed, succeeded): (Vec<&Message>, Vec<&Message>) = batch
            .iter()
            .partition(|m| failed_ids.contains(m.message_id.as_deref().unwrap_or_default()));
        outcome.failed = failed.len();
        outcome.succeeded = succeeded.len();
        let url = &self.config.queue_url;
        receipts::delete(&self.sqs, url, &succeeded).await?;
        if !self.config.leave_failed {
            receipts::release(&self.sqs, url, &failed, self.config.retry_visibility).await?;
        }
        Ok(outcome)
    }

    async fn receive(&self) -> Result<Vec<Message>, WiringError> {
        let url = &self.config.queue_url;
        let out = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(self.config.batch_size)
            .wait_time_seconds(self.config.wait_time.as_secs().min(MAX_WAIT_SECS) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sqs_err("ReceiveMessage", url, e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Moves the messages past the receive limit to the dead-letter queue and
    /// returns the others, the batch for the function.
    async fn redrive_exhausted(
        &self,
        messages: Vec<Message>,
        outcome: &mut PollOutcome,
    ) -> Result<Vec<Message>, WiringError> {
        let Some(redrive) = &self.redrive else {
            return Ok(messages);
        };
        let mut batch = Vec::with_capacity(messages.len());
        for m in messages {
            if redrive.is_exhausted(&m) {
                redrive
                    .move_to_dlq(&self.sqs, &self.config.queue_url, &m)
                    .await?;
                outcome.redriven += 1;
            } else {
                batch.push(m);
            }
        }
        Ok(batch)
    }

    /// Invokes the function with the batch; returns the ids of the records to retry.
    async fn invoke(&self, batch: &[Message]) -> Result<HashSet<String>, WiringError> {
        let event = sqs_event(batch, &self.queue_arn, &self.region);
        let event = serde_json::to_value(&event)
            .map_err(|e| WiringError::Setting(format!("SQS event could not be serialised: {e}")))?;
        let ids: Vec<&str> = batch
            .iter()
            .map(|m| m.message_id.as_deref().unwrap_or_default())
            .collect();
        Ok(match self.invoker.invoke(event).await {
            Ok(answer) => failed_items(&answer, &ids),
            Err(e) => {
                tracing::warn!(queue = %self.config.queue_url, error = %e, "invocation failed; the whole batch is retried");
                ids.iter().map(|s| s.to_string()).collect()
            }
        })
    }

    /// Polls until stopped. Errors are logged and retried after a short pause,
    /// as the event-source mapping keeps polling through them.
    pub fn spawn(self) -> StopHandle {
        StopHandle::spawn(move |mut stopped| async move {
            while !*stopped.borrow() {
                match self.poll_once().await {
                    Ok(o) if o.received > 0 => {
                        tracing::debug!(queue = %self.config.queue_url, ?o, "sqs batch")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "sqs pump poll failed");
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stopped.changed()).await;
                    }
                }
            }
        })
    }
}
