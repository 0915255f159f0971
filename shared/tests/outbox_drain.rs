//! The outbox drain against a real Postgres and the Zoho sandbox: every
//! acceptance point of the outbox issue.

use std::time::Duration;

use sandbox::zoho::{ZohoOptions, ZohoSandbox, ENDPOINT_CONTACTS_UPSERT, ENDPOINT_TOKEN};
use serde_json::{json, Value};
use shared::{
    outbox::{self, Drain, DrainReport, StopReason},
    platform::config::{OutboxSettings, ZohoSettings},
};
use testkit::TestDb;
use uuid::Uuid;

fn outbox_settings() -> OutboxSettings {
    OutboxSettings {
        batch_size: 200,
        ..testkit::outbox::outbox_settings()
    }
}

fn zoho_settings() -> ZohoSettings {
    testkit::outbox::zoho_settings("Email")
}

/// A drain as one Lambda container would have it: own pool, own token cache.
fn drain_with(db: &TestDb, z: &ZohoSandbox, o: OutboxSettings, zs: ZohoSettings) -> Drain {
    testkit::outbox::drain_with(db, z.secret_json(), zs, o)
}

fn drain(db: &TestDb, z: &ZohoSandbox) -> Drain {
    drain_with(db, z, outbox_settings(), zoho_settings())
}

async fn run(d: &Drain) -> DrainReport {
    d.run(d.deadline_in(Duration::from_secs(60))).await.unwrap()
}

async fn live_db() -> TestDb {
    let db = TestDb::new().await;
    db.set_flag("enableZohoLive", true).await;
    db
}

/// Inserts `n` clients named `<prefix>i` and enqueues their contact.upsert.
async fn seed_contacts(db: &TestDb, prefix: &str, n: usize) -> Vec<Uuid> {
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id: Uuid = tx
            .query_one(
                "INSERT INTO clients (full_name, first_name, last_name, email, phone)
                 VALUES ($1, 'Test', $2, $3, '555-0100') RETURNING id",
                &[
                    &format!("Test {prefix}{i}"),
                    &format!("{prefix}{i}"),
                    &format!("{prefix}{i}@example.com"),
                ],
            )
            .await
            .unwrap()
            .get(0);
        assert!(outbox::enqueue_contact_upsert(&tx, id).await.unwrap());
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

/// A client and a booking with only its sales_order.create enqueued.
async fn seed_order(db: &TestDb, email: &str) -> (Uuid, Uuid) {
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let client: Uuid = tx
        .query_one(
            "INSERT INTO clients (full_name, email) VALUES ('Patricia Boyle', $1) RETURNING id",
            &[&email],
        )
        .await
        .unwrap()
        .get(0);
    let booking: Uuid = tx
        .query_one(
            "INSERT INTO bookings (channel, created_by, client_id, title, total_amount, currency)
             VALUES ('Kommo', 'system-kommo', $1, 'Van rental', ($2::text)::numeric, 'EUR')
             RETURNING id",
            &[&client, &"249.50"],
        )
        .await
        .unwrap()
        .get(0);
    assert!(outbox::enqueue_sales_order_create(&tx, booking, client)
        .await
        .unwrap());
    tx.commit().await.unwrap();
    (client, booking)
}

async fn sync_status(c: &tokio_postgres::Client, booking: Uuid) -> String {
    c.query_one(
        "SELECT zoho_sync_status FROM bookings WHERE id = $1",
        &[&booking],
    )
    .await
    .unwrap()
    .get(0)
}

struct RowState {
    status: String,
    attempts: i32,
    last_error: Option<String>,
    due_in_secs: f64,
    response: Option<Value>,
}

async fn row(db: &TestDb, event: &str, entity: Uuid) -> RowState {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT status, attempts, last_error,
                    extract(epoch FROM next_run_at - now())::float8, last_response
               FROM integrations_outbox WHERE dedupe_key = $1
              ORDER BY created_at DESC LIMIT 1",
            &[&outbox::dedupe_key(event, entity)],
        )
        .await
        .unwrap();
    RowState {
        status: r.get(0),
        attempts: r.get(1),
        last_error: r.get(2),
        due_in_secs: r.get(3),
        response: r.get(4),
    }
}

