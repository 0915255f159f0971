//! Ingestion into the ERP tables: clients, bookings, vehicles, sales leads,
//! and the Zoho work they cause in `integrations_outbox`.
//!
//! Deliveries arrive late, twice and out of order (Kommo retries for about
//! 95 minutes and sends `update` and `status` for one stage move), so every
//! write here is an idempotent upsert guarded by Kommo's `updated_at`, and a
//! delivery is applied in one transaction or not at all.

use chrono::{DateTime, Utc};
// Statements are prepared once per pooled connection (deadpool's cache):
// a delivery runs about fifteen, and each saved prepare is a round trip.
use deadpool_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::{
    kommo::{webhook::body_hash, MappedContact, MappedLead},
    outbox::{self, OutboxError},
    platform::db::DbError,
};

/// The mapping's phone normaliser, so ingest and full refresh agree on matching.
pub use crate::kommo::mapping::normalize_phone;

/// Trimmed, with empty strings as `None`.
pub fn clean(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// What we know about a person, from Kommo or from the manual form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInput {
    pub kommo_contact_id: Option<i64>,
    pub full_name: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// Kommo's `updated_at` of the contact; `None` for manual input.
    pub kommo_updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    pub id: Uuid,
    pub created: bool,
    /// False when the stored row was newer and left alone.
    pub applied: bool,
    pub zoho_contact_id: Option<String>,
}

/// How an existing client was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    KommoContactId,
    Email,
    Phone,
}

/// Finds the client: by `kommo_contact_id`, then by email (case-insensitive),
/// then by normalised phone, and locks the row. Email and phone only match a
/// client not already tied to another Kommo contact, so two Kommo contacts
/// sharing a family email stay two clients.
pub async fn find_client(
    tx: &Transaction<'_>,
    c: &ClientInput,
) -> Result<Option<(Uuid, MatchedBy)>, DbError> {
    if let Some(kid) = c.kommo_contact_id {
        if let Some(row) = tx
            .query_opt(
                &tx.prepare_cached("SELECT id FROM clients WHERE kommo_contact_id = $1 FOR UPDATE")
                    .await?,
                &[&kid],
            )
            .await?
        {
            return Ok(Some((row.get(0), MatchedBy::KommoContactId)));
        }
    }
    if let Some(email) = clean(c.email.as_deref()) {
        if let Some(row) = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id FROM clients
                  WHERE email IS NOT NULL AND lower(email) = lower($1)
                    AND ($2::bigint IS NULL OR kommo_contact_id IS NULL OR kommo_contact_id = $2)
                  ORDER BY created_at, id LIMIT 1 FOR UPDATE",
                )
                .await?,
                &[&email, &c.kommo_contact_id],
            )
            .await?
        {
            return Ok(Some((row.get(0), MatchedBy::Email)));
        }
    }
    if let Some(phone) = c.phone.as_deref().and_then(normalize_phone) {
        if let Some(row) = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id FROM clients
                  WHERE phone_normalized = $1
                    AND ($2::bigint IS NULL OR kommo_contact_id IS NULL OR kommo_contact_id = $2)
                  ORDER BY created_at, id LIMIT 1 FOR UPDATE",
                )
                .await?,
                &[&phone, &c.kommo_contact_id],
            )
            .await?
        {
            return Ok(Some((row.get(0), MatchedBy::Phone)));
        }
    }
    Ok(None)
}

