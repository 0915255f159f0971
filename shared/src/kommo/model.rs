//! Kommo v4 wire model (leads, contacts, custom field values), parsed
//! defensively.
//!
//! Kommo's JSON is loose in practice: numeric fields sometimes arrive as
//! strings, `custom_fields_values` is `null` when empty, enum ids are optional,
//! new fields appear without notice (`price_with_minor_units` in 2026). Every
//! type here accepts those variants and ignores unknown fields; only a missing
//! or unusable `id` (or status/pipeline/timestamps on a lead) makes an entity
//! invalid.

use serde::{de, de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::platform::text::non_empty;

/// Why one entity of a response could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("Kommo {entity} {} is malformed: {problem}", id.map(|i| i.to_string()).unwrap_or_else(|| "(no id)".to_string()))]
pub struct EntityError {
    pub entity: &'static str,
    pub id: Option<i64>,
    pub problem: String,
}

/// One value of a custom field. `value` keeps its JSON type: text and
/// numeric fields give strings, date fields integers, checkboxes booleans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    #[serde(default)]
    pub value: Value,
    #[serde(default, deserialize_with = "opt_flex_i64", alias = "enum")]
    pub enum_id: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub enum_code: Option<String>,
}

impl FieldValue {
    /// The value as text: strings as they are, numbers and booleans printed.
    pub fn as_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The value as an integer: JSON integers, integral floats and digit strings.
    pub fn as_i64(&self) -> Option<i64> {
        value_as_i64(&self.value)
    }
}

/// One entry of `custom_fields_values`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldValue {
    #[serde(deserialize_with = "flex_i64")]
    pub field_id: i64,
    #[serde(default, deserialize_with = "opt_string")]
    pub field_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub field_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub field_type: Option<String>,
    #[serde(default, deserialize_with = "values_list")]
    pub values: Vec<FieldValue>,
}

impl CustomFieldValue {
    pub fn first(&self) -> Option<&FieldValue> {
        self.values.first()
    }
}

/// A lead's link to a contact (`_embedded.contacts[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactLink {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "flex_bool")]
    pub is_main: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogMetadata {
    #[serde(default, deserialize_with = "opt_flex_f64")]
    pub quantity: Option<f64>,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub catalog_id: Option<i64>,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub price_id: Option<i64>,
}

/// A lead's link to a catalog element (`_embedded.catalog_elements[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogElementLink {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default)]
    pub metadata: Option<CatalogMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadEmbedded {
    #[serde(default, deserialize_with = "null_as_default")]
    pub contacts: Vec<ContactLink>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub catalog_elements: Vec<CatalogElementLink>,
}

/// A v4 lead. `raw` is the JSON as Kommo sent it (for staging and debugging).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub name: String,
    /// Integer price in the account currency; fractional prices are rounded.
    #[serde(default, deserialize_with = "opt_flex_price")]
    pub price: Option<i64>,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub responsible_user_id: Option<i64>,
    #[serde(deserialize_with = "flex_i64")]
    pub status_id: i64,
    #[serde(deserialize_with = "flex_i64")]
    pub pipeline_id: i64,
    #[serde(deserialize_with = "flex_i64")]
    pub created_at: i64,
    #[serde(deserialize_with = "flex_i64")]
    pub updated_at: i64,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub closed_at: Option<i64>,
    #[serde(default, deserialize_with = "flex_bool")]
    pub is_deleted: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub custom_fields_values: Vec<CustomFieldValue>,
    #[serde(default, rename = "_embedded", deserialize_with = "null_as_default")]
    pub embedded: LeadEmbedded,
    #[serde(skip)]
    pub raw: Value,
}

/// Parses one entity from the API's JSON and keeps the JSON in the field
/// `raw` points at; a bad entity names its id when it has one.
fn parse_keeping_raw<T: DeserializeOwned>(
    v: Value,
    entity: &'static str,
    raw: fn(&mut T) -> &mut Value,
) -> Result<T, EntityError> {
    match T::deserialize(&v) {
        Ok(mut parsed) => {
            *raw(&mut parsed) = v;
            Ok(parsed)
        }
        Err(e) => Err(EntityError {
            entity,
            id: v.get("id").and_then(value_as_i64),
            problem: e.to_string(),
        }),
    }
}

impl Lead {
    /// Parses one lead from the API's JSON, keeping the raw value.
    pub fn from_value(v: Value) -> Result<Lead, EntityError> {
        parse_keeping_raw(v, "lead", |l: &mut Lead| &mut l.raw)
    }

    pub fn field(&self, field_id: i64) -> Option<&CustomFieldValue> {
        self.custom_fields_values
            .iter()
            .find(|f| f.field_id == field_id)
    }

