//! Kommo account webhooks: the `application/x-www-form-urlencoded` delivery
//! with PHP-style nested keys, turned into typed events.
//!
//! Kommo sends legacy (v2-shaped) fields with every value as a string, and
//! its shapes drift: `values` may be an object instead of a list, date values
//! come without a `[value]` key, `linked_leads_id` is keyed by lead id, names
//! may be empty, and one body may carry several entities and actions. The
//! parser accepts all of those and rejects only bodies that cannot be a form
//! at all, so a delivery is either fully understood or refused with a precise
//! reason. Entities and actions we do not handle are skipped with a log line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::platform::text::{non_empty, storable, truncate};

/// Nesting deeper than this is not something Kommo sends (`leads[note][0][note][x]` is 4).
pub const MAX_DEPTH: usize = 8;

/// Kept short in errors and logs: keys come from the sender.
const MAX_KEY_IN_ERROR: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is empty")]
    Empty,
    #[error("pair {pair} is not valid UTF-8 once percent-decoded")]
    Encoding { pair: usize },
    #[error("pair {pair} has no `=`")]
    MissingEquals { pair: usize },
    #[error("key `{key}` is not a PHP-style nested key")]
    BadKey { key: String },
    #[error("key `{key}` nests deeper than {MAX_DEPTH} levels")]
    TooDeep { key: String },
    #[error("key `{key}` is used both as a value and as a group")]
    Conflict { key: String },
    #[error("`{path}` should be a group of fields")]
    NotAGroup { path: String },
    #[error("`{path}` is missing")]
    Missing { path: String },
    #[error("`{path}` is not a whole number")]
    NotANumber { path: String },
    #[error("the body holds neither an account block nor any Kommo entity")]
    NothingKnown,
}

/// One node of the decoded form: PHP turns `a[b][c]=1` into nested arrays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum FormValue {
    Text(String),
    Group(BTreeMap<String, FormValue>),
}

impl FormValue {
    fn as_text(&self) -> Option<&str> {
        match self {
            FormValue::Text(s) => Some(s),
            FormValue::Group(_) => None,
        }
    }

    fn as_group(&self) -> Option<&BTreeMap<String, FormValue>> {
        match self {
            FormValue::Group(g) => Some(g),
            FormValue::Text(_) => None,
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn decode_component(raw: &[u8], pair: usize) -> Result<String, ParseError> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes)
        .map(|s| storable(&s).into_owned())
        .map_err(|_| ParseError::Encoding { pair })
}

/// Splits `leads[status][0][id]` into `["leads", "status", "0", "id"]`.
/// An empty segment (`a[]`) means "append", as in PHP.
fn split_key(key: &str) -> Result<Vec<String>, ParseError> {
    let bad = || ParseError::BadKey {
        key: truncate(key, MAX_KEY_IN_ERROR),
    };
    let (base, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if base.is_empty() || base.contains(']') {
        return Err(bad());
    }
    let mut parts = vec![base.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let close = inner.find(']').ok_or_else(bad)?;
        let seg = &inner[..close];
        if seg.contains('[') {
            return Err(bad());
        }
        parts.push(seg.to_string());
        rest = &inner[close + 1..];
        if parts.len() > MAX_DEPTH {
            return Err(ParseError::TooDeep {
                key: truncate(key, MAX_KEY_IN_ERROR),
            });
        }
    }
    Ok(parts)
}

fn next_index(group: &BTreeMap<String, FormValue>) -> String {
    group
        .keys()
        .filter_map(|k| k.parse::<u64>().ok())
        .max()
        .map_or(0, |m| m + 1)
        .to_string()
}

fn insert(
    root: &mut BTreeMap<String, FormValue>,
    parts: &[String],
    value: String,
    key: &str,
) -> Result<(), ParseError> {
    let conflict = || ParseError::Conflict {
        key: truncate(key, MAX_KEY_IN_ERROR),
    };
    let mut group = root;
    for (i, part) in parts.iter().enumerate() {
        let seg = if part.is_empty() {
            next_index(group)
        } else {
            part.clone()
        };
        if i + 1 == parts.len() {
            if let Some(FormValue::Group(_)) = group.get(&seg) {
                return Err(conflict());
            }
            // A repeated scalar key keeps the last value, as PHP does.
            group.insert(seg, FormValue::Text(value));
            return Ok(());
        }
        let entry = group
            .entry(seg)
            .or_insert_with(|| FormValue::Group(BTreeMap::new()));
        group = match entry {
            FormValue::Group(g) => g,
            FormValue::Text(_) => return Err(conflict()),
        };
    }
    Ok(())
}

/// Decodes a form body into its nested tree, PHP-style.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, FormValue>, ParseError> {
    let mut root = BTreeMap::new();
    let mut pairs = 0usize;
    for (n, raw_pair) in body.split(|&b| b == b'&').enumerate() {
        // Trailing `&` and `&&` are harmless.
        if raw_pair.is_empty() {
            continue;
        }
        let eq = raw_pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or(ParseError::MissingEquals { pair: n })?;
        let key = decode_component(&raw_pair[..eq], n)?;
        let value = decode_component(&raw_pair[eq + 1..], n)?;
        let parts = split_key(&key)?;
        insert(&mut root, &parts, value, &key)?;
        pairs += 1;
    }
    if pairs == 0 {
        return Err(ParseError::Empty);
    }
    Ok(root)
}

/// Kommo's entity, as told apart by the top-level key and `contacts[..][type]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    Lead,
    Contact,
    Company,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Update,
    Delete,
    Status,
    Restore,
    Responsible,
    Note,
}

