//! Secrets read from moto through the real AWS SDK.

use std::time::Duration;

use serde_json::json;
use shared::platform::secrets::{KommoSecret, SecretError, Secrets};

#[tokio::test]
async fn secret_is_cached_until_its_ttl_then_rotation_is_seen() {
    let sdk = testkit::aws_config().await;
    let id = testkit::put_secret(
        &sdk,
        "kommo",
        &json!({"base_url": "https://a.kommo.com", "access_token": "at-1", "webhook_token": "wt-1"}),
    )
    .await;
    let secrets = Secrets::new(&sdk, Duration::from_millis(1500))
        .await
        .unwrap();
    let first: KommoSecret = secrets.get_json(&id).await.unwrap();
    assert_eq!(first.access_token.expose(), "at-1");
    assert_eq!(first.account_id, None);

    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&id)
        .secret_string(
            json!({"base_url": "https://a.kommo.com", "access_token": "at-2", "webhook_token": "wt-1", "account_id": 42})
                .to_string(),
        )
        .send()
        .await
        .unwrap();

    let cached: KommoSecret = secrets.get_json(&id).await.unwrap();
    assert_eq!(
        cached.access_token.expose(),
        "at-1",
        "served from cache within the TTL"
    );

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let rotated: KommoSecret = secrets.get_json(&id).await.unwrap();
    assert_eq!(
        rotated.access_token.expose(),
        "at-2",
        "rotation seen after the TTL"
    );
    assert_eq!(rotated.account_id, Some(42));
}

#[tokio::test]
async fn malformed_secret_names_secret_and_field_but_not_the_value() {
    let sdk = testkit::aws_config().await;
    let id = testkit::put_secret(
        &sdk,
        "zoho",
        &json!({"client_id": "1000.X", "client_secret": "cs-TOP-SECRET", "accounts_url": 5}),
    )
    .await;
    let secrets = Secrets::new(&sdk, Duration::from_secs(60)).await.unwrap();
    let err = secrets
        .get_json::<shared::platform::secrets::ZohoSecret>(&id)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::Malformed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&id), "names the secret: {text}");
    assert!(!text.contains("cs-TOP-SECRET"), "never the value: {text}");
    assert!(!format!("{err:?}").contains("cs-TOP-SECRET"));
}

#[tokio::test]
async fn missing_secret_is_a_clear_error() {
    let sdk = testkit::aws_config().await;
    let secrets = Secrets::new(&sdk, Duration::from_secs(60)).await.unwrap();
    let err = secrets.get_string("does-not-exist").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`does-not-exist` could not be read"),
        "{err}"
    );
}
