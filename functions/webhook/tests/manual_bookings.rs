//! `POST /bookings` against real Postgres, driven by `events/webhook-manual-booking.json`.

mod common;

use common::*;
use http::HeaderValue;
use shared::platform::{auth::issue_staff_token, sqs::Queue};

async fn app(db: &testkit::TestDb) -> webhook::http::HttpApp {
    let sqs = sqs().await;
    // The bookings route never touches SQS; any queue URL will do.
    http_app(db.pool(), Queue::new(sqs, "http://127.0.0.1:9/unused"))
}

fn with_body(
    mut req: aws_lambda_events::apigw::ApiGatewayV2httpRequest,
    body: serde_json::Value,
) -> aws_lambda_events::apigw::ApiGatewayV2httpRequest {
    req.body = Some(body.to_string());
    req
}

#[tokio::test]
async fn sample_manual_booking_is_created_with_zoho_work() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let resp = app.handle(load_event("webhook-manual-booking.json")).await;
    assert_eq!(resp.status_code, 201, "{}", body_text(&resp));
    let body = body_json(&resp);
    assert_eq!(body["channel"], "manual");
    assert_eq!(
        body["enqueued"],
        serde_json::json!(["contact.upsert", "sales_order.create"])
    );

    let c = db.client().await;
    let b = c
        .query_one(
            "SELECT b.id::text, b.channel, b.manual_created_by, b.created_by, b.external_code,
                    b.total_amount::text, b.currency, c.full_name, c.email, c.phone_normalized
               FROM bookings b JOIN clients c ON c.id = b.client_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(b.get::<_, String>(0), body["booking_id"].as_str().unwrap());
    assert_eq!(b.get::<_, String>(1), "manual");
    assert_eq!(b.get::<_, String>(2), "staff-dev-1");
    assert_eq!(b.get::<_, String>(3), "staff-dev-1");
    assert_eq!(b.get::<_, String>(4), "MAN-DEV-0001");
    assert_eq!(b.get::<_, String>(5), "350.00");
    assert_eq!(b.get::<_, String>(6), "EUR");
    assert_eq!(b.get::<_, String>(7), "Grace Hopper");
    assert_eq!(b.get::<_, String>(8), "grace@example.com");
    assert_eq!(b.get::<_, String>(9), "15550100");

    let outbox = c
        .query(
            "SELECT event_type, entity_type, payload, status, target_system FROM integrations_outbox ORDER BY event_type",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[0].get::<_, String>(0), "contact.upsert");
    assert_eq!(outbox[0].get::<_, String>(1), "client");
    assert_eq!(
        outbox[0].get::<_, serde_json::Value>(2)["client_id"],
        body["client_id"]
    );
    assert_eq!(outbox[1].get::<_, String>(0), "sales_order.create");
    assert_eq!(outbox[1].get::<_, String>(1), "booking");
    assert_eq!(
        outbox[1].get::<_, serde_json::Value>(2)["booking_id"],
        body["booking_id"]
    );
    assert_eq!(
        outbox[1].get::<_, serde_json::Value>(2)["client_id"],
        body["client_id"]
    );
    assert_eq!(outbox[1].get::<_, String>(3), "pending");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM calendar_events WHERE booking_id IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn duplicate_external_code_is_409_and_changes_nothing() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    assert_eq!(
        app.handle(load_event("webhook-manual-booking.json"))
            .await
            .status_code,
        201
    );
    let resp = app.handle(load_event("webhook-manual-booking.json")).await;
    assert_eq!(resp.status_code, 409);
    assert_eq!(body_json(&resp)["error"]["code"], "duplicate_external_code");
    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM bookings").await, 1);
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 1);
    assert_eq!(
        count(&c, "SELECT count(*) FROM integrations_outbox").await,
        2
    );
    assert_eq!(count(&c, "SELECT count(*) FROM calendar_events").await, 1);
}

#[tokio::test]
async fn invalid_body_is_422_listing_every_bad_field() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let req = with_body(
        load_event("webhook-manual-booking.json"),
        serde_json::json!({
            "client": {"full_name": "", "email": "not-an-email"},
            "start_at": "next tuesday",
            "end_at": "2027-01-01T00:00:00Z",
            "currency": "euros",
            "colour": "red"
        }),
    );
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 422);
    let body = body_json(&resp);
    assert_eq!(body["error"]["code"], "invalid_booking");
    let mut fields: Vec<String> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "client.email",
            "client.full_name",
            "colour",
            "currency",
            "start_at"
        ]
    );
    assert_eq!(
        count(&db.client().await, "SELECT count(*) FROM bookings").await,
        0
    );
}