impl Action {
    fn from_key(s: &str) -> Option<Self> {
        Some(match s {
            "add" => Action::Add,
            "update" => Action::Update,
            "delete" => Action::Delete,
            "status" => Action::Status,
            "restore" => Action::Restore,
            "responsible" => Action::Responsible,
            "note" => Action::Note,
            _ => return None,
        })
    }
}

/// The `account[...]` block. Its position in the body varies between captures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Option<i64>,
    pub subdomain: Option<String>,
    /// `account[_links][self]`, for example `https://acme.kommo.com`.
    pub base_url: Option<String>,
}

/// One value of a custom field. `enum_id` is Kommo's numeric enum id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldValue {
    pub value: Option<String>,
    pub enum_id: Option<i64>,
    /// A non-numeric `enum` (older payloads sent `WORK`/`MOB`).
    pub enum_code: Option<String>,
}

impl FieldValue {
    /// The value as Unix seconds, when it is all digits (date fields).
    pub fn as_unix(&self) -> Option<i64> {
        let v = self.value.as_deref()?.trim();
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            v.parse().ok()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomField {
    pub id: i64,
    pub name: Option<String>,
    /// System code for contact fields: `PHONE`, `EMAIL`, `POSITION`…
    pub code: Option<String>,
    pub values: Vec<FieldValue>,
}

/// One entity in one action, as the webhook describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub entity: Entity,
    pub action: Action,
    /// The entity's id; for notes, the id of the noted entity when known.
    pub id: i64,
    /// `None` when Kommo sends an empty name (usual in status hooks).
    pub name: Option<String>,
    pub status_id: Option<i64>,
    pub old_status_id: Option<i64>,
    pub pipeline_id: Option<i64>,
    pub responsible_user_id: Option<i64>,
    pub created_at: Option<i64>,
    /// `updated_at`, or `last_modified` when absent (Unix seconds).
    pub updated_at: Option<i64>,
    pub custom_fields: Vec<CustomField>,
    /// For contacts: `linked_leads_id`, keyed by lead id in the payload.
    pub linked_lead_ids: Vec<i64>,
    /// Every other scalar field, untouched.
    pub other: BTreeMap<String, String>,
}

impl Event {
    pub fn custom_field(&self, id: i64) -> Option<&CustomField> {
        self.custom_fields.iter().find(|f| f.id == id)
    }
}

/// A part of the body that was understood but not handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    pub path: String,
    pub reason: String,
}

