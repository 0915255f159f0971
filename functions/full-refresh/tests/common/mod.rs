//! Helpers shared by the full-refresh tests.
#![allow(dead_code)]

mod world;
#[allow(unused_imports)]
pub use world::*;

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use full_refresh::{http::HttpApp, SecretSource};
use serde_json::{json, Value};
use shared::{
    platform::auth::issue_staff_token,
    platform::flags::FeatureFlags,
    platform::secrets::{Redacted, StaffJwtSecret},
    refresh::{JobQueue, RefreshSettings},
};
use testkit::TestDb;

/// The dev stack's staff JWT key (also signs the sample events).
pub const STAFF_JWT_KEY: &str = "sandbox-staff-jwt-secret-at-least-32-bytes";

pub fn staff_secret() -> StaffJwtSecret {
    StaffJwtSecret {
        hs256_secret: Redacted::new(STAFF_JWT_KEY),
        issuer: Some(shared::platform::auth::LOCAL_ISSUER.into()),
        audience: Some(shared::platform::auth::LOCAL_AUDIENCE.into()),
    }
}

pub fn token(sub: &str, role: &str) -> String {
    issue_staff_token(STAFF_JWT_KEY, sub, role, 600)
}

pub fn flags(db: &TestDb) -> Arc<FeatureFlags> {
    // TTL zero: a flag flipped by a test applies at once.
    Arc::new(FeatureFlags::new(db.pool(), std::time::Duration::ZERO))
}

pub fn http_app(db: &TestDb, queue: Arc<dyn JobQueue>) -> HttpApp {
    HttpApp {
        pool: db.pool(),
        flags: flags(db),
        jwt: SecretSource::Fixed(staff_secret()),
        allowed_roles: vec!["admin".into(), "ops".into()],
        queue,
        settings: RefreshSettings::default(),
    }
}

/// An API Gateway HTTP API (v2) request.
pub fn request(
    method: &str,
    path: &str,
    query: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> ApiGatewayV2httpRequest {
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), json!("application/json"));
    if let Some(t) = bearer {
        headers.insert("authorization".into(), json!(format!("Bearer {t}")));
    }
    let qs: serde_json::Map<String, Value> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": qs,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "test",
            "domainName": "test.execute-api.us-east-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1"},
            "requestId": "test-request",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1_795_453_200_000i64
        },
        "body": body,
        "isBase64Encoded": false
    });
    serde_json::from_value(event).expect("valid API Gateway v2 event")
}

pub fn body_json(resp: &aws_lambda_events::apigw::ApiGatewayV2httpResponse) -> Value {
    match &resp.body {
        Some(aws_lambda_events::encodings::Body::Text(t)) => {
            serde_json::from_str(t).expect("JSON body")
        }
        other => panic!("expected a text body, got {other:?}"),
    }
}

/// Every production table the refresh may touch, as sorted row text: two
/// equal dumps mean byte-for-byte equal data.
pub async fn dump_production(db: &TestDb) -> String {
    let c = db.client().await;
    let mut out = String::new();
    for table in [
        "clients",
        "vehicles",
        "bookings",
        "booking_vehicles",
        "sales_leads",
        "integrations_outbox",
    ] {
        let row = c
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push_str(&format!("== {table}\n{}\n", row.get::<_, String>(0)));
    }
    out
}

/// The Kommo-derived result, without ids and timestamps that legitimately
/// change between runs: what two equivalent refreshes must agree on.
pub async fn snapshot(db: &TestDb) -> Value {
    let c = db.client().await;
    let q = |sql: &'static str| {
        let c = &c;
        async move {
            let rows = c
                .query(
                    &format!("SELECT coalesce(json_agg(x), '[]'::json)::text FROM ({sql}) x"),
                    &[],
                )
                .await
                .unwrap();
            serde_json::from_str::<Value>(&rows[0].get::<_, String>(0)).unwrap()
        }
    };
    json!({
        "bookings": q("SELECT b.source_payload_id, b.channel, b.created_by, b.status, b.kommo_status_id,
                              b.kommo_lead_id, b.source, b.title, b.start_at, b.end_at, b.is_active,
                              b.total_amount, c.kommo_contact_id, v.kommo_vehicle_id,
                              o.email AS owner_email
                         FROM bookings b
                         LEFT JOIN clients c ON c.id = b.client_id
                         LEFT JOIN vehicles v ON v.id = b.vehicle_id
                         LEFT JOIN staff_accounts o ON o.id = b.owner_id
                        ORDER BY b.source_payload_id").await,
        "sales_leads": q("SELECT l.lead_code, l.kommo_lead_id, l.stage_id, l.pipeline_id, l.value_amount,
                                 l.lead_source, l.archived_at IS NOT NULL AS archived, c.kommo_contact_id
                            FROM sales_leads l LEFT JOIN clients c ON c.id = l.client_id
                           ORDER BY l.lead_code").await,
        "clients": q("SELECT kommo_contact_id, full_name, email, phone, phone_normalized
                        FROM clients ORDER BY kommo_contact_id").await,
        "vehicles": q("SELECT kommo_vehicle_id, name FROM vehicles ORDER BY kommo_vehicle_id").await,
        "links": q("SELECT b.source_payload_id, v.kommo_vehicle_id, bv.\"primary\"
                      FROM booking_vehicles bv JOIN bookings b ON b.id = bv.booking_id
                      JOIN vehicles v ON v.id = bv.vehicle_id ORDER BY 1, 2").await,
    })
}
