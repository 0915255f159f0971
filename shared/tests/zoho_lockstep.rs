//! Zoho in lockstep (issue 15) against a real Postgres and the Zoho sandbox:
//! Kommo changes applied through ingest, drained to Zoho, and reconcile.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sandbox::zoho::{
    SandboxState, ZohoOptions, ZohoSandbox, ENDPOINT_CONTACTS_UPDATE, ENDPOINT_CONTACTS_UPSERT,
    ENDPOINT_SALES_ORDERS, ENDPOINT_SALES_ORDERS_UPDATE, ENDPOINT_SALES_ORDERS_UPSERT,
};
use serde_json::Value;
use shared::{
    ingest::{apply_lead, delete_lead, Enqueued, LeadOutcome},
    kommo::{MappedContact, MappedLead},
    outbox::{reconcile, Drain, DrainReport, ReconcileLimits, ReconcileReport},
    platform::deadline::Deadline,
};
use testkit::TestDb;

fn drain(db: &TestDb, z: &ZohoSandbox) -> Drain {
    testkit::outbox::drain(db, z.secret_json(), testkit::outbox::zoho_settings("Email"))
}

async fn run(d: &Drain) -> DrainReport {
    let report = d.run(d.deadline_in(Duration::from_secs(60))).await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    report
}

async fn reconciled(db: &TestDb) -> ReconcileReport {
    let mut c = db.client().await;
    let deadline = Deadline::after(Duration::from_secs(60), Duration::ZERO);
    reconcile(&mut c, deadline, ReconcileLimits::default())
        .await
        .unwrap()
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_795_000_000 + secs, 0).unwrap()
}

fn contact(id: i64, updated: i64) -> MappedContact {
    MappedContact {
        contact_id: id,
        full_name: format!("Ada Lovelace{id}"),
        first_name: Some("Ada".into()),
        last_name: Some(format!("Lovelace{id}")),
        email: Some(format!("ada{id}@example.com")),
        phone: Some("+44 20 7946 0958".into()),
        phone_normalized: Some("442079460958".into()),
        updated_at: Some(t(updated)),
    }
}

/// Lead `id` of contact `id`, as the Kommo mapping produces it.
fn lead(id: i64, updated: i64) -> MappedLead {
    MappedLead {
        lead_id: id,
        kommo_updated_at: t(updated),
        created_at: t(0),
        name: Some(format!("Van for the weekend {id}")),
        price: Some(1000),
        pipeline_id: 8572511,
        status_id: 67548619,
        status_label: None,
        booking_status: "requested".into(),
        excluded: false,
        is_deleted: false,
        responsible_user_id: None,
        owner_staff_id: None,
        start_at: Some(t(86_400)),
        end_at: Some(t(2 * 86_400)),
        closed_at: None,
        vehicle_enum_id: Some(908107),
        vehicle_name: Some("Ford Transit LWB".into()),
        source_enum_id: None,
        source: Some("Instagram".into()),
        main_contact_id: Some(id),
        warnings: Vec::new(),
    }
}

/// Applies a lead with its contact in one transaction, as ingest does.
async fn apply(db: &TestDb, l: &MappedLead, c: &MappedContact) -> Enqueued {
    let mut conn = db.pooled().await;
    let tx = conn.transaction().await.unwrap();
    let out = apply_lead(&tx, l, Some(c)).await.unwrap();
    tx.commit().await.unwrap();
    match out {
        LeadOutcome::Booked { enqueued, .. } => enqueued,
        other => panic!("expected a booking, got {other:?}"),
    }
}

fn crm_calls(s: &SandboxState) -> u64 {
    s.calls
        .iter()
        .filter(|(k, _)| *k != "oauth_token")
        .map(|(_, n)| n)
        .sum()
}

fn text<'a>(r: &'a sandbox::zoho::StoredRecord, field: &str) -> Option<&'a str> {
    r.fields.get(field).and_then(Value::as_str)
}

/// Lead 1 applied and drained: one contact and one order in Zoho.
async fn synced() -> (TestDb, ZohoSandbox, Drain) {
    let db = TestDb::new().await;
    db.set_flag("enableZohoLive", true).await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let d = drain(&db, &z);
    let e = apply(&db, &lead(1, 10), &contact(1, 10)).await;
    assert!(e.contact_upsert && e.sales_order_create, "{e:?}");
    run(&d).await;
    let s = z.state();
    assert_eq!((s.contacts.len(), s.sales_orders.len()), (1, 1));
    (db, z, d)
}