async fn statuses(db: &TestDb) -> std::collections::BTreeMap<String, i64> {
    outbox::status_counts(&db.client().await).await.unwrap()
}

async fn zoho_contact_id(db: &TestDb, client: Uuid) -> Option<String> {
    db.client()
        .await
        .query_one(
            "SELECT zoho_contact_id FROM clients WHERE id = $1",
            &[&client],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn enqueue_keeps_one_live_row_per_event_and_entity() {
    let db = TestDb::new().await;
    let ids = seed_contacts(&db, "dup", 1).await;
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    assert!(!outbox::enqueue_contact_upsert(&tx, ids[0]).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(db.count("integrations_outbox").await, 1);

    // Once the live row is done, the same work can be enqueued again.
    c.execute("UPDATE integrations_outbox SET status = 'succeeded'", &[])
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    assert!(outbox::enqueue_contact_upsert(&tx, ids[0]).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(db.count("integrations_outbox").await, 2);
}

#[tokio::test]
async fn two_hundred_fifty_contacts_go_out_in_three_calls() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "bulk", 250).await;
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.claimed, 250);
    assert_eq!(report.succeeded, 250);
    assert_eq!(report.stopped, None);
    let st = z.state();
    assert!(st.calls_to(ENDPOINT_CONTACTS_UPSERT) <= 3, "{:?}", st.calls);
    assert_eq!(st.contacts.len(), 250);
    assert_eq!(statuses(&db).await.get("succeeded"), Some(&250));
    for (i, id) in ids.iter().enumerate().step_by(37) {
        let zid = zoho_contact_id(&db, *id).await.expect("contact id stored");
        let zc = st
            .contact_by("Email", &format!("bulk{i}@example.com"))
            .unwrap();
        assert_eq!(zc.id, zid);
        assert_eq!(zc.fields["Last_Name"], format!("bulk{i}"));
    }
    let r = row(&db, outbox::EVENT_CONTACT_UPSERT, ids[0]).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(r.last_error, None);
    assert_eq!(r.response.unwrap()["code"], "SUCCESS");
}

#[tokio::test]
async fn a_207_marks_exactly_the_failed_rows_with_zohos_message() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "mix", 5).await;
    z.reject_records_where("Email", "mix1@example.com");
    // No name at all: Zoho's MANDATORY_NOT_FOUND on Last_Name.
    db.client()
        .await
        .execute(
            "UPDATE clients SET full_name = '', first_name = NULL, last_name = NULL WHERE id = $1",
            &[&ids[3]],
        )
        .await
        .unwrap();
    let report = run(&drain(&db, &z)).await;
    assert_eq!((report.succeeded, report.failed), (3, 2));

    let bad = row(&db, outbox::EVENT_CONTACT_UPSERT, ids[1]).await;
    assert_eq!(bad.status, "failed");
    assert_eq!(
        bad.last_error.as_deref(),
        Some("INVALID_DATA: invalid data (Email at $.data[1].Email)")
    );
    let nameless = row(&db, outbox::EVENT_CONTACT_UPSERT, ids[3]).await;
    assert_eq!(nameless.status, "failed");
    assert!(nameless
        .last_error
        .unwrap()
        .starts_with("MANDATORY_NOT_FOUND"));
    for i in [0, 2, 4] {
        assert_eq!(
            row(&db, outbox::EVENT_CONTACT_UPSERT, ids[i]).await.status,
            "succeeded"
        );
        assert!(zoho_contact_id(&db, ids[i]).await.is_some());
    }
    assert!(zoho_contact_id(&db, ids[1]).await.is_none());
    assert_eq!(z.state().calls_to(ENDPOINT_CONTACTS_UPSERT), 1);
}

#[tokio::test]
async fn a_crashed_drains_rows_are_reclaimed_after_the_lease_and_sent_once() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    seed_contacts(&db, "crash", 10).await;
    // A drain claims and dies before sending.
    let claimed = outbox::claim(
        &db.client().await,
        100,
        Duration::from_secs(1),
        "dead-drain",
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 10);

    let d = drain(&db, &z);
    let early = run(&d).await;
    assert_eq!(early.claimed, 0, "leased rows are not claimable");
    assert_eq!(z.state().calls_to(ENDPOINT_CONTACTS_UPSERT), 0);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = run(&d).await;
    assert_eq!(later.reclaimed, 10);
    assert_eq!(later.succeeded, 10);
    let st = z.state();
    assert_eq!(st.contacts.len(), 10);
    assert!(st.contacts.iter().all(|c| c.writes == 1), "each sent once");
    assert_eq!(statuses(&db).await.get("succeeded"), Some(&10));
}

