//! Kommo v4 HTTP client: Bearer auth, a client-side rate limit, bounded
//! retries with backoff and jitter, and typed errors.
//!
//! Kommo allows 7 requests per second and blocks the caller's IP (HTTP 403 on
//! everything, until support lifts it) after repeated 429s, so the limiter
//! spaces requests evenly instead of allowing bursts, and 403 is never retried.

use std::{
    num::NonZeroU32,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use backon::{ExponentialBuilder, Retryable};

use super::budget::{BudgetError, BudgetSettings, Lane, SharedBudget};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{header, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::model::{AccountTimezone, Contact, EntityError, Lead, Pipeline};
use crate::{
    platform::secrets::{KommoSecret, Redacted, SecretSource},
    platform::text::{storable_json, truncate},
    platform::{config::Config, db::DbPool},
};

/// Kommo returns at most 250 entities per page.
pub const MAX_PAGE_LIMIT: u32 = 250;
/// Length kept of a response body in errors and logs.
const EXCERPT_CHARS: usize = 300;

/// A problem+json error body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default, rename = "validation-errors")]
    pub validation_errors: Option<Value>,
}

impl Problem {
    fn summary(&self) -> String {
        match (&self.title, &self.detail) {
            (Some(t), Some(d)) => format!("{t}: {d}"),
            (Some(t), None) => t.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "no details".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KommoError {
    #[error("Kommo rejected the access token (HTTP 401: {detail}); renew the long-lived token in the Kommo secret")]
    Unauthorized { detail: String },
    #[error("Kommo has blocked this IP address (HTTP 403 with an HTML page), usually after repeated rate-limit violations; only Kommo support can lift it")]
    IpBlocked { excerpt: String },
    #[error("Kommo kept answering 429 Too Many Requests after {attempts} attempts")]
    RateLimited { attempts: usize, excerpt: String },
    #[error("Kommo answered HTTP {status} ({}): {excerpt}", problem.as_deref().map(Problem::summary).unwrap_or_else(|| "no problem+json body".to_string()))]
    Api {
        status: u16,
        problem: Option<Box<Problem>>,
        excerpt: String,
    },
    #[error("Kommo could not be reached: {0}")]
    Transport(String),
    #[error(
        "Kommo answered HTTP {status} with a body that could not be read ({problem}): {excerpt}"
    )]
    Decode {
        status: u16,
        problem: String,
        excerpt: String,
    },
    #[error("invalid Kommo client settings: {0}")]
    Settings(String),
}

impl KommoError {
    /// The HTTP status Kommo answered, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            KommoError::Unauthorized { .. } => Some(401),
            KommoError::IpBlocked { .. } => Some(403),
            KommoError::RateLimited { .. } => Some(429),
            KommoError::Api { status, .. } | KommoError::Decode { status, .. } => Some(*status),
            KommoError::Transport(_) | KommoError::Settings(_) => None,
        }
    }

    /// The start of the response body, when there was one.
    pub fn body_excerpt(&self) -> Option<&str> {
        match self {
            KommoError::IpBlocked { excerpt }
            | KommoError::RateLimited { excerpt, .. }
            | KommoError::Api { excerpt, .. }
            | KommoError::Decode { excerpt, .. } => Some(excerpt),
            _ => None,
        }
    }

    /// Whether every request fails the same way for now (a refused or
    /// blocked account, the limit, the network, Kommo's own errors), as
    /// opposed to a failure of this one request's content.
    pub fn is_systemic(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                KommoError::Unauthorized { .. }
                    | KommoError::IpBlocked { .. }
                    | KommoError::Settings(_)
            )
    }

    /// 429, 5xx and network failures are worth another try; the rest are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KommoError::RateLimited { .. } | KommoError::Transport(_) => true,
            KommoError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Client tuning. `Default` matches production: 7 req/s, 10 s timeout, 4 retries.
#[derive(Debug, Clone)]
pub struct KommoClientOptions {
    pub rate_per_second: u32,
    pub timeout: Duration,
    /// Retries after the first attempt, for 429, 5xx and network errors.
    pub max_retries: usize,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Ids per `filter[id][]` request; each id adds about 30 characters to the URL.
    pub ids_per_request: usize,
}

