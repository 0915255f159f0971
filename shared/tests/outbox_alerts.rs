//! Slack hears of an outbox that no longer reaches Zoho, once an hour per
//! condition, whichever container notices.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, routing::post, Router};
use shared::{
    outbox::alerts::{alert, conditions},
    platform::{
        flags::FeatureFlags,
        secrets::Redacted,
        slack::{Slack, SlackTarget},
    },
};
use testkit::TestDb;

type Posts = Arc<Mutex<Vec<serde_json::Value>>>;

/// A Slack incoming webhook that keeps what it is sent.
async fn slack_hook() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(|State(p): State<Posts>, body: String| async move {
                p.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }),
        )
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), posts)
}

/// A Slack client as one container holds it.
fn container(db: &TestDb, url: &str) -> Slack {
    let flags = Arc::new(FeatureFlags::new(db.pool(), Duration::ZERO));
    Slack::new(flags, SlackTarget::Url(Redacted::new(url)))
}

#[tokio::test]
async fn a_failed_row_and_an_old_pending_one_are_posted_once_an_hour_by_one_container() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO integrations_outbox (dedupe_key, target_system, event_type, entity_type, entity_id, status, payload, created_at)
         VALUES ('alert-test-1', 'zoho', 'contact.upsert', 'client', gen_random_uuid(), 'failed', '{}', now()),
                ('alert-test-2', 'zoho', 'contact.upsert', 'client', gen_random_uuid(), 'pending', '{}', now() - interval '40 minutes')",
    )
    .await
    .unwrap();
    let (url, posts) = slack_hook().await;
    let (a, b) = (container(&db, &url), container(&db, &url));

    let found = conditions(&c).await.unwrap();
    let keys: Vec<&str> = found.iter().map(|c| c.key).collect();
    assert_eq!(keys, ["outbox_failed", "outbox_pending_old"]);
    assert_eq!(alert(&c, &a).await.unwrap(), 0, "enableSlackAlerts is off");

    db.set_flag("enableSlackAlerts", true).await;
    assert_eq!(alert(&c, &a).await.unwrap(), 2);
    assert_eq!(
        alert(&c, &b).await.unwrap(),
        0,
        "the other container stays quiet"
    );
    assert_eq!(alert(&c, &a).await.unwrap(), 0, "once an hour");
    let texts: Vec<String> = posts
        .lock()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    assert!(texts[0].contains("1 outbox rows failed"), "{texts:?}");
    assert!(texts[1].contains("40 minutes"), "{texts:?}");

    // An hour later the condition, if it still holds, is posted again.
    c.batch_execute("UPDATE ops_alerts SET last_sent_at = now() - interval '61 minutes'")
        .await
        .unwrap();
    assert_eq!(alert(&c, &b).await.unwrap(), 2);
}
