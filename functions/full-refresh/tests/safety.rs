//! Issue 16's acceptance: a full refresh safe on a real account. It touches
//! only its year, is guarded on the first run of a year, keeps a lead
//! deleted during the run deleted and a lead paging skipped active, runs
//! beside the webhook processor without deadlock or lost update, and names
//! the statuses nobody mapped. Against the Kommo sandbox and a real
//! Postgres, checked the way an operator would.

// The processor's future inside the tests' is deep enough to need it.
#![recursion_limit = "256"]

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use common::*;
use sandbox::kommo::{data, KommoSandbox, SandboxLead, WebhookAction, WebhookEvent};
use serde_json::Value;
use shared::{
    ingest::{Pipeline, QueuedMessage},
    kommo::webhook::QueuedDelivery,
    platform::deadline::Deadline,
    refresh::{runs, JobOutcome, RunRecord, RunStatus, StartOutcome, Worker},
};
use testkit::{
    refresh::{run_to_completion, MemoryQueue},
    TestDb,
};
use uuid::Uuid;

const CONFIRMED: i64 = 67548619;
const DELIVERED: i64 = 67548623;

fn processor(db: &TestDb, kommo: &KommoSandbox) -> Pipeline {
    Pipeline::new(db.pool(), flags(db), kommo_client(kommo))
}

/// Runs Kommo's deliveries of `events` through the webhook processor, one
/// queue message per event; returns how many were applied.
async fn deliver(p: &Pipeline, kommo: &KommoSandbox, events: &[WebhookEvent]) -> usize {
    let bodies: Vec<(String, String)> = events
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let body = kommo.webhook_body(std::slice::from_ref(ev));
            let env = QueuedDelivery::new(body, None, None, None).to_json();
            (format!("m{i}-{}", Uuid::new_v4()), env)
        })
        .collect();
    let messages: Vec<QueuedMessage<'_>> = bodies
        .iter()
        .map(|(id, body)| QueuedMessage {
            message_id: id,
            body,
        })
        .collect();
    let out = p.process(&messages).await;
    assert!(out.retry.is_empty(), "{:?}", out.report);
    out.report.processed
}

/// Starts a run and works its jobs one page per invocation, stopping once
/// `stop` says so after an invocation; returns the run id.
async fn start(w: &Worker, queue: &MemoryQueue) -> Uuid {
    let mut c = w.pool.get().await.unwrap();
    match runs::start_run(&mut c, queue, "tester", YEAR, Duration::from_secs(600))
        .await
        .unwrap()
    {
        StartOutcome::Started(run) => run.id,
        StartOutcome::AlreadyActive(run) => panic!("run {} is active", run.id),
    }
}

/// Every invocation is near its deadline after one page.
fn tight() -> Deadline {
    Deadline::after(Duration::from_millis(10), Duration::from_secs(3600))
}

async fn run_of(db: &TestDb, id: Uuid) -> RunRecord {
    runs::get_run(&db.client().await, id)
        .await
        .unwrap()
        .unwrap()
}

