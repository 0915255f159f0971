//! The full refresh end to end: the worker against the Kommo sandbox and a
//! real Postgres, checked the way an operator would (rows, run records).

// The end-to-end test future is deep enough to need it under clippy.
#![recursion_limit = "256"]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_lambda_events::event::sqs::SqsEvent;
use axum::{extract::State, routing::post, Router};
use chrono::{TimeZone, Utc};
use common::*;
use full_refresh::worker::WorkerApp;
use sandbox::kommo::{data, SandboxLead};
use serde_json::Value;
use shared::{
    platform::{deadline::Deadline, secrets::Redacted},
    refresh::{alert::SlackTarget, Alerter, JobOutcome, RefreshSettings, RunStatus},
};
use testkit::{
    refresh::{process_queued_jobs, run_to_completion, MemoryQueue},
    TestDb,
};

const EXCLUDED: [i64; 2] = [data::STATUS_BOT_ANSWERING, data::STATUS_FOLLOW_UP];

fn field_i64(l: &SandboxLead, field: i64, key: &str) -> Option<i64> {
    l.field(field)
        .and_then(|f| f.values.first())
        .and_then(|v| v.get(key))
        .and_then(Value::as_i64)
}

fn iso(secs: Option<i64>) -> Value {
    match secs {
        Some(s) => Value::String(
            Utc.timestamp_opt(s, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S+00:00")
                .to_string(),
        ),
        None => Value::Null,
    }
}

#[tokio::test]
async fn a_full_refresh_imports_the_year_per_the_spec_and_a_second_run_is_identical() {
    let db = live_db().await;
    let kommo = sandbox(400, 150).await;
    // A Kommo booking from another year, as the webhook left it.
    let old = kommo.leads().into_iter().find(|l| !in_year(l)).unwrap();
    let c = db.client().await;
    c.execute(
        "INSERT INTO bookings (source_payload_id, channel, created_by, kommo_lead_id, status, kommo_updated_at,
                               kommo_created_at)
         VALUES ($1, 'Kommo', 'system-kommo', $2, 'confirmed', '2024-01-01Z', to_timestamp($3))",
        &[&format!("kommo:{}", old.id), &old.id, &(old.created_at as f64)],
    )
    .await
    .unwrap();

    // One Kommo user is mapped to a staff account: the owner map.
    let anna = data::USERS[0].0;
    c.batch_execute(&format!(
        "INSERT INTO staff_accounts (email, full_name) VALUES ('anna@erp.test', 'Anna');
         INSERT INTO kommo_user_map (kommo_user_id, staff_account_id)
              SELECT {anna}, id FROM staff_accounts WHERE email = 'anna@erp.test';"
    ))
    .await
    .unwrap();

    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    let run = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);

    let all = kommo.leads();
    let expected: Vec<&SandboxLead> = all
        .iter()
        .filter(|l| in_year(l) && l.status_id != data::STATUS_LOST)
        .collect();
    let bookable: Vec<&SandboxLead> = expected
        .iter()
        .copied()
        .filter(|l| !EXCLUDED.contains(&l.status_id))
        .collect();
    assert!(
        bookable.len() > 50 && bookable.len() < expected.len(),
        "fixture covers every case"
    );
    assert!(all
        .iter()
        .any(|l| in_year(l) && l.status_id == data::STATUS_LOST));
    assert_eq!(run.leads as usize, expected.len());
    assert!(
        run.pages_fetched >= 3,
        "several pages: {}",
        run.pages_fetched
    );

    // Sales leads: every status but lost, this year only.
    let lead_codes: BTreeSet<String> = c
        .query(
            "SELECT lead_code FROM sales_leads WHERE archived_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: BTreeSet<String> = expected.iter().map(|l| l.id.to_string()).collect();
    assert_eq!(lead_codes, want);

    // Bookings: active ones are exactly the bookable leads, with mapped values.
    let rows = c
        .query(
            "SELECT b.kommo_lead_id, b.status, b.kommo_status_id,
                    to_char(b.start_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00'),
                    to_char(b.end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00'),
                    v.kommo_vehicle_id, bv.\"primary\", cl.kommo_contact_id, b.channel, b.created_by,
                    b.source_payload_id, o.email, b.source
               FROM bookings b
               LEFT JOIN staff_accounts o ON o.id = b.owner_id
               LEFT JOIN vehicles v ON v.id = b.vehicle_id
               LEFT JOIN booking_vehicles bv ON bv.booking_id = b.id AND bv.vehicle_id = v.id
               LEFT JOIN clients cl ON cl.id = b.client_id
              WHERE b.is_active AND b.kommo_lead_id <> $1",
            &[&old.id],
        )
        .await
        .unwrap();
    let got: BTreeMap<i64, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, i64>(0), r)).collect();
    assert_eq!(got.len(), bookable.len());
    for l in &bookable {
        let r = got
            .get(&l.id)
            .unwrap_or_else(|| panic!("lead {} has no booking", l.id));
        let delivery = field_i64(l, data::FIELD_DELIVERY, "value");
        let collect = field_i64(l, data::FIELD_COLLECT, "value");
        assert_eq!(
            Value::from(r.get::<_, Option<String>>(3)),
            iso(delivery.or(collect)),
            "start of {}",
            l.id
        );
        assert_eq!(
            Value::from(r.get::<_, Option<String>>(4)),
            iso(collect.or(delivery))
        );
        let vehicle = field_i64(l, data::FIELD_VEHICLE, "enum_id");
        assert_eq!(r.get::<_, Option<i64>>(5), vehicle, "vehicle of {}", l.id);
        if vehicle.is_some() {
            assert_eq!(
                r.get::<_, Option<bool>>(6),
                Some(true),
                "primary link of {}",
                l.id
            );
        }
        assert_eq!(r.get::<_, Option<i64>>(7), l.contact_ids.first().copied());
        assert_eq!(r.get::<_, Option<i64>>(2), Some(l.status_id));
        let status: String = r.get(1);
        assert_eq!(
            status,
            if l.status_id == data::STATUS_WON {
                "completed"
            } else {
                "requested"
            }
        );
        assert_eq!(r.get::<_, String>(8), "Kommo");
        assert_eq!(r.get::<_, String>(9), "system-kommo");
        assert_eq!(
            r.get::<_, Option<String>>(10),
            Some(format!("kommo:{}", l.id))
        );
        let owner = (l.responsible_user_id == anna).then(|| "anna@erp.test".to_string());
        assert_eq!(r.get::<_, Option<String>>(11), owner, "owner of {}", l.id);
        let source = l
            .field(data::FIELD_SOURCE)
            .and_then(|f| f.values.first())
            .and_then(|v| v.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string);
        assert_eq!(r.get::<_, Option<String>>(12), source, "source of {}", l.id);
    }
    // The other year's booking is not the run's to touch (issue 16 §1).
    let old_active: bool = c
        .query_one(
            "SELECT is_active FROM bookings WHERE kommo_lead_id = $1",
            &[&old.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(old_active);
    assert_eq!(db.count("integrations_outbox").await, 0);
    assert_eq!(
        run.vehicles as usize,
        bookable
            .iter()
            .filter(|l| field_i64(l, data::FIELD_VEHICLE, "enum_id").is_some())
            .count()
    );

    let first = snapshot(&db).await;
    let again = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(again.status, RunStatus::Succeeded, "{:?}", again.error);
    assert_eq!(again.last_success_count, Some(run.leads));
    assert_eq!(snapshot(&db).await, first);
    assert_eq!(db.count("integrations_outbox").await, 0);
}

#[tokio::test]
async fn a_5xx_on_page_n_fails_the_run_and_leaves_production_byte_for_byte_unchanged() {
    let db = live_db().await;
    let kommo = sandbox(400, 150).await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    let ok = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded);
    let before = dump_production(&db).await;

    kommo.set_fail_leads_page(Some(3));
    let run = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.http_status, Some(500));
    let error = run.error.clone().unwrap();
    assert!(error.contains("page 3"), "{error}");
    assert!(
        error.contains("sandbox fault"),
        "the body excerpt is kept: {error}"
    );
    assert_eq!(run.pages_fetched, 2);
    assert_eq!(dump_production(&db).await, before);
    // Staging is kept for inspection.
    let c = db.client().await;
    let staged: i64 = c
        .query_one(
            "SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1",
            &[&run.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(staged, i64::from(run.leads));
    assert!(staged > 0);

    // Once Kommo recovers, the same button works again.
    kommo.clear_faults();
    let rerun = run_to_completion(&w, &queue, "tester", YEAR).await.unwrap();
    assert_eq!(rerun.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_run_cut_off_mid_fetch_resumes_and_ends_like_an_uninterrupted_one() {
    let kommo = sandbox(400, 150).await;

    let whole_db = live_db().await;
    let q1 = Arc::new(MemoryQueue::default());
    let whole = run_to_completion(
        &worker(&whole_db, &kommo, q1.clone(), settings()),
        &q1,
        "t",
        YEAR,
    )
    .await
    .unwrap();
    assert_eq!(whole.status, RunStatus::Succeeded);

    // Every invocation is "near its deadline" after one page.
    let db = live_db().await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    let mut client = db.pool().get().await.unwrap();
    let started = shared::refresh::runs::start_run(
        &mut client,
        queue.as_ref(),
        "t",
        YEAR,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let shared::refresh::StartOutcome::Started(run) = started else {
        panic!("not started")
    };
    let tight = Deadline::after(Duration::from_millis(10), Duration::from_secs(3600));
    let mut outcomes = Vec::new();
    let mut pages_seen = Vec::new();
    while let Some(job) = queue.pop() {
        outcomes.push(w.process(&job, tight).await.unwrap());
        let r = shared::refresh::runs::get_run(&**client, run.id)
            .await
            .unwrap()
            .unwrap();
        pages_seen.push(r.pages_fetched);
        if outcomes.len() == 2 {
            // Live progress while the run is mid-way.
            assert_eq!(r.status, RunStatus::Running);
            assert_eq!(r.phase, "fetching");
            assert!(r.checkpoint.as_ref().unwrap()["nextPage"].as_u64().unwrap() == 3);
        }
    }
    let last = outcomes.pop().unwrap();
    assert_eq!(last, JobOutcome::Finished(RunStatus::Succeeded));
    assert!(outcomes.iter().all(|o| *o == JobOutcome::Continued));
    // One page per invocation; the one that fetched the last page had no
    // time left for the swap, so a fresh invocation swapped without fetching.
    assert_eq!(
        outcomes.len() as i32,
        whole.pages_fetched,
        "one page per invocation, then the swap"
    );
    let mut want: Vec<i32> = (1..=whole.pages_fetched).collect();
    want.push(whole.pages_fetched);
    assert_eq!(pages_seen, want);
    let cut = shared::refresh::runs::get_run(&**client, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cut.leads, cut.contacts, cut.vehicles),
        (whole.leads, whole.contacts, whole.vehicles)
    );
    assert_eq!(snapshot(&db).await, snapshot(&whole_db).await);
}

#[tokio::test]
async fn a_30_percent_drop_in_kommo_needs_review() {
    let db = live_db().await;
    let kommo = sandbox(400, 150).await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    assert_eq!(
        run_to_completion(&w, &queue, "t", YEAR)
            .await
            .unwrap()
            .status,
        RunStatus::Succeeded
    );
    let before = dump_production(&db).await;
    let this_year: Vec<i64> = kommo
        .leads()
        .iter()
        .filter(|l| in_year(l))
        .map(|l| l.id)
        .collect();
    for id in this_year.iter().take(this_year.len() * 2 / 5) {
        kommo.delete_lead(*id);
    }
    let run = run_to_completion(&w, &queue, "t", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::NeedsReview, "{:?}", run.error);
    assert_eq!(dump_production(&db).await, before);
}

#[tokio::test]
async fn only_one_worker_runs_at_a_time_and_busy_jobs_are_retried_by_sqs() {
    let db = live_db().await;
    let kommo = sandbox(60, 30).await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    let mut client = db.pool().get().await.unwrap();
    let shared::refresh::StartOutcome::Started(run) = shared::refresh::runs::start_run(
        &mut client,
        queue.as_ref(),
        "t",
        YEAR,
        Duration::from_secs(600),
    )
    .await
    .unwrap() else {
        panic!("not started")
    };
    let job = queue.pop().unwrap();

    // Another worker holds the lock.
    let other = db.client().await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&w.settings.lock_key])
        .await
        .unwrap();
    assert_eq!(
        w.process(&job, Deadline::none()).await.unwrap(),
        JobOutcome::Busy
    );
    let app = WorkerApp { worker: w.clone() };
    let event = sqs_event(&[("m-1", &job.to_body()), ("m-2", "{not json")]);
    let resp = app.handle(event, Deadline::none()).await;
    let failed: Vec<&str> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["m-1"], "busy is retried, junk is dropped");
    let r = shared::refresh::runs::get_run(&**client, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, RunStatus::Queued, "nothing happened while locked");

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&w.settings.lock_key])
        .await
        .unwrap();
    let resp = app
        .handle(sqs_event(&[("m-1", &job.to_body())]), Deadline::none())
        .await;
    assert!(resp.batch_item_failures.is_empty());
    let r = shared::refresh::runs::get_run(&**client, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    // A duplicate delivery of a finished run's job is a no-op.
    assert_eq!(
        w.process(&job, Deadline::none()).await.unwrap(),
        JobOutcome::Skipped
    );
}

