//! `bookings` (with their `booking_vehicles` links and manual calendar
//! entries): from Kommo leads one at a time, from a full refresh's staging
//! rows at once, typed by staff, and settled by Zoho.
//!
//! A Kommo booking is keyed by `source_payload_id = 'kommo:<lead id>'`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use tokio_postgres::types::ToSql;

use super::{clients::ClientInput, execute_cached};
use crate::{kommo::MappedLead, platform::db::DbError};

/// The columns a Kommo lead writes into its booking, per row and per run.
macro_rules! kommo_booking_columns {
    () => {
        "source_payload_id, channel, created_by, owner_id, client_id, kommo_lead_id, \
         kommo_pipeline_id, kommo_status_id, status, source, title, start_at, end_at, vehicle_id, \
         total_amount, kommo_updated_at, kommo_created_at"
    };
}

/// What a newer lead overwrites in its booking, per row and per run; the
/// client link, the key and the activity are set beside it.
macro_rules! kommo_booking_overwrites {
    () => {
        "(owner_id, kommo_lead_id, kommo_pipeline_id, kommo_status_id, status, source, title, \
          start_at, end_at, vehicle_id, total_amount, kommo_updated_at, kommo_created_at)"
    };
}

/// A lead's booking as found before applying the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadBooking {
    pub id: Uuid,
    pub kommo_updated_at: Option<DateTime<Utc>>,
}

/// Finds and locks a lead's booking: by `source_payload_id`, or by an
/// `external_code` equal to the lead id, so a manual booking typed during a
/// Kommo outage with the lead's number is adopted instead of duplicated.
pub async fn find_for_lead(
    tx: &Transaction<'_>,
    lead: &MappedLead,
) -> Result<Option<LeadBooking>, DbError> {
    let row = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT id, kommo_updated_at FROM bookings
              WHERE source_payload_id = $1 OR (external_code IS NOT NULL AND external_code = $2)
              ORDER BY (source_payload_id = $1) DESC NULLS LAST
              LIMIT 1 FOR UPDATE",
            )
            .await?,
            &[&lead.source_payload_id(), &lead.lead_code()],
        )
        .await?;
    Ok(row.map(|r| LeadBooking {
        id: r.get(0),
        kommo_updated_at: r.get(1),
    }))
}

/// A lead moved to an excluded status: its booking stays, inactive.
pub async fn deactivate_excluded(
    tx: &Transaction<'_>,
    id: Uuid,
    lead: &MappedLead,
) -> Result<(), DbError> {
    execute_cached(
        tx,
        "UPDATE bookings SET is_active = false, kommo_status_id = $2, status = $3,
                kommo_updated_at = $4, updated_at = now()
          WHERE id = $1",
        &[
            &id,
            &lead.status_id,
            &lead.booking_status,
            &lead.kommo_updated_at,
        ],
    )
    .await?;
    Ok(())
}

/// What a lead writes into its booking, per row.
struct LeadRow<'a> {
    lead: &'a MappedLead,
    client_id: Option<Uuid>,
    vehicle_id: Option<Uuid>,
    source_payload_id: String,
}

impl<'a> LeadRow<'a> {
    fn new(lead: &'a MappedLead, client_id: Option<Uuid>, vehicle_id: Option<Uuid>) -> Self {
        LeadRow {
            lead,
            client_id,
            vehicle_id,
            source_payload_id: lead.source_payload_id(),
        }
    }

    /// The values of [`kommo_booking_columns!`] a lead sets, in the order of
    /// the placeholders both statements below use (after the insert's fixed
    /// channel and creator).
    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        let l = self.lead;
        [
            &self.source_payload_id,
            &l.owner_staff_id,
            &self.client_id,
            &l.lead_id,
            &l.pipeline_id,
            &l.status_id,
            &l.booking_status,
            &l.source,
            &l.name,
            &l.start_at,
            &l.end_at,
            &self.vehicle_id,
            &l.price,
            &l.kommo_updated_at,
            &l.created_at,
        ]
    }
}

/// Rewrites a found booking from its lead; an adopted manual booking keeps
/// its channel and gains the lead's `source_payload_id`.
pub async fn update_from_lead(
    tx: &Transaction<'_>,
    id: Uuid,
    lead: &MappedLead,
    client_id: Option<Uuid>,
    vehicle_id: Option<Uuid>,
) -> Result<(), DbError> {
    let row = LeadRow::new(lead, client_id, vehicle_id);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
    params.extend(row.params());
    execute_cached(
        tx,
        concat!(
            "UPDATE bookings SET
                 source_payload_id = coalesce(source_payload_id, $2),
                 client_id = coalesce($4, client_id), is_active = true, updated_at = now(), ",
            kommo_booking_overwrites!(),
            " = ($3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::bigint::numeric, $15, $16)
              WHERE id = $1"
        ),
        &params,
    )
    .await?;
    Ok(())
}