/// Creates or refreshes a client.
///
/// Kommo input overwrites the profile unless the stored `kommo_updated_at`
/// is newer. Manual input only fills fields that are still empty: staff
/// typing a booking must not silently rewrite a client's record.
pub async fn upsert_client(
    tx: &Transaction<'_>,
    c: &ClientInput,
) -> Result<ClientOutcome, DbError> {
    let email = clean(c.email.as_deref());
    let phone = clean(c.phone.as_deref());
    let phone_norm = phone.as_deref().and_then(normalize_phone);
    let first = clean(c.first_name.as_deref());
    let last = clean(c.last_name.as_deref());
    let full_name = c.full_name.trim().to_string();

    let found = find_client(tx, c).await?;
    let Some((id, _)) = found else {
        // ON CONFLICT: a concurrent delivery for the same contact may insert
        // first; then this one updates the row it created.
        let row = tx
            .query_opt(
                &tx.prepare_cached("INSERT INTO clients (kommo_contact_id, full_name, first_name, last_name, email,
                                      phone, phone_normalized, kommo_updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (kommo_contact_id) DO NOTHING
                 RETURNING id").await?,
                &[
                    &c.kommo_contact_id,
                    &full_name,
                    &first,
                    &last,
                    &email,
                    &phone,
                    &phone_norm,
                    &c.kommo_updated_at,
                ],
            )
            .await?;
        if let Some(row) = row {
            return Ok(ClientOutcome {
                id: row.get(0),
                created: true,
                applied: true,
                zoho_contact_id: None,
            });
        }
        return Box::pin(upsert_client(tx, c)).await;
    };

    let row = if c.kommo_updated_at.is_some() || c.kommo_contact_id.is_some() {
        tx.query_opt(
            &tx.prepare_cached(
                "UPDATE clients SET
                 kommo_contact_id = coalesce($2, kommo_contact_id),
                 full_name = CASE WHEN $3 = '' THEN full_name ELSE $3 END,
                 first_name = coalesce($4, first_name),
                 last_name = coalesce($5, last_name),
                 email = coalesce($6, email),
                 phone = coalesce($7, phone),
                 phone_normalized = coalesce($8, phone_normalized),
                 kommo_updated_at = greatest(kommo_updated_at, $9),
                 updated_at = now()
              WHERE id = $1
                AND (kommo_updated_at IS NULL OR $9::timestamptz IS NULL OR kommo_updated_at <= $9)
              RETURNING zoho_contact_id",
            )
            .await?,
            &[
                &id,
                &c.kommo_contact_id,
                &full_name,
                &first,
                &last,
                &email,
                &phone,
                &phone_norm,
                &c.kommo_updated_at,
            ],
        )
        .await?
    } else {
        tx.query_opt(
            &tx.prepare_cached(
                "UPDATE clients SET
                 full_name = CASE WHEN full_name = '' THEN $2 ELSE full_name END,
                 first_name = coalesce(first_name, $3),
                 last_name = coalesce(last_name, $4),
                 email = coalesce(email, $5),
                 phone = coalesce(phone, $6),
                 phone_normalized = coalesce(phone_normalized, $7),
                 updated_at = now()
              WHERE id = $1
              RETURNING zoho_contact_id",
            )
            .await?,
            &[&id, &full_name, &first, &last, &email, &phone, &phone_norm],
        )
        .await?
    };
    match row {
        Some(r) => Ok(ClientOutcome {
            id,
            created: false,
            applied: true,
            zoho_contact_id: r.get(0),
        }),
        None => {
            let zoho: Option<String> = tx
                .query_one(
                    &tx.prepare_cached("SELECT zoho_contact_id FROM clients WHERE id = $1")
                        .await?,
                    &[&id],
                )
                .await?
                .get(0);
            Ok(ClientOutcome {
                id,
                created: false,
                applied: false,
                zoho_contact_id: zoho,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Leads
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadOutcome {
    /// The stored data is newer than this snapshot; nothing was written.
    Stale,
    /// An excluded status: only `sales_leads` was written, and an existing
    /// booking was deactivated.
    Excluded { deactivated: Option<Uuid> },
    Booked {
        booking_id: Uuid,
        created: bool,
        client_id: Option<Uuid>,
        enqueued: Enqueued,
    },
}

/// Serialises work on one lead across concurrent transactions (an `update`
/// and a `status` delivery for one stage move arrive together), so the
/// read-compare-write below cannot interleave. Released at commit.
async fn lock_lead(tx: &Transaction<'_>, lead_id: i64) -> Result<(), DbError> {
    tx.execute(
        &tx.prepare_cached("SELECT pg_advisory_xact_lock($1::int, ($2::bigint % 2147483647)::int)")
            .await?,
        &[&LEAD_LOCK_CLASS, &lead_id],
    )
    .await?;
    Ok(())
}

/// Takes the locks of several leads in id order, so two deliveries that
/// touch the same leads in different orders cannot deadlock. Taking a lead's
/// lock again later in the transaction is a no-op.
pub async fn lock_leads(tx: &Transaction<'_>, lead_ids: &[i64]) -> Result<(), DbError> {
    let mut ids = lead_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        lock_lead(tx, id).await?;
    }
    Ok(())
}

/// Advisory-lock namespace of Kommo leads ("KL").
const LEAD_LOCK_CLASS: i32 = 0x4b4c;

pub fn source_payload_id(lead_id: i64) -> String {
    format!("kommo:{lead_id}")
}

impl From<&MappedContact> for ClientInput {
    fn from(c: &MappedContact) -> Self {
        ClientInput {
            kommo_contact_id: Some(c.contact_id),
            full_name: c.full_name.clone(),
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            kommo_updated_at: c.updated_at,
        }
    }
}

/// Applies a lead's current state, as the shared mapping produced it, in
/// the caller's transaction: client, sales lead snapshot, booking, vehicle,
/// Zoho work (seed 000, steps 2–4). `contact` is the lead's main contact.
///
/// A booking is found by `source_payload_id` (`kommo:<id>`) or by an
/// `external_code` equal to the lead id, so a manual booking typed during a
/// Kommo outage with the lead's number is adopted instead of duplicated.
pub async fn apply_lead(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    contact: Option<&MappedContact>,
) -> Result<LeadOutcome, DbError> {
    lock_lead(tx, lead.lead_id).await?;
    let spid = lead.source_payload_id();
    let lead_code = lead.lead_code();
    let updated_at = lead.kommo_updated_at;

    let booking = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT id, kommo_updated_at, zoho_sales_order_id FROM bookings
              WHERE source_payload_id = $1 OR (external_code IS NOT NULL AND external_code = $2)
              ORDER BY (source_payload_id = $1) DESC NULLS LAST
              LIMIT 1 FOR UPDATE",
            )
            .await?,
            &[&spid, &lead_code],
        )
        .await?;
    let stored_lead: Option<Option<DateTime<Utc>>> = tx
        .query_opt(
            &tx.prepare_cached("SELECT kommo_updated_at FROM sales_leads WHERE kommo_lead_id = $1")
                .await?,
            &[&lead.lead_id],
        )
        .await?
        .map(|r| r.get(0));
    let newer_stored = booking
        .as_ref()
        .and_then(|b| b.get::<_, Option<DateTime<Utc>>>(1))
        .into_iter()
        .chain(stored_lead.flatten())
        .any(|t| t > updated_at);
    if newer_stored {
        tracing::info!(
            lead_id = lead.lead_id,
            "ingest: stored lead is newer, snapshot ignored"
        );
        return Ok(LeadOutcome::Stale);
    }

    let (booking_status, excluded) = (&lead.booking_status, lead.excluded);
    let owner_id = lead.owner_staff_id;
    let contact = contact.map(ClientInput::from);

    // Excluded leads never create a client: the bot-answered noise stays out
    // of the ERP, but an existing client is still linked to the snapshot.
    let client = match &contact {
        Some(c) if !excluded => Some(upsert_client(tx, c).await?),
        Some(c) => find_client(tx, c).await?.map(|(id, _)| ClientOutcome {
            id,
            created: false,
            applied: false,
            zoho_contact_id: None,
        }),
        None => None,
    };
    let client_id = client.as_ref().map(|c| c.id);
    // The mapping already lets delivery and collect fall back to each other.
    let (start_at, end_at) = (lead.start_at, lead.end_at);

    tx.execute(
        &tx.prepare_cached("INSERT INTO sales_leads (lead_code, kommo_lead_id, client_id, name, stage_id, pipeline_id,
                                  value_amount, owner_id, expected_close_at, source, lead_source,
                                  archived_at, kommo_updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7::bigint::numeric, $8, $9, 'Kommo', $10, NULL, $11)
         ON CONFLICT (lead_code) DO UPDATE SET
             kommo_lead_id = EXCLUDED.kommo_lead_id,
             client_id = coalesce(EXCLUDED.client_id, sales_leads.client_id),
             name = EXCLUDED.name,
             stage_id = EXCLUDED.stage_id,
             pipeline_id = EXCLUDED.pipeline_id,
             value_amount = EXCLUDED.value_amount,
             owner_id = EXCLUDED.owner_id,
             expected_close_at = EXCLUDED.expected_close_at,
             lead_source = EXCLUDED.lead_source,
             archived_at = NULL,
             kommo_updated_at = EXCLUDED.kommo_updated_at,
             updated_at = now()").await?,
        &[
            &lead_code,
            &lead.lead_id,
            &client_id,
            &lead.name,
            &lead.status_id,
            &lead.pipeline_id,
            &lead.price,
            &owner_id,
            &lead.closed_at.or(start_at),
            &lead.source,
            &updated_at,
        ],
    )
    .await?;

    if excluded {
        let deactivated = match &booking {
            Some(b) => {
                let id: Uuid = b.get(0);
                tx.execute(
                    &tx.prepare_cached(
                        "UPDATE bookings SET is_active = false, kommo_status_id = $2, status = $3,
                            kommo_updated_at = $4, updated_at = now()
                      WHERE id = $1",
                    )
                    .await?,
                    &[&id, &lead.status_id, booking_status, &updated_at],
                )
                .await?;
                tracing::info!(lead_id = lead.lead_id, booking_id = %id, "ingest: lead moved to an excluded status, booking deactivated");
                Some(id)
            }
            None => None,
        };
        return Ok(LeadOutcome::Excluded { deactivated });
    }

    let vehicle_id: Option<Uuid> = match lead.vehicle_enum_id {
        Some(enum_id) => {
            let name = lead.vehicle_name.clone().unwrap_or_default();
            Some(
                tx.query_one(
                    &tx.prepare_cached("INSERT INTO vehicles (kommo_vehicle_id, name) VALUES ($1, $2)
                     ON CONFLICT (kommo_vehicle_id) DO UPDATE
                        SET name = CASE WHEN EXCLUDED.name = '' THEN vehicles.name ELSE EXCLUDED.name END,
                            updated_at = CASE WHEN vehicles.name = EXCLUDED.name OR EXCLUDED.name = ''
                                              THEN vehicles.updated_at ELSE now() END
                     RETURNING id").await?,
                    &[&enum_id, &name],
                )
                .await?
                .get(0),
            )
        }
        None => None,
    };

    let (booking_id, created, booking_zoho): (Uuid, bool, Option<String>) = match &booking {
        Some(b) => {
            let id: Uuid = b.get(0);
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE bookings SET
                     source_payload_id = coalesce(source_payload_id, $2),
                     owner_id = $3, client_id = coalesce($4, client_id), kommo_lead_id = $5,
                     kommo_pipeline_id = $6, kommo_status_id = $7, status = $8, source = $9,
                     title = $10, start_at = $11, end_at = $12, vehicle_id = $13, is_active = true,
                     total_amount = $14::bigint::numeric, kommo_updated_at = $15, updated_at = now()
                  WHERE id = $1",
                )
                .await?,
                &[
                    &id,
                    &spid,
                    &owner_id,
                    &client_id,
                    &lead.lead_id,
                    &lead.pipeline_id,
                    &lead.status_id,
                    booking_status,
                    &lead.source,
                    &lead.name,
                    &start_at,
                    &end_at,
                    &vehicle_id,
                    &lead.price,
                    &updated_at,
                ],
            )
            .await?;
            (id, false, b.get(2))
        }
        None => {
            let id: Uuid = tx
                .query_one(
                    &tx.prepare_cached("INSERT INTO bookings (source_payload_id, channel, created_by, owner_id,
                                           client_id, kommo_lead_id, kommo_pipeline_id, kommo_status_id,
                                           status, source, title, start_at, end_at, vehicle_id,
                                           total_amount, kommo_updated_at)
                     VALUES ($1, 'Kommo', 'system-kommo', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                             $12, $13::bigint::numeric, $14)
                     RETURNING id").await?,
                    &[
                        &spid,
                        &owner_id,
                        &client_id,
                        &lead.lead_id,
                        &lead.pipeline_id,
                        &lead.status_id,
                        booking_status,
                        &lead.source,
                        &lead.name,
                        &start_at,
                        &end_at,
                        &vehicle_id,
                        &lead.price,
                        &updated_at,
                    ],
                )
                .await?
                .get(0);
            (id, true, None)
        }
    };

    match vehicle_id {
        Some(vid) => {
            tx.execute(
                &tx.prepare_cached("DELETE FROM booking_vehicles WHERE booking_id = $1 AND \"primary\" AND vehicle_id <> $2").await?,
                &[&booking_id, &vid],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("INSERT INTO booking_vehicles (booking_id, vehicle_id, \"primary\") VALUES ($1, $2, true)
                 ON CONFLICT (booking_id, vehicle_id) DO UPDATE SET \"primary\" = true").await?,
                &[&booking_id, &vid],
            )
            .await?;
        }
        None => {
            tx.execute(
                &tx.prepare_cached(
                    "DELETE FROM booking_vehicles WHERE booking_id = $1 AND \"primary\"",
                )
                .await?,
                &[&booking_id],
            )
            .await?;
        }
    }

    let enqueued = match &client {
        Some(c) => {
            enqueue_zoho_tasks(
                tx,
                c.id,
                c.zoho_contact_id.as_deref(),
                Some(booking_id),
                booking_zoho.as_deref(),
            )
            .await?
        }
        None => {
            // Zoho needs a contact for a sales order; the next delivery that
            // brings one enqueues it.
            tracing::info!(
                lead_id = lead.lead_id,
                "ingest: lead has no contact, no Zoho work yet"
            );
            Enqueued::default()
        }
    };
    Ok(LeadOutcome::Booked {
        booking_id,
        created,
        client_id,
        enqueued,
    })
}

/// A lead deleted in Kommo: its booking is deactivated and its sales lead
/// archived. Nothing is removed, so a restore brings it back.
pub async fn delete_lead(tx: &Transaction<'_>, lead_id: i64) -> Result<(u64, u64), DbError> {
    lock_lead(tx, lead_id).await?;
    let bookings = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE bookings SET is_active = false, updated_at = now()
              WHERE source_payload_id = $1 AND is_active",
            )
            .await?,
            &[&source_payload_id(lead_id)],
        )
        .await?;
    let leads = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE sales_leads SET archived_at = now(), updated_at = now()
              WHERE kommo_lead_id = $1 AND archived_at IS NULL",
            )
            .await?,
            &[&lead_id],
        )
        .await?;
    Ok((bookings, leads))
}

