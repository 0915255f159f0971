//! Which clients and bookings Zoho is behind on, and their work queued.
//!
//! A client or booking needs Zoho work when Zoho has no record of it yet, or
//! when the fingerprint of the fields its Zoho record is built from
//! (`zoho_contact_fingerprint`, `zoho_order_fingerprint`, migration V10)
//! differs from the one stored at its last successful sync. So a re-delivery
//! or a change to another column queues nothing, and several changes before
//! a drain meet the live row's dedupe key and make one call.
//!
//! One statement per table decides and enqueues, fed either the ids a change
//! touched (producers, in their transaction; the drain's settle) or a
//! keyset page (reconcile). `ON CONFLICT` on the dedupe key makes it safe
//! beside a running drain.

use uuid::Uuid;

use super::OutboxError;

/// The tail both statements share: insert the due rows (one live row per
/// event and entity) and report.
macro_rules! enqueue_due {
    ($entity:literal) => {
        concat!(
            "ins AS (
                 INSERT INTO integrations_outbox
                        (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
                 SELECT '",
            $entity,
            "', d.id, 'zoho', d.event_type, d.payload, d.event_type || ':' || d.id
                   FROM due d
                 ON CONFLICT (dedupe_key) WHERE status IN ('pending', 'processing') DO NOTHING
                 RETURNING 1)
             SELECT (SELECT count(*) FROM page),
                    (SELECT id FROM page ORDER BY id DESC LIMIT 1),
                    (SELECT count(*) FROM ins),
                    coalesce((SELECT array_agg(DISTINCT event_type) FROM due), '{}')"
        )
    };
}

/// The due-work statement over a relation `page` of clients, which
/// `$selection` defines. Returns the rows looked at, the last id among them,
/// the rows inserted and the event types due.
macro_rules! clients_due {
    ($selection:literal) => {
        concat!(
            "WITH page AS (SELECT id, full_name, first_name, last_name, email, phone,
                                  zoho_contact_id, zoho_fingerprint
                             FROM clients ",
            $selection,
            "),
             due AS (
                 SELECT p.id, CASE WHEN p.zoho_contact_id IS NULL THEN 'contact.upsert'
                                   ELSE 'contact.update' END AS event_type,
                        jsonb_build_object('client_id', p.id) AS payload
                   FROM page p
                  WHERE p.zoho_contact_id IS NULL
                     OR p.zoho_fingerprint IS DISTINCT FROM zoho_contact_fingerprint(
                            p.full_name, p.first_name, p.last_name, p.email, p.phone)),",
            enqueue_due!("client")
        )
    };
}

/// The same over bookings. A booking needs a client (Zoho's order needs a
/// contact); one never sent needs creating only while active; one Zoho holds
/// is updated on any change, deactivation included (its order is cancelled).
macro_rules! bookings_due {
    ($selection:literal) => {
        concat!(
            "WITH page AS (SELECT id, client_id, title, external_code, total_amount, currency,
                                  start_at, end_at, status, is_active, zoho_sales_order_id,
                                  zoho_fingerprint
                             FROM bookings ",
            $selection,
            "),
             due AS (
                 SELECT p.id, CASE WHEN p.zoho_sales_order_id IS NULL THEN 'sales_order.create'
                                   ELSE 'sales_order.update' END AS event_type,
                        jsonb_build_object('booking_id', p.id, 'client_id', p.client_id) AS payload
                   FROM page p
                  WHERE p.client_id IS NOT NULL
                    AND ((p.zoho_sales_order_id IS NULL AND p.is_active)
                         OR (p.zoho_sales_order_id IS NOT NULL
                             AND p.zoho_fingerprint IS DISTINCT FROM zoho_order_fingerprint(
                                     p.client_id, p.title, p.external_code, p.total_amount,
                                     p.currency, p.start_at, p.end_at, p.status, p.is_active)))),",
            enqueue_due!("booking")
        )
    };
}

const CLIENTS_BY_ID: &str = clients_due!("WHERE id = ANY($1)");
const BOOKINGS_BY_ID: &str = bookings_due!("WHERE id = ANY($1)");
const CLIENTS_PAGE: &str = clients_due!(
    "WHERE id > coalesce($1, '00000000-0000-0000-0000-000000000000'::uuid) ORDER BY id LIMIT $2"
);
const BOOKINGS_PAGE: &str = bookings_due!(
    "WHERE id > coalesce($1, '00000000-0000-0000-0000-000000000000'::uuid) ORDER BY id LIMIT $2"
);

/// Which table a statement looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Clients,
    Bookings,
}

/// What one statement found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Rows looked at.
    pub scanned: i64,
    /// The greatest id looked at (a page's cursor).
    pub last_id: Option<Uuid>,
    /// Outbox rows inserted; due rows that already had a live row are not.
    pub inserted: i64,
    /// Event types due, each once (a live row exists for each afterwards).
    pub events: Vec<String>,
}

async fn query_due<S: ?Sized + tokio_postgres::ToStatement>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &S,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Due, OutboxError> {
    let r = tx.query_one(sql, params).await?;
    Ok(Due {
        scanned: r.try_get(0)?,
        last_id: r.try_get(1)?,
        inserted: r.try_get(2)?,
        events: r.try_get(3)?,
    })
}

/// Queues the Zoho work these rows need, in the caller's transaction (the
/// one that changed them, so the ERP and the outbox cannot disagree).
pub async fn enqueue_changed(
    tx: &tokio_postgres::Transaction<'_>,
    table: Table,
    ids: &[Uuid],
) -> Result<Due, OutboxError> {
    if ids.is_empty() {
        return Ok(Due::default());
    }
    query_due(tx, by_id(table), &[&ids]).await
}

/// [`enqueue_changed`] through the connection's statement cache, for the
/// webhook processor, which runs it for every lead.
pub async fn enqueue_changed_cached(
    tx: &deadpool_postgres::Transaction<'_>,
    table: Table,
    ids: &[Uuid],
) -> Result<Due, OutboxError> {
    if ids.is_empty() {
        return Ok(Due::default());
    }
    let statement = tx.prepare_cached(by_id(table)).await?;
    query_due(tx, &statement, &[&ids]).await
}

fn by_id(table: Table) -> &'static str {
    match table {
        Table::Clients => CLIENTS_BY_ID,
        Table::Bookings => BOOKINGS_BY_ID,
    }
}

/// The same over the `limit` rows after `after` in id order (reconcile).
pub async fn enqueue_page(
    tx: &tokio_postgres::Transaction<'_>,
    table: Table,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Due, OutboxError> {
    let sql = match table {
        Table::Clients => CLIENTS_PAGE,
        Table::Bookings => BOOKINGS_PAGE,
    };
    query_due(tx, sql, &[&after, &limit]).await
}
