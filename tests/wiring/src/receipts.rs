//! Settling received messages by their receipt handles: deleting the ones a
//! function handled, making the failed ones visible again for a retry.

use std::{future::Future, time::Duration};

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
    let request = sqs.delete_message_batch().queue_url(url);
    let entry = |id, receipt| {
        DeleteMessageBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(receipt)
            .build()
    };
    let send = |entries| async move {
        let out = request.set_entries(Some(entries)).send().await;
        out.map(|o| o.failed)
    };
    settle("DeleteMessageBatch", url, messages, entry, send).await
}

/// Makes the messages visible again after `visibility`, as Lambda leaves a
/// failed record for the queue's visibility timeout.
pub(crate) async fn release(
    sqs: &SqsClient,
    url: &str,
    messages: &[&Message],
    visibility: Duration,
) -> Result<(), WiringError> {
    let timeout = visibility.as_secs().min(MAX_VISIBILITY_SECS) as i32;
    let request = sqs.change_message_visibility_batch().queue_url(url);
    let entry = |id, receipt| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(receipt)
            .visibility_timeout(timeout)
            .build()
    };
    let send = |entries| async move {
        let out = request.set_entries(Some(entries)).send().await;
        out.map(|o| o.failed)
    };
    settle("ChangeMessageVisibilityBatch", url, messages, entry, send).await
}

/// One batch call for `messages` (none for no messages): an entry per
/// message, numbered within the batch; the first entry SQS refused is the error.
async fn settle<T, E, S, F, Fut>(
    operation: &'static str,
    url: &str,
    messages: &[&Message],
    entry: impl Fn(String, String) -> Result<T, E>,
    send: F,
) -> Result<(), WiringError>
where
    E: std::error::Error + 'static,
    S: std::error::Error + 'static,
    F: FnOnce(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<BatchResultErrorEntry>, S>>,
{
    if messages.is_empty() {
        return Ok(());
    }
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            entry(i.to_string(), m.receipt_handle.clone().unwrap_or_default())
                .map_err(|e| sqs_err(operation, url, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let failed = send(entries)
        .await
        .map_err(|e| sqs_err(operation, url, e))?;
    match failed.first() {
        Some(f) => Err(WiringError::Sqs {
            operation,
            queue: url.to_string(),
            reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
        }),
        None => Ok(()),
    }
}
