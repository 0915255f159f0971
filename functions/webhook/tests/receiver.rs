//! The Kommo receiver against real Postgres and moto SQS, driven by the
//! sample events in `events/`.

mod common;

use base64::Engine;
use common::*;
use http::{HeaderValue, Method};
use shared::{kommo::webhook::QueuedDelivery, platform::sqs::Queue};

fn decoded_body(req: &aws_lambda_events::apigw::ApiGatewayV2httpRequest) -> String {
    let raw = req.body.clone().unwrap();
    if req.is_base64_encoded {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    } else {
        raw
    }
}

async fn rows(db: &testkit::TestDb) -> (i64, i64, i64, i64) {
    let c = db.client().await;
    (
        count(&c, "SELECT count(*) FROM kommo_webhook_events").await,
        count(&c, "SELECT count(*) FROM clients").await,
        count(&c, "SELECT count(*) FROM bookings").await,
        count(&c, "SELECT count(*) FROM integrations_outbox").await,
    )
}

#[tokio::test]
async fn lead_status_sample_is_queued_with_its_raw_body() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let req = load_event("webhook-lead-status.json");
    assert!(req.is_base64_encoded, "the sample carries a base64 body");
    let expected_body = decoded_body(&req);
    let resp = app.handle(req).await;

    assert_eq!(resp.status_code, 200, "{}", body_text(&resp));
    assert_eq!(body_json(&resp)["status"], "queued");
    let msgs = drain(&sqs, &url).await;
    assert_eq!(msgs.len(), 1);
    let env = QueuedDelivery::from_json(msgs[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(env.body, expected_body);
    assert_eq!(env.account_id, Some(ACCOUNT_ID));
    assert_eq!(
        env.kommo_request_id.as_deref(),
        Some("423651ce-905d-4833-9db0-a21f44575517")
    );
    // Accepting does not touch the database beyond the flag read.
    assert_eq!(rows(&db).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn contact_update_sample_is_queued() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let resp = app.handle(load_event("webhook-contact-update.json")).await;
    assert_eq!(resp.status_code, 200, "{}", body_text(&resp));
    let msgs = drain(&sqs, &url).await;
    assert_eq!(msgs.len(), 1);
    let env = QueuedDelivery::from_json(msgs[0].body.as_deref().unwrap()).unwrap();
    assert!(env.body.contains("contacts%5Bupdate%5D"));
}

#[tokio::test]
async fn bad_or_missing_token_is_401_and_queues_nothing() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let resp = app.handle(load_event("webhook-bad-token.json")).await;
    assert_eq!(resp.status_code, 401);
    assert_eq!(body_json(&resp)["error"]["code"], "unauthorized");
    assert!(!body_text(&resp).contains("not-the-token"));
    assert!(!body_text(&resp).contains(TOKEN));

    // No token at all.
    let mut req = load_event("webhook-lead-status.json");
    req.raw_path = Some("/kommo/webhook".into());
    req.path_parameters.clear();
    assert_eq!(app.handle(req).await.status_code, 401);

    // A token that is a prefix of the real one.
    let mut req = load_event("webhook-lead-status.json");
    req.raw_path = Some(format!("/kommo/webhook/{}", &TOKEN[..TOKEN.len() - 1]));
    req.path_parameters.clear();
    assert_eq!(app.handle(req).await.status_code, 401);

    assert!(drain(&sqs, &url).await.is_empty());
    assert_eq!(rows(&db).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn token_may_come_in_the_query_string() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let mut req = load_event("webhook-lead-status.json");
    req.raw_path = Some("/kommo/webhook".into());
    req.path_parameters.clear();
    req.raw_query_string = Some(format!("token={TOKEN}"));
    req.query_string_parameters = format!("token={TOKEN}").parse().unwrap();
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 200, "{}", body_text(&resp));
    assert_eq!(drain(&sqs, &url).await.len(), 1);
}

/// The processor as `webhook-processor` runs it; an unparseable body needs
/// no Kommo call, so the client points nowhere.
fn processor(pool: shared::platform::db::DbPool) -> webhook::processor::Processor {
    let kommo = shared::kommo::KommoClient::with_token(
        "http://127.0.0.1:1",
        shared::platform::secrets::Redacted::new("unused"),
        shared::kommo::KommoClientOptions::default(),
    )
    .unwrap();
    let flags = std::sync::Arc::new(shared::platform::flags::FeatureFlags::new(
        pool.clone(),
        std::time::Duration::ZERO,
    ));
    webhook::processor::Processor::from(shared::ingest::Pipeline::new(pool, flags, kommo))
}

/// The queued messages as the SQS event the processor gets.
async fn as_event(sqs: &aws_sdk_sqs::Client, url: &str) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    for m in drain(sqs, url).await {
        let mut r = aws_lambda_events::event::sqs::SqsMessage::default();
        r.message_id = m.message_id;
        r.body = m.body;
        event.records.push(r);
    }
    event
}

