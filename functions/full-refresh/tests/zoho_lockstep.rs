//! A full refresh and Zoho (issue 15): the swap queues no duplicate work,
//! and after the refresh and one reconcile, Zoho holds exactly one contact
//! per client and one order per booking.

// The end-to-end test future is deep enough to need it.
#![recursion_limit = "256"]

mod common;

use std::{sync::Arc, time::Duration};

use common::YEAR;
use sandbox::zoho::{ZohoOptions, ZohoSandbox};
use shared::{
    outbox::{reconcile, Drain, ReconcileLimits},
    platform::deadline::Deadline,
    refresh::{RefreshSettings, RunStatus},
};
use testkit::{
    refresh::{run_to_completion, MemoryQueue},
    TestDb,
};

/// Sandbox contacts may share an email; the client id keeps them apart.
fn drain(db: &TestDb, z: &ZohoSandbox) -> Drain {
    let mut zoho = testkit::outbox::zoho_settings("ERP_Client_Id");
    zoho.contact_key_field = Some("ERP_Client_Id".into());
    testkit::outbox::drain(db, z.secret_json(), zoho)
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn after_a_full_refresh_and_one_reconcile_zoho_holds_each_client_and_booking_once() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    db.set_flag("enableZohoLive", true).await;
    let kommo = common::sandbox(300, 120).await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await.unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let settings = RefreshSettings {
        page_limit: 50,
        ..RefreshSettings::default()
    };
    let w = common::worker(&db, &kommo, queue.clone(), settings);
    let run = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);

    // The swap's own reconcile queued one row per entity, and no more.
    let live = "SELECT count(*) FROM integrations_outbox WHERE status = 'pending'";
    let queued = count(&db, live).await;
    let dupes = count(
        &db,
        "SELECT count(*) FROM (SELECT entity_id FROM integrations_outbox
                                GROUP BY entity_id HAVING count(*) > 1) d",
    )
    .await;
    assert!(queued > 0);
    assert_eq!(dupes, 0);

    // One reconcile, as the runbook says, then the drain.
    let mut c = db.client().await;
    let deadline = Deadline::after(Duration::from_secs(60), Duration::ZERO);
    let r = reconcile(&mut c, deadline, ReconcileLimits::default())
        .await
        .unwrap();
    assert!(r.complete, "{r:?}");
    assert_eq!(r.enqueued, 0, "the swap's reconcile left nothing behind");
    let d = drain(&db, &z);
    let report = d
        .run(d.deadline_in(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!((report.failed, report.retried), (0, 0), "{report:?}");
    assert_eq!(count(&db, live).await, 0);

    // Every active booking with a client is synced; a booking without a
    // client waits for one (Zoho's order needs a contact).
    let not_synced = count(
        &db,
        "SELECT count(*) FROM bookings
          WHERE is_active AND client_id IS NOT NULL AND zoho_sync_status <> 'synced'",
    )
    .await;
    assert_eq!(not_synced, 0);
    let s = z.state();
    let clients = count(&db, "SELECT count(*) FROM clients").await;
    let orders = count(
        &db,
        "SELECT count(*) FROM bookings WHERE zoho_sales_order_id IS NOT NULL",
    )
    .await;
    assert_eq!(s.contacts.len() as i64, clients, "one contact per client");
    assert_eq!(s.sales_orders.len() as i64, orders, "one order per booking");
    // Zoho merges a second send into the same record, so the counts alone
    // would not show one: each record was written exactly once.
    assert!(
        s.contacts.iter().all(|r| r.writes == 1),
        "a contact sent twice"
    );
    assert!(
        s.sales_orders.iter().all(|r| r.writes == 1),
        "an order sent twice"
    );
    let active = "SELECT count(*) FROM bookings WHERE is_active AND client_id IS NOT NULL";
    assert_eq!(orders, count(&db, active).await);

    // A second identical refresh finds everything in step: no work at all.
    let again = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(again.status, RunStatus::Succeeded, "{:?}", again.error);
    assert_eq!(count(&db, live).await, 0);

    // A lead deleted in Kommo (its delete webhook lost): the next refresh
    // soft-deletes its booking, and the drain cancels the same order.
    let c = db.client().await;
    let (booking, order_id, lead_id): (uuid::Uuid, String, i64) = {
        let r = c
            .query_one(
                "SELECT id, zoho_sales_order_id, kommo_lead_id FROM bookings
                  WHERE is_active AND zoho_sales_order_id IS NOT NULL ORDER BY kommo_lead_id LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(kommo.delete_lead(lead_id).is_some());
    let third = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(third.status, RunStatus::Succeeded, "{:?}", third.error);
    let active: bool = c
        .query_one("SELECT is_active FROM bookings WHERE id = $1", &[&booking])
        .await
        .unwrap()
        .get(0);
    assert!(!active, "the refresh soft-deleted the booking");
    d.run(d.deadline_in(Duration::from_secs(60))).await.unwrap();
    let s = z.state();
    assert_eq!(s.sales_orders.len() as i64, orders, "no new order");
    let cancelled = s
        .sales_orders
        .iter()
        .find(|o| o.id == order_id)
        .expect("the booking's order");
    assert_eq!(cancelled.fields["Status"], "Cancelled");
    assert_eq!(cancelled.writes, 2);
    assert_eq!(count(&db, live).await, 0);
}
