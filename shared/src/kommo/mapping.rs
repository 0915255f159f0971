//! The one mapping from Kommo v4 leads and contacts to ERP values, shared by
//! the webhook processor and the full refresh so both write the same rows.
//!
//! Operators can change field ids, status rules and the user map in the
//! `kommo_field_map`, `kommo_status_map` and `kommo_user_map` tables without a
//! deploy; [`MappingConfig::load`] reads them and [`MappingCache`] keeps them
//! for a few seconds in a warm container. Everything else here is pure.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use uuid::Uuid;

use super::model::{Contact, CustomFieldValue, FieldValue, Lead};
use crate::platform::{db::DbPool, text::non_empty};

/// Kommo's "Closed - lost": outside the import even if the status table forgets it.
pub const STATUS_LOST: i64 = 143;
/// Kommo's "Closed - won".
pub const STATUS_WON: i64 = 142;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("Kommo lead {lead_id} cannot be mapped: {problem}")]
    Lead { lead_id: i64, problem: String },
    #[error("Kommo contact {contact_id} cannot be mapped: {problem}")]
    Contact { contact_id: i64, problem: String },
    #[error("mapping table `{table}` has a bad row: {problem}")]
    Config {
        table: &'static str,
        problem: String,
    },
    #[error("mapping tables could not be read: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("mapping tables unavailable: {0}")]
    Pool(String),
}

/// Custom field ids, from `kommo_field_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMap {
    /// "Date/Time Delivery": `bookings.start_at`.
    pub delivery_at: i64,
    /// "Date/Time Collect": `bookings.end_at`.
    pub collect_at: i64,
    pub vehicle_enum: i64,
    pub source_enum: i64,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            delivery_at: 1218176,
            collect_at: 1218178,
            vehicle_enum: 1234163,
            source_enum: 823206,
        }
    }
}

/// One row of `kommo_status_map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRule {
    pub label: String,
    pub booking_status: String,
    pub excluded: bool,
}

/// The mapping tables, loaded once per unit of work.
#[derive(Debug, Clone, Default)]
pub struct MappingConfig {
    pub fields: FieldMap,
    pub statuses: HashMap<i64, StatusRule>,
    /// Kommo user id → `staff_accounts.id`.
    pub users: HashMap<i64, Uuid>,
}

/// `bookings.status` of a status missing from `kommo_status_map`.
pub const DEFAULT_BOOKING_STATUS: &str = "requested";

impl MappingConfig {
    /// Reads the three mapping tables. Works with a client or a transaction
    /// (`&**pooled` for a deadpool connection).
    pub async fn load<C>(client: &C) -> Result<Self, MappingError>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        let mut cfg = MappingConfig::default();
        let mut seen = Vec::new();
        for row in client
            .query("SELECT field_key, field_id FROM kommo_field_map", &[])
            .await?
        {
            let key: String = row.try_get(0)?;
            let id: i64 = row.try_get(1)?;
            match key.as_str() {
                "delivery_at" => cfg.fields.delivery_at = id,
                "collect_at" => cfg.fields.collect_at = id,
                "vehicle_enum" => cfg.fields.vehicle_enum = id,
                "source_enum" => cfg.fields.source_enum = id,
                other => {
                    return Err(MappingError::Config {
                        table: "kommo_field_map",
                        problem: format!("unknown field_key `{other}`"),
                    })
                }
            }
            seen.push(key);
        }
        for key in ["delivery_at", "collect_at", "vehicle_enum", "source_enum"] {
            if !seen.iter().any(|k| k == key) {
                tracing::warn!(
                    field_key = key,
                    "kommo_field_map has no row; using the default field id"
                );
            }
        }

