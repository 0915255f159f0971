//! Replays deliveries kept as `rejected`, once the parser that refused them
//! is fixed and deployed.
//!
//! A rejected row holds the body as it came. Replaying puts the row back to
//! `received` (a rejected body is otherwise skipped as a duplicate) and
//! queues the body for the processor, which dedupes, fetches the current
//! lead from Kommo and applies it as any delivery.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    kommo::webhook::QueuedDelivery,
    platform::{
        db::DbError,
        sqs::{Queue, SqsError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] SqsError),
}

impl From<tokio_postgres::Error> for ReplayError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReplayError::Db(e.into())
    }
}

/// Queues every delivery rejected since `since`; returns how many. A body
/// that cannot be queued is marked rejected again, with the reason.
pub async fn replay_rejected(
    client: &tokio_postgres::Client,
    queue: &Queue,
    since: DateTime<Utc>,
) -> Result<usize, ReplayError> {
    let rows = client
        .query(
            "SELECT id, raw_payload, account_id FROM kommo_webhook_events
              WHERE status = 'rejected' AND received_at >= $1
              ORDER BY received_at",
            &[&since],
        )
        .await?;
    let mut queued = 0;
    for r in rows {
        let (id, raw, account_id): (Uuid, String, Option<i64>) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        // The processor keeps a queue message that was no envelope as it
        // came; anything else is a body the receiver took.
        let message = match raw.trim_start().starts_with('{') {
            true => raw,
            false => QueuedDelivery::new(raw, None, None, account_id).to_json(),
        };
        set_status(client, id, "received", None).await?;
        if let Err(e) = queue.send(&message).await {
            set_status(client, id, "rejected", Some(&e.to_string())).await?;
            return Err(e.into());
        }
        queued += 1;
    }
    Ok(queued)
}

async fn set_status(
    client: &tokio_postgres::Client,
    id: Uuid,
    status: &str,
    error: Option<&str>,
) -> Result<(), ReplayError> {
    client
        .execute(
            "UPDATE kommo_webhook_events
                SET status = $2, error = $3, attempts = 0, updated_at = now()
              WHERE id = $1",
            &[&id, &status, &error],
        )
        .await?;
    Ok(())
}
