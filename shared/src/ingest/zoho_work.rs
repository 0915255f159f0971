//! The Zoho work an ERP change causes, queued in the change's transaction:
//! a contact or sales order that Zoho has not got yet is created, and one
//! whose Zoho-bound fields really changed is updated (see
//! [`crate::outbox::lockstep`]). Used by webhook ingest and manual bookings.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::{
    outbox::{
        lockstep::{enqueue_changed_cached, Table},
        OutboxError, EVENT_CONTACT_UPDATE, EVENT_CONTACT_UPSERT, EVENT_SALES_ORDER_CREATE,
        EVENT_SALES_ORDER_UPDATE,
    },
    platform::db::DbError,
};

/// Which Zoho tasks a change needs. For each, a live (pending or
/// processing) row exists afterwards: an identical one may have been there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub contact_upsert: bool,
    pub contact_update: bool,
    pub sales_order_create: bool,
    pub sales_order_update: bool,
}

impl Enqueued {
    /// The event types, in a fixed order (the manual booking's answer).
    pub fn events(&self) -> Vec<&'static str> {
        [
            (self.contact_upsert, EVENT_CONTACT_UPSERT),
            (self.contact_update, EVENT_CONTACT_UPDATE),
            (self.sales_order_create, EVENT_SALES_ORDER_CREATE),
            (self.sales_order_update, EVENT_SALES_ORDER_UPDATE),
        ]
        .into_iter()
        .filter_map(|(due, event)| due.then_some(event))
        .collect()
    }
}

fn outbox_err(e: OutboxError) -> DbError {
    match e {
        OutboxError::Db(e) => e,
    }
}

/// Queues what these clients and bookings need after a change; nothing
/// when Zoho already holds exactly their current Zoho-bound fields.
pub async fn enqueue_zoho_work(
    tx: &Transaction<'_>,
    clients: &[Uuid],
    bookings: &[Uuid],
) -> Result<Enqueued, DbError> {
    let c = enqueue_changed_cached(tx, Table::Clients, clients)
        .await
        .map_err(outbox_err)?;
    let b = enqueue_changed_cached(tx, Table::Bookings, bookings)
        .await
        .map_err(outbox_err)?;
    let due = |events: &[String], e: &str| events.iter().any(|x| x == e);
    Ok(Enqueued {
        contact_upsert: due(&c.events, EVENT_CONTACT_UPSERT),
        contact_update: due(&c.events, EVENT_CONTACT_UPDATE),
        sales_order_create: due(&b.events, EVENT_SALES_ORDER_CREATE),
        sales_order_update: due(&b.events, EVENT_SALES_ORDER_UPDATE),
    })
}