        for row in client
            .query(
                "SELECT status_id, label, booking_status, excluded FROM kommo_status_map",
                &[],
            )
            .await?
        {
            let status_id: i64 = row.try_get(0)?;
            let rule = StatusRule {
                label: row.try_get(1)?,
                booking_status: row.try_get::<_, String>(2)?.trim().to_string(),
                excluded: row.try_get(3)?,
            };
            if rule.booking_status.is_empty() {
                return Err(MappingError::Config {
                    table: "kommo_status_map",
                    problem: format!("status {status_id} has an empty booking_status"),
                });
            }
            cfg.statuses.insert(status_id, rule);
        }

        for row in client
            .query(
                "SELECT kommo_user_id, staff_account_id FROM kommo_user_map",
                &[],
            )
            .await?
        {
            cfg.users.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(cfg)
    }

    /// The booking status and exclusion of a Kommo status.
    pub fn status(&self, status_id: i64) -> (String, bool) {
        match self.statuses.get(&status_id) {
            Some(r) => (
                r.booking_status.clone(),
                r.excluded || status_id == STATUS_LOST,
            ),
            None => (DEFAULT_BOOKING_STATUS.to_string(), status_id == STATUS_LOST),
        }
    }
}

/// The mapping tables of a warm container, read at most once per `ttl`.
///
/// A webhook batch used to read all three tables before its Kommo fetch,
/// three round trips for tables an operator edits a few times a year. An
/// edit now applies within `ttl`, as a feature flag does.
pub struct MappingCache {
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<MappingConfig>)>>,
}

impl MappingCache {
    pub fn new(ttl: Duration) -> Self {
        MappingCache {
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The cached tables, or fresh ones once they are older than `ttl`.
    pub async fn get(&self, pool: &DbPool) -> Result<Arc<MappingConfig>, MappingError> {
        if let Some(cfg) = self.fresh() {
            return Ok(cfg);
        }
        let client = pool
            .get()
            .await
            .map_err(|e| MappingError::Pool(e.to_string()))?;
        let cfg = Arc::new(MappingConfig::load(&**client).await?);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), cfg.clone()));
        Ok(cfg)
    }

    fn fresh(&self) -> Option<Arc<MappingConfig>> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, cfg)| cfg.clone())
    }

    /// Forgets the cached tables, so the next batch reads them again.
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A lead as the ERP stores it (bookings, sales_leads, staging).
#[derive(Debug, Clone, PartialEq)]
pub struct MappedLead {
    pub lead_id: i64,
    /// Kommo's `updated_at`: an older one never overwrites a newer one.
    pub kommo_updated_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The lead's name, trimmed; `None` when Kommo has it empty.
    pub name: Option<String>,
    pub price: Option<i64>,
    pub pipeline_id: i64,
    pub status_id: i64,
    pub status_label: Option<String>,
    /// `bookings.status`, from `kommo_status_map` (default `requested`).
    pub booking_status: String,
    /// Excluded leads live in `sales_leads` only: no booking.
    pub excluded: bool,
    pub is_deleted: bool,
    pub responsible_user_id: Option<i64>,
    /// `staff_accounts.id` of the responsible user, via `kommo_user_map`.
    pub owner_staff_id: Option<Uuid>,
    /// Delivery, falling back to collect.
    pub start_at: Option<DateTime<Utc>>,
    /// Collect, falling back to delivery.
    pub end_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    /// `vehicles.kommo_vehicle_id`.
    pub vehicle_enum_id: Option<i64>,
    pub vehicle_name: Option<String>,
    pub source_enum_id: Option<i64>,
    /// `bookings.source` / `sales_leads.lead_source`: the enum's text.
    pub source: Option<String>,
    pub main_contact_id: Option<i64>,
    /// Values that were present but unusable (a date that is not a date…), for logs.
    pub warnings: Vec<String>,
}

impl MappedLead {
    /// `bookings.source_payload_id`, the idempotency key of ingestion.
    pub fn source_payload_id(&self) -> String {
        format!("kommo:{}", self.lead_id)
    }

    /// `sales_leads.lead_code`.
    pub fn lead_code(&self) -> String {
        self.lead_id.to_string()
    }
}

