//! Deterministic account data: pipelines, statuses, users, custom fields,
//! leads and contacts, generated from a seed and a size.
//!
//! Ids grow with `created_at`, as they do in a real Kommo account, so paging
//! by id and paging by creation date agree unless a test mutates a lead.

use chrono::{Datelike, TimeZone, Utc};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Lead custom field "Date/Time Delivery" (`date_time`).
pub const FIELD_DELIVERY: i64 = 1218176;
/// Lead custom field "Date/Time Collect" (`date_time`).
pub const FIELD_COLLECT: i64 = 1218178;
/// Lead custom field "Vehicle" (`select`).
pub const FIELD_VEHICLE: i64 = 1234163;
/// Lead custom field "Source" (`select`).
pub const FIELD_SOURCE: i64 = 823206;
/// Lead custom field "Comment" (`text`), noise the mapping must ignore.
pub const FIELD_COMMENT: i64 = 1246483;
/// Lead custom field "Units" (`numeric`, served as a string like Kommo does).
pub const FIELD_UNITS: i64 = 1246485;
/// Contact system field PHONE (`multitext`).
pub const FIELD_PHONE: i64 = 178382;
/// Contact system field EMAIL (`multitext`).
pub const FIELD_EMAIL: i64 = 178384;

pub const PHONE_ENUM_WORK: i64 = 126290;
pub const PHONE_ENUM_MOB: i64 = 126294;
pub const EMAIL_ENUM_WORK: i64 = 126302;

/// Won and lost exist in every pipeline.
pub const STATUS_WON: i64 = 142;
pub const STATUS_LOST: i64 = 143;
pub const STATUS_BOT_ANSWERING: i64 = 79790631;
pub const STATUS_FOLLOW_UP: i64 = 91703923;

pub const PIPELINE_RENTALS: i64 = 8572511;
pub const PIPELINE_CORPORATE: i64 = 8572599;

/// First lead id; later ones follow in creation order.
pub const FIRST_LEAD_ID: i64 = 30_000_001;
/// First contact id.
pub const FIRST_CONTACT_ID: i64 = 50_000_001;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub id: i64,
    pub name: String,
    pub pipeline_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pipeline {
    pub id: i64,
    pub name: String,
    pub statuses: Vec<Status>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

/// An enum option of a select field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnumOption {
    pub id: i64,
    pub value: String,
}

/// A custom field definition, as `GET /api/v4/leads/custom_fields` would list it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldDef {
    pub id: i64,
    pub name: String,
    pub code: Option<String>,
    #[serde(rename = "type")]
    pub field_type: String,
    pub enums: Vec<EnumOption>,
}

/// One entry of `custom_fields_values`, in the v4 shape. `values` items are
/// kept as JSON because their shape depends on the field type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomFieldValue {
    pub field_id: i64,
    pub field_name: String,
    pub field_code: Option<String>,
    pub field_type: String,
    pub values: Vec<Value>,
}

/// A lead's link to a catalog element (`_embedded.catalog_elements[]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogLink {
    pub id: i64,
    pub catalog_id: i64,
    pub quantity: f64,
}

/// A lead as the sandbox stores it. `contact_ids[0]` is the main contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxLead {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub responsible_user_id: i64,
    pub status_id: i64,
    pub pipeline_id: i64,
    pub created_by: i64,
    pub updated_by: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub closed_at: Option<i64>,
    /// `None` is served as `"custom_fields_values": null`, as Kommo does for leads without fields.
    pub custom_fields_values: Option<Vec<CustomFieldValue>>,
    pub contact_ids: Vec<i64>,
    pub catalog_elements: Vec<CatalogLink>,
}

impl SandboxLead {
    /// A bare lead without custom fields or contacts.
    pub fn new(id: i64, name: &str, pipeline_id: i64, status_id: i64, created_at: i64) -> Self {
        SandboxLead {
            id,
            name: name.to_string(),
            price: 0,
            responsible_user_id: USERS[0].0,
            status_id,
            pipeline_id,
            created_by: 0,
            updated_by: 0,
            created_at,
            updated_at: created_at,
            closed_at: None,
            custom_fields_values: None,
            contact_ids: Vec::new(),
            catalog_elements: Vec::new(),
        }
    }