#[tokio::test]
async fn two_drains_at_once_never_send_the_same_row() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    z.set_latency(Duration::from_millis(20));
    seed_contacts(&db, "race", 400).await;
    let mut o = outbox_settings();
    o.batch_size = 50;
    let a = drain_with(&db, &z, o.clone(), zoho_settings());
    let b = drain_with(&db, &z, o, zoho_settings());
    let (ra, rb) = tokio::join!(run(&a), run(&b));
    assert_eq!(ra.succeeded + rb.succeeded, 400);
    assert_eq!(ra.claimed + rb.claimed, 400);
    let st = z.state();
    assert_eq!(st.contacts.len(), 400);
    assert!(
        st.contacts.iter().all(|c| c.writes == 1),
        "no row sent twice"
    );
    assert_eq!(st.token_refreshes, 1);
}

async fn store_token(db: &TestDb, z: &ZohoSandbox, token: &str, expires_in_secs: i64) {
    db.client()
        .await
        .execute(
            "UPDATE zoho_oauth_tokens
                SET access_token = $1, api_domain = $2,
                    expires_at = now() + make_interval(secs => $3::float8)
              WHERE id = 'default'",
            &[&token, &z.base_url(), &(expires_in_secs as f64)],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn five_drains_with_an_expired_token_refresh_it_once() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    seed_contacts(&db, "five", 50).await;
    store_token(&db, &z, "1000.expired.token", -60).await;
    let mut o = outbox_settings();
    o.batch_size = 10;
    let drains: Vec<Drain> = (0..5)
        .map(|_| drain_with(&db, &z, o.clone(), zoho_settings()))
        .collect();
    let reports = futures_join(drains.iter().map(run)).await;
    assert_eq!(reports.iter().map(|r| r.succeeded).sum::<u64>(), 50);
    assert_eq!(z.state().token_refreshes, 1);
    let count: i32 = db
        .client()
        .await
        .query_one("SELECT refresh_count FROM zoho_oauth_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn five_drains_whose_token_zoho_revoked_refresh_it_once() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    seed_contacts(&db, "revoked", 50).await;
    // Not expired by our clock, but unknown to Zoho (evicted): 401 INVALID_TOKEN.
    store_token(&db, &z, "1000.evicted.token", 3000).await;
    let mut o = outbox_settings();
    o.batch_size = 10;
    let drains: Vec<Drain> = (0..5)
        .map(|_| drain_with(&db, &z, o.clone(), zoho_settings()))
        .collect();
    let reports = futures_join(drains.iter().map(run)).await;
    assert_eq!(reports.iter().map(|r| r.succeeded).sum::<u64>(), 50);
    assert_eq!(z.state().token_refreshes, 1);
}

async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    futures::future::join_all(futs).await
}

#[tokio::test]
async fn the_token_throttle_stops_the_drain_and_charges_nothing() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions {
        refresh_limit: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let ids = seed_contacts(&db, "thr", 10).await;

    // No token at all: nothing is claimed.
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.stopped, Some(StopReason::Throttled));
    assert_eq!(report.claimed, 0);
    let r = row(&db, outbox::EVENT_CONTACT_UPSERT, ids[0]).await;
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
    let until: f64 = db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM throttled_until - now())::float8 FROM zoho_oauth_tokens",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        until >= 595.0,
        "circuit open for at least 10 minutes: {until}"
    );

    // Throttled in the middle of a run (token revoked, refresh refused): rows handed back.
    db.client()
        .await
        .execute("UPDATE zoho_oauth_tokens SET throttled_until = NULL", &[])
        .await
        .unwrap();
    store_token(&db, &z, "1000.revoked", 3000).await;
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.stopped, Some(StopReason::Throttled));
    assert_eq!(report.claimed, 10);
    assert_eq!(report.handed_back, 10);
    for id in &ids {
        let r = row(&db, outbox::EVENT_CONTACT_UPSERT, *id).await;
        assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
        assert!(r.last_error.unwrap().contains("throttled"));
    }
    // The circuit holds: the next run does not even ask for a token.
    let token_calls = z.state().calls_to(ENDPOINT_TOKEN);
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.claimed, 0);
    assert_eq!(z.state().calls_to(ENDPOINT_TOKEN), token_calls);
    assert_eq!(z.state().contacts.len(), 0);
}

