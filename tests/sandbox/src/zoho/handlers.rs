//! HTTP routes of the Zoho sandbox.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use axum::{
    body::Bytes,
    extract::{RawQuery, State as AxState},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{
    updates::{self, Module},
    Faults, SandboxState, Shared, State, StoredRecord, TokenInfo, ENDPOINT_CONTACTS_UPSERT,
    ENDPOINT_SALES_ORDERS, ENDPOINT_TOKEN,
};

/// Zoho's limit on records per insert/upsert call.
const MAX_RECORDS: usize = 100;
const THROTTLE_DESCRIPTION: &str =
    "You have made too many requests continuously. Please try again after some time.";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/crm/v8/Contacts/upsert", post(upsert_contacts))
        .route(
            "/crm/v8/Contacts",
            put(|st, h, b| updates::update(st, Module::Contacts, h, b)),
        )
        .route(
            "/crm/v8/Sales_Orders",
            post(create_sales_orders)
                .put(|st, h, b| updates::update(st, Module::SalesOrders, h, b)),
        )
        .route(
            "/crm/v8/Sales_Orders/upsert",
            post(updates::upsert_sales_orders),
        )
        .route("/_sandbox/state", get(state))
        .route("/_sandbox/faults", get(get_faults).post(set_faults))
        .route("/_sandbox/expire-tokens", post(expire_tokens))
        .with_state(shared)
}

pub(crate) fn snapshot(s: &State) -> SandboxState {
    SandboxState {
        contacts: s.contacts.clone(),
        sales_orders: s.sales_orders.clone(),
        calls: s.calls.clone(),
        token_refreshes: s.token_refreshes,
        token_throttled: s.token_throttled,
        max_in_flight: s.max_in_flight,
    }
}

async fn state(AxState(shared): AxState<Arc<Shared>>) -> Json<SandboxState> {
    Json(snapshot(&shared.lock()))
}

async fn get_faults(AxState(shared): AxState<Arc<Shared>>) -> Json<Faults> {
    Json(shared.lock().faults.clone())
}

async fn set_faults(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            shared.lock().faults = f.clone();
            Json(f).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("invalid faults: {e}")})),
        )
            .into_response(),
    }
}

async fn expire_tokens(AxState(shared): AxState<Arc<Shared>>) -> StatusCode {
    let now = Instant::now();
    for t in shared.lock().tokens.values_mut() {
        t.expires_at = now;
    }
    StatusCode::NO_CONTENT
}

// --- OAuth ------------------------------------------------------------------

fn token_error(code: &str) -> Response {
    // Zoho answers most token errors with HTTP 200.
    (StatusCode::OK, Json(json!({"error": code}))).into_response()
}

async fn token(
    AxState(shared): AxState<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = token_params(query, &body);
    let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let mut s = shared.lock();
    *s.calls.entry(ENDPOINT_TOKEN.to_string()).or_default() += 1;
    let refused = [
        ("grant_type", "refresh_token", "unsupported_grant_type"),
        ("client_id", s.opts.client_id.as_str(), "invalid_client"),
        (
            "client_secret",
            s.opts.client_secret.as_str(),
            "invalid_client_secret",
        ),
        (
            "refresh_token",
            s.opts.refresh_token.as_str(),
            "invalid_code",
        ),
    ]
    .into_iter()
    .find(|(name, want, _)| param(name) != *want);
    if let Some((_, _, code)) = refused {
        return token_error(code);
    }
    let now = Instant::now();
    if let Some(throttled) = throttle_refresh(&mut s, now) {
        return throttled;
    }
    issue_token(&mut s, now)
}

/// Zoho accepts the parameters in the query string and in a form body.
fn token_params(query: Option<String>, body: &[u8]) -> HashMap<String, String> {
    let mut params: HashMap<String, String> = query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(&q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        params.extend(form);
    }
    params
}

/// Counts a refresh at `now` against the window's limit; past it, Zoho's
/// "too many requests" answer.
fn throttle_refresh(s: &mut State, now: Instant) -> Option<Response> {
    let window = s.opts.refresh_window;
    while s
        .refresh_times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        s.refresh_times.pop_front();
    }
    if s.refresh_times.len() >= s.opts.refresh_limit {
        s.token_throttled += 1;
        let status =
            StatusCode::from_u16(s.opts.throttle_status).unwrap_or(StatusCode::BAD_REQUEST);
        return Some(
            (
                status,
                Json(json!({
                    "error_description": THROTTLE_DESCRIPTION,
                    "error": "Access Denied",
                    "status": "failure",
                })),
            )
                .into_response(),
        );
    }
    s.refresh_times.push_back(now);
    s.token_refreshes += 1;
    None
}