    /// Sets (or replaces) a custom field's values.
    pub fn set_field(&mut self, field: CustomFieldValue) {
        let fields = self.custom_fields_values.get_or_insert_with(Vec::new);
        fields.retain(|f| f.field_id != field.field_id);
        fields.push(field);
    }

    /// Removes a custom field; an emptied list becomes `null` as in Kommo.
    pub fn remove_field(&mut self, field_id: i64) {
        if let Some(fields) = self.custom_fields_values.as_mut() {
            fields.retain(|f| f.field_id != field_id);
            if fields.is_empty() {
                self.custom_fields_values = None;
            }
        }
    }

    pub fn field(&self, field_id: i64) -> Option<&CustomFieldValue> {
        self.custom_fields_values
            .as_ref()
            .and_then(|f| f.iter().find(|f| f.field_id == field_id))
    }
}

/// A contact as the sandbox stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxContact {
    pub id: i64,
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    pub responsible_user_id: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub custom_fields_values: Option<Vec<CustomFieldValue>>,
}

impl SandboxContact {
    pub fn new(id: i64, first_name: &str, last_name: &str, created_at: i64) -> Self {
        SandboxContact {
            id,
            name: format!("{first_name} {last_name}").trim().to_string(),
            first_name: first_name.to_string(),
            last_name: last_name.to_string(),
            responsible_user_id: USERS[0].0,
            created_at,
            updated_at: created_at,
            custom_fields_values: None,
        }
    }

    /// Replaces the PHONE field with one work number (or removes it on `None`).
    pub fn set_phone(&mut self, phone: Option<&str>) {
        self.set_multitext(
            FIELD_PHONE,
            "Phone",
            "PHONE",
            phone,
            PHONE_ENUM_WORK,
            "WORK",
        );
    }

    /// Replaces the EMAIL field with one work address (or removes it on `None`).
    pub fn set_email(&mut self, email: Option<&str>) {
        self.set_multitext(
            FIELD_EMAIL,
            "Email",
            "EMAIL",
            email,
            EMAIL_ENUM_WORK,
            "WORK",
        );
    }

    fn set_multitext(
        &mut self,
        field_id: i64,
        name: &str,
        code: &str,
        value: Option<&str>,
        enum_id: i64,
        enum_code: &str,
    ) {
        let fields = self.custom_fields_values.get_or_insert_with(Vec::new);
        fields.retain(|f| f.field_id != field_id);
        if let Some(v) = value {
            fields.push(multitext(field_id, name, code, &[(v, enum_id, enum_code)]));
        }
        if fields.is_empty() {
            self.custom_fields_values = None;
        }
    }
}

/// Users of the generated account: (id, name, email).
pub const USERS: [(i64, &str, &str); 5] = [
    (504141, "Anna Petrova", "anna@example.test"),
    (504142, "Boris Ivanov", "boris@example.test"),
    (504143, "Carla Gomez", "carla@example.test"),
    (504144, "Dmitri Orlov", "dmitri@example.test"),
    (504145, "Eva Novak", "eva@example.test"),
];

const VEHICLES: [(i64, &str); 10] = [
    (3001001, "Toyota Land Cruiser 300"),
    (3001002, "Mercedes-Benz V-Class"),
    (3001003, "BMW X5"),
    (3001004, "Volkswagen Multivan"),
    (3001005, "Kia Carnival"),
    (3001006, "Hyundai Staria"),
    (3001007, "Range Rover Sport"),
    (3001008, "Tesla Model Y"),
    (3001009, "Ford Transit"),
    (3001010, "Skoda Kodiaq"),
];

const SOURCES: [(i64, &str); 6] = [
    (555001, "Instagram"),
    (555002, "Website"),
    (555003, "Referral"),
    (555004, "Google Ads"),
    (555005, "Walk-in"),
    (555006, "WhatsApp"),
];