#[tokio::test]
async fn a_429_pushes_next_run_at_out_and_charges_the_attempt() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "rl", 3).await;
    z.fail_next_with_429(1);
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.retried, 3);
    assert_eq!(report.stopped, Some(StopReason::RateLimited));
    for id in &ids {
        let r = row(&db, outbox::EVENT_CONTACT_UPSERT, *id).await;
        assert_eq!((r.status.as_str(), r.attempts), ("pending", 1));
        // Backoff base 30 s with equal jitter: at least 15 s out.
        assert!(
            r.due_in_secs >= 14.0 && r.due_in_secs <= 31.0,
            "{}",
            r.due_in_secs
        );
        assert!(r.last_error.unwrap().contains("429"));
    }
    // Not due yet: a second run sends nothing.
    assert_eq!(run(&drain(&db, &z)).await.claimed, 0);
}

#[tokio::test]
async fn the_last_attempt_fails_the_row_and_the_booking() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let (client, booking) = seed_order(&db, "last@example.com").await;
    let c = db.client().await;
    c.execute(
        "UPDATE clients SET zoho_contact_id = $2 WHERE id = $1",
        &[&client, &z.insert_contact(serde_json::Map::new())],
    )
    .await
    .unwrap();
    c.execute("UPDATE integrations_outbox SET attempts = 4", &[])
        .await
        .unwrap();
    z.fail_next_with_5xx(1, 500);
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.failed, 1);
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!((r.status.as_str(), r.attempts), ("failed", 5));
    assert!(r
        .last_error
        .unwrap()
        .starts_with("gave up after 5 attempts"));
    assert_eq!(sync_status(&c, booking).await, "failed");

    // The runbook's requeue gives it a fresh set of attempts.
    assert_eq!(outbox::requeue_failed(&c, None).await.unwrap(), 1);
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
    assert_eq!(outbox::requeue_failed(&c, None).await.unwrap(), 0);
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.succeeded, 1);
    assert_eq!(sync_status(&c, booking).await, "synced");
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_attempt_fails_the_row_and_the_booking() {
    let db = TestDb::new().await;
    let (_, booking) = seed_order(&db, "lease@example.com").await;
    let mut c = db.client().await;
    c.execute("UPDATE integrations_outbox SET attempts = 4", &[])
        .await
        .unwrap();
    // A drain claims its last attempt and dies before settling.
    let claimed = outbox::claim(&c, 100, Duration::from_secs(1), "dead-drain")
        .await
        .unwrap();
    assert!(!claimed.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        outbox::rescue_expired(&mut c, 5).await.unwrap(),
        (0, claimed.len() as u64)
    );
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!((r.status.as_str(), r.attempts), ("failed", 5));
    assert_eq!(
        r.last_error.as_deref(),
        Some("lease expired on the last attempt")
    );
    assert_eq!(sync_status(&c, booking).await, "failed");
}