/// A new booking for a lead.
pub async fn insert_from_lead(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    client_id: Option<Uuid>,
    vehicle_id: Option<Uuid>,
) -> Result<Uuid, DbError> {
    let row = LeadRow::new(lead, client_id, vehicle_id);
    let stmt = tx
        .prepare_cached(concat!(
            "INSERT INTO bookings (",
            kommo_booking_columns!(),
            ") VALUES ($1, 'Kommo', 'system-kommo', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                       $12, $13::bigint::numeric, $14, $15)
             RETURNING id"
        ))
        .await?;
    Ok(tx.query_one(&stmt, &row.params()).await?.get(0))
}

/// Makes `vehicle_id` the booking's primary vehicle, or removes the primary
/// link when the lead has none.
pub async fn set_primary_vehicle(
    tx: &Transaction<'_>,
    booking_id: Uuid,
    vehicle_id: Option<Uuid>,
) -> Result<(), DbError> {
    let Some(vid) = vehicle_id else {
        execute_cached(
            tx,
            "DELETE FROM booking_vehicles WHERE booking_id = $1 AND \"primary\"",
            &[&booking_id],
        )
        .await?;
        return Ok(());
    };
    execute_cached(
        tx,
        "DELETE FROM booking_vehicles WHERE booking_id = $1 AND \"primary\" AND vehicle_id <> $2",
        &[&booking_id, &vid],
    )
    .await?;
    execute_cached(
        tx,
        "INSERT INTO booking_vehicles (booking_id, vehicle_id, \"primary\") VALUES ($1, $2, true)
         ON CONFLICT (booking_id, vehicle_id) DO UPDATE SET \"primary\" = true",
        &[&booking_id, &vid],
    )
    .await?;
    Ok(())
}

/// A lead deleted in Kommo: its booking is deactivated, not removed, so a
/// restore brings it back. Returns the bookings changed.
pub async fn deactivate_deleted_lead(
    tx: &Transaction<'_>,
    lead_id: i64,
) -> Result<Vec<Uuid>, DbError> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "UPDATE bookings SET is_active = false, updated_at = now()
                  WHERE source_payload_id = $1 AND is_active
              RETURNING id",
            )
            .await?,
            &[&format!("kommo:{lead_id}")],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// ---------------------------------------------------------------------------
// Manual bookings
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRef {
    Existing(Uuid),
    New(ClientInput),
}

/// A manual booking request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBooking {
    pub external_code: Option<String>,
    pub client: ClientRef,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub vehicle_id: Option<Uuid>,
    pub status: String,
    pub source: Option<String>,
    pub title: Option<String>,
    pub notes: Option<String>,
    /// Kept as text so `numeric(14,2)` receives exactly what staff typed.
    pub total_amount: Option<String>,
    pub currency: Option<String>,
}

