//! Moving a message that was received too often to its dead-letter queue,
//! for emulators that do not apply a queue's `RedrivePolicy` themselves.

use aws_sdk_sqs::{
    types::{Message, MessageSystemAttributeName},
    Client as SqsClient,
};
use serde_json::Value;

use crate::{
    error::{sqs_err, WiringError},
    receipts,
};

/// A dead-letter queue the pump moves messages to itself.
#[derive(Debug, Clone)]
pub struct Redrive {
    pub dlq_url: String,
    pub max_receive_count: u32,
}

impl Redrive {
    /// Whether the message has been received more often than the policy allows.
    pub(crate) fn is_exhausted(&self, m: &Message) -> bool {
        receive_count(m) > self.max_receive_count
    }

    /// Reads a queue's `RedrivePolicy` and finds its dead-letter queue.
    pub(crate) async fn from_policy(
        sqs: &SqsClient,
        queue_url: &str,
        policy: &str,
    ) -> Result<Redrive, WiringError> {
        let bad = || WiringError::QueueAttribute {
            queue: queue_url.to_string(),
            attribute: "RedrivePolicy",
        };
        let v: Value = serde_json::from_str(policy).map_err(|_| bad())?;
        let arn = v
            .get("deadLetterTargetArn")
            .and_then(Value::as_str)
            .ok_or_else(bad)?;
        // The count is a number in moto and a string in real SQS.
        let max = match v.get("maxReceiveCount") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(bad)?;
        let dlq_name = arn.rsplit(':').next().ok_or_else(bad)?;
        let dlq_url = sqs
            .get_queue_url()
            .queue_name(dlq_name)
            .send()
            .await
            .map_err(|e| sqs_err("GetQueueUrl", dlq_name, e))?
            .queue_url
            .ok_or_else(bad)?;
        Ok(Redrive {
            dlq_url,
            max_receive_count: max,
        })
    }

    /// Copies the message to the dead-letter queue and deletes it from `queue_url`.
    pub(crate) async fn move_to_dlq(
        &self,
        sqs: &SqsClient,
        queue_url: &str,
        m: &Message,
    ) -> Result<(), WiringError> {
        tracing::info!(
            queue = %queue_url,
            message_id = m.message_id.as_deref().unwrap_or_default(),
            "receive count exceeded; moving the message to the dead-letter queue"
        );
        sqs.send_message()
            .queue_url(&self.dlq_url)
            .message_body(m.body.clone().unwrap_or_default())
            .set_message_attributes(m.message_attributes.clone())
            .send()
            .await
            .map_err(|e| sqs_err("SendMessage", &self.dlq_url, e))?;
        receipts::delete(sqs, queue_url, &[m]).await
    }
}

fn receive_count(m: &Message) -> u32 {
    m.attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
