//! JSON secrets from AWS Secrets Manager, cached per container.
//!
//! The cache keeps each secret for a TTL (5 minutes by default), so a rotated
//! secret takes effect without a redeploy, and a caller whose credential was
//! refused can ask for a value newer than its attempt. Errors name the secret
//! and the field, never the value.

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_secretsmanager::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    operation::get_secret_value::GetSecretValueError,
};
use serde::{de::DeserializeOwned, Deserialize};

use crate::platform::telemetry::{Metrics, Unit};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{secret}` could not be read: {reason}")]
    Fetch { secret: String, reason: String },
    #[error("secret `{secret}` has no string value")]
    NotAString { secret: String },
    #[error("secret `{secret}` is malformed: {problem}")]
    Malformed { secret: String, problem: String },
}

/// A string that never shows up in `Debug` or `Display` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(s: impl Into<String>) -> Self {
        Redacted(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// RDS-format database secret, as Secrets Manager generates for RDS and Aurora.
#[derive(Debug, Clone, Deserialize)]
pub struct DbSecret {
    pub host: String,
    #[serde(
        default = "default_pg_port",
        deserialize_with = "port_from_number_or_string"
    )]
    pub port: u16,
    pub username: String,
    pub password: Redacted,
    #[serde(alias = "dbInstanceIdentifier")]
    pub dbname: String,
}

fn default_pg_port() -> u16 {
    5432
}

fn port_from_number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        N(u16),
        S(String),
    }
    match Port::deserialize(d)? {
        Port::N(n) => Ok(n),
        Port::S(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("port is not a number")),
    }
}

/// Kommo: API base URL, long-lived token, and the webhook URL token.
#[derive(Debug, Clone, Deserialize)]
pub struct KommoSecret {
    /// For example `https://example.kommo.com`.
    pub base_url: String,
    pub access_token: Redacted,
    /// The secret path segment of the webhook URL.
    pub webhook_token: Redacted,
    /// When set, deliveries whose `account[id]` differs are refused.
    #[serde(default)]
    pub account_id: Option<i64>,
}

/// Zoho OAuth self-client credentials.
#[derive(Debug, Clone, Deserialize)]
pub struct ZohoSecret {
    pub client_id: String,
    pub client_secret: Redacted,
    pub refresh_token: Redacted,
    /// Accounts host of the data centre, for example `https://accounts.zoho.eu`.
    pub accounts_url: String,
    /// API host to use until a token response names one, for example `https://www.zohoapis.eu`.
    #[serde(default)]
    pub api_domain: Option<String>,
}

/// HS256 key for staff JWTs issued by the ERP.
#[derive(Debug, Clone, Deserialize)]
pub struct StaffJwtSecret {
    pub hs256_secret: Redacted,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
}

/// Slack incoming-webhook URL for alerts.
#[derive(Debug, Clone, Deserialize)]
pub struct SlackSecret {
    pub webhook_url: Redacted,
}

/// Parses a secret's JSON text; errors name the field but never the value.
pub fn parse_secret<T: DeserializeOwned>(secret_id: &str, text: &str) -> Result<T, SecretError> {
    serde_json::from_str(text).map_err(|e| SecretError::Malformed {
        secret: secret_id.to_string(),
        problem: describe_json_error(&e),
    })
}

/// serde_json's messages quote the offending value (`invalid type: string "hunter2"`),
/// so only the category, the field name and the position are kept.
fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let field = msg
        .split('`')
        .nth(1)
        .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown field"));
    match (e.classify(), field) {
        (_, Some(f)) if msg.starts_with("missing field") => format!("missing field `{f}`"),
        (_, Some(f)) => format!("unknown field `{f}`"),
        (serde_json::error::Category::Syntax, _) | (serde_json::error::Category::Eof, _) => {
            format!("not valid JSON (line {}, column {})", e.line(), e.column())
        }
        _ => format!(
            "a field has the wrong type (line {}, column {})",
            e.line(),
            e.column()
        ),
    }
}