/// A contact as the ERP stores it (`clients`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedContact {
    pub contact_id: i64,
    /// Never empty when Kommo has any name; `""` otherwise (the column is NOT NULL).
    pub full_name: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// The first valid EMAIL value, trimmed (matching is case-insensitive).
    pub email: Option<String>,
    /// The first PHONE value as Kommo has it.
    pub phone: Option<String>,
    /// Digits only, so "+7 (900) 123-45-67" and "79001234567" match.
    pub phone_normalized: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

fn ts(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single()
}

/// A date/time custom field as an instant. The API gives Unix seconds;
/// digit strings, millisecond stamps, RFC 3339 and `YYYY-MM-DD HH:MM:SS`
/// (read as UTC) are accepted too. Zero and negative stamps mean "unset".
pub fn field_epoch(field: &CustomFieldValue) -> Result<Option<DateTime<Utc>>, String> {
    let Some(first) = field.values.iter().find(|v| !v.value.is_null()) else {
        return Ok(None);
    };
    value_epoch(first)
}

fn value_epoch(v: &FieldValue) -> Result<Option<DateTime<Utc>>, String> {
    if let Some(n) = v.as_i64() {
        if n <= 0 {
            return Ok(None);
        }
        // Seconds reach 1e11 only in the year 5138; bigger numbers are milliseconds.
        let secs = if n >= 100_000_000_000 { n / 1000 } else { n };
        return ts(secs)
            .map(Some)
            .ok_or_else(|| format!("timestamp {n} is out of range"));
    }
    let Some(text) = v.as_text() else {
        return Err(format!("unexpected date value {}", v.value));
    };
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(Some(d.with_timezone(&Utc)));
    }
    if let Ok(d) = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
        return Ok(Some(d.and_utc()));
    }
    Err(format!(
        "`{}` is not a date",
        t.chars().take(40).collect::<String>()
    ))
}

/// The first value's enum id and text of a select field.
fn enum_choice(field: Option<&CustomFieldValue>) -> (Option<i64>, Option<String>) {
    let Some(v) = field.and_then(|f| f.values.first()) else {
        return (None, None);
    };
    (v.enum_id, non_empty(v.as_text().as_deref()))
}

/// Maps a v4 lead. Fails only when the lead's own timestamps are unusable.
pub fn map_lead(lead: &Lead, cfg: &MappingConfig) -> Result<MappedLead, MappingError> {
    let bad = |problem: String| MappingError::Lead {
        lead_id: lead.id,
        problem,
    };
    let kommo_updated_at = ts(lead.updated_at)
        .ok_or_else(|| bad(format!("updated_at {} is out of range", lead.updated_at)))?;
    let created_at = ts(lead.created_at)
        .ok_or_else(|| bad(format!("created_at {} is out of range", lead.created_at)))?;

    let mut warnings = Vec::new();
    let mut date = |field_id: i64, what: &str| match lead.field(field_id).map(field_epoch) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(d))) => Some(d),
        Some(Err(e)) => {
            warnings.push(format!("{what} (field {field_id}): {e}"));
            None
        }
    };
    let delivery = date(cfg.fields.delivery_at, "delivery date");
    let collect = date(cfg.fields.collect_at, "collect date");
    let start_at = delivery.or(collect);
    let end_at = collect.or(delivery);
    if let (Some(s), Some(e)) = (start_at, end_at) {
        if e < s {
            warnings.push(format!("collect ({e}) is before delivery ({s})"));
        }
    }

    let (vehicle_enum_id, vehicle_name) = enum_choice(lead.field(cfg.fields.vehicle_enum));
    if vehicle_enum_id.is_none() && vehicle_name.is_some() {
        warnings.push("vehicle has a value but no enum id; no vehicle is linked".to_string());
    }
    let (source_enum_id, source) = enum_choice(lead.field(cfg.fields.source_enum));
    let (booking_status, excluded) = cfg.status(lead.status_id);

    Ok(MappedLead {
        lead_id: lead.id,
        kommo_updated_at,
        created_at,
        name: non_empty(Some(&lead.name)),
        price: lead.price,
        pipeline_id: lead.pipeline_id,
        status_id: lead.status_id,
        status_label: cfg.statuses.get(&lead.status_id).map(|r| r.label.clone()),
        booking_status,
        excluded,
        is_deleted: lead.is_deleted,
        responsible_user_id: lead.responsible_user_id,
        owner_staff_id: lead
            .responsible_user_id
            .and_then(|u| cfg.users.get(&u).copied()),
        start_at,
        end_at,
        closed_at: lead.closed_at.filter(|c| *c > 0).and_then(ts),
        vehicle_enum_id,
        vehicle_name,
        source_enum_id,
        source,
        main_contact_id: lead.main_contact_id(),
        warnings,
    })
}