/// A whole delivery: the account block and every event, in body order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub account: Account,
    pub events: Vec<Event>,
    pub ignored: Vec<Ignored>,
}

impl Delivery {
    /// Lead ids whose current state must be fetched from the API.
    pub fn leads_to_fetch(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .events
            .iter()
            .filter(|e| {
                e.entity == Entity::Lead
                    && matches!(
                        e.action,
                        Action::Add
                            | Action::Update
                            | Action::Status
                            | Action::Restore
                            | Action::Responsible
                    )
            })
            .map(|e| e.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Top-level keys Kommo sends that this integration does not subscribe to.
const KNOWN_UNHANDLED: &[&str] = &[
    "task",
    "tasks",
    "unsorted",
    "catalogs",
    "message",
    "talk",
    "customers",
    "companies",
];

/// Parses a whole delivery body (already base64-decoded).
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, ParseError> {
    let root = parse_form(body)?;
    let mut delivery = Delivery::default();
    let mut known = false;
    for (top, node) in &root {
        match top.as_str() {
            "account" => {
                known = true;
                delivery.account = parse_account(node)?;
            }
            "leads" => {
                known = true;
                parse_entity_block(node, "leads", Entity::Lead, &mut delivery)?;
            }
            "contacts" => {
                known = true;
                parse_entity_block(node, "contacts", Entity::Contact, &mut delivery)?;
            }
            other => {
                known |= KNOWN_UNHANDLED.contains(&other);
                tracing::info!(key = %truncate(other, MAX_KEY_IN_ERROR), "webhook: ignoring an entity this integration does not handle");
                delivery.ignored.push(Ignored {
                    path: truncate(other, MAX_KEY_IN_ERROR),
                    reason: "entity not handled".into(),
                });
            }
        }
    }
    if !known {
        return Err(ParseError::NothingKnown);
    }
    Ok(delivery)
}

fn group<'a>(
    node: &'a FormValue,
    path: &str,
) -> Result<&'a BTreeMap<String, FormValue>, ParseError> {
    node.as_group().ok_or_else(|| ParseError::NotAGroup {
        path: truncate(path, MAX_KEY_IN_ERROR),
    })
}

/// Children of a group in list order: numeric keys by number, then the rest.
fn ordered(g: &BTreeMap<String, FormValue>) -> Vec<(&String, &FormValue)> {
    let mut items: Vec<(&String, &FormValue)> = g.iter().collect();
    items.sort_by_key(|(k, _)| (k.parse::<u64>().map_or(u64::MAX, |n| n), (*k).clone()));
    items
}

fn opt_text(g: &BTreeMap<String, FormValue>, key: &str) -> Option<String> {
    non_empty(g.get(key).and_then(FormValue::as_text))
}

fn opt_int(
    g: &BTreeMap<String, FormValue>,
    key: &str,
    path: &str,
) -> Result<Option<i64>, ParseError> {
    match opt_text(g, key) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ParseError::NotANumber {
                path: truncate(&format!("{path}[{key}]"), MAX_KEY_IN_ERROR),
            }),
    }
}

fn parse_account(node: &FormValue) -> Result<Account, ParseError> {
    let g = group(node, "account")?;
    let base_url = g
        .get("_links")
        .and_then(FormValue::as_group)
        .and_then(|l| opt_text(l, "self"));
    Ok(Account {
        id: opt_int(g, "id", "account")?,
        subdomain: opt_text(g, "subdomain"),
        base_url,
    })
}

