//! The swap and staging against a real Postgres, with hand-built staging
//! rows: what production looks like afterwards, the guard rails, and
//! all-or-nothing behaviour.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use serde_json::json;
use shared::kommo::MappedContact;
use shared::platform::deadline::Deadline;
use shared::refresh::JobOutcome;
use shared::refresh::{
    runs::{self, RunStatus, StartOutcome},
    staging::{self, JsonText, StagedContact, StagedLead, StagedPage, StagedVehicle},
    swap::{swap, SwapOutcome},
    RefreshSettings,
};
use std::sync::Arc;
use testkit::{
    refresh::{stage_page_with, MemoryQueue, StagingMethod},
    TestDb,
};
use uuid::Uuid;

fn ts(y: i32, m: u32, d: u32) -> Option<chrono::DateTime<Utc>> {
    Utc.with_ymd_and_hms(y, m, d, 10, 0, 0).single()
}

fn lead(
    id: i64,
    status: i64,
    excluded: bool,
    contact: Option<i64>,
    vehicle: Option<i64>,
) -> StagedLead {
    StagedLead {
        lead_id: id,
        payload: JsonText::of(&json!({"id": id})),
        contact_id: contact,
        vehicle_enum_id: vehicle,
        source_enum_id: Some(555001),
        created_at: ts(2025, 3, 1),
        updated_at: ts(2025, 3, 2),
        name: Some(format!("Booking {id}")),
        status_id: status,
        pipeline_id: Some(8572511),
        price: Some(1200),
        responsible_user_id: Some(504141),
        owner_id: None,
        booking_status: if excluded {
            "excluded".into()
        } else {
            "confirmed".into()
        },
        excluded,
        start_at: ts(2025, 4, 1),
        end_at: ts(2025, 4, 5),
        lead_source: Some("Instagram".into()),
        closed_at: None,
    }
}

fn contact(id: i64) -> StagedContact {
    StagedContact {
        contact: MappedContact {
            contact_id: id,
            full_name: format!("Client {id}"),
            first_name: Some("Client".into()),
            last_name: Some(id.to_string()),
            email: Some(format!("c{id}@example.test")),
            phone: Some("+7 (900) 123-45-67".into()),
            phone_normalized: Some("79001234567".into()),
            updated_at: ts(2025, 2, 1),
        },
        payload: JsonText::of(&json!({"id": id})),
    }
}

fn vehicle(lead_id: i64, enum_id: i64) -> StagedVehicle {
    StagedVehicle {
        lead_id,
        vehicle_enum_id: enum_id,
        vehicle_name: Some(format!("Vehicle {enum_id}")),
        is_primary: true,
    }
}

/// Three bookable leads (one with a vehicle), one excluded, two contacts.
fn page(n_bookable: i64) -> StagedPage {
    let mut leads: Vec<StagedLead> = (0..n_bookable)
        .map(|i| {
            lead(
                1000 + i,
                67548619,
                false,
                Some(50 + (i % 2)),
                (i == 0).then_some(3001001),
            )
        })
        .collect();
    leads.push(lead(2000, 79790631, true, Some(50), None));
    let vehicles = vec![vehicle(1000, 3001001)];
    StagedPage {
        leads,
        contacts: vec![contact(50), contact(51)],
        vehicles,
    }
}

async fn running_run(db: &TestDb, year: i32) -> Uuid {
    let mut c = db.client().await;
    let run = match runs::create_run(&mut c, "tester", year, std::time::Duration::from_secs(600))
        .await
        .unwrap()
    {
        StartOutcome::Started(r) => r,
        StartOutcome::AlreadyActive(r) => panic!("unexpected active run {}", r.id),
    };
    c.execute(
        "UPDATE kommo_import_runs SET status = 'running', phase = 'fetching' WHERE id = $1",
        &[&run.id],
    )
    .await
    .unwrap();
    run.id
}

async fn stage(db: &TestDb, run_id: Uuid, page: &StagedPage, method: StagingMethod) {
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    stage_page_with(&tx, run_id, page, method).await.unwrap();
    tx.commit().await.unwrap();
}

async fn run_swap(db: &TestDb, run_id: Uuid) -> SwapOutcome {
    run_swap_with(db, run_id, &RefreshSettings::default())
        .await
        .unwrap()
}

/// A swap as the worker runs it: on a session holding the worker's run
/// lock (unless another session does).
async fn run_swap_with(
    db: &TestDb,
    run_id: Uuid,
    settings: &RefreshSettings,
) -> Result<SwapOutcome, shared::refresh::RefreshError> {
    let mut c = db.client().await;
    let held = take_worker_lock(&c).await;
    let out = swap(&mut c, run_id, settings).await;
    if held {
        release_worker_lock(&c).await;
    }
    out
}

