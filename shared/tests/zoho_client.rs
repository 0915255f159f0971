//! The Zoho client against the Zoho sandbox and a real Postgres token store.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sandbox::zoho::{ZohoOptions, ZohoSandbox, ENDPOINT_CONTACTS_UPSERT, ENDPOINT_TOKEN};
use serde_json::json;
use shared::{
    platform::config::ZohoSettings,
    platform::secrets::ZohoSecret,
    zoho::{ErrorClass, RecordResult, ZohoClient, ZohoError, ACTION_EXISTING},
};
use testkit::TestDb;

fn settings() -> ZohoSettings {
    testkit::outbox::zoho_settings("Email")
}

fn client(db: &TestDb, z: &ZohoSandbox, s: ZohoSettings) -> ZohoClient {
    let secret: ZohoSecret = serde_json::from_value(z.secret_json()).unwrap();
    // Each client has its own pool and memory cache, like a separate container.
    ZohoClient::new(secret, s, db.pool()).unwrap()
}

async fn token_row(
    db: &TestDb,
) -> (
    Option<String>,
    i32,
    Option<chrono::DateTime<Utc>>,
    Option<String>,
) {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT access_token, refresh_count, throttled_until, last_error
               FROM zoho_oauth_tokens WHERE id = 'default'",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test]
async fn containers_share_one_token_refreshed_once() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let clients: Vec<Arc<ZohoClient>> = (0..5)
        .map(|_| Arc::new(client(&db, &z, settings())))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        set.spawn(async move {
            c.upsert_contacts(&[
                json!({"Last_Name": format!("L{i}"), "Email": format!("c{i}@example.com")}),
            ])
            .await
        });
    }
    for r in set.join_all().await {
        assert!(matches!(r.unwrap()[0], RecordResult::Success { .. }));
    }
    assert_eq!(z.state().token_refreshes, 1);
    let (token, count, _, _) = token_row(&db).await;
    assert_eq!(count, 1);
    assert!(z.token_is_valid(&token.unwrap()));

    // A later call in a warm container uses memory: no database read needed, no refresh.
    clients[0]
        .upsert_contacts(&[json!({"Last_Name": "Again"})])
        .await
        .unwrap();
    assert_eq!(z.state().token_refreshes, 1);
}

#[tokio::test]
async fn invalid_token_is_replaced_once_and_the_call_retried_once() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let c = client(&db, &z, settings());
    c.upsert_contacts(&[json!({"Last_Name": "A"})])
        .await
        .unwrap();
    z.expire_all_tokens();
    let r = c
        .upsert_contacts(&[json!({"Last_Name": "B"})])
        .await
        .unwrap();
    assert!(matches!(r[0], RecordResult::Success { .. }));
    let st = z.state();
    assert_eq!(st.token_refreshes, 2);
    assert_eq!(
        st.calls_to(ENDPOINT_CONTACTS_UPSERT),
        3,
        "one rejected call, one retry"
    );

    // A token that stays invalid after the refresh is not retried forever.
    let z2 = ZohoSandbox::start(ZohoOptions {
        token_lifetime: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    let db2 = TestDb::new().await;
    let mut s = settings();
    s.token_refresh_margin = Duration::ZERO;
    let c2 = client(&db2, &z2, s);
    let err = c2
        .upsert_contacts(&[json!({"Last_Name": "C"})])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ZohoError::Unauthorized { ref code, .. } if code == "INVALID_TOKEN"),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Systemic);
    assert_eq!(z2.state().calls_to(ENDPOINT_CONTACTS_UPSERT), 2);
}

#[tokio::test]
async fn throttle_opens_a_circuit_of_at_least_ten_minutes() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions {
        refresh_limit: 0,
        throttle_status: 200,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = client(&db, &z, settings());
    let err = c.access_token().await.unwrap_err();
    let ZohoError::Throttled { until } = err else {
        panic!("expected the throttle, got {err}")
    };
    assert!(
        until >= Utc::now() + chrono::Duration::seconds(595),
        "{until}"
    );
    let (_, count, throttled_until, last_error) = token_row(&db).await;
    assert_eq!(count, 0);
    assert!(throttled_until.is_some());
    assert!(last_error.unwrap().contains("too many requests"));

    // Another container respects the circuit without calling Zoho.
    let other = client(&db, &z, settings());
    assert!(matches!(
        other.access_token().await,
        Err(ZohoError::Throttled { .. })
    ));
    assert_eq!(z.state().calls_to(ENDPOINT_TOKEN), 1);
}

