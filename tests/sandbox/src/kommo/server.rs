//! HTTP routes of the Kommo sandbox: the v4 API under `/api/v4` and the
//! control endpoints under `/_sandbox`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use axum::{
    extract::{Path, RawQuery, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    data::{AccountData, FieldDef, Pipeline, SandboxContact, SandboxLead, User},
    faults::{FaultState, Faults, Verdict},
    webhook::WebhookEvent,
};

/// Kommo answers more than this with its default page size instead of an error.
pub const MAX_LIMIT: usize = 250;
pub const DEFAULT_LIMIT: usize = 50;

/// Account-level settings served by `GET /api/v4/account`.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    pub id: i64,
    pub name: String,
    pub subdomain: String,
    pub timezone: String,
    pub timezone_offset: String,
}

pub(crate) struct Store {
    pub leads: BTreeMap<i64, SandboxLead>,
    pub contacts: BTreeMap<i64, SandboxContact>,
    pub pipelines: Vec<Pipeline>,
    pub users: Vec<User>,
    pub lead_fields: Vec<FieldDef>,
    pub contact_fields: Vec<FieldDef>,
    /// Leads deleted right after a leads list answers the given page: a
    /// delete made by a user while a client pages through the list.
    pub delete_after_page: Vec<(usize, i64)>,
}

impl Store {
    pub fn new(data: AccountData) -> Self {
        Store {
            leads: data.leads.into_iter().map(|l| (l.id, l)).collect(),
            contacts: data.contacts.into_iter().map(|c| (c.id, c)).collect(),
            pipelines: data.pipelines,
            users: data.users,
            lead_fields: data.lead_fields,
            contact_fields: data.contact_fields,
            delete_after_page: Vec::new(),
        }
    }
}

pub(crate) struct Shared {
    pub token: String,
    pub account: AccountInfo,
    pub base_url: String,
    pub store: Mutex<Store>,
    pub faults: Mutex<FaultState>,
    pub http: reqwest::Client,
}

impl Shared {
    // A panic while holding a lock only happens in a failing test; the data is still usable.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn faults(&self) -> MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type AppState = Arc<Shared>;

pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v4/leads", get(list_leads))
        .route("/api/v4/leads/{id}", get(get_lead))
        .route("/api/v4/leads/pipelines", get(list_pipelines))
        .route("/api/v4/leads/custom_fields", get(lead_fields))
        .route("/api/v4/contacts", get(list_contacts))
        .route("/api/v4/contacts/{id}", get(get_contact))
        .route("/api/v4/contacts/custom_fields", get(contact_fields))
        .route("/api/v4/users", get(list_users))
        .route("/api/v4/account", get(account))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), api_gate));
    let control = Router::new()
        .route("/_sandbox/faults", get(get_faults).post(set_faults))
        .route("/_sandbox/stats", get(get_stats))
        .route("/_sandbox/stats/reset", post(reset_stats))
        .route("/_sandbox/leads", post(upsert_lead))
        .route("/_sandbox/contacts", post(upsert_contact))
        .route("/_sandbox/webhook", post(send_webhook));
    api.merge(control).with_state(state)
}

// ---- problem+json and other canned answers -------------------------------------

pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = json!({
        "title": title,
        "type": format!("https://httpstatus.es/{}", status.as_u16()),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

const NGINX_403: &str = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn hal(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/hal+json")],
        body.to_string(),
    )
        .into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not found")
}

// ---- the gate every API request passes: latency, faults, auth, counting ------

async fn api_gate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();

    let latency = st.faults().latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let verdict = st.faults().judge(Instant::now());
    let fail_page = st.faults().faults.fail_leads_page;
    let resp = match verdict {
        Verdict::IpBlocked => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html")],
            NGINX_403,
        )
            .into_response(),
        Verdict::RateLimited => problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests per second",
        ),
        Verdict::Forced(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            problem(status, "Forced failure (sandbox fault)")
        }
        Verdict::Pass if !authorized(&st.token, req.headers()) => {
            problem(StatusCode::UNAUTHORIZED, "Invalid user name or password")
        }
        Verdict::Pass
            if fail_page.is_some_and(|p| path == "/api/v4/leads" && page_of(&query) == p) =>
        {
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error (sandbox fault on this page)",
            )
        }
        Verdict::Pass => next.run(req).await,
    };
    st.faults()
        .record(&method, &path, &query, resp.status().as_u16());
    resp
}

