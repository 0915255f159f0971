//! Settling received messages by their receipt handles: deleting the ones a
//! function handled, making the failed ones visible again for a retry.

use std::time::Duration;

use aws_sdk_sqs::{
    types::{
        BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
        DeleteMessageBatchRequestEntry, Message,
    },
    Client as SqsClient,
};

use crate::error::{sqs_err, WiringError};

/// SQS's cap on a visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;

/// Deletes the messages: the function handled them.
pub(crate) async fn delete(
    sqs: &SqsClient,
    url: &str,
    messages: &[&Message],
) -> Result<(), WiringError> {
    const OPERATION: &str = "DeleteMessageBatch";
    if messages.is_empty() {
        return Ok(());
    }
    let entries = entries(OPERATION, url, messages, |id, receipt| {
        DeleteMessageBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(receipt)
            .build()
    })?;
    let out = sqs
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| sqs_err(OPERATION, url, e))?;
    first_failure(OPERATION, url, &out.failed)
}

/// Makes the messages visible again after `visibility`, as Lambda leaves a
/// failed record for the queue's visibility timeout.
pub(crate) async fn release(
    sqs: &SqsClient,
    url: &str,
    messages: &[&Message],
    visibility: Duration,
) -> Result<(), WiringError> {
    const OPERATION: &str = "ChangeMessageVisibilityBatch";
    if messages.is_empty() {
        return Ok(());
    }
    let timeout = visibility.as_secs().min(MAX_VISIBILITY_SECS) as i32;
    let entries = entries(OPERATION, url, messages, |id, receipt| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(receipt)
            .visibility_timeout(timeout)
            .build()
    })?;
    let out = sqs
        .change_message_visibility_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| sqs_err(OPERATION, url, e))?;
    first_failure(OPERATION, url, &out.failed)
}

/// One batch entry per message, numbered within the batch.
fn entries<T, E>(
    operation: &'static str,
    url: &str,
    messages: &[&Message],
    build: impl Fn(String, String) -> Result<T, E>,
) -> Result<Vec<T>, WiringError>
where
    E: std::error::Error + 'static,
{
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            build(i.to_string(), m.receipt_handle.clone().unwrap_or_default())
                .map_err(|e| sqs_err(operation, url, e))
        })
        .collect()
}

fn first_failure(
    operation: &'static str,
    url: &str,
    failed: &[BatchResultErrorEntry],
) -> Result<(), WiringError> {
    match failed.first() {
        Some(f) => Err(WiringError::Sqs {
            operation,
            queue: url.to_string(),
            reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
        }),
        None => Ok(()),
    }
}