fn sqs_event(records: &[(&str, &str)]) -> SqsEvent {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| serde_json::json!({"messageId": id, "body": body, "eventSource": "aws:sqs"}))
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("SQS event")
}

type Posts = Arc<Mutex<Vec<Value>>>;

async fn slack_capture() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(|State(p): State<Posts>, body: String| async move {
                p.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                "ok"
            }),
        )
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), posts)
}

#[tokio::test]
async fn failed_runs_raise_a_slack_alert_only_when_alerts_are_on() {
    let db = live_db().await;
    let kommo = sandbox(200, 80).await;
    let (url, posts) = slack_capture().await;
    let queue = Arc::new(MemoryQueue::default());
    let mut w = worker(&db, &kommo, queue.clone(), settings());
    w.alerter = Some(Alerter::new(
        flags(&db),
        SlackTarget::Url(Redacted::new(url)),
    ));
    kommo.set_fail_leads_page(Some(1));

    let run = run_to_completion(&w, &queue, "t", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(posts.lock().unwrap().is_empty(), "enableSlackAlerts is off");

    db.set_flag("enableSlackAlerts", true).await;
    let run = run_to_completion(&w, &queue, "t", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let got = posts.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let text = got[0]["text"].as_str().unwrap();
    assert!(text.contains(&run.id.to_string()), "{text}");
    assert!(text.contains("HTTP 500"), "{text}");

    kommo.clear_faults();
    let ok = run_to_completion(&w, &queue, "t", YEAR).await.unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded);
    assert_eq!(posts.lock().unwrap().len(), 1, "success is not alerted");
}

#[tokio::test]
async fn turning_kommo_live_off_stops_a_run_before_production_changes() {
    let db = live_db().await;
    let kommo = sandbox(200, 80).await;
    let queue = Arc::new(MemoryQueue::default());
    let w = worker(&db, &kommo, queue.clone(), settings());
    let mut client = db.pool().get().await.unwrap();
    let shared::refresh::StartOutcome::Started(run) = shared::refresh::runs::start_run(
        &mut client,
        queue.as_ref(),
        "t",
        YEAR,
        Duration::from_secs(600),
    )
    .await
    .unwrap() else {
        panic!("not started")
    };
    let tight = Deadline::after(Duration::ZERO, Duration::from_secs(3600));
    let job = queue.pop().unwrap();
    assert_eq!(w.process(&job, tight).await.unwrap(), JobOutcome::Continued);
    db.set_flag("enableKommoLive", false).await;
    assert_eq!(process_queued_jobs(&w, &queue, tight).await.unwrap(), 1);
    let r = shared::refresh::runs::get_run(&**client, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.unwrap().contains("enableKommoLive"));
    assert_eq!(db.count("bookings").await, 0);
}

#[tokio::test]
async fn year_bounds_can_follow_the_account_timezone() {
    let db = live_db().await;
    let kommo = sandbox(0, 0).await; // the sandbox account is at +04:00
    let at = |y, m, d, h| Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap().timestamp();
    let mut id = kommo.next_lead_id();
    let mut add = |created: i64| {
        kommo.upsert_lead(SandboxLead::new(
            id,
            "x",
            data::PIPELINE_RENTALS,
            67548619,
            created,
        ));
        id += 1;
        id - 1
    };
    // 2025-01-01 01:00 in Dubai, but still 2024 in UTC.
    let early = add(at(2024, 12, 31, 21));
    let mid = add(at(2025, 6, 1, 12));
    // 2026-01-01 01:00 in Dubai, but still 2025 in UTC.
    let late = add(at(2025, 12, 31, 21));

    let queue = Arc::new(MemoryQueue::default());
    let utc = worker(&db, &kommo, queue.clone(), settings());
    let run = run_to_completion(&utc, &queue, "t", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(imported(&db).await, vec![mid, late]);
    assert_eq!(kommo.stats().account, 0, "UTC bounds need no account call");

    let local = worker(
        &db,
        &kommo,
        queue.clone(),
        RefreshSettings {
            year_bounds: shared::platform::config::YearBounds::AccountTimezone,
            ..settings()
        },
    );
    let run = run_to_completion(&local, &queue, "t", YEAR).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    // `late` is 2026 in Dubai: outside this run's scope, so it stays as the
    // UTC run left it (issue 16 §1).
    assert_eq!(imported(&db).await, vec![early, mid, late]);
    assert_eq!(kommo.stats().account, 1);
}

async fn imported(db: &TestDb) -> Vec<i64> {
    let c = db.client().await;
    c.query(
        "SELECT kommo_lead_id FROM sales_leads WHERE archived_at IS NULL ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, Option<i64>>(0).unwrap())
    .collect()
}