/// A contact changed in Kommo: refresh the client it belongs to, if we have
/// one. Contacts with no client are not imported on their own.
pub async fn refresh_contact(
    tx: &Transaction<'_>,
    contact: &ClientInput,
) -> Result<Option<(ClientOutcome, Enqueued)>, DbError> {
    if find_client(tx, contact).await?.is_none() {
        return Ok(None);
    }
    let out = upsert_client(tx, contact).await?;
    let enqueued = if out.applied {
        enqueue_zoho_tasks(tx, out.id, out.zoho_contact_id.as_deref(), None, None).await?
    } else {
        Enqueued::default()
    };
    Ok(Some((out, enqueued)))
}

// ---------------------------------------------------------------------------
// Zoho work
// ---------------------------------------------------------------------------

/// Which Zoho tasks a change asked for. Either way a live (pending or
/// processing) row exists afterwards: an identical one may have been there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub contact_upsert: bool,
    pub sales_order_create: bool,
}

fn outbox_err(e: OutboxError) -> DbError {
    match e {
        OutboxError::Db(e) => e,
    }
}

/// Enqueues `contact.upsert` and `sales_order.create` unless the Zoho ids are
/// already set; an identical live row makes the insert a no-op (dedupe key).
pub async fn enqueue_zoho_tasks(
    tx: &Transaction<'_>,
    client_id: Uuid,
    client_zoho_id: Option<&str>,
    booking_id: Option<Uuid>,
    booking_zoho_id: Option<&str>,
) -> Result<Enqueued, DbError> {
    let mut out = Enqueued::default();
    if client_zoho_id.is_none() {
        outbox::enqueue_contact_upsert(tx, client_id)
            .await
            .map_err(outbox_err)?;
        out.contact_upsert = true;
    }
    if let (Some(booking_id), None) = (booking_id, booking_zoho_id) {
        outbox::enqueue_sales_order_create(tx, booking_id, client_id)
            .await
            .map_err(outbox_err)?;
        out.sales_order_create = true;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// kommo_webhook_events: the delivery log
// ---------------------------------------------------------------------------

/// Records a body the receiver could not parse. A repeat of the same body
/// counts as a duplicate of the first rejection.
pub async fn record_rejected(
    client: &Client,
    body: &[u8],
    account_id: Option<i64>,
    error: &str,
) -> Result<(), DbError> {
    let raw = String::from_utf8_lossy(body);
    client
        .execute(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, account_id, raw_payload, status, error)
             VALUES ($1, $2, $3, 'rejected', $4)
             ON CONFLICT (dedupe_key) DO UPDATE
                SET duplicate_count = kommo_webhook_events.duplicate_count + 1,
                    updated_at = now()").await?,
            &[&body_hash(body), &account_id, &raw.as_ref(), &error],
        )
        .await?;
    Ok(())
}

/// A delivery's row in `kommo_webhook_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: Uuid,
    pub status: String,
    pub attempts: i32,
}

