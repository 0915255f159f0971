//! The ERP tables Kommo feeds: `clients`, `bookings`, `sales_leads`, `vehicles`.
//!
//! Every write to them lives here, whoever makes it: webhook ingest and
//! manual bookings write one row at a time, the full refresh's swap writes
//! one run's staging rows at once ([`snapshot`]), and the outbox's settle and
//! lease rescue write back Zoho outcomes. Each table's per-row and set-based statements sit side by side in its
//! module and share their column lists, so the two paths cannot drift apart
//! again (they once matched clients by different rules).

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::platform::db::DbError;

/// Rows of `$alias` from before a run (`$1`, started at `$2`), except those
/// changed in Kommo after the snapshot began: a webhook applied them while
/// the run was fetching, and the snapshot must not roll them back. `$key`
/// ties a row to its staged lead `s`.
macro_rules! before_run {
    ($alias:literal, $key:literal) => {
        concat!(
            "(",
            $alias,
            ".kommo_updated_at IS NULL OR ",
            $alias,
            ".kommo_updated_at < $2)
             AND NOT EXISTS (SELECT 1 FROM stg_kommo_leads s
                              WHERE s.run_id = $1 AND ",
            $key,
            "
                                AND ",
            $alias,
            ".kommo_updated_at > s.updated_at)"
        )
    };
}

/// Rows of `$alias` whose Kommo lead was created inside a run's scope
/// (`$3 ..= $4`) and is not one Kommo confirmed it still has (`$5`): a run
/// answers only for the leads it was asked about. A row with no known
/// creation time is outside every scope.
macro_rules! in_scope {
    ($alias:literal) => {
        concat!(
            $alias,
            ".kommo_created_at BETWEEN $3 AND $4 AND NOT (",
            $alias,
            ".kommo_lead_id = ANY($5))"
        )
    };
}

pub mod audit;
pub mod bookings;
pub mod clients;
pub mod sales_leads;
pub mod snapshot;
pub mod vehicles;

pub use bookings::{ClientRef, NewBooking};
pub use clients::{ClientInput, ClientOutcome, MatchedBy};

/// Runs one per-row statement through the connection's statement cache;
/// returns the rows changed.
async fn execute_cached(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, DbError> {
    Ok(tx.execute(&tx.prepare_cached(sql).await?, params).await?)
}

/// Row locks on the bookings, then the clients, that a batch of Zoho
/// outcomes will write back, each in id order. Producers lock a booking,
/// then its client, then insert their outbox row; the outbox settle takes
/// these before it touches its outbox rows, so the two never wait on each
/// other in a circle (a deadlock aborted one of them). `NO KEY UPDATE` is
/// what the settle's own UPDATEs take: bookings may still reference the
/// clients meanwhile.
pub async fn lock_for_zoho_outcomes(
    tx: &tokio_postgres::Transaction<'_>,
    booking_ids: &[uuid::Uuid],
    client_ids: &[uuid::Uuid],
) -> Result<(), DbError> {
    for (sql, ids) in [
        (
            "SELECT 1 FROM bookings WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            booking_ids,
        ),
        (
            "SELECT 1 FROM clients WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            client_ids,
        ),
    ] {
        if !ids.is_empty() {
            tx.execute(sql, &[&ids]).await?;
        }
    }
    Ok(())
}