async fn take_worker_lock(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT pg_try_advisory_lock($1)",
        &[&RefreshSettings::default().lock_key],
    )
    .await
    .unwrap()
    .get(0)
}

async fn release_worker_lock(c: &tokio_postgres::Client) {
    c.execute(
        "SELECT pg_advisory_unlock($1)",
        &[&RefreshSettings::default().lock_key],
    )
    .await
    .unwrap();
}

async fn status_of(db: &TestDb, run_id: Uuid) -> (String, Option<String>, i32) {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT status, error, leads_count FROM kommo_import_runs WHERE id = $1",
            &[&run_id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Production before the refresh: a Kommo booking and its sales lead of
/// the run's year that Kommo no longer lists (999), one of another year
/// (998), a manual booking, and some outbox work.
async fn seed_production(db: &TestDb) {
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO bookings (source_payload_id, channel, created_by, kommo_lead_id, status, kommo_updated_at,
                               kommo_created_at)
              VALUES ('kommo:999', 'Kommo', 'system-kommo', 999, 'confirmed', '2025-02-01Z', '2025-02-01Z'),
                     ('kommo:998', 'Kommo', 'system-kommo', 998, 'confirmed', '2024-05-01Z', '2024-05-01Z');
         INSERT INTO sales_leads (lead_code, kommo_lead_id, source, kommo_updated_at, kommo_created_at)
              VALUES ('999', 999, 'Kommo', '2025-02-01Z', '2025-02-01Z'),
                     ('998', 998, 'Kommo', '2024-05-01Z', '2024-05-01Z');
         INSERT INTO bookings (external_code, channel, created_by, manual_created_by, status)
              VALUES ('MAN-1', 'manual', 'staff', 'staff-1', 'confirmed');
         INSERT INTO integrations_outbox (entity_type, entity_id, target_system, event_type, dedupe_key)
              VALUES ('booking', gen_random_uuid(), 'zoho', 'sales_order.create', 'k1');",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn swap_replaces_kommo_data_per_the_spec_and_adds_no_outbox_rows() {
    let db = TestDb::new().await;
    seed_production(&db).await;
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    let outbox_before = db.count("integrations_outbox").await;

    let outcome = run_swap(&db, run_id).await;
    let SwapOutcome::Succeeded(counts) = outcome else {
        panic!("swap did not succeed: {outcome:?}");
    };
    assert_eq!(
        (
            counts.leads,
            counts.contacts,
            counts.vehicles,
            counts.bookings,
            counts.excluded
        ),
        (4, 2, 1, 3, 1)
    );
    let (status, error, leads) = status_of(&db, run_id).await;
    assert_eq!((status.as_str(), error, leads), ("succeeded", None, 4));

    let c = db.client().await;
    let active: Vec<String> = c
        .query(
            "SELECT source_payload_id FROM bookings WHERE channel = 'Kommo' AND is_active ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // 998 was created in 2024: outside the run's scope, so left alone.
    assert_eq!(
        active,
        vec!["kommo:1000", "kommo:1001", "kommo:1002", "kommo:998"]
    );
    // The excluded lead is a sales lead only.
    assert_eq!(
        c.query_one(
            "SELECT count(*) FROM bookings WHERE kommo_lead_id = 2000",
            &[]
        )
        .await
        .unwrap()
        .get::<_, i64>(0),
        0
    );
    let excluded = c
        .query_one(
            "SELECT stage_id, archived_at IS NULL FROM sales_leads WHERE lead_code = '2000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(excluded.get::<_, Option<i64>>(0), Some(79790631));
    assert!(excluded.get::<_, bool>(1));
    // The year's Kommo data missing from the snapshot is soft-deleted and
    // archived, not removed; the other year's stays as it was.
    let old = c
        .query_one(
            "SELECT is_active FROM bookings WHERE source_payload_id = 'kommo:999'",
            &[],
        )
        .await
        .unwrap();
    assert!(!old.get::<_, bool>(0));
    let old_lead = c
        .query_one(
            "SELECT archived_at IS NOT NULL FROM sales_leads WHERE lead_code = '999'",
            &[],
        )
        .await
        .unwrap();
    assert!(old_lead.get::<_, bool>(0));
    let other_year = c
        .query_one(
            "SELECT archived_at IS NULL FROM sales_leads WHERE lead_code = '998'",
            &[],
        )
        .await
        .unwrap();
    assert!(other_year.get::<_, bool>(0));
    // Manual bookings are not Kommo's to touch.
    let manual = c
        .query_one(
            "SELECT is_active FROM bookings WHERE external_code = 'MAN-1'",
            &[],
        )
        .await
        .unwrap();
    assert!(manual.get::<_, bool>(0));
    // Booking fields, client link, vehicle and its primary link.
    let b = c
        .query_one(
            "SELECT b.created_by, b.status, b.kommo_status_id, b.source, b.start_at, b.end_at,
                    cl.kommo_contact_id, v.kommo_vehicle_id, v.name, bv.\"primary\", b.total_amount::text
               FROM bookings b
               JOIN clients cl ON cl.id = b.client_id
               JOIN vehicles v ON v.id = b.vehicle_id
               JOIN booking_vehicles bv ON bv.booking_id = b.id AND bv.vehicle_id = v.id
              WHERE b.source_payload_id = 'kommo:1000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(b.get::<_, String>(0), "system-kommo");
    assert_eq!(b.get::<_, String>(1), "confirmed");
    assert_eq!(b.get::<_, Option<i64>>(2), Some(67548619));
    assert_eq!(b.get::<_, Option<String>>(3).as_deref(), Some("Instagram"));
    assert_eq!(b.get::<_, Option<chrono::DateTime<Utc>>>(4), ts(2025, 4, 1));
    assert_eq!(b.get::<_, Option<chrono::DateTime<Utc>>>(5), ts(2025, 4, 5));
    assert_eq!(b.get::<_, Option<i64>>(6), Some(50));
    assert_eq!(b.get::<_, Option<i64>>(7), Some(3001001));
    assert_eq!(b.get::<_, String>(8), "Vehicle 3001001");
    assert!(b.get::<_, bool>(9));
    assert_eq!(b.get::<_, Option<String>>(10).as_deref(), Some("1200.00"));
    assert_eq!(db.count("clients").await, 2);
    assert_eq!(db.count("integrations_outbox").await, outbox_before);

    // A second run over the same data gives the same result.
    let first = snapshot(&db).await;
    let run2 = running_run(&db, 2025).await;
    stage(&db, run2, &page(3), StagingMethod::RowInserts).await;
    assert!(matches!(
        run_swap(&db, run2).await,
        SwapOutcome::Succeeded(_)
    ));
    assert_eq!(snapshot(&db).await, first);
    assert_eq!(db.count("integrations_outbox").await, outbox_before);
}

#[tokio::test]
async fn outbox_writes_by_triggers_are_suppressed_during_the_swap_only() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // A trigger that enqueues Zoho work for every new booking, as a later
    // change might add: the swap must still add no outbox rows.
    c.batch_execute(
        "CREATE FUNCTION enqueue_booking() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO integrations_outbox (entity_type, entity_id, target_system, event_type, dedupe_key)
           VALUES ('booking', NEW.id, 'zoho', 'sales_order.create', 'so:' || NEW.id);
           RETURN NEW;
         END $$;
         CREATE TRIGGER enqueue_booking AFTER INSERT ON bookings
           FOR EACH ROW EXECUTE FUNCTION enqueue_booking();",
    )
    .await
    .unwrap();
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    let o = run_swap(&db, run_id).await;
    assert!(matches!(o, SwapOutcome::Succeeded(_)), "{o:?}");
    assert_eq!(db.count("bookings").await, 3);
    assert_eq!(db.count("integrations_outbox").await, 0);
    // Outside the swap the same trigger works as usual.
    c.execute(
        "INSERT INTO bookings (external_code, channel, created_by, manual_created_by) VALUES ('M', 'manual', 's', 's')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(db.count("integrations_outbox").await, 1);
}

#[tokio::test]
async fn a_drop_of_more_than_30_percent_needs_review_and_leaves_production_alone() {
    let db = TestDb::new().await;
    let run1 = running_run(&db, 2025).await;
    stage(&db, run1, &page(9), StagingMethod::BinaryCopy).await; // 10 leads
    assert!(matches!(
        run_swap(&db, run1).await,
        SwapOutcome::Succeeded(_)
    ));
    let before = dump_production(&db).await;

    let run2 = running_run(&db, 2025).await;
    stage(&db, run2, &page(5), StagingMethod::BinaryCopy).await; // 6 leads: a 40% drop
    let outcome = run_swap(&db, run2).await;
    assert_eq!(
        outcome,
        SwapOutcome::NeedsReview {
            leads: 6,
            previous: 10
        }
    );
    let (status, error, _) = status_of(&db, run2).await;
    assert_eq!(status, "needs_review");
    assert!(error.unwrap().contains("drop"));
    assert_eq!(dump_production(&db).await, before);
    // Staging is kept for inspection.
    let c = db.client().await;
    let staged: i64 = c
        .query_one(
            "SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1",
            &[&run2],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 6);

    // A 30% drop exactly is still fine; another year is not compared.
    let run3 = running_run(&db, 2025).await;
    stage(&db, run3, &page(6), StagingMethod::BinaryCopy).await; // 7 leads
    assert!(matches!(
        run_swap(&db, run3).await,
        SwapOutcome::Succeeded(_)
    ));
    let run4 = running_run(&db, 2024).await;
    stage(&db, run4, &page(0), StagingMethod::BinaryCopy).await; // 1 lead
    assert!(matches!(
        run_swap(&db, run4).await,
        SwapOutcome::Succeeded(_)
    ));
}

#[tokio::test]
async fn zero_leads_fail_the_run_without_touching_production() {
    let db = TestDb::new().await;
    seed_production(&db).await;
    let before = dump_production(&db).await;
    let run_id = running_run(&db, 2025).await;
    assert_eq!(run_swap(&db, run_id).await, SwapOutcome::NoLeads);
    let (status, error, _) = status_of(&db, run_id).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("no leads"));
    assert_eq!(dump_production(&db).await, before);
}

#[tokio::test]
async fn an_error_in_the_swap_rolls_everything_back() {
    let db = TestDb::new().await;
    seed_production(&db).await;
    let c = db.client().await;
    // Fails the last write of the swap, after every other step has run.
    c.batch_execute(
        "CREATE FUNCTION refuse_link() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'link refused by test'; END $$;
         CREATE TRIGGER refuse_link BEFORE INSERT ON booking_vehicles
           FOR EACH ROW EXECUTE FUNCTION refuse_link();",
    )
    .await
    .unwrap();
    let before = dump_production(&db).await;
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    let err = run_swap_with(&db, run_id, &RefreshSettings::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("database error"), "{err}");
    assert_eq!(dump_production(&db).await, before);
    let (status, _, _) = status_of(&db, run_id).await;
    assert_eq!(status, "running", "the caller records the failure");
    assert_eq!(RunStatus::parse(&status), Some(RunStatus::Running));
}

/// Clients as (full name, email, phone, Kommo contact id), oldest first.
async fn clients(db: &TestDb) -> Vec<(String, Option<String>, Option<String>, Option<i64>)> {
    let c = db.client().await;
    c.query(
        "SELECT full_name, email, phone_normalized, kommo_contact_id FROM clients
          ORDER BY created_at, kommo_contact_id NULLS FIRST",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn a_manual_client_with_a_kommo_contacts_email_gets_no_twin() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Typed by staff during an outage, before the contact reached the ERP.
    let manual: Uuid = c
        .query_one(
            "INSERT INTO clients (full_name, email, zoho_contact_id)
             VALUES ('Client Fifty', 'C50@Example.TEST', 'Z-50') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(&db, run_id).await,
        SwapOutcome::Succeeded(_)
    ));

    let all = clients(&db).await;
    assert_eq!(all.len(), 2, "contact 50 is the manual client: {all:?}");
    let matched = c
        .query_one(
            "SELECT kommo_contact_id, full_name, email, phone_normalized, zoho_contact_id
               FROM clients WHERE id = $1",
            &[&manual],
        )
        .await
        .unwrap();
    assert_eq!(matched.get::<_, Option<i64>>(0), Some(50));
    assert_eq!(matched.get::<_, String>(1), "Client 50");
    // Kommo's values win, and the Zoho link staff's booking made stays.
    assert_eq!(
        matched.get::<_, Option<String>>(2).as_deref(),
        Some("c50@example.test")
    );
    assert_eq!(
        matched.get::<_, Option<String>>(3).as_deref(),
        Some("79001234567")
    );
    assert_eq!(matched.get::<_, Option<String>>(4).as_deref(), Some("Z-50"));
    // Contact 50's leads (1000, 1002 and the excluded 2000) point at it.
    let linked: Vec<String> = c
        .query(
            "SELECT lead_code FROM sales_leads WHERE client_id = $1 ORDER BY 1",
            &[&manual],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(linked, vec!["1000", "1002", "2000"]);
    let booked = c
        .query_one(
            "SELECT count(*) FROM bookings WHERE client_id = $1 AND is_active",
            &[&manual],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(booked, 2);
}

#[tokio::test]
async fn a_manual_client_found_by_phone_goes_to_one_contact_and_a_shared_phone_stays_two_clients() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO clients (full_name, phone, phone_normalized)
         VALUES ('Walk-in', '8 900 123 45 67', '79001234567')",
        &[],
    )
    .await
    .unwrap();
    let run_id = running_run(&db, 2025).await;
    // Contacts 50 and 51 share a phone, as a family does.
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(&db, run_id).await,
        SwapOutcome::Succeeded(_)
    ));

    let all = clients(&db).await;
    let ids: Vec<Option<i64>> = all.iter().map(|c| c.3).collect();
    // As webhooks applied one by one would: the first contact takes the
    // walk-in, the second is then tied to no client and gets its own.
    assert_eq!(ids, vec![Some(50), Some(51)], "{all:?}");
    assert_eq!(all[0].0, "Client 50");
}

#[tokio::test]
async fn a_second_refresh_changes_no_client() {
    let db = TestDb::new().await;
    db.client()
        .await
        .execute(
            "INSERT INTO clients (full_name, email) VALUES ('Client Fifty', 'c50@example.test')",
            &[],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let run_id = running_run(&db, 2025).await;
        stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
        assert!(matches!(
            run_swap(&db, run_id).await,
            SwapOutcome::Succeeded(_)
        ));
    }
    let ids: Vec<Option<i64>> = clients(&db).await.iter().map(|c| c.3).collect();
    assert_eq!(ids, vec![Some(50), Some(51)]);
}

#[tokio::test]
async fn newer_webhook_changes_are_not_rolled_back_by_the_snapshot() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The webhook applied a Kommo change made after the staged snapshot.
    c.execute(
        "INSERT INTO bookings (source_payload_id, channel, created_by, kommo_lead_id, status, kommo_updated_at, title)
         VALUES ('kommo:1000', 'Kommo', 'system-kommo', 1000, 'completed', '2025-03-10Z', 'Newer')",
        &[],
    )
    .await
    .unwrap();
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(2), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(&db, run_id).await,
        SwapOutcome::Succeeded(_)
    ));
    let r = c
        .query_one(
            "SELECT status, title, is_active FROM bookings WHERE source_payload_id = 'kommo:1000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "completed");
    assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("Newer"));
    assert!(r.get::<_, bool>(2));
}

