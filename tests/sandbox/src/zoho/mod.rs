//! Zoho CRM v8 sandbox: the accounts host and the API host in one axum server.
//!
//! It reproduces the behaviour the outbox drain has to survive: 1-hour tokens
//! (configurable), the 10-refreshes-per-10-minutes throttle with its
//! "Access Denied" body, token-endpoint errors as HTTP 200 with an `error`
//! key, eviction of the oldest token past the active-token cap, per-record
//! results with HTTP 200/207/400, `DUPLICATE_DATA` on the sales-order unique
//! field, updates by id (`PUT`) and sales-order upserts on
//! `duplicate_check_fields`, and fault knobs (latency, 429, 5xx, a concurrency limit, records
//! rejected with `INVALID_DATA`, and "create, then time out").
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sandbox::zoho::{ZohoOptions, ZohoSandbox};
//! let zoho = ZohoSandbox::start(ZohoOptions::default()).await?;
//! let base = zoho.base_url(); // serves /oauth/v2/token and /crm/v8/...
//! zoho.fail_next_with_429(1);
//! let state = zoho.state();
//! # let _ = (base, state); Ok(()) }
//! ```

mod handlers;
mod updates;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Names used in [`SandboxState::calls`].
pub const ENDPOINT_TOKEN: &str = "oauth_token";
pub const ENDPOINT_CONTACTS_UPSERT: &str = "contacts_upsert";
pub const ENDPOINT_SALES_ORDERS: &str = "sales_orders_create";
/// `PUT /crm/v8/Contacts`: contacts updated by id, up to 100 a call.
pub const ENDPOINT_CONTACTS_UPDATE: &str = "contacts_update";
/// `PUT /crm/v8/Sales_Orders`: orders updated by id, up to 100 a call.
pub const ENDPOINT_SALES_ORDERS_UPDATE: &str = "sales_orders_update";
/// `POST /crm/v8/Sales_Orders/upsert`, matched on `duplicate_check_fields`.
pub const ENDPOINT_SALES_ORDERS_UPSERT: &str = "sales_orders_upsert";

/// Start-up options. `Default` matches Zoho's documented limits.
#[derive(Debug, Clone)]
pub struct ZohoOptions {
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Lifetime of an access token (Zoho: 1 hour).
    pub token_lifetime: Duration,
    /// Successful refreshes allowed per `refresh_window` (Zoho: 10 per 10 minutes).
    pub refresh_limit: usize,
    pub refresh_window: Duration,
    /// HTTP status of the "Access Denied" throttle body (seen as 400 and as 200).
    pub throttle_status: u16,
    /// Active tokens per refresh token; minting past it evicts the oldest.
    pub max_active_tokens: usize,
    /// Sales_Orders field marked "Do not allow duplicate values".
    pub sales_order_unique_field: String,
    /// Duplicate check used when an upsert names no `duplicate_check_fields`.
    pub default_contact_duplicate_fields: Vec<String>,
    pub faults: Faults,
}

impl Default for ZohoOptions {
    fn default() -> Self {
        ZohoOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "1000.SANDBOXCLIENT".to_string(),
            client_secret: "sandbox-client-secret".to_string(),
            refresh_token: "1000.sandbox.refresh".to_string(),
            token_lifetime: Duration::from_secs(3600),
            refresh_limit: 10,
            refresh_window: Duration::from_secs(600),
            throttle_status: 400,
            max_active_tokens: 15,
            sales_order_unique_field: "ERP_Booking_Id".to_string(),
            default_contact_duplicate_fields: vec!["Email".to_string()],
            faults: Faults::default(),
        }
    }
}

