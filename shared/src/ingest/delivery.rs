//! Applying one recorded delivery, event by event, in one transaction that
//! also marks it processed: all of it or none of it.

use uuid::Uuid;

use super::{
    apply::{apply_lead, delete_lead, lock_leads, refresh_contact, LeadOutcome},
    events::{lock_event, mark_processed},
    fetch::Fetched,
    IngestError,
};
use crate::{
    erp::{self, ClientInput},
    kommo::webhook::{Action, Delivery, Entity, Event},
    platform::db::{DbError, DbPool, PooledTransaction},
};

/// Applies a delivery recorded as `event_id`. `Ok(false)`: a concurrent copy
/// got there first.
pub async fn apply_delivery(
    pool: &DbPool,
    event_id: Uuid,
    delivery: &Delivery,
    fetched: &Fetched,
) -> Result<bool, IngestError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    // Before any row lock: a full refresh's swap holds it exclusively.
    erp::snapshot::share_lock(&tx).await?;
    let row = lock_event(&tx, event_id).await?;
    if row.status == "processed" {
        tx.commit().await.map_err(DbError::from)?;
        tracing::info!("processor: delivery already processed by a concurrent copy");
        return Ok(false);
    }
    let lead_ids: Vec<i64> = delivery
        .events
        .iter()
        .filter(|e| e.entity == Entity::Lead)
        .map(|e| e.id)
        .collect();
    lock_leads(&tx, &lead_ids).await?;
    for ev in &delivery.events {
        apply_event(&tx, ev, fetched).await?;
    }
    let parsed = serde_json::to_value(delivery).unwrap_or(serde_json::Value::Null);
    mark_processed(&tx, event_id, &parsed).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(true)
}

async fn apply_event(
    tx: &PooledTransaction<'_>,
    ev: &Event,
    fetched: &Fetched,
) -> Result<(), IngestError> {
    match (ev.entity, ev.action) {
        (Entity::Lead, Action::Delete) if fetched.leads.contains_key(&ev.id) => {
            tracing::info!(
                lead_id = ev.id,
                "processor: lead exists in Kommo again, late delete ignored"
            );
        }
        (Entity::Lead, Action::Delete) => {
            let (bookings, leads) = delete_lead(tx, ev.id).await?;
            tracing::info!(lead_id = ev.id, bookings, leads, "processor: lead deleted");
        }
        (Entity::Lead, Action::Note) => {
            tracing::info!(lead_id = ev.id, "processor: lead note ignored");
        }
        (Entity::Lead, _) => apply_lead_event(tx, ev, fetched).await?,
        (Entity::Contact, Action::Delete) => {
            // Clients are ERP records with bookings attached; a Kommo delete does not remove them.
            tracing::info!(contact_id = ev.id, "processor: contact delete ignored");
        }
        (Entity::Contact, Action::Note) => {
            tracing::info!(contact_id = ev.id, "processor: contact note ignored");
        }
        (Entity::Contact, _) => apply_contact_event(tx, ev, fetched).await?,
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

async fn apply_lead_event(
    tx: &PooledTransaction<'_>,
    ev: &Event,
    fetched: &Fetched,
) -> Result<(), IngestError> {
    let (lead, contact) = match fetched.leads.get(&ev.id) {
        Some(Ok(found)) => found,
        Some(Err(e)) => return Err(IngestError::Mapping(e.clone())),
        None => {
            // Deleted since the hook was sent; its delete delivery follows.
            tracing::warn!(lead_id = ev.id, action = ?ev.action, "processor: lead not found in Kommo, skipped");
            return Ok(());
        }
    };
    match apply_lead(tx, lead, contact.as_ref()).await? {
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
    Ok(())
}

async fn apply_contact_event(
    tx: &PooledTransaction<'_>,
    ev: &Event,
    fetched: &Fetched,
) -> Result<(), IngestError> {
    match fetched.contacts.get(&ev.id) {
        Some(Err(e)) => return Err(IngestError::Mapping(e.clone())),
        Some(Ok(c)) => match refresh_contact(tx, &ClientInput::from(c)).await? {
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
    }
    Ok(())
}
