//! Outgoing webhooks in Kommo's real wire format: form-encoded, PHP-style
//! nested keys, legacy (v2) field names, every value a string.
//!
//! The bodies are built from the sandbox's current state, so a test can change
//! a lead and then replay the delivery Kommo would send for that change.

use serde::{Deserialize, Serialize};

use super::{
    data::{SandboxContact, SandboxLead},
    server::Shared,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEntity {
    Lead,
    Contact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAction {
    Add,
    Update,
    Delete,
    Restore,
    /// Leads only: a stage move.
    Status,
    Responsible,
}

impl WebhookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookAction::Add => "add",
            WebhookAction::Update => "update",
            WebhookAction::Delete => "delete",
            WebhookAction::Restore => "restore",
            WebhookAction::Status => "status",
            WebhookAction::Responsible => "responsible",
        }
    }
}

/// One item of a delivery. Several items (even of different entities and
/// actions) go into one body, as Kommo groups changes made together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub entity: WebhookEntity,
    pub action: WebhookAction,
    pub id: i64,
    /// Sent as `old_status_id` for lead `status`/`update` items.
    #[serde(default)]
    pub old_status_id: Option<i64>,
}

impl WebhookEvent {
    pub fn lead(action: WebhookAction, id: i64) -> Self {
        WebhookEvent {
            entity: WebhookEntity::Lead,
            action,
            id,
            old_status_id: None,
        }
    }

    /// A `leads[status]` item, the usual delivery for a stage move.
    pub fn lead_status(id: i64, old_status_id: i64) -> Self {
        WebhookEvent {
            entity: WebhookEntity::Lead,
            action: WebhookAction::Status,
            id,
            old_status_id: Some(old_status_id),
        }
    }

    pub fn contact(action: WebhookAction, id: i64) -> Self {
        WebhookEvent {
            entity: WebhookEntity::Contact,
            action,
            id,
            old_status_id: None,
        }
    }
}

/// The receiver's answer to a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookResponse {
    pub status: u16,
    pub body: String,
}

/// The percent-encoded form body of a delivery, from the current state.
pub(crate) fn form_body(st: &Shared, events: &[WebhookEvent]) -> String {
    let pairs = form_pairs(st, events);
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

/// The same delivery as decoded `(key, value)` pairs, in body order.
pub(crate) fn form_pairs(st: &Shared, events: &[WebhookEvent]) -> Vec<(String, String)> {
    let a = &st.account;
    let mut out = vec![
        ("account[subdomain]".to_string(), a.subdomain.clone()),
        ("account[id]".to_string(), a.id.to_string()),
        (
            "account[_links][self]".to_string(),
            format!("https://{}.kommo.com", a.subdomain),
        ),
    ];
    // Items are numbered per (entity, action) group, as Kommo does.
    let mut counters: Vec<((WebhookEntity, WebhookAction), usize)> = Vec::new();
    let store = st.store();
    for ev in events {
        let idx = match counters
            .iter_mut()
            .find(|(k, _)| *k == (ev.entity, ev.action))
        {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                counters.push(((ev.entity, ev.action), 1));
                0
            }
        };
        match ev.entity {
            WebhookEntity::Lead => {
                let prefix = format!("leads[{}][{idx}]", ev.action.as_str());
                match store.leads.get(&ev.id) {
                    Some(l) if ev.action == WebhookAction::Delete => {
                        push(&mut out, &prefix, "id", l.id);
                        push(&mut out, &prefix, "status_id", l.status_id);
                        push(&mut out, &prefix, "pipeline_id", l.pipeline_id);
                    }
                    Some(l) => lead_pairs(&mut out, &prefix, l, ev.old_status_id, a.id),
                    None => push(&mut out, &prefix, "id", ev.id),
                }
            }
            WebhookEntity::Contact => {
                let prefix = format!("contacts[{}][{idx}]", ev.action.as_str());
                match store.contacts.get(&ev.id) {
                    Some(c) if ev.action != WebhookAction::Delete => {
                        contact_pairs(&mut out, &prefix, c, a.id)
                    }
                    _ => push(&mut out, &prefix, "id", ev.id),
                }
                push(&mut out, &prefix, "type", "contact");
            }
        }
    }
    out
}

fn push(out: &mut Vec<(String, String)>, prefix: &str, key: &str, v: impl ToString) {
    out.push((format!("{prefix}[{key}]"), v.to_string()));
}

fn lead_pairs(
    out: &mut Vec<(String, String)>,
    p: &str,
    l: &SandboxLead,
    old_status_id: Option<i64>,
    account_id: i64,
) {
    push(out, p, "id", l.id);
    push(out, p, "name", &l.name);
    push(out, p, "status_id", l.status_id);
    if let Some(old) = old_status_id {
        push(out, p, "old_status_id", old);
    }
    push(out, p, "price", l.price);
    push(out, p, "responsible_user_id", l.responsible_user_id);
    push(out, p, "last_modified", l.updated_at);
    push(out, p, "modified_user_id", l.updated_by);
    push(out, p, "created_user_id", l.created_by);
    push(out, p, "date_create", l.created_at);
    push(out, p, "pipeline_id", l.pipeline_id);
    push(out, p, "account_id", account_id);
    custom_field_pairs(out, p, l.custom_fields_values.as_deref().unwrap_or(&[]));
    push(out, p, "created_at", l.created_at);
    push(out, p, "updated_at", l.updated_at);
}

fn contact_pairs(out: &mut Vec<(String, String)>, p: &str, c: &SandboxContact, account_id: i64) {
    push(out, p, "id", c.id);
    push(out, p, "name", &c.name);
    push(out, p, "responsible_user_id", c.responsible_user_id);
    push(out, p, "date_create", c.created_at);
    push(out, p, "last_modified", c.updated_at);
    push(out, p, "created_user_id", c.responsible_user_id);
    push(out, p, "modified_user_id", c.responsible_user_id);
    push(out, p, "account_id", account_id);
    custom_field_pairs(out, p, c.custom_fields_values.as_deref().unwrap_or(&[]));
    push(out, p, "created_at", c.created_at);
    push(out, p, "updated_at", c.updated_at);
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn custom_field_pairs(
    out: &mut Vec<(String, String)>,
    p: &str,
    fields: &[super::data::CustomFieldValue],
) {
    for (j, f) in fields.iter().enumerate() {
        let fp = format!("{p}[custom_fields][{j}]");
        push(out, &fp, "id", f.field_id);
        push(out, &fp, "name", &f.field_name);
        let is_date = matches!(f.field_type.as_str(), "date" | "date_time" | "birthday");
        for (k, v) in f.values.iter().enumerate() {
            let value = v.get("value").map(scalar).unwrap_or_default();
            if is_date {
                // Date values come without a `[value]` sub-key in webhooks.
                out.push((format!("{fp}[values][{k}]"), value));
            } else {
                out.push((format!("{fp}[values][{k}][value]"), value));
                if let Some(e) = v.get("enum_id").filter(|e| !e.is_null()) {
                    out.push((format!("{fp}[values][{k}][enum]"), scalar(e)));
                }
            }
        }
        if let Some(code) = &f.field_code {
            push(out, &fp, "code", code);
        }
    }
}

/// Posts a form body to `url` with the headers Kommo sends.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<WebhookResponse, reqwest::Error> {
    let id: u128 = rand::random();
    let hex = format!("{id:032x}");
    let request_id = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let resp = http
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("User-Agent", "amoCRM-Webhooks/3.0")
        .header("X-Amocrm-Requestid", request_id)
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Ok(WebhookResponse { status, body })
}