#[tokio::test]
async fn an_unparseable_body_with_the_right_token_is_answered_200_and_kept_as_rejected() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let mut req = load_event("webhook-lead-status.json");
    let body = r#"{"leads":{"status":[{"id":"1"}]}}"#;
    req.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
    let resp = app.handle(req).await;
    // Kommo counts a 4xx as a failure and disables the webhook after enough.
    assert_eq!(resp.status_code, 200, "{}", body_text(&resp));
    assert_eq!(body_json(&resp)["status"], "rejected");
    assert!(!body_text(&resp).contains(TOKEN));

    // Bad base64 is just as unparseable, and just as safe.
    let mut req = load_event("webhook-lead-status.json");
    req.body = Some("%%% not base64 %%%".into());
    assert_eq!(app.handle(req).await.status_code, 200);

    let (resp, report) = processor(db.pool())
        .handle(as_event(&sqs, &url).await)
        .await;
    assert!(resp.batch_item_failures.is_empty(), "never retried");
    assert_eq!(report.rejected, 2);
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT status, raw_payload, error FROM kommo_webhook_events WHERE raw_payload = $1",
            &[&body],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "rejected");
    assert_eq!(
        row.get::<_, String>(1),
        body,
        "kept as it came, for a replay"
    );
    assert!(row.get::<_, String>(2).contains("no `=`"));
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM kommo_webhook_events WHERE status = 'rejected'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn an_unparseable_body_with_the_database_down_is_still_kept() {
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(dead_pool(), Queue::new(sqs.clone(), &url));
    let mut req = load_event("webhook-contact-update.json");
    req.body = Some("leads[add]=oops&leads[add][0][id]=1".into());
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 200);
    assert_eq!(drain(&sqs, &url).await.len(), 1, "queued for the processor");
}

#[tokio::test]
async fn flag_off_answers_202_stubbed_writes_and_queues_nothing() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, false).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    for name in ["webhook-lead-status.json", "webhook-contact-update.json"] {
        let resp = app.handle(load_event(name)).await;
        assert_eq!(resp.status_code, 202);
        assert_eq!(body_json(&resp), serde_json::json!({"mode": "stubbed"}));
    }
    // Even a malformed body leaves no row while the kill switch is off.
    let mut req = load_event("webhook-contact-update.json");
    req.body = Some("not a form".into());
    assert_eq!(app.handle(req).await.status_code, 202);

    assert!(drain(&sqs, &url).await.is_empty());
    assert_eq!(rows(&db).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn database_down_still_accepts_and_queues() {
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(dead_pool(), Queue::new(sqs.clone(), &url));

    let started = std::time::Instant::now();
    let resp = app.handle(load_event("webhook-lead-status.json")).await;
    assert_eq!(resp.status_code, 200, "{}", body_text(&resp));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "Kommo waits only 2 s"
    );
    assert_eq!(drain(&sqs, &url).await.len(), 1);
}

#[tokio::test]
async fn sqs_failure_is_503_so_kommo_retries() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let missing = format!(
        "{}/123456789012/does-not-exist-{}",
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:55500".into()),
        uuid::Uuid::new_v4().simple()
    );
    let app = http_app(db.pool(), Queue::new(sqs, missing));
    let resp = app.handle(load_event("webhook-lead-status.json")).await;
    assert_eq!(resp.status_code, 503);
    assert_eq!(body_json(&resp)["error"]["code"], "queue_unavailable");
    assert!(!body_text(&resp).contains(TOKEN));
}

#[tokio::test]
async fn size_type_method_and_account_are_checked() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));

    let mut req = load_event("webhook-contact-update.json");
    req.body = Some(format!(
        "account[id]={ACCOUNT_ID}&pad={}",
        "x".repeat(256 * 1024)
    ));
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 413);

    let mut req = load_event("webhook-contact-update.json");
    req.headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 415);

    let mut req = load_event("webhook-contact-update.json");
    req.headers.remove("content-type");
    assert_eq!(app.handle(req).await.status_code, 415);

    let mut req = load_event("webhook-contact-update.json");
    req.request_context.http.method = Method::GET;
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 405);
    assert_eq!(resp.headers.get("allow").unwrap(), "POST");

    let mut req = load_event("webhook-contact-update.json");
    req.body = Some(
        req.body
            .unwrap()
            .replace("account%5Bid%5D=31361463", "account%5Bid%5D=999"),
    );
    let resp = app.handle(req).await;
    assert_eq!(resp.status_code, 403);
    assert_eq!(body_json(&resp)["error"]["code"], "wrong_account");

    let mut req = load_event("webhook-contact-update.json");
    req.raw_path = Some("/elsewhere".into());
    assert_eq!(app.handle(req).await.status_code, 404);

    assert!(drain(&sqs, &url).await.is_empty());
    assert_eq!(rows(&db).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn secrets_come_from_secrets_manager_as_in_production() {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let sdk = testkit::aws_config().await;
    let id = testkit::put_secret(
        &sdk,
        "kommo",
        &serde_json::json!({
            "base_url": "https://acme.kommo.com",
            "access_token": "t",
            "webhook_token": TOKEN,
            "account_id": ACCOUNT_ID
        }),
    )
    .await;
    let secrets = std::sync::Arc::new(
        shared::platform::secrets::Secrets::new(&sdk, std::time::Duration::from_secs(60))
            .await
            .unwrap(),
    );
    let sqs = sqs().await;
    let url = fresh_queue(&sqs).await;
    let mut app = http_app(db.pool(), Queue::new(sqs.clone(), &url));
    app.receiver.secret = webhook::SecretSource::Manager {
        secrets: secrets.clone(),
        id,
    };
    assert_eq!(
        app.handle(load_event("webhook-lead-status.json"))
            .await
            .status_code,
        200
    );
    assert_eq!(
        app.handle(load_event("webhook-bad-token.json"))
            .await
            .status_code,
        401
    );

    // A secret that cannot be read is a 503: Kommo retries later.
    app.receiver.secret = webhook::SecretSource::Manager {
        secrets,
        id: "no-such-secret".into(),
    };
    assert_eq!(
        app.handle(load_event("webhook-lead-status.json"))
            .await
            .status_code,
        503
    );
    assert_eq!(drain(&sqs, &url).await.len(), 1);
}