const FIRST_NAMES: [&str; 16] = [
    "Ivan", "Maria", "John", "Olga", "Ahmed", "Sofia", "Liam", "Elena", "Noah", "Aisha", "Pavel",
    "Chloe", "Mateo", "Yuki", "Omar", "Nina",
];
const LAST_NAMES: [&str; 16] = [
    "Smirnov",
    "Garcia",
    "Smith",
    "Kuznetsova",
    "Haddad",
    "Rossi",
    "Brown",
    "Popova",
    "Wilson",
    "Khan",
    "Volkov",
    "Martin",
    "Lopez",
    "Tanaka",
    "Farouk",
    "Berg",
];

/// The generated account.
#[derive(Debug, Clone)]
pub struct AccountData {
    pub pipelines: Vec<Pipeline>,
    pub users: Vec<User>,
    pub lead_fields: Vec<FieldDef>,
    pub contact_fields: Vec<FieldDef>,
    pub leads: Vec<SandboxLead>,
    pub contacts: Vec<SandboxContact>,
}

/// All pipelines and their statuses, including the excluded ones and 142/143.
pub fn pipelines() -> Vec<Pipeline> {
    let st = |id: i64, name: &str, pipeline_id: i64| Status {
        id,
        name: name.to_string(),
        pipeline_id,
    };
    vec![
        Pipeline {
            id: PIPELINE_RENTALS,
            name: "Rentals".to_string(),
            statuses: vec![
                st(67548607, "Incoming", PIPELINE_RENTALS),
                st(
                    STATUS_BOT_ANSWERING,
                    "Request bot answering",
                    PIPELINE_RENTALS,
                ),
                st(STATUS_FOLLOW_UP, "Follow up", PIPELINE_RENTALS),
                st(67548619, "Confirmed", PIPELINE_RENTALS),
                st(67548623, "Vehicle delivered", PIPELINE_RENTALS),
                st(STATUS_WON, "Closed - won", PIPELINE_RENTALS),
                st(STATUS_LOST, "Closed - lost", PIPELINE_RENTALS),
            ],
        },
        Pipeline {
            id: PIPELINE_CORPORATE,
            name: "Corporate".to_string(),
            statuses: vec![
                st(70010001, "New request", PIPELINE_CORPORATE),
                st(70010002, "Negotiation", PIPELINE_CORPORATE),
                st(STATUS_WON, "Closed - won", PIPELINE_CORPORATE),
                st(STATUS_LOST, "Closed - lost", PIPELINE_CORPORATE),
            ],
        },
    ]
}

fn lead_fields() -> Vec<FieldDef> {
    let opts = |list: &[(i64, &str)]| {
        list.iter()
            .map(|(id, v)| EnumOption {
                id: *id,
                value: v.to_string(),
            })
            .collect()
    };
    let def = |id: i64, name: &str, t: &str, enums: Vec<EnumOption>| FieldDef {
        id,
        name: name.to_string(),
        code: None,
        field_type: t.to_string(),
        enums,
    };
    vec![
        def(FIELD_DELIVERY, "Date/Time Delivery", "date_time", vec![]),
        def(FIELD_COLLECT, "Date/Time Collect", "date_time", vec![]),
        def(FIELD_VEHICLE, "Vehicle", "select", opts(&VEHICLES)),
        def(FIELD_SOURCE, "Source", "select", opts(&SOURCES)),
        def(FIELD_COMMENT, "Comment", "text", vec![]),
        def(FIELD_UNITS, "Units", "numeric", vec![]),
    ]
}

fn contact_fields() -> Vec<FieldDef> {
    vec![
        FieldDef {
            id: FIELD_PHONE,
            name: "Phone".to_string(),
            code: Some("PHONE".to_string()),
            field_type: "multitext".to_string(),
            enums: vec![
                EnumOption {
                    id: PHONE_ENUM_WORK,
                    value: "WORK".to_string(),
                },
                EnumOption {
                    id: PHONE_ENUM_MOB,
                    value: "MOB".to_string(),
                },
            ],
        },
        FieldDef {
            id: FIELD_EMAIL,
            name: "Email".to_string(),
            code: Some("EMAIL".to_string()),
            field_type: "multitext".to_string(),
            enums: vec![EnumOption {
                id: EMAIL_ENUM_WORK,
                value: "WORK".to_string(),
            }],
        },
    ]
}