fn parse_entity_block(
    node: &FormValue,
    top: &str,
    default_entity: Entity,
    delivery: &mut Delivery,
) -> Result<(), ParseError> {
    for (action_key, items) in group(node, top)? {
        let path = format!("{top}[{action_key}]");
        let Some(action) = Action::from_key(action_key) else {
            tracing::info!(path = %truncate(&path, MAX_KEY_IN_ERROR), "webhook: ignoring an unknown action");
            delivery.ignored.push(Ignored {
                path: truncate(&path, MAX_KEY_IN_ERROR),
                reason: "action not handled".into(),
            });
            continue;
        };
        for (i, item) in ordered(group(items, &path)?) {
            let item_path = format!("{path}[{i}]");
            let g = group(item, &item_path)?;
            let entity = match (default_entity, opt_text(g, "type").as_deref()) {
                (Entity::Contact, None | Some("contact")) => Entity::Contact,
                (Entity::Contact, Some("company")) => Entity::Company,
                (Entity::Contact, Some(other)) => {
                    tracing::info!(path = %truncate(&item_path, MAX_KEY_IN_ERROR), kind = %truncate(other, MAX_KEY_IN_ERROR), "webhook: ignoring a contact of unknown type");
                    delivery.ignored.push(Ignored {
                        path: truncate(&item_path, MAX_KEY_IN_ERROR),
                        reason: format!(
                            "unknown contact type `{}`",
                            truncate(other, MAX_KEY_IN_ERROR)
                        ),
                    });
                    continue;
                }
                (e, _) => e,
            };
            delivery
                .events
                .push(parse_item(g, entity, action, &item_path)?);
        }
    }
    Ok(())
}

/// Field names read into typed members; the rest land in `Event::other`.
const TYPED: &[&str] = &[
    "id",
    "name",
    "status_id",
    "old_status_id",
    "pipeline_id",
    "responsible_user_id",
    "created_at",
    "updated_at",
    "custom_fields",
    "linked_leads_id",
    "type",
];

fn parse_item(
    g: &BTreeMap<String, FormValue>,
    entity: Entity,
    action: Action,
    path: &str,
) -> Result<Event, ParseError> {
    // Notes nest one level deeper: `leads[note][0][note][...]`.
    let (g, path, id) = if action == Action::Note {
        let inner_path = format!("{path}[note]");
        let inner = match g.get("note") {
            Some(n) => group(n, &inner_path)?,
            None => g,
        };
        let id = match opt_int(inner, "element_id", &inner_path)? {
            Some(id) => id,
            None => required_int(inner, "id", &inner_path)?,
        };
        (inner, inner_path, id)
    } else {
        (g, path.to_string(), required_int(g, "id", path)?)
    };
    let path = path.as_str();

    let updated_at = match opt_int(g, "updated_at", path)? {
        Some(t) => Some(t),
        None => opt_int(g, "last_modified", path)?,
    };
    let created_at = match opt_int(g, "created_at", path)? {
        Some(t) => Some(t),
        None => opt_int(g, "date_create", path).ok().flatten(),
    };
    let custom_fields = match g.get("custom_fields") {
        None => Vec::new(),
        // `custom_fields=` with an empty value: nothing filled in.
        Some(FormValue::Text(s)) if s.trim().is_empty() => Vec::new(),
        Some(node) => {
            let cf_path = format!("{path}[custom_fields]");
            ordered(group(node, &cf_path)?)
                .into_iter()
                .map(|(j, f)| parse_custom_field(f, &format!("{cf_path}[{j}]")))
                .collect::<Result<_, _>>()?
        }
    };
    let linked_lead_ids = match g.get("linked_leads_id") {
        None => Vec::new(),
        Some(FormValue::Text(s)) if s.trim().is_empty() => Vec::new(),
        Some(node) => parse_linked_ids(node, &format!("{path}[linked_leads_id]"))?,
    };
    let other = g
        .iter()
        .filter(|(k, _)| !TYPED.contains(&k.as_str()))
        .filter_map(|(k, v)| v.as_text().map(|t| (k.clone(), t.to_string())))
        .collect();

    Ok(Event {
        entity,
        action,
        id,
        name: opt_text(g, "name"),
        status_id: opt_int(g, "status_id", path)?,
        old_status_id: opt_int(g, "old_status_id", path)?,
        pipeline_id: opt_int(g, "pipeline_id", path)?,
        responsible_user_id: opt_int(g, "responsible_user_id", path)?,
        created_at,
        updated_at,
        custom_fields,
        linked_lead_ids,
        other,
    })
}

