//! One drain run: claim due rows, send them to Zoho, settle them.
//!
//! Rules that are easy to break and matter:
//! - With `enableZohoLive` off, claimed rows succeed as `{"mode":"stubbed"}`
//!   and nothing is sent (the seed's MVP behaviour and the kill switch).
//! - A token is obtained before anything is claimed, so an open throttle
//!   circuit claims nothing and charges nothing.
//! - Rows that were claimed but not sent (deadline near, throttle, broken
//!   credentials) go back to `pending` with the attempt uncharged.
//! - A sales order needs its client's Zoho contact: missing contacts are
//!   upserted first in the same run, together with the batch's contacts.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    backoff::backoff,
    store::{self, ClaimedRow, Effect, Outcome, Settlement},
    OutboxError, ENTITY_BOOKING, ENTITY_CLIENT, EVENT_CONTACT_UPSERT, EVENT_SALES_ORDER_CREATE,
};
use crate::{
    platform::config::{OutboxSettings, ZohoSettings},
    platform::db::DbPool,
    platform::flags::{FeatureFlags, Flag},
    platform::telemetry::{Metrics, Unit},
    zoho::{ErrorClass, LazyZohoClient, RecordResult, ZohoClient, ZohoError, MAX_RECORDS_PER_CALL},
};

/// Why a run stopped before the queue was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Less than the safety margin was left before the Lambda deadline.
    Deadline,
    /// Zoho's token endpoint throttle (circuit open).
    Throttled,
    /// Zoho answered 429: the rest waits for the next tick.
    RateLimited,
    /// Credentials or configuration are broken; an operator must act.
    Systemic,
    /// The token endpoint could not be reached.
    TokenUnavailable,
}

/// What one run did; also recorded as EMF metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub live: bool,
    pub claimed: u64,
    pub succeeded: u64,
    pub stubbed: u64,
    pub retried: u64,
    pub failed: u64,
    /// Claimed, not sent, attempt not charged (hand-back and contact-first deferral).
    pub handed_back: u64,
    /// Expired leases put back to pending at the start of the run.
    pub reclaimed: u64,
    pub zoho_calls: u64,
    pub zoho_latency_avg_ms: f64,
    pub zoho_latency_max_ms: u64,
    pub oldest_pending_age_seconds: f64,
    pub stopped: Option<StopReason>,
    pub stop_detail: Option<String>,
}

impl DrainReport {
    /// Adds this run's numbers to `m` (the handler flushes it).
    pub fn record(&self, m: &mut Metrics) {
        m.add("claimed", self.claimed as f64, Unit::Count);
        m.add("succeeded", self.succeeded as f64, Unit::Count);
        m.add("stubbed", self.stubbed as f64, Unit::Count);
        m.add("retried", self.retried as f64, Unit::Count);
        m.add("failed", self.failed as f64, Unit::Count);
        m.add("handed_back", self.handed_back as f64, Unit::Count);
        m.add("reclaimed", self.reclaimed as f64, Unit::Count);
        m.add("zoho_calls", self.zoho_calls as f64, Unit::Count);
        m.set(
            "oldest_pending_age",
            self.oldest_pending_age_seconds,
            Unit::Seconds,
        );
        if self.zoho_calls > 0 {
            m.set(
                "zoho_latency_avg",
                self.zoho_latency_avg_ms,
                Unit::Milliseconds,
            );
            m.set(
                "zoho_latency_max",
                self.zoho_latency_max_ms as f64,
                Unit::Milliseconds,
            );
        }
        if self.throttled() {
            m.add("throttled", 1.0, Unit::Count);
        }
    }

    pub fn throttled(&self) -> bool {
        self.stopped == Some(StopReason::Throttled)
    }

    fn stop(&mut self, reason: StopReason, detail: impl Into<String>) {
        if self.stopped.is_none() {
            self.stopped = Some(reason);
            self.stop_detail = Some(detail.into());
        }
    }
}

fn stop_reason_for(e: &ZohoError) -> StopReason {
    match e.class() {
        ErrorClass::Throttled => StopReason::Throttled,
        ErrorClass::Systemic => StopReason::Systemic,
        _ => StopReason::TokenUnavailable,
    }
}