impl Default for KommoClientOptions {
    fn default() -> Self {
        KommoClientOptions {
            rate_per_second: 7,
            timeout: Duration::from_secs(10),
            max_retries: 4,
            retry_min_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(8),
            ids_per_request: 100,
        }
    }
}

impl KommoClientOptions {
    pub fn from_config(cfg: &Config) -> Self {
        KommoClientOptions {
            rate_per_second: cfg.kommo_rate_per_second,
            timeout: cfg.kommo_http_timeout,
            ..KommoClientOptions::default()
        }
    }
}

/// One page of `GET /api/v4/leads`.
#[derive(Debug, Clone, Default)]
pub struct LeadsPage {
    pub leads: Vec<Lead>,
    /// False on 204, on a short page, or when the page has no `next` link.
    pub has_next: bool,
    /// Leads on the page that could not be parsed (logged, not returned).
    pub invalid: Vec<EntityError>,
}

/// Cheap to clone; clones share the rate limiter and connection pool.
#[derive(Clone)]
pub struct KommoClient {
    http: reqwest::Client,
    base_url: String,
    /// Swapped when Kommo refuses it and the secret holds a newer one.
    token: Arc<RwLock<Redacted>>,
    /// Where a refused token is read again; None keeps the first token.
    renewal: Option<SecretSource<KommoSecret>>,
    /// The account's budget shared with every container; None limits this
    /// client alone (tests, benchmarks).
    budget: Option<SharedBudget>,
    limiter: Arc<DefaultDirectRateLimiter>,
    opts: KommoClientOptions,
}

