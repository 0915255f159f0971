//! Manual bookings (`POST /bookings`): the fallback when Kommo is down.
//!
//! A request is validated ([`form`]), then the booking is created with
//! `channel = 'manual'` and the same Zoho work as a Kommo booking, recorded
//! in the audit trail, and its answer kept under the request's
//! `Idempotency-Key` ([`idempotency`]) in the same transaction.

mod form;
mod idempotency;

use deadpool_postgres::{Client, Transaction};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub use self::form::{validate, FieldProblem};
use self::idempotency::Earlier;
pub use self::idempotency::Idempotency;
use super::zoho_work::enqueue_zoho_work;
pub use crate::erp::{ClientRef, NewBooking};
use crate::{
    erp::{
        audit::{self, Change},
        bookings, clients, vehicles,
    },
    platform::db::DbError,
};

#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("{} field(s) are invalid", .0.len())]
    Invalid(Vec<FieldProblem>),
    #[error("a booking with external_code `{0}` already exists")]
    Duplicate(String),
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for BookingError {
    fn from(e: tokio_postgres::Error) -> Self {
        BookingError::Db(DbError::Postgres(e))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedBooking {
    pub booking_id: Uuid,
    pub client_id: Uuid,
    pub client_created: bool,
    pub external_code: Option<String>,
    pub enqueued: Vec<&'static str>,
}

impl CreatedBooking {
    /// The JSON body of the 201, which a retry with the same key gets again.
    pub fn response_body(&self) -> Value {
        json!({
            "booking_id": self.booking_id,
            "client_id": self.client_id,
            "client_created": self.client_created,
            "external_code": self.external_code,
            "channel": "manual",
            "enqueued": self.enqueued,
        })
    }
}

/// The answer to a request: a new booking, or the stored answer of the
/// first request with the same `Idempotency-Key` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// Creates the booking, its client if new, the vehicle link, the Zoho work,
/// the audit row and the idempotency record, in one transaction.
pub async fn create_manual(
    client: &mut Client,
    created_by: &str,
    b: &NewBooking,
    key: Option<&Idempotency>,
) -> Result<Answer, BookingError> {
    let tx = client.transaction().await?;
    audit::act_as(&tx, created_by).await?;
    if let Some(k) = key {
        match idempotency::claim(&tx, created_by, k).await? {
            Earlier::None => {}
            Earlier::Answered { status, body } => {
                tracing::info!(
                    created_by,
                    "manual booking replayed for its Idempotency-Key"
                );
                return Ok(Answer {
                    status,
                    body,
                    replayed: true,
                });
            }
            Earlier::OtherBody => return Err(BookingError::KeyReused),
        }
    }
    let created = insert_booking(&tx, created_by, b).await?;
    let body = created.response_body();
    let subject = created.booking_id.to_string();
    let change = Change {
        action: "booking.manual_create",
        subject: &subject,
        previous: None,
        current: Some(&body),
    };
    audit::record(&tx, created_by, change).await?;
    if let Some(k) = key {
        idempotency::answer(&tx, created_by, k, 201, &body).await?;
    }
    tx.commit().await?;
    tracing::info!(booking_id = %created.booking_id, client_id = %created.client_id, created_by, "manual booking created");
    Ok(Answer {
        status: 201,
        body,
        replayed: false,
    })
}

/// The booking's rows and its Zoho work, in the caller's transaction.
async fn insert_booking(
    tx: &Transaction<'_>,
    created_by: &str,
    b: &NewBooking,
) -> Result<CreatedBooking, BookingError> {
    let (client_id, client_created) = booking_client(tx, b).await?;
    let Some(booking_id) = bookings::insert_manual(tx, created_by, client_id, b).await? else {
        return Err(BookingError::Duplicate(
            b.external_code.clone().unwrap_or_default(),
        ));
    };
    if b.vehicle_id.is_some() {
        bookings::set_primary_vehicle(tx, booking_id, b.vehicle_id).await?;
    }
    bookings::add_calendar_entry(tx, booking_id, created_by, b).await?;
    let enqueued = enqueue_zoho_work(tx, &[client_id], &[booking_id])
        .await?
        .events();
    Ok(CreatedBooking {
        booking_id,
        client_id,
        client_created,
        external_code: b.external_code.clone(),
        enqueued,
    })
}

/// Checks the references the form could not check (the client and the
/// vehicle exist), then finds or creates the client: (id, created).
async fn booking_client(
    tx: &Transaction<'_>,
    b: &NewBooking,
) -> Result<(Uuid, bool), BookingError> {
    let mut problems = Vec::new();
    let existing = match &b.client {
        ClientRef::Existing(id) => {
            let found = clients::exists(tx, *id).await?;
            if !found {
                problems.push(FieldProblem::new("client_id", "no such client"));
            }
            found.then_some(*id)
        }
        ClientRef::New(_) => None,
    };
    if let Some(vid) = b.vehicle_id {
        match vehicles::is_active(tx, vid).await? {
            None => problems.push(FieldProblem::new("vehicle_id", "no such vehicle")),
            Some(false) => problems.push(FieldProblem::new("vehicle_id", "vehicle is not active")),
            Some(true) => {}
        }
    }
    if !problems.is_empty() {
        return Err(BookingError::Invalid(problems));
    }
    match (&b.client, existing) {
        (_, Some(id)) => Ok((id, false)),
        (ClientRef::New(input), None) => {
            let out = clients::upsert_client(tx, input).await?;
            Ok((out.id, out.created))
        }
        (ClientRef::Existing(_), None) => Err(BookingError::Invalid(problems)),
    }
}
