//! Validation of a manual booking request (`POST /bookings`).
//!
//! Staff type these by hand, so validation reports every bad field at once
//! instead of one per attempt.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    erp::{ClientInput, ClientRef, NewBooking},
    kommo::mapping::normalize_phone,
    platform::text::non_empty,
};

/// One problem with one field of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

impl FieldProblem {
    pub(super) fn new(field: &str, problem: impl Into<String>) -> Self {
        FieldProblem {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

const FIELDS: &[&str] = &[
    "external_code",
    "client_id",
    "client",
    "start_at",
    "end_at",
    "vehicle_id",
    "status",
    "source",
    "title",
    "notes",
    "total_amount",
    "currency",
];
const CLIENT_FIELDS: &[&str] = &["full_name", "first_name", "last_name", "email", "phone"];
const STATUSES: &[&str] = &["requested", "confirmed"];

/// Reads fields and collects every problem instead of stopping at the first.
struct Check<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'static str,
    problems: Vec<FieldProblem>,
}

impl<'a> Check<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn bad(&mut self, key: &str, problem: impl Into<String>) {
        let name = self.name(key);
        self.problems.push(FieldProblem::new(&name, problem));
    }

    /// A string of at most `max` characters; empty counts as absent.
    fn text(&mut self, key: &str, max: usize) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match non_empty(Some(s)) {
                Some(s) if s.chars().count() > max => {
                    self.bad(key, format!("must be at most {max} characters"));
                    None
                }
                s => s,
            },
            Some(_) => {
                self.bad(key, "must be a string");
                None
            }
        }
    }

    fn required_text(&mut self, key: &str, max: usize) -> Option<String> {
        let present = matches!(self.obj.get(key), Some(Value::String(s)) if !s.trim().is_empty());
        let v = self.text(key, max);
        if !present && !self.problems.iter().any(|p| p.field == self.name(key)) {
            self.bad(key, "is required");
        }
        v
    }

    fn uuid(&mut self, key: &str) -> Option<Uuid> {
        let s = self.text(key, 64)?;
        match Uuid::parse_str(&s) {
            Ok(u) => Some(u),
            Err(_) => {
                self.bad(key, "must be a UUID");
                None
            }
        }
    }

    fn timestamp(&mut self, key: &str) -> Option<DateTime<Utc>> {
        let s = self.required_text(key, 64)?;
        match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.bad(
                    key,
                    "must be an RFC 3339 timestamp, e.g. 2026-05-01T09:00:00Z",
                );
                None
            }
        }
    }

    fn unknown_fields(&mut self, known: &[&str]) {
        let unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            self.bad(&k, "is not a known field");
        }
    }
}

fn looks_like_email(s: &str) -> bool {
    let mut parts = s.splitn(2, '@');
    let (local, domain) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
}

/// A non-negative amount with at most two decimals, below `numeric(14,2)`'s limit.
fn amount(v: &Value) -> Result<String, &'static str> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err("must be a number"),
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (!frac.is_empty() && !digits(frac)) {
        return Err("must be a non-negative number");
    }
    if frac.len() > 2 {
        return Err("must have at most 2 decimals");
    }
    if int.trim_start_matches('0').len() > 12 {
        return Err("is too large");
    }
    Ok(text)
}

/// The request body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, Vec<FieldProblem>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![FieldProblem::new(
            "body",
            format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )]
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(vec![FieldProblem::new("body", "must be a JSON object")]),
    }
}

/// `client_id` or `client`, exactly one of them.
fn client_ref(c: &mut Check<'_>) -> Option<ClientRef> {
    let client_id = c.uuid("client_id");
    let obj = c.obj;
    match (client_id, obj.get("client")) {
        (Some(id), None | Some(Value::Null)) => Some(ClientRef::Existing(id)),
        (Some(_), Some(_)) => {
            c.bad("client", "give either client_id or client, not both");
            None
        }
        (None, Some(Value::Object(co))) => {
            let mut cc = Check {
                obj: co,
                prefix: "client.",
                problems: Vec::new(),
            };
            let client = new_client(&mut cc);
            c.problems.append(&mut cc.problems);
            client
        }
        (None, Some(_)) => {
            c.bad("client", "must be an object");
            None
        }
        (None, None) => {
            if !c.problems.iter().any(|p| p.field == "client_id") {
                c.bad("client", "client_id or client is required");
            }
            None
        }
    }
}