#[tokio::test]
async fn token_endpoint_errors_are_read_from_the_body() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let mut secret = z.secret_json();
    secret["client_secret"] = json!("wrong-secret");
    let secret: ZohoSecret = serde_json::from_value(secret).unwrap();
    let c = ZohoClient::new(secret, settings(), db.pool()).unwrap();
    let err = c.access_token().await.unwrap_err();
    assert!(
        matches!(err, ZohoError::TokenRefused { ref code } if code == "invalid_client_secret"),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Systemic);
    assert!(!err.to_string().contains("wrong-secret"));
    let (token, _, _, last_error) = token_row(&db).await;
    assert!(token.is_none());
    assert!(last_error.unwrap().contains("invalid_client_secret"));
}

#[tokio::test]
async fn sales_orders_are_idempotent_through_the_unique_field() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let mut s = settings();
    s.http_timeout = Duration::from_millis(400);
    let c = client(&db, &z, s);
    let contact = match &c
        .upsert_contacts(&[json!({"Last_Name": "Boyle"})])
        .await
        .unwrap()[0]
    {
        RecordResult::Success { id, .. } => id.clone(),
        other => panic!("{other:?}"),
    };
    let order = json!({
        "Subject": "Booking 1", "ERP_Booking_Id": "b-1", "Contact_Name": {"id": contact},
        "Ordered_Items": [{"Product_Name": {"id": "5725767000011358006"}, "Quantity": 1, "List_Price": 10.0}],
    });

    z.time_out_after_next_creates(1, Duration::from_secs(3));
    let err = c
        .create_sales_orders(std::slice::from_ref(&order))
        .await
        .unwrap_err();
    assert!(matches!(err, ZohoError::Timeout), "{err}");
    assert!(err.is_retryable());

    let mut bad = order.clone();
    bad["ERP_Booking_Id"] = json!("b-2");
    bad.as_object_mut().unwrap().remove("Subject");
    let results = c.create_sales_orders(&[order, bad]).await.unwrap();
    let st = z.state();
    assert_eq!(st.sales_orders.len(), 1);
    match &results[0] {
        RecordResult::Success { id, action, .. } => {
            assert_eq!(action.as_deref(), Some(ACTION_EXISTING));
            assert_eq!(id, &st.sales_orders[0].id);
        }
        other => panic!("the timed-out create is that order: {other:?}"),
    }
    match &results[1] {
        RecordResult::Failure(e) => {
            assert_eq!(e.class(), ErrorClass::Permanent);
            assert_eq!(e.code, "MANDATORY_NOT_FOUND");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_failures_are_classified() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let c = client(&db, &z, settings());
    let rec = [json!({"Last_Name": "X"})];
    z.fail_next_with_429(1);
    let e = c.upsert_contacts(&rec).await.unwrap_err();
    assert!(
        matches!(e, ZohoError::RateLimited { .. }) && e.is_retryable(),
        "{e}"
    );
    z.fail_next_with_5xx(1, 503);
    let e = c.upsert_contacts(&rec).await.unwrap_err();
    assert!(
        matches!(e, ZohoError::Server { status: 503, .. }) && e.is_retryable(),
        "{e}"
    );
    let too_many: Vec<_> = (0..101)
        .map(|i| json!({"Last_Name": format!("N{i}")}))
        .collect();
    assert!(matches!(
        c.upsert_contacts(&too_many).await,
        Err(ZohoError::Config(_))
    ));

    let stats = c.stats().take();
    assert_eq!(stats.calls, 2);
}

#[tokio::test]
async fn a_client_secret_rotated_in_secrets_manager_is_used_after_zoho_refuses_the_old_one() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    // The container started with the old client secret; since then the
    // operator rotated it in Zoho and in Secrets Manager.
    let mut old = z.secret_json();
    old["client_secret"] = json!("client-secret-before-rotation");
    let sdk = testkit::aws_config().await;
    let id = testkit::put_secret(&sdk, "zoho", &z.secret_json()).await;
    let secrets = shared::platform::secrets::Secrets::new(&sdk, Duration::from_secs(300))
        .await
        .unwrap();
    let source = shared::platform::secrets::SecretSource::Manager {
        secrets: Arc::new(secrets),
        id,
    };
    let old: ZohoSecret = serde_json::from_value(old).unwrap();
    let c = ZohoClient::new(old, settings(), db.pool())
        .unwrap()
        .renewing_from(source);

    let token = c.access_token().await.expect("the renewed secret works");
    assert!(z.token_is_valid(token.token.expose()));
    assert_eq!(
        z.state().calls_to(ENDPOINT_TOKEN),
        2,
        "one refusal, one refresh with the rotated secret"
    );
    let (stored, count, _, last_error) = token_row(&db).await;
    assert_eq!(stored.as_deref(), Some(token.token.expose()));
    assert_eq!(count, 1);
    assert!(last_error.is_none());
}