/// A `date_time` custom field value (int Unix seconds, as the API returns it).
pub fn date_time_field(field_id: i64, name: &str, unix: i64) -> CustomFieldValue {
    CustomFieldValue {
        field_id,
        field_name: name.to_string(),
        field_code: None,
        field_type: "date_time".to_string(),
        values: vec![json!({ "value": unix })],
    }
}

/// A `select` custom field value with its enum id.
pub fn select_field(field_id: i64, name: &str, enum_id: i64, value: &str) -> CustomFieldValue {
    CustomFieldValue {
        field_id,
        field_name: name.to_string(),
        field_code: None,
        field_type: "select".to_string(),
        values: vec![json!({ "value": value, "enum_id": enum_id, "enum_code": null })],
    }
}

/// The vehicle select field for one of the generated vehicle enums.
pub fn vehicle_field(enum_id: i64) -> Option<CustomFieldValue> {
    VEHICLES
        .iter()
        .find(|(id, _)| *id == enum_id)
        .map(|(id, name)| select_field(FIELD_VEHICLE, "Vehicle", *id, name))
}

/// Generated vehicle enum options: (enum id, name).
pub fn vehicles() -> &'static [(i64, &'static str)] {
    &VEHICLES
}

/// Generated source enum options: (enum id, text).
pub fn sources() -> &'static [(i64, &'static str)] {
    &SOURCES
}

fn multitext(
    field_id: i64,
    name: &str,
    code: &str,
    values: &[(&str, i64, &str)],
) -> CustomFieldValue {
    CustomFieldValue {
        field_id,
        field_name: name.to_string(),
        field_code: Some(code.to_string()),
        field_type: "multitext".to_string(),
        values: values
            .iter()
            .map(|(v, id, c)| json!({ "value": v, "enum_id": id, "enum_code": c }))
            .collect(),
    }
}

