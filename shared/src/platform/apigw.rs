//! API Gateway HTTP API (payload v2): route matching, request bodies, JSON
//! responses and the error envelope `{"error":{"code","message"}}` that
//! every route answers with.
//!
//! Handlers take the raw [`Request`] rather than `lambda_http::Request`:
//! lambda_http decodes base64 bodies with a panic on bad input, and the
//! webhook receiver must answer 400 instead, with the raw body kept.
//! Every handler returns `Result<Response, ApiError>`; [`respond`] turns that
//! into what API Gateway gets.

use aws_lambda_events::encodings::Body;
use base64::Engine;
use http::{HeaderValue, Method};
use serde_json::{json, Value};

use crate::platform::{
    auth::{verify_staff, AuthError, Staff},
    secrets::{SecretSource, StaffJwtSecret},
};

pub use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest as Request, ApiGatewayV2httpResponse as Response,
};

/// An HTTP-facing error: a status, a stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object (for example the list of bad fields).
    pub details: Option<Value>,
    /// The methods a 405 lists in its `Allow` header.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            allow: None,
        }
    }

    /// 404 for a path no route matches.
    pub fn no_route() -> Self {
        ApiError::new(404, "not_found", "no such route")
    }

    /// 405 naming the methods the route takes, in the message and in `Allow`.
    pub fn method_not_allowed(allow: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(405, "method_not_allowed", message)
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn body(&self) -> Value {
        let mut err = json!({"code": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Value::Object(obj)) = (&self.details, &mut err) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        json!({ "error": err })
    }

    pub fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body());
        if let Some(allow) = self.allow {
            resp.headers
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// What a handler's result looks like to API Gateway.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// A JSON response with the given status.
pub fn json_response(status: u16, body: &Value) -> Response {
    let mut resp = Response::default();
    resp.status_code = i64::from(status);
    resp.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.body = Some(Body::Text(body.to_string()));
    resp
}

/// Matches a path's segments with `matcher`, tolerating one leading stage
/// segment (`/prod/kommo/webhook/…`), which HTTP APIs keep in `rawPath` for
/// named stages.
pub fn match_route<R>(path: &str, matcher: impl Fn(&[&str]) -> Option<R>) -> Option<R> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..=1usize.min(segs.len())).find_map(|start| matcher(&segs[start..]))
}

/// The request's method; HTTP API v2 carries it only in the request context.
pub fn method(req: &Request) -> &Method {
    &req.request_context.http.method
}

pub fn path(req: &Request) -> &str {
    req.raw_path
        .as_deref()
        .or(req.request_context.http.path.as_deref())
        .unwrap_or("/")
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// 405 unless the request uses `allowed`.
pub fn expect_method(req: &Request, allowed: &'static str) -> Result<(), ApiError> {
    let method = method(req);
    if method.as_str() == allowed {
        return Ok(());
    }
    Err(ApiError::method_not_allowed(
        allowed,
        format!("{method} is not allowed here; use {allowed}"),
    ))
}

/// 415 unless the `content-type` header names `mime` (parameters such as
/// `charset` are ignored, and so is case).
pub fn expect_content_type(req: &Request, mime: &str) -> Result<(), ApiError> {
    let given = header(req, "content-type").and_then(|ct| ct.split(';').next());
    if given.is_some_and(|g| g.trim().eq_ignore_ascii_case(mime)) {
        return Ok(());
    }
    Err(ApiError::new(
        415,
        "unsupported_media_type",
        format!("expected {mime}"),
    ))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid(_) => {
                ApiError::new(401, "unauthorized", e.to_string())
            }
            AuthError::Forbidden(_) => ApiError::new(403, "forbidden", e.to_string()),
            // The reason names the secret's flaw; the caller only learns to retry later.
            AuthError::Misconfigured(_) => {
                ApiError::new(503, "unavailable", "authentication is unavailable")
            }
        }
    }
}

/// The staff member the request's bearer token names: 401 without a valid
/// token, 403 for a role not in `allowed_roles`, 503 when the signing key
/// cannot be read.
pub async fn staff(
    req: &Request,
    key: &SecretSource<StaffJwtSecret>,
    allowed_roles: &[String],
) -> Result<Staff, ApiError> {
    let secret = key.get().await.map_err(|e| {
        tracing::error!(error = %e, "staff JWT secret unavailable");
        ApiError::new(503, "unavailable", "authentication is unavailable")
    })?;
    verify_staff(header(req, "authorization"), &secret, allowed_roles).map_err(|e| {
        tracing::warn!(error = %e, "staff authentication failed");
        ApiError::from(e)
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is marked base64 but is not valid base64")]
    BadBase64,
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { .. } => ApiError::new(413, "payload_too_large", e.to_string()),
            BodyError::BadBase64 => ApiError::new(400, "bad_request", e.to_string()),
        }
    }
}

/// The body's bytes, base64-decoded when API Gateway says so, within `limit`.
pub fn body_bytes(req: &Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    let raw = req.body.as_deref().unwrap_or("");
    if !req.is_base64_encoded {
        if raw.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        return Ok(raw.as_bytes().to_vec());
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_has_code_message_and_details() {
        let e = ApiError::new(422, "invalid_booking", "2 fields are invalid")
            .with_details(json!({"fields": [{"field": "start_at"}]}));
        let body = e.body();
        assert_eq!(body["error"]["code"], "invalid_booking");
        assert_eq!(body["error"]["message"], "2 fields are invalid");
        assert_eq!(body["error"]["fields"][0]["field"], "start_at");
        let resp = e.into_response();
        assert_eq!(resp.status_code, 422);
        assert_eq!(resp.headers["content-type"], "application/json");
        assert!(resp.headers.get("allow").is_none());
    }

    #[test]
    fn a_405_names_the_allowed_methods() {
        let mut req = Request::default();
        req.request_context.http.method = Method::GET;
        let e = expect_method(&req, "POST").unwrap_err();
        assert_eq!(e.message, "GET is not allowed here; use POST");
        assert_eq!(e.into_response().headers["allow"], "POST");
        req.request_context.http.method = Method::POST;
        assert_eq!(expect_method(&req, "POST"), Ok(()));
    }

    #[test]
    fn content_types_ignore_case_and_parameters() {
        let mut req = Request::default();
        let form = "application/x-www-form-urlencoded";
        assert_eq!(expect_content_type(&req, form).unwrap_err().status, 415);
        req.headers.insert(
            "content-type",
            HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        );
        assert_eq!(expect_content_type(&req, form), Ok(()));
        assert!(expect_content_type(&req, "application/json").is_err());
    }

    #[test]
    fn routes_tolerate_one_stage_segment() {
        let runs = |segs: &[&str]| matches!(segs, ["runs"]).then_some(());
        assert_eq!(match_route("/runs", runs), Some(()));
        assert_eq!(match_route("/prod/runs/", runs), Some(()));
        assert_eq!(match_route("/a/b/runs", runs), None);
        assert_eq!(match_route("/", runs), None);
    }

    #[test]
    fn base64_bodies_are_decoded_and_limited() {
        let mut req = Request::default();
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
