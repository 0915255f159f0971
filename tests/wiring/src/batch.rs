//! One poll's messages as the `SqsEvent` Lambda would send, and the function's
//! answer read back with Lambda's partial-batch rules.

use std::collections::HashSet;

use aws_lambda_events::{
    encodings::Base64Data,
    event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute},
};
use aws_sdk_sqs::types::{Message, MessageAttributeValue};
use serde_json::Value;

/// The event-source mapping's event for `batch`, received from the queue `queue_arn`.
pub(crate) fn sqs_event(batch: &[Message], queue_arn: &str, region: &str) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = batch
        .iter()
        .map(|m| {
            let mut r = SqsMessage::default();
            r.message_id = m.message_id.clone();
            r.receipt_handle = m.receipt_handle.clone();
            r.body = m.body.clone();
            r.md5_of_body = m.md5_of_body.clone();
            r.md5_of_message_attributes = m.md5_of_message_attributes.clone();
            r.attributes = m
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect();
            r.message_attributes = m
                .message_attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), message_attribute(v)))
                .collect();
            r.event_source = Some("aws:sqs".to_string());
            r.event_source_arn = Some(queue_arn.to_string());
            r.aws_region = Some(region.to_string());
            r
        })
        .collect();
    event
}

fn message_attribute(v: &MessageAttributeValue) -> SqsMessageAttribute {
    let mut a = SqsMessageAttribute::default();
    a.string_value = v.string_value.clone();
    a.binary_value = v.binary_value.as_ref().map(|b| {
        let mut d = Base64Data::default();
        d.0 = b.as_ref().to_vec();
        d
    });
    a.string_list_values = v.string_list_values.clone().unwrap_or_default();
    a.data_type = Some(v.data_type.clone());
    a
}

/// Lambda's rules for a partial batch response: null or an empty list means
/// every record succeeded; an answer that is not a batch response, or names
/// an empty or unknown id, fails the whole batch.
pub fn failed_items(answer: &Value, ids: &[&str]) -> HashSet<String> {
    let all = || ids.iter().map(|s| s.to_string()).collect();
    if answer.is_null() {
        return HashSet::new();
    }
    let resp: SqsBatchResponse = match serde_json::from_value(answer.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "answer is not an SqsBatchResponse; the whole batch is retried");
            return all();
        }
    };
    let mut failed = HashSet::new();
    for f in resp.batch_item_failures {
        if !ids.contains(&f.item_identifier.as_str()) {
            tracing::warn!(
                item = %f.item_identifier,
                "batch item failure names an unknown message; the whole batch is retried"
            );
            return all();
        }
        failed.insert(f.item_identifier);
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_or_empty_answer_means_all_succeeded() {
        assert!(failed_items(&Value::Null, &["a", "b"]).is_empty());
        assert!(failed_items(&json!({"batchItemFailures": []}), &["a"]).is_empty());
    }

    #[test]
    fn named_failures_are_returned() {
        let f = failed_items(
            &json!({"batchItemFailures": [{"itemIdentifier": "b"}]}),
            &["a", "b", "c"],
        );
        assert_eq!(f, HashSet::from(["b".to_string()]));
    }

    #[test]
    fn unknown_id_or_bad_shape_fails_the_whole_batch() {
        let all = HashSet::from(["a".to_string(), "b".to_string()]);
        assert_eq!(
            failed_items(
                &json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]}),
                &["a", "b"]
            ),
            all
        );
        assert_eq!(
            failed_items(
                &json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
                &["a", "b"]
            ),
            all
        );
        assert_eq!(failed_items(&json!({"oops": 1}), &["a", "b"]), all);
    }
}