#[tokio::test]
async fn unknown_client_and_vehicle_ids_are_422() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let req = with_body(
        load_event("webhook-manual-booking.json"),
        serde_json::json!({
            "client_id": uuid::Uuid::new_v4(),
            "vehicle_id": uuid::Uuid::new_v4(),
            "start_at": "2027-01-01T00:00:00Z",
            "end_at": "2027-01-02T00:00:00Z"
        }),
    );
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 422);
    let fields: Vec<String> = body_json(&resp)["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, vec!["client_id", "vehicle_id"]);
}

#[tokio::test]
async fn existing_client_is_matched_by_email_case_insensitively_and_vehicle_linked() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    let client_id: uuid::Uuid = c
        .query_one(
            "INSERT INTO clients (full_name, email, zoho_contact_id) VALUES ('Grace B. Hopper', 'Grace@Example.com', 'Z-1') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let vehicle_id: uuid::Uuid = c
        .query_one(
            "INSERT INTO vehicles (name) VALUES ('Van 7') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let app = app(&db).await;
    let mut body: serde_json::Value = serde_json::from_str(
        load_event("webhook-manual-booking.json")
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    body["vehicle_id"] = serde_json::json!(vehicle_id);
    let resp = app
        .handle(with_body(load_event("webhook-manual-booking.json"), body))
        .await;
    assert_eq!(resp.status_code, 201, "{}", body_text(&resp));
    let out = body_json(&resp);
    assert_eq!(out["client_id"], serde_json::json!(client_id));
    assert_eq!(out["client_created"], false);
    // The client already has a Zoho id: the phone the form filled in updates
    // that contact (never a second upsert), and the sales order is created.
    assert_eq!(
        out["enqueued"],
        serde_json::json!(["contact.update", "sales_order.create"])
    );
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 1);
    // Staff input does not overwrite the stored name.
    let name: String = c
        .query_one("SELECT full_name FROM clients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Grace B. Hopper");
    let primary: bool = c
        .query_one(
            "SELECT \"primary\" FROM booking_vehicles WHERE vehicle_id = $1",
            &[&vehicle_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(primary);
}

#[tokio::test]
async fn staff_jwt_is_required_with_an_allowed_role() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;

    let mut req = load_event("webhook-manual-booking.json");
    req.headers.remove("authorization");
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 401);

    let mut req = load_event("webhook-manual-booking.json");
    let sales = issue_staff_token(STAFF_JWT_KEY, "u-9", "sales", 60);
    req.headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {sales}")).unwrap(),
    );
    assert_eq!(app.handle(req).await.status_code, 403);

    let mut req = load_event("webhook-manual-booking.json");
    let forged = issue_staff_token("some-other-key", "u-9", "admin", 60);
    req.headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {forged}")).unwrap(),
    );
    assert_eq!(app.handle(req).await.status_code, 401);

    let mut req = load_event("webhook-manual-booking.json");
    req.headers
        .insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(app.handle(req).await.status_code, 415);

    assert_eq!(
        count(&db.client().await, "SELECT count(*) FROM bookings").await,
        0
    );
}

#[tokio::test]
async fn database_down_is_503() {
    let sqs = sqs().await;
    let app = http_app(dead_pool(), Queue::new(sqs, "http://127.0.0.1:9/unused"));
    let resp = app.handle(load_event("webhook-manual-booking.json")).await;
    assert_eq!(resp.status_code, 503);
}

#[tokio::test]
async fn a_kommo_client_is_reused_by_phone_for_a_manual_booking() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    let kommo_client: uuid::Uuid = c
        .query_one(
            "INSERT INTO clients (kommo_contact_id, full_name, phone, phone_normalized)
             VALUES (501, 'Grace Hopper', '+1 (555) 0100', '15550100') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let app = app(&db).await;
    let mut body: serde_json::Value = serde_json::from_str(
        load_event("webhook-manual-booking.json")
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    body["client"]["email"] = serde_json::Value::Null;
    let resp = app
        .handle(with_body(load_event("webhook-manual-booking.json"), body))
        .await;
    assert_eq!(resp.status_code, 201, "{}", body_text(&resp));
    assert_eq!(
        body_json(&resp)["client_id"],
        serde_json::json!(kommo_client)
    );
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 1);
}