/// A lease rescue that fails a booking's last attempt and a producer changing
/// that booking and queuing its order: both finish, neither is aborted as a
/// deadlock. The rescue used to lock the outbox row before the booking, the
/// producer the other way round.
#[tokio::test]
async fn a_lease_rescue_and_a_producer_on_the_same_booking_do_not_deadlock() {
    let db = TestDb::new().await;
    let (client, booking) = seed_order(&db, "rescue-race@example.com").await;
    let c = db.client().await;
    c.execute("UPDATE integrations_outbox SET attempts = 4", &[])
        .await
        .unwrap();
    let claimed = outbox::claim(&c, 100, Duration::from_secs(1), "dead-drain")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut producer = db.client().await;
    let tx = producer.transaction().await.unwrap();
    tx.execute(
        "UPDATE bookings SET title = 'Van rental, two days' WHERE id = $1",
        &[&booking],
    )
    .await
    .unwrap();
    let mut rescuer = db.client().await;
    let rescue = tokio::spawn(async move { outbox::rescue_expired(&mut rescuer, 5).await });
    // The rescue now waits for the booking the producer holds.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rescue.is_finished());
    outbox::enqueue_sales_order_create(&tx, booking, client)
        .await
        .expect("the producer queues its work without a deadlock");
    tx.commit().await.unwrap();

    let rescued = tokio::time::timeout(Duration::from_secs(20), rescue)
        .await
        .expect("the rescue finishes once the producer commits")
        .unwrap()
        .expect("the rescue is not aborted");
    assert_eq!(rescued, (0, 1));
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!(r.status, "failed");
    assert_eq!(sync_status(&c, booking).await, "failed");
    let title: String = c
        .query_one("SELECT title FROM bookings WHERE id = $1", &[&booking])
        .await
        .unwrap()
        .get(0);
    assert_eq!(title, "Van rental, two days");
}

#[tokio::test]
async fn an_order_created_then_timed_out_ends_with_one_order_and_its_id() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let (client, booking) = seed_order(&db, "late@example.com").await;
    z.time_out_after_next_creates(1, Duration::from_secs(3));
    let mut zs = zoho_settings();
    zs.http_timeout = Duration::from_millis(500);
    let d = drain_with(&db, &z, outbox_settings(), zs);

    let first = run(&d).await;
    assert_eq!(first.retried, 1);
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 1));
    assert!(r.last_error.unwrap().contains("timed out"));
    // The contact went first, in the same run.
    assert!(zoho_contact_id(&db, client).await.is_some());

    // The backoff has passed.
    db.client()
        .await
        .execute("UPDATE integrations_outbox SET next_run_at = now()", &[])
        .await
        .unwrap();
    let second = run(&d).await;
    assert_eq!(second.succeeded, 1);
    let st = z.state();
    assert_eq!(st.sales_orders.len(), 1, "exactly one order in Zoho");
    let order = &st.sales_orders[0];
    let (so_id, sync): (Option<String>, String) = {
        let r = db
            .client()
            .await
            .query_one(
                "SELECT zoho_sales_order_id, zoho_sync_status FROM bookings WHERE id = $1",
                &[&booking],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(so_id.as_deref(), Some(order.id.as_str()));
    assert_eq!(sync, "synced");
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!(r.status, "succeeded");
    assert_eq!(r.response.unwrap()["already_existed"], true);
    assert_eq!(order.fields["ERP_Booking_Id"], booking.to_string());
    assert_eq!(
        order.fields["Contact_Name"]["id"],
        zoho_contact_id(&db, client).await.unwrap()
    );
    assert_eq!(order.fields["Ordered_Items"][0]["List_Price"], 249.5);
}

#[tokio::test]
async fn an_invalid_order_fails_at_once_and_marks_the_booking() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let (_, booking) = seed_order(&db, "inv@example.com").await;
    z.reject_records_where("Subject", "Van rental");
    let report = run(&drain(&db, &z)).await;
    assert_eq!(report.failed, 1);
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!((r.status.as_str(), r.attempts), ("failed", 1));
    assert!(r
        .last_error
        .unwrap()
        .contains("INVALID_DATA: invalid data (Subject"));
    assert_eq!(sync_status(&db.client().await, booking).await, "failed");
}

#[tokio::test]
async fn with_the_flag_off_rows_are_stubbed_and_zoho_sees_nothing() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "stub", 5).await;
    let (_, booking) = seed_order(&db, "stub-order@example.com").await;
    let report = run(&drain(&db, &z)).await;
    assert!(!report.live);
    assert_eq!((report.succeeded, report.stubbed), (6, 6));
    let r = row(&db, outbox::EVENT_SALES_ORDER_CREATE, booking).await;
    assert_eq!(r.status, "succeeded");
    assert_eq!(r.response, Some(json!({"mode": "stubbed"})));
    assert_eq!(
        row(&db, outbox::EVENT_CONTACT_UPSERT, ids[0])
            .await
            .response,
        Some(json!({"mode": "stubbed"}))
    );
    let st = z.state();
    assert!(st.calls.is_empty(), "{:?}", st.calls);
    assert_eq!(st.token_refreshes, 0);
    assert!(zoho_contact_id(&db, ids[0]).await.is_none());
}

