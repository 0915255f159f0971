//! Kommo v4 sandbox: a stateful fake of the parts of the Kommo API the
//! integration uses, with the real API's traps (HTTP 204 past the last page,
//! `_links.next` on the last page, problem+json errors, HTML 403 when "IP
//! blocked") and fault knobs for tests.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sandbox::kommo::{KommoOptions, KommoSandbox};
//! let kommo = KommoSandbox::start(KommoOptions { seed: 7, leads: 500, contacts: 300, ..KommoOptions::default() }).await?;
//! let url = kommo.base_url();
//! # Ok(()) }
//! ```

pub mod data;
pub mod faults;
mod server;
pub mod webhook;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub use data::{
    AccountData, CatalogLink, CustomFieldValue, EnumOption, FieldDef, Pipeline, SandboxContact,
    SandboxLead, Status, User,
};
pub use faults::{Faults, ForcedError, RecordedRequest, RequestStats};
pub use server::{AccountInfo, DEFAULT_LIMIT, MAX_LIMIT};
pub use webhook::{WebhookAction, WebhookEntity, WebhookEvent, WebhookResponse};

use faults::FaultState;
use server::{Shared, Store};

/// How to start a sandbox. `KommoOptions::default()` gives a small account
/// (seed 42, 200 leads, 150 contacts) on a random local port.
#[derive(Debug, Clone)]
pub struct KommoOptions {
    pub seed: u64,
    pub leads: usize,
    pub contacts: usize,
    /// The Bearer token the API accepts.
    pub token: String,
    /// Leads are created in `year - 2 ..= year`; defaults to the current UTC year.
    pub year: Option<i32>,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    pub account_id: i64,
    pub subdomain: String,
    pub timezone: String,
    pub timezone_offset: String,
    pub faults: Faults,
}

impl Default for KommoOptions {
    fn default() -> Self {
        KommoOptions {
            seed: 42,
            leads: 200,
            contacts: 150,
            token: "sandbox-kommo-token".to_string(),
            year: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            account_id: 31_361_463,
            subdomain: "sandbox".to_string(),
            timezone: "Asia/Dubai".to_string(),
            timezone_offset: "+04:00".to_string(),
            faults: Faults::default(),
        }
    }
}

/// A running sandbox. Dropping it stops the server.
pub struct KommoSandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    year: i32,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl KommoSandbox {
    /// Generates the account and starts serving it.
    pub async fn start(opts: KommoOptions) -> anyhow::Result<Self> {
        let year = opts.year.unwrap_or_else(data::current_year);
        let account = data::generate(opts.seed, opts.leads, opts.contacts, year);
        Self::start_with(opts, account, year).await
    }

