//! `shared::ingest` against real Postgres: matching, ordering, exclusion,
//! deletion and the Zoho work each change causes.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::count;
use shared::{
    ingest::{apply_lead, delete_lead, refresh_contact, ClientInput, LeadOutcome},
    kommo::{MappedContact, MappedLead},
};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_795_000_000 + secs, 0).unwrap()
}

fn contact() -> ClientInput {
    ClientInput::from(&mapped_contact())
}

fn mapped_contact() -> MappedContact {
    MappedContact {
        contact_id: 501,
        full_name: "Ada Lovelace".into(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        email: Some("ada@example.com".into()),
        phone: Some("+44 20 7946 0958".into()),
        phone_normalized: Some("442079460958".into()),
        updated_at: Some(t(0)),
    }
}

/// A lead as `shared::kommo::mapping` produces it, with its main contact.
struct Lead {
    lead: MappedLead,
    contact: Option<MappedContact>,
}

fn lead(updated: i64) -> Lead {
    Lead {
        lead: MappedLead {
            lead_id: 9001,
            kommo_updated_at: t(updated),
            created_at: t(0),
            name: Some("Van for the weekend".into()),
            price: Some(1000),
            pipeline_id: 8572511,
            status_id: 67548619,
            status_label: None,
            booking_status: "requested".into(),
            excluded: false,
            is_deleted: false,
            responsible_user_id: Some(777),
            owner_staff_id: None,
            start_at: Some(t(86_400)),
            end_at: Some(t(86_400)),
            closed_at: None,
            vehicle_enum_id: Some(908107),
            vehicle_name: Some("Ford Transit LWB".into()),
            source_enum_id: Some(555001),
            source: Some("Instagram".into()),
            main_contact_id: Some(501),
            warnings: Vec::new(),
        },
        contact: Some(mapped_contact()),
    }
}

fn with_status(mut l: Lead, status_id: i64, booking_status: &str, excluded: bool) -> Lead {
    l.lead.status_id = status_id;
    l.lead.booking_status = booking_status.into();
    l.lead.excluded = excluded;
    l
}

async fn apply(db: &testkit::TestDb, l: &Lead) -> LeadOutcome {
    let mut c = db.pooled().await;
    let tx = c.transaction().await.unwrap();
    let out = apply_lead(&tx, &l.lead, l.contact.as_ref()).await.unwrap();
    tx.commit().await.unwrap();
    out
}

#[tokio::test]
async fn a_new_lead_creates_client_booking_vehicle_snapshot_and_zoho_work() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    let staff: uuid::Uuid = c
        .query_one(
            "INSERT INTO staff_accounts (email, full_name) VALUES ('m@x.io', 'Manager') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "INSERT INTO kommo_user_map (kommo_user_id, staff_account_id) VALUES (777, $1)",
        &[&staff],
    )
    .await
    .unwrap();

    let mut l = lead(10);
    // The mapping resolved the responsible user through kommo_user_map.
    l.lead.owner_staff_id = Some(staff);
    let out = apply(&db, &l).await;
    let LeadOutcome::Booked {
        booking_id,
        created,
        enqueued,
        ..
    } = out
    else {
        panic!("expected a booking, got {out:?}")
    };
    assert!(created);
    assert!(enqueued.contact_upsert && enqueued.sales_order_create);

    let b = c
        .query_one(
            "SELECT channel, created_by, owner_id, source_payload_id, status, start_at, end_at,
                    source, total_amount::text, is_active, kommo_updated_at
               FROM bookings WHERE id = $1",
            &[&booking_id],
        )
        .await
        .unwrap();
    assert_eq!(b.get::<_, String>(0), "Kommo");
    assert_eq!(b.get::<_, String>(1), "system-kommo");
    assert_eq!(b.get::<_, Option<uuid::Uuid>>(2), Some(staff));
    assert_eq!(b.get::<_, String>(3), "kommo:9001");
    assert_eq!(b.get::<_, String>(4), "requested");
    // end_at falls back to start_at.
    assert_eq!(b.get::<_, Option<DateTime<Utc>>>(5), Some(t(86_400)));
    assert_eq!(b.get::<_, Option<DateTime<Utc>>>(6), Some(t(86_400)));
    assert_eq!(b.get::<_, String>(7), "Instagram");
    assert_eq!(b.get::<_, String>(8), "1000.00");
    assert!(b.get::<_, bool>(9));
    assert_eq!(b.get::<_, Option<DateTime<Utc>>>(10), Some(t(10)));

    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM booking_vehicles bv JOIN vehicles v ON v.id = bv.vehicle_id
              WHERE v.kommo_vehicle_id = 908107 AND bv.\"primary\""
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM sales_leads WHERE lead_code = '9001' AND client_id IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM clients WHERE kommo_contact_id = 501 AND phone_normalized = '442079460958'").await,
        1
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM integrations_outbox").await,
        2
    );
}