/// Records a delivery taken from the queue (idempotent). A second message
/// with the same body counts as a duplicate; a redelivery of the same SQS
/// message (after a failure) does not.
pub async fn record_received(
    client: &Client,
    body: &str,
    account_id: Option<i64>,
    sqs_message_id: Option<&str>,
) -> Result<EventRow, DbError> {
    let row = client
        .query_one(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, account_id, raw_payload, sqs_message_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (dedupe_key) DO UPDATE
                SET duplicate_count = kommo_webhook_events.duplicate_count
                        + CASE WHEN kommo_webhook_events.sqs_message_id IS DISTINCT FROM EXCLUDED.sqs_message_id
                               THEN 1 ELSE 0 END,
                    updated_at = now()
             RETURNING id, status, attempts").await?,
            &[&body_hash(body.as_bytes()), &account_id, &body, &sqs_message_id],
        )
        .await?;
    Ok(EventRow {
        id: row.get(0),
        status: row.get(1),
        attempts: row.get(2),
    })
}

/// Locks a delivery's row for the processing transaction. Concurrent copies
/// of one delivery wait here and then find it `processed`.
pub async fn lock_event(tx: &Transaction<'_>, id: Uuid) -> Result<EventRow, DbError> {
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT id, status, attempts FROM kommo_webhook_events WHERE id = $1 FOR UPDATE",
            )
            .await?,
            &[&id],
        )
        .await?;
    Ok(EventRow {
        id: row.get(0),
        status: row.get(1),
        attempts: row.get(2),
    })
}