/// How long a failed refresh waits before the next one is tried, while the
/// last good value is served.
const STALE_RETRY: Duration = Duration::from_secs(30);

/// Secrets Manager behind an in-container TTL cache that calls only
/// `GetSecretValue`.
///
/// The template grants each function `GetSecretValue` and nothing else; the
/// AWS caching crate also calls `DescribeSecret` once its TTL has passed, which
/// a deployed function is denied. A transient failure (timeout, throttling, a
/// 5xx) serves the last good value, so a Secrets Manager blip does not fail
/// Kommo deliveries; a refresh waits for the one already in flight.
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_secretsmanager::Client,
    ttl: Duration,
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

/// One secret's cached value; the async lock is held while it is fetched.
type Slot = tokio::sync::Mutex<Option<Cached>>;

struct Cached {
    value: Redacted,
    fetched: Instant,
    retry_at: Option<Instant>,
}

/// What a read wants: a value within the TTL, or one fetched after an
/// instant (a caller whose credentials were refused wants a newer one).
#[derive(Clone, Copy)]
enum Freshness {
    Ttl,
    NewerThan(Instant),
}

struct FetchError {
    error: SecretError,
    transient: bool,
}

impl Secrets {
    /// Builds the client from the ambient AWS config (honours `AWS_ENDPOINT_URL`).
    /// Every call has an operation timeout, so a slow Secrets Manager cannot
    /// hold the webhook receiver past Kommo's 2 seconds.
    pub async fn new(sdk: &aws_config::SdkConfig, ttl: Duration) -> Result<Self, SecretError> {
        let config = aws_sdk_secretsmanager::config::Builder::from(sdk)
            .timeout_config(crate::platform::context::call_timeouts())
            .build();
        Ok(Secrets {
            inner: Arc::new(Inner {
                client: aws_sdk_secretsmanager::Client::from_conf(config),
                ttl,
                slots: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Returns the secret's text, from the cache when it is fresh.
    pub async fn get_string(&self, secret_id: &str) -> Result<Redacted, SecretError> {
        self.read(secret_id, Freshness::Ttl).await
    }

    /// Returns the secret's text as fetched after `instant`, fetching it again
    /// unless another caller already did. For a credential that was just
    /// refused: a rotated secret takes effect without waiting for the TTL.
    pub async fn get_string_newer_than(
        &self,
        secret_id: &str,
        instant: Instant,
    ) -> Result<Redacted, SecretError> {
        self.read(secret_id, Freshness::NewerThan(instant)).await
    }

    /// Returns the secret parsed as JSON into `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, secret_id: &str) -> Result<T, SecretError> {
        let text = self.get_string(secret_id).await?;
        parse_secret(secret_id, text.expose())
    }

    /// [`Secrets::get_string_newer_than`], parsed as JSON into `T`.
    pub async fn get_json_newer_than<T: DeserializeOwned>(
        &self,
        secret_id: &str,
        instant: Instant,
    ) -> Result<T, SecretError> {
        let text = self.get_string_newer_than(secret_id, instant).await?;
        parse_secret(secret_id, text.expose())
    }

    fn slot(&self, secret_id: &str) -> Arc<Slot> {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(secret_id.to_string()).or_default().clone()
    }

    async fn read(&self, secret_id: &str, want: Freshness) -> Result<Redacted, SecretError> {
        let slot = self.slot(secret_id);
        let mut cached = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref() {
            let fresh = match want {
                Freshness::Ttl => now.duration_since(c.fetched) < self.inner.ttl,
                Freshness::NewerThan(t) => c.fetched > t,
            };
            let waiting = matches!(want, Freshness::Ttl) && c.retry_at.is_some_and(|r| now < r);
            if fresh || waiting {
                return Ok(c.value.clone());
            }
        }
        match self.fetch(secret_id).await {
            Ok(value) => {
                *cached = Some(Cached {
                    value: value.clone(),
                    fetched: Instant::now(),
                    retry_at: None,
                });
                Ok(value)
            }
            Err(e) => match cached.as_mut() {
                Some(last_good) if e.transient => Ok(serve_stale(secret_id, last_good, &e.error)),
                _ => Err(e.error),
            },
        }
    }

    async fn fetch(&self, secret_id: &str) -> Result<Redacted, FetchError> {
        let out = self
            .inner
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| FetchError {
                transient: is_transient(&e),
                error: SecretError::Fetch {
                    secret: secret_id.to_string(),
                    reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                },
            })?;
        out.secret_string.map(Redacted).ok_or_else(|| FetchError {
            transient: false,
            error: SecretError::NotAString {
                secret: secret_id.to_string(),
            },
        })
    }
}

/// Keeps the last good value after a transient failure, says so in the log
/// and as a metric, and waits [`STALE_RETRY`] before trying again.
fn serve_stale(secret_id: &str, c: &mut Cached, error: &SecretError) -> Redacted {
    c.retry_at = Some(Instant::now() + STALE_RETRY);
    tracing::warn!(
        secret = secret_id,
        error = %error,
        age_seconds = c.fetched.elapsed().as_secs(),
        "secret refresh failed; serving the last good value"
    );
    let mut m = Metrics::new("KommoZoho", "secrets");
    m.add("SecretStaleServed", 1.0, Unit::Count);
    m.flush();
    c.value.clone()
}

/// Timeouts, dropped connections, throttling and 5xx are worth waiting out;
/// a denied, missing or undecryptable secret is not.
fn is_transient(e: &SdkError<GetSecretValueError, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error()
                || matches!(s.err(), GetSecretValueError::InternalServiceError(_))
                || s.err().code() == Some("ThrottlingException")
        }
        _ => false,
    }
}

/// Where a secret comes from: Secrets Manager (cached there), or a fixed
/// value for tests, the dev stack and the benchmark.
#[derive(Clone)]
pub enum SecretSource<T> {
    Manager {
        secrets: std::sync::Arc<Secrets>,
        id: String,
    },
    Fixed(T),
}

impl<T: Clone + DeserializeOwned> SecretSource<T> {
    pub async fn get(&self) -> Result<T, SecretError> {
        match self {
            SecretSource::Manager { secrets, id } => secrets.get_json(id).await,
            SecretSource::Fixed(v) => Ok(v.clone()),
        }
    }

