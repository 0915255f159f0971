//! Helpers shared by the webhook function's integration tests.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use shared::{
    platform::db::{DbPool, DbSettings},
    platform::flags::FeatureFlags,
    platform::secrets::{KommoSecret, Redacted, StaffJwtSecret},
    platform::sqs::Queue,
};
use webhook::{
    http::HttpApp, manual::ManualBookings, receiver::Receiver, settings::ReceiverSettings,
    SecretSource,
};

/// The token the sample events in `events/` carry (the dev stack's default, `wiring::ProvisionSpec::local`).
pub const TOKEN: &str = "sandbox-webhook-token";
/// The account id the sample events carry.
pub const ACCOUNT_ID: i64 = 31_361_463;
/// The HS256 key the sample manual-booking event was signed with.
pub const STAFF_JWT_KEY: &str = "sandbox-staff-jwt-secret-at-least-32-bytes";

pub fn event_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(name)
}

/// A sample event from `events/`, exactly as `cargo lambda invoke` sends it.
pub fn load_event(name: &str) -> ApiGatewayV2httpRequest {
    let text = std::fs::read_to_string(event_path(name)).expect("sample event exists");
    serde_json::from_str(&text).expect("sample event is an HTTP API v2 request")
}

pub fn kommo_secret(base_url: &str) -> KommoSecret {
    KommoSecret {
        base_url: base_url.to_string(),
        access_token: Redacted::new("sandbox-access-token"),
        webhook_token: Redacted::new(TOKEN),
        account_id: Some(ACCOUNT_ID),
    }
}

pub fn staff_secret() -> StaffJwtSecret {
    StaffJwtSecret {
        hs256_secret: Redacted::new(STAFF_JWT_KEY),
        issuer: Some(shared::platform::auth::LOCAL_ISSUER.into()),
        audience: Some(shared::platform::auth::LOCAL_AUDIENCE.into()),
    }
}

/// A pool whose every connection attempt is refused: the database is "down".
pub fn dead_pool() -> DbPool {
    DbSettings::from_url("postgres://postgres@127.0.0.1:1/nowhere")
        .unwrap()
        .pool()
        .unwrap()
}

pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&testkit::aws_config().await)
}

/// A fresh queue on moto, so tests never see each other's messages.
pub async fn fresh_queue(_client: &aws_sdk_sqs::Client) -> String {
    testkit::create_queue(&testkit::aws_config().await, "kommo-events").await
}

/// Every message waiting in the queue (received and deleted).
/// A queue with a dead-letter queue after `max_receive` receives, as in
/// `template.yaml`, and a visibility timeout when given.
pub async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    max_receive: u32,
    visibility: Option<Duration>,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dlq = sqs
        .create_queue()
        .queue_name(format!("kommo-events-dlq-{suffix}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    let policy =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive});
    let mut main = sqs
        .create_queue()
        .queue_name(format!("kommo-events-{suffix}"))
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
    if let Some(v) = visibility {
        main = main.attributes(
            QueueAttributeName::VisibilityTimeout,
            v.as_secs().to_string(),
        );
    }
    let main = main.send().await.unwrap().queue_url.unwrap();
    (main, dlq)
}

pub async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive from moto");
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            return all;
        }
        for m in &msgs {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                .send()
                .await
                .expect("delete from moto");
        }
        all.extend(msgs);
    }
}

pub fn settings() -> ReceiverSettings {
    ReceiverSettings {
        db_timeout: Duration::from_millis(500),
        ..ReceiverSettings::default()
    }
}

/// The HTTP app wired like `main.rs`, with fixed secrets.
pub fn http_app(pool: DbPool, queue: Queue) -> HttpApp {
    HttpApp {
        receiver: Receiver {
            secret: SecretSource::Fixed(kommo_secret("http://127.0.0.1:9")),
            flags: Arc::new(FeatureFlags::new(pool.clone(), Duration::ZERO)),
            pool: pool.clone(),
            queue: Arc::new(queue),
            settings: settings(),
        },
        bookings: ManualBookings {
            secret: SecretSource::Fixed(staff_secret()),
            allowed_roles: vec!["admin".into(), "ops".into()],
            flags: Arc::new(FeatureFlags::new(pool.clone(), Duration::ZERO)),
            pool,
        },
    }
}

pub fn body_json(resp: &ApiGatewayV2httpResponse) -> serde_json::Value {
    match &resp.body {
        Some(Body::Text(t)) => serde_json::from_str(t).expect("JSON body"),
        other => panic!("expected a text body, got {other:?}"),
    }
}

pub fn body_text(resp: &ApiGatewayV2httpResponse) -> String {
    match &resp.body {
        Some(Body::Text(t)) => t.clone(),
        _ => String::new(),
    }
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .expect("count query")
        .get(0)
}

/// Sets `enableKommoLive`.
pub async fn set_live(client: &tokio_postgres::Client, on: bool) {
    shared::platform::flags::set_flag(client, "enableKommoLive", on)
        .await
        .expect("flag update");
}
