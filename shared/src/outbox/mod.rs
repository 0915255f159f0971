//! The integrations outbox: enqueue, claim with a lease, settle, requeue.
//!
//! Producers (the webhook processor, manual bookings) call [`enqueue`] in
//! their own transaction. The drain ([`Drain`]) claims due rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, sends them to Zoho and settles each
//! row: succeeded, retried with backoff, failed, or handed back uncharged.
//!
//! Payload convention: `contact.upsert` and `contact.update` carry
//! `{"client_id": uuid}` on entity `client`; `sales_order.create` and
//! `sales_order.update` carry `{"booking_id": uuid, "client_id": uuid}` on
//! entity `booking`. The dedupe key is `"<event_type>:<entity_id>"`, unique
//! among live (pending or processing) rows. A row names what to sync, not
//! what to send: the drain sends the row's latest state.
//!
//! Which work a change needs is decided in [`lockstep`] (only real changes
//! of the fields Zoho receives); [`reconcile`] finds whatever was left behind.

pub mod alerts;
mod backoff;
mod drain;
pub mod lockstep;
pub mod reconcile;
mod store;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::platform::db::DbError;

pub use backoff::backoff;
pub use drain::{Drain, DrainReport, StopReason};
pub use reconcile::{reconcile, reconcile_live, ReconcileLimits, ReconcileReport};
pub use store::{
    claim, counts_by_event, requeue_failed, rescue_expired, status_counts, ClaimedRow,
};

pub const EVENT_CONTACT_UPSERT: &str = "contact.upsert";
pub const EVENT_SALES_ORDER_CREATE: &str = "sales_order.create";
/// A change to a client whose Zoho contact id is known: updated by that id.
pub const EVENT_CONTACT_UPDATE: &str = "contact.update";
/// A change to a booking Zoho holds an order of: updated by its id (or by
/// the unique booking-id field when the id is unknown); never deleted.
pub const EVENT_SALES_ORDER_UPDATE: &str = "sales_order.update";
pub const ENTITY_CLIENT: &str = "client";
pub const ENTITY_BOOKING: &str = "booking";
pub const TARGET_ZOHO: &str = "zoho";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for OutboxError {
    fn from(e: tokio_postgres::Error) -> Self {
        OutboxError::Db(DbError::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for OutboxError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        OutboxError::Db(DbError::Pool(e))
    }
}

/// `"<event_type>:<entity_id>"`: at most one live row per event and entity.
pub fn dedupe_key(event_type: &str, entity_id: Uuid) -> String {
    format!("{event_type}:{entity_id}")
}

/// Adds a Zoho task in the caller's transaction. Returns false when an
/// identical task is already pending or processing (nothing is inserted).
pub async fn enqueue(
    tx: &tokio_postgres::Transaction<'_>,
    entity_type: &str,
    entity_id: Uuid,
    event_type: &str,
    payload: &Value,
) -> Result<bool, OutboxError> {
    let key = dedupe_key(event_type, entity_id);
    let n = tx
        .execute(
            "INSERT INTO integrations_outbox
                 (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (dedupe_key) WHERE status IN ('pending', 'processing') DO NOTHING",
            &[
                &entity_type,
                &entity_id,
                &TARGET_ZOHO,
                &event_type,
                payload,
                &key,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// `contact.upsert` for a client.
pub async fn enqueue_contact_upsert(
    tx: &tokio_postgres::Transaction<'_>,
    client_id: Uuid,
) -> Result<bool, OutboxError> {
    enqueue(
        tx,
        ENTITY_CLIENT,
        client_id,
        EVENT_CONTACT_UPSERT,
        &json!({"client_id": client_id}),
    )
    .await
}

/// `sales_order.create` for a booking of `client_id`.
pub async fn enqueue_sales_order_create(
    tx: &tokio_postgres::Transaction<'_>,
    booking_id: Uuid,
    client_id: Uuid,
) -> Result<bool, OutboxError> {
    enqueue(
        tx,
        ENTITY_BOOKING,
        booking_id,
        EVENT_SALES_ORDER_CREATE,
        &json!({"booking_id": booking_id, "client_id": client_id}),
    )
    .await
}