#[tokio::test]
async fn copy_and_row_inserts_stage_identical_rows_and_cleanup_keeps_the_last_runs() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for method in [StagingMethod::BinaryCopy, StagingMethod::RowInserts] {
        let run_id = running_run(&db, 2025).await;
        let mut p = page(3);
        p.leads[1].name = None;
        p.leads[1].start_at = None;
        p.contacts[1].contact.email = None;
        stage(&db, run_id, &p, method).await;
        assert!(matches!(
            run_swap(&db, run_id).await,
            SwapOutcome::Succeeded(_)
        ));
        ids.push(run_id);
    }
    let c = db.client().await;
    let dump = |run: Uuid| {
        let c = &c;
        async move {
            let mut out = Vec::new();
            for t in [
                "stg_kommo_leads",
                "stg_kommo_contacts",
                "stg_kommo_booking_vehicles",
            ] {
                let rows = c
                    .query(
                        &format!(
                            "SELECT coalesce(string_agg((to_jsonb(t) - 'run_id')::text, E'\\n' ORDER BY (to_jsonb(t) - 'run_id')::text), '')
                               FROM {t} t WHERE run_id = $1"
                        ),
                        &[&run],
                    )
                    .await
                    .unwrap();
                out.push(rows[0].get::<_, String>(0));
            }
            out
        }
    };
    let a = dump(ids[0]).await;
    assert!(!a[0].is_empty());
    assert_eq!(a, dump(ids[1]).await);

    let removed = staging::cleanup(&c, 1).await.unwrap();
    assert!(removed > 0);
    let left: Vec<Uuid> = c
        .query("SELECT DISTINCT run_id FROM stg_kommo_leads", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left,
        vec![ids[1]],
        "only the newest successful run keeps its staging"
    );
}

