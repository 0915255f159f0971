//! The Zoho work an ERP change causes: `contact.upsert` and
//! `sales_order.create` rows in `integrations_outbox`, in the change's
//! transaction. Used by webhook ingest and manual bookings alike.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::{
    outbox::{self, OutboxError},
    platform::db::DbError,
};

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