/// A new access token, valid from `now` for the configured lifetime.
fn issue_token(s: &mut State, now: Instant) -> Response {
    let mut rng = rand::rng();
    let token = format!(
        "1000.{:032x}.{:032x}",
        rng.random::<u128>(),
        rng.random::<u128>()
    );
    let lifetime = s.opts.token_lifetime;
    s.tokens.insert(
        token.clone(),
        TokenInfo {
            expires_at: now + lifetime,
        },
    );
    s.token_order.push_back(token.clone());
    // Past the cap Zoho silently invalidates the oldest token.
    while s.token_order.len() > s.opts.max_active_tokens.max(1) {
        if let Some(old) = s.token_order.pop_front() {
            s.tokens.remove(&old);
        }
    }
    (
        StatusCode::OK,
        Json(json!({
            "access_token": token,
            "scope": "ZohoCRM.modules.contacts.ALL ZohoCRM.modules.salesorders.ALL",
            "api_domain": s.base_url,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs().max(1),
        })),
    )
        .into_response()
}

// --- CRM API gate -------------------------------------------------------------

fn api_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    (
        status,
        Json(json!({"code": code, "details": details, "message": message, "status": "error"})),
    )
        .into_response()
}

fn reject(status: StatusCode, code: &str, message: &str, details: Value) -> Box<Response> {
    Box::new(api_error(status, code, message, details))
}

pub(super) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counting, concurrency, latency, authentication and forced faults, in that order.
async fn gate(
    shared: &Arc<Shared>,
    endpoint: &str,
    headers: &HeaderMap,
) -> Result<InFlight, Box<Response>> {
    let (latency, limit) = {
        let mut s = shared.lock();
        *s.calls.entry(endpoint.to_string()).or_default() += 1;
        (s.faults.latency, s.faults.concurrency_limit)
    };
    let now_in_flight = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let guard = InFlight(shared.clone());
    {
        let mut s = shared.lock();
        s.max_in_flight = s.max_in_flight.max(now_in_flight);
    }
    if limit.is_some_and(|l| now_in_flight > l) {
        return Err(Box::new(too_many_requests()));
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = auth.strip_prefix("Zoho-oauthtoken ") else {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_FAILURE",
            "Authentication failed",
            json!({}),
        ));
    };
    let mut s = shared.lock();
    let valid = s
        .tokens
        .get(token.trim())
        .is_some_and(|t| t.expires_at > Instant::now());
    if !valid {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid oauth token",
            json!({}),
        ));
    }
    if s.faults.fail_next_429 > 0 {
        s.faults.fail_next_429 -= 1;
        return Err(Box::new(too_many_requests()));
    }
    if s.faults.fail_next_5xx > 0 {
        s.faults.fail_next_5xx -= 1;
        let status = s
            .faults
            .status_5xx
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(reject(
            status,
            "INTERNAL_ERROR",
            "Internal Server Error",
            json!({}),
        ));
    }
    Ok(guard)
}

fn too_many_requests() -> Response {
    api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_REQUESTS",
        "too many requests. please try again after some time",
        json!({}),
    )
}

/// The gate, then the records: what every CRM write call passes before its
/// records are looked at. The guard counts the call in flight until dropped.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    endpoint: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(InFlight, Value, Vec<Value>), Box<Response>> {
    let guard = gate(shared, endpoint, headers).await?;
    let (doc, data) = records(body)?;
    Ok((guard, doc, data))
}

/// Parses `{"data": [...]}` with 1..=100 records, or answers the top-level error.
fn records(body: &Bytes) -> Result<(Value, Vec<Value>), Box<Response>> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| {
        reject(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "body is not valid JSON",
            json!({}),
        )
    })?;
    let Some(data) = doc.get("data").and_then(Value::as_array) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
            json!({"param_name": "data"}),
        ));
    };
    if data.is_empty() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "data is empty",
            json!({"api_name": "data"}),
        ));
    }
    if data.len() > MAX_RECORDS {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
            json!({"limit": MAX_RECORDS}),
        ));
    }
    let data = data.clone();
    Ok((doc, data))
}