/// Fault knobs; set at start through [`ZohoOptions::faults`], at run time through
/// the setters or `POST /_sandbox/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every CRM API call (not to the token endpoint).
    #[serde(with = "millis")]
    pub latency: Duration,
    /// More CRM calls in flight than this are answered 429.
    pub concurrency_limit: Option<usize>,
    /// The next N CRM calls are answered 429 `TOO_MANY_REQUESTS`.
    pub fail_next_429: u32,
    /// The next N CRM calls are answered with `status_5xx` (500 when unset).
    pub fail_next_5xx: u32,
    pub status_5xx: Option<u16>,
    /// Records with `field == value` fail with `INVALID_DATA` on that field.
    pub reject: Vec<RejectRule>,
    /// The next N sales-order creates are stored, then the answer stalls for `stall`.
    pub timeout_after_create_next: u32,
    #[serde(with = "millis")]
    pub stall: Duration,
}

/// A record whose `field` equals `value` is refused with `INVALID_DATA`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRule {
    pub field: String,
    pub value: String,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A record held by the sandbox, with how many times it was written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRecord {
    pub id: String,
    pub fields: Map<String, Value>,
    pub writes: u32,
}

/// What `GET /_sandbox/state` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxState {
    pub contacts: Vec<StoredRecord>,
    pub sales_orders: Vec<StoredRecord>,
    /// Requests received per endpoint ([`ENDPOINT_TOKEN`], ...), faults included.
    pub calls: BTreeMap<String, u64>,
    /// Access tokens issued.
    pub token_refreshes: u64,
    /// Token requests answered with the throttle body.
    pub token_throttled: u64,
    /// Highest number of CRM calls in flight at once.
    pub max_in_flight: usize,
}

impl SandboxState {
    pub fn calls_to(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).copied().unwrap_or(0)
    }

    pub fn contact_by(&self, field: &str, value: &str) -> Option<&StoredRecord> {
        self.contacts
            .iter()
            .find(|c| c.fields.get(field).and_then(Value::as_str) == Some(value))
    }

    pub fn order_by(&self, field: &str, value: &str) -> Option<&StoredRecord> {
        self.sales_orders
            .iter()
            .find(|o| o.fields.get(field).and_then(Value::as_str) == Some(value))
    }
}

struct TokenInfo {
    expires_at: Instant,
}

pub(crate) struct State {
    opts: ZohoOptions,
    faults: Faults,
    next_id: u64,
    contacts: Vec<StoredRecord>,
    /// (field, value) → position in `contacts`, so duplicate checks stay O(1)
    /// for benchmark-sized data. Entries may be stale after an update; lookups re-check.
    contact_index: HashMap<(String, String), usize>,
    sales_orders: Vec<StoredRecord>,
    /// Unique-field value → position in `sales_orders`.
    order_index: HashMap<String, usize>,
    /// Record id → position, for updates by id and lookups.
    contact_pos: HashMap<String, usize>,
    order_pos: HashMap<String, usize>,
    calls: BTreeMap<String, u64>,
    tokens: HashMap<String, TokenInfo>,
    token_order: VecDeque<String>,
    refresh_times: VecDeque<Instant>,
    token_refreshes: u64,
    token_throttled: u64,
    max_in_flight: usize,
    base_url: String,
}

impl State {
    /// Indexes every scalar field of contact `pos`.
    fn index_contact(&mut self, pos: usize) {
        let keys: Vec<(String, String)> = self.contacts[pos]
            .fields
            .iter()
            .filter_map(|(k, v)| handlers::field_text(v).map(|t| (k.clone(), t)))
            .collect();
        for key in keys {
            self.contact_index.insert(key, pos);
        }
    }

    fn push_contact(&mut self, record: StoredRecord) {
        self.contact_pos
            .insert(record.id.clone(), self.contacts.len());
        self.contacts.push(record);
        self.index_contact(self.contacts.len() - 1);
    }