async fn pending(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM integrations_outbox WHERE status IN ('pending', 'processing')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_email_change_updates_the_same_contact() {
    let (db, z, d) = synced().await;
    let mut c = contact(1, 20);
    c.email = Some("ada.new@example.com".into());
    let e = apply(&db, &lead(1, 20), &c).await;
    assert!(e.contact_update && !e.contact_upsert, "{e:?}");
    assert!(!e.sales_order_update, "the order's fields did not change");
    run(&d).await;

    let s = z.state();
    assert_eq!(s.contacts.len(), 1, "no second contact");
    assert_eq!(text(&s.contacts[0], "Email"), Some("ada.new@example.com"));
    assert_eq!(s.contacts[0].writes, 2);
    assert_eq!(s.calls_to(ENDPOINT_CONTACTS_UPDATE), 1);
    assert_eq!(s.calls_to(ENDPOINT_CONTACTS_UPSERT), 1);
}

#[tokio::test]
async fn a_date_or_price_change_updates_the_same_sales_order() {
    let (db, z, d) = synced().await;
    let mut l = lead(1, 20);
    l.price = Some(1450);
    l.start_at = Some(t(3 * 86_400));
    let e = apply(&db, &l, &contact(1, 10)).await;
    assert_eq!(
        e.events(),
        ["sales_order.update"],
        "the contact is in step: {e:?}"
    );
    run(&d).await;

    let s = z.state();
    assert_eq!(s.sales_orders.len(), 1, "no second order");
    let o = &s.sales_orders[0];
    assert_eq!(o.fields["Ordered_Items"][0]["List_Price"], 1450.0);
    let start = t(3 * 86_400).format("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    assert_eq!(text(o, "Booking_Start"), Some(start.as_str()));
    assert_eq!(text(o, "Status"), Some("Created"));
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPDATE), 1);
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS), 1, "created once");
}

#[tokio::test]
async fn a_kommo_delete_cancels_the_order() {
    let (db, z, d) = synced().await;
    let mut conn = db.pooled().await;
    let tx = conn.transaction().await.unwrap();
    assert_eq!(delete_lead(&tx, 1).await.unwrap().0, 1);
    tx.commit().await.unwrap();
    run(&d).await;

    let s = z.state();
    assert_eq!(s.sales_orders.len(), 1, "cancelled, never deleted");
    assert_eq!(text(&s.sales_orders[0], "Status"), Some("Cancelled"));
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPDATE), 1);
}

#[tokio::test]
async fn a_redelivery_or_an_unrelated_change_makes_no_call() {
    let (db, z, d) = synced().await;
    let before = crm_calls(&z.state());

    // The same delivery again.
    let e = apply(&db, &lead(1, 10), &contact(1, 10)).await;
    assert_eq!(e, Enqueued::default());
    // A newer lead that changes only what Zoho does not receive.
    let mut l = lead(1, 30);
    l.source = Some("Facebook".into());
    l.vehicle_enum_id = Some(908108);
    l.vehicle_name = Some("Mercedes Sprinter".into());
    let e = apply(&db, &l, &contact(1, 10)).await;
    assert_eq!(e, Enqueued::default());
    assert_eq!(pending(&db).await, 0);

    let report = run(&d).await;
    assert_eq!(report.claimed, 0);
    assert_eq!(crm_calls(&z.state()), before);
}

#[tokio::test]
async fn three_changes_before_one_drain_make_one_call() {
    let (db, z, d) = synced().await;
    for (i, price) in [1100, 1200, 1300].into_iter().enumerate() {
        let mut l = lead(1, 20 + i as i64);
        l.price = Some(price);
        apply(&db, &l, &contact(1, 10)).await;
    }
    assert_eq!(pending(&db).await, 1, "coalesced into one live row");
    run(&d).await;

    let s = z.state();
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPDATE), 1);
    let price = &s.sales_orders[0].fields["Ordered_Items"][0]["List_Price"];
    assert_eq!(price, 1300.0, "the latest state");
}