/// Record `i` as an object, unless it is not one or a forced fault rejects it.
pub(super) fn record_object<'a>(
    faults: &Faults,
    rec: &'a Value,
    i: usize,
) -> Result<&'a Map<String, Value>, Value> {
    let Some(rec) = rec.as_object() else {
        return Err(record_error(
            "INVALID_DATA",
            "invalid data",
            json!({"json_path": format!("$.data[{i}]")}),
        ));
    };
    match rejected(faults, rec, i) {
        Some(err) => Err(err),
        None => Ok(rec),
    }
}

pub(super) fn record_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

pub(crate) fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The `INVALID_DATA` item of the first reject rule `rec` matches.
fn rejected(faults: &Faults, rec: &Map<String, Value>, i: usize) -> Option<Value> {
    faults.reject.iter().find_map(|r| {
        let v = rec.get(&r.field).and_then(field_text)?;
        (v == r.value).then(|| {
            record_error(
                "INVALID_DATA",
                "invalid data",
                json!({
                    "expected_data_type": "text",
                    "api_name": r.field,
                    "json_path": format!("$.data[{i}].{}", r.field),
                }),
            )
        })
    })
}

pub(super) fn success_details(id: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339();
    let user = json!({"name": "Integration User", "id": "5725767000000411001"});
    json!({
        "Modified_Time": now,
        "Modified_By": user,
        "Created_Time": now,
        "id": id,
        "Created_By": user,
    })
}

pub(super) fn batch_status(items: &[Value], all_ok: StatusCode) -> StatusCode {
    let ok = items
        .iter()
        .filter(|i| i.get("status").and_then(Value::as_str) == Some("success"))
        .count();
    if ok == items.len() {
        all_ok
    } else if ok == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    }
}

// --- Contacts upsert ------------------------------------------------------------

async fn upsert_contacts(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_guard, doc, data) = match admit(&shared, ENDPOINT_CONTACTS_UPSERT, &headers, &body).await
    {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut s = shared.lock();
    let dup_fields = duplicate_check_fields(&doc, &s.opts.default_contact_duplicate_fields);
    let items: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, rec)| upsert_one(&mut s, i, rec, &dup_fields))
        .collect();
    let status = batch_status(&items, StatusCode::OK);
    (status, Json(json!({"data": items}))).into_response()
}

/// The request's `duplicate_check_fields`, or the module's default.
pub(super) fn duplicate_check_fields(doc: &Value, default: &[String]) -> Vec<String> {
    match doc.get("duplicate_check_fields").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect(),
        None => default.to_vec(),
    }
}

