//! A full refresh's snapshot written into the ERP tables: set-based
//! statements over one run's staging rows, in the order the rows depend on
//! each other. Each statement sits beside the per-row writes of its table.
//!
//! The snapshot and the webhook processor write the same rows. Row locks
//! alone would be taken in opposite orders (the processor locks a booking
//! then its client, the snapshot clients then bookings), so both first take
//! one advisory lock: the processor shared, the snapshot exclusive.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{bookings, clients, execute_cached, sales_leads, vehicles};
use crate::platform::db::DbError;

/// Advisory lock (`bigint` key space) between the snapshot and per-row
/// Kommo ingest ("KSWAP").
const SNAPSHOT_LOCK: i64 = 0x4b_5357_4150;

/// Taken by every transaction that applies Kommo deliveries, before its
/// first row lock: many deliveries run side by side, none beside a swap.
/// Released at commit.
pub async fn share_lock(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), DbError> {
    execute_cached(
        tx,
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&SNAPSHOT_LOCK],
    )
    .await?;
    Ok(())
}

/// [`share_lock`] for the outbox drain's settle and lease rescue, which write
/// Zoho ids and sync states onto clients and bookings in batches: without it
/// a settle and a swap could lock the same rows in opposite orders.
pub async fn share_lock_uncached(tx: &tokio_postgres::Transaction<'_>) -> Result<(), DbError> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SNAPSHOT_LOCK])
        .await?;
    Ok(())
}

/// Taken by the swap's transaction before its first row lock; waits for the
/// deliveries in flight and holds new ones back until commit.
pub async fn exclusive_lock(tx: &tokio_postgres::Transaction<'_>) -> Result<(), DbError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SNAPSHOT_LOCK])
        .await?;
    Ok(())
}

/// Which production rows a run answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The run's `created_at` bounds, both inclusive (those its fetch used).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Leads missing from staging that Kommo confirmed it still has (offset
    /// paging skipped them): kept as they are.
    pub kept: Vec<i64>,
}

/// Replaces the Kommo-derived rows of `scope` with run `run_id`'s, inside
/// the caller's transaction, which holds [`exclusive_lock`]. Rows changed in
/// Kommo after `started_at` are left alone. Returns the bookings and sales
/// leads of the scope deactivated or archived.
pub async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    started_at: DateTime<Utc>,
    scope: &Scope,
) -> Result<u64, DbError> {
    // Soft-delete the scope's current Kommo data first.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&run_id, &started_at, &scope.from, &scope.to, &scope.kept];
    let mut deactivated = tx.execute(bookings::DEACTIVATE_STALE, &params).await?;
    deactivated += tx.execute(sales_leads::ARCHIVE_STALE, &params).await?;
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
    Ok(deactivated)
}