#[tokio::test]
async fn stubbed_bookings_reach_zoho_once_after_the_flag_and_a_reconcile() {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let d = drain(&db, &z);
    for id in 1..=100 {
        apply(&db, &lead(id, 10), &contact(id, 10)).await;
    }
    let stubbed = run(&d).await;
    assert_eq!((stubbed.stubbed, crm_calls(&z.state())), (200, 0));

    db.set_flag("enableZohoLive", true).await;
    let r = reconciled(&db).await;
    assert!(r.complete, "{r:?}");
    assert_eq!(r.enqueued, 200, "a contact and an order each: {r:?}");
    run(&d).await;

    let s = z.state();
    assert_eq!((s.contacts.len(), s.sales_orders.len()), (100, 100));
    assert!(s
        .contacts
        .iter()
        .chain(&s.sales_orders)
        .all(|r| r.writes == 1));
    // 100 contacts and 100 orders, each group in one call.
    assert_eq!(s.calls_to(ENDPOINT_CONTACTS_UPSERT), 1);
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS), 1);
    let synced = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM bookings
              WHERE zoho_sync_status = 'synced' AND zoho_fingerprint IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(synced, 100);

    let again = reconciled(&db).await;
    assert_eq!((again.enqueued, again.complete), (0, true), "{again:?}");
    assert_eq!(pending(&db).await, 0);
}

#[tokio::test]
async fn a_reconcile_cut_short_resumes_where_it_stopped() {
    let db = TestDb::new().await;
    for id in 1..=25 {
        apply(&db, &lead(id, 10), &contact(id, 10)).await;
    }
    let mut c = db.client().await;
    c.execute("DELETE FROM integrations_outbox", &[])
        .await
        .unwrap();
    let limits = ReconcileLimits {
        page_rows: 10,
        max_pages: 2,
    };
    let deadline = Deadline::after(Duration::from_secs(60), Duration::ZERO);
    let (mut pages, mut enqueued, mut calls) = (0, 0, 0);
    loop {
        let r = reconcile(&mut c, deadline, limits).await.unwrap();
        assert!(r.pages <= 2, "{r:?}");
        pages += r.pages;
        enqueued += r.enqueued;
        calls += 1;
        if r.complete {
            break;
        }
        assert!(calls < 10, "the reconcile does not resume where it stopped");
    }
    // Clients: 10, 10, 5; bookings: 10, 10, 5: six pages, 50 rows queued once.
    assert_eq!((pages, enqueued), (6, 50));
    assert_eq!(pending(&db).await, 50);
}

#[tokio::test]
async fn a_change_made_while_its_update_is_in_flight_is_sent_next() {
    let (db, z, d) = synced().await;
    let mut first = lead(1, 20);
    first.price = Some(1100);
    apply(&db, &first, &contact(1, 10)).await;
    z.set_latency(Duration::from_millis(1000));
    let change = async {
        // Lands while the drain's PUT is in flight: the live row absorbs it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut second = lead(1, 30);
        second.price = Some(1200);
        apply(&db, &second, &contact(1, 10)).await
    };
    let (_, e) = tokio::join!(run(&d), change);
    assert!(e.sales_order_update, "{e:?}");

    // Settling found the newer state and queued it; the same run sent it.
    let s = z.state();
    let price = &s.sales_orders[0].fields["Ordered_Items"][0]["List_Price"];
    assert_eq!(price, 1200.0);
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPDATE), 2);
    assert_eq!(pending(&db).await, 0);
    assert_eq!(reconciled(&db).await.enqueued, 0, "in step");
}

#[tokio::test]
async fn an_order_update_without_its_zoho_id_is_upserted_on_the_booking_id() {
    let (db, z, d) = synced().await;
    let order_id = z.state().sales_orders[0].id.clone();
    let c = db.client().await;
    let booking: uuid::Uuid = c
        .query_one(
            "UPDATE bookings SET zoho_sales_order_id = NULL, total_amount = 1800 RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "INSERT INTO integrations_outbox
                (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
         SELECT 'booking', id, 'zoho', 'sales_order.update',
                jsonb_build_object('booking_id', id, 'client_id', client_id),
                'sales_order.update:' || id
           FROM bookings WHERE id = $1",
        &[&booking],
    )
    .await
    .unwrap();
    run(&d).await;

    let s = z.state();
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPSERT), 1);
    assert_eq!(s.sales_orders.len(), 1, "matched on ERP_Booking_Id");
    let price = &s.sales_orders[0].fields["Ordered_Items"][0]["List_Price"];
    assert_eq!(price, 1800.0);
    let stored: Option<String> = c
        .query_one(
            "SELECT zoho_sales_order_id FROM bookings WHERE id = $1",
            &[&booking],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, Some(order_id));
}