fn year_start(year: i32) -> i64 {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .single()
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// The current UTC year, the default reference year of generated data.
pub fn current_year() -> i32 {
    Utc::now().year()
}

/// Generates an account. Leads are spread over `reference_year - 2 ..=
/// reference_year` (about 20/30/50 %), with some in every status.
pub fn generate(seed: u64, leads: usize, contacts: usize, reference_year: i32) -> AccountData {
    let mut rng = StdRng::seed_from_u64(seed);
    let pipelines = pipelines();
    let users = USERS
        .iter()
        .map(|(id, name, email)| User {
            id: *id,
            name: name.to_string(),
            email: email.to_string(),
        })
        .collect();

    let contacts: Vec<SandboxContact> = (0..contacts)
        .map(|i| gen_contact(&mut rng, FIRST_CONTACT_ID + i as i64, reference_year))
        .collect();

    let mut created: Vec<i64> = (0..leads)
        .map(|_| {
            let roll: f64 = rng.random();
            let year = if roll < 0.2 {
                reference_year - 2
            } else if roll < 0.5 {
                reference_year - 1
            } else {
                reference_year
            };
            let start = year_start(year);
            let end = year_start(year + 1);
            rng.random_range(start..end)
        })
        .collect();
    created.sort_unstable();

    let leads = created
        .into_iter()
        .enumerate()
        .map(|(i, created_at)| {
            gen_lead(
                &mut rng,
                FIRST_LEAD_ID + i as i64,
                created_at,
                &pipelines,
                contacts.len(),
            )
        })
        .collect();

    AccountData {
        pipelines,
        users,
        lead_fields: lead_fields(),
        contact_fields: contact_fields(),
        leads,
        contacts,
    }
}

fn gen_contact(rng: &mut StdRng, id: i64, reference_year: i32) -> SandboxContact {
    let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
    let created_at = rng.random_range(year_start(reference_year - 3)..year_start(reference_year));
    let mut c = SandboxContact::new(id, first, last, created_at);
    c.responsible_user_id = USERS[rng.random_range(0..USERS.len())].0;
    c.updated_at = created_at + rng.random_range(0..86_400 * 60);
    // Kommo often leaves first/last empty and keeps everything in `name`.
    if rng.random_bool(0.2) {
        c.first_name.clear();
        c.last_name.clear();
    }
    let mut fields = Vec::new();
    if rng.random_bool(0.9) {
        let digits = format!("{:07}", id % 10_000_000);
        let phone = match rng.random_range(0..3) {
            0 => format!(
                "+7 (9{}) {}-{}-{}",
                &digits[0..2],
                &digits[2..5],
                &digits[5..7],
                &digits[0..2]
            ),
            1 => format!("79{digits}{}", &digits[0..2]),
            _ => format!("+1 555 {} {}", &digits[0..3], &digits[3..7]),
        };
        let mut values = vec![(phone, PHONE_ENUM_WORK, "WORK")];
        if rng.random_bool(0.15) {
            values.push((format!("+4477009{}", &digits[0..5]), PHONE_ENUM_MOB, "MOB"));
        }
        let refs: Vec<(&str, i64, &str)> = values
            .iter()
            .map(|(v, e, c)| (v.as_str(), *e, *c))
            .collect();
        fields.push(multitext(FIELD_PHONE, "Phone", "PHONE", &refs));
    }
    if rng.random_bool(0.8) {
        let email = format!(
            "{}.{}{}@Example.test",
            first.to_lowercase(),
            last.to_lowercase(),
            id
        );
        fields.push(multitext(
            FIELD_EMAIL,
            "Email",
            "EMAIL",
            &[(&email, EMAIL_ENUM_WORK, "WORK")],
        ));
    }
    c.custom_fields_values = if fields.is_empty() {
        None
    } else {
        Some(fields)
    };
    c
}

// Each step draws from `rng` in a fixed order, so a seed keeps giving the
// same account; a new draw goes at the end of `gen_lead`.
fn gen_lead(
    rng: &mut StdRng,
    id: i64,
    created_at: i64,
    pipelines: &[Pipeline],
    contact_count: usize,
) -> SandboxLead {
    let pipeline = if rng.random_bool(0.8) {
        &pipelines[0]
    } else {
        &pipelines[1]
    };
    let status_id = gen_status(rng, pipeline);
    let user = USERS[rng.random_range(0..USERS.len())].0;
    let mut lead = SandboxLead::new(id, "", pipeline.id, status_id, created_at);
    lead.name = if rng.random_bool(0.05) {
        String::new()
    } else {
        format!("Booking #{}", id - FIRST_LEAD_ID + 1)
    };
    lead.price = rng.random_range(0..40) * 50;
    lead.responsible_user_id = user;
    lead.created_by = if rng.random_bool(0.3) { 0 } else { user };
    lead.updated_by = user;
    lead.updated_at = created_at + rng.random_range(0..86_400 * 30);
    if status_id == STATUS_WON || status_id == STATUS_LOST {
        lead.closed_at = Some(lead.updated_at);
    }
    let fields = gen_lead_fields(rng, created_at);
    lead.custom_fields_values = if fields.is_empty() {
        None
    } else {
        Some(fields)
    };
    lead.contact_ids = gen_lead_contacts(rng, contact_count);
    if rng.random_bool(0.25) {
        lead.catalog_elements.push(CatalogLink {
            id: 525_000 + rng.random_range(0..500),
            catalog_id: 4521,
            quantity: if rng.random_bool(0.5) { 1.0 } else { 1.5 },
        });
    }
    lead
}

/// Weighted toward open statuses, with enough excluded and lost leads to matter.
fn gen_status(rng: &mut StdRng, pipeline: &Pipeline) -> i64 {
    let roll: f64 = rng.random();
    if roll < 0.12 {
        STATUS_LOST
    } else if roll < 0.30 {
        STATUS_WON
    } else if pipeline.id == PIPELINE_RENTALS && roll < 0.38 {
        STATUS_BOT_ANSWERING
    } else if pipeline.id == PIPELINE_RENTALS && roll < 0.46 {
        STATUS_FOLLOW_UP
    } else {
        let open: Vec<&Status> = pipeline
            .statuses
            .iter()
            .filter(|s| {
                ![
                    STATUS_WON,
                    STATUS_LOST,
                    STATUS_BOT_ANSWERING,
                    STATUS_FOLLOW_UP,
                ]
                .contains(&s.id)
            })
            .collect();
        open[rng.random_range(0..open.len())].id
    }
}

fn gen_lead_fields(rng: &mut StdRng, created_at: i64) -> Vec<CustomFieldValue> {
    let mut fields = Vec::new();
    let delivery = created_at + rng.random_range(3_600..86_400 * 45);
    let collect = delivery + rng.random_range(1..15) * 86_400;
    // Either date may be missing on its own, so the fallback is exercised.
    match rng.random_range(0..10) {
        0 => {}
        1 => fields.push(date_time_field(
            FIELD_DELIVERY,
            "Date/Time Delivery",
            delivery,
        )),
        2 => fields.push(date_time_field(FIELD_COLLECT, "Date/Time Collect", collect)),
        _ => {
            fields.push(date_time_field(
                FIELD_DELIVERY,
                "Date/Time Delivery",
                delivery,
            ));
            fields.push(date_time_field(FIELD_COLLECT, "Date/Time Collect", collect));
        }
    }
    if rng.random_bool(0.9) {
        let (eid, name) = VEHICLES[rng.random_range(0..VEHICLES.len())];
        fields.push(select_field(FIELD_VEHICLE, "Vehicle", eid, name));
    }
    if rng.random_bool(0.85) {
        let (eid, name) = SOURCES[rng.random_range(0..SOURCES.len())];
        fields.push(select_field(FIELD_SOURCE, "Source", eid, name));
    }
    if rng.random_bool(0.3) {
        fields.push(CustomFieldValue {
            field_id: FIELD_COMMENT,
            field_name: "Comment".to_string(),
            field_code: None,
            field_type: "text".to_string(),
            values: vec![json!({ "value": "Call after 5pm" })],
        });
    }
    if rng.random_bool(0.2) {
        fields.push(CustomFieldValue {
            field_id: FIELD_UNITS,
            field_name: "Units".to_string(),
            field_code: None,
            field_type: "numeric".to_string(),
            values: vec![json!({ "value": rng.random_range(1..5).to_string() })],
        });
    }
    fields
}

/// Usually one contact, sometimes a second one.
fn gen_lead_contacts(rng: &mut StdRng, contact_count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    if contact_count > 0 && rng.random_bool(0.95) {
        let main = FIRST_CONTACT_ID + rng.random_range(0..contact_count) as i64;
        ids.push(main);
        if rng.random_bool(0.1) {
            let other = FIRST_CONTACT_ID + rng.random_range(0..contact_count) as i64;
            if other != main {
                ids.push(other);
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(7, 300, 200, 2025);
        let b = generate(7, 300, 200, 2025);
        let c = generate(8, 300, 200, 2025);
        assert_eq!(a.leads, b.leads);
        assert_eq!(a.contacts, b.contacts);
        assert_ne!(a.leads, c.leads);
    }

    #[test]
    fn leads_cover_years_and_special_statuses() {
        let d = generate(1, 2000, 500, 2025);
        for year in [2023, 2024, 2025] {
            let (from, to) = (year_start(year), year_start(year + 1));
            assert!(
                d.leads
                    .iter()
                    .any(|l| l.created_at >= from && l.created_at < to),
                "no lead in {year}"
            );
        }
        for s in [
            STATUS_WON,
            STATUS_LOST,
            STATUS_BOT_ANSWERING,
            STATUS_FOLLOW_UP,
            67548619,
        ] {
            assert!(
                d.leads.iter().any(|l| l.status_id == s),
                "no lead in status {s}"
            );
        }
        assert!(d
            .leads
            .windows(2)
            .all(|w| w[0].id < w[1].id && w[0].created_at <= w[1].created_at));
        assert!(d
            .leads
            .iter()
            .any(|l| l.field(FIELD_DELIVERY).is_some() && l.field(FIELD_COLLECT).is_none()));
        assert!(d
            .leads
            .iter()
            .any(|l| l.field(FIELD_COLLECT).is_some() && l.field(FIELD_DELIVERY).is_none()));
        assert!(d
            .leads
            .iter()
            .flat_map(|l| l.contact_ids.iter())
            .all(|c| (FIRST_CONTACT_ID..FIRST_CONTACT_ID + 500).contains(c)));
    }
}