    /// The value as fetched after `instant` (see
    /// [`Secrets::get_json_newer_than`]): for a credential just refused. A
    /// fixed value is itself, so the refusal stands.
    pub async fn get_newer_than(&self, instant: Instant) -> Result<T, SecretError> {
        match self {
            SecretSource::Manager { secrets, id } => secrets.get_json_newer_than(id, instant).await,
            SecretSource::Fixed(v) => Ok(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_secret_names_field_not_value() {
        let err = parse_secret::<KommoSecret>(
            "prod/kommo",
            r#"{"base_url":"https://x.kommo.com","access_token":12345678,"webhook_token":"tok-SECRET-1"}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("prod/kommo"), "{text}");
        assert!(text.contains("wrong type"), "{text}");
        assert!(
            !text.contains("12345678") && !text.contains("tok-SECRET-1"),
            "{text}"
        );

        let err = parse_secret::<ZohoSecret>(
            "prod/zoho",
            r#"{"client_id":"1000.ABC","client_secret":"very-secret-zz","accounts_url":"https://accounts.zoho.eu"}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing field `refresh_token`"), "{text}");
        assert!(!text.contains("very-secret-zz"), "{text}");

        let err = parse_secret::<DbSecret>("db", "{\"password\": \"pw-in-broken-json").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"));
        assert!(!err.to_string().contains("pw-in-broken-json"));
    }

    #[test]
    fn rds_secret_accepts_port_as_string_and_hides_password() {
        let s: DbSecret = parse_secret(
            "db",
            r#"{"host":"db.example","port":"6543","username":"app","password":"hunter2","dbname":"erp","engine":"postgres"}"#,
        )
        .unwrap();
        assert_eq!(s.port, 6543);
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
