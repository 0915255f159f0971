//! One Zoho access token for every Lambda container.
//!
//! Zoho mints at most 10 tokens per 10 minutes per refresh token and evicts
//! the oldest past a small cap, so containers that each refreshed on cold
//! start would lock each other out. The token lives in `zoho_oauth_tokens`;
//! a container refreshes it only under the row lock (`SELECT … FOR UPDATE`),
//! after re-checking that nobody else already did, and keeps a copy in memory
//! between invocations. A throttle answer opens a circuit (`throttled_until`)
//! that every container honours.

use std::{
    sync::{Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::error::ZohoError;
use crate::{
    platform::db::{DbPool, PooledTransaction},
    platform::secrets::{Redacted, SecretSource, ZohoSecret},
};

/// Token-endpoint refusals that a rotated client secret or a renewed
/// refresh token in the secret can cure.
const CREDENTIAL_REFUSALS: [&str; 3] = ["invalid_client", "invalid_client_secret", "invalid_code"];

const SELECT_ROW: &str = "SELECT access_token, api_domain, expires_at, throttled_until \
                          FROM zoho_oauth_tokens WHERE id = $1";

/// The row of `zoho_oauth_tokens` used when none is named.
pub const DEFAULT_TOKEN_ROW: &str = "default";

/// A usable access token and the API host it belongs to.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Redacted,
    pub api_domain: String,
    pub expires_at: DateTime<Utc>,
}

impl AccessToken {
    fn same_token(&self, other: &str) -> bool {
        self.token
            .expose()
            .as_bytes()
            .ct_eq(other.as_bytes())
            .into()
    }
}

/// Where the token comes from and how it is shared.
pub struct TokenManager {
    http: reqwest::Client,
    pool: DbPool,
    /// Swapped when Zoho refuses it and the secret holds newer credentials.
    secret: RwLock<ZohoSecret>,
    renewal: Option<SecretSource<ZohoSecret>>,
    row_id: String,
    margin: Duration,
    circuit: Duration,
    cache: Mutex<Option<AccessToken>>,
    // Callers in one container queue here, so only one of them goes to the database lock.
    gate: tokio::sync::Mutex<()>,
}

struct Row {
    token: Option<AccessToken>,
    throttled_until: Option<DateTime<Utc>>,
}

enum Refreshed {
    Token(AccessToken),
    Throttled(String),
    Refused(String),
}

impl TokenManager {
    pub fn new(
        http: reqwest::Client,
        pool: DbPool,
        secret: ZohoSecret,
        margin: Duration,
        circuit: Duration,
    ) -> Self {
        TokenManager {
            http,
            pool,
            secret: RwLock::new(secret),
            renewal: None,
            row_id: DEFAULT_TOKEN_ROW.to_string(),
            margin,
            circuit,
            cache: Mutex::new(None),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// On a refusal of the client credentials or the refresh token, the
    /// secret is read again from `source` (newer than the refused call) and
    /// the refresh retried once, so a rotation needs no restart.
    pub fn renewing_from(mut self, source: SecretSource<ZohoSecret>) -> Self {
        self.renewal = Some(source);
        self
    }

    fn secret(&self) -> ZohoSecret {
        self.secret
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The secret's credentials when they differ from the refused ones.
    async fn renewed_secret(
        &self,
        refused: &ZohoSecret,
        refused_at: Instant,
    ) -> Option<ZohoSecret> {
        let source = self.renewal.as_ref()?;
        let current = match source.get_newer_than(refused_at).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "zoho refused the credentials and the secret could not be read again");
                return None;
            }
        };
        let changed = current.client_id != refused.client_id
            || current.client_secret != refused.client_secret
            || current.refresh_token != refused.refresh_token
            || current.accounts_url != refused.accounts_url;
        if !changed {
            return None;
        }
        *self.secret.write().unwrap_or_else(PoisonError::into_inner) = current.clone();
        tracing::info!("zoho refused the credentials; retrying with the secret's current ones");
        Some(current)
    }

    /// Calls the token endpoint, and once more with renewed credentials
    /// when it refuses the ones it was given.
    async fn refresh(&self) -> Result<Refreshed, ZohoError> {
        let secret = self.secret();
        let sent_at = Instant::now();
        let outcome = self.call_token_endpoint(&secret).await;
        match &outcome {
            Ok(Refreshed::Refused(code)) if CREDENTIAL_REFUSALS.contains(&code.as_str()) => {
                match self.renewed_secret(&secret, sent_at).await {
                    Some(renewed) => self.call_token_endpoint(&renewed).await,
                    None => outcome,
                }
            }
            _ => outcome,
        }
    }

    fn fresh(&self, t: &AccessToken) -> bool {
        let margin = chrono::Duration::from_std(self.margin).unwrap_or(chrono::Duration::zero());
        t.expires_at - Utc::now() > margin
    }

    fn cached(&self) -> Option<AccessToken> {
        let guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        guard.clone().filter(|t| self.fresh(t))
    }

    fn store(&self, t: Option<AccessToken>) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// A token with more than the margin left: from memory, else from
    /// Postgres, else refreshed single-flight.
    pub async fn get(&self) -> Result<AccessToken, ZohoError> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _g = self.gate.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        self.load_or_refresh(None).await
    }

    /// Zoho answered `INVALID_TOKEN` to `rejected`: returns a different token,
    /// refreshing only if nobody has replaced it yet.
    pub async fn replace(&self, rejected: &AccessToken) -> Result<AccessToken, ZohoError> {
        let _g = self.gate.lock().await;
        if let Some(t) = self.cached() {
            if !t.same_token(rejected.token.expose()) {
                return Ok(t);
            }
        }
        self.store(None);
        self.load_or_refresh(Some(rejected.token.expose())).await
    }

    fn usable(&self, row: &Row, rejected: Option<&str>) -> Option<AccessToken> {
        row.token
            .as_ref()
            .filter(|t| self.fresh(t))
            .filter(|t| rejected.is_none_or(|r| !t.same_token(r)))
            .cloned()
    }

    fn read_row(row: &tokio_postgres::Row) -> Result<Row, ZohoError> {
        let access: Option<String> = row.try_get(0)?;
        let domain: Option<String> = row.try_get(1)?;
        let expires: Option<DateTime<Utc>> = row.try_get(2)?;
        let token = match (access, domain, expires) {
            (Some(a), Some(d), Some(e)) if !a.is_empty() => Some(AccessToken {
                token: Redacted::new(a),
                api_domain: d,
                expires_at: e,
            }),
            _ => None,
        };
        Ok(Row {
            token,
            throttled_until: row.try_get(3)?,
        })
    }

    /// What a read row settles without a refresh: a usable token (kept in
    /// memory), or the open circuit.
    fn settled(&self, row: &Row, rejected: Option<&str>) -> Option<Result<AccessToken, ZohoError>> {
        if let Some(t) = self.usable(row, rejected) {
            self.store(Some(t.clone()));
            return Some(Ok(t));
        }
        row.throttled_until
            .filter(|u| *u > Utc::now())
            .map(|until| Err(ZohoError::Throttled { until }))
    }

    async fn load_or_refresh(&self, rejected: Option<&str>) -> Result<AccessToken, ZohoError> {
        let mut client = self.pool.get().await?;

        // Most calls end here: another container already refreshed.
        if let Some(r) = client.query_opt(SELECT_ROW, &[&self.row_id]).await? {
            if let Some(done) = self.settled(&Self::read_row(&r)?, rejected) {
                return done;
            }
        }

        let tx = client.transaction().await?;
        let row = self.lock_row(&tx).await?;
        // Whoever held the lock before us may have refreshed already.
        if let Some(done) = self.settled(&row, rejected) {
            tx.commit().await?;
            return done;
        }
        self.drop_rejected(&tx, &row, rejected).await?;
        let outcome = self.refresh().await;
        self.record(tx, outcome).await
    }

    /// The token row, created when missing, locked for this refresh.
    async fn lock_row(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<Row, ZohoError> {
        tx.execute(
            "INSERT INTO zoho_oauth_tokens (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&self.row_id],
        )
        .await?;
        let locked = tx
            .query_one(&format!("{SELECT_ROW} FOR UPDATE"), &[&self.row_id])
            .await?;
        Self::read_row(&locked)
    }

    /// Zoho refused the stored token: if no new one can be had, nobody should use it.
    async fn drop_rejected(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        row: &Row,
        rejected: Option<&str>,
    ) -> Result<(), ZohoError> {
        if let (Some(r), Some(t)) = (rejected, row.token.as_ref()) {
            if t.same_token(r) {
                tx.execute(
                    "UPDATE zoho_oauth_tokens SET access_token = NULL, expires_at = NULL WHERE id = $1",
                    &[&self.row_id],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Writes what the token endpoint answered into the locked row.
    async fn record(
        &self,
        tx: PooledTransaction<'_>,
        outcome: Result<Refreshed, ZohoError>,
    ) -> Result<AccessToken, ZohoError> {
        match outcome {
            Ok(Refreshed::Token(t)) => {
                tx.execute(
                    "UPDATE zoho_oauth_tokens
                        SET access_token = $2, api_domain = $3, expires_at = $4,
                            refreshed_at = now(), refresh_count = refresh_count + 1,
                            throttled_until = NULL, last_error = NULL, updated_at = now()
                      WHERE id = $1",
                    &[
                        &self.row_id,
                        &t.token.expose(),
                        &t.api_domain,
                        &t.expires_at,
                    ],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(api_domain = %t.api_domain, expires_at = %t.expires_at, "zoho token refreshed");
                self.store(Some(t.clone()));
                Ok(t)
            }
            Ok(Refreshed::Throttled(description)) => {
                let circuit = chrono::Duration::from_std(self.circuit)
                    .unwrap_or_else(|_| chrono::Duration::minutes(10));
                let until = Utc::now() + circuit;
                let msg = format!("token endpoint throttled: {description}");
                self.note_failure(&tx, Some(until), &msg).await?;
                tx.commit().await?;
                tracing::error!(%until, "zoho token endpoint throttled; circuit open");
                Err(ZohoError::Throttled { until })
            }
            Ok(Refreshed::Refused(code)) => {
                let msg = format!("token endpoint refused the refresh: {code}");
                self.note_failure(&tx, None, &msg).await?;
                tx.commit().await?;
                tracing::error!(error = %code, "zoho token refresh refused");
                Err(ZohoError::TokenRefused { code })
            }
            Err(e) => {
                // Best effort: the note is for operators, the caller gets the real error either way.
                let msg = e.to_string();
                let _ = self.note_failure(&tx, None, &msg).await;
                let _ = tx.commit().await;
                tracing::warn!(error = %msg, "zoho token refresh failed");
                Err(e)
            }
        }
    }

    /// A failed refresh, for operators; `throttled_until` opens the circuit.
    async fn note_failure(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        throttled_until: Option<DateTime<Utc>>,
        msg: &str,
    ) -> Result<(), ZohoError> {
        tx.execute(
            "UPDATE zoho_oauth_tokens
                SET throttled_until = coalesce($2, throttled_until), last_error = $3,
                    updated_at = now()
              WHERE id = $1",
            &[&self.row_id, &throttled_until, &msg],
        )
        .await?;
        Ok(())
    }

    async fn call_token_endpoint(&self, secret: &ZohoSecret) -> Result<Refreshed, ZohoError> {
        let url = format!(
            "{}/oauth/v2/token",
            secret.accounts_url.trim_end_matches('/')
        );
        // A form body keeps the secrets out of URL logs.
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", secret.client_id.as_str()),
            ("client_secret", secret.client_secret.expose()),
            ("refresh_token", secret.refresh_token.expose()),
        ];
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(ZohoError::from_reqwest)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(ZohoError::from_reqwest)?;
        parse_token_response(status, &bytes, secret.api_domain.as_deref())
    }
}

/// Reads the token endpoint's answer from its body: Zoho reports errors with
/// HTTP 200, and the throttle with 200 or 400 and a possibly localised `error`.
fn parse_token_response(
    status: u16,
    body: &[u8],
    fallback_domain: Option<&str>,
) -> Result<Refreshed, ZohoError> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) if status >= 500 => {
            return Err(ZohoError::Server {
                status,
                code: "TOKEN_ENDPOINT".into(),
                message: "token endpoint answered without JSON".into(),
            })
        }
        Err(_) => {
            return Err(ZohoError::Malformed(format!(
                "token endpoint answered HTTP {status} without JSON"
            )))
        }
    };
    let text = |k: &str| doc.get(k).and_then(Value::as_str);
    if let Some(token) = text("access_token").filter(|t| !t.is_empty()) {
        let domain = text("api_domain")
            .or(fallback_domain)
            .ok_or_else(|| ZohoError::Config("token answer has no api_domain".into()))?;
        url::Url::parse(domain)
            .map_err(|_| ZohoError::Malformed("api_domain is not a URL".into()))?;
        // Legacy answers carry `expires_in_sec`, and then `expires_in` is in milliseconds.
        let secs = match doc.get("expires_in_sec").and_then(Value::as_i64) {
            Some(s) => s,
            None => {
                let v = doc
                    .get("expires_in")
                    .and_then(Value::as_i64)
                    .unwrap_or(3600);
                if v > 86_400 {
                    v / 1000
                } else {
                    v
                }
            }
        };
        if secs <= 0 {
            return Err(ZohoError::Malformed(
                "token lifetime is not positive".into(),
            ));
        }
        return Ok(Refreshed::Token(AccessToken {
            token: Redacted::new(token),
            api_domain: domain.trim_end_matches('/').to_string(),
            expires_at: Utc::now() + chrono::Duration::seconds(secs),
        }));
    }
    let description = text("error_description").unwrap_or_default();
    let throttled = text("status") == Some("failure")
        || text("error") == Some("Access Denied")
        || description
            .to_ascii_lowercase()
            .contains("too many requests");
    if throttled {
        return Ok(Refreshed::Throttled(description.to_string()));
    }
    if let Some(code) = text("error") {
        return Ok(Refreshed::Refused(code.to_string()));
    }
    if status >= 500 {
        return Err(ZohoError::Server {
            status,
            code: "TOKEN_ENDPOINT".into(),
            message: "token endpoint failed".into(),
        });
    }
    Err(ZohoError::Malformed(format!(
        "token endpoint answered HTTP {status} with neither access_token nor error"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<Refreshed, ZohoError> {
        parse_token_response(status, body.as_bytes(), Some("https://www.zohoapis.eu"))
    }

    #[test]
    fn token_answers_are_read_from_the_body() {
        let Ok(Refreshed::Token(t)) = parse(
            200,
            r#"{"access_token":"1000.a.b","api_domain":"https://www.zohoapis.com","token_type":"Bearer","expires_in":3600}"#,
        ) else {
            panic!("expected a token")
        };
        assert_eq!(t.api_domain, "https://www.zohoapis.com");
        let left = (t.expires_at - Utc::now()).num_seconds();
        assert!((3590..=3600).contains(&left), "{left}");
        assert!(!format!("{t:?}").contains("1000.a.b"));

        // Legacy shape: expires_in in milliseconds next to expires_in_sec.
        let Ok(Refreshed::Token(t)) = parse(
            200,
            r#"{"access_token":"x","expires_in":3600000,"expires_in_sec":3600}"#,
        ) else {
            panic!("expected a token")
        };
        assert_eq!(t.api_domain, "https://www.zohoapis.eu");
        assert!((t.expires_at - Utc::now()).num_seconds() <= 3600);

        for (status, body) in [
            (
                400,
                r#"{"error_description":"You have made too many requests continuously. Please try again after some time.","error":"Access Denied","status":"failure"}"#,
            ),
            (200, r#"{"error":"拒绝访问","status":"failure"}"#),
        ] {
            assert!(
                matches!(parse(status, body), Ok(Refreshed::Throttled(_))),
                "{body}"
            );
        }
        assert!(
            matches!(parse(200, r#"{"error":"invalid_code"}"#), Ok(Refreshed::Refused(c)) if c == "invalid_code")
        );
        assert!(matches!(
            parse(502, "<html>"),
            Err(ZohoError::Server { .. })
        ));
        assert!(matches!(parse(200, "{}"), Err(ZohoError::Malformed(_))));
    }
}