/// A run held for review: 10 leads swapped, then a run of `held + 1`.
async fn held_run(db: &TestDb, held: i64) -> Uuid {
    let run1 = running_run(db, 2025).await;
    stage(db, run1, &page(9), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(db, run1).await,
        SwapOutcome::Succeeded(_)
    ));
    let run2 = running_run(db, 2025).await;
    stage(db, run2, &page(held), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(db, run2).await,
        SwapOutcome::NeedsReview { .. }
    ));
    run2
}

async fn decide(
    db: &TestDb,
    queue: &Arc<MemoryQueue>,
    run_id: Uuid,
    verdict: &str,
    role: &str,
) -> (u16, serde_json::Value) {
    let app = http_app(db, queue.clone());
    let path = format!("/integrations/kommo/full-refresh/{run_id}/{verdict}");
    let resp = app
        .handle(request("POST", &path, "", Some(&token("dana", role)), None))
        .await;
    let body = body_json(&resp);
    (resp.status_code as u16, body)
}

/// Works off the queued jobs as the worker Lambda would.
async fn work_off(db: &TestDb, queue: &Arc<MemoryQueue>) -> Vec<JobOutcome> {
    work_off_with(db, queue, RefreshSettings::default())
        .await
        .into_iter()
        .map(|r| r.expect("the job succeeds"))
        .collect()
}

