//! A full refresh's snapshot written into the ERP tables: set-based
//! statements over one run's staging rows, in the order the rows depend on
//! each other. Each statement sits beside the per-row writes of its table.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{bookings, clients, sales_leads, vehicles};
use crate::platform::db::DbError;

/// Replaces the Kommo-derived rows with run `run_id`'s, inside the caller's
/// transaction. Rows changed in Kommo after `started_at` are left alone.
pub async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    started_at: DateTime<Utc>,
) -> Result<(), DbError> {
    // Soft-delete current Kommo data first.
    tx.execute(bookings::DEACTIVATE_STALE, &[&run_id, &started_at])
        .await?;
    tx.execute(sales_leads::ARCHIVE_STALE, &[&run_id, &started_at])
        .await?;
    for statement in [
        // Clients, matched to existing ones exactly as webhook ingest does.
        clients::UPDATE_STAGED,
        clients::INSERT_STAGED,
        // Every staged lead, excluded statuses included.
        sales_leads::UPSERT_STAGED,
        // Vehicles before bookings, so bookings can point at them.
        vehicles::INSERT_STAGED,
        // Bookable leads only.
        bookings::UPSERT_STAGED,
        bookings::DEMOTE_STAGED_PRIMARIES,
        bookings::LINK_STAGED_VEHICLES,
    ] {
        tx.execute(statement, &[&run_id]).await?;
    }
    Ok(())
}
