//! The batch pipeline of buffered Kommo deliveries: record, dedupe, fetch,
//! apply.
//!
//! Each delivery is recorded in `kommo_webhook_events` under the sha256 of
//! its body, so a re-delivery is recognised and not applied twice. Leads are
//! fetched from the Kommo API once per batch ([`super::fetch`]), and every
//! delivery is applied in its own transaction ([`super::delivery`]).
//! Failures come back as message ids to retry; the events table says why.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::Instrument;
use uuid::Uuid;

use super::{
    delivery::apply_delivery,
    events::{mark_failed, record_batch, record_unprocessable, EventRow, Received},
    fetch::{self, contact_ids_to_fetch, lead_ids_to_fetch, needs_fetch, FetchError, Fetched},
    IngestError,
};
use crate::{
    kommo::{
        webhook::{body_hash, parse_delivery, Delivery, QueuedDelivery},
        KommoClient, MappingCache,
    },
    platform::{
        db::DbPool,
        deadline::Deadline,
        flags::{FeatureFlags, Flag},
        telemetry::{Metrics, Unit},
    },
};

/// One queue message: its id (what a retry names) and its body, the
/// receiver's [`QueuedDelivery`] envelope.
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
}

/// Per-batch counts, also emitted as EMF metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub processed: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub failed: usize,
    /// Not started because the Lambda deadline was near.
    pub handed_back: usize,
    pub leads_fetched: usize,
}

/// What became of a batch: the ids of the messages to retry, and the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub retry: Vec<String>,
    /// The retried messages that failed for a reason outside themselves (the
    /// database is down, Kommo refuses the account, the kill switch is off):
    /// they should wait longer than a visibility timeout before the next
    /// receive, so an outage of hours does not spend their receives.
    pub held_back: Vec<String>,
    /// Why they were held back.
    pub cause: Option<String>,
    /// Messages not started because the Lambda deadline was near: they come
    /// back at once, nothing about them failed.
    pub handed_back: Vec<String>,
    pub report: BatchReport,
}

impl BatchOutcome {
    /// Every message of the batch is retried, and held back for `cause`.
    fn hold_all(messages: &[QueuedMessage<'_>], cause: &str) -> Self {
        let ids: Vec<String> = messages.iter().map(|m| m.message_id.to_string()).collect();
        BatchOutcome {
            retry: ids.clone(),
            held_back: ids,
            cause: Some(cause.to_string()),
            handed_back: Vec::new(),
            report: BatchReport::default(),
        }
    }

    /// Hands the message back, untouched, when the deadline is near.
    fn hand_back_if(&mut self, deadline: &Deadline, message_id: &str) -> bool {
        if !deadline.near() {
            return false;
        }
        self.retry.push(message_id.to_string());
        self.handed_back.push(message_id.to_string());
        self.report.handed_back += 1;
        true
    }

    fn count_fetched(&mut self, fetched: &Result<Fetched, FetchError>) {
        if let Ok(f) = fetched {
            self.report.leads_fetched += f.leads.len();
        }
    }

    /// Counts a message that is not processed in this batch.
    fn skip(&mut self, message_id: &str, skipped: Skipped) {
        match skipped {
            Skipped::Duplicate => self.report.duplicates += 1,
            Skipped::Rejected => self.report.rejected += 1,
            Skipped::Failed { systemic } => {
                self.report.failed += 1;
                match systemic {
                    true => self.hold(message_id, "the database is unavailable".into()),
                    false => self.retry.push(message_id.to_string()),
                }
            }
        }
    }

    fn hold(&mut self, message_id: &str, cause: String) {
        self.retry.push(message_id.to_string());
        self.held_back.push(message_id.to_string());
        self.cause.get_or_insert(cause);
    }
}

/// How long a container uses the mapping tables before it reads them again.
pub const MAPPING_TTL: Duration = Duration::from_secs(10);

pub struct Pipeline {
    pub pool: DbPool,
    pub flags: Arc<FeatureFlags>,
    /// Rate-limited and retrying; one `leads_by_ids` and one `contacts_by_ids` call per batch.
    pub kommo: KommoClient,
    /// Read once per [`MAPPING_TTL`], not once per batch.
    mapping: MappingCache,
}

/// A message whose delivery parsed, before it is recorded.
struct Parsed {
    message_id: String,
    body: String,
    account_id: Option<i64>,
    delivery: Delivery,
}

/// A delivery that made it into the events table and awaits processing.
struct Pending {
    message_id: String,
    event_id: Uuid,
    delivery: Delivery,
}

/// Why a message is not processed in this batch.
#[derive(Clone, Copy)]
enum Skipped {
    Duplicate,
    Rejected,
    /// `systemic`: the database could not be reached.
    Failed {
        systemic: bool,
    },
}

impl Pipeline {
    pub fn new(pool: DbPool, flags: Arc<FeatureFlags>, kommo: KommoClient) -> Self {
        Pipeline {
            pool,
            flags,
            kommo,
            mapping: MappingCache::new(MAPPING_TTL),
        }
    }

