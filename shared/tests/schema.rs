//! The schema as operators rely on it: migrations are repeatable and the
//! constraints that stop duplicates hold.

use testkit::TestDb;

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_a_second_run_changes_nothing() {
    let db = TestDb::new().await;
    // Start from an empty database, not the migrated template.
    let admin = db.client().await;
    let empty = format!("{}_empty", db.name);
    admin
        .batch_execute(&format!("CREATE DATABASE {empty}"))
        .await
        .unwrap();
    let url = testkit::with_database(&db.url, &empty);
    let mut c = shared::platform::db::DbSettings::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let first = shared::platform::db::migrate(&mut c).await.unwrap();
    assert!(
        first.iter().any(|m| m.contains("core_schema")),
        "first run applies the core schema: {first:?}"
    );
    let second = shared::platform::db::migrate(&mut c).await.unwrap();
    assert!(second.is_empty(), "second run applied {second:?}");
    let flags: Vec<(String, bool)> = c
        .query(
            "SELECT key, enabled FROM system_feature_flags ORDER BY key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for key in ["enableKommoLive", "enableSlackAlerts", "enableZohoLive"] {
        assert!(
            flags.contains(&(key.to_string(), false)),
            "{key} seeded off: {flags:?}"
        );
    }
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE {empty} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn duplicate_source_payload_id_is_rejected() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let insert = "INSERT INTO bookings (source_payload_id, channel, created_by) VALUES ($1, 'Kommo', 'system-kommo')";
    c.execute(insert, &[&"kommo:1001"]).await.unwrap();
    let err = c.execute(insert, &[&"kommo:1001"]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(db.count("bookings").await, 1);
}

#[tokio::test]
async fn duplicate_kommo_contact_id_is_rejected() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let insert = "INSERT INTO clients (kommo_contact_id, full_name) VALUES ($1, $2)";
    c.execute(insert, &[&77i64, &"Ann"]).await.unwrap();
    let err = c
        .execute(insert, &[&77i64, &"Ann again"])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
}

#[tokio::test]
async fn unknown_outbox_status_is_rejected_and_live_rows_are_deduplicated() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let entity = uuid::Uuid::new_v4();
    let err = c
        .execute(
            "INSERT INTO integrations_outbox (entity_type, entity_id, target_system, event_type, status, dedupe_key)
             VALUES ('client', $1, 'zoho', 'contact.upsert', 'done', 'k1')",
            &[&entity],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );

    let insert = "INSERT INTO integrations_outbox (entity_type, entity_id, target_system, event_type, status, dedupe_key)
                  VALUES ('client', $1, 'zoho', 'contact.upsert', $2, 'contact.upsert:x')";
    c.execute(insert, &[&entity, &"pending"]).await.unwrap();
    let err = c.execute(insert, &[&entity, &"pending"]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "a second live row with the same dedupe key is refused"
    );
    // Settled rows do not block new work for the same entity.
    c.execute(
        "UPDATE integrations_outbox SET status = 'succeeded' WHERE dedupe_key = 'contact.upsert:x'",
        &[],
    )
    .await
    .unwrap();
    c.execute(insert, &[&entity, &"pending"]).await.unwrap();
}

#[tokio::test]
async fn manual_booking_needs_its_author_and_calendar_view_unites_both_sources() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let err = c
        .execute(
            "INSERT INTO bookings (external_code, channel, created_by) VALUES ('M-1', 'manual', 'staff')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
    c.batch_execute(
        "INSERT INTO calendar_events (title, start_at, end_at) VALUES ('Service', '2025-03-01', '2025-03-02');
         INSERT INTO bookings (source_payload_id, channel, created_by, start_at, kommo_lead_id)
              VALUES ('kommo:1', 'Kommo', 'system-kommo', '2025-04-01', 1),
                     ('kommo:2', 'Kommo', 'system-kommo', NULL, 2);
         INSERT INTO bookings (source_payload_id, channel, created_by, start_at, is_active)
              VALUES ('kommo:3', 'Kommo', 'system-kommo', '2025-05-01', false);",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT origin, start_at = end_at FROM calendar_events_expanded ORDER BY start_at",
            &[],
        )
        .await
        .unwrap();
    let origins: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        origins,
        vec!["manual", "kommo"],
        "undated and inactive bookings are left out"
    );
    assert!(
        rows[1].get::<_, bool>(1),
        "a one-sided date fills both ends"
    );
}

#[tokio::test]
async fn excluded_statuses_and_field_ids_are_seeded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let excluded: Vec<i64> = c
        .query(
            "SELECT status_id FROM kommo_status_map WHERE excluded ORDER BY status_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(excluded, vec![143, 79790631, 91703923]);
    let fields: Vec<(String, i64)> = c
        .query(
            "SELECT field_key, field_id FROM kommo_field_map ORDER BY field_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("source_enum".to_string(), 823206),
            ("delivery_at".to_string(), 1218176),
            ("collect_at".to_string(), 1218178),
            ("vehicle_enum".to_string(), 1234163),
        ]
    );
}
