//! `Idempotency-Key` of `POST /bookings`.
//!
//! Staff retry when a request times out without an answer; the key makes the
//! retry safe. The first request with a key stores the hash of its body and
//! its answer, per staff member; the same key with the same body gets that
//! answer again and creates nothing, and with another body it is refused,
//! since the caller has reused a key by mistake.

use deadpool_postgres::Transaction;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::form::FieldProblem;
use crate::platform::db::DbError;

/// Longer keys are a client bug rather than a UUID or a ULID.
const MAX_KEY_CHARS: usize = 200;

/// A checked key and the hash of the request body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    key: String,
    request_hash: String,
}

impl Idempotency {
    /// The header's value with the raw body it guards; the key must be 1 to
    /// 200 visible ASCII characters.
    pub fn new(header: &str, body: &[u8]) -> Result<Self, FieldProblem> {
        let key = header.trim();
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_KEY_CHARS || !visible {
            return Err(FieldProblem::new(
                "Idempotency-Key",
                format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
            ));
        }
        Ok(Idempotency {
            key: key.to_string(),
            request_hash: hex::encode(Sha256::digest(body)),
        })
    }
}

/// What an earlier request with the same key left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// None: this request is the first, and its key is now held.
    None,
    /// The same body: its stored answer.
    Answered { status: u16, body: Value },
    /// Another body under the same key.
    OtherBody,
}

/// Holds the key for this transaction, or reports the earlier request's
/// answer. A concurrent request with the same key waits on the primary key
/// until this transaction ends, and then sees its answer.
pub(super) async fn claim(
    tx: &Transaction<'_>,
    staff: &str,
    k: &Idempotency,
) -> Result<Earlier, DbError> {
    let inserted = tx
        .execute(
            "INSERT INTO staff_idempotency_keys
                    (staff_sub, idempotency_key, request_hash, status_code, response)
             VALUES ($1, $2, $3, 0, 'null'::jsonb)
             ON CONFLICT (staff_sub, idempotency_key) DO NOTHING",
            &[&staff, &k.key, &k.request_hash],
        )
        .await?;
    if inserted == 1 {
        return Ok(Earlier::None);
    }
    let row = tx
        .query_one(
            "SELECT request_hash, status_code, response FROM staff_idempotency_keys
              WHERE staff_sub = $1 AND idempotency_key = $2",
            &[&staff, &k.key],
        )
        .await?;
    if row.try_get::<_, String>(0)? != k.request_hash {
        return Ok(Earlier::OtherBody);
    }
    let status: i32 = row.try_get(1)?;
    Ok(Earlier::Answered {
        status: u16::try_from(status).unwrap_or(500),
        body: row.try_get(2)?,
    })
}

/// Stores the answer of the request that holds the key.
pub(super) async fn answer(
    tx: &Transaction<'_>,
    staff: &str,
    k: &Idempotency,
    status: u16,
    body: &Value,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE staff_idempotency_keys SET status_code = $3, response = $4
          WHERE staff_sub = $1 AND idempotency_key = $2",
        &[&staff, &k.key, &i32::from(status), body],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_bodies_hashed() {
        let a = Idempotency::new(" 7f1c-retry ", b"{}").unwrap();
        assert_eq!(a.key, "7f1c-retry");
        assert_eq!(a, Idempotency::new("7f1c-retry", b"{}").unwrap());
        assert_ne!(a, Idempotency::new("7f1c-retry", b"{ }").unwrap());
        for bad in ["", "   ", "has space", "ключ", &"k".repeat(201)] {
            assert!(Idempotency::new(bad, b"{}").is_err(), "{bad:?}");
        }
    }
}
