//! The audit trail: flag changes recorded by the trigger (also when made
//! with plain SQL), requeues recorded by `requeue_failed_outbox`, and the
//! table refusing every UPDATE, DELETE and TRUNCATE.

use serde_json::{json, Value};
use testkit::TestDb;

async fn audit_rows(
    c: &tokio_postgres::Client,
    action: &str,
) -> Vec<(String, String, Option<Value>, Option<Value>)> {
    c.query(
        "SELECT actor, subject, previous, current FROM audit_log WHERE action = $1 ORDER BY id",
        &[&action],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn a_flag_changed_with_sql_is_recorded_with_its_previous_value() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("UPDATE system_feature_flags SET enabled = true WHERE key = 'enableZohoLive'")
        .await
        .unwrap();
    let role: String = c
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let rows = audit_rows(&c, "flag.update").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (actor, subject, previous, current) = &rows[0];
    assert_eq!(
        actor, &role,
        "a change without a named actor is the database role's"
    );
    assert_eq!(subject, "enableZohoLive");
    assert_eq!(previous.as_ref().unwrap()["enabled"], json!(false));
    assert_eq!(current.as_ref().unwrap()["enabled"], json!(true));

    // An operator names themselves for the transaction.
    c.batch_execute(
        "BEGIN;
         SELECT set_config('audit.actor', 'alice@ops', true);
         UPDATE system_feature_flags SET enabled = false WHERE key = 'enableManualBookings';
         COMMIT;",
    )
    .await
    .unwrap();
    let rows = audit_rows(&c, "flag.update").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].0, "alice@ops");
    assert_eq!(rows[1].1, "enableManualBookings");
    assert_eq!(rows[1].2.as_ref().unwrap()["enabled"], json!(true));

    c.batch_execute("INSERT INTO system_feature_flags (key, enabled) VALUES ('enableTest', true)")
        .await
        .unwrap();
    // The migration's own insert of enableManualBookings is on record too.
    let inserted: Vec<String> = audit_rows(&c, "flag.insert")
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(inserted, vec!["enableManualBookings", "enableTest"]);
}

#[tokio::test]
async fn the_audit_log_refuses_updates_deletes_and_truncate() {
    let db = TestDb::new().await;
    let c = db.client().await;
    db.set_flag("enableKommoLive", true).await;
    for sql in [
        "UPDATE audit_log SET actor = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = c.batch_execute(sql).await.unwrap_err();
        assert!(
            err.as_db_error()
                .is_some_and(|e| e.message().contains("append-only")),
            "{sql}: {err:?}"
        );
    }
    let rows = audit_rows(&c, "flag.update").await;
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].0, "someone-else");
}

#[tokio::test]
async fn discarding_a_held_run_is_recorded_and_only_held_runs_can_be_discarded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let held: uuid::Uuid = c
        .query_one(
            "INSERT INTO kommo_import_runs (status, year, leads_count, last_success_count, error)
             VALUES ('needs_review', 2026, 40, 100, 'lead count dropped 60%') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let discard = "SELECT discard_import_run($1, 'Kommo pipeline cleanup, expected')";
    c.batch_execute("SELECT set_config('audit.actor', 'bob@ops', false)")
        .await
        .unwrap();
    assert!(c
        .query_one(discard, &[&held])
        .await
        .unwrap()
        .get::<_, bool>(0));
    assert!(
        !c.query_one(discard, &[&held])
            .await
            .unwrap()
            .get::<_, bool>(0),
        "a discarded run is no longer held"
    );
    let run = c
        .query_one(
            "SELECT status, phase, error FROM kommo_import_runs WHERE id = $1",
            &[&held],
        )
        .await
        .unwrap();
    assert_eq!(run.get::<_, String>(0), "failed");
    assert_eq!(run.get::<_, String>(1), "discarded");
    assert_eq!(
        run.get::<_, String>(2),
        "discarded by bob@ops: Kommo pipeline cleanup, expected"
    );
    let rows = audit_rows(&c, "refresh.discard").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "bob@ops");
    assert_eq!(rows[0].2.as_ref().unwrap()["status"], json!("needs_review"));
    assert_eq!(rows[0].2.as_ref().unwrap()["leads_count"], json!(40));
}

#[tokio::test]
async fn every_requeued_row_is_recorded_with_its_failure() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO integrations_outbox
                (entity_type, entity_id, target_system, event_type, status, attempts, last_error, dedupe_key)
         VALUES ('client', gen_random_uuid(), 'zoho', 'contact.upsert', 'failed', 8, 'INVALID_DATA', 'k-1'),
                ('client', gen_random_uuid(), 'zoho', 'contact.upsert', 'failed', 8, 'timeout', 'k-2'),
                ('client', gen_random_uuid(), 'zoho', 'contact.upsert', 'succeeded', 1, NULL, 'k-3')",
    )
    .await
    .unwrap();
    let n = shared::outbox::requeue_failed(&c, None).await.unwrap();
    assert_eq!(n, 2);
    let rows = audit_rows(&c, "outbox.requeue").await;
    assert_eq!(rows.len(), 2);
    let mut errors: Vec<Value> = rows
        .iter()
        .map(|r| r.2.as_ref().unwrap()["last_error"].clone())
        .collect();
    errors.sort_by_key(|v| v.to_string());
    assert_eq!(errors, vec![json!("INVALID_DATA"), json!("timeout")]);
    for (_, subject, previous, current) in &rows {
        assert_eq!(previous.as_ref().unwrap()["attempts"], json!(8));
        assert_eq!(current.as_ref().unwrap()["status"], json!("pending"));
        let status: String = c
            .query_one(
                "SELECT status FROM integrations_outbox WHERE id::text = $1",
                &[subject],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(status, "pending");
    }
}