fn required_int(g: &BTreeMap<String, FormValue>, key: &str, path: &str) -> Result<i64, ParseError> {
    opt_int(g, key, path)?.ok_or_else(|| ParseError::Missing {
        path: truncate(&format!("{path}[{key}]"), MAX_KEY_IN_ERROR),
    })
}

fn parse_custom_field(node: &FormValue, path: &str) -> Result<CustomField, ParseError> {
    let g = group(node, path)?;
    let values = match g.get("values") {
        None => Vec::new(),
        Some(FormValue::Text(s)) => {
            // `[values]=x`: a bare scalar, seen for single-value fields.
            vec![FieldValue {
                value: Some(s.clone()).filter(|s| !s.is_empty()),
                ..FieldValue::default()
            }]
        }
        Some(FormValue::Group(vg)) => {
            let is_list = !vg.is_empty() && vg.keys().all(|k| k.parse::<u64>().is_ok());
            if is_list {
                ordered(vg)
                    .into_iter()
                    .map(|(_, v)| field_value(v))
                    .collect()
            } else {
                // Radiobutton quirk: `values` is `{"value":…,"enum":…}`, not a list.
                vec![field_value(&FormValue::Group(vg.clone()))]
            }
        }
    };
    Ok(CustomField {
        id: required_int(g, "id", path)?,
        name: opt_text(g, "name"),
        code: opt_text(g, "code"),
        values,
    })
}

fn field_value(node: &FormValue) -> FieldValue {
    match node {
        // Date quirk: `values[0]=1729717200`, with no `[value]` key.
        FormValue::Text(s) => FieldValue {
            value: Some(s.clone()),
            ..FieldValue::default()
        },
        FormValue::Group(g) => {
            let raw_enum = opt_text(g, "enum").or_else(|| opt_text(g, "enum_id"));
            let (enum_id, enum_code) = match raw_enum {
                Some(e) => match e.parse::<i64>() {
                    Ok(n) => (Some(n), opt_text(g, "enum_code")),
                    Err(_) => (None, Some(e)),
                },
                None => (None, opt_text(g, "enum_code")),
            };
            FieldValue {
                value: g
                    .get("value")
                    .and_then(FormValue::as_text)
                    .map(str::to_string),
                enum_id,
                enum_code,
            }
        }
    }
}

/// `linked_leads_id[<lead_id>][ID]=<lead_id>`: the map is keyed by id, not 0..n.
fn parse_linked_ids(node: &FormValue, path: &str) -> Result<Vec<i64>, ParseError> {
    let mut ids = Vec::new();
    for (k, v) in group(node, path)? {
        let item_path = format!("{path}[{k}]");
        let raw = match v {
            FormValue::Text(t) => t.trim().to_string(),
            FormValue::Group(g) => match opt_text(g, "ID").or_else(|| opt_text(g, "id")) {
                Some(id) => id,
                None => k.clone(),
            },
        };
        let id = raw.parse::<i64>().map_err(|_| ParseError::NotANumber {
            path: truncate(&item_path, MAX_KEY_IN_ERROR),
        })?;
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Hex sha256 of the raw body: the dedupe key of a delivery.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// What the receiver puts on the `kommo-events` queue: the raw body, so the
/// processor dedupes on exactly what Kommo sent, plus a little metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDelivery {
    /// Envelope version, so a later receiver can change the shape safely.
    pub v: u32,
    /// The decoded form body, exactly as received.
    pub body: String,
    /// `body_hash(body)`, for logs; the processor recomputes it.
    pub sha256: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// API Gateway request id, for tracing a delivery across both functions.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Kommo's `X-Amocrm-Requestid` header.
    #[serde(default)]
    pub kommo_request_id: Option<String>,
    #[serde(default)]
    pub account_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("queue message is not a delivery envelope: {0}")]
    Json(String),
    #[error("queue message has envelope version {0}, expected 1")]
    Version(u32),
}