fn authorized(token: &str, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

fn page_of(query: &str) -> u32 {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "page")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(1)
}

// ---- list query parsing --------------------------------------------------------

#[derive(Debug, Default)]
struct ListQuery {
    page: usize,
    limit: usize,
    with: HashSet<String>,
    ids: Vec<i64>,
    created_from: Option<i64>,
    created_to: Option<i64>,
    updated_from: Option<i64>,
    updated_to: Option<i64>,
    pipeline_ids: Vec<i64>,
    statuses: BTreeMap<String, (Option<i64>, Option<i64>)>,
    order: Option<(String, bool)>,
    /// Every parameter but `page`, to rebuild the `_links`.
    rest: Vec<(String, String)>,
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{key}: `{v}` is not a valid number"))
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| format!("query string: {e}"))?;
    let mut q = ListQuery {
        page: 1,
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    for (k, v) in pairs {
        if k != "page" {
            q.rest.push((k.clone(), v.clone()));
        }
        match k.as_str() {
            "page" => {
                q.page = num(&k, &v)?;
                if q.page == 0 {
                    return Err("page: must be at least 1".to_string());
                }
            }
            "limit" => {
                let l: usize = num(&k, &v)?;
                q.limit = if l == 0 || l > MAX_LIMIT {
                    DEFAULT_LIMIT
                } else {
                    l
                };
            }
            "with" => q.with.extend(v.split(',').map(|s| s.trim().to_string())),
            "filter[created_at][from]" => q.created_from = Some(num(&k, &v)?),
            "filter[created_at][to]" => q.created_to = Some(num(&k, &v)?),
            "filter[updated_at][from]" => q.updated_from = Some(num(&k, &v)?),
            "filter[updated_at][to]" => q.updated_to = Some(num(&k, &v)?),
            _ if k == "filter[id]" || k.starts_with("filter[id][") => {
                for part in v.split(',').filter(|s| !s.trim().is_empty()) {
                    q.ids.push(num(&k, part)?);
                }
            }
            _ if k == "filter[pipeline_id]" || k.starts_with("filter[pipeline_id][") => {
                q.pipeline_ids.push(num(&k, &v)?)
            }
            _ if k.starts_with("filter[statuses][") => {
                let rest = &k["filter[statuses][".len()..];
                let (idx, field) = rest
                    .split_once("][")
                    .ok_or_else(|| format!("{k}: malformed status filter"))?;
                let entry = q.statuses.entry(idx.to_string()).or_default();
                match field.trim_end_matches(']') {
                    "pipeline_id" => entry.0 = Some(num(&k, &v)?),
                    "status_id" => entry.1 = Some(num(&k, &v)?),
                    _ => return Err(format!("{k}: unknown status filter field")),
                }
            }
            _ if k.starts_with("order[") => {
                let field = k.trim_start_matches("order[").trim_end_matches(']');
                if !["created_at", "updated_at", "id"].contains(&field) {
                    return Err(format!(
                        "{k}: can only order by created_at, updated_at or id"
                    ));
                }
                let desc = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(format!("{k}: must be asc or desc")),
                };
                q.order = Some((field.to_string(), desc));
            }
            // Kommo ignores parameters it does not know.
            _ => {}
        }
    }
    Ok(q)
}

fn in_range(v: i64, from: Option<i64>, to: Option<i64>) -> bool {
    from.is_none_or(|f| v >= f) && to.is_none_or(|t| v <= t)
}

/// Builds a page answer; an empty page is HTTP 204 with no body, as in Kommo.
fn paged(st: &Shared, path: &str, key: &str, q: &ListQuery, items: Vec<Value>) -> Response {
    if items.is_empty() {
        return no_content();
    }
    let href = |page: usize| {
        let mut pairs = q.rest.clone();
        pairs.push(("page".to_string(), page.to_string()));
        let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        json!({ "href": format!("{}{}?{}", st.base_url, path, qs) })
    };
    let mut links = serde_json::Map::new();
    links.insert("self".to_string(), href(q.page));
    // Kommo cannot count matches, so `next` is there even on the last page.
    links.insert("next".to_string(), href(q.page + 1));
    if q.page > 1 {
        links.insert("first".to_string(), href(1));
        links.insert("prev".to_string(), href(q.page - 1));
    }
    hal(json!({
        "_page": q.page,
        "_links": links,
        "_embedded": { key: items },
    }))
}