#[tokio::test]
async fn near_the_deadline_unsent_rows_are_handed_back_uncharged() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    seed_contacts(&db, "dl", 300).await;
    z.set_latency(Duration::from_millis(600));
    let mut o = outbox_settings();
    o.batch_size = 300;
    o.zoho_concurrency = 1;
    let d = drain_with(&db, &z, o, zoho_settings());
    // Margin 1 s: the first two calls start in time, the third does not.
    let report = d
        .run(d.deadline_in(Duration::from_millis(1900)))
        .await
        .unwrap();
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!((report.succeeded, report.handed_back), (200, 100));
    let c = db.client().await;
    let back: i64 = c
        .query_one(
            "SELECT count(*) FROM integrations_outbox
              WHERE status = 'pending' AND attempts = 0 AND locked_by IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(back, 100);
    assert_eq!(z.state().calls_to(ENDPOINT_CONTACTS_UPSERT), 2);

    // Too close to the deadline to start: nothing is claimed.
    let report = d
        .run(d.deadline_in(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(
        (report.claimed, report.stopped),
        (0, Some(StopReason::Deadline))
    );
}

/// The swap holds the snapshot lock exclusively while it rewrites clients and
/// bookings; a drain settling a batch waits for it instead of locking the
/// same rows in the other order (a deadlock would abort the swap).
#[tokio::test]
async fn a_drain_settles_only_after_a_swap_in_progress_commits() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "swap", 3).await;
    let mut swap = db.client().await;
    let swap_tx = swap.transaction().await.unwrap();
    shared::erp::snapshot::exclusive_lock(&swap_tx)
        .await
        .unwrap();

    let d = drain(&db, &z);
    let running = tokio::spawn(async move { run(&d).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!running.is_finished(), "the drain settled during the swap");
    assert_eq!(zoho_contact_id(&db, ids[0]).await, None);

    swap_tx.commit().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the drain finishes once the swap commits")
        .unwrap();
    assert_eq!(report.succeeded, 3);
    assert!(zoho_contact_id(&db, ids[0]).await.is_some());
}

/// A producer changes a client (row lock) and queues its Zoho work (the
/// outbox row) while a drain settles that client's contact: both finish,
/// neither is aborted as a deadlock, and the change is queued for the next
/// drain. The settle used to lock the outbox row before the client, the
/// producer the other way round.
#[tokio::test]
async fn a_producer_and_a_settle_on_the_same_client_do_not_deadlock() {
    let db = live_db().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let ids = seed_contacts(&db, "race", 1).await;
    let client = ids[0];

    let mut producer = db.client().await;
    let tx = producer.transaction().await.unwrap();
    tx.execute(
        "UPDATE clients SET email = 'race-new@example.com' WHERE id = $1",
        &[&client],
    )
    .await
    .unwrap();

    let d = drain(&db, &z);
    let running = tokio::spawn(async move { d.run(d.deadline_in(Duration::from_secs(60))).await });
    // The drain has sent the contact and waits for the client row.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.is_finished());
    shared::outbox::lockstep::enqueue_changed(
        &tx,
        shared::outbox::lockstep::Table::Clients,
        &[client],
    )
    .await
    .expect("the producer queues its work without a deadlock");
    tx.commit().await.unwrap();

    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the drain finishes")
        .unwrap()
        .expect("the settle is not aborted");
    // The contact went out with the old email; the change was queued behind
    // it and, being due at once, sent by the same drain as an update.
    assert_eq!(report.failed, 0, "{report:?}");
    let st = z.state();
    assert_eq!(st.contacts.len(), 1, "one contact, updated in place");
    let zid = zoho_contact_id(&db, client)
        .await
        .expect("contact id stored");
    let zc = st
        .contact_by("Email", "race-new@example.com")
        .expect("the change reached Zoho");
    assert_eq!(zc.id, zid);
    let live: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM integrations_outbox
              WHERE entity_id = $1 AND status IN ('pending', 'processing', 'failed')",
            &[&client],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "nothing left behind");
}