#[tokio::test]
async fn an_older_snapshot_changes_nothing() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    let mut newer = lead(100);
    newer.lead.name = Some("Newer name".into());
    let newer = with_status(newer, 142, "completed", false);
    apply(&db, &newer).await;

    let mut older = lead(50);
    older.lead.name = Some("Older name".into());
    older.lead.vehicle_enum_id = Some(1);
    older.lead.vehicle_name = Some("Old van".into());
    assert_eq!(apply(&db, &older).await, LeadOutcome::Stale);

    let row = c
        .query_one("SELECT title, status, kommo_status_id FROM bookings", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Newer name");
    assert_eq!(row.get::<_, String>(1), "completed");
    assert_eq!(row.get::<_, i64>(2), 142);
    assert_eq!(count(&c, "SELECT count(*) FROM vehicles").await, 1);
    let name: String = c
        .query_one("SELECT name FROM sales_leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Newer name");
}

#[tokio::test]
async fn excluded_status_keeps_only_the_sales_lead_and_deactivates_the_booking() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;

    // A brand-new lead in an excluded status: no booking, no client, no Zoho work.
    let mut bot = with_status(lead(10), 79790631, "excluded", true);
    bot.lead.lead_id = 9002;
    assert_eq!(
        apply(&db, &bot).await,
        LeadOutcome::Excluded { deactivated: None }
    );
    assert_eq!(count(&c, "SELECT count(*) FROM bookings").await, 0);
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM sales_leads WHERE lead_code = '9002'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM integrations_outbox").await,
        0
    );

    // A booked lead that moves to "lost" loses its booking (deactivated, not deleted).
    apply(&db, &lead(10)).await;
    let lost = with_status(lead(20), 143, "cancelled", true);
    let out = apply(&db, &lost).await;
    assert!(matches!(
        out,
        LeadOutcome::Excluded {
            deactivated: Some(_)
        }
    ));
    let row = c
        .query_one(
            "SELECT is_active, status FROM bookings WHERE kommo_lead_id = 9001",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "cancelled");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM calendar_events_expanded WHERE origin = 'kommo'"
        )
        .await,
        0
    );

    // Back to an active stage: the same booking comes back.
    apply(&db, &lead(30)).await;
    assert_eq!(
        count(&c, "SELECT count(*) FROM bookings WHERE is_active").await,
        1
    );
    assert_eq!(count(&c, "SELECT count(*) FROM bookings").await, 1);
}

