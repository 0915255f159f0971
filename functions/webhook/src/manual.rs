//! `POST /bookings`: the manual fallback, for staff with a valid JWT.

use serde_json::json;
use shared::{
    ingest::manual::{create_manual, validate, BookingError, FieldProblem},
    platform::apigw::{self, ApiError, Request, Response},
    platform::db::DbPool,
    platform::secrets::{SecretSource, StaffJwtSecret},
};

/// A booking request is a small JSON document; anything near this is a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ManualBookings {
    pub secret: SecretSource<StaffJwtSecret>,
    pub allowed_roles: Vec<String>,
    pub pool: DbPool,
}

impl ManualBookings {
    pub async fn handle(&self, req: &Request) -> Result<Response, ApiError> {
        apigw::expect_method(req, "POST")?;
        let staff = apigw::staff(req, &self.secret, &self.allowed_roles).await?;
        apigw::expect_content_type(req, "application/json")?;
        let body = apigw::body_bytes(req, MAX_BODY_BYTES)?;
        let booking = validate(&body).map_err(invalid)?;
        let mut client = self.pool.get().await.map_err(|e| {
            tracing::error!(error = %e, "bookings: database unavailable");
            ApiError::new(503, "unavailable", "database unavailable, try again later")
        })?;
        let created = create_manual(&mut client, &staff.sub, &booking)
            .await
            .map_err(refusal)?;
        Ok(apigw::json_response(
            201,
            &json!({
                "booking_id": created.booking_id,
                "client_id": created.client_id,
                "client_created": created.client_created,
                "external_code": created.external_code,
                "channel": "manual",
                "enqueued": created.enqueued,
            }),
        ))
    }
}

fn refusal(e: BookingError) -> ApiError {
    match e {
        BookingError::Invalid(problems) => invalid(problems),
        duplicate @ BookingError::Duplicate(_) => {
            ApiError::new(409, "duplicate_external_code", duplicate.to_string())
        }
        BookingError::Db(e) => {
            tracing::error!(error = %e, "bookings: could not create the booking");
            let status = if e.is_unavailable() { 503 } else { 500 };
            ApiError::new(status, "internal", "the booking could not be saved")
        }
    }
}

fn invalid(problems: Vec<FieldProblem>) -> ApiError {
    ApiError::new(
        422,
        "invalid_booking",
        format!("{} field(s) are invalid", problems.len()),
    )
    .with_details(json!({ "fields": problems }))
}
