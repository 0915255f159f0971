//! The SQS consumer of `kommo-events`: record, dedupe, fetch, apply.
//!
//! Each delivery is recorded in `kommo_webhook_events` under the sha256 of
//! its body, so a re-delivery is recognised and not applied twice. Leads are
//! fetched from the Kommo API once per batch (webhooks carry neither contacts
//! nor catalog elements, and a fresh read is never older than the hook), and
//! every delivery is applied in its own transaction. Failures are returned as
//! batch item failures, so SQS retries only those and, after the queue's
//! receive limit, moves them to the dead-letter queue; the events table says why.

use std::{collections::HashMap, sync::Arc, time::Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use shared::{
    ingest::{self, ClientInput, EventRow, LeadOutcome},
    kommo::{
        map_contact, map_lead_with_contact,
        webhook::{body_hash, parse_delivery, Action, Delivery, Entity, Event, QueuedDelivery},
        KommoClient, MappedContact, MappedLead, MappingConfig,
    },
    platform::db::{DbError, DbPool},
    platform::flags::{FeatureFlags, Flag},
    platform::telemetry::{Metrics, Unit},
};
use tracing::Instrument;
use uuid::Uuid;

/// A lead mapped by the shared mapping, with its main contact, or why it could not be.
pub type FetchedLead = Result<(MappedLead, Option<MappedContact>), String>;

/// What the Kommo API says now about the leads and contacts of a batch.
/// Ids Kommo does not return (deleted) are absent.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub leads: HashMap<i64, FetchedLead>,
    pub contacts: HashMap<i64, Result<MappedContact, String>>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("Kommo fetch failed: {0}")]
pub struct FetchError(pub String);

#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Mapping(String),
}

impl From<tokio_postgres::Error> for ProcessError {
    fn from(e: tokio_postgres::Error) -> Self {
        ProcessError::Db(DbError::Postgres(e))
    }
}

/// Per-batch counts, also emitted as EMF metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub processed: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub failed: usize,
    pub leads_fetched: usize,
}

pub struct Processor {
    pub pool: DbPool,
    pub flags: Arc<FeatureFlags>,
    /// Rate-limited and retrying; one `leads_by_ids` and one `contacts_by_ids` call per batch.
    pub kommo: KommoClient,
}

/// A delivery that made it into the events table and awaits processing.
struct Pending {
    message_id: String,
    event_id: Uuid,
    delivery: Delivery,
}

fn contact_ids_to_fetch(d: &Delivery) -> Vec<i64> {
    d.events
        .iter()
        .filter(|e| {
            e.entity == Entity::Contact
                && matches!(
                    e.action,
                    Action::Add | Action::Update | Action::Restore | Action::Responsible
                )
        })
        .map(|e| e.id)
        .collect()
}

/// Leads to read from the API: changed ones, and deleted ones too, so a late
/// delete of a lead that exists again (restored since) is recognised.
fn lead_ids_to_fetch(d: &Delivery) -> Vec<i64> {
    let mut ids = d.leads_to_fetch();
    ids.extend(
        d.events
            .iter()
            .filter(|e| e.entity == Entity::Lead && e.action == Action::Delete)
            .map(|e| e.id),
    );
    ids
}

fn needs_fetch(d: &Delivery) -> bool {
    !lead_ids_to_fetch(d).is_empty() || !contact_ids_to_fetch(d).is_empty()
}

