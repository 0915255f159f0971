//! Routing of API Gateway HTTP API (payload v2) requests and JSON responses.
//!
//! The function takes the raw `ApiGatewayV2httpRequest` rather than
//! `lambda_http::Request`: lambda_http decodes base64 bodies with a panic on
//! bad input, and the receiver must answer 400 instead, with the raw body kept.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use http::{HeaderValue, Method};
use serde_json::{json, Value};
use shared::platform::apigw::ApiError;

use crate::{manual::ManualBookings, receiver::Receiver};

/// What a request path names. Matching on segments tolerates a stage prefix
/// (`/prod/kommo/webhook/…`), which HTTP APIs keep in `rawPath` for named stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/kommo/webhook/{token}`, or `/kommo/webhook` with `?token=`.
    KommoWebhook {
        path_token: Option<String>,
    },
    Bookings,
    Unknown,
}

pub fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // At most one leading segment (a stage name) is tolerated.
    for start in 0..=1usize.min(segs.len()) {
        match &segs[start..] {
            ["kommo", "webhook"] => return Route::KommoWebhook { path_token: None },
            ["kommo", "webhook", token] => {
                return Route::KommoWebhook {
                    path_token: Some((*token).to_string()),
                }
            }
            ["bookings"] => return Route::Bookings,
            _ => {}
        }
    }
    Route::Unknown
}

/// The request's method; HTTP API v2 carries it only in the request context.
pub fn method(req: &ApiGatewayV2httpRequest) -> &Method {
    &req.request_context.http.method
}

pub fn path(req: &ApiGatewayV2httpRequest) -> &str {
    req.raw_path
        .as_deref()
        .or(req.request_context.http.path.as_deref())
        .unwrap_or("/")
}

pub fn header<'a>(req: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is marked base64 but is not valid base64")]
    BadBase64,
}

/// The body's bytes, base64-decoded when API Gateway says so, within `limit`.
pub fn body_bytes(req: &ApiGatewayV2httpRequest, limit: usize) -> Result<Vec<u8>, BodyError> {
    let raw = req.body.as_deref().unwrap_or("");
    if req.is_base64_encoded {
        // Checked before decoding, so an oversized body is not decoded at all.
        if raw.len() / 4 * 3 > limit + 3 {
            return Err(BodyError::TooLarge { limit });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|_| BodyError::BadBase64)?;
        if bytes.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        Ok(bytes)
    } else if raw.len() > limit {
        Err(BodyError::TooLarge { limit })
    } else {
        Ok(raw.as_bytes().to_vec())
    }
}

pub fn json_response(status: u16, body: &Value) -> ApiGatewayV2httpResponse {
    let mut resp = ApiGatewayV2httpResponse::default();
    resp.status_code = i64::from(status);
    resp.headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp.body = Some(Body::Text(body.to_string()));
    resp
}

pub fn error_response(err: ApiError) -> ApiGatewayV2httpResponse {
    json_response(err.status, &err.body())
}

pub fn method_not_allowed(method: &Method) -> ApiGatewayV2httpResponse {
    let mut resp = error_response(ApiError::new(
        405,
        "method_not_allowed",
        format!("{method} is not allowed here; use POST"),
    ));
    resp.headers
        .insert("allow", HeaderValue::from_static("POST"));
    resp
}

/// Both routes of the HTTP function.
pub struct HttpApp {
    pub receiver: Receiver,
    pub bookings: ManualBookings,
}

impl HttpApp {
    pub async fn handle(&self, req: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        match route(path(&req)) {
            Route::KommoWebhook { path_token } => self.receiver.handle(&req, path_token).await,
            Route::Bookings => self.bookings.handle(&req).await,
            Route::Unknown => {
                // The path may hold a mistyped webhook token, so it is not logged.
                tracing::info!(method = %method(&req), "no route for request");
                json_response(
                    404,
                    &json!({"error": {"code": "not_found", "message": "no such route"}}),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_tolerate_a_stage_prefix_and_a_query_token() {
        assert_eq!(
            route("/kommo/webhook/abc"),
            Route::KommoWebhook {
                path_token: Some("abc".into())
            }
        );
        assert_eq!(
            route("/prod/kommo/webhook/abc"),
            Route::KommoWebhook {
                path_token: Some("abc".into())
            }
        );
        assert_eq!(
            route("/kommo/webhook"),
            Route::KommoWebhook { path_token: None }
        );
        assert_eq!(route("/bookings"), Route::Bookings);
        assert_eq!(route("/dev/bookings/"), Route::Bookings);
        assert_eq!(route("/a/b/kommo/webhook/x"), Route::Unknown);
        assert_eq!(route("/kommo/webhook/x/y"), Route::Unknown);
        assert_eq!(route("/"), Route::Unknown);
    }

    #[test]
    fn base64_bodies_are_decoded_and_limited() {
        let mut req = ApiGatewayV2httpRequest::default();
        req.body = Some(base64::engine::general_purpose::STANDARD.encode(b"a=1"));
        req.is_base64_encoded = true;
        assert_eq!(body_bytes(&req, 10).unwrap(), b"a=1");
        assert_eq!(body_bytes(&req, 2), Err(BodyError::TooLarge { limit: 2 }));
        req.body = Some("***".into());
        assert_eq!(body_bytes(&req, 10), Err(BodyError::BadBase64));
        req.is_base64_encoded = false;
        req.body = Some("x".repeat(11));
        assert_eq!(body_bytes(&req, 10), Err(BodyError::TooLarge { limit: 10 }));
    }
}