/// Kommo lead ids with an active booking, or a live sales lead.
async fn active(db: &TestDb, sql: &str) -> BTreeSet<i64> {
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// A live database, the sandbox of 400 leads and a worker against both.
async fn world() -> (TestDb, KommoSandbox, Arc<MemoryQueue>, Worker) {
    let db = live_db().await;
    let kommo = sandbox(400, 150).await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    (db, kommo, queue, w)
}

/// A whole run of `year` that must succeed.
async fn refreshed(w: &Worker, queue: &MemoryQueue, year: i32) -> RunRecord {
    let run = run_to_completion(w, queue, "tester", year).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    run
}

const ACTIVE_BOOKINGS: &str =
    "SELECT kommo_lead_id FROM bookings WHERE channel = 'Kommo' AND is_active";
const LIVE_LEADS: &str = "SELECT kommo_lead_id FROM sales_leads WHERE archived_at IS NULL";

#[tokio::test]
async fn a_refresh_of_one_year_leaves_the_previous_years_bookings_untouched() {
    let (db, _kommo, queue, w) = world().await;
    refreshed(&w, &queue, YEAR - 1).await;
    let bookings_before = active(&db, ACTIVE_BOOKINGS).await;
    let leads_before = active(&db, LIVE_LEADS).await;
    assert!(
        !bookings_before.is_empty(),
        "the sandbox has last year's bookings"
    );

    let this_year = refreshed(&w, &queue, YEAR).await;
    let bookings_after = active(&db, ACTIVE_BOOKINGS).await;
    let leads_after = active(&db, LIVE_LEADS).await;
    assert!(
        bookings_before.is_subset(&bookings_after),
        "last year's bookings stay active: {:?} were deactivated",
        bookings_before
            .difference(&bookings_after)
            .collect::<Vec<_>>()
    );
    assert!(leads_before.is_subset(&leads_after));
    assert!(
        bookings_after.len() > bookings_before.len(),
        "this year's were added"
    );
    let scope = &this_year;
    assert_eq!(
        scope.scope_from.map(|t| t.to_rfc3339()),
        Some("2025-01-01T00:00:00+00:00".to_string())
    );
    assert_eq!(
        scope.scope_to.map(|t| t.to_rfc3339()),
        Some("2025-12-31T23:59:59+00:00".to_string())
    );
}

#[tokio::test]
async fn the_first_run_of_a_year_that_would_drop_more_than_30_percent_stops_for_review() {
    let (db, kommo, queue, w) = world().await;
    let in_kommo = kommo
        .leads()
        .iter()
        .filter(|l| in_year(l) && l.status_id != data::STATUS_LOST)
        .count() as i64;
    // Twice as many leads of the year in production as Kommo lists, as the
    // webhook processor left them; the year has never been refreshed.
    let c = db.client().await;
    c.execute(
        "INSERT INTO sales_leads (lead_code, kommo_lead_id, source, kommo_updated_at, kommo_created_at)
         SELECT g::text, g, 'Kommo', '2025-03-01Z', '2025-03-01Z'
           FROM generate_series(9000001::bigint, 9000000 + $1::bigint) g",
        &[&(2 * in_kommo)],
    )
    .await
    .unwrap();
    let before = dump_production(&db).await;

    let run = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::NeedsReview, "{:?}", run.error);
    assert_eq!(run.last_success_count, Some(2 * in_kommo as i32));
    assert!(run
        .error
        .as_deref()
        .unwrap()
        .contains("active in production"));
    assert_eq!(dump_production(&db).await, before);
    // Kommo was asked about the leads missing from staging, and has none.
    assert_eq!(run.kept_leads, 0);
    assert!(kommo
        .requests()
        .iter()
        .any(|r| r.path == "/api/v4/leads" && r.query.contains("filter%5Bid%5D")));
}

/// The in-year leads in the order Kommo pages them, none of them lost (a
/// lost lead is not imported, so it could not show a skip).
fn paged_leads(kommo: &KommoSandbox) -> Vec<SandboxLead> {
    let mut leads: Vec<SandboxLead> = kommo.leads().into_iter().filter(in_year).collect();
    leads.sort_by_key(|l| l.id);
    for l in leads.iter_mut().take(60) {
        if l.status_id == data::STATUS_LOST {
            kommo.set_lead_status(l.id, CONFIRMED);
            l.status_id = CONFIRMED;
        }
    }
    leads
}