impl std::fmt::Debug for KommoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoClient")
            .field("base_url", &self.base_url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

enum Body {
    Empty,
    Json(Value),
}

impl KommoClient {
    /// The client a function builds at cold start: options from the config,
    /// the token from `source` (read again on a 401), and every request in
    /// the account's shared budget on `lane`.
    pub async fn for_function(
        source: SecretSource<KommoSecret>,
        cfg: &Config,
        pool: DbPool,
        lane: Lane,
    ) -> Result<Self, KommoError> {
        let budget = SharedBudget::new(pool, lane, BudgetSettings::from_config(cfg));
        let client = Self::from_source(source, KommoClientOptions::from_config(cfg)).await?;
        Ok(client.sharing_budget(budget))
    }

    /// The token read from `source`, and read again from it when Kommo refuses it.
    pub async fn from_source(
        source: SecretSource<KommoSecret>,
        opts: KommoClientOptions,
    ) -> Result<Self, KommoError> {
        let secret = source
            .get()
            .await
            .map_err(|e| KommoError::Settings(e.to_string()))?;
        Ok(Self::new(&secret, opts)?.renewing_from(source))
    }

    pub fn new(secret: &KommoSecret, opts: KommoClientOptions) -> Result<Self, KommoError> {
        Self::with_token(&secret.base_url, secret.access_token.clone(), opts)
    }

    pub fn with_token(
        base_url: &str,
        token: Redacted,
        opts: KommoClientOptions,
    ) -> Result<Self, KommoError> {
        let parsed = url::Url::parse(base_url)
            .map_err(|e| KommoError::Settings(format!("base URL `{base_url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(KommoError::Settings(format!(
                "base URL `{base_url}` must be http(s)"
            )));
        }
        let rate = NonZeroU32::new(opts.rate_per_second)
            .ok_or_else(|| KommoError::Settings("rate_per_second must be at least 1".into()))?;
        if opts.ids_per_request == 0 || opts.ids_per_request > MAX_PAGE_LIMIT as usize {
            return Err(KommoError::Settings(format!(
                "ids_per_request must be 1..={MAX_PAGE_LIMIT}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .user_agent(concat!("kommo-erp-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KommoError::Settings(format!("HTTP client: {e}")))?;
        // Burst 1: requests are spaced evenly, so no one-second window ever holds more than `rate`.
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN));
        Ok(KommoClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: Arc::new(RwLock::new(token)),
            renewal: None,
            budget: None,
            limiter: Arc::new(limiter),
            opts,
        })
    }

    /// On a 401, the token is read again from `source` (a value newer than
    /// the refused request) and the request retried once with it, so a token
    /// renewed in the secret takes effect without a restart.
    pub fn renewing_from(mut self, source: SecretSource<KommoSecret>) -> Self {
        self.renewal = Some(source);
        self
    }

    /// Takes every request's slot from the account's shared budget.
    pub fn sharing_budget(mut self, budget: SharedBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn token(&self) -> Redacted {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The secret's token when it differs from the refused one.
    async fn renewed_token(&self, refused: &Redacted, refused_at: Instant) -> Option<Redacted> {
        let source = self.renewal.as_ref()?;
        match source.get_newer_than(refused_at).await {
            Ok(secret) if secret.access_token != *refused => {
                *self.token.write().unwrap_or_else(PoisonError::into_inner) =
                    secret.access_token.clone();
                tracing::info!(
                    "Kommo refused the access token; retrying with the secret's current one"
                );
                Some(secret.access_token)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "Kommo refused the access token and the secret could not be read again");
                None
            }
        }
    }

    /// Current leads by id, with contacts and catalog elements; unknown ids are simply absent.
    pub async fn leads_by_ids(&self, ids: &[i64]) -> Result<Vec<Lead>, KommoError> {
        let with = [("with", "contacts,catalog_elements")];
        self.by_ids("/api/v4/leads", "leads", &with, ids, Lead::from_value)
            .await
    }

    /// One page of leads created in `created_from ..= created_to` (Unix
    /// seconds, both inclusive), with contacts and catalog elements, ordered by id.
    pub async fn leads_page(
        &self,
        created_from: i64,
        created_to: i64,
        page: u32,
        limit: u32,
    ) -> Result<LeadsPage, KommoError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let page = page.max(1);
        let query = vec![
            ("with".to_string(), "contacts,catalog_elements".to_string()),
            (
                "filter[created_at][from]".to_string(),
                created_from.to_string(),
            ),
            ("filter[created_at][to]".to_string(), created_to.to_string()),
            ("order[id]".to_string(), "asc".to_string()),
            ("limit".to_string(), limit.to_string()),
            ("page".to_string(), page.to_string()),
        ];
        let v = match self.get("/api/v4/leads", &query).await? {
            Body::Empty => return Ok(LeadsPage::default()),
            Body::Json(v) => v,
        };
        let has_next_link = v
            .pointer("/_links/next/href")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let items = embedded(v, "leads");
        // Kommo puts `next` on the last page too; a short page is the real end.
        let has_next = has_next_link && items.len() >= limit as usize;
        let mut result = LeadsPage {
            leads: Vec::with_capacity(items.len()),
            has_next,
            invalid: Vec::new(),
        };
        for item in items {
            match Lead::from_value(item) {
                Ok(l) => result.leads.push(l),
                Err(e) => {
                    tracing::warn!(error = %e, page, "skipping a malformed Kommo lead");
                    result.invalid.push(e);
                }
            }
        }
        Ok(result)
    }

    /// Contacts by id; unknown ids are simply absent.
    pub async fn contacts_by_ids(&self, ids: &[i64]) -> Result<Vec<Contact>, KommoError> {
        self.by_ids(
            "/api/v4/contacts",
            "contacts",
            &[],
            ids,
            Contact::from_value,
        )
        .await
    }

    /// Entities of one kind by id, `ids_per_request` at a time; a malformed
    /// one is logged and skipped.
    async fn by_ids<T>(
        &self,
        path: &str,
        kind: &str,
        params: &[(&str, &str)],
        ids: &[i64],
        parse: fn(Value) -> Result<T, EntityError>,
    ) -> Result<Vec<T>, KommoError> {
        let ids = dedupe(ids);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.opts.ids_per_request) {
            let mut query: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            query.push(("limit".to_string(), MAX_PAGE_LIMIT.to_string()));
            query.extend(
                chunk
                    .iter()
                    .map(|id| ("filter[id][]".to_string(), id.to_string())),
            );
            if let Body::Json(v) = self.get(path, &query).await? {
                for item in embedded(v, kind) {
                    match parse(item) {
                        Ok(entity) => out.push(entity),
                        Err(e) => {
                            tracing::warn!(error = %e, kind, "skipping a malformed Kommo entity")
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The account's pipelines with their statuses (`GET /api/v4/leads/pipelines`).
    pub async fn pipelines(&self) -> Result<Vec<Pipeline>, KommoError> {
        let v = match self.get("/api/v4/leads/pipelines", &[]).await? {
            Body::Json(v) => v,
            Body::Empty => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for item in embedded(v, "pipelines") {
            match serde_json::from_value::<Pipeline>(item) {
                Ok(p) => out.push(p),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed Kommo pipeline"),
            }
        }
        Ok(out)
    }

    /// The account's time zone (`GET /api/v4/account?with=datetime_settings`).
    pub async fn account_timezone(&self) -> Result<AccountTimezone, KommoError> {
        let query = vec![("with".to_string(), "datetime_settings".to_string())];
        let v = match self.get("/api/v4/account", &query).await? {
            Body::Json(v) => v,
            Body::Empty => {
                return Err(KommoError::Decode {
                    status: 204,
                    problem: "the account answer was empty".to_string(),
                    excerpt: String::new(),
                })
            }
        };
        let settings = v
            .pointer("/_embedded/datetime_settings")
            .or_else(|| v.get("datetime_settings"));
        let timezone = settings
            .and_then(|s| s.get("timezone"))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        match timezone {
            Some(tz) => Ok(AccountTimezone {
                timezone: tz.to_string(),
                offset: settings
                    .and_then(|s| s.get("timezone_offset"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            None => Err(KommoError::Decode {
                status: 200,
                problem: "no datetime_settings.timezone in the account".to_string(),
                excerpt: truncate(&v.to_string(), EXCERPT_CHARS),
            }),
        }
    }

    /// GET with rate limiting and retries, and one more try with a renewed
    /// token after a 401.
    async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Body, KommoError> {
        let token = self.token();
        let sent_at = Instant::now();
        match self.get_retrying(path, query, &token).await {
            Err(e @ KommoError::Unauthorized { .. }) => {
                match self.renewed_token(&token, sent_at).await {
                    Some(renewed) => self.get_retrying(path, query, &renewed).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn get_retrying(
        &self,
        path: &str,
        query: &[(String, String)],
        token: &Redacted,
    ) -> Result<Body, KommoError> {
        let url = format!("{}{}", self.base_url, path);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.opts.retry_min_delay)
            .with_max_delay(self.opts.retry_max_delay)
            .with_max_times(self.opts.max_retries)
            .with_jitter();
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let result = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.get_once(&url, path, query, token).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(KommoError::is_retryable)
        .notify(|e, wait| {
            tracing::warn!(path, status = ?e.status(), error = %e, wait_ms = wait.as_millis() as u64, "Kommo request failed; retrying");
        })
        .await;
        match result {
            Err(KommoError::RateLimited { excerpt, .. }) => Err(KommoError::RateLimited {
                attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
                excerpt,
            }),
            other => other,
        }
    }

    /// One rate-limited GET, read to the end.
    async fn get_once(
        &self,
        url: &str,
        path: &str,
        query: &[(String, String)],
        token: &Redacted,
    ) -> Result<Body, KommoError> {
        self.wait_for_slot().await?;
        let resp = self
            .http
            .get(url)
            .query(query)
            .bearer_auth(token.expose())
            .header(header::ACCEPT, "application/hal+json, application/json")
            .send()
            .await
            .map_err(|e| KommoError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        let header_text = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header_text(header::HeaderName::from_static("x-request-id"));
        let content_type = header_text(header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let retry_after = header_text(header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| KommoError::Transport(e.without_url().to_string()))?;
        tracing::debug!(
            path,
            status = status.as_u16(),
            request_id,
            bytes = bytes.len(),
            "Kommo answered"
        );
        let answer = Answer {
            status,
            request_id,
            content_type,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
        .read(path);
        if let Err(e) = &answer {
            self.tell_budget(e, retry_after).await;
        }
        answer
    }

    /// Waits for this request's turn: in the account's shared budget when
    /// there is one, else in this container's limiter.
    async fn wait_for_slot(&self) -> Result<(), KommoError> {
        let Some(budget) = &self.budget else {
            self.limiter.until_ready().await;
            return Ok(());
        };
        match budget.until_ready().await {
            Ok(()) => Ok(()),
            Err(BudgetError::Blocked { until }) => Err(KommoError::IpBlocked {
                excerpt: format!("every Kommo call is paused until {until} after an HTTP 403"),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "shared Kommo budget unavailable; limiting this container alone");
                self.limiter.until_ready().await;
                Ok(())
            }
        }
    }

    /// A 429 pushes every container's next slot back; a 403 pauses them all.
    async fn tell_budget(&self, error: &KommoError, retry_after: Option<Duration>) {
        let Some(budget) = &self.budget else { return };
        let told = match error {
            KommoError::RateLimited { .. } => {
                budget
                    .push_back(retry_after.unwrap_or(self.opts.retry_min_delay))
                    .await
            }
            KommoError::IpBlocked { .. } => budget.block().await,
            _ => Ok(()),
        };
        if let Err(e) = told {
            tracing::warn!(error = %e, "could not record Kommo's answer in the shared budget");
        }
    }
}

/// A Kommo answer as read off the wire.
struct Answer {
    status: StatusCode,
    request_id: Option<String>,
    content_type: String,
    text: String,
}

impl Answer {
    fn read(self, path: &str) -> Result<Body, KommoError> {
        if self.status.is_success() {
            return self.body();
        }
        let err = self.error();
        if matches!(
            err,
            KommoError::IpBlocked { .. } | KommoError::Unauthorized { .. }
        ) {
            tracing::error!(path, status = self.status.as_u16(), request_id = self.request_id, error = %err, "Kommo refused the request");
        }
        Err(err)
    }

    /// The body of a successful answer: JSON, or nothing.
    fn body(&self) -> Result<Body, KommoError> {
        if self.status == StatusCode::NO_CONTENT || self.text.trim().is_empty() {
            return Ok(Body::Empty);
        }
        serde_json::from_str(&self.text)
            .map(|v| Body::Json(storable_json(v)))
            .map_err(|e| KommoError::Decode {
                status: self.status.as_u16(),
                problem: format!("not JSON: {e}"),
                excerpt: self.excerpt(),
            })
    }

    /// The error a failed answer means.
    fn error(&self) -> KommoError {
        let problem = serde_json::from_str::<Problem>(&self.text)
            .ok()
            .map(Box::new);
        let code = self.status.as_u16();
        match code {
            401 => KommoError::Unauthorized {
                detail: problem
                    .as_deref()
                    .map(Problem::summary)
                    .unwrap_or_else(|| self.excerpt()),
            },
            403 if self.content_type.contains("html")
                || self.text.trim_start().starts_with('<') =>
            {
                KommoError::IpBlocked {
                    excerpt: self.excerpt(),
                }
            }
            429 => KommoError::RateLimited {
                attempts: 1,
                excerpt: self.excerpt(),
            },
            _ => KommoError::Api {
                status: code,
                problem,
                excerpt: self.excerpt(),
            },
        }
    }

    fn excerpt(&self) -> String {
        truncate(self.text.trim(), EXCERPT_CHARS)
    }
}

fn dedupe(ids: &[i64]) -> Vec<i64> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// `_embedded.<key>` as owned values; anything else is an empty list.
fn embedded(mut v: Value, key: &str) -> Vec<Value> {
    match v
        .get_mut("_embedded")
        .and_then(|e| e.get_mut(key))
        .map(Value::take)
    {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}