fn page_slice<T>(items: Vec<T>, q: &ListQuery) -> Vec<T> {
    let start = (q.page - 1).saturating_mul(q.limit);
    items.into_iter().skip(start).take(q.limit).collect()
}

// ---- v4 JSON rendering -----------------------------------------------------------

pub(crate) fn lead_json(
    base: &str,
    account_id: i64,
    l: &SandboxLead,
    with_contacts: bool,
    with_catalog: bool,
) -> Value {
    let mut embedded = serde_json::Map::new();
    embedded.insert("tags".to_string(), json!([]));
    embedded.insert("companies".to_string(), json!([]));
    if with_contacts {
        let contacts: Vec<Value> = l
            .contact_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({
                    "id": id,
                    "is_main": i == 0,
                    "_links": { "self": { "href": format!("{base}/api/v4/contacts/{id}") } },
                })
            })
            .collect();
        embedded.insert("contacts".to_string(), Value::Array(contacts));
    }
    if with_catalog {
        let elements: Vec<Value> = l
            .catalog_elements
            .iter()
            .map(|c| json!({ "id": c.id, "metadata": { "quantity": c.quantity, "catalog_id": c.catalog_id } }))
            .collect();
        embedded.insert("catalog_elements".to_string(), Value::Array(elements));
    }
    json!({
        "id": l.id,
        "name": l.name,
        "price": l.price,
        "responsible_user_id": l.responsible_user_id,
        "group_id": 0,
        "status_id": l.status_id,
        "pipeline_id": l.pipeline_id,
        "loss_reason_id": null,
        "created_by": l.created_by,
        "updated_by": l.updated_by,
        "created_at": l.created_at,
        "updated_at": l.updated_at,
        "closed_at": l.closed_at,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": l.custom_fields_values,
        "score": null,
        "account_id": account_id,
        "labor_cost": null,
        "_links": { "self": { "href": format!("{base}/api/v4/leads/{}", l.id) } },
        "_embedded": embedded,
    })
}

pub(crate) fn contact_json(base: &str, account_id: i64, c: &SandboxContact) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "responsible_user_id": c.responsible_user_id,
        "group_id": 0,
        "created_by": c.responsible_user_id,
        "updated_by": c.responsible_user_id,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "closest_task_at": null,
        "is_deleted": false,
        "is_unsorted": false,
        "custom_fields_values": c.custom_fields_values,
        "account_id": account_id,
        "_links": { "self": { "href": format!("{base}/api/v4/contacts/{}", c.id) } },
        "_embedded": { "tags": [], "companies": [] },
    })
}

// ---- API handlers ----------------------------------------------------------------

async fn list_leads(State(st): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_list_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
    };
    let with_contacts = q.with.contains("contacts");
    let with_catalog = q.with.contains("catalog_elements");
    let statuses: Vec<(Option<i64>, Option<i64>)> = q.statuses.values().copied().collect();
    let items: Vec<Value> = {
        let mut store = st.store();
        let ids: HashSet<i64> = q.ids.iter().copied().collect();
        let mut matched: Vec<&SandboxLead> = store
            .leads
            .values()
            .filter(|l| ids.is_empty() || ids.contains(&l.id))
            .filter(|l| in_range(l.created_at, q.created_from, q.created_to))
            .filter(|l| in_range(l.updated_at, q.updated_from, q.updated_to))
            .filter(|l| q.pipeline_ids.is_empty() || q.pipeline_ids.contains(&l.pipeline_id))
            .filter(|l| {
                statuses.is_empty()
                    || statuses.iter().any(|(p, s)| {
                        p.is_none_or(|p| p == l.pipeline_id) && s.is_none_or(|s| s == l.status_id)
                    })
            })
            .collect();
        if let Some((field, desc)) = &q.order {
            let key = |l: &SandboxLead| match field.as_str() {
                "created_at" => (l.created_at, l.id),
                "updated_at" => (l.updated_at, l.id),
                _ => (l.id, l.id),
            };
            matched.sort_by_key(|l| key(l));
            if *desc {
                matched.reverse();
            }
        }
        let items = page_slice(matched, &q)
            .into_iter()
            .map(|l| lead_json(&st.base_url, st.account.id, l, with_contacts, with_catalog))
            .collect();
        delete_after(&mut store, &q);
        items
    };
    paged(&st, "/api/v4/leads", "leads", &q, items)
}