/// Inserts a manual booking; `None` when its `external_code` is taken.
pub async fn insert_manual(
    tx: &Transaction<'_>,
    created_by: &str,
    client_id: Uuid,
    b: &NewBooking,
) -> Result<Option<Uuid>, DbError> {
    let row = tx
        .query_opt(
            "INSERT INTO bookings (external_code, channel, created_by, manual_created_by, client_id,
                                   status, source, title, start_at, end_at, vehicle_id, notes,
                                   total_amount, currency)
             VALUES ($1, 'manual', $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::numeric, $12)
             ON CONFLICT (external_code) DO NOTHING
             RETURNING id",
            &[
                &b.external_code,
                &created_by,
                &client_id,
                &b.status,
                &b.source,
                &b.title,
                &b.start_at,
                &b.end_at,
                &b.vehicle_id,
                &b.notes,
                &b.total_amount,
                &b.currency,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Manual bookings are not in `calendar_events_expanded`'s Kommo half, so
/// they get their own calendar entry.
pub async fn add_calendar_entry(
    tx: &Transaction<'_>,
    booking_id: Uuid,
    created_by: &str,
    b: &NewBooking,
) -> Result<(), DbError> {
    let title = b.title.clone().unwrap_or_else(|| match &b.external_code {
        Some(code) => format!("Booking {code}"),
        None => "Manual booking".to_string(),
    });
    tx.execute(
        "INSERT INTO calendar_events (title, start_at, end_at, vehicle_id, booking_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &title,
            &b.start_at,
            &b.end_at,
            &b.vehicle_id,
            &booking_id,
            &created_by,
        ],
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Full refresh (set-based over one run's staging rows)
// ---------------------------------------------------------------------------

/// Deactivates the Kommo bookings of before the run (`$1`, started at `$2`)
/// inside its scope (created `$3 ..= $4`), but for the leads Kommo still has
/// (`$5`).
pub(super) const DEACTIVATE_STALE: &str = concat!(
    "UPDATE bookings b SET is_active = false, updated_at = now()
      WHERE b.channel = 'Kommo' AND b.is_active AND ",
    in_scope!("b"),
    " AND ",
    before_run!("b", "b.source_payload_id = 'kommo:' || s.lead_id")
);

/// Bookings of the run's (`$1`) bookable leads; clients and vehicles are
/// written first.
pub(super) const UPSERT_STAGED: &str = concat!(
    "INSERT INTO bookings (",
    kommo_booking_columns!(),
    ", is_active, created_at, updated_at)
     SELECT 'kommo:' || s.lead_id, 'Kommo', 'system-kommo', s.owner_id, c.id,
            s.lead_id, s.pipeline_id, s.status_id, s.booking_status, s.lead_source,
            nullif(s.name, ''), s.start_at, s.end_at, v.id, s.price,
            s.updated_at, s.created_at, true, coalesce(s.created_at, now()), now()
       FROM stg_kommo_leads s
       LEFT JOIN clients c ON c.kommo_contact_id = s.contact_id
       LEFT JOIN vehicles v ON v.kommo_vehicle_id = s.vehicle_enum_id
      WHERE s.run_id = $1 AND NOT s.excluded
     ON CONFLICT (source_payload_id) DO UPDATE SET
            client_id = EXCLUDED.client_id, is_active = true, updated_at = now(), ",
    kommo_booking_overwrites!(),
    " = (EXCLUDED.owner_id, EXCLUDED.kommo_lead_id, EXCLUDED.kommo_pipeline_id,
            EXCLUDED.kommo_status_id, EXCLUDED.status, EXCLUDED.source, EXCLUDED.title,
            EXCLUDED.start_at, EXCLUDED.end_at, EXCLUDED.vehicle_id, EXCLUDED.total_amount,
            EXCLUDED.kommo_updated_at, EXCLUDED.kommo_created_at)
      WHERE bookings.channel = 'Kommo'
        AND (bookings.kommo_updated_at IS NULL
             OR bookings.kommo_updated_at <= EXCLUDED.kommo_updated_at)"
);

/// The run's (`$1`) vehicle links of bookable leads, with their booking `b`
/// and vehicle `v`.
macro_rules! staged_links {
    () => {
        "FROM stg_kommo_booking_vehicles sv
           JOIN stg_kommo_leads s ON s.run_id = sv.run_id AND s.lead_id = sv.lead_id AND NOT s.excluded
           JOIN bookings b ON b.source_payload_id = 'kommo:' || sv.lead_id AND b.channel = 'Kommo'
           JOIN vehicles v ON v.kommo_vehicle_id = sv.vehicle_enum_id
          WHERE sv.run_id = $1"
    };
}

/// The lead's vehicle is the booking's primary one: other primaries of a
/// booking with a staged primary vehicle step down first.
pub(super) const DEMOTE_STAGED_PRIMARIES: &str = concat!(
    "WITH links AS (SELECT b.id AS booking_id, v.id AS vehicle_id ",
    staged_links!(),
    " AND sv.is_primary)
     UPDATE booking_vehicles bv SET \"primary\" = false
       FROM links l
      WHERE bv.booking_id = l.booking_id AND bv.\"primary\" AND bv.vehicle_id <> l.vehicle_id"
);

/// Links the run's (`$1`) vehicles to their bookings.
pub(super) const LINK_STAGED_VEHICLES: &str = concat!(
    "INSERT INTO booking_vehicles (booking_id, vehicle_id, \"primary\")
     SELECT DISTINCT ON (b.id, v.id) b.id, v.id, sv.is_primary ",
    staged_links!(),
    " ORDER BY b.id, v.id, sv.is_primary DESC
     ON CONFLICT (booking_id, vehicle_id) DO UPDATE SET \"primary\" = EXCLUDED.\"primary\""
);

// ---------------------------------------------------------------------------
// Zoho settle (set-based over a drained batch)
// ---------------------------------------------------------------------------

/// Sales orders Zoho created or updated: the booking is synced, with the
/// fingerprint of what Zoho received (None: only the id was learnt).
pub async fn set_sales_orders(
    tx: &tokio_postgres::Transaction<'_>,
    booking_ids: &[Uuid],
    zoho_ids: &[String],
    fingerprints: &[Option<String>],
) -> Result<(), DbError> {
    if booking_ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE bookings b
            SET zoho_sales_order_id = u.zid, zoho_sync_status = 'synced', updated_at = now(),
                zoho_fingerprint = coalesce(u.fp, b.zoho_fingerprint),
                zoho_synced_at = CASE WHEN u.fp IS NULL THEN b.zoho_synced_at ELSE now() END
           FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, zid, fp)
          WHERE b.id = u.id",
        &[&booking_ids, &zoho_ids, &fingerprints],
    )
    .await?;
    Ok(())
}

/// Sales orders that failed for good; a booking already synced stays synced.
pub async fn mark_sync_failed(
    tx: &tokio_postgres::Transaction<'_>,
    booking_ids: &[Uuid],
) -> Result<(), DbError> {
    if booking_ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE bookings SET zoho_sync_status = 'failed', updated_at = now()
          WHERE id = ANY($1) AND zoho_sync_status <> 'synced'",
        &[&booking_ids],
    )
    .await?;
    Ok(())
}