/// Digits only; `None` when fewer than 5 digits remain (not a phone number).
pub fn normalize_phone(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 5).then_some(digits)
}

fn plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Maps a v4 contact.
pub fn map_contact(contact: &Contact) -> Result<MappedContact, MappingError> {
    let updated_at = match contact.updated_at {
        None => None,
        Some(u) => Some(ts(u).ok_or_else(|| MappingError::Contact {
            contact_id: contact.id,
            problem: format!("updated_at {u} is out of range"),
        })?),
    };
    let first_name = non_empty(Some(&contact.first_name));
    let last_name = non_empty(Some(&contact.last_name));
    let full_name = non_empty(Some(&contact.name)).unwrap_or_else(|| {
        [first_name.as_deref(), last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    });
    let email = contact.emails().into_iter().find(|e| plausible_email(e));
    let phones = contact.phones();
    // Prefer the first number that normalises, so "n/a" does not hide a real one.
    let (phone, phone_normalized) = phones
        .iter()
        .find_map(|p| normalize_phone(p).map(|n| (Some(p.clone()), Some(n))))
        .unwrap_or_else(|| (phones.first().cloned(), None));
    Ok(MappedContact {
        contact_id: contact.id,
        full_name,
        first_name,
        last_name,
        email,
        phone,
        phone_normalized,
        updated_at,
    })
}

/// Maps a lead and, when given, its main contact. A contact that is not the
/// lead's main contact is ignored (logged), so a caller's lookup slip cannot
/// attach the wrong client.
pub fn map_lead_with_contact(
    lead: &Lead,
    contact: Option<&Contact>,
    cfg: &MappingConfig,
) -> Result<(MappedLead, Option<MappedContact>), MappingError> {
    let mapped = map_lead(lead, cfg)?;
    let contact = match contact {
        Some(c) if Some(c.id) == mapped.main_contact_id => Some(map_contact(c)?),
        Some(c) => {
            tracing::warn!(lead_id = lead.id, contact_id = c.id, main = ?mapped.main_contact_id, "contact is not the lead's main contact; ignored");
            None
        }
        None => None,
    };
    Ok((mapped, contact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn cfg() -> MappingConfig {
        let mut statuses = HashMap::new();
        for (id, label, status, excluded) in [
            (79790631, "Request bot answering", "excluded", true),
            (91703923, "Follow up", "excluded", true),
            (143, "Closed - lost", "cancelled", true),
            (142, "Closed - won", "completed", false),
            (67548619, "Confirmed", "confirmed", false),
        ] {
            statuses.insert(
                id,
                StatusRule {
                    label: label.to_string(),
                    booking_status: status.to_string(),
                    excluded,
                },
            );
        }
        let mut users = HashMap::new();
        users.insert(504141, Uuid::from_u128(1));
        MappingConfig {
            fields: FieldMap::default(),
            statuses,
            users,
        }
    }

    fn lead(fields: Value, status_id: i64) -> Lead {
        Lead::from_value(json!({
            "id": 3912171, "name": "  Order #1042 ", "price": 1200, "responsible_user_id": 504141,
            "status_id": status_id, "pipeline_id": 8572511, "created_at": 1735689600,
            "updated_at": 1736000000, "closed_at": null, "custom_fields_values": fields,
            "_embedded": {"contacts": [{"id": 11, "is_main": false}, {"id": 12, "is_main": true}]}
        }))
        .unwrap()
    }

    fn dt(v: i64) -> Value {
        json!([{"value": v}])
    }

    #[test]
    fn maps_a_complete_lead() {
        let l = lead(
            json!([
                {"field_id": 1218176, "field_type": "date_time", "values": dt(1736100000)},
                {"field_id": 1218178, "field_type": "date_time", "values": dt(1736500000)},
                {"field_id": 1234163, "field_type": "select", "values": [{"value": "BMW X5", "enum_id": 3001003, "enum_code": null}]},
                {"field_id": 823206, "field_type": "select", "values": [{"value": " Instagram ", "enum_id": 555001}]},
                {"field_id": 1246483, "field_type": "text", "values": [{"value": "noise"}]}
            ]),
            67548619,
        );
        let m = map_lead(&l, &cfg()).unwrap();
        assert_eq!(m.lead_id, 3912171);
        assert_eq!(m.source_payload_id(), "kommo:3912171");
        assert_eq!(m.lead_code(), "3912171");
        assert_eq!(m.name.as_deref(), Some("Order #1042"));
        assert_eq!(m.price, Some(1200));
        assert_eq!(m.kommo_updated_at.timestamp(), 1736000000);
        assert_eq!(m.created_at.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!((m.pipeline_id, m.status_id), (8572511, 67548619));
        assert_eq!(m.booking_status, "confirmed");
        assert_eq!(m.status_label.as_deref(), Some("Confirmed"));
        assert!(!m.excluded);
        assert_eq!(m.owner_staff_id, Some(Uuid::from_u128(1)));
        assert_eq!(m.start_at.unwrap().timestamp(), 1736100000);
        assert_eq!(m.end_at.unwrap().timestamp(), 1736500000);
        assert_eq!(m.vehicle_enum_id, Some(3001003));
        assert_eq!(m.vehicle_name.as_deref(), Some("BMW X5"));
        assert_eq!(m.source_enum_id, Some(555001));
        assert_eq!(m.source.as_deref(), Some("Instagram"));
        assert_eq!(m.main_contact_id, Some(12));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn each_date_falls_back_to_the_other() {
        let only_delivery = lead(
            json!([{"field_id": 1218176, "values": dt(1736100000)}]),
            142,
        );
        let m = map_lead(&only_delivery, &cfg()).unwrap();
        assert_eq!(m.start_at.unwrap().timestamp(), 1736100000);
        assert_eq!(m.end_at, m.start_at);

        let only_collect = lead(
            json!([{"field_id": 1218178, "values": dt(1736500000)}]),
            142,
        );
        let m = map_lead(&only_collect, &cfg()).unwrap();
        assert_eq!(m.end_at.unwrap().timestamp(), 1736500000);
        assert_eq!(m.start_at, m.end_at);

        let none = lead(Value::Null, 142);
        let m = map_lead(&none, &cfg()).unwrap();
        assert!(m.start_at.is_none() && m.end_at.is_none());
        assert!(m.vehicle_enum_id.is_none() && m.source.is_none());
    }

    #[test]
    fn dates_are_read_defensively() {
        let f = |values: Value| CustomFieldValue {
            field_id: 1,
            field_name: None,
            field_code: None,
            field_type: Some("date_time".into()),
            values: serde_json::from_value(values).unwrap(),
        };
        let secs = |v: Value| field_epoch(&f(v)).unwrap().map(|d| d.timestamp());
        assert_eq!(secs(json!([{"value": 1729717200}])), Some(1729717200));
        assert_eq!(secs(json!([{"value": "1729717200"}])), Some(1729717200));
        assert_eq!(
            secs(json!([{"value": 1729717200123i64}])),
            Some(1729717200),
            "milliseconds"
        );
        assert_eq!(
            secs(json!([{"value": "2024-10-24T00:00:00+03:00"}])),
            Some(1729717200)
        );
        assert_eq!(
            secs(json!([{"value": "2024-10-23 21:00:00"}])),
            Some(1729717200)
        );
        assert_eq!(secs(json!([{"value": 0}])), None);
        assert_eq!(secs(json!([{"value": ""}])), None);
        assert_eq!(secs(json!([])), None);
        assert!(field_epoch(&f(json!([{"value": "next tuesday"}]))).is_err());
        assert!(field_epoch(&f(json!([{"value": true}]))).is_err());
    }

    #[test]
    fn a_bad_date_is_a_warning_and_the_other_date_is_used() {
        let l = lead(
            json!([
                {"field_id": 1218176, "values": [{"value": "soon"}]},
                {"field_id": 1218178, "values": dt(1736500000)}
            ]),
            142,
        );
        let m = map_lead(&l, &cfg()).unwrap();
        assert_eq!(m.start_at.unwrap().timestamp(), 1736500000);
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].contains("1218176"), "{:?}", m.warnings);
    }

    #[test]
    fn collect_before_delivery_is_kept_but_flagged() {
        let l = lead(
            json!([
                {"field_id": 1218176, "values": dt(1736500000)},
                {"field_id": 1218178, "values": dt(1736100000)}
            ]),
            142,
        );
        let m = map_lead(&l, &cfg()).unwrap();
        assert_eq!(m.start_at.unwrap().timestamp(), 1736500000);
        assert_eq!(m.end_at.unwrap().timestamp(), 1736100000);
        assert_eq!(m.warnings.len(), 1);
    }

    #[test]
    fn excluded_statuses_and_defaults() {
        let c = cfg();
        for s in [79790631, 91703923, 143] {
            let m = map_lead(&lead(Value::Null, s), &c).unwrap();
            assert!(m.excluded, "status {s} is excluded");
        }
        let won = map_lead(&lead(Value::Null, 142), &c).unwrap();
        assert_eq!(
            (won.booking_status.as_str(), won.excluded),
            ("completed", false)
        );
        let unknown = map_lead(&lead(Value::Null, 555), &c).unwrap();
        assert_eq!(unknown.booking_status, DEFAULT_BOOKING_STATUS);
        assert!(!unknown.excluded);
        assert!(unknown.status_label.is_none());
        // 143 is lost even when the table does not list it.
        let empty = MappingConfig::default();
        assert!(map_lead(&lead(Value::Null, 143), &empty).unwrap().excluded);
    }

    #[test]
    fn field_ids_come_from_the_config() {
        let mut c = cfg();
        c.fields.delivery_at = 999;
        let l = lead(
            json!([
                {"field_id": 999, "values": dt(1736100000)},
                {"field_id": 1218176, "values": dt(1700000000)}
            ]),
            142,
        );
        assert_eq!(
            map_lead(&l, &c).unwrap().start_at.unwrap().timestamp(),
            1736100000
        );
    }

    #[test]
    fn unmapped_owner_empty_name_and_enum_without_id() {
        let l = Lead::from_value(json!({
            "id": 5, "name": "", "responsible_user_id": 777, "status_id": 142, "pipeline_id": 1,
            "created_at": 1, "updated_at": 2, "price": "15.6",
            "custom_fields_values": [{"field_id": 1234163, "values": [{"value": "Mystery van"}]}]
        }))
        .unwrap();
        let m = map_lead(&l, &cfg()).unwrap();
        assert_eq!(m.name, None);
        assert_eq!(m.price, Some(16));
        assert_eq!(m.owner_staff_id, None);
        assert_eq!(m.responsible_user_id, Some(777));
        assert_eq!(m.vehicle_enum_id, None);
        assert_eq!(m.vehicle_name.as_deref(), Some("Mystery van"));
        assert_eq!(m.main_contact_id, None);
        assert_eq!(m.warnings.len(), 1);
    }

    #[test]
    fn out_of_range_timestamp_is_an_error() {
        let mut l = lead(Value::Null, 142);
        l.updated_at = i64::MAX;
        let err = map_lead(&l, &cfg()).unwrap_err();
        assert!(err.to_string().contains("3912171"), "{err}");
    }

    fn contact(v: Value) -> Contact {
        Contact::from_value(v).unwrap()
    }

    #[test]
    fn maps_a_contact() {
        let c = contact(json!({
            "id": 12, "name": " Sam Smith ", "first_name": "Sam", "last_name": "Smith", "updated_at": 1686670710,
            "custom_fields_values": [
                {"field_id": 178382, "field_code": "PHONE", "values": [
                    {"value": "n/a", "enum_id": 1}, {"value": "+7 (900) 123-45-67", "enum_id": 126290, "enum_code": "WORK"}]},
                {"field_id": 178384, "field_code": "EMAIL", "values": [
                    {"value": "not-an-email"}, {"value": " Sam@Example.com ", "enum_id": 126302}]}
            ]
        }));
        let m = map_contact(&c).unwrap();
        assert_eq!(m.contact_id, 12);
        assert_eq!(m.full_name, "Sam Smith");
        assert_eq!(m.first_name.as_deref(), Some("Sam"));
        assert_eq!(m.last_name.as_deref(), Some("Smith"));
        assert_eq!(m.email.as_deref(), Some("Sam@Example.com"));
        assert_eq!(m.phone.as_deref(), Some("+7 (900) 123-45-67"));
        assert_eq!(m.phone_normalized.as_deref(), Some("79001234567"));
        assert_eq!(m.updated_at.unwrap().timestamp(), 1686670710);
    }

    #[test]
    fn contact_name_fallbacks_and_missing_channels() {
        let m = map_contact(&contact(
            json!({"id": 1, "name": "", "first_name": "Ann", "last_name": " "}),
        ))
        .unwrap();
        assert_eq!(m.full_name, "Ann");
        assert_eq!(m.last_name, None);
        assert!(m.email.is_none() && m.phone.is_none() && m.phone_normalized.is_none());
        assert!(m.updated_at.is_none());
        let m = map_contact(&contact(json!({"id": 2, "name": null}))).unwrap();
        assert_eq!(m.full_name, "");
        let m = map_contact(&contact(json!({"id": 3, "custom_fields_values": [
            {"field_id": 1, "field_code": "PHONE", "values": [{"value": "ext. 12"}]}]})))
        .unwrap();
        assert_eq!(m.phone.as_deref(), Some("ext. 12"));
        assert_eq!(m.phone_normalized, None, "too few digits to match on");
    }

    #[test]
    fn phone_normalisation() {
        assert_eq!(
            normalize_phone("+7 (900) 123-45-67").as_deref(),
            Some("79001234567")
        );
        assert_eq!(
            normalize_phone("79001234567").as_deref(),
            Some("79001234567")
        );
        assert_eq!(normalize_phone("+1 555-0101"), Some("15550101".to_string()));
        assert_eq!(normalize_phone("12"), None);
        assert_eq!(normalize_phone("٣٣٣٣٣٣"), None, "only ASCII digits count");
    }

    #[test]
    fn lead_with_contact_only_takes_the_main_contact() {
        let l = lead(Value::Null, 142);
        let main = contact(json!({"id": 12, "name": "Main"}));
        let other = contact(json!({"id": 11, "name": "Other"}));
        let (m, c) = map_lead_with_contact(&l, Some(&main), &cfg()).unwrap();
        assert_eq!(m.main_contact_id, Some(12));
        assert_eq!(c.unwrap().full_name, "Main");
        let (_, c) = map_lead_with_contact(&l, Some(&other), &cfg()).unwrap();
        assert!(c.is_none());
        let (_, c) = map_lead_with_contact(&l, None, &cfg()).unwrap();
        assert!(c.is_none());
    }
}