async fn work_off_with(
    db: &TestDb,
    queue: &Arc<MemoryQueue>,
    settings: RefreshSettings,
) -> Vec<Result<JobOutcome, shared::refresh::RefreshError>> {
    let kommo = sandbox(1, 1).await;
    let w = worker(db, &kommo, queue.clone(), settings);
    let mut outcomes = Vec::new();
    while let Some(job) = queue.pop() {
        outcomes.push(w.process(&job, Deadline::none()).await);
    }
    outcomes
}

async fn audit_actor(db: &TestDb, action: &str, run_id: Uuid) -> Option<String> {
    db.client()
        .await
        .query_opt(
            "SELECT actor FROM audit_log WHERE action = $1 AND subject = $2",
            &[&action, &run_id.to_string()],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn a_refresh_admin_approves_a_held_run_into_production_and_it_is_audited() {
    let db = TestDb::new().await;
    let queue = Arc::new(MemoryQueue::default());
    let run = held_run(&db, 5).await; // 6 leads against 10
    let before = dump_production(&db).await;

    let (status, body) = decide(&db, &queue, run, "approve", "ops").await;
    assert_eq!(status, 403, "starting a run is not deciding one: {body}");
    assert!(queue.is_empty());

    // The API records the approval and queues the swap for the worker.
    let (status, body) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "needs_review");
    assert_eq!(body["approval"]["by"], "dana");
    assert_eq!(dump_production(&db).await, before, "nothing swapped yet");
    // A second click is harmless: same approver, one more job.
    let (status, body) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!((status, &body["approval"]["by"]), (202, &json!("dana")));
    assert_eq!(queue.len(), 2);

    assert_eq!(
        work_off(&db, &queue).await,
        vec![
            JobOutcome::Finished(RunStatus::Succeeded),
            JobOutcome::Skipped
        ]
    );
    assert_ne!(
        dump_production(&db).await,
        before,
        "the staging is in production"
    );
    assert_eq!(status_of(&db, run).await.0, "succeeded");
    assert_eq!(
        audit_actor(&db, "refresh.approve", run).await.as_deref(),
        Some("dana")
    );

    let (status, _) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 409, "a decided run is no longer held");
}