#[tokio::test]
async fn an_excluded_status_cancels_the_order() {
    let (db, z, d) = synced().await;
    let mut l = lead(1, 20);
    l.excluded = true;
    l.status_id = 143;
    l.booking_status = "cancelled".into();
    let mut conn = db.pooled().await;
    let tx = conn.transaction().await.unwrap();
    let out = apply_lead(&tx, &l, Some(&contact(1, 10))).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        matches!(
            out,
            LeadOutcome::Excluded {
                deactivated: Some(_)
            }
        ),
        "{out:?}"
    );
    run(&d).await;
    let s = z.state();
    assert_eq!(text(&s.sales_orders[0], "Status"), Some("Cancelled"));
    assert_eq!(text(&s.sales_orders[0], "ERP_Status"), Some("cancelled"));
}

#[tokio::test]
async fn a_late_contact_upsert_of_a_known_contact_updates_it_by_id() {
    let (db, z, d) = synced().await;
    let c = db.client().await;
    // An upsert row queued before the contact got its id, sent after the
    // email changed: matched on email it would make a second contact.
    c.batch_execute(
        "UPDATE clients SET email = 'late@example.com';
         INSERT INTO integrations_outbox
                (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
         SELECT 'client', id, 'zoho', 'contact.upsert', jsonb_build_object('client_id', id),
                'contact.upsert:' || id
           FROM clients;",
    )
    .await
    .unwrap();
    run(&d).await;
    let s = z.state();
    assert_eq!(s.contacts.len(), 1);
    assert_eq!(text(&s.contacts[0], "Email"), Some("late@example.com"));
    assert_eq!(s.calls_to(ENDPOINT_CONTACTS_UPDATE), 1);
}

/// Reconciles and drains side by side, repeatedly, over stubbed work: Zoho
/// ends with one contact per client and one order per booking, and a last
/// reconcile finds everything in step.
#[tokio::test]
async fn reconciles_running_beside_drains_leave_one_record_each() {
    let db = std::sync::Arc::new(TestDb::new().await);
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    for id in 1..=60 {
        apply(&db, &lead(id, 10), &contact(id, 10)).await;
    }
    run(&drain(&db, &z)).await;
    db.set_flag("enableZohoLive", true).await;

    let small = ReconcileLimits {
        page_rows: 7,
        max_pages: 3,
    };
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (db, d) = (std::sync::Arc::clone(&db), drain(&db, &z));
        tasks.push(tokio::spawn(async move {
            for _ in 0..6 {
                if i % 2 == 0 {
                    let mut c = db.client().await;
                    let deadline = Deadline::after(Duration::from_secs(60), Duration::ZERO);
                    reconcile(&mut c, deadline, small).await.unwrap();
                } else {
                    run(&d).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Finish what the interleaving left: a complete pass, then its drain.
    assert!(reconciled(&db).await.complete);
    run(&drain(&db, &z)).await;
    assert_eq!(pending(&db).await, 0);

    // One record each, and each order written once. (Zoho merges a second
    // send into the same record, so the counts alone would not show one. Two
    // drains may both write a contact: an order row carries its client's
    // contact along when that has no Zoho id yet.)
    let s = z.state();
    assert_eq!((s.contacts.len(), s.sales_orders.len()), (60, 60));
    let twice: Vec<_> = s.sales_orders.iter().filter(|o| o.writes != 1).collect();
    assert!(twice.is_empty(), "orders written more than once: {twice:?}");
    let again = reconciled(&db).await;
    assert_eq!((again.enqueued, again.complete), (0, true), "{again:?}");
}

/// Work queued for a record Zoho already holds as it is (a reconcile that
/// read a row just before a settle stored its sync) costs no call.
#[tokio::test]
async fn work_queued_for_a_record_already_in_step_makes_no_call() {
    let (db, z, d) = synced().await;
    let calls = crm_calls(&z.state());
    db.client()
        .await
        .batch_execute(
            "INSERT INTO integrations_outbox
                    (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
             SELECT 'client', id, 'zoho', 'contact.update', jsonb_build_object('client_id', id),
                    'contact.update:' || id FROM clients;
             INSERT INTO integrations_outbox
                    (entity_type, entity_id, target_system, event_type, payload, dedupe_key)
             SELECT 'booking', id, 'zoho', 'sales_order.update',
                    jsonb_build_object('booking_id', id, 'client_id', client_id),
                    'sales_order.update:' || id FROM bookings;",
        )
        .await
        .unwrap();
    let report = run(&d).await;
    assert_eq!(report.succeeded, 2, "{report:?}");
    assert_eq!(crm_calls(&z.state()), calls, "no call for records in step");
    assert_eq!(pending(&db).await, 0);
}