#[tokio::test]
async fn a_lead_deleted_during_the_run_stays_deleted_and_a_lead_paging_skipped_stays() {
    let (db, kommo, queue, w) = world().await;
    let leads = paged_leads(&kommo);
    refreshed(&w, &queue, YEAR).await;

    // A user deletes a lead of page 1 right after the run fetched it; page
    // 2 then starts one lead later and the run never sees `skipped`.
    let (deleted, skipped) = (leads[5].id, leads[40].id);
    assert!(active(&db, LIVE_LEADS).await.contains(&skipped));
    kommo.delete_lead_after_page(1, deleted);
    let run_id = start(&w, &queue).await;
    let job = queue.pop().unwrap();
    assert_eq!(
        w.process(&job, tight()).await.unwrap(),
        JobOutcome::Continued
    );
    // Kommo's delete webhook reaches the processor before the swap.
    let p = processor(&db, &kommo);
    let delete = WebhookEvent::lead(WebhookAction::Delete, deleted);
    assert_eq!(deliver(&p, &kommo, &[delete]).await, 1);
    while let Some(job) = queue.pop() {
        w.process(&job, tight()).await.unwrap();
    }

    let run = run_of(&db, run_id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let c = db.client().await;
    let staged: i64 = c
        .query_one(
            "SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1 AND lead_id = $2",
            &[&run_id, &skipped],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, 0, "offset paging skipped the lead");
    let written: i64 = c
        .query_one(
            "SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        i64::from(run.leads),
        written,
        "the run counts the leads it wrote, not the one deleted meanwhile"
    );
    assert_eq!(run.kept_leads, 1, "Kommo still has it, so it was kept");
    let live = active(&db, LIVE_LEADS).await;
    assert!(live.contains(&skipped), "the skipped lead stays");
    assert!(!live.contains(&deleted), "the deleted lead stays deleted");
    assert!(!active(&db, ACTIVE_BOOKINGS).await.contains(&deleted));
}

#[tokio::test]
async fn a_processor_delivery_and_a_swap_on_the_same_leads_run_side_by_side() {
    let (db, kommo, queue, w) = world().await;
    refreshed(&w, &queue, YEAR).await;

    // Fetch the whole year; the swap waits for a fresh invocation.
    let run_id = start(&w, &queue).await;
    loop {
        let job = queue.pop().unwrap();
        assert_eq!(
            w.process(&job, tight()).await.unwrap(),
            JobOutcome::Continued
        );
        let cp = run_of(&db, run_id).await.checkpoint.unwrap();
        if cp["fetchDone"] == Value::Bool(true) {
            break;
        }
    }
    let swap_job = queue.pop().unwrap();

    // Meanwhile the leads the run staged move on in Kommo.
    let bookable: Vec<i64> = active(&db, ACTIVE_BOOKINGS).await.into_iter().collect();
    let moved: Vec<i64> = bookable.iter().copied().take(24).collect();
    for id in &moved {
        kommo.set_lead_status(*id, DELIVERED);
    }
    let events: Vec<WebhookEvent> = moved
        .iter()
        .map(|id| WebhookEvent::lead_status(*id, CONFIRMED))
        .collect();
    let p = processor(&db, &kommo);
    let chunks: Vec<&[WebhookEvent]> = events.chunks(8).collect();
    let (swapped, a, b, c) = tokio::join!(
        w.process(&swap_job, Deadline::none()),
        deliver(&p, &kommo, chunks[0]),
        deliver(&p, &kommo, chunks[1]),
        deliver(&p, &kommo, chunks[2]),
    );
    assert_eq!(
        swapped.unwrap(),
        JobOutcome::Finished(RunStatus::Succeeded),
        "{:?}",
        run_of(&db, run_id).await.error
    );
    let applied = [a, b, c];
    assert_eq!(applied.iter().sum::<usize>(), moved.len());

    // Whichever went first, the newer Kommo state is what production holds.
    let c = db.client().await;
    for id in &moved {
        let r = c
            .query_one(
                "SELECT b.kommo_status_id, l.stage_id, b.is_active
                   FROM bookings b JOIN sales_leads l ON l.kommo_lead_id = b.kommo_lead_id
                  WHERE b.kommo_lead_id = $1",
                &[id],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                r.get::<_, Option<i64>>(0),
                r.get::<_, Option<i64>>(1),
                r.get::<_, bool>(2)
            ),
            (Some(DELIVERED), Some(DELIVERED), true),
            "lead {id}"
        );
    }
}