/// A new client's fields: a name, and an email or a phone.
fn new_client(cc: &mut Check<'_>) -> Option<ClientRef> {
    cc.unknown_fields(CLIENT_FIELDS);
    let full_name = cc.required_text("full_name", 200);
    let first_name = cc.text("first_name", 100);
    let last_name = cc.text("last_name", 100);
    let email = cc.text("email", 254);
    if let Some(e) = &email {
        if !looks_like_email(e) {
            cc.bad("email", "is not an email address");
        }
    }
    let phone = cc.text("phone", 40);
    if let Some(p) = &phone {
        let n = normalize_phone(p).map_or(0, |d| d.len());
        if !(6..=15).contains(&n) {
            cc.bad("phone", "must hold 6 to 15 digits");
        }
    }
    if email.is_none() && phone.is_none() {
        cc.bad("email", "an email or a phone is required");
    }
    full_name.map(|full_name| {
        ClientRef::New(ClientInput {
            kommo_contact_id: None,
            full_name,
            first_name,
            last_name,
            email,
            phone,
            kommo_updated_at: None,
        })
    })
}

/// Validates a request body and lists every problem.
pub fn validate(body: &[u8]) -> Result<NewBooking, Vec<FieldProblem>> {
    let obj = object(body)?;
    let mut c = Check {
        obj: &obj,
        prefix: "",
        problems: Vec::new(),
    };
    c.unknown_fields(FIELDS);

    let external_code = c.text("external_code", 64);
    if let Some(code) = &external_code {
        if !code
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.:/".contains(ch))
        {
            c.bad(
                "external_code",
                "may only hold letters, digits and - _ . : /",
            );
        }
    }

    let client = client_ref(&mut c);

    let start_at = c.timestamp("start_at");
    let end_at = c.timestamp("end_at");
    if let (Some(s), Some(e)) = (start_at, end_at) {
        if e < s {
            c.bad("end_at", "must not be before start_at");
        }
    }
    let vehicle_id = c.uuid("vehicle_id");
    let status = match c.text("status", 32) {
        None => "requested".to_string(),
        Some(s) if STATUSES.contains(&s.as_str()) => s,
        Some(_) => {
            c.bad("status", format!("must be one of {}", STATUSES.join(", ")));
            String::new()
        }
    };
    let source = c.text("source", 100);
    let title = c.text("title", 200);
    let notes = c.text("notes", 5000);
    let total_amount = match obj.get("total_amount") {
        None | Some(Value::Null) => None,
        Some(v) => match amount(v) {
            Ok(a) => Some(a),
            Err(p) => {
                c.bad("total_amount", p);
                None
            }
        },
    };
    let currency = c.text("currency", 3);
    if let Some(cur) = &currency {
        if cur.len() != 3 || !cur.bytes().all(|b| b.is_ascii_uppercase()) {
            c.bad("currency", "must be a 3-letter ISO code such as EUR");
        }
    }

    match (client, start_at, end_at) {
        (Some(client), Some(start_at), Some(end_at)) if c.problems.is_empty() => Ok(NewBooking {
            external_code,
            client,
            start_at,
            end_at,
            vehicle_id,
            status,
            source,
            title,
            notes,
            total_amount,
            currency,
        }),
        _ => Err(c.problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        match validate(v.to_string().as_bytes()) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn a_complete_request_validates() {
        let b = validate(
            json!({
                "external_code": "MAN-1",
                "client": {"full_name": "Ada Lovelace", "email": "ada@example.com"},
                "start_at": "2026-05-01T09:00:00Z",
                "end_at": "2026-05-03T18:00:00+02:00",
                "total_amount": 120.5,
                "currency": "EUR"
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(b.status, "requested");
        assert_eq!(b.total_amount.as_deref(), Some("120.5"));
        assert!(
            matches!(b.client, ClientRef::New(ref c) if c.email.as_deref() == Some("ada@example.com"))
        );
    }

    #[test]
    fn every_bad_field_is_listed() {
        let got = fields(json!({
            "external_code": "bad code!",
            "client": {"full_name": "", "email": "nope", "phone": "12", "age": 3},
            "start_at": "tomorrow",
            "vehicle_id": "v1",
            "status": "done",
            "total_amount": -1,
            "currency": "euro",
            "colour": "red"
        }));
        for f in [
            "external_code",
            "client.full_name",
            "client.email",
            "client.phone",
            "client.age",
            "start_at",
            "end_at",
            "vehicle_id",
            "status",
            "total_amount",
            "currency",
            "colour",
        ] {
            assert!(got.contains(&f.to_string()), "{f} missing from {got:?}");
        }
    }

    #[test]
    fn shape_errors() {
        assert_eq!(fields(json!([1, 2])), vec!["body"]);
        assert_eq!(validate(b"{nope").unwrap_err()[0].field, "body");
        let got = fields(json!({
            "client_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "client": {"full_name": "X", "email": "x@y.z"},
            "start_at": "2026-05-02T00:00:00Z",
            "end_at": "2026-05-01T00:00:00Z",
            "total_amount": "1.234"
        }));
        assert_eq!(got, vec!["client", "end_at", "total_amount"]);
        assert_eq!(
            fields(json!({"start_at": "2026-05-01T00:00:00Z", "end_at": "2026-05-01T00:00:00Z"})),
            vec!["client"]
        );
    }
}
