//! Retention purges expired finished rows in bounded batches and never
//! touches live ones: pending, processing or failed outbox rows, deliveries
//! not processed, and staging of open, held or recent runs.

use shared::retention::{purge_batch, RetentionSettings};
use testkit::TestDb;

const OLD: &str = "now() - interval '40 days'";
const NEW: &str = "now() - interval '2 days'";

async fn seed_outbox(c: &tokio_postgres::Client) {
    for (key, status, age) in [
        ("old-ok-1", "succeeded", OLD),
        ("old-ok-2", "succeeded", OLD),
        ("old-ok-3", "succeeded", OLD),
        ("new-ok", "succeeded", NEW),
        ("old-pending", "pending", OLD),
        ("old-processing", "processing", OLD),
        ("old-failed", "failed", OLD),
    ] {
        c.batch_execute(&format!(
            "INSERT INTO integrations_outbox
                    (entity_type, entity_id, target_system, event_type, status, dedupe_key, created_at, updated_at)
             VALUES ('client', gen_random_uuid(), 'zoho', 'contact.upsert', '{status}', '{key}', {age}, {age})"
        ))
        .await
        .unwrap();
    }
}

async fn seed_events(c: &tokio_postgres::Client) {
    for (key, status, age) in [
        ("old-processed", "processed", OLD),
        ("new-processed", "processed", NEW),
        ("old-failed", "failed", OLD),
        ("old-rejected", "rejected", OLD),
        ("old-received", "received", OLD),
    ] {
        c.batch_execute(&format!(
            "INSERT INTO kommo_webhook_events (dedupe_key, raw_payload, status, received_at, processed_at)
             VALUES ('{key}', 'leads[status][0][id]=1', '{status}', {age}, {age})"
        ))
        .await
        .unwrap();
    }
}

/// Runs from oldest to newest, each with one staged lead and contact.
async fn seed_runs(c: &tokio_postgres::Client) {
    for (i, status) in [
        "running",
        "succeeded",
        "failed",
        "needs_review",
        "succeeded",
        "succeeded",
    ]
    .iter()
    .enumerate()
    {
        let days = 60 - i as i32 * 10;
        c.batch_execute(&format!(
            "WITH r AS (
                 INSERT INTO kommo_import_runs (status, year, started_at, triggered_by)
                 VALUES ('{status}', 2026, now() - interval '{days} days', 'run-{i}') RETURNING id),
             l AS (INSERT INTO stg_kommo_leads (run_id, lead_id, payload) SELECT id, {i}, '{{}}' FROM r)
             INSERT INTO stg_kommo_contacts (run_id, contact_id, payload) SELECT id, {i}, '{{}}' FROM r"
        ))
        .await
        .unwrap();
    }
}

async fn column(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn old_finished_rows_go_in_bounded_batches_and_live_rows_stay() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_outbox(&c).await;
    seed_events(&c).await;
    seed_runs(&c).await;
    c.batch_execute(&format!(
        "INSERT INTO staff_idempotency_keys (staff_sub, idempotency_key, request_hash, status_code, response, created_at)
         VALUES ('s', 'old', 'h', 201, '{{}}', {OLD}), ('s', 'new', 'h', 201, '{{}}', {NEW})"
    ))
    .await
    .unwrap();

    let settings = RetentionSettings {
        keep_days: 30,
        batch_rows: 2,
        keep_runs: 2,
    };
    let first = purge_batch(&c, &settings).await.unwrap();
    assert_eq!(first.outbox, 2, "a batch is bounded: {first:?}");
    assert_eq!(first.webhook_events, 1);
    assert_eq!(first.idempotency_keys, 1);
    // Two old finished runs, a lead and a contact each: two per table.
    assert_eq!(first.staging, 4);
    let second = purge_batch(&c, &settings).await.unwrap();
    assert_eq!(second.outbox, 1, "{second:?}");
    assert_eq!(second.total(), 1);
    assert_eq!(purge_batch(&c, &settings).await.unwrap().total(), 0);

    assert_eq!(
        column(&c, "SELECT dedupe_key FROM integrations_outbox").await,
        vec!["new-ok", "old-failed", "old-pending", "old-processing"]
    );
    assert_eq!(
        column(&c, "SELECT dedupe_key FROM kommo_webhook_events").await,
        vec![
            "new-processed",
            "old-failed",
            "old-received",
            "old-rejected"
        ]
    );
    assert_eq!(
        column(&c, "SELECT idempotency_key FROM staff_idempotency_keys").await,
        vec!["new"]
    );
    // The running and the held run keep their staging whatever their age;
    // of the finished ones, the two newest.
    let staged = "SELECT r.triggered_by FROM kommo_import_runs r
                   WHERE EXISTS (SELECT 1 FROM stg_kommo_leads s WHERE s.run_id = r.id)
                     AND EXISTS (SELECT 1 FROM stg_kommo_contacts s WHERE s.run_id = r.id)";
    assert_eq!(
        column(&c, staged).await,
        vec!["run-0", "run-3", "run-4", "run-5"]
    );
    // The runs themselves stay: they are the history the API lists.
    assert_eq!(
        db_count(&c, "SELECT count(*) FROM kommo_import_runs").await,
        6
    );
}

async fn db_count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}