    /// Starts serving the given account data (for hand-built fixtures).
    pub async fn start_with(
        opts: KommoOptions,
        account: AccountData,
        year: i32,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(opts.host, opts.port))
            .await
            .with_context(|| format!("binding {}:{}", opts.host, opts.port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: opts.token,
            account: AccountInfo {
                id: opts.account_id,
                name: "Sandbox account".to_string(),
                subdomain: opts.subdomain,
                timezone: opts.timezone,
                timezone_offset: opts.timezone_offset,
            },
            base_url: format!("http://{addr}"),
            store: Mutex::new(Store::new(account)),
            faults: Mutex::new(FaultState::new(opts.faults)),
            http: reqwest::Client::new(),
        });
        let app = server::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "kommo sandbox server stopped");
            }
        });
        tracing::info!(%addr, "kommo sandbox listening");
        Ok(KommoSandbox {
            shared,
            addr,
            year,
            shutdown: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as the Kommo base URL.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    pub fn account(&self) -> &AccountInfo {
        &self.shared.account
    }

    /// The reference year: leads are spread over `year - 2 ..= year`.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(&self) {
        let tx = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    // ---- faults -------------------------------------------------------------

    pub fn faults(&self) -> Faults {
        self.shared.faults().faults.clone()
    }

    /// Replaces all fault knobs at once.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults().set(faults);
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.update_faults(|f| f.latency_ms = ms);
    }

    /// More than `rps` API requests in any one second get 429; `None` lifts the limit.
    pub fn set_rate_limit(&self, rps: Option<u32>) {
        self.update_faults(|f| f.rate_limit_per_second = rps);
    }

    /// See [`ForcedError`]: counting starts with the next request.
    pub fn set_forced_error(&self, forced: Option<ForcedError>) {
        self.update_faults(|f| f.forced = forced);
    }

    pub fn set_fail_leads_page(&self, page: Option<u32>) {
        self.update_faults(|f| f.fail_leads_page = page);
    }

    pub fn set_ip_blocked(&self, blocked: bool) {
        self.update_faults(|f| f.ip_blocked = blocked);
    }

    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        let mut st = self.shared.faults();
        let mut f = st.faults.clone();
        change(&mut f);
        st.set(f);
    }

    // ---- counters -------------------------------------------------------------

    pub fn stats(&self) -> RequestStats {
        self.shared.faults().stats.clone()
    }

    /// Every API request so far (up to 100,000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.faults().log.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.faults().reset_stats();
    }

    // ---- state -------------------------------------------------------------------

    pub fn lead(&self, id: i64) -> Option<SandboxLead> {
        self.shared.store().leads.get(&id).cloned()
    }

    /// All leads, by id.
    pub fn leads(&self) -> Vec<SandboxLead> {
        self.shared.store().leads.values().cloned().collect()
    }

    pub fn contact(&self, id: i64) -> Option<SandboxContact> {
        self.shared.store().contacts.get(&id).cloned()
    }

    pub fn contacts(&self) -> Vec<SandboxContact> {
        self.shared.store().contacts.values().cloned().collect()
    }

    pub fn pipelines(&self) -> Vec<Pipeline> {
        self.shared.store().pipelines.clone()
    }

    pub fn users(&self) -> Vec<User> {
        self.shared.store().users.clone()
    }

    /// Inserts or replaces a lead.
    pub fn upsert_lead(&self, lead: SandboxLead) {
        self.shared.store().leads.insert(lead.id, lead);
    }

    /// Changes a lead in place and returns the result; `None` if it does not exist.
    /// The caller decides `updated_at`, so tests can replay stale states.
    pub fn update_lead(
        &self,
        id: i64,
        change: impl FnOnce(&mut SandboxLead),
    ) -> Option<SandboxLead> {
        let mut store = self.shared.store();
        let lead = store.leads.get_mut(&id)?;
        change(lead);
        Some(lead.clone())
    }

    /// Moves a lead to another status, bumping `updated_at` past its old value
    /// and the current time, as a change in Kommo would. Returns the old status.
    pub fn set_lead_status(&self, id: i64, status_id: i64) -> Option<i64> {
        let now = chrono::Utc::now().timestamp();
        let mut old = None;
        self.update_lead(id, |l| {
            old = Some(l.status_id);
            l.status_id = status_id;
            l.updated_at = (l.updated_at + 1).max(now);
            l.closed_at = [data::STATUS_WON, data::STATUS_LOST]
                .contains(&status_id)
                .then_some(l.updated_at);
        })?;
        old
    }

    /// Removes a lead: the API then answers as if it was deleted.
    pub fn delete_lead(&self, id: i64) -> Option<SandboxLead> {
        self.shared.store().leads.remove(&id)
    }

    /// Deletes lead `id` right after the leads list answers page `page`, as
    /// a user deleting it while a client pages through the list would: the
    /// next page starts one lead later, so offset paging skips one.
    pub fn delete_lead_after_page(&self, page: usize, id: i64) {
        self.shared.store().delete_after_page.push((page, id));
    }

    pub fn upsert_contact(&self, contact: SandboxContact) {
        self.shared.store().contacts.insert(contact.id, contact);
    }

    pub fn update_contact(
        &self,
        id: i64,
        change: impl FnOnce(&mut SandboxContact),
    ) -> Option<SandboxContact> {
        let mut store = self.shared.store();
        let c = store.contacts.get_mut(&id)?;
        change(c);
        Some(c.clone())
    }

    pub fn delete_contact(&self, id: i64) -> Option<SandboxContact> {
        self.shared.store().contacts.remove(&id)
    }

    /// One more than the highest lead id, for adding leads.
    pub fn next_lead_id(&self) -> i64 {
        let store = self.shared.store();
        store
            .leads
            .keys()
            .next_back()
            .map_or(data::FIRST_LEAD_ID, |id| id + 1)
    }

    pub fn next_contact_id(&self) -> i64 {
        let store = self.shared.store();
        store
            .contacts
            .keys()
            .next_back()
            .map_or(data::FIRST_CONTACT_ID, |id| id + 1)
    }

    // ---- webhooks -------------------------------------------------------------

    /// The percent-encoded form body Kommo would send for these events, from the current state.
    pub fn webhook_body(&self, events: &[WebhookEvent]) -> String {
        webhook::form_body(&self.shared, events)
    }

    /// The same body as decoded `(key, value)` pairs, in order.
    pub fn webhook_pairs(&self, events: &[WebhookEvent]) -> Vec<(String, String)> {
        webhook::form_pairs(&self.shared, events)
    }

    /// Posts a delivery to `url` with Kommo's headers and returns the receiver's answer.
    pub async fn send_webhook(
        &self,
        url: &str,
        events: &[WebhookEvent],
    ) -> anyhow::Result<WebhookResponse> {
        let body = self.webhook_body(events);
        webhook::post(&self.shared.http, url, body)
            .await
            .with_context(|| format!("posting a webhook to {url}"))
    }
}

impl Drop for KommoSandbox {
    fn drop(&mut self) {
        let tx = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }
}