    /// The main contact: the one flagged `is_main`, else the first linked one.
    pub fn main_contact_id(&self) -> Option<i64> {
        let contacts = &self.embedded.contacts;
        contacts
            .iter()
            .find(|c| c.is_main)
            .or_else(|| contacts.first())
            .map(|c| c.id)
    }
}

/// A v4 contact. `raw` is the JSON as Kommo sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub first_name: String,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub last_name: String,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub responsible_user_id: Option<i64>,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub created_at: Option<i64>,
    #[serde(default, deserialize_with = "opt_flex_i64")]
    pub updated_at: Option<i64>,
    #[serde(default, deserialize_with = "flex_bool")]
    pub is_deleted: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub custom_fields_values: Vec<CustomFieldValue>,
    #[serde(skip)]
    pub raw: Value,
}

impl Contact {
    pub fn from_value(v: Value) -> Result<Contact, EntityError> {
        parse_keeping_raw(v, "contact", |c: &mut Contact| &mut c.raw)
    }

    /// Non-empty values of the system field with this code (`PHONE`, `EMAIL`), in order.
    pub fn values_by_code(&self, code: &str) -> Vec<String> {
        self.custom_fields_values
            .iter()
            .filter(|f| {
                f.field_code
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(code))
            })
            .flat_map(|f| f.values.iter())
            .filter_map(|v| non_empty(v.as_text().as_deref()))
            .collect()
    }

    pub fn phones(&self) -> Vec<String> {
        self.values_by_code("PHONE")
    }

    pub fn emails(&self) -> Vec<String> {
        self.values_by_code("EMAIL")
    }
}

/// A sales pipeline and its statuses, from `GET /api/v4/leads/pipelines`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pipeline {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub name: String,
    #[serde(default, rename = "_embedded")]
    pub embedded: PipelineEmbedded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PipelineEmbedded {
    #[serde(default)]
    pub statuses: Vec<PipelineStatus>,
}

/// One stage of a pipeline; 142 (won) and 143 (lost) are in every pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PipelineStatus {
    #[serde(deserialize_with = "flex_i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "string_or_empty")]
    pub name: String,
}

/// The account's time zone, from `GET /api/v4/account?with=datetime_settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTimezone {
    /// IANA name, for example `Europe/Moscow`.
    pub timezone: String,
    /// For example `+03:00`, when Kommo gives it.
    pub offset: Option<String>,
}

impl AccountTimezone {
    /// The offset as a fixed offset (Kommo gives the current one; DST is not modelled).
    pub fn fixed_offset(&self) -> Option<chrono::FixedOffset> {
        let s = self.offset.as_deref()?.trim();
        let (sign, rest) = match s.as_bytes().first()? {
            b'+' => (1, &s[1..]),
            b'-' => (-1, &s[1..]),
            _ => (1, s),
        };
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
        chrono::FixedOffset::east_opt(sign * secs)
    }
}

// ---- lenient deserializers ------------------------------------------------------

pub(crate) fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

fn flex_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Value::deserialize(d)?;
    value_as_i64(&v)
        .ok_or_else(|| de::Error::custom(format!("expected an integer, got {}", kind(&v))))
}

fn opt_flex_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        _ => value_as_i64(&v)
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("expected an integer, got {}", kind(&v)))),
    }
}

/// Prices are integers, but tolerate floats and numeric strings (rounded).
fn opt_flex_price<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Value::deserialize(d)?;
    let f = match &v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.round() as i64)),
        _ => Err(de::Error::custom(format!(
            "expected a price, got {}",
            kind(&v)
        ))),
    }
}

