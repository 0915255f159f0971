//! Applying a lead's or a contact's current Kommo state to the ERP, in the
//! caller's transaction: client, sales lead snapshot, booking, vehicle, and
//! the Zoho work they cause (seed 000, steps 2–4).
//!
//! Deliveries arrive late, twice and out of order (Kommo retries for about
//! 95 minutes and sends `update` and `status` for one stage move), so every
//! write is an idempotent upsert guarded by Kommo's `updated_at`.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::zoho_work::{enqueue_zoho_work, Enqueued};
use crate::{
    erp::{
        bookings::{self, LeadBooking},
        clients::{find_client, upsert_client, ClientInput, ClientOutcome},
        sales_leads, vehicles,
    },
    kommo::{MappedContact, MappedLead},
    platform::db::DbError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadOutcome {
    /// The stored data is newer than this snapshot; nothing was written.
    Stale,
    /// An excluded status: only `sales_leads` was written, and an existing
    /// booking was deactivated (its Zoho order, if any, is cancelled).
    Excluded { deactivated: Option<Uuid> },
    Booked {
        booking_id: Uuid,
        created: bool,
        client_id: Option<Uuid>,
        enqueued: Enqueued,
    },
}

/// Advisory-lock namespace of Kommo leads ("KL").
const LEAD_LOCK_CLASS: i32 = 0x4b4c;

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

pub fn source_payload_id(lead_id: i64) -> String {
    format!("kommo:{lead_id}")
}

/// Applies a lead's current state, as the shared mapping produced it.
/// `contact` is the lead's main contact. The booking is found as
/// [`bookings::find_for_lead`] describes (manual bookings typed with the
/// lead's number are adopted).
pub async fn apply_lead(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    contact: Option<&MappedContact>,
) -> Result<LeadOutcome, DbError> {
    lock_lead(tx, lead.lead_id).await?;
    let booking = bookings::find_for_lead(tx, lead).await?;
    let stored_lead = sales_leads::kommo_updated_at(tx, lead.lead_id).await?;
    let newer_stored = booking
        .as_ref()
        .and_then(|b| b.kommo_updated_at)
        .into_iter()
        .chain(stored_lead.flatten())
        .any(|t| t > lead.kommo_updated_at);
    if newer_stored {
        tracing::info!(
            lead_id = lead.lead_id,
            "ingest: stored lead is newer, snapshot ignored"
        );
        return Ok(LeadOutcome::Stale);
    }

    let client = lead_client(tx, lead, contact).await?;
    let client_id = client.as_ref().map(|c| c.id);
    sales_leads::upsert_from_lead(tx, lead, client_id).await?;
    if lead.excluded {
        let deactivated = match &booking {
            Some(b) => {
                bookings::deactivate_excluded(tx, b.id, lead).await?;
                enqueue_zoho_work(tx, &[], &[b.id]).await?;
                tracing::info!(lead_id = lead.lead_id, booking_id = %b.id, "ingest: lead moved to an excluded status, booking deactivated");
                Some(b.id)
            }
            None => None,
        };
        return Ok(LeadOutcome::Excluded { deactivated });
    }

    let (booking_id, created) = write_booking(tx, lead, booking.as_ref(), client_id).await?;
    let enqueued = match &client {
        Some(c) => enqueue_zoho_work(tx, &[c.id], &[booking_id]).await?,
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

/// The lead's client. Excluded leads never create one: the bot-answered
/// noise stays out of the ERP, but an existing client is still linked.
async fn lead_client(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    contact: Option<&MappedContact>,
) -> Result<Option<ClientOutcome>, DbError> {
    let Some(c) = contact.map(ClientInput::from) else {
        return Ok(None);
    };
    if !lead.excluded {
        return Ok(Some(upsert_client(tx, &c).await?));
    }
    Ok(find_client(tx, &c).await?.map(|(id, _)| ClientOutcome {
        id,
        created: false,
        applied: false,
    }))
}

/// The bookable lead's vehicle and booking; returns (booking id, created).
async fn write_booking(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    found: Option<&LeadBooking>,
    client_id: Option<Uuid>,
) -> Result<(Uuid, bool), DbError> {
    let vehicle_id = match lead.vehicle_enum_id {
        Some(enum_id) => {
            let name = lead.vehicle_name.as_deref().unwrap_or_default();
            Some(vehicles::upsert_kommo(tx, enum_id, name).await?)
        }
        None => None,
    };
    let (booking_id, created) = match found {
        Some(b) => {
            bookings::update_from_lead(tx, b.id, lead, client_id, vehicle_id).await?;
            (b.id, false)
        }
        None => (
            bookings::insert_from_lead(tx, lead, client_id, vehicle_id).await?,
            true,
        ),
    };
    bookings::set_primary_vehicle(tx, booking_id, vehicle_id).await?;
    Ok((booking_id, created))
}

/// A lead deleted in Kommo: its booking is deactivated (its Zoho order, if
/// any, cancelled) and its sales lead archived. Nothing is removed, so a
/// restore brings it back.
pub async fn delete_lead(tx: &Transaction<'_>, lead_id: i64) -> Result<(u64, u64), DbError> {
    lock_lead(tx, lead_id).await?;
    let deactivated = bookings::deactivate_deleted_lead(tx, lead_id).await?;
    enqueue_zoho_work(tx, &[], &deactivated).await?;
    let leads = sales_leads::archive_deleted_lead(tx, lead_id).await?;
    sales_leads::record_deletion(tx, lead_id).await?;
    Ok((deactivated.len() as u64, leads))
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
        enqueue_zoho_work(tx, &[out.id], &[]).await?
    } else {
        Enqueued::default()
    };
    Ok(Some((out, enqueued)))
}