#[tokio::test]
async fn delete_deactivates_the_booking_and_archives_the_lead() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    apply(&db, &lead(10)).await;
    let mut cl = db.pooled().await;
    let tx = cl.transaction().await.unwrap();
    assert_eq!(delete_lead(&tx, 9001).await.unwrap(), (1, 1));
    tx.commit().await.unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM bookings WHERE is_active").await,
        0
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM sales_leads WHERE archived_at IS NOT NULL"
        )
        .await,
        1
    );

    // A restore re-applies the lead and brings both back.
    apply(&db, &lead(40)).await;
    assert_eq!(
        count(&c, "SELECT count(*) FROM bookings WHERE is_active").await,
        1
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM sales_leads WHERE archived_at IS NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn clients_match_by_contact_id_then_email_then_phone() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    let by_email: uuid::Uuid = c
        .query_one(
            "INSERT INTO clients (full_name, email) VALUES ('Ada', 'ADA@example.COM') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = apply(&db, &lead(10)).await;
    let LeadOutcome::Booked { client_id, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(client_id, Some(by_email));
    let kid: Option<i64> = c
        .query_one(
            "SELECT kommo_contact_id FROM clients WHERE id = $1",
            &[&by_email],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kid, Some(501));

    // Another lead, another Kommo contact with only a phone that matches a
    // client created by hand: matched by the normalised phone.
    let by_phone: uuid::Uuid = c
        .query_one(
            "INSERT INTO clients (full_name, phone, phone_normalized) VALUES ('Bob', '79001234567', '79001234567') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut other = lead(10);
    other.lead.lead_id = 9010;
    other.contact = Some(MappedContact {
        contact_id: 502,
        full_name: "Bob Builder".into(),
        first_name: None,
        last_name: None,
        email: None,
        phone: Some("+7 (900) 123-45-67".into()),
        phone_normalized: Some("79001234567".into()),
        updated_at: Some(t(5)),
    });
    let LeadOutcome::Booked { client_id, .. } = apply(&db, &other).await else {
        panic!()
    };
    assert_eq!(client_id, Some(by_phone));
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 2);
}

#[tokio::test]
async fn contact_update_refreshes_an_existing_client_unless_older() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    apply(&db, &lead(10)).await;

    let mut cl = db.pooled().await;
    let mut updated = contact();
    updated.full_name = "Ada King".into();
    updated.email = Some("ada.king@example.com".into());
    updated.kommo_updated_at = Some(t(60));
    let tx = cl.transaction().await.unwrap();
    let (out, _) = refresh_contact(&tx, &updated).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert!(out.applied);
    let row = c
        .query_one("SELECT full_name, email FROM clients", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Ada King");
    assert_eq!(row.get::<_, String>(1), "ada.king@example.com");

    let mut stale = contact();
    stale.full_name = "Ada Byron".into();
    stale.kommo_updated_at = Some(t(30));
    let tx = cl.transaction().await.unwrap();
    let (out, _) = refresh_contact(&tx, &stale).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert!(!out.applied);
    let name: String = c
        .query_one("SELECT full_name FROM clients", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Ada King");

    // A contact we have no client for is not imported on its own.
    let stranger = ClientInput {
        kommo_contact_id: Some(999),
        full_name: "Stranger".into(),
        email: Some("s@example.com".into()),
        kommo_updated_at: Some(t(1)),
        ..ClientInput::default()
    };
    let tx = cl.transaction().await.unwrap();
    assert!(refresh_contact(&tx, &stranger).await.unwrap().is_none());
    tx.commit().await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 1);
}

#[tokio::test]
async fn vehicle_change_moves_the_primary_link() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    apply(&db, &lead(10)).await;
    let mut moved = lead(20);
    moved.lead.vehicle_enum_id = Some(908108);
    moved.lead.vehicle_name = Some("Mercedes Sprinter".into());
    apply(&db, &moved).await;
    assert_eq!(count(&c, "SELECT count(*) FROM vehicles").await, 2);
    let name: String = c
        .query_one(
            "SELECT v.name FROM booking_vehicles bv JOIN vehicles v ON v.id = bv.vehicle_id WHERE bv.\"primary\"",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Mercedes Sprinter");
    assert_eq!(count(&c, "SELECT count(*) FROM booking_vehicles").await, 1);
    let vid_matches: bool = c
        .query_one(
            "SELECT b.vehicle_id = v.id FROM bookings b, vehicles v WHERE v.kommo_vehicle_id = 908108",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(vid_matches);
}

#[tokio::test]
async fn two_kommo_contacts_sharing_an_email_stay_two_clients() {
    let db = testkit::TestDb::new().await;
    let c = db.client().await;
    apply(&db, &lead(10)).await;
    let mut sibling = lead(10);
    sibling.lead.lead_id = 9020;
    sibling.contact = Some(MappedContact {
        contact_id: 777_001,
        full_name: "Ada's brother".into(),
        first_name: None,
        last_name: None,
        email: Some("ADA@example.com".into()),
        phone: None,
        phone_normalized: None,
        updated_at: Some(t(5)),
    });
    apply(&db, &sibling).await;
    assert_eq!(count(&c, "SELECT count(*) FROM clients").await, 2);
    assert_eq!(
        count(&c, "SELECT count(DISTINCT client_id) FROM bookings").await,
        2
    );
}
