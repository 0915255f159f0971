//! The drain's SQL reads: the clients and bookings a batch needs, which
//! clients already hold a Zoho contact id, and the queue's oldest age.

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize};
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::outbox::{store::ClaimedRow, OutboxError};

#[derive(Debug, Clone, Deserialize)]
pub(super) struct ClientRow {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub zoho_contact_id: Option<String>,
    /// `zoho_contact_fingerprint` of the fields above, as loaded: what is
    /// stored once Zoho accepts the record built from them.
    pub fingerprint: String,
    /// Zoho holds this record as it is now (its id and fingerprint stored).
    pub in_step: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct BookingRow {
    pub client_id: Option<Uuid>,
    pub title: Option<String>,
    pub external_code: Option<String>,
    pub total: Option<f64>,
    pub currency: Option<String>,
    /// In Zoho's datetime format, UTC.
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    pub status: String,
    pub is_active: bool,
    pub zoho_sales_order_id: Option<String>,
    /// `zoho_order_fingerprint` of the fields above, as loaded.
    pub fingerprint: String,
    /// Zoho holds this order as it is now (its id and fingerprint stored).
    pub in_step: bool,
}

pub(super) type Clients = HashMap<Uuid, ClientRow>;
pub(super) type Bookings = HashMap<Uuid, BookingRow>;

/// The bookings of the order rows, and the clients of the contact rows and
/// of those bookings.
pub(super) async fn clients_and_bookings(
    conn: &tokio_postgres::Client,
    contact_rows: &[ClaimedRow],
    order_rows: &[ClaimedRow],
) -> Result<(Clients, Bookings), OutboxError> {
    let booking_ids: Vec<Uuid> = order_rows.iter().map(|r| r.entity_id).collect();
    let bookings = bookings(conn, &booking_ids).await?;
    let mut client_ids: Vec<Uuid> = contact_rows.iter().map(|r| r.entity_id).collect();
    client_ids.extend(bookings.values().filter_map(|b| b.client_id));
    client_ids.sort();
    client_ids.dedup();
    Ok((clients(conn, &client_ids).await?, bookings))
}

/// Rows by id, from `sql`: it takes the ids as `$1` and returns each row's
/// id and its fields as one JSON object, so each row type is decoded by its
/// field names. No query for no ids.
async fn by_id<T: DeserializeOwned>(
    conn: &tokio_postgres::Client,
    sql: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, T>, OutboxError> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in conn.query(sql, &[&ids]).await? {
        let Json(row) = r.try_get(1)?;
        out.insert(r.try_get(0)?, row);
    }
    Ok(out)
}

async fn bookings(conn: &tokio_postgres::Client, ids: &[Uuid]) -> Result<Bookings, OutboxError> {
    by_id(
        conn,
        "SELECT b.id, to_jsonb(b)
           FROM (SELECT id, client_id, title, external_code, total_amount::float8 AS total,
                        currency, zoho_sales_order_id, status, is_active,
                        to_char(start_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')
                            AS start_at,
                        to_char(end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')
                            AS end_at,
                        f.fingerprint,
                        coalesce(zoho_sales_order_id IS NOT NULL
                                 AND zoho_fingerprint = f.fingerprint, false) AS in_step
                   FROM bookings,
                        LATERAL (SELECT zoho_order_fingerprint(client_id, title, external_code,
                                        total_amount, currency, start_at, end_at, status,
                                        is_active) AS fingerprint) f
                  WHERE id = ANY($1)) b",
        ids,
    )
    .await
}

async fn clients(conn: &tokio_postgres::Client, ids: &[Uuid]) -> Result<Clients, OutboxError> {
    by_id(
        conn,
        "SELECT c.id, to_jsonb(c)
           FROM (SELECT id, first_name, last_name, full_name, email, phone, zoho_contact_id,
                        f.fingerprint,
                        coalesce(zoho_contact_id IS NOT NULL
                                 AND zoho_fingerprint = f.fingerprint, false) AS in_step
                   FROM clients,
                        LATERAL (SELECT zoho_contact_fingerprint(full_name, first_name, last_name,
                                        email, phone) AS fingerprint) f
                  WHERE id = ANY($1)) c",
        ids,
    )
    .await
}

/// The client already linked to each of these Zoho contact ids.
pub(super) async fn contact_owners(
    conn: &tokio_postgres::Client,
    zoho_ids: &[String],
) -> Result<HashMap<String, Uuid>, OutboxError> {
    let mut owner_of = HashMap::new();
    for r in conn
        .query(
            "SELECT id, zoho_contact_id FROM clients WHERE zoho_contact_id = ANY($1)",
            &[&zoho_ids],
        )
        .await?
    {
        owner_of.insert(r.try_get(1)?, r.try_get(0)?);
    }
    Ok(owner_of)
}

/// Seconds since the oldest pending row was created; 0 when none is.
pub(super) async fn oldest_pending_age(conn: &tokio_postgres::Client) -> Result<f64, OutboxError> {
    let row = conn
        .query_one(
            "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
               FROM integrations_outbox WHERE status = 'pending'",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}