/// The outbox drain. Build once per container; `run` once per tick.
pub struct Drain {
    pool: DbPool,
    flags: Arc<FeatureFlags>,
    settings: OutboxSettings,
    zoho: Arc<LazyZohoClient>,
}

impl Drain {
    pub fn new(
        pool: DbPool,
        flags: Arc<FeatureFlags>,
        settings: OutboxSettings,
        zoho: Arc<LazyZohoClient>,
    ) -> Self {
        Drain {
            pool,
            flags,
            settings,
            zoho,
        }
    }

    /// The drain of a Lambda container: the Zoho client is built from
    /// `ZOHO_SECRET_ID` the first time the flag is on.
    pub fn from_context(ctx: &crate::platform::context::AppContext) -> Self {
        let zoho = match &ctx.config.zoho_secret_id {
            Some(id) => LazyZohoClient::from_secret(
                ctx.secrets.clone(),
                id.clone(),
                ctx.config.zoho.clone(),
                ctx.pool.clone(),
            ),
            None => LazyZohoClient::unconfigured(),
        };
        Drain::new(
            ctx.pool.clone(),
            ctx.flags.clone(),
            ctx.config.outbox.clone(),
            Arc::new(zoho),
        )
    }

    fn too_late(&self, deadline: Instant) -> bool {
        Instant::now() + self.settings.deadline_margin >= deadline
    }

    /// Drains until the queue has nothing due, the deadline nears, or Zoho
    /// says stop. Database errors end the run; claimed rows then wait for
    /// their lease to expire.
    pub async fn run(&self, deadline: Instant) -> Result<DrainReport, OutboxError> {
        let mut report = DrainReport {
            live: self.flags.is_enabled(Flag::ZohoLive).await?,
            ..DrainReport::default()
        };
        let zoho = if report.live {
            match self.prepare_zoho().await {
                Ok(z) => Some(z),
                Err(e) => {
                    tracing::warn!(error = %e, "zoho is not usable; nothing claimed");
                    report.stop(stop_reason_for(&e), e.to_string());
                    self.finish(&mut report, None).await?;
                    return Ok(report);
                }
            }
        } else {
            None
        };

        {
            let conn = self.pool.get().await?;
            let (requeued, failed) =
                store::rescue_expired(&conn, self.settings.max_attempts).await?;
            report.reclaimed = requeued;
            report.failed += failed;
        }

        loop {
            if self.too_late(deadline) {
                report.stop(StopReason::Deadline, "deadline margin reached");
                break;
            }
            let owner = format!("drain-{}", Uuid::new_v4());
            let rows = {
                let conn = self.pool.get().await?;
                store::claim(&conn, self.settings.batch_size, self.settings.lease, &owner).await?
            };
            if rows.is_empty() {
                break;
            }
            report.claimed += rows.len() as u64;
            let span = tracing::info_span!("outbox_batch", owner = %owner, rows = rows.len());

            let settlements = match &zoho {
                None => rows
                    .iter()
                    .map(|r| Settlement {
                        id: r.id,
                        outcome: Outcome::Succeeded {
                            response: json!({"mode": "stubbed"}),
                        },
                        effects: Vec::new(),
                    })
                    .collect(),
                Some(z) => {
                    let batch = Batch::new(self, z.clone(), deadline);
                    let s = batch.dispatch(rows.clone()).instrument(span).await?;
                    if let Some((reason, detail)) = batch.stopped() {
                        report.stop(reason, detail);
                    }
                    s
                }
            };
            let settlements = self.charge_limits(&rows, settlements);
            let owned: HashSet<Uuid> = {
                let mut conn = self.pool.get().await?;
                store::settle(&mut conn, &owner, &settlements)
                    .await?
                    .into_iter()
                    .collect()
            };
            for s in settlements.iter().filter(|s| owned.contains(&s.id)) {
                match &s.outcome {
                    Outcome::Succeeded { .. } if zoho.is_none() => {
                        report.succeeded += 1;
                        report.stubbed += 1;
                    }
                    Outcome::Succeeded { .. } => report.succeeded += 1,
                    Outcome::Retry { error, .. } => {
                        tracing::info!(outbox_id = %s.id, error = %error, "outbox row will be retried");
                        report.retried += 1;
                    }
                    Outcome::Failed { error } => {
                        tracing::warn!(outbox_id = %s.id, error = %error, "outbox row failed");
                        report.failed += 1;
                    }
                    Outcome::Uncharged { .. } => report.handed_back += 1,
                }
            }
            if report.stopped.is_some() {
                break;
            }
        }
        self.finish(&mut report, zoho.as_deref()).await?;
        Ok(report)
    }

