//! Contacts upsert, Sales Orders create, and updates by id or upsert of
//! both, over Zoho CRM v8.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{json, Value};

use super::{
    error::{id_text, RecordError, ZohoError},
    token::{AccessToken, TokenManager},
};
use crate::{
    platform::config::ZohoSettings,
    platform::db::DbPool,
    platform::secrets::{SecretSource, Secrets, ZohoSecret},
};

/// Zoho's limit on records per insert/upsert call.
pub const MAX_RECORDS_PER_CALL: usize = 100;

/// The `action` of a created sales order that an earlier attempt created.
pub const ACTION_EXISTING: &str = "existing";

/// One record's outcome in a batch call; index i answers request record i.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordResult {
    Success {
        id: String,
        /// `insert` or `update` (upsert only).
        action: Option<String>,
        raw: Value,
    },
    Failure(RecordError),
}

/// Calls made and time spent in them, for metrics.
#[derive(Debug, Default)]
pub struct CallStats {
    calls: AtomicU64,
    total_ms: AtomicU64,
    max_ms: AtomicU64,
    /// The last `X-API-CREDITS-REMAINING` Zoho sent, plus one (0: none
    /// seen). Zoho sends it only once half the day's credits are used.
    credits_remaining: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStatsSnapshot {
    pub calls: u64,
    pub total_ms: u64,
    pub max_ms: u64,
    /// API credits left in Zoho's rolling 24 hours, when Zoho said.
    pub credits_remaining: Option<u64>,
}

impl CallStats {
    fn record(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_ms.fetch_add(ms, Ordering::Relaxed);
        self.max_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn credits(&self, headers: &reqwest::header::HeaderMap) {
        let remaining = headers
            .get("x-api-credits-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = remaining {
            self.credits_remaining.store(n + 1, Ordering::Relaxed);
        }
    }

    /// Returns the counts so far and starts again from zero.
    pub fn take(&self) -> CallStatsSnapshot {
        CallStatsSnapshot {
            calls: self.calls.swap(0, Ordering::Relaxed),
            total_ms: self.total_ms.swap(0, Ordering::Relaxed),
            max_ms: self.max_ms.swap(0, Ordering::Relaxed),
            credits_remaining: self
                .credits_remaining
                .swap(0, Ordering::Relaxed)
                .checked_sub(1),
        }
    }
}

/// Zoho CRM client; build once per container and keep it, so the token stays cached.
pub struct ZohoClient {
    http: reqwest::Client,
    tokens: TokenManager,
    settings: ZohoSettings,
    stats: CallStats,
}

impl ZohoClient {
    pub fn new(
        secret: ZohoSecret,
        settings: ZohoSettings,
        pool: DbPool,
    ) -> Result<Self, ZohoError> {
        let http = reqwest::Client::builder()
            .timeout(settings.http_timeout)
            .connect_timeout(settings.http_timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ZohoError::Config(format!("HTTP client: {e}")))?;
        let tokens = TokenManager::new(
            http.clone(),
            pool,
            secret,
            settings.token_refresh_margin,
            settings.throttle_circuit,
        );
        Ok(ZohoClient {
            http,
            tokens,
            settings,
            stats: CallStats::default(),
        })
    }

    /// See [`TokenManager::renewing_from`].
    pub fn renewing_from(mut self, source: SecretSource<ZohoSecret>) -> Self {
        self.tokens = self.tokens.renewing_from(source);
        self
    }

    pub fn settings(&self) -> &ZohoSettings {
        &self.settings
    }

    pub fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// A usable token (refreshing single-flight if needed). The drain calls
    /// this before claiming, so an open throttle circuit claims nothing.
    pub async fn access_token(&self) -> Result<AccessToken, ZohoError> {
        self.tokens.get().await
    }

    /// `POST /crm/v8/Contacts/upsert` with up to 100 records and the configured
    /// `duplicate_check_fields`; one result per record, in request order.
    pub async fn upsert_contacts(&self, records: &[Value]) -> Result<Vec<RecordResult>, ZohoError> {
        let fields = self.settings.duplicate_check_fields.clone();
        self.upsert_records("Contacts", records, &fields).await
    }

    /// `POST /crm/v8/{module}/upsert` with up to 100 records: each updates the
    /// record that one of `duplicate_check_fields` matches, or is inserted.
    pub async fn upsert_records(
        &self,
        module: &str,
        records: &[Value],
        duplicate_check_fields: &[String],
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let body = json!({
            "data": records,
            "duplicate_check_fields": duplicate_check_fields,
            "trigger": [],
        });
        self.batch(
            Method::POST,
            &format!("{module}/upsert"),
            records.len(),
            &body,
        )
        .await
    }