/// An approved swap that fails (here: it cannot get the snapshot lock within
/// its statement timeout) is rolled back whole; the run stays held with its
/// approval and says so, and approving again swaps it.
#[tokio::test]
async fn an_approved_swap_that_fails_leaves_the_run_held_and_can_be_approved_again() {
    let db = TestDb::new().await;
    let queue = Arc::new(MemoryQueue::default());
    let run = held_run(&db, 5).await;
    let before = dump_production(&db).await;
    let (status, _) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 202);

    let mut other = db.client().await;
    let blocker = other.transaction().await.unwrap();
    shared::erp::snapshot::exclusive_lock(&blocker)
        .await
        .unwrap();
    let short = RefreshSettings {
        swap_timeout: std::time::Duration::from_millis(300),
        ..RefreshSettings::default()
    };
    let outcomes = work_off_with(&db, &queue, short).await;
    assert!(
        matches!(outcomes.as_slice(), [Err(_)]),
        "the job fails, so SQS retries it: {outcomes:?}"
    );
    blocker.rollback().await.unwrap();
    assert_eq!(dump_production(&db).await, before, "nothing half-written");
    let held = db
        .client()
        .await
        .query_one(
            "SELECT status, phase FROM kommo_import_runs WHERE id = $1",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(
        (held.get::<_, String>(0), held.get::<_, String>(1)),
        ("needs_review".into(), "approved_swap_failed".into())
    );
    let (status, body) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "needs_review");
    assert_eq!(body["approval"]["by"], "dana");

    assert_eq!(
        work_off(&db, &queue).await,
        vec![JobOutcome::Finished(RunStatus::Succeeded)]
    );
    assert_ne!(dump_production(&db).await, before);
}