/// Carries out the deletes due once a paged list (not a lookup by id) has
/// answered `q.page`.
fn delete_after(store: &mut Store, q: &ListQuery) {
    if !q.ids.is_empty() {
        return;
    }
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut store.delete_after_page)
        .into_iter()
        .partition(|(page, _)| *page == q.page);
    store.delete_after_page = later;
    for (_, id) in due {
        store.leads.remove(&id);
    }
}

async fn get_lead(
    State(st): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return problem(StatusCode::NOT_FOUND, "Not found");
    };
    let with: HashSet<String> = parse_list_query(raw.as_deref())
        .map(|q| q.with)
        .unwrap_or_default();
    let store = st.store();
    match store.leads.get(&id) {
        Some(l) => hal(lead_json(
            &st.base_url,
            st.account.id,
            l,
            with.contains("contacts"),
            with.contains("catalog_elements"),
        )),
        None => no_content(),
    }
}

async fn list_contacts(State(st): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_list_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
    };
    let items: Vec<Value> = {
        let store = st.store();
        let ids: HashSet<i64> = q.ids.iter().copied().collect();
        let mut matched: Vec<&SandboxContact> = store
            .contacts
            .values()
            .filter(|c| ids.is_empty() || ids.contains(&c.id))
            .filter(|c| in_range(c.created_at, q.created_from, q.created_to))
            .filter(|c| in_range(c.updated_at, q.updated_from, q.updated_to))
            .collect();
        if let Some((field, desc)) = &q.order {
            let key = |c: &SandboxContact| match field.as_str() {
                "created_at" => (c.created_at, c.id),
                "updated_at" => (c.updated_at, c.id),
                _ => (c.id, c.id),
            };
            matched.sort_by_key(|c| key(c));
            if *desc {
                matched.reverse();
            }
        }
        page_slice(matched, &q)
            .into_iter()
            .map(|c| contact_json(&st.base_url, st.account.id, c))
            .collect()
    };
    paged(&st, "/api/v4/contacts", "contacts", &q, items)
}

async fn get_contact(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return problem(StatusCode::NOT_FOUND, "Not found");
    };
    let store = st.store();
    match store.contacts.get(&id) {
        Some(c) => hal(contact_json(&st.base_url, st.account.id, c)),
        None => no_content(),
    }
}

async fn list_pipelines(State(st): State<AppState>) -> Response {
    let store = st.store();
    let pipelines: Vec<Value> = store
        .pipelines
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let statuses: Vec<Value> = p
                .statuses
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    json!({
                        "id": s.id, "name": s.name, "sort": (j + 1) * 10, "is_editable": s.id != 142 && s.id != 143,
                        "pipeline_id": p.id, "color": "#99ccff", "type": 0, "account_id": st.account.id,
                    })
                })
                .collect();
            json!({
                "id": p.id, "name": p.name, "sort": (i + 1) * 10, "is_main": i == 0,
                "is_unsorted_on": true, "is_archive": false, "account_id": st.account.id,
                "_embedded": { "statuses": statuses },
            })
        })
        .collect();
    hal(json!({
        "_total_items": pipelines.len(),
        "_links": { "self": { "href": format!("{}/api/v4/leads/pipelines", st.base_url) } },
        "_embedded": { "pipelines": pipelines },
    }))
}

fn fields_json(defs: &[FieldDef], account_id: i64) -> Value {
    let fields: Vec<Value> = defs
        .iter()
        .map(|f| {
            let enums: Option<Vec<Value>> = (!f.enums.is_empty()).then(|| {
                f.enums
                    .iter()
                    .enumerate()
                    .map(|(i, e)| json!({ "id": e.id, "value": e.value, "sort": (i + 1) * 10 }))
                    .collect()
            });
            json!({
                "id": f.id, "name": f.name, "code": f.code, "type": f.field_type,
                "account_id": account_id, "is_api_only": false, "enums": enums,
            })
        })
        .collect();
    json!({ "_page": 1, "_embedded": { "custom_fields": fields } })
}

async fn lead_fields(State(st): State<AppState>) -> Response {
    let store = st.store();
    hal(fields_json(&store.lead_fields, st.account.id))
}

async fn contact_fields(State(st): State<AppState>) -> Response {
    let store = st.store();
    hal(fields_json(&store.contact_fields, st.account.id))
}