impl Processor {
    /// Handles one SQS batch; the response lists the records to retry.
    pub async fn handle(&self, event: SqsEvent) -> (SqsBatchResponse, BatchReport) {
        let started = Instant::now();
        let mut report = BatchReport::default();
        let mut failures: Vec<String> = Vec::new();

        // The kill switch also holds queued deliveries back: they stay in the
        // queue, unwritten, until it is turned on again (or reach the DLQ).
        match self.flags.is_enabled(Flag::KommoLive).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    records = event.records.len(),
                    "processor: enableKommoLive is off, leaving the batch in the queue"
                );
                return (all_failed(&event.records), report);
            }
            Err(e) => {
                tracing::error!(error = %e, "processor: database unavailable, retrying the batch later");
                return (all_failed(&event.records), report);
            }
        }

        let mut pending = Vec::new();
        for rec in &event.records {
            let message_id = rec.message_id.clone().unwrap_or_default();
            match self.record(rec, &message_id).await {
                Ok(Some(p)) => pending.push(p),
                Ok(None) => {}
                Err(Recorded::Duplicate) => report.duplicates += 1,
                Err(Recorded::Rejected) => report.rejected += 1,
                Err(Recorded::Failed) => {
                    report.failed += 1;
                    failures.push(message_id);
                }
            }
        }

        let mut lead_ids: Vec<i64> = pending
            .iter()
            .flat_map(|p| lead_ids_to_fetch(&p.delivery))
            .collect();
        lead_ids.sort_unstable();
        lead_ids.dedup();
        let mut contact_ids: Vec<i64> = pending
            .iter()
            .flat_map(|p| contact_ids_to_fetch(&p.delivery))
            .collect();
        contact_ids.sort_unstable();
        contact_ids.dedup();
        let fetched = if lead_ids.is_empty() && contact_ids.is_empty() {
            Ok(Fetched::default())
        } else {
            self.fetch(&lead_ids, &contact_ids).await
        };
        if let Ok(f) = &fetched {
            report.leads_fetched = f.leads.len();
        }

        for p in pending {
            let span =
                tracing::info_span!("delivery", message_id = %p.message_id, event_id = %p.event_id);
            let outcome = async {
                let result = match (&fetched, needs_fetch(&p.delivery)) {
                    (Err(e), true) => Err(ProcessError::Fetch(e.clone())),
                    (Ok(f), _) => self.apply(&p, f).await,
                    (Err(_), false) => self.apply(&p, &Fetched::default()).await,
                };
                if let Err(e) = &result {
                    self.fail(p.event_id, &e.to_string()).await;
                }
                result
            }
            .instrument(span)
            .await;
            match outcome {
                Ok(true) => report.processed += 1,
                Ok(false) => report.duplicates += 1,
                Err(_) => {
                    report.failed += 1;
                    failures.push(p.message_id.clone());
                }
            }
        }

        let mut m = Metrics::new("KommoZoho", "webhook-processor");
        m.add("deliveries_processed", report.processed as f64, Unit::Count);
        m.add(
            "deliveries_duplicate",
            report.duplicates as f64,
            Unit::Count,
        );
        m.add("deliveries_rejected", report.rejected as f64, Unit::Count);
        m.add("deliveries_failed", report.failed as f64, Unit::Count);
        m.add("leads_fetched", report.leads_fetched as f64, Unit::Count);
        m.set(
            "batch_duration",
            started.elapsed().as_secs_f64() * 1000.0,
            Unit::Milliseconds,
        );
        m.flush();
        tracing::info!(?report, "processor: batch done");

        let mut resp = SqsBatchResponse::default();
        resp.batch_item_failures = failures.into_iter().map(failure).collect();
        (resp, report)
    }

    /// Reads the batch's leads and contacts from Kommo (one call each) and maps
    /// them with the shared mapping, as the full refresh does.
    pub async fn fetch(
        &self,
        lead_ids: &[i64],
        contact_ids: &[i64],
    ) -> Result<Fetched, FetchError> {
        let cfg = {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| FetchError(format!("mapping tables unavailable: {e}")))?;
            MappingConfig::load(&**client)
                .await
                .map_err(|e| FetchError(e.to_string()))?
        };
        let leads = if lead_ids.is_empty() {
            Vec::new()
        } else {
            self.kommo
                .leads_by_ids(lead_ids)
                .await
                .map_err(|e| FetchError(e.to_string()))?
        };
        // Kommo lists deleted leads only on request; a flagged one counts as gone.
        let leads: Vec<_> = leads.into_iter().filter(|l| !l.is_deleted).collect();
        let mut wanted: Vec<i64> = contact_ids.to_vec();
        wanted.extend(leads.iter().filter_map(|l| l.main_contact_id()));
        wanted.sort_unstable();
        wanted.dedup();
        let contacts = if wanted.is_empty() {
            Vec::new()
        } else {
            self.kommo
                .contacts_by_ids(&wanted)
                .await
                .map_err(|e| FetchError(e.to_string()))?
        };
        let by_id: HashMap<i64, &shared::kommo::Contact> =
            contacts.iter().map(|c| (c.id, c)).collect();

        let mut out = Fetched::default();
        for lead in &leads {
            let main = lead
                .main_contact_id()
                .and_then(|id| by_id.get(&id).copied());
            let mapped = map_lead_with_contact(lead, main, &cfg).map_err(|e| e.to_string());
            if let Ok((m, _)) = &mapped {
                for w in &m.warnings {
                    tracing::warn!(lead_id = m.lead_id, warning = %w, "processor: lead mapped with a warning");
                }
            }
            out.leads.insert(lead.id, mapped);
        }
        for id in contact_ids {
            if let Some(c) = by_id.get(id) {
                out.contacts
                    .insert(*id, map_contact(c).map_err(|e| e.to_string()));
            }
        }
        Ok(out)
    }

    /// Records one message in the events table. `Ok(Some)` means: process it.
    async fn record(
        &self,
        rec: &SqsMessage,
        message_id: &str,
    ) -> Result<Option<Pending>, Recorded> {
        let raw = rec.body.as_deref().unwrap_or("");
        let (body, account_id) = match QueuedDelivery::from_json(raw) {
            Ok(env) => (env.body, env.account_id),
            Err(e) => {
                tracing::error!(error = %e, message_id, "processor: message is not a delivery envelope");
                return self.unprocessable(raw, message_id, &e.to_string()).await;
            }
        };
        let delivery = match parse_delivery(body.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, message_id, "processor: queued body does not parse");
                return self.unprocessable(&body, message_id, &e.to_string()).await;
            }
        };
        let row: EventRow = match self.pool.get().await {
            Ok(client) => {
                match ingest::record_received(&client, &body, account_id, Some(message_id)).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, message_id, "processor: could not record the delivery");
                        return Err(Recorded::Failed);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, message_id, "processor: database unavailable");
                return Err(Recorded::Failed);
            }
        };
        if row.status == "processed" || row.status == "rejected" {
            tracing::info!(event_id = %row.id, sha256 = %body_hash(body.as_bytes()), "processor: duplicate delivery, already {}", row.status);
            return Err(Recorded::Duplicate);
        }
        Ok(Some(Pending {
            message_id: message_id.to_string(),
            event_id: row.id,
            delivery,
        }))
    }

    /// A message that can never succeed is recorded and dropped from the
    /// queue rather than retried into the DLQ.
    async fn unprocessable(
        &self,
        body: &str,
        message_id: &str,
        error: &str,
    ) -> Result<Option<Pending>, Recorded> {
        let res = match self.pool.get().await {
            Ok(client) => ingest::record_unprocessable(&client, body, Some(message_id), error)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(()) => Err(Recorded::Rejected),
            Err(e) => {
                // Kept in the queue until it can at least be recorded.
                tracing::error!(error = %e, message_id, "processor: could not record an unprocessable message");
                Err(Recorded::Failed)
            }
        }
    }

    /// Applies one delivery in one transaction. `Ok(false)`: a concurrent
    /// copy got there first.
    async fn apply(&self, p: &Pending, fetched: &Fetched) -> Result<bool, ProcessError> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await?;
        let row = ingest::lock_event(&tx, p.event_id).await?;
        if row.status == "processed" {
            tx.commit().await?;
            tracing::info!("processor: delivery already processed by a concurrent copy");
            return Ok(false);
        }
        let lead_ids: Vec<i64> = p
            .delivery
            .events
            .iter()
            .filter(|e| e.entity == Entity::Lead)
            .map(|e| e.id)
            .collect();
        ingest::lock_leads(&tx, &lead_ids).await?;
        for ev in &p.delivery.events {
            apply_event(&tx, ev, fetched).await?;
        }
        let parsed = serde_json::to_value(&p.delivery).unwrap_or(serde_json::Value::Null);
        ingest::mark_processed(&tx, p.event_id, &parsed).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn fail(&self, event_id: Uuid, error: &str) {
        tracing::error!(error, "processor: delivery failed");
        let res = match self.pool.get().await {
            Ok(client) => ingest::mark_failed(&client, event_id, error).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "processor: could not mark the delivery failed");
        }
    }
}

