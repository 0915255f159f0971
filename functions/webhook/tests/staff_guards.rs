//! The staff API's guards on `POST /bookings`: the `Idempotency-Key`, the
//! `enableManualBookings` switch, the audit row, the JWT rules, and the
//! function binary refusing to start with an unusable staff-jwt secret.

mod common;

use common::*;
use http::HeaderValue;
use shared::platform::{
    auth::{sign_staff_claims, LOCAL_AUDIENCE, LOCAL_ISSUER},
    sqs::Queue,
};

async fn app(db: &testkit::TestDb) -> webhook::http::HttpApp {
    let sqs = sqs().await;
    http_app(db.pool(), Queue::new(sqs, "http://127.0.0.1:9/unused"))
}

fn booking(
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> aws_lambda_events::apigw::ApiGatewayV2httpRequest {
    let mut req = load_event("webhook-manual-booking.json");
    if let Some(k) = key {
        req.headers
            .insert("idempotency-key", HeaderValue::from_str(k).unwrap());
    }
    if let Some(b) = body {
        req.body = Some(b.to_string());
    }
    req
}

fn sample_body() -> serde_json::Value {
    serde_json::from_str(
        load_event("webhook-manual-booking.json")
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_answer_and_creates_nothing() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let first = app.handle(booking(Some("retry-7f1c"), None)).await;
    assert_eq!(first.status_code, 201, "{}", body_text(&first));
    assert!(first.headers.get("idempotent-replayed").is_none());

    let again = app.handle(booking(Some("retry-7f1c"), None)).await;
    assert_eq!(again.status_code, 201, "{}", body_text(&again));
    assert_eq!(body_json(&again), body_json(&first));
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");

    let c = db.client().await;
    assert_eq!(count(&c, "SELECT count(*) FROM bookings").await, 1);
    assert_eq!(
        count(&c, "SELECT count(*) FROM integrations_outbox").await,
        2
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM audit_log WHERE action = 'booking.manual_create'"
        )
        .await,
        1
    );

    // Without the key the same body is a new request, refused as a duplicate code.
    assert_eq!(app.handle(booking(None, None)).await.status_code, 409);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    assert_eq!(
        app.handle(booking(Some("k-1"), None)).await.status_code,
        201
    );
    let mut other = sample_body();
    other["external_code"] = serde_json::json!("MAN-DEV-0002");
    let resp = app.handle(booking(Some("k-1"), Some(other.clone()))).await;
    assert_eq!(resp.status_code, 422, "{}", body_text(&resp));
    assert_eq!(body_json(&resp)["error"]["code"], "idempotency_key_reused");
    assert_eq!(
        count(&db.client().await, "SELECT count(*) FROM bookings").await,
        1
    );

    // A fresh key for that body is a new booking.
    assert_eq!(
        app.handle(booking(Some("k-2"), Some(other)))
            .await
            .status_code,
        201
    );
    let bad = app.handle(booking(Some("has space"), None)).await;
    assert_eq!(bad.status_code, 400);
    assert_eq!(body_json(&bad)["error"]["code"], "invalid_idempotency_key");
}

#[tokio::test]
async fn manual_bookings_switched_off_are_409_and_create_nothing() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    db.set_flag("enableManualBookings", false).await;
    let resp = app.handle(booking(None, None)).await;
    assert_eq!(resp.status_code, 409, "{}", body_text(&resp));
    let body = body_json(&resp);
    assert_eq!(body["error"]["code"], "manual_bookings_disabled");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("enableManualBookings"));
    assert_eq!(
        count(&db.client().await, "SELECT count(*) FROM bookings").await,
        0
    );

    db.set_flag("enableManualBookings", true).await;
    assert_eq!(app.handle(booking(None, None)).await.status_code, 201);
}

#[tokio::test]
async fn the_manual_booking_is_audited_under_the_staff_member() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let resp = app.handle(booking(None, None)).await;
    assert_eq!(resp.status_code, 201);
    let row = db
        .client()
        .await
        .query_one(
            "SELECT actor, subject, previous, current FROM audit_log
              WHERE action = 'booking.manual_create'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "staff-dev-1");
    assert_eq!(
        row.get::<_, String>(1),
        body_json(&resp)["booking_id"].as_str().unwrap()
    );
    assert_eq!(row.get::<_, Option<serde_json::Value>>(2), None);
    assert_eq!(row.get::<_, serde_json::Value>(3), body_json(&resp));
}

#[tokio::test]
async fn tokens_must_name_the_issuer_and_audience_and_be_valid_now() {
    let db = testkit::TestDb::new().await;
    let app = app(&db).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, nbf: i64| {
        serde_json::json!({
            "sub": "u-1", "role": "admin", "iss": iss, "aud": aud, "nbf": nbf, "exp": now + 600,
        })
    };
    for (c, want) in [
        (claims(LOCAL_ISSUER, LOCAL_AUDIENCE, now - 5), 201),
        (claims("other-erp", LOCAL_AUDIENCE, now - 5), 401),
        (claims(LOCAL_ISSUER, "other-app", now - 5), 401),
        (claims(LOCAL_ISSUER, LOCAL_AUDIENCE, now + 3600), 401),
    ] {
        let mut req = booking(None, None);
        let token = sign_staff_claims(STAFF_JWT_KEY, &c);
        req.headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let resp = app.handle(req).await;
        assert_eq!(resp.status_code, want, "{c}: {}", body_text(&resp));
    }
}

/// Runs the `webhook` binary with a staff-jwt secret in moto; it must stop
/// at start, before asking the Lambda runtime for an event.
async fn start_with_staff_secret(secret: serde_json::Value) -> std::process::Output {
    let sdk = testkit::aws_config().await;
    let staff = testkit::put_secret(&sdk, "staff-jwt", &secret).await;
    let kommo = testkit::put_secret(&sdk, "kommo", &serde_json::json!({})).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_webhook"))
        .env("STAFF_JWT_SECRET_ID", staff)
        .env("KOMMO_SECRET_ID", kommo)
        .env("KOMMO_EVENTS_QUEUE_URL", "http://127.0.0.1:9/unused")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("AWS_ENDPOINT_URL", testkit::aws_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        // Were the check passed, the runtime client would fail here instead.
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the function stops within a minute")
        .expect("the webhook binary runs")
}

#[tokio::test]
async fn the_function_refuses_to_start_with_a_short_key_or_no_issuer() {
    for (secret, reason) in [
        (
            serde_json::json!({"hs256_secret": "short", "issuer": "erp", "audience": "api"}),
            "is 5 bytes long; it must be at least 32 bytes",
        ),
        (
            serde_json::json!({"hs256_secret": STAFF_JWT_KEY, "audience": "api"}),
            "has no `issuer`",
        ),
    ] {
        let out = start_with_staff_secret(secret).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(reason), "expected {reason:?} in:\n{text}");
        assert!(!text.contains("short\""), "the key leaked:\n{text}");
    }
}
