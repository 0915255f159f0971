//! `POST /bookings`: the manual fallback, for staff with a valid JWT, while
//! the `enableManualBookings` flag is on; an `Idempotency-Key` header makes
//! a retry return the first answer.

use std::sync::Arc;

use aws_lambda_events::http::HeaderValue;
use serde_json::json;
use shared::{
    ingest::manual::{create_manual, validate, BookingError, FieldProblem, Idempotency},
    platform::apigw::{self, ApiError, Request, Response},
    platform::db::DbPool,
    platform::flags::{FeatureFlags, Flag},
    platform::secrets::{SecretSource, StaffJwtSecret},
};

/// A booking request is a small JSON document; anything near this is a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ManualBookings {
    pub secret: SecretSource<StaffJwtSecret>,
    pub allowed_roles: Vec<String>,
    pub pool: DbPool,
    pub flags: Arc<FeatureFlags>,
}

impl ManualBookings {
    pub async fn handle(&self, req: &Request) -> Result<Response, ApiError> {
        apigw::expect_method(req, "POST")?;
        let staff = apigw::staff(req, &self.secret, &self.allowed_roles).await?;
        self.expect_enabled().await?;
        apigw::expect_content_type(req, "application/json")?;
        let body = apigw::body_bytes(req, MAX_BODY_BYTES)?;
        let key = apigw::header(req, "idempotency-key")
            .map(|h| Idempotency::new(h, &body))
            .transpose()
            .map_err(|p| bad_key(vec![p]))?;
        let booking = validate(&body).map_err(invalid)?;
        let mut client = self.pool.get().await.map_err(|e| {
            tracing::error!(error = %e, "bookings: database unavailable");
            ApiError::new(503, "unavailable", "database unavailable, try again later")
        })?;
        let answer = create_manual(&mut client, &staff.sub, &booking, key.as_ref())
            .await
            .map_err(refusal)?;
        let mut resp = apigw::json_response(answer.status, &answer.body);
        if answer.replayed {
            resp.headers
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        Ok(resp)
    }

    /// 409 while an operator has turned manual bookings off; 503 when the
    /// flag cannot be read.
    async fn expect_enabled(&self) -> Result<(), ApiError> {
        match self.flags.is_enabled(Flag::ManualBookings).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(
                409,
                "manual_bookings_disabled",
                "manual bookings are turned off (flag enableManualBookings); create the booking in Kommo",
            )),
            Err(e) => {
                tracing::error!(error = %e, "bookings: flag unreadable");
                Err(ApiError::new(
                    503,
                    "unavailable",
                    "database unavailable, try again later",
                ))
            }
        }
    }
}

fn refusal(e: BookingError) -> ApiError {
    match e {
        BookingError::Invalid(problems) => invalid(problems),
        duplicate @ BookingError::Duplicate(_) => {
            ApiError::new(409, "duplicate_external_code", duplicate.to_string())
        }
        reused @ BookingError::KeyReused => {
            ApiError::new(422, "idempotency_key_reused", reused.to_string())
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

fn bad_key(problems: Vec<FieldProblem>) -> ApiError {
    ApiError::new(
        400,
        "invalid_idempotency_key",
        "the Idempotency-Key header is invalid",
    )
    .with_details(json!({ "fields": problems }))
}