    /// `PUT /crm/v8/{module}` with up to 100 records, each naming the record
    /// it changes by its `id`; one result per record, in request order.
    pub async fn update_records(
        &self,
        module: &str,
        records: &[Value],
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let body = json!({"data": records, "trigger": []});
        self.batch(Method::PUT, module, records.len(), &body).await
    }

    /// One call of `n` records (1 to 100; none makes no call).
    async fn batch(
        &self,
        method: Method,
        path: &str,
        n: usize,
        body: &Value,
    ) -> Result<Vec<RecordResult>, ZohoError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > MAX_RECORDS_PER_CALL {
            return Err(ZohoError::Config(format!(
                "{n} records in one call; Zoho takes at most {MAX_RECORDS_PER_CALL}"
            )));
        }
        let doc = self.send(method, path, body).await?;
        let items = data_items(&doc, n)?;
        Ok(items.iter().map(record_result).collect())
    }

    /// `POST /crm/v8/Sales_Orders` with up to 100 records; one result per
    /// record, in request order. `DUPLICATE_DATA` on the configured unique
    /// field means an earlier attempt created the order: a success whose
    /// `action` is `existing`, with that order's id.
    pub async fn create_sales_orders(
        &self,
        records: &[Value],
    ) -> Result<Vec<RecordResult>, ZohoError> {
        let body = json!({"data": records, "trigger": []});
        let results = self
            .batch(Method::POST, "Sales_Orders", records.len(), &body)
            .await?;
        Ok(results
            .into_iter()
            .map(|r| self.existing_order(r))
            .collect())
    }

    fn is_unique_duplicate(&self, e: &RecordError) -> bool {
        e.code == "DUPLICATE_DATA"
            && e.api_name.as_deref() == Some(self.settings.sales_order_unique_field.as_str())
    }

    /// A create refused because the unique field names an existing order is
    /// that order: the retry of a create whose answer was lost.
    fn existing_order(&self, r: RecordResult) -> RecordResult {
        match r {
            RecordResult::Failure(e)
                if self.is_unique_duplicate(&e) && e.duplicate_id.is_some() =>
            {
                RecordResult::Success {
                    id: e.duplicate_id.clone().unwrap_or_default(),
                    action: Some(ACTION_EXISTING.into()),
                    raw: e.raw,
                }
            }
            other => other,
        }
    }

    /// Sends with the shared token; on 401 `INVALID_TOKEN`, replaces the token
    /// once and retries once. Returns the body of any answer that carries a
    /// per-record `data` array (200, 201, 207, 400).
    async fn send(&self, method: Method, path: &str, body: &Value) -> Result<Value, ZohoError> {
        let mut token = self.tokens.get().await?;
        let mut retried = false;
        loop {
            let url = format!("{}/crm/v8/{path}", token.api_domain);
            let started = Instant::now();
            let sent = self
                .http
                .request(method.clone(), &url)
                .header(
                    reqwest::header::AUTHORIZATION,
                    format!("Zoho-oauthtoken {}", token.token.expose()),
                )
                .json(body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.stats.record(started.elapsed());
                    return Err(ZohoError::from_reqwest(e));
                }
            };
            let status = resp.status().as_u16();
            self.stats.credits(resp.headers());
            let bytes = resp.bytes().await.map_err(ZohoError::from_reqwest);
            self.stats.record(started.elapsed());
            let bytes = bytes?;
            let doc: Option<Value> = serde_json::from_slice(&bytes).ok();
            let field = |k: &str| {
                doc.as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (code, message) = (field("code"), field("message"));
            match status {
                401 if code == "INVALID_TOKEN" && !retried => {
                    tracing::warn!(path, "zoho rejected the token; replacing it once");
                    token = self.tokens.replace(&token).await?;
                    retried = true;
                }
                401 => return Err(ZohoError::Unauthorized { code, message }),
                429 => return Err(ZohoError::RateLimited { code, message }),
                s if s >= 500 => {
                    return Err(ZohoError::Server {
                        status,
                        code,
                        message,
                    })
                }
                200 | 201 | 207 | 400 if doc.as_ref().is_some_and(|d| d.get("data").is_some()) => {
                    return doc.ok_or_else(|| ZohoError::Malformed("no body".into()));
                }
                s if (200..300).contains(&s) => {
                    return Err(ZohoError::Malformed(format!(
                        "HTTP {status} without a data array"
                    )))
                }
                _ => {
                    return Err(ZohoError::Rejected {
                        status,
                        code: if code.is_empty() {
                            "UNKNOWN".into()
                        } else {
                            code
                        },
                        message,
                    })
                }
            }
        }
    }
}

/// The `data` array, which must answer every request record: an empty or
/// short array is a failure, never a silent success.
fn data_items(doc: &Value, expected: usize) -> Result<&Vec<Value>, ZohoError> {
    let items = doc
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| ZohoError::Malformed("data is not an array".into()))?;
    if items.len() != expected {
        return Err(ZohoError::Malformed(format!(
            "{} results for {expected} records",
            items.len()
        )));
    }
    Ok(items)
}

