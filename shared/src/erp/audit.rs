//! The append-only audit trail (`audit_log`, migration V5).
//!
//! Flag changes and outbox requeues are recorded by the database itself (a
//! trigger and `requeue_failed_outbox`), so a change made with `psql` is
//! recorded too; they name the actor the transaction set with [`act_as`].
//! Actions the application takes (manual bookings, refresh approve and
//! discard) add their row with [`record`] in the transaction that acts.

use deadpool_postgres::Transaction;
use serde_json::Value;

use super::execute_cached;
use crate::platform::db::DbError;

/// Names who the rest of this transaction acts for; the database triggers
/// read it, and fall back to the database role when it is unset.
pub async fn act_as(tx: &Transaction<'_>, actor: &str) -> Result<(), DbError> {
    tx.query_one("SELECT set_config('audit.actor', $1, true)", &[&actor])
        .await?;
    Ok(())
}

/// What happened, to what, and the values before and after.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub action: &'a str,
    pub subject: &'a str,
    pub previous: Option<&'a Value>,
    pub current: Option<&'a Value>,
}

/// Appends one row in the caller's transaction, so the change and its
/// record commit or roll back together.
pub async fn record(tx: &Transaction<'_>, actor: &str, change: Change<'_>) -> Result<(), DbError> {
    execute_cached(
        tx,
        "INSERT INTO audit_log (actor, action, subject, previous, current)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &actor,
            &change.action,
            &change.subject,
            &change.previous,
            &change.current,
        ],
    )
    .await?;
    Ok(())
}