    /// Stores a new sales order, indexed by id and unique field; its id.
    fn push_order(&mut self, fields: Map<String, Value>) -> String {
        let id = self.new_id();
        let unique = &self.opts.sales_order_unique_field;
        if let Some(key) = fields.get(unique).and_then(handlers::field_text) {
            self.order_index.insert(key, self.sales_orders.len());
        }
        self.order_pos.insert(id.clone(), self.sales_orders.len());
        self.sales_orders.push(StoredRecord {
            id: id.clone(),
            fields,
            writes: 1,
        });
        id
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // Zoho ids are 19-digit strings.
        (5_725_767_000_000_000_000u64 + self.next_id).to_string()
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    in_flight: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a handler must not wedge every later test assertion.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running sandbox; it stops when dropped.
pub struct ZohoSandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ZohoSandbox {
    /// Binds and serves in a background task.
    pub async fn start(opts: ZohoOptions) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                faults: opts.faults.clone(),
                opts,
                next_id: 0,
                contacts: Vec::new(),
                contact_index: HashMap::new(),
                sales_orders: Vec::new(),
                order_index: HashMap::new(),
                contact_pos: HashMap::new(),
                order_pos: HashMap::new(),
                calls: BTreeMap::new(),
                tokens: HashMap::new(),
                token_order: VecDeque::new(),
                refresh_times: VecDeque::new(),
                token_refreshes: 0,
                token_throttled: 0,
                max_in_flight: 0,
                base_url,
            }),
            in_flight: AtomicUsize::new(0),
        });
        let app = handlers::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "zoho sandbox stopped");
            }
        });
        Ok(ZohoSandbox {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`: both the accounts host and the `api_domain`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The credentials the token endpoint accepts.
    pub fn client_id(&self) -> String {
        self.shared.lock().opts.client_id.clone()
    }
    pub fn client_secret(&self) -> String {
        self.shared.lock().opts.client_secret.clone()
    }
    pub fn refresh_token(&self) -> String {
        self.shared.lock().opts.refresh_token.clone()
    }

    /// JSON in the shape of the `ZohoSecret` that Secrets Manager holds.
    pub fn secret_json(&self) -> Value {
        let s = self.shared.lock();
        serde_json::json!({
            "client_id": s.opts.client_id,
            "client_secret": s.opts.client_secret,
            "refresh_token": s.opts.refresh_token,
            "accounts_url": s.base_url,
            "api_domain": s.base_url,
        })
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.latency = latency;
    }
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.shared.lock().faults.concurrency_limit = limit;
    }
    pub fn fail_next_with_429(&self, n: u32) {
        self.shared.lock().faults.fail_next_429 = n;
    }
    pub fn fail_next_with_5xx(&self, n: u32, status: u16) {
        let mut s = self.shared.lock();
        s.faults.fail_next_5xx = n;
        s.faults.status_5xx = Some(status);
    }
    /// Records whose `field` equals `value` fail with `INVALID_DATA`.
    pub fn reject_records_where(&self, field: &str, value: &str) {
        self.shared.lock().faults.reject.push(RejectRule {
            field: field.to_string(),
            value: value.to_string(),
        });
    }
    /// The next `n` sales-order creates are stored, then the answer stalls for `stall`.
    pub fn time_out_after_next_creates(&self, n: u32, stall: Duration) {
        let mut s = self.shared.lock();
        s.faults.timeout_after_create_next = n;
        s.faults.stall = stall;
    }
    /// Every issued token now answers 401 `INVALID_TOKEN`.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for t in self.shared.lock().tokens.values_mut() {
            t.expires_at = now;
        }
    }
    /// Whether `token` would be accepted right now.
    pub fn token_is_valid(&self, token: &str) -> bool {
        self.shared
            .lock()
            .tokens
            .get(token)
            .is_some_and(|t| t.expires_at > Instant::now())
    }
    /// Adds a contact directly, as if created in Zoho's UI.
    pub fn insert_contact(&self, fields: Map<String, Value>) -> String {
        let mut s = self.shared.lock();
        let id = s.new_id();
        s.push_contact(StoredRecord {
            id: id.clone(),
            fields,
            writes: 1,
        });
        id
    }

    /// Adds a sales order directly, as if created in Zoho's UI.
    pub fn insert_sales_order(&self, fields: Map<String, Value>) -> String {
        self.shared.lock().push_order(fields)
    }

    /// A snapshot of records, call counts and token counts.
    pub fn state(&self) -> SandboxState {
        handlers::snapshot(&self.shared.lock())
    }

    /// Stops serving and waits for the task to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ZohoSandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A stalled handler would keep graceful shutdown waiting; tests move on.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