fn opt_flex_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match &v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match &v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64().is_some_and(|i| i != 0),
        Value::String(s) => matches!(s.trim(), "1" | "true" | "Y" | "y"),
        _ => false,
    })
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn string_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_string(d)?.unwrap_or_default())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `values` is a list, but a single object (radiobutton quirk) or a bare
/// scalar (date quirk) is accepted too.
fn values_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FieldValue>, D::Error> {
    let v = Value::deserialize(d)?;
    let one = |item: Value| -> Result<FieldValue, D::Error> {
        match item {
            Value::Object(_) => FieldValue::deserialize(item).map_err(de::Error::custom),
            scalar => Ok(FieldValue {
                value: scalar,
                ..FieldValue::default()
            }),
        }
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(one).collect(),
        Value::Object(map) if map.contains_key("value") || map.contains_key("enum_id") => {
            Ok(vec![one(Value::Object(map))?])
        }
        // An object keyed by index: {"0": {...}, "1": {...}}.
        Value::Object(map) => map.into_iter().map(|(_, item)| one(item)).collect(),
        scalar => Ok(vec![one(scalar)?]),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a non-numeric string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lead_parses_the_documented_sample_and_tolerates_variants() {
        let v = json!({
            "id": 3912171, "name": "Order #1042", "price": 1200, "responsible_user_id": 504141,
            "group_id": 0, "status_id": 142, "pipeline_id": 3104455, "loss_reason_id": null,
            "created_by": 504141, "updated_by": 504141, "created_at": 1706784000,
            "updated_at": 1710432000, "closed_at": 1710432000, "closest_task_at": null,
            "is_deleted": false, "price_with_minor_units": 1200.0, "some_new_field": {"x": 1},
            "custom_fields_values": [
                {"field_id": 1246485, "field_name": "Units", "field_code": null, "field_type": "numeric",
                 "values": [{"value": "123"}]},
                {"field_id": 1246489, "field_name": "Channel", "field_code": null, "field_type": "select",
                 "values": [{"value": "Instagram", "enum_id": 908107, "enum_code": null}]},
                {"field_id": "1246495", "field_type": "date_time", "values": [{"value": 1726567767}]},
                {"field_id": 1246497, "field_type": "radiobutton", "values": {"value": "2", "enum": "566642"}}
            ],
            "_embedded": {
                "contacts": [{"id": 1, "is_main": false}, {"id": "10971465", "is_main": true}],
                "catalog_elements": [{"id": 525441, "metadata": {"quantity": "1.5", "catalog_id": 4521, "price_id": 2930681}}]
            }
        });
        let lead = Lead::from_value(v.clone()).unwrap();
        assert_eq!(lead.id, 3912171);
        assert_eq!(lead.price, Some(1200));
        assert_eq!(lead.main_contact_id(), Some(10971465));
        assert_eq!(
            lead.field(1246485).unwrap().first().unwrap().as_i64(),
            Some(123)
        );
        assert_eq!(
            lead.field(1246489).unwrap().first().unwrap().enum_id,
            Some(908107)
        );
        assert_eq!(
            lead.field(1246495).unwrap().first().unwrap().as_i64(),
            Some(1726567767)
        );
        assert_eq!(
            lead.field(1246497).unwrap().first().unwrap().enum_id,
            Some(566642)
        );
        assert_eq!(
            lead.embedded.catalog_elements[0]
                .metadata
                .as_ref()
                .unwrap()
                .quantity,
            Some(1.5)
        );
        assert_eq!(lead.raw, v);

        let bare = Lead::from_value(json!({
            "id": "7", "name": null, "price": null, "status_id": "143", "pipeline_id": 1,
            "created_at": "1706790000", "updated_at": 1706790000.0, "custom_fields_values": null,
            "_embedded": {"contacts": null}
        }))
        .unwrap();
        assert_eq!(
            (bare.id, bare.status_id, bare.updated_at),
            (7, 143, 1706790000)
        );
        assert!(
            bare.name.is_empty() && bare.price.is_none() && bare.custom_fields_values.is_empty()
        );
        assert_eq!(bare.main_contact_id(), None);
    }

    #[test]
    fn malformed_lead_names_its_id_and_problem() {
        let err = Lead::from_value(json!({"id": 9, "status_id": "lost", "pipeline_id": 1, "created_at": 1, "updated_at": 1}))
            .unwrap_err();
        assert_eq!(err.id, Some(9));
        assert!(err.to_string().contains("lead 9"), "{err}");
        assert!(err.problem.contains("integer"), "{err}");
        assert!(Lead::from_value(json!("not an object")).is_err());
        assert!(Lead::from_value(json!({"status_id": 1}))
            .unwrap_err()
            .id
            .is_none());
    }

    #[test]
    fn contact_phones_and_emails_by_code() {
        let c = Contact::from_value(json!({
            "id": 406322, "name": "Sam", "first_name": "Sam", "last_name": "", "updated_at": 1686670710,
            "custom_fields_values": [
                {"field_id": 178382, "field_code": "PHONE", "field_type": "multitext",
                 "values": [{"value": "19651796212", "enum_id": 126290, "enum_code": "WORK"},
                            {"value": " ", "enum_id": 126294}, {"value": "+15550001111", "enum_id": 126294, "enum_code": "MOB"}]},
                {"field_id": 178384, "field_code": "email", "values": [{"value": "sam@example.com", "enum_id": 126302}]},
                {"field_id": 782386, "field_code": null, "field_type": "birthday", "values": [{"value": 315522000}]}
            ]
        }))
        .unwrap();
        assert_eq!(c.phones(), vec!["19651796212", "+15550001111"]);
        assert_eq!(c.emails(), vec!["sam@example.com"]);
        assert_eq!(c.updated_at, Some(1686670710));
    }

    #[test]
    fn timezone_offset_parses() {
        let tz = |o: &str| AccountTimezone {
            timezone: "X".into(),
            offset: Some(o.into()),
        };
        assert_eq!(
            tz("+03:00").fixed_offset().unwrap().local_minus_utc(),
            3 * 3600
        );
        assert_eq!(
            tz("-05:30").fixed_offset().unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        assert!(tz("nonsense").fixed_offset().is_none());
    }
}
