//! `POST /bookings`: the manual fallback, for staff with a valid JWT.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use http::Method;
use serde_json::json;
use shared::{
    ingest::manual::{create_manual, validate, BookingError},
    platform::apigw::ApiError,
    platform::auth::verify_staff,
    platform::db::DbPool,
    platform::secrets::StaffJwtSecret,
};

use crate::{
    http::{
        body_bytes, error_response, header, json_response, method, method_not_allowed, BodyError,
    },
    SecretSource,
};

/// A booking request is a small JSON document; anything near this is a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct ManualBookings {
    pub secret: SecretSource<StaffJwtSecret>,
    pub allowed_roles: Vec<String>,
    pub pool: DbPool,
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

impl ManualBookings {
    pub async fn handle(&self, req: &ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        if method(req) != Method::POST {
            return method_not_allowed(method(req));
        }
        let secret = match self.secret.get().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "bookings: staff JWT secret unavailable");
                return error_response(ApiError::new(503, "unavailable", "try again later"));
            }
        };
        let staff = match verify_staff(header(req, "authorization"), &secret, &self.allowed_roles) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "bookings: staff authentication failed");
                return error_response(e.into());
            }
        };
        if !is_json(header(req, "content-type")) {
            return error_response(ApiError::new(
                415,
                "unsupported_media_type",
                "expected application/json",
            ));
        }
        let body = match body_bytes(req, MAX_BODY_BYTES) {
            Ok(b) => b,
            Err(e @ BodyError::TooLarge { .. }) => {
                return error_response(ApiError::new(413, "payload_too_large", e.to_string()))
            }
            Err(e @ BodyError::BadBase64) => {
                return error_response(ApiError::new(400, "bad_request", e.to_string()))
            }
        };
        let booking = match validate(&body) {
            Ok(b) => b,
            Err(problems) => return invalid(problems),
        };
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "bookings: database unavailable");
                return error_response(ApiError::new(
                    503,
                    "unavailable",
                    "database unavailable, try again later",
                ));
            }
        };
        match create_manual(&mut client, &staff.sub, &booking).await {
            Ok(created) => json_response(
                201,
                &json!({
                    "booking_id": created.booking_id,
                    "client_id": created.client_id,
                    "client_created": created.client_created,
                    "external_code": created.external_code,
                    "channel": "manual",
                    "enqueued": created.enqueued,
                }),
            ),
            Err(BookingError::Invalid(problems)) => invalid(problems),
            Err(e @ BookingError::Duplicate(_)) => {
                error_response(ApiError::new(409, "duplicate_external_code", e.to_string()))
            }
            Err(BookingError::Db(e)) => {
                tracing::error!(error = %e, "bookings: could not create the booking");
                let status = if e.is_unavailable() { 503 } else { 500 };
                error_response(ApiError::new(
                    status,
                    "internal",
                    "the booking could not be saved",
                ))
            }
        }
    }
}

fn invalid(problems: Vec<shared::ingest::manual::FieldProblem>) -> ApiGatewayV2httpResponse {
    error_response(
        ApiError::new(
            422,
            "invalid_booking",
            format!("{} field(s) are invalid", problems.len()),
        )
        .with_details(json!({ "fields": problems })),
    )
}