fn upsert_one(s: &mut State, i: usize, rec: &Value, dup_fields: &[String]) -> Value {
    let rec = match record_object(&s.faults, rec, i) {
        Ok(rec) => rec,
        Err(err) => return err,
    };
    if let Some(phone) = rec.get("Phone").and_then(Value::as_str) {
        if phone.chars().any(char::is_alphabetic) {
            return record_error(
                "INVALID_DATA",
                "invalid data",
                json!({"expected_data_type": "phone", "api_name": "Phone",
                       "json_path": format!("$.data[{i}].Phone")}),
            );
        }
    }
    let existing = dup_fields.iter().find_map(|f| {
        let want = rec.get(f).and_then(field_text)?;
        let pos = *s.contact_index.get(&(f.clone(), want.clone()))?;
        let still = s.contacts[pos].fields.get(f).and_then(field_text);
        (still.as_deref() == Some(want.as_str())).then(|| (pos, f.clone()))
    });
    if let Some((pos, field)) = existing {
        let c = &mut s.contacts[pos];
        for (k, v) in rec {
            c.fields.insert(k.clone(), v.clone());
        }
        c.writes += 1;
        let id = c.id.clone();
        s.index_contact(pos);
        return json!({
            "code": "SUCCESS", "duplicate_field": field, "action": "update",
            "details": success_details(&id), "message": "record updated", "status": "success",
        });
    }
    let has_last_name = rec
        .get("Last_Name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.trim().is_empty());
    if !has_last_name {
        return record_error(
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": "Last_Name", "json_path": format!("$.data[{i}].Last_Name")}),
        );
    }
    let id = s.new_id();
    s.push_contact(StoredRecord {
        id: id.clone(),
        fields: rec.clone(),
        writes: 1,
    });
    json!({
        "code": "SUCCESS", "duplicate_field": null, "action": "insert",
        "details": success_details(&id), "message": "record added", "status": "success",
    })
}

// --- Sales orders -----------------------------------------------------------------

async fn create_sales_orders(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_guard, _, data) = match admit(&shared, ENDPOINT_SALES_ORDERS, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (items, stall) = {
        let mut s = shared.lock();
        let items: Vec<Value> = data
            .iter()
            .enumerate()
            .map(|(i, rec)| create_order(&mut s, i, rec))
            .collect();
        let created = items
            .iter()
            .any(|i| i.get("status").and_then(Value::as_str) == Some("success"));
        let stall = if created && s.faults.timeout_after_create_next > 0 {
            s.faults.timeout_after_create_next -= 1;
            Some(s.faults.stall)
        } else {
            None
        };
        (items, stall)
    };
    if let Some(stall) = stall {
        // The order exists; the caller's timeout fires before this answer arrives.
        tokio::time::sleep(stall).await;
    }
    let status = batch_status(&items, StatusCode::CREATED);
    (status, Json(json!({"data": items}))).into_response()
}

pub(super) fn create_order(s: &mut State, i: usize, rec: &Value) -> Value {
    let rec = match record_object(&s.faults, rec, i) {
        Ok(rec) => rec,
        Err(err) => return err,
    };
    if let Some(err) = missing_order_field(rec, i)
        .or_else(|| unknown_contact(s, rec, i))
        .or_else(|| duplicate_order(s, rec, i))
    {
        return err;
    }
    let id = s.push_order(rec.clone());
    let mut details = success_details(&id);
    details["$approval_state"] = json!("approved");
    json!({"code": "SUCCESS", "details": details, "message": "record added", "status": "success"})
}

/// The first mandatory field the order lacks: a subject, ordered items, a
/// product on each item.
fn missing_order_field(rec: &Map<String, Value>, i: usize) -> Option<Value> {
    let missing = |api_name: &str, path: String| {
        Some(record_error(
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": api_name, "json_path": path}),
        ))
    };
    let subject_ok = rec
        .get("Subject")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.trim().is_empty());
    if !subject_ok {
        return missing("Subject", format!("$.data[{i}].Subject"));
    }
    let items = rec
        .get("Ordered_Items")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    let Some(items) = items else {
        return missing("Ordered_Items", format!("$.data[{i}].Ordered_Items"));
    };
    let no_product = items.iter().position(|item| {
        item.get("Product_Name")
            .and_then(|p| p.get("id"))
            .and_then(field_text)
            .is_none()
    });
    no_product.and_then(|j| {
        missing(
            "Product_Name",
            format!("$.data[{i}].Ordered_Items[{j}].Product_Name"),
        )
    })
}

/// A `Contact_Name` lookup to a contact Zoho does not have.
pub(super) fn unknown_contact(s: &State, rec: &Map<String, Value>, i: usize) -> Option<Value> {
    let contact = rec.get("Contact_Name")?;
    let id = contact.get("id").and_then(field_text);
    let known = id
        .as_deref()
        .is_some_and(|id| s.contact_pos.contains_key(id));
    (!known).then(|| {
        record_error(
            "INVALID_DATA",
            "invalid data",
            json!({"api_name": "Contact_Name", "json_path": format!("$.data[{i}].Contact_Name"),
                   "expected_data_type": "lookup"}),
        )
    })
}

/// An order whose unique field matches a stored one, answered as Zoho does.
fn duplicate_order(s: &State, rec: &Map<String, Value>, i: usize) -> Option<Value> {
    let unique = &s.opts.sales_order_unique_field;
    let key = rec.get(unique).and_then(field_text)?;
    let dup = &s.sales_orders[*s.order_index.get(&key)?];
    Some(record_error(
        "DUPLICATE_DATA",
        "duplicate data",
        json!({
            "api_name": unique,
            "json_path": format!("$.data[{i}].{unique}"),
            "id": dup.id,
            "duplicate_record": {
                "id": dup.id,
                "Owner": {"name": "Integration User", "id": "5725767000000411001"},
                "module": {"api_name": "Sales_Orders", "id": "5725767000000002221"},
            },
            "more_records": false,
        }),
    ))
}