    /// Forgets the cached mapping tables (tests, and after an operator's edit).
    pub fn reload_mapping(&self) {
        self.mapping.invalidate();
    }

    /// Processes one batch of queue messages.
    pub async fn process(&self, messages: &[QueuedMessage<'_>]) -> BatchOutcome {
        self.process_until(messages, &Deadline::none()).await
    }

    /// Processes one batch, handing back (not failing) what is left when the
    /// Lambda deadline nears.
    pub async fn process_until(
        &self,
        messages: &[QueuedMessage<'_>],
        deadline: &Deadline,
    ) -> BatchOutcome {
        let started = Instant::now();
        if let Some(held) = self.unless_live(messages).await {
            return held;
        }
        let mut out = BatchOutcome::default();
        let pending = self.record_all(messages, &mut out).await;
        let fetched = self.fetch_for(&pending).await;
        match fetched {
            // One id Kommo refuses, or one huge delivery, must not fail the
            // other nine: each delivery is fetched alone.
            Err(e) if !e.systemic && pending.len() > 1 => {
                tracing::warn!(error = %e, "processor: batch fetch failed; fetching each delivery alone");
                for p in pending {
                    if out.hand_back_if(deadline, &p.message_id) {
                        continue;
                    }
                    let own = self.fetch_for(std::slice::from_ref(&p)).await;
                    out.count_fetched(&own);
                    self.apply(p, &own, &mut out).await;
                }
            }
            fetched => {
                out.count_fetched(&fetched);
                for p in pending {
                    if !out.hand_back_if(deadline, &p.message_id) {
                        self.apply(p, &fetched, &mut out).await;
                    }
                }
            }
        }
        emit(&out.report, started);
        out
    }

    /// The whole batch held back while the kill switch is off or the
    /// database cannot say; None when processing may go on.
    async fn unless_live(&self, messages: &[QueuedMessage<'_>]) -> Option<BatchOutcome> {
        // The kill switch also holds queued deliveries back: they stay in the
        // queue, unwritten, until it is turned on again.
        match self.flags.is_enabled(Flag::KommoLive).await {
            Ok(true) => None,
            Ok(false) => {
                tracing::warn!(
                    records = messages.len(),
                    "processor: enableKommoLive is off, leaving the batch in the queue"
                );
                Some(BatchOutcome::hold_all(messages, "enableKommoLive is off"))
            }
            Err(e) => {
                tracing::error!(error = %e, "processor: database unavailable, retrying the batch later");
                Some(BatchOutcome::hold_all(
                    messages,
                    "the database is unavailable",
                ))
            }
        }
    }

    /// Records every message, the valid ones in one statement; returns
    /// those to process.
    async fn record_all(
        &self,
        messages: &[QueuedMessage<'_>],
        out: &mut BatchOutcome,
    ) -> Vec<Pending> {
        let mut parsed = Vec::new();
        for m in messages {
            match self.parse(m).await {
                Ok(p) => parsed.push(p),
                Err(skipped) => out.skip(m.message_id, skipped),
            }
        }
        let rows = match self.record(&parsed).await {
            Ok(rows) => rows,
            Err(skipped) => {
                for p in &parsed {
                    out.skip(&p.message_id, skipped);
                }
                return Vec::new();
            }
        };
        let mut pending = Vec::new();
        for (p, row) in parsed.into_iter().zip(rows) {
            match row {
                Some(row) if row.status == "processed" || row.status == "rejected" => {
                    tracing::info!(event_id = %row.id, sha256 = %body_hash(p.body.as_bytes()), "processor: duplicate delivery, already {}", row.status);
                    out.skip(&p.message_id, Skipped::Duplicate);
                }
                Some(row) => pending.push(Pending {
                    message_id: p.message_id,
                    event_id: row.id,
                    delivery: p.delivery,
                }),
                None => {
                    tracing::error!(message_id = %p.message_id, "processor: the delivery was not recorded");
                    out.skip(&p.message_id, Skipped::Failed { systemic: false });
                }
            }
        }
        pending
    }

    /// Reads the batch's leads and contacts from Kommo, as [`fetch::fetch`] does.
    pub async fn fetch(
        &self,
        lead_ids: &[i64],
        contact_ids: &[i64],
    ) -> Result<Fetched, FetchError> {
        fetch::fetch(
            &self.pool,
            &self.mapping,
            &self.kommo,
            lead_ids,
            contact_ids,
        )
        .await
    }

    async fn fetch_for(&self, pending: &[Pending]) -> Result<Fetched, FetchError> {
        let lead_ids = distinct(pending.iter().flat_map(|p| lead_ids_to_fetch(&p.delivery)));
        let contact_ids = distinct(
            pending
                .iter()
                .flat_map(|p| contact_ids_to_fetch(&p.delivery)),
        );
        if lead_ids.is_empty() && contact_ids.is_empty() {
            return Ok(Fetched::default());
        }
        self.fetch(&lead_ids, &contact_ids).await
    }

    /// Applies one recorded delivery and counts the result.
    async fn apply(
        &self,
        p: Pending,
        fetched: &Result<Fetched, FetchError>,
        out: &mut BatchOutcome,
    ) {
        let span =
            tracing::info_span!("delivery", message_id = %p.message_id, event_id = %p.event_id);
        let result = async {
            let result = match (fetched, needs_fetch(&p.delivery)) {
                (Err(e), true) => Err(IngestError::Fetch(e.clone())),
                (Ok(f), _) => apply_delivery(&self.pool, p.event_id, &p.delivery, f).await,
                (Err(_), false) => {
                    apply_delivery(&self.pool, p.event_id, &p.delivery, &Fetched::default()).await
                }
            };
            if let Err(e) = &result {
                self.fail(p.event_id, &e.to_string()).await;
            }
            result
        }
        .instrument(span)
        .await;
        match result {
            Ok(true) => out.report.processed += 1,
            Ok(false) => out.report.duplicates += 1,
            Err(e) if e.is_systemic() => {
                out.report.failed += 1;
                out.hold(&p.message_id, e.to_string());
            }
            Err(_) => {
                out.report.failed += 1;
                out.retry.push(p.message_id);
            }
        }
    }

    /// Reads one message's envelope and delivery; `Ok` means: record it.
    async fn parse(&self, m: &QueuedMessage<'_>) -> Result<Parsed, Skipped> {
        let message_id = m.message_id;
        let (body, account_id) = match QueuedDelivery::from_json(m.body) {
            Ok(env) => (env.body, env.account_id),
            Err(e) => {
                tracing::error!(error = %e, message_id, "processor: message is not a delivery envelope");
                return Err(self.unprocessable(m.body, message_id, &e.to_string()).await);
            }
        };
        match parse_delivery(body.as_bytes()) {
            Ok(delivery) => Ok(Parsed {
                message_id: message_id.to_string(),
                body,
                account_id,
                delivery,
            }),
            Err(e) => {
                tracing::error!(error = %e, message_id, "processor: queued body does not parse");
                Err(self.unprocessable(&body, message_id, &e.to_string()).await)
            }
        }
    }

    /// Records the parsed messages in the events table in one statement.
    async fn record(&self, parsed: &[Parsed]) -> Result<Vec<Option<EventRow>>, Skipped> {
        if parsed.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(|e| {
            tracing::error!(error = %e, "processor: database unavailable");
            Skipped::Failed { systemic: true }
        })?;
        let received: Vec<Received<'_>> = parsed
            .iter()
            .map(|p| Received {
                body: &p.body,
                account_id: p.account_id,
                sqs_message_id: Some(&p.message_id),
            })
            .collect();
        record_batch(&client, &received).await.map_err(|e| {
            tracing::error!(error = %e, "processor: could not record the deliveries");
            Skipped::Failed {
                systemic: e.is_unavailable(),
            }
        })
    }

    /// A message that can never succeed is recorded and dropped from the
    /// queue rather than retried into the DLQ.
    async fn unprocessable(&self, body: &str, message_id: &str, error: &str) -> Skipped {
        let res = match self.pool.get().await {
            Ok(client) => record_unprocessable(&client, body, Some(message_id), error)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(()) => Skipped::Rejected,
            Err(e) => {
                // Kept in the queue until it can at least be recorded.
                tracing::error!(error = %e, message_id, "processor: could not record an unprocessable message");
                Skipped::Failed { systemic: true }
            }
        }
    }

    async fn fail(&self, event_id: Uuid, error: &str) {
        tracing::error!(error, "processor: delivery failed");
        let res = match self.pool.get().await {
            Ok(client) => mark_failed(&client, event_id, error).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "processor: could not mark the delivery failed");
        }
    }
}

/// The batch's counts as EMF metrics, and one log line.
fn emit(report: &BatchReport, started: Instant) {
    let mut m = Metrics::new("KommoZoho", "webhook-processor");
    for (name, count) in [
        ("deliveries_processed", report.processed),
        ("deliveries_duplicate", report.duplicates),
        ("deliveries_rejected", report.rejected),
        ("deliveries_failed", report.failed),
        ("deliveries_handed_back", report.handed_back),
        ("leads_fetched", report.leads_fetched),
    ] {
        m.add(name, count as f64, Unit::Count);
    }
    m.set(
        "batch_duration",
        started.elapsed().as_secs_f64() * 1000.0,
        Unit::Milliseconds,
    );
    m.flush();
    tracing::info!(?report, "processor: batch done");
}

/// Each id once, in ascending order.
fn distinct(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