pub async fn mark_processed(
    tx: &Transaction<'_>,
    id: Uuid,
    parsed: &serde_json::Value,
) -> Result<(), DbError> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE kommo_webhook_events
            SET status = 'processed', attempts = attempts + 1, error = NULL,
                parsed_payload = $2, processed_at = now(), updated_at = now()
          WHERE id = $1",
        )
        .await?,
        &[&id, parsed],
    )
    .await?;
    Ok(())
}

/// Marks a failed attempt, outside the rolled-back processing transaction.
pub async fn mark_failed(client: &Client, id: Uuid, error: &str) -> Result<i32, DbError> {
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "UPDATE kommo_webhook_events
                SET status = 'failed', attempts = attempts + 1, error = $2, updated_at = now()
              WHERE id = $1
              RETURNING attempts",
                )
                .await?,
            &[&id, &error],
        )
        .await?;
    Ok(row.get(0))
}

/// Marks a delivery that can never be processed (its queue message is not
/// an envelope, or its body does not parse). It is not retried.
pub async fn record_unprocessable(
    client: &Client,
    body: &str,
    sqs_message_id: Option<&str>,
    error: &str,
) -> Result<(), DbError> {
    client
        .execute(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, raw_payload, status, error, sqs_message_id, attempts)
             VALUES ($1, $2, 'rejected', $3, $4, 1)
             ON CONFLICT (dedupe_key) DO UPDATE
                SET status = 'rejected', error = EXCLUDED.error, updated_at = now()").await?,
            &[&body_hash(body.as_bytes()), &body, &error, &sqs_message_id],
        )
        .await?;
    Ok(())
}
