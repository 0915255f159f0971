//! Typed Zoho failures and how the outbox should react to each.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::platform::{db::DbError, secrets::SecretError};

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (429, 5xx, timeout, network): try again later, charging an attempt.
    Retryable,
    /// The record itself is wrong (`INVALID_DATA`, `MANDATORY_NOT_FOUND`, other 4xx).
    Permanent,
    /// Zoho's token endpoint is throttled: stop everything, charge nothing.
    Throttled,
    /// Credentials or configuration are broken (revoked grant, wrong data centre):
    /// not the record's fault, so stop and charge nothing; an operator must act.
    Systemic,
}

/// One failed record of a batch call, as Zoho reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    pub code: String,
    pub message: String,
    /// `details.api_name`: the field at fault.
    pub api_name: Option<String>,
    pub json_path: Option<String>,
    /// `details.duplicate_record.id` (or `details.id`) on `DUPLICATE_DATA`.
    pub duplicate_id: Option<String>,
    pub raw: Value,
}

impl RecordError {
    pub fn class(&self) -> ErrorClass {
        match self.code.as_str() {
            // Locked or awaiting approval: it may pass later.
            "RECORD_LOCKED" | "NOT_APPROVED" | "INTERNAL_ERROR" | "TOO_MANY_REQUESTS" => {
                ErrorClass::Retryable
            }
            _ => ErrorClass::Permanent,
        }
    }

    /// `INVALID_DATA: invalid data (Phone at $.data[2].Phone)`, for `last_error`.
    pub fn describe(&self) -> String {
        let mut s = format!("{}: {}", self.code, self.message);
        match (&self.api_name, &self.json_path) {
            (Some(f), Some(p)) => s.push_str(&format!(" ({f} at {p})")),
            (Some(f), None) => s.push_str(&format!(" ({f})")),
            (None, Some(p)) => s.push_str(&format!(" (at {p})")),
            (None, None) => {}
        }
        s
    }

    pub(crate) fn from_item(item: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let details = item.get("details");
        let duplicate_id = details
            .and_then(|d| d.get("duplicate_record"))
            .and_then(|r| r.get("id"))
            .or_else(|| details.and_then(|d| d.get("id")))
            .and_then(id_text);
        RecordError {
            code: text(item.get("code")).unwrap_or_else(|| "UNKNOWN".to_string()),
            message: text(item.get("message")).unwrap_or_default(),
            api_name: text(details.and_then(|d| d.get("api_name"))),
            json_path: text(details.and_then(|d| d.get("json_path"))),
            duplicate_id,
            raw: item.clone(),
        }
    }
}

/// Zoho ids are strings of up to 19 digits; a number would lose precision in f64.
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZohoError {
    #[error("Zoho's token endpoint is throttled until {until}")]
    Throttled { until: DateTime<Utc> },
    #[error("Zoho's token endpoint refused the refresh: {code}")]
    TokenRefused { code: String },
    #[error("Zoho refused the access token ({code}: {message}) even after a refresh")]
    Unauthorized { code: String, message: String },
    #[error("Zoho answered 429 {code}: {message}")]
    RateLimited { code: String, message: String },
    #[error("Zoho server error (HTTP {status}, {code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Zoho refused the request (HTTP {status}, {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Zoho refused the record: {}", .0.describe())]
    Record(Box<RecordError>),
    #[error("Zoho call timed out")]
    Timeout,
    #[error("Zoho could not be reached: {0}")]
    Network(String),
    #[error("unexpected answer from Zoho: {0}")]
    Malformed(String),
    #[error("Zoho client configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("token store: {0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ZohoError {
    fn from(e: tokio_postgres::Error) -> Self {
        ZohoError::Db(DbError::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for ZohoError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ZohoError::Db(DbError::Pool(e))
    }
}

impl ZohoError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ZohoError::Throttled { .. } => ErrorClass::Throttled,
            ZohoError::TokenRefused { .. }
            | ZohoError::Unauthorized { .. }
            | ZohoError::Config(_)
            | ZohoError::Secret(_) => ErrorClass::Systemic,
            ZohoError::RateLimited { .. }
            | ZohoError::Server { .. }
            | ZohoError::Timeout
            | ZohoError::Network(_)
            | ZohoError::Malformed(_)
            | ZohoError::Db(_) => ErrorClass::Retryable,
            ZohoError::Rejected { .. } => ErrorClass::Permanent,
            ZohoError::Record(r) => r.class(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ZohoError::Timeout
        } else {
            ZohoError::Network(e.without_url().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_errors_read_zohos_details() {
        let dup = RecordError::from_item(&json!({
            "code": "DUPLICATE_DATA", "message": "duplicate data", "status": "error",
            "details": {"api_name": "ERP_Booking_Id", "json_path": "$.data[0].ERP_Booking_Id",
                        "duplicate_record": {"id": "5725767000011355014"}}
        }));
        assert_eq!(dup.duplicate_id.as_deref(), Some("5725767000011355014"));
        assert_eq!(dup.class(), ErrorClass::Permanent);
        let bad = RecordError::from_item(&json!({
            "code": "INVALID_DATA", "message": "invalid data", "status": "error",
            "details": {"api_name": "Phone", "json_path": "$.data[2].Phone"}
        }));
        assert_eq!(
            bad.describe(),
            "INVALID_DATA: invalid data (Phone at $.data[2].Phone)"
        );
        let odd = RecordError::from_item(&json!("not an object"));
        assert_eq!(odd.code, "UNKNOWN");
    }

    #[test]
    fn classes_follow_the_retry_table() {
        assert!(ZohoError::Timeout.is_retryable());
        assert!(ZohoError::RateLimited {
            code: "TOO_MANY_REQUESTS".into(),
            message: String::new()
        }
        .is_retryable());
        assert_eq!(
            ZohoError::Rejected {
                status: 404,
                code: "INVALID_URL_PATTERN".into(),
                message: String::new()
            }
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            ZohoError::TokenRefused {
                code: "invalid_code".into()
            }
            .class(),
            ErrorClass::Systemic
        );
        assert_eq!(
            ZohoError::Throttled { until: Utc::now() }.class(),
            ErrorClass::Throttled
        );
    }
}