async fn list_users(State(st): State<AppState>) -> Response {
    let store = st.store();
    let users: Vec<Value> = store
        .users
        .iter()
        .map(|u| json!({ "id": u.id, "name": u.name, "email": u.email, "lang": "en" }))
        .collect();
    hal(json!({
        "_total_items": users.len(),
        "_page": 1,
        "_embedded": { "users": users },
    }))
}

async fn account(State(st): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let with: HashSet<String> = parse_list_query(raw.as_deref())
        .map(|q| q.with)
        .unwrap_or_default();
    let a = &st.account;
    let mut embedded = serde_json::Map::new();
    if with.contains("datetime_settings") {
        embedded.insert(
            "datetime_settings".to_string(),
            json!({
                "date_pattern": "d.m.Y H:i",
                "short_date_pattern": "d.m.Y",
                "short_time_pattern": "H:i",
                "date_formant": "d.m.Y",
                "time_format": "H:i:s",
                "timezone": a.timezone,
                "timezone_offset": a.timezone_offset,
            }),
        );
    }
    let current_user = st.store().users.first().map(|u| u.id).unwrap_or(0);
    hal(json!({
        "id": a.id,
        "name": a.name,
        "subdomain": a.subdomain,
        "created_at": 1_585_840_134,
        "created_by": current_user,
        "updated_at": 1_585_840_134,
        "updated_by": current_user,
        "current_user_id": current_user,
        "country": "AE",
        "currency": "USD",
        "currency_symbol": "$",
        "customers_mode": "disabled",
        "is_unsorted_on": true,
        "is_loss_reason_enabled": true,
        "is_helpbot_enabled": false,
        "is_technical_account": false,
        "contact_name_display_order": 1,
        "_links": { "self": { "href": format!("{}/api/v4/account", st.base_url) } },
        "_embedded": embedded,
    }))
}

// ---- control endpoints -------------------------------------------------------------

async fn get_faults(State(st): State<AppState>) -> Json<Faults> {
    Json(st.faults().faults.clone())
}

async fn set_faults(State(st): State<AppState>, Json(f): Json<Faults>) -> Json<Faults> {
    st.faults().set(f.clone());
    Json(f)
}

async fn get_stats(State(st): State<AppState>) -> Response {
    let f = st.faults();
    Json(json!({ "stats": f.stats, "requests": f.log.len() })).into_response()
}

async fn reset_stats(State(st): State<AppState>) -> StatusCode {
    st.faults().reset_stats();
    StatusCode::NO_CONTENT
}

async fn upsert_lead(State(st): State<AppState>, Json(l): Json<SandboxLead>) -> Response {
    let id = l.id;
    st.store().leads.insert(id, l);
    (StatusCode::OK, Json(json!({ "id": id }))).into_response()
}

async fn upsert_contact(State(st): State<AppState>, Json(c): Json<SandboxContact>) -> Response {
    let id = c.id;
    st.store().contacts.insert(id, c);
    (StatusCode::OK, Json(json!({ "id": id }))).into_response()
}

#[derive(Deserialize)]
struct WebhookRequest {
    url: String,
    events: Vec<WebhookEvent>,
}

async fn send_webhook(State(st): State<AppState>, Json(req): Json<WebhookRequest>) -> Response {
    let body = super::webhook::form_body(&st, &req.events);
    match super::webhook::post(&st.http, &req.url, body).await {
        Ok(r) => Json(json!({ "status": r.status, "body": r.body })).into_response(),
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            &format!("webhook delivery failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_understands_kommo_filters() {
        let q = parse_list_query(Some(
            "filter%5Bid%5D%5B%5D=5&filter%5Bid%5D%5B1%5D=6&filter[created_at][from]=10&limit=400&page=3&order[created_at]=desc&with=contacts,catalog_elements&filter[statuses][0][pipeline_id]=1&filter[statuses][0][status_id]=142",
        ))
        .unwrap();
        assert_eq!(q.ids, vec![5, 6]);
        assert_eq!(q.created_from, Some(10));
        assert_eq!(q.limit, DEFAULT_LIMIT, "over 250 falls back to the default");
        assert_eq!(q.page, 3);
        assert_eq!(q.order, Some(("created_at".to_string(), true)));
        assert!(q.with.contains("catalog_elements"));
        assert_eq!(q.statuses.values().next(), Some(&(Some(1), Some(142))));
        assert!(!q.rest.iter().any(|(k, _)| k == "page"));
        assert!(parse_list_query(Some("page=x")).is_err());
        assert!(parse_list_query(Some("filter[id][]=abc")).is_err());
    }
}
