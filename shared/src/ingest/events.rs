//! `kommo_webhook_events`, the delivery log: every body the receiver
//! rejected and every delivery taken from the queue, under the sha256 of its
//! body, with its status and attempts. A re-delivery is recognised here and
//! not applied twice.

use std::collections::HashMap;

use deadpool_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::{
    kommo::webhook::body_hash,
    platform::{db::DbError, text::storable},
};

/// A delivery's row in `kommo_webhook_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: Uuid,
    pub status: String,
    pub attempts: i32,
}

/// Records a delivery taken from the queue (idempotent). A second message
/// with the same body counts as a duplicate; a redelivery of the same SQS
/// message (after a failure) does not.
pub async fn record_received(
    client: &Client,
    body: &str,
    account_id: Option<i64>,
    sqs_message_id: Option<&str>,
) -> Result<EventRow, DbError> {
    let row = client
        .query_one(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, account_id, raw_payload, sqs_message_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (dedupe_key) DO UPDATE
                SET duplicate_count = kommo_webhook_events.duplicate_count
                        + CASE WHEN kommo_webhook_events.sqs_message_id IS DISTINCT FROM EXCLUDED.sqs_message_id
                               THEN 1 ELSE 0 END,
                    updated_at = now()
             RETURNING id, status, attempts").await?,
            &[
                &body_hash(body.as_bytes()),
                &account_id,
                &storable(body).as_ref(),
                &sqs_message_id,
            ],
        )
        .await?;
    Ok(EventRow {
        id: row.get(0),
        status: row.get(1),
        attempts: row.get(2),
    })
}

/// A delivery taken from the queue, as [`record_batch`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub body: &'a str,
    pub account_id: Option<i64>,
    pub sqs_message_id: Option<&'a str>,
}

/// Records a batch's deliveries in one statement, as [`record_received`]
/// records each; returns one row per delivery, in order (`None` only if the
/// database returned no row for it). Copies of one body in the batch share
/// a row, and count as duplicates when their message ids differ from the
/// first copy's.
pub async fn record_batch(
    client: &Client,
    received: &[Received<'_>],
) -> Result<Vec<Option<EventRow>>, DbError> {
    let keys: Vec<String> = received
        .iter()
        .map(|r| body_hash(r.body.as_bytes()))
        .collect();
    // ON CONFLICT may touch a row once per statement: each body goes in once.
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut extra = vec![0i32; received.len()];
    for (i, key) in keys.iter().enumerate() {
        let at = *first.entry(key.as_str()).or_insert(i);
        if at != i && received[at].sqs_message_id != received[i].sqs_message_id {
            extra[at] += 1;
        }
    }
    let once: Vec<usize> = (0..received.len())
        .filter(|i| first.get(keys[*i].as_str()) == Some(i))
        .collect();
    let once_keys: Vec<&str> = once.iter().map(|&i| keys[i].as_str()).collect();
    let accounts: Vec<Option<i64>> = once.iter().map(|&i| received[i].account_id).collect();
    let bodies: Vec<String> = once
        .iter()
        .map(|&i| storable(received[i].body).into_owned())
        .collect();
    let message_ids: Vec<Option<&str>> = once.iter().map(|&i| received[i].sqs_message_id).collect();
    let extras: Vec<i32> = once.iter().map(|&i| extra[i]).collect();
    let rows = client
        .query(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, account_id, raw_payload, sqs_message_id, duplicate_count)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::int[])
             ON CONFLICT (dedupe_key) DO UPDATE
                SET duplicate_count = kommo_webhook_events.duplicate_count + EXCLUDED.duplicate_count
                        + CASE WHEN kommo_webhook_events.sqs_message_id IS DISTINCT FROM EXCLUDED.sqs_message_id
                               THEN 1 ELSE 0 END,
                    updated_at = now()
             RETURNING dedupe_key, id, status, attempts").await?,
            &[&once_keys, &accounts, &bodies, &message_ids, &extras],
        )
        .await?;
    let mut by_key: HashMap<String, EventRow> = HashMap::new();
    for row in rows {
        let event = EventRow {
            id: row.try_get(1)?,
            status: row.try_get(2)?,
            attempts: row.try_get(3)?,
        };
        by_key.insert(row.try_get(0)?, event);
    }
    Ok(keys.iter().map(|k| by_key.get(k).cloned()).collect())
}

/// Locks a delivery's row for the processing transaction. Concurrent copies
/// of one delivery wait here and then find it `processed`.
pub async fn lock_event(tx: &Transaction<'_>, id: Uuid) -> Result<EventRow, DbError> {
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT id, status, attempts FROM kommo_webhook_events WHERE id = $1 FOR UPDATE",
            )
            .await?,
            &[&id],
        )
        .await?;
    Ok(EventRow {
        id: row.get(0),
        status: row.get(1),
        attempts: row.get(2),
    })
}

pub async fn mark_processed(
    tx: &Transaction<'_>,
    id: Uuid,
    parsed: &serde_json::Value,
) -> Result<(), DbError> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE kommo_webhook_events
            SET status = 'processed', attempts = attempts + 1, error = NULL,
                parsed_payload = $2, processed_at = now(), updated_at = now()
          WHERE id = $1",
        )
        .await?,
        &[&id, parsed],
    )
    .await?;
    Ok(())
}

/// Marks a failed attempt, outside the rolled-back processing transaction.
pub async fn mark_failed(client: &Client, id: Uuid, error: &str) -> Result<i32, DbError> {
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "UPDATE kommo_webhook_events
                SET status = 'failed', attempts = attempts + 1, error = $2, updated_at = now()
              WHERE id = $1
              RETURNING attempts",
                )
                .await?,
            &[&id, &error],
        )
        .await?;
    Ok(row.get(0))
}

/// Marks a delivery that can never be processed (its queue message is not
/// an envelope, or its body does not parse). It is not retried.
pub async fn record_unprocessable(
    client: &Client,
    body: &str,
    sqs_message_id: Option<&str>,
    error: &str,
) -> Result<(), DbError> {
    client
        .execute(
            &client.prepare_cached("INSERT INTO kommo_webhook_events (dedupe_key, raw_payload, status, error, sqs_message_id, attempts)
             VALUES ($1, $2, 'rejected', $3, $4, 1)
             ON CONFLICT (dedupe_key) DO UPDATE
                SET status = 'rejected', error = EXCLUDED.error, updated_at = now()").await?,
            &[
                &body_hash(body.as_bytes()),
                &storable(body).as_ref(),
                &storable(error).as_ref(),
                &sqs_message_id,
            ],
        )
        .await?;
    Ok(())
}
