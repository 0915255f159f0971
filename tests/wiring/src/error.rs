//! The one error type of the wiring, with the SDK's error context kept as text.

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("SQS {operation} on {queue} failed: {reason}")]
    Sqs {
        operation: &'static str,
        queue: String,
        reason: String,
    },
    #[error("Secrets Manager {operation} on {secret} failed: {reason}")]
    Secrets {
        operation: &'static str,
        secret: String,
        reason: String,
    },
    #[error("queue {queue} has no usable {attribute} attribute")]
    QueueAttribute {
        queue: String,
        attribute: &'static str,
    },
    #[error("invalid wiring setting: {0}")]
    Setting(String),
}

pub(crate) fn sqs_err<E>(operation: &'static str, queue: &str, e: E) -> WiringError
where
    E: std::error::Error + 'static,
{
    let reason = with_causes(&e);
    WiringError::Sqs {
        operation,
        queue: queue.to_string(),
        reason,
    }
}

pub(crate) fn secrets_err<E>(operation: &'static str, secret: &str, e: E) -> WiringError
where
    E: std::error::Error + 'static,
{
    // The SDK's error text never contains the secret string we sent.
    let reason = with_causes(&e);
    WiringError::Secrets {
        operation,
        secret: secret.to_string(),
        reason,
    }
}

/// An SDK error with its chain of causes, on one line (the bare `Display`
/// of an SDK error says only "service error").
fn with_causes<E: std::error::Error>(e: &E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}
