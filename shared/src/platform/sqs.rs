//! Sending to SQS queues (the webhook buffer and the full-refresh jobs).

use aws_sdk_sqs::Client;

/// An SQS client whose every call gives up in time: the webhook receiver
/// must answer Kommo within 2 seconds, queueing included, and a hung call
/// would otherwise hold the function until its own timeout.
pub fn client(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .timeout_config(crate::platform::context::call_timeouts())
        .build();
    Client::from_conf(config)
}

#[derive(Debug, thiserror::Error)]
#[error("SQS send to {queue} failed: {reason}")]
pub struct SqsError {
    pub queue: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    url: String,
}

impl Queue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Queue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn failed(&self, e: impl std::error::Error) -> SqsError {
        SqsError {
            queue: self.url.clone(),
            reason: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        }
    }

    /// Sends one message and returns its id.
    pub async fn send(&self, body: &str) -> Result<String, SqsError> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| self.failed(e))?;
        Ok(out.message_id.unwrap_or_default())
    }

    /// Keeps a received message invisible for `wait` from now.
    pub async fn hold(
        &self,
        receipt_handle: &str,
        wait: std::time::Duration,
    ) -> Result<(), SqsError> {
        let secs = i32::try_from(wait.as_secs()).unwrap_or(i32::MAX);
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}
