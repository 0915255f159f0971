//! JSON secrets from AWS Secrets Manager, cached per container.
//!
//! The cache is `aws_secretsmanager_caching` with a TTL (5 minutes by
//! default), so a rotated secret takes effect without a redeploy. Errors name
//! the secret and the field, never the value.

use std::{fmt, num::NonZeroUsize, time::Duration};

use aws_secretsmanager_caching::SecretsManagerCachingClient;
use serde::{de::DeserializeOwned, Deserialize};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{secret}` could not be read: {reason}")]
    Fetch { secret: String, reason: String },
    #[error("secret `{secret}` has no string value")]
    NotAString { secret: String },
    #[error("secret `{secret}` is malformed: {problem}")]
    Malformed { secret: String, problem: String },
    #[error("secrets client could not be built: {0}")]
    Init(String),
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

/// Secrets Manager with an in-container TTL cache.
pub struct Secrets {
    client: SecretsManagerCachingClient,
}

impl Secrets {
    /// Builds the client from the ambient AWS config (honours `AWS_ENDPOINT_URL`).
    pub async fn new(sdk: &aws_config::SdkConfig, ttl: Duration) -> Result<Self, SecretError> {
        let builder = aws_sdk_secretsmanager::config::Builder::from(sdk);
        let client = SecretsManagerCachingClient::from_builder(
            builder,
            NonZeroUsize::new(64).expect("64 is not zero"),
            ttl,
            false,
        )
        .await
        .map_err(|e| SecretError::Init(e.to_string()))?;
        Ok(Secrets { client })
    }

    /// Returns the secret's text, from the cache when it is fresh.
    pub async fn get_string(&self, secret_id: &str) -> Result<Redacted, SecretError> {
        let out = match self
            .client
            .get_secret_value(secret_id, None, None, false)
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let reason = e.to_string();
                return Err(SecretError::Fetch {
                    secret: secret_id.to_string(),
                    reason,
                });
            }
        };
        out.secret_string
            .map(Redacted)
            .ok_or_else(|| SecretError::NotAString {
                secret: secret_id.to_string(),
            })
    }

    /// Returns the secret parsed as JSON into `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, secret_id: &str) -> Result<T, SecretError> {
        let text = self.get_string(secret_id).await?;
        parse_secret(secret_id, text.expose())
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