#[tokio::test]
async fn a_discarded_run_leaves_production_alone_and_is_audited() {
    let db = TestDb::new().await;
    let queue = Arc::new(MemoryQueue::default());
    let run = held_run(&db, 2).await; // 3 leads against 10
    let before = dump_production(&db).await;
    let (status, body) = decide(&db, &queue, run, "discard", "refresh_admin").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(dump_production(&db).await, before);
    assert_eq!(
        audit_actor(&db, "refresh.discard", run).await.as_deref(),
        Some("dana")
    );
    let (status, _) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 409, "a discarded run cannot be approved");
    assert!(queue.is_empty());
}

#[tokio::test]
async fn a_discard_before_the_worker_swaps_an_approved_run_wins() {
    let db = TestDb::new().await;
    let queue = Arc::new(MemoryQueue::default());
    let run = held_run(&db, 2).await;
    let before = dump_production(&db).await;
    let (status, _) = decide(&db, &queue, run, "approve", "refresh_admin").await;
    assert_eq!(status, 202);
    let (status, body) = decide(&db, &queue, run, "discard", "refresh_admin").await;
    assert_eq!((status, &body["status"]), (200, &json!("failed")));

    assert_eq!(work_off(&db, &queue).await, vec![JobOutcome::Skipped]);
    assert_eq!(dump_production(&db).await, before);
    assert_eq!(status_of(&db, run).await.0, "failed");
}

#[tokio::test]
async fn a_run_closed_as_stale_or_locked_by_another_worker_commits_nothing() {
    let db = TestDb::new().await;
    seed_production(&db).await;
    let before = dump_production(&db).await;
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;

    // Another worker holds the run lock (this one lost it).
    let key = RefreshSettings::default().lock_key;
    let other = db.client().await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    assert_eq!(run_swap(&db, run_id).await, SwapOutcome::NotOwned);
    assert_eq!(dump_production(&db).await, before);
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();

    // A start closed the run as abandoned while its worker was still alive.
    other
        .execute(
            "UPDATE kommo_import_runs SET status = 'failed', phase = 'failed' WHERE id = $1",
            &[&run_id],
        )
        .await
        .unwrap();
    assert_eq!(run_swap(&db, run_id).await, SwapOutcome::NotOwned);
    assert_eq!(status_of(&db, run_id).await.0, "failed");
    assert_eq!(dump_production(&db).await, before);
}

/// A run a start closed as stale, whose staging would trip the guard, is
/// not turned into a run held for review, which an admin could approve.
#[tokio::test]
async fn a_run_closed_as_stale_is_not_held_for_review() {
    let db = TestDb::new().await;
    let run1 = running_run(&db, 2025).await;
    stage(&db, run1, &page(9), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(&db, run1).await,
        SwapOutcome::Succeeded(_)
    ));
    let run2 = running_run(&db, 2025).await;
    stage(&db, run2, &page(2), StagingMethod::BinaryCopy).await;
    db.client()
        .await
        .execute(
            "UPDATE kommo_import_runs SET status = 'failed', phase = 'failed', error = 'abandoned'
              WHERE id = $1",
            &[&run2],
        )
        .await
        .unwrap();

    assert_eq!(run_swap(&db, run2).await, SwapOutcome::NotOwned);
    let (status, error, _) = status_of(&db, run2).await;
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("failed", Some("abandoned"))
    );
}

#[tokio::test]
async fn each_swap_statement_stops_at_the_swap_timeout() {
    let db = TestDb::new().await;
    seed_production(&db).await;
    let c = db.client().await;
    // Writing bookings takes longer than the account's timeout allows.
    c.batch_execute(
        "CREATE FUNCTION slow_bookings() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
         CREATE TRIGGER slow_bookings BEFORE INSERT ON bookings
           FOR EACH STATEMENT EXECUTE FUNCTION slow_bookings();",
    )
    .await
    .unwrap();
    let before = dump_production(&db).await;
    let run_id = running_run(&db, 2025).await;
    stage(&db, run_id, &page(3), StagingMethod::BinaryCopy).await;
    let settings = RefreshSettings {
        swap_timeout: std::time::Duration::from_millis(200),
        ..RefreshSettings::default()
    };
    let mut conn = db.client().await;
    assert!(take_worker_lock(&conn).await);
    let started = std::time::Instant::now();
    let err = swap(&mut conn, run_id, &settings).await.unwrap_err();
    assert!(format!("{err:?}").contains("statement timeout"), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(dump_production(&db).await, before);
    // The timeout was the swap's own: the connection is back to none.
    let left: String = conn
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, "0");
}

