//! The kill switch takes effect within the flag cache's TTL.

use std::time::Duration;

use shared::platform::flags::{FeatureFlags, Flag};
use testkit::TestDb;

#[tokio::test]
async fn flag_changes_are_seen_after_the_cache_ttl() {
    let db = TestDb::new().await;
    let flags = FeatureFlags::new(db.pool(), Duration::from_millis(300));
    assert!(
        !flags.is_enabled(Flag::KommoLive).await.unwrap(),
        "seeded off"
    );
    db.set_flag("enableKommoLive", true).await;
    assert!(
        !flags.is_enabled(Flag::KommoLive).await.unwrap(),
        "cached value within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(flags.is_enabled(Flag::KommoLive).await.unwrap());
    assert!(!flags.is_enabled(Flag::ZohoLive).await.unwrap());
}

#[tokio::test]
async fn unreachable_database_is_reported_as_unavailable() {
    let settings =
        shared::platform::db::DbSettings::from_url("postgres://postgres@127.0.0.1:1/none").unwrap();
    let flags = FeatureFlags::new(settings.pool().unwrap(), Duration::from_secs(10));
    let err = flags.is_enabled(Flag::KommoLive).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}
