//! Reconcile: every client and booking Zoho is behind on gets its work
//! queued, whatever left it behind (rows stubbed while `enableZohoLive` was
//! off, a full refresh's bookings, drift).
//!
//! A pass walks `clients`, then `bookings`, in id order, one page per
//! transaction, each page decided and enqueued by one statement
//! ([`super::lockstep`]). The cursor lives in `zoho_reconcile_cursor`, so a
//! pass cut short by its page budget or the deadline resumes where it
//! stopped; the cursor row's lock makes concurrent reconciles take turns;
//! the dedupe key makes it safe beside the drain. Rows in step queue nothing.
//! Deployed functions run [`reconcile_live`], which waits for `enableZohoLive`.

use serde::Serialize;
use uuid::Uuid;

use super::{
    lockstep::{enqueue_page, Table},
    OutboxError,
};
use crate::platform::{
    deadline::Deadline,
    flags::{FeatureFlags, Flag},
};

/// Rows looked at per statement: 50,000 in-step bookings take ten pages.
pub const DEFAULT_PAGE_ROWS: i64 = 5_000;
/// Pages per invocation, whatever the deadline still allows.
pub const DEFAULT_MAX_PAGES: u32 = 200;

/// How much one reconcile may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileLimits {
    pub page_rows: i64,
    pub max_pages: u32,
}

impl Default for ReconcileLimits {
    fn default() -> Self {
        ReconcileLimits {
            page_rows: DEFAULT_PAGE_ROWS,
            max_pages: DEFAULT_MAX_PAGES,
        }
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub pages: u32,
    pub clients_scanned: i64,
    pub bookings_scanned: i64,
    /// Outbox rows queued (work that already had a live row is not counted).
    pub enqueued: i64,
    /// True when a pass reached the end of `bookings`; false when the budget
    /// or the deadline stopped it first (the next reconcile resumes it).
    pub complete: bool,
    /// Why nothing was looked at, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The reconcile of a deployed function: none while `enableZohoLive` is off,
/// because the work would only be stubbed (and re-queued by every daily
/// reconcile); going live runs one.
pub async fn reconcile_live(
    conn: &mut tokio_postgres::Client,
    flags: &FeatureFlags,
    deadline: Deadline,
    limits: ReconcileLimits,
) -> Result<ReconcileReport, OutboxError> {
    if !flags.is_enabled(Flag::ZohoLive).await? {
        tracing::info!("zoho reconcile skipped: enableZohoLive is off");
        return Ok(ReconcileReport {
            skipped: Some("enableZohoLive is off".into()),
            ..ReconcileReport::default()
        });
    }
    reconcile(conn, deadline, limits).await
}

/// Runs pages on `conn` until a pass completes, `limits.max_pages` pages
/// ran, or the deadline is near.
pub async fn reconcile(
    conn: &mut tokio_postgres::Client,
    deadline: Deadline,
    limits: ReconcileLimits,
) -> Result<ReconcileReport, OutboxError> {
    let mut report = ReconcileReport::default();
    while report.pages < limits.max_pages.max(1) && !deadline.near() {
        let tx = conn.transaction().await?;
        let (table, after) = cursor(&tx).await?;
        let due = enqueue_page(&tx, table, after, limits.page_rows.max(1)).await?;
        let end_of_table = due.scanned < limits.page_rows.max(1);
        advance(&tx, table, due.last_id, end_of_table).await?;
        tx.commit().await?;
        report.pages += 1;
        report.enqueued += due.inserted;
        match table {
            Table::Clients => report.clients_scanned += due.scanned,
            Table::Bookings => report.bookings_scanned += due.scanned,
        }
        if end_of_table && table == Table::Bookings {
            report.complete = true;
            break;
        }
    }
    tracing::info!(?report, "zoho reconcile");
    Ok(report)
}

/// Locks the cursor row; where the pass stands.
async fn cursor(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(Table, Option<Uuid>), OutboxError> {
    let r = tx
        .query_one(
            "UPDATE zoho_reconcile_cursor
                SET pass_started_at = coalesce(pass_started_at, now())
              WHERE id = 'default'
          RETURNING phase, after_id",
            &[],
        )
        .await?;
    let table = match r.try_get::<_, &str>(0)? {
        "bookings" => Table::Bookings,
        _ => Table::Clients,
    };
    Ok((table, r.try_get(1)?))
}

/// Moves the cursor past this page: to the next id, to the start of
/// `bookings`, or, after the last page of `bookings`, to a new pass.
async fn advance(
    tx: &tokio_postgres::Transaction<'_>,
    table: Table,
    last_id: Option<Uuid>,
    end_of_table: bool,
) -> Result<(), OutboxError> {
    let (phase, after, pass_done) = match (table, end_of_table) {
        (_, false) => (table, last_id, false),
        (Table::Clients, true) => (Table::Bookings, None, false),
        (Table::Bookings, true) => (Table::Clients, None, true),
    };
    let phase = match phase {
        Table::Clients => "clients",
        Table::Bookings => "bookings",
    };
    tx.execute(
        "UPDATE zoho_reconcile_cursor
            SET phase = $1, after_id = $2, updated_at = now(),
                pass_started_at = CASE WHEN $3 THEN NULL ELSE pass_started_at END,
                last_completed_at = CASE WHEN $3 THEN now() ELSE last_completed_at END
          WHERE id = 'default'",
        &[&phase, &after, &pass_done],
    )
    .await?;
    Ok(())
}
