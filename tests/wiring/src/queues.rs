//! The queues of the template, each with its dead-letter queue and redrive
//! policy, created in the emulator or brought up to date.

use std::collections::HashMap;

use aws_sdk_sqs::{types::QueueAttributeName, Client as SqsClient};
use serde_json::json;

use crate::{
    error::{sqs_err, WiringError},
    ProvisionSpec,
};

/// Queue base names, as in `template.yaml` (which prefixes them with the stack name).
pub const KOMMO_EVENTS_QUEUE: &str = "kommo-events";
pub const FULL_REFRESH_JOBS_QUEUE: &str = "full-refresh-jobs";

/// A queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub max_receive_count: u32,
}

pub(crate) async fn ensure_queue_pair(
    sqs: &SqsClient,
    spec: &ProvisionSpec,
    base: &str,
) -> Result<QueuePair, WiringError> {
    let name = format!("{}-{base}", spec.prefix);
    let dlq_name = format!("{name}-dlq");
    let dlq_url = ensure_queue(sqs, &dlq_name).await?;
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;
    let url = ensure_queue(sqs, &name).await?;
    // Set on every run rather than at creation: CreateQueue on an existing
    // queue with different attributes fails, SetQueueAttributes converges.
    let redrive = json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": spec.max_receive_count,
    });
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            spec.visibility_timeout.as_secs().to_string(),
        )
        .send()
        .await
        .map_err(|e| sqs_err("SetQueueAttributes", &url, e))?;
    let arn = queue_arn(sqs, &url).await?;
    Ok(QueuePair {
        url,
        arn,
        dlq_url,
        dlq_arn,
        max_receive_count: spec.max_receive_count,
    })
}

async fn ensure_queue(sqs: &SqsClient, name: &str) -> Result<String, WiringError> {
    // Any lookup error falls through to CreateQueue: emulators disagree on the
    // "does not exist" error code, and CreateQueue reports the real problem.
    if let Ok(Some(url)) = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map(|o| o.queue_url)
    {
        return Ok(url);
    }
    let out = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sqs_err("CreateQueue", name, e))?;
    out.queue_url.ok_or_else(|| WiringError::QueueAttribute {
        queue: name.to_string(),
        attribute: "QueueUrl",
    })
}

pub(crate) async fn queue_attributes(
    sqs: &SqsClient,
    url: &str,
) -> Result<HashMap<QueueAttributeName, String>, WiringError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| sqs_err("GetQueueAttributes", url, e))?;
    Ok(out.attributes.unwrap_or_default())
}

async fn queue_arn(sqs: &SqsClient, url: &str) -> Result<String, WiringError> {
    let mut attributes = queue_attributes(sqs, url).await?;
    take_queue_arn(&mut attributes, url)
}

/// The `QueueArn` out of a queue's attributes.
pub(crate) fn take_queue_arn(
    attributes: &mut HashMap<QueueAttributeName, String>,
    url: &str,
) -> Result<String, WiringError> {
    attributes
        .remove(&QueueAttributeName::QueueArn)
        .ok_or_else(|| WiringError::QueueAttribute {
            queue: url.to_string(),
            attribute: "QueueArn",
        })
}