impl QueuedDelivery {
    pub fn new(
        body: String,
        request_id: Option<String>,
        kommo_request_id: Option<String>,
        account_id: Option<i64>,
    ) -> Self {
        QueuedDelivery {
            v: 1,
            sha256: body_hash(body.as_bytes()),
            body,
            received_at: chrono::Utc::now(),
            request_id,
            kommo_request_id,
            account_id,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and numbers always serialises")
    }

    pub fn from_json(s: &str) -> Result<Self, EnvelopeError> {
        // serde_json's message may quote a fragment of the body; keep only the position.
        let d: QueuedDelivery = serde_json::from_str(s).map_err(|e| {
            EnvelopeError::Json(format!(
                "{:?} at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if d.v != 1 {
            return Err(EnvelopeError::Version(d.v));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish().into_bytes()
    }

    /// Reference §1.4 (a): the documented `leads[status]` body, verbatim.
    const STATUS_BODY: &str = "account%5Bsubdomain%5D=acme&account%5Bid%5D=12345678&account%5B_links%5D%5Bself%5D=https%3A%2F%2Facme.kommo.com&leads%5Bstatus%5D%5B0%5D%5Bid%5D=15318175&leads%5Bstatus%5D%5B0%5D%5Bname%5D=&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=67548619&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=67548607&leads%5Bstatus%5D%5B0%5D%5Bprice%5D=1000&leads%5Bstatus%5D%5B0%5D%5Bresponsible_user_id%5D=12345678&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1726572758&leads%5Bstatus%5D%5B0%5D%5Bmodified_user_id%5D=11087123&leads%5Bstatus%5D%5B0%5D%5Bcreated_user_id%5D=11087123&leads%5Bstatus%5D%5B0%5D%5Bdate_create%5D=1726572752&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=8572511&leads%5Bstatus%5D%5B0%5D%5Baccount_id%5D=12345678&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bid%5D=1246489&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bname%5D=Select&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=2&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Benum%5D=908107&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bid%5D=1246491&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bname%5D=Date&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bvalues%5D%5B0%5D=1725915600&leads%5Bstatus%5D%5B0%5D%5Bcreated_at%5D=1726572752&leads%5Bstatus%5D%5B0%5D%5Bupdated_at%5D=1726572758";

    #[test]
    fn documented_status_body_parses_into_one_typed_event() {
        let d = parse_delivery(STATUS_BODY.as_bytes()).unwrap();
        assert_eq!(d.account.id, Some(12345678));
        assert_eq!(d.account.subdomain.as_deref(), Some("acme"));
        assert_eq!(
            d.account.base_url.as_deref(),
            Some("https://acme.kommo.com")
        );
        assert_eq!(d.events.len(), 1);
        let e = &d.events[0];
        assert_eq!(
            (e.entity, e.action, e.id),
            (Entity::Lead, Action::Status, 15318175)
        );
        assert_eq!(e.status_id, Some(67548619));
        assert_eq!(e.old_status_id, Some(67548607));
        assert_eq!(e.pipeline_id, Some(8572511));
        assert_eq!(e.updated_at, Some(1726572758));
        assert_eq!(e.other.get("price").map(String::as_str), Some("1000"));
        let select = e.custom_field(1246489).unwrap();
        assert_eq!(select.values[0].enum_id, Some(908107));
        assert_eq!(d.leads_to_fetch(), vec![15318175]);
    }

    #[test]
    fn quirk_values_as_object_instead_of_list() {
        let body = enc(&[
            ("leads[update][0][id]", "7"),
            ("leads[update][0][custom_fields][0][id]", "566640"),
            ("leads[update][0][custom_fields][0][values][value]", "2"),
            ("leads[update][0][custom_fields][0][values][enum]", "566642"),
        ]);
        let d = parse_delivery(&body).unwrap();
        let f = d.events[0].custom_field(566640).unwrap();
        assert_eq!(
            f.values,
            vec![FieldValue {
                value: Some("2".into()),
                enum_id: Some(566642),
                enum_code: None
            }]
        );
    }

    #[test]
    fn quirk_date_values_without_value_key() {
        let body = enc(&[
            ("leads[add][0][id]", "8"),
            ("leads[add][0][custom_fields][0][id]", "1218176"),
            ("leads[add][0][custom_fields][0][values][0]", "1729717200"),
        ]);
        let d = parse_delivery(&body).unwrap();
        let f = d.events[0].custom_field(1218176).unwrap();
        assert_eq!(f.values.len(), 1);
        assert_eq!(f.values[0].as_unix(), Some(1729717200));
    }

    #[test]
    fn quirk_linked_leads_keyed_by_lead_id() {
        let body = enc(&[
            ("contacts[update][0][id]", "37054081"),
            ("contacts[update][0][type]", "contact"),
            (
                "contacts[update][0][linked_leads_id][32966269][ID]",
                "32966269",
            ),
            (
                "contacts[update][0][linked_leads_id][15318175][ID]",
                "15318175",
            ),
        ]);
        let d = parse_delivery(&body).unwrap();
        assert_eq!(d.events[0].entity, Entity::Contact);
        assert_eq!(d.events[0].linked_lead_ids, vec![15318175, 32966269]);
    }

    #[test]
    fn quirk_empty_name_is_no_name() {
        let body = enc(&[
            ("leads[status][0][id]", "9"),
            ("leads[status][0][name]", ""),
        ]);
        let d = parse_delivery(&body).unwrap();
        assert_eq!(d.events[0].name, None);
    }

    #[test]
    fn quirk_several_entities_and_actions_in_one_body() {
        let body = enc(&[
            ("leads[update][0][id]", "1"),
            ("leads[update][1][id]", "2"),
            ("leads[status][0][id]", "1"),
            ("leads[delete][0][id]", "3"),
            ("contacts[update][0][id]", "10"),
            ("contacts[update][0][type]", "contact"),
            ("contacts[add][0][id]", "11"),
            ("contacts[add][0][type]", "company"),
            ("account[id]", "5"),
        ]);
        let d = parse_delivery(&body).unwrap();
        let got: Vec<(Entity, Action, i64)> = d
            .events
            .iter()
            .map(|e| (e.entity, e.action, e.id))
            .collect();
        assert_eq!(got.len(), 6);
        assert!(got.contains(&(Entity::Lead, Action::Update, 2)));
        assert!(got.contains(&(Entity::Lead, Action::Delete, 3)));
        assert!(got.contains(&(Entity::Contact, Action::Update, 10)));
        assert!(got.contains(&(Entity::Company, Action::Add, 11)));
        assert_eq!(d.leads_to_fetch(), vec![1, 2]);
        assert_eq!(d.account.id, Some(5));
    }

    #[test]
    fn quirk_all_scalars_are_strings_and_birthday_is_display_formatted() {
        let body = enc(&[
            ("contacts[update][0][id]", "1"),
            ("contacts[update][0][custom_fields][0][id]", "782386"),
            (
                "contacts[update][0][custom_fields][0][values][0][value]",
                "12.01.1980",
            ),
            ("contacts[update][0][custom_fields][1][id]", "735649"),
            ("contacts[update][0][custom_fields][1][code]", "PHONE"),
            (
                "contacts[update][0][custom_fields][1][values][0][value]",
                "+1 555 0100",
            ),
            (
                "contacts[update][0][custom_fields][1][values][0][enum]",
                "718321",
            ),
        ]);
        let d = parse_delivery(&body).unwrap();
        let bday = d.events[0].custom_field(782386).unwrap();
        assert_eq!(bday.values[0].value.as_deref(), Some("12.01.1980"));
        assert_eq!(bday.values[0].as_unix(), None);
        let phone = d.events[0].custom_field(735649).unwrap();
        assert_eq!(phone.code.as_deref(), Some("PHONE"));
        assert_eq!(phone.values[0].value.as_deref(), Some("+1 555 0100"));
    }

    #[test]
    fn list_order_is_numeric_not_lexical() {
        let pairs: Vec<(String, String)> = (0..12)
            .map(|i| (format!("leads[update][{i}][id]"), (100 + i).to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let d = parse_delivery(&enc(&refs)).unwrap();
        let ids: Vec<i64> = d.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (100..112).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_entities_actions_and_types_are_ignored_not_rejected() {
        let body = enc(&[
            ("task[add][0][id]", "1"),
            ("leads[explode][0][id]", "2"),
            ("contacts[add][0][id]", "3"),
            ("contacts[add][0][type]", "robot"),
            ("leads[note][0][note][id]", "44"),
            ("leads[note][0][note][element_id]", "4"),
        ]);
        let d = parse_delivery(&body).unwrap();
        assert_eq!(d.events.len(), 1);
        assert_eq!((d.events[0].action, d.events[0].id), (Action::Note, 4));
        let paths: Vec<&str> = d.ignored.iter().map(|i| i.path.as_str()).collect();
        assert!(paths.contains(&"task"));
        assert!(paths.contains(&"leads[explode]"));
        assert!(paths.contains(&"contacts[add][0]"));
    }

    #[test]
    fn malformed_bodies_get_precise_errors() {
        assert_eq!(parse_delivery(b""), Err(ParseError::Empty));
        assert_eq!(parse_delivery(b"&&"), Err(ParseError::Empty));
        assert_eq!(
            parse_delivery(br#"{"leads":{"add":[]}}"#),
            Err(ParseError::MissingEquals { pair: 0 })
        );
        assert!(matches!(
            parse_delivery(b"leads%5Badd=1"),
            Err(ParseError::BadKey { .. })
        ));
        assert!(matches!(
            parse_delivery(b"leads[add]x=1"),
            Err(ParseError::BadKey { .. })
        ));
        assert!(matches!(
            parse_delivery(b"a%FF%FE=1"),
            Err(ParseError::Encoding { pair: 0 })
        ));
        assert!(matches!(
            parse_delivery(b"leads[add][0][id]=1&leads[add][0]=x"),
            Err(ParseError::Conflict { .. })
        ));
        assert_eq!(
            parse_delivery(b"leads[add][0][id]=abc"),
            Err(ParseError::NotANumber {
                path: "leads[add][0][id]".into()
            })
        );
        assert_eq!(
            parse_delivery(b"leads[add][0][name]=x"),
            Err(ParseError::Missing {
                path: "leads[add][0][id]".into()
            })
        );
        assert!(matches!(
            parse_delivery(b"leads=1"),
            Err(ParseError::NotAGroup { .. })
        ));
        assert_eq!(parse_delivery(b"foo=bar"), Err(ParseError::NothingKnown));
        assert!(matches!(
            parse_delivery(b"a[1][2][3][4][5][6][7][8][9]=1"),
            Err(ParseError::TooDeep { .. })
        ));
    }

    #[test]
    fn plus_is_a_space_and_encoded_plus_is_a_plus() {
        let d =
            parse_delivery(b"leads[add][0][id]=1&leads[add][0][name]=Van+hire+%2B+driver").unwrap();
        assert_eq!(d.events[0].name.as_deref(), Some("Van hire + driver"));
    }

    #[test]
    fn empty_brackets_append_like_php() {
        let tree = parse_form(b"a[]=x&a[]=y").unwrap();
        let a = tree["a"].as_group().unwrap();
        assert_eq!(a["0"], FormValue::Text("x".into()));
        assert_eq!(a["1"], FormValue::Text("y".into()));
    }

    #[test]
    fn envelope_round_trips_and_rejects_other_versions() {
        let q = QueuedDelivery::new("a=1".into(), Some("r".into()), None, Some(5));
        let back = QueuedDelivery::from_json(&q.to_json()).unwrap();
        assert_eq!(back, q);
        assert_eq!(back.sha256, body_hash(b"a=1"));
        let mut v: serde_json::Value = serde_json::from_str(&q.to_json()).unwrap();
        v["v"] = 2.into();
        assert!(matches!(
            QueuedDelivery::from_json(&v.to_string()),
            Err(EnvelopeError::Version(2))
        ));
        assert!(QueuedDelivery::from_json("nope").is_err());
    }
}
