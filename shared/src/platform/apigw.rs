//! The HTTP error envelope shared by every route: `{"error":{"code","message"}}`.

use lambda_http::{Body, Response};
use serde_json::{json, Value};

/// An HTTP-facing error: a status, a stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object (for example the list of bad fields).
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
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

    pub fn into_response(self) -> Response<Body> {
        json_response(self.status, &self.body())
    }
}

/// A JSON response with the given status.
pub fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))
        .expect("static response parts are valid")
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
        assert_eq!(resp.status(), 422);
    }
}