#[tokio::test]
async fn a_swap_waits_for_a_delivery_in_flight_instead_of_deadlocking() {
    let db = TestDb::new().await;
    let run1 = running_run(&db, 2025).await;
    stage(&db, run1, &page(3), StagingMethod::BinaryCopy).await;
    assert!(matches!(
        run_swap(&db, run1).await,
        SwapOutcome::Succeeded(_)
    ));
    let run2 = running_run(&db, 2025).await;
    stage(&db, run2, &page(3), StagingMethod::BinaryCopy).await;

    // A delivery of two leads in flight, as the processor applies it: the
    // snapshot lock shared, then one lead's booking, later the other's.
    let pool = db.pool();
    let mut delivery = pool.get().await.unwrap();
    let tx = delivery.transaction().await.unwrap();
    shared::erp::snapshot::share_lock(&tx).await.unwrap();
    tx.execute(
        "UPDATE bookings SET title = 'from the webhook' WHERE source_payload_id = 'kommo:1002'",
        &[],
    )
    .await
    .unwrap();
    let swapping = tokio::spawn(async move {
        let mut conn = pool.get().await.unwrap();
        let client: &mut tokio_postgres::Client = &mut conn;
        assert!(take_worker_lock(client).await);
        let out = swap(client, run2, &RefreshSettings::default()).await;
        release_worker_lock(client).await;
        out
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!swapping.is_finished(), "the swap waits for the delivery");
    // The swap holds no row lock yet, so the delivery's next one is free
    // (without the shared lock the swap would hold it, waiting for 1002).
    tx.execute(
        "UPDATE bookings SET title = 'from the webhook' WHERE source_payload_id = 'kommo:1000'",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let outcome = swapping.await.unwrap().unwrap();
    assert!(matches!(outcome, SwapOutcome::Succeeded(_)), "{outcome:?}");
}

/// Every staged row of `run_id`, as text without the run id, in key order.
async fn staged_rows(db: &TestDb, run_id: Uuid) -> Vec<String> {
    let c = db.client().await;
    let mut out = Vec::new();
    for (table, key) in [
        ("stg_kommo_leads", "lead_id"),
        ("stg_kommo_contacts", "contact_id"),
        ("stg_kommo_booking_vehicles", "lead_id, vehicle_enum_id"),
    ] {
        let rows = c
            .query(
                &format!(
                    "SELECT (to_jsonb(s) - 'run_id')::text FROM {table} s
                      WHERE run_id = $1 ORDER BY {key}"
                ),
                &[&run_id],
            )
            .await
            .unwrap();
        out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    out
}

#[tokio::test]
async fn copy_stages_byte_for_byte_what_row_inserts_stage() {
    let db = TestDb::new().await;
    // Enough rows that the COPY stream goes out in several chunks, with
    // NULLs, non-ASCII text and escapes in the payloads.
    let mut page = StagedPage::default();
    for i in 0..400 {
        let id = 9_000_000 + i;
        let mut l = lead(id, 142, i % 7 == 0, Some(id + 1), None);
        l.payload = JsonText::of(&json!({
            "id": id,
            "name": format!("Бронь «{i}» 🚗 \"quoted\" \\ backslash"),
            "custom_fields_values": [{"field_id": 1, "values": [{"value": "x".repeat(900)}]}],
        }));
        if i % 3 == 0 {
            (l.name, l.price, l.start_at, l.lead_source) = (None, None, None, None);
        }
        page.leads.push(l);
        let mut c = contact(id + 1);
        if i % 2 == 0 {
            (c.contact.email, c.contact.phone, c.contact.phone_normalized) = (None, None, None);
        }
        page.contacts.push(c);
        page.vehicles.push(vehicle(id, 3_001_000 + i % 5));
    }

    let by_copy = running_run(&db, 2025).await;
    stage(&db, by_copy, &page, StagingMethod::BinaryCopy).await;
    let copied = staged_rows(&db, by_copy).await;
    db.client()
        .await
        .execute(
            "UPDATE kommo_import_runs SET status = 'failed' WHERE id = $1",
            &[&by_copy],
        )
        .await
        .unwrap();
    let by_rows = running_run(&db, 2025).await;
    stage(&db, by_rows, &page, StagingMethod::RowInserts).await;

    assert_eq!(copied.len(), 1200);
    assert_eq!(copied, staged_rows(&db, by_rows).await);
    // The payload reads back as the JSON the worker staged.
    let name: String = db
        .client()
        .await
        .query_one(
            "SELECT payload::json->>'name' FROM stg_kommo_leads WHERE run_id = $1 AND lead_id = 9000005",
            &[&by_copy],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Бронь «5» 🚗 \"quoted\" \\ backslash");
}