fn record_result(item: &Value) -> RecordResult {
    let ok = item.get("status").and_then(Value::as_str) == Some("success")
        || item.get("code").and_then(Value::as_str) == Some("SUCCESS");
    let id = item
        .get("details")
        .and_then(|d| d.get("id"))
        .and_then(id_text);
    match (ok, id) {
        (true, Some(id)) => RecordResult::Success {
            id,
            action: item
                .get("action")
                .and_then(Value::as_str)
                .map(str::to_string),
            raw: item.clone(),
        },
        (true, None) => RecordResult::Failure(RecordError {
            code: "MALFORMED".into(),
            message: "success without details.id".into(),
            api_name: None,
            json_path: None,
            duplicate_id: None,
            raw: item.clone(),
        }),
        (false, _) => RecordResult::Failure(RecordError::from_item(item)),
    }
}

/// Builds the client on first use, so a drain with `enableZohoLive = false`
/// needs neither the secret nor the network.
pub struct LazyZohoClient {
    cell: tokio::sync::OnceCell<Arc<ZohoClient>>,
    recipe: Option<ClientRecipe>,
}

/// What building the client needs: where its secret is, and its settings.
struct ClientRecipe {
    secrets: Arc<Secrets>,
    secret_id: String,
    settings: ZohoSettings,
    pool: DbPool,
}

impl LazyZohoClient {
    pub fn ready(client: Arc<ZohoClient>) -> Self {
        LazyZohoClient {
            cell: tokio::sync::OnceCell::new_with(Some(client)),
            recipe: None,
        }
    }

    /// No secret configured: `get` fails with a configuration error, which the
    /// drain treats as "stop, charge nothing".
    pub fn unconfigured() -> Self {
        LazyZohoClient {
            cell: tokio::sync::OnceCell::new(),
            recipe: None,
        }
    }

    pub fn from_secret(
        secrets: Arc<Secrets>,
        secret_id: String,
        settings: ZohoSettings,
        pool: DbPool,
    ) -> Self {
        LazyZohoClient {
            cell: tokio::sync::OnceCell::new(),
            recipe: Some(ClientRecipe {
                secrets,
                secret_id,
                settings,
                pool,
            }),
        }
    }

    pub async fn get(&self) -> Result<Arc<ZohoClient>, ZohoError> {
        self.cell
            .get_or_try_init(|| async {
                let src = self
                    .recipe
                    .as_ref()
                    .ok_or_else(|| ZohoError::Config("ZOHO_SECRET_ID is not set".into()))?;
                let source = SecretSource::Manager {
                    secrets: src.secrets.clone(),
                    id: src.secret_id.clone(),
                };
                let secret: ZohoSecret = source.get().await?;
                let client = ZohoClient::new(secret, src.settings.clone(), src.pool.clone())?;
                Ok(Arc::new(client.renewing_from(source)))
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_left_are_reported_once_zoho_says_and_then_cleared() {
        let stats = CallStats::default();
        assert_eq!(
            stats.take().credits_remaining,
            None,
            "Zoho says nothing below half"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-credits-remaining", "4980".parse().unwrap());
        stats.credits(&headers);
        assert_eq!(stats.take().credits_remaining, Some(4980));
        assert_eq!(stats.take().credits_remaining, None);
        headers.insert("x-api-credits-remaining", "0".parse().unwrap());
        stats.credits(&headers);
        assert_eq!(
            stats.take().credits_remaining,
            Some(0),
            "none left is still news"
        );
    }

    #[test]
    fn results_need_an_id_and_keep_the_order() {
        let doc = json!({"data": [
            {"code": "SUCCESS", "status": "success", "action": "insert", "details": {"id": "5725767000011412007"}},
            {"code": "SUCCESS", "status": "success", "details": {}},
            {"code": "INVALID_DATA", "status": "error", "message": "invalid data", "details": {"api_name": "Phone"}},
        ]});
        let items = data_items(&doc, 3).unwrap();
        let r: Vec<RecordResult> = items.iter().map(record_result).collect();
        assert!(matches!(&r[0], RecordResult::Success { id, .. } if id == "5725767000011412007"));
        assert!(matches!(&r[1], RecordResult::Failure(e) if e.code == "MALFORMED"));
        assert!(
            matches!(&r[2], RecordResult::Failure(e) if e.api_name.as_deref() == Some("Phone"))
        );
        assert!(matches!(data_items(&doc, 4), Err(ZohoError::Malformed(_))));
        assert!(matches!(
            data_items(&json!({"data": []}), 1),
            Err(ZohoError::Malformed(_))
        ));
    }
}