/// The run as its GET answers it.
async fn run_json(db: &TestDb, run_id: Uuid) -> Value {
    let app = http_app(db, Arc::new(MemoryQueue::default()));
    let resp = app
        .handle(request(
            "GET",
            &format!("/integrations/kommo/full-refresh/{run_id}"),
            "",
            Some(&token("ops-1", "ops")),
            None,
        ))
        .await;
    assert_eq!(resp.status_code, 200);
    body_json(&resp)
}

/// In-year leads the run imports whose status is not in `mapped`.
fn unmapped_in(kommo: &KommoSandbox, mapped: &[i64]) -> i64 {
    kommo
        .leads()
        .iter()
        .filter(|l| in_year(l) && l.status_id != data::STATUS_LOST)
        .filter(|l| !mapped.contains(&l.status_id))
        .count() as i64
}

/// Every stage of the account is in the map, labelled as in Kommo, and the
/// operator's mapping of "Confirmed" is as they left it.
async fn assert_map_lists_every_stage(c: &tokio_postgres::Client, kommo: &KommoSandbox) {
    let row = c
        .query_one(
            "SELECT label, booking_status, mapped_at IS NOT NULL FROM kommo_status_map WHERE status_id = $1",
            &[&CONFIRMED],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2)
        ),
        ("Confirmed".into(), "confirmed".into(), true)
    );
    let listed: i64 = c
        .query_one(
            "SELECT count(*) FROM kommo_status_map WHERE pipeline_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let stages: BTreeSet<i64> = kommo
        .pipelines()
        .iter()
        .flat_map(|p| p.statuses.iter().map(|s| s.id))
        .collect();
    assert_eq!(listed, stages.len() as i64);
}

#[tokio::test]
async fn unknown_statuses_are_counted_named_and_never_remapped() {
    let (db, kommo, queue, w) = world().await;
    let c = db.client().await;
    // An operator mapped "Confirmed" by hand before the first run.
    c.execute(
        "INSERT INTO kommo_status_map (status_id, label, booking_status) VALUES ($1, 'ours', 'confirmed')",
        &[&CONFIRMED],
    )
    .await
    .unwrap();
    let run = refreshed(&w, &queue, YEAR).await;

    let mut mapped = vec![
        data::STATUS_WON,
        data::STATUS_BOT_ANSWERING,
        data::STATUS_FOLLOW_UP,
        CONFIRMED,
    ];
    let view = run_json(&db, run.id).await;
    let want = unmapped_in(&kommo, &mapped);
    assert!(want > 0, "the sandbox has leads in unmapped statuses");
    assert_eq!(view["unmappedLeads"], want);
    let named: Vec<Value> = view["unmappedStatuses"].as_array().unwrap().clone();
    let total: i64 = named.iter().map(|s| s["leads"].as_i64().unwrap()).sum();
    assert_eq!(total, want);
    let delivered = named.iter().find(|s| s["statusId"] == DELIVERED).unwrap();
    assert_eq!(delivered["label"], "Vehicle delivered");

    // The map now lists every stage with Kommo's label; the operator's
    // mapping is kept.
    assert_map_lists_every_stage(&c, &kommo).await;

    // The operator maps "Vehicle delivered"; the next run counts the rest
    // and leaves the mapping as it is.
    c.execute(
        "UPDATE kommo_status_map SET booking_status = 'confirmed' WHERE status_id = $1",
        &[&DELIVERED],
    )
    .await
    .unwrap();
    let again = refreshed(&w, &queue, YEAR).await;
    mapped.push(DELIVERED);
    assert_eq!(again.unmapped_leads as i64, unmapped_in(&kommo, &mapped));
    let kept: String = c
        .query_one(
            "SELECT booking_status FROM kommo_status_map WHERE status_id = $1",
            &[&DELIVERED],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "confirmed");
}