enum Recorded {
    Duplicate,
    Rejected,
    Failed,
}

fn failure(id: String) -> BatchItemFailure {
    let mut f = BatchItemFailure::default();
    f.item_identifier = id;
    f
}

fn all_failed(records: &[SqsMessage]) -> SqsBatchResponse {
    let mut resp = SqsBatchResponse::default();
    resp.batch_item_failures = records
        .iter()
        .map(|r| failure(r.message_id.clone().unwrap_or_default()))
        .collect();
    resp
}

async fn apply_event(
    tx: &shared::platform::db::PooledTransaction<'_>,
    ev: &Event,
    fetched: &Fetched,
) -> Result<(), ProcessError> {
    match (ev.entity, ev.action) {
        (Entity::Lead, Action::Delete) if fetched.leads.contains_key(&ev.id) => {
            tracing::info!(
                lead_id = ev.id,
                "processor: lead exists in Kommo again, late delete ignored"
            );
        }
        (Entity::Lead, Action::Delete) => {
            let (bookings, leads) = ingest::delete_lead(tx, ev.id).await?;
            tracing::info!(lead_id = ev.id, bookings, leads, "processor: lead deleted");
        }
        (Entity::Lead, Action::Note) => {
            tracing::info!(lead_id = ev.id, "processor: lead note ignored");
        }
        (Entity::Lead, _) => match fetched.leads.get(&ev.id) {
            Some(Ok((lead, contact))) => {
                let out = ingest::apply_lead(tx, lead, contact.as_ref()).await?;
                match out {
                    LeadOutcome::Stale => {
                        tracing::info!(lead_id = ev.id, action = ?ev.action, "processor: older than stored, nothing changed")
                    }
                    LeadOutcome::Excluded { deactivated } => {
                        tracing::info!(lead_id = ev.id, action = ?ev.action, ?deactivated, "processor: lead in an excluded status")
                    }
                    LeadOutcome::Booked {
                        booking_id,
                        created,
                        ..
                    } => {
                        tracing::info!(lead_id = ev.id, action = ?ev.action, %booking_id, created, "processor: lead applied")
                    }
                }
            }
            Some(Err(e)) => return Err(ProcessError::Mapping(e.clone())),
            None => {
                // Deleted since the hook was sent; its delete delivery follows.
                tracing::warn!(lead_id = ev.id, action = ?ev.action, "processor: lead not found in Kommo, skipped");
            }
        },
        (Entity::Contact, Action::Delete) => {
            // Clients are ERP records with bookings attached; a Kommo delete does not remove them.
            tracing::info!(contact_id = ev.id, "processor: contact delete ignored");
        }
        (Entity::Contact, Action::Note) => {
            tracing::info!(contact_id = ev.id, "processor: contact note ignored");
        }
        (Entity::Contact, _) => match fetched.contacts.get(&ev.id) {
            Some(Err(e)) => return Err(ProcessError::Mapping(e.clone())),
            Some(Ok(c)) => match ingest::refresh_contact(tx, &ClientInput::from(c)).await? {
                Some((out, _)) => {
                    tracing::info!(contact_id = ev.id, client_id = %out.id, applied = out.applied, "processor: client refreshed")
                }
                None => tracing::info!(
                    contact_id = ev.id,
                    "processor: contact has no client, skipped"
                ),
            },
            None => tracing::warn!(
                contact_id = ev.id,
                "processor: contact not found in Kommo, skipped"
            ),
        },
        (Entity::Company, action) => {
            tracing::info!(
                company_id = ev.id,
                ?action,
                "processor: companies are not imported, skipped"
            );
        }
    }
    Ok(())
}