    async fn prepare_zoho(&self) -> Result<Arc<ZohoClient>, ZohoError> {
        let z = self.zoho.get().await?;
        z.access_token().await?;
        z.stats().take();
        Ok(z)
    }

    async fn finish(
        &self,
        report: &mut DrainReport,
        zoho: Option<&ZohoClient>,
    ) -> Result<(), OutboxError> {
        if let Some(z) = zoho {
            let s = z.stats().take();
            report.zoho_calls = s.calls;
            report.zoho_latency_max_ms = s.max_ms;
            if s.calls > 0 {
                report.zoho_latency_avg_ms = s.total_ms as f64 / s.calls as f64;
            }
        }
        let conn = self.pool.get().await?;
        let row = conn
            .query_one(
                "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                   FROM integrations_outbox WHERE status = 'pending'",
                &[],
            )
            .await?;
        report.oldest_pending_age_seconds = row.try_get(0)?;
        Ok(())
    }

    /// A retry on the last allowed attempt becomes a failure; a failed order
    /// marks its booking `zoho_sync_status = 'failed'`.
    fn charge_limits(&self, rows: &[ClaimedRow], settlements: Vec<Settlement>) -> Vec<Settlement> {
        let by_id: HashMap<Uuid, &ClaimedRow> = rows.iter().map(|r| (r.id, r)).collect();
        settlements
            .into_iter()
            .map(|mut s| {
                let Some(row) = by_id.get(&s.id) else {
                    return s;
                };
                if let Outcome::Retry { error, .. } = &s.outcome {
                    if row.attempts >= self.settings.max_attempts {
                        s.outcome = Outcome::Failed {
                            error: format!("gave up after {} attempts: {error}", row.attempts),
                        };
                    }
                }
                let is_order =
                    row.event_type == EVENT_SALES_ORDER_CREATE && row.entity_type == ENTITY_BOOKING;
                if is_order && matches!(s.outcome, Outcome::Failed { .. }) {
                    s.effects.push(Effect::BookingFailed {
                        booking_id: row.entity_id,
                    });
                }
                s
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct ClientRow {
    first_name: Option<String>,
    last_name: Option<String>,
    full_name: String,
    email: Option<String>,
    phone: Option<String>,
    zoho_contact_id: Option<String>,
}

#[derive(Debug, Clone)]
struct BookingRow {
    client_id: Option<Uuid>,
    title: Option<String>,
    external_code: Option<String>,
    total: Option<f64>,
    currency: Option<String>,
    zoho_sales_order_id: Option<String>,
}

/// How a client's contact fared in this run.
#[derive(Debug, Clone)]
enum ContactState {
    Synced { zoho_id: String, raw: Value },
    Failed(String),
    Retry(String),
    NotSent(Option<String>),
}

/// One claimed batch being dispatched.
struct Batch<'a> {
    drain: &'a Drain,
    zoho: Arc<ZohoClient>,
    deadline: Instant,
    stop: Mutex<Option<(StopReason, String)>>,
}

impl<'a> Batch<'a> {
    fn new(drain: &'a Drain, zoho: Arc<ZohoClient>, deadline: Instant) -> Self {
        Batch {
            drain,
            zoho,
            deadline,
            stop: Mutex::new(None),
        }
    }

    fn settings(&self) -> &ZohoSettings {
        self.zoho.settings()
    }

    fn stopped(&self) -> Option<(StopReason, String)> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_stop(&self, reason: StopReason, detail: String) {
        let mut g = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            tracing::warn!(?reason, detail = %detail, "drain stops sending");
            *g = Some((reason, detail));
        }
    }

    /// Why a call must not start now, if it must not.
    fn hold(&self) -> Option<String> {
        if let Some((_, detail)) = self.stopped() {
            return Some(detail);
        }
        if self.drain.too_late(self.deadline) {
            self.set_stop(StopReason::Deadline, "deadline margin reached".into());
            return Some("handed back: deadline margin reached".into());
        }
        None
    }

    /// Notes what an error means for the rest of the run.
    fn observe(&self, e: &ZohoError) {
        match (e.class(), e) {
            (ErrorClass::Throttled, _) => self.set_stop(StopReason::Throttled, e.to_string()),
            (ErrorClass::Systemic, _) => self.set_stop(StopReason::Systemic, e.to_string()),
            (_, ZohoError::RateLimited { .. }) => {
                self.set_stop(StopReason::RateLimited, e.to_string())
            }
            _ => {}
        }
    }

    fn retry(&self, row: &ClaimedRow, error: String) -> Outcome {
        let s = &self.drain.settings;
        Outcome::Retry {
            error,
            delay: backoff(row.attempts, s.backoff_base, s.backoff_cap),
        }
    }

    async fn dispatch(&self, rows: Vec<ClaimedRow>) -> Result<Vec<Settlement>, OutboxError> {
        let mut out: Vec<Settlement> = Vec::with_capacity(rows.len());
        let settle = |row: &ClaimedRow, outcome: Outcome, effects: Vec<Effect>| Settlement {
            id: row.id,
            outcome,
            effects,
        };
        let fail = |row: &ClaimedRow, error: String| Settlement {
            id: row.id,
            outcome: Outcome::Failed { error },
            effects: Vec::new(),
        };

        let mut contact_rows = Vec::new();
        let mut order_rows = Vec::new();
        for row in rows {
            match payload_problem(&row) {
                Some(problem) => out.push(fail(&row, problem)),
                None if row.event_type == EVENT_CONTACT_UPSERT => contact_rows.push(row),
                None => order_rows.push(row),
            }
        }

        let (clients, bookings) = self.load(&contact_rows, &order_rows).await?;

        // Clients whose contact is sent this run, in first-seen order.
        let mut to_send: Vec<Uuid> = Vec::new();
        let mut queued: HashSet<Uuid> = HashSet::new();
        let mut contact_rows_ok = Vec::new();
        for row in contact_rows {
            if clients.contains_key(&row.entity_id) {
                if queued.insert(row.entity_id) {
                    to_send.push(row.entity_id);
                }
                contact_rows_ok.push(row);
            } else {
                out.push(fail(&row, format!("client {} not found", row.entity_id)));
            }
        }
        let mut orders: Vec<(ClaimedRow, Uuid)> = Vec::new();
        for row in order_rows {
            let Some(b) = bookings.get(&row.entity_id) else {
                out.push(fail(&row, format!("booking {} not found", row.entity_id)));
                continue;
            };
            if let Some(existing) = &b.zoho_sales_order_id {
                // Already synced by an earlier row: nothing to send.
                out.push(settle(
                    &row,
                    Outcome::Succeeded {
                        response: json!({"mode": "already_synced", "zoho_sales_order_id": existing}),
                    },
                    vec![Effect::SalesOrder {
                        booking_id: row.entity_id,
                        zoho_id: existing.clone(),
                    }],
                ));
                continue;
            }
            let Some(client_id) = b.client_id else {
                out.push(fail(&row, "booking has no client".into()));
                continue;
            };
            let Some(c) = clients.get(&client_id) else {
                out.push(fail(&row, format!("client {client_id} not found")));
                continue;
            };
            if c.zoho_contact_id.is_none() && queued.insert(client_id) {
                to_send.push(client_id);
            }
            orders.push((row, client_id));
        }

        let mut contacts = self.send_contacts(&to_send, &clients).await;
        self.check_contact_conflicts(&mut contacts).await?;

        for row in contact_rows_ok {
            let outcome_effects = match contacts.get(&row.entity_id) {
                Some(ContactState::Synced { zoho_id, raw }) => (
                    Outcome::Succeeded {
                        response: raw.clone(),
                    },
                    vec![Effect::ContactId {
                        client_id: row.entity_id,
                        zoho_id: zoho_id.clone(),
                    }],
                ),
                Some(ContactState::Failed(e)) => (Outcome::Failed { error: e.clone() }, vec![]),
                Some(ContactState::Retry(e)) => (self.retry(&row, e.clone()), vec![]),
                Some(ContactState::NotSent(_)) | None => (
                    Outcome::Uncharged {
                        reason: reason_of(contacts.get(&row.entity_id)),
                        delay: Duration::ZERO,
                    },
                    vec![],
                ),
            };
            out.push(settle(&row, outcome_effects.0, outcome_effects.1));
        }

        // Orders whose contact is known go out; the others settle here.
        let mut ready: Vec<(ClaimedRow, BookingRow, String, Option<Effect>)> = Vec::new();
        for (row, client_id) in orders {
            let known = clients
                .get(&client_id)
                .and_then(|c| c.zoho_contact_id.clone());
            let Some(booking) = bookings.get(&row.entity_id).cloned() else {
                out.push(fail(&row, format!("booking {} not found", row.entity_id)));
                continue;
            };
            match (known, contacts.get(&client_id)) {
                (Some(id), _) => ready.push((row, booking, id, None)),
                (None, Some(ContactState::Synced { zoho_id, .. })) => {
                    let effect = Effect::ContactId {
                        client_id,
                        zoho_id: zoho_id.clone(),
                    };
                    ready.push((row, booking, zoho_id.clone(), Some(effect)));
                }
                (None, Some(ContactState::Failed(e))) => out.push(fail(
                    &row,
                    format!("the client's contact could not be synced: {e}"),
                )),
                (None, Some(ContactState::Retry(e))) => {
                    let o = self.retry(&row, format!("the client's contact: {e}"));
                    out.push(settle(&row, o, vec![]));
                }
                (None, Some(ContactState::NotSent(reason))) => out.push(settle(
                    &row,
                    Outcome::Uncharged {
                        reason: reason.clone(),
                        delay: Duration::ZERO,
                    },
                    vec![],
                )),
                (None, None) => out.push(settle(
                    &row,
                    Outcome::Uncharged {
                        reason: Some("waiting for the client's Zoho contact".into()),
                        delay: self.drain.settings.defer,
                    },
                    vec![],
                )),
            }
        }

        if !ready.is_empty() && self.settings().product_id.is_none() {
            self.set_stop(
                StopReason::Systemic,
                "ZOHO_PRODUCT_ID is not set: sales orders need a product".into(),
            );
        }
        let concurrency = self.drain.settings.zoho_concurrency.max(1);
        let results: Vec<Settlement> = stream::iter(ready)
            .map(|(row, booking, contact_id, effect)| {
                let this = &*self;
                async move { this.send_order(row, &contact_id, &booking, effect).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        out.extend(results);
        Ok(out)
    }

    async fn load(
        &self,
        contact_rows: &[ClaimedRow],
        order_rows: &[ClaimedRow],
    ) -> Result<(HashMap<Uuid, ClientRow>, HashMap<Uuid, BookingRow>), OutboxError> {
        let conn = self.drain.pool.get().await?;
        let booking_ids: Vec<Uuid> = order_rows.iter().map(|r| r.entity_id).collect();
        let mut bookings = HashMap::new();
        if !booking_ids.is_empty() {
            for r in conn
                .query(
                    "SELECT id, client_id, title, external_code, total_amount::float8, currency,
                            zoho_sales_order_id
                       FROM bookings WHERE id = ANY($1)",
                    &[&booking_ids],
                )
                .await?
            {
                bookings.insert(
                    r.try_get::<_, Uuid>(0)?,
                    BookingRow {
                        client_id: r.try_get(1)?,
                        title: r.try_get(2)?,
                        external_code: r.try_get(3)?,
                        total: r.try_get(4)?,
                        currency: r.try_get(5)?,
                        zoho_sales_order_id: r.try_get(6)?,
                    },
                );
            }
        }
        let mut client_ids: Vec<Uuid> = contact_rows.iter().map(|r| r.entity_id).collect();
        client_ids.extend(bookings.values().filter_map(|b| b.client_id));
        client_ids.sort();
        client_ids.dedup();
        let mut clients = HashMap::new();
        if !client_ids.is_empty() {
            for r in conn
                .query(
                    "SELECT id, first_name, last_name, full_name, email, phone, zoho_contact_id
                       FROM clients WHERE id = ANY($1)",
                    &[&client_ids],
                )
                .await?
            {
                clients.insert(
                    r.try_get::<_, Uuid>(0)?,
                    ClientRow {
                        first_name: r.try_get(1)?,
                        last_name: r.try_get(2)?,
                        full_name: r.try_get(3)?,
                        email: r.try_get(4)?,
                        phone: r.try_get(5)?,
                        zoho_contact_id: r.try_get(6)?,
                    },
                );
            }
        }
        Ok((clients, bookings))
    }

    /// Upserts contacts in calls of at most 100, `zoho_concurrency` at a time.
    async fn send_contacts(
        &self,
        to_send: &[Uuid],
        clients: &HashMap<Uuid, ClientRow>,
    ) -> HashMap<Uuid, ContactState> {
        let key_field = self.settings().contact_key_field.clone();
        let chunks: Vec<Vec<(Uuid, Value)>> = to_send
            .chunks(MAX_RECORDS_PER_CALL)
            .map(|chunk| {
                chunk
                    .iter()
                    .filter_map(|id| {
                        clients
                            .get(id)
                            .map(|c| (*id, contact_record(*id, c, key_field.as_deref())))
                    })
                    .collect()
            })
            .collect();
        let concurrency = self.drain.settings.zoho_concurrency.max(1);
        let per_chunk: Vec<Vec<(Uuid, ContactState)>> = stream::iter(chunks)
            .map(|chunk| async move {
                if let Some(reason) = self.hold() {
                    return chunk
                        .into_iter()
                        .map(|(id, _)| (id, ContactState::NotSent(Some(reason.clone()))))
                        .collect();
                }
                let records: Vec<Value> = chunk.iter().map(|(_, r)| r.clone()).collect();
                match self.zoho.upsert_contacts(&records).await {
                    Ok(results) => chunk
                        .into_iter()
                        .zip(results)
                        .map(|((id, _), r)| (id, contact_state(r)))
                        .collect(),
                    Err(e) => {
                        self.observe(&e);
                        let msg = e.to_string();
                        let state = match e.class() {
                            ErrorClass::Retryable => ContactState::Retry(msg),
                            ErrorClass::Permanent => ContactState::Failed(msg),
                            ErrorClass::Throttled | ErrorClass::Systemic => {
                                ContactState::NotSent(Some(msg))
                            }
                        };
                        chunk
                            .into_iter()
                            .map(|(id, _)| (id, state.clone()))
                            .collect()
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        per_chunk.into_iter().flatten().collect()
    }

    /// `clients.zoho_contact_id` is unique: a Zoho contact already linked to
    /// another client (same email, say) fails this row instead of the batch.
    async fn check_contact_conflicts(
        &self,
        contacts: &mut HashMap<Uuid, ContactState>,
    ) -> Result<(), OutboxError> {
        let synced: Vec<(Uuid, String)> = contacts
            .iter()
            .filter_map(|(c, s)| match s {
                ContactState::Synced { zoho_id, .. } => Some((*c, zoho_id.clone())),
                _ => None,
            })
            .collect();
        if synced.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = synced.iter().map(|(_, z)| z.clone()).collect();
        let conn = self.drain.pool.get().await?;
        let mut owner_of: HashMap<String, Uuid> = HashMap::new();
        for r in conn
            .query(
                "SELECT id, zoho_contact_id FROM clients WHERE zoho_contact_id = ANY($1)",
                &[&ids],
            )
            .await?
        {
            owner_of.insert(r.try_get(1)?, r.try_get(0)?);
        }
        let mut sorted = synced;
        sorted.sort();
        for (client, zoho_id) in sorted {
            match owner_of.get(&zoho_id) {
                Some(other) if *other != client => {
                    contacts.insert(
                        client,
                        ContactState::Failed(format!(
                            "Zoho contact {zoho_id} is already linked to client {other}"
                        )),
                    );
                }
                Some(_) => {}
                None => {
                    owner_of.insert(zoho_id, client);
                }
            }
        }
        Ok(())
    }

    async fn send_order(
        &self,
        row: ClaimedRow,
        contact_id: &str,
        booking: &BookingRow,
        contact_effect: Option<Effect>,
    ) -> Settlement {
        let mut effects: Vec<Effect> = contact_effect.into_iter().collect();
        let outcome = if let Some(reason) = self.hold() {
            Outcome::Uncharged {
                reason: Some(reason),
                delay: Duration::ZERO,
            }
        } else {
            let record = order_record(row.entity_id, contact_id, booking, self.settings());
            match self.zoho.create_sales_order(&record).await {
                Ok(so) => {
                    effects.push(Effect::SalesOrder {
                        booking_id: row.entity_id,
                        zoho_id: so.id.clone(),
                    });
                    Outcome::Succeeded {
                        response: json!({
                            "zoho_sales_order_id": so.id,
                            "already_existed": so.already_existed,
                            "result": so.raw,
                        }),
                    }
                }
                Err(e) => {
                    self.observe(&e);
                    match e.class() {
                        ErrorClass::Retryable => self.retry(&row, e.to_string()),
                        ErrorClass::Permanent => Outcome::Failed {
                            error: e.to_string(),
                        },
                        ErrorClass::Throttled | ErrorClass::Systemic => Outcome::Uncharged {
                            reason: Some(e.to_string()),
                            delay: Duration::ZERO,
                        },
                    }
                }
            }
        };
        Settlement {
            id: row.id,
            outcome,
            effects,
        }
    }
}

fn reason_of(state: Option<&ContactState>) -> Option<String> {
    match state {
        Some(ContactState::NotSent(r)) => r.clone(),
        _ => None,
    }
}

fn contact_state(r: RecordResult) -> ContactState {
    match r {
        RecordResult::Success { id, raw, .. } => ContactState::Synced { zoho_id: id, raw },
        RecordResult::Failure(e) => match e.class() {
            ErrorClass::Retryable => ContactState::Retry(e.describe()),
            _ => ContactState::Failed(e.describe()),
        },
    }
}

/// Why a row cannot be dispatched at all, from its own fields.
fn payload_problem(row: &ClaimedRow) -> Option<String> {
    let (entity, key) = match row.event_type.as_str() {
        EVENT_CONTACT_UPSERT => (ENTITY_CLIENT, "client_id"),
        EVENT_SALES_ORDER_CREATE => (ENTITY_BOOKING, "booking_id"),
        other => return Some(format!("unknown event type `{other}`")),
    };
    if row.entity_type != entity {
        return Some(format!(
            "{} rows must have entity_type `{entity}`, not `{}`",
            row.event_type, row.entity_type
        ));
    }
    if !row.payload.is_object() {
        return Some("payload is not a JSON object".into());
    }
    match row.payload.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) if id == row.entity_id => None,
            Some(_) => Some(format!("payload {key} does not match entity_id")),
            None => Some(format!("payload {key} is not a UUID")),
        },
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The Contacts record of a client. Zoho requires `Last_Name`; without any
/// name Zoho's `MANDATORY_NOT_FOUND` fails the row with a clear message.
fn contact_record(id: Uuid, c: &ClientRow, key_field: Option<&str>) -> Value {
    let mut rec = serde_json::Map::new();
    let full = c.full_name.trim();
    let (first, last) = match non_empty(&c.last_name) {
        Some(last) => (
            non_empty(&c.first_name).map(str::to_string),
            Some(last.to_string()),
        ),
        None => match full.rsplit_once(' ') {
            Some((f, l)) => (
                non_empty(&c.first_name)
                    .map(str::to_string)
                    .or_else(|| Some(f.trim().to_string())),
                Some(l.to_string()),
            ),
            None if !full.is_empty() => (
                non_empty(&c.first_name).map(str::to_string),
                Some(full.to_string()),
            ),
            None => (non_empty(&c.first_name).map(str::to_string), None),
        },
    };
    if let Some(l) = last {
        rec.insert("Last_Name".into(), json!(truncate(&l, 80)));
    }
    if let Some(f) = first.filter(|f| !f.is_empty()) {
        rec.insert("First_Name".into(), json!(truncate(&f, 40)));
    }
    if let Some(e) = non_empty(&c.email) {
        rec.insert("Email".into(), json!(e));
    }
    if let Some(p) = non_empty(&c.phone) {
        rec.insert("Phone".into(), json!(p));
    }
    if let Some(k) = key_field {
        rec.insert(k.to_string(), json!(id.to_string()));
    }
    Value::Object(rec)
}

/// The Sales_Orders record; the unique field holds the booking id, so a
/// retry after an ambiguous failure meets `DUPLICATE_DATA` instead of
/// creating a second order.
fn order_record(booking_id: Uuid, contact_id: &str, b: &BookingRow, s: &ZohoSettings) -> Value {
    let subject = non_empty(&b.title)
        .map(str::to_string)
        .or_else(|| non_empty(&b.external_code).map(|c| format!("Booking {c}")))
        .unwrap_or_else(|| format!("Booking {booking_id}"));
    let mut rec = json!({
        "Subject": truncate(&subject, 255),
        "Contact_Name": {"id": contact_id},
        "Ordered_Items": [{
            "Product_Name": {"id": s.product_id.clone().unwrap_or_default()},
            "Quantity": 1,
            "List_Price": b.total.unwrap_or(0.0),
        }],
    });
    rec[s.sales_order_unique_field.as_str()] = json!(booking_id.to_string());
    if let Some(cur) = non_empty(&b.currency) {
        rec["Currency"] = json!(cur);
    }
    rec
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(first: Option<&str>, last: Option<&str>, full: &str) -> ClientRow {
        ClientRow {
            first_name: first.map(Into::into),
            last_name: last.map(Into::into),
            full_name: full.into(),
            email: Some(" anna@example.com ".into()),
            phone: None,
            zoho_contact_id: None,
        }
    }

    #[test]
    fn contact_records_always_try_to_carry_a_last_name() {
        let id = Uuid::new_v4();
        let r = contact_record(
            id,
            &client(Some("Anna"), Some("Kingsley"), ""),
            Some("ERP_Client_Id"),
        );
        assert_eq!(r["Last_Name"], "Kingsley");
        assert_eq!(r["First_Name"], "Anna");
        assert_eq!(r["Email"], "anna@example.com");
        assert_eq!(r["ERP_Client_Id"], id.to_string());
        let r = contact_record(id, &client(None, None, "Maria del Carmen Ruiz"), None);
        assert_eq!(r["Last_Name"], "Ruiz");
        assert_eq!(r["First_Name"], "Maria del Carmen");
        let r = contact_record(id, &client(None, None, "Cher"), None);
        assert_eq!(r["Last_Name"], "Cher");
        let r = contact_record(id, &client(None, None, "  "), None);
        assert!(r.get("Last_Name").is_none());
    }

    #[test]
    fn payloads_are_checked_against_the_row() {
        let id = Uuid::new_v4();
        let mut row = ClaimedRow {
            id: Uuid::new_v4(),
            entity_type: "booking".into(),
            entity_id: id,
            event_type: EVENT_SALES_ORDER_CREATE.into(),
            payload: json!({"booking_id": id, "client_id": Uuid::new_v4()}),
            attempts: 1,
        };
        assert_eq!(payload_problem(&row), None);
        row.payload = json!({"booking_id": Uuid::new_v4()});
        assert!(payload_problem(&row).unwrap().contains("does not match"));
        row.payload = json!({"booking_id": 42});
        assert!(payload_problem(&row).unwrap().contains("not a UUID"));
        row.event_type = "invoice.create".into();
        assert!(payload_problem(&row)
            .unwrap()
            .contains("unknown event type"));
        row.event_type = EVENT_CONTACT_UPSERT.into();
        assert!(payload_problem(&row)
            .unwrap()
            .contains("entity_type `client`"));
    }
}
