//! The SQS consumer of `kommo-events` (filled in next).
