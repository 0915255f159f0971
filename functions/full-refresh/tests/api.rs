//! The HTTP API as the ERP UI uses it: start, conflict, status, list, and
//! the refusals (flag off, no token, wrong role). Queues are moto SQS.

mod common;

use std::sync::Arc;

use common::*;
use shared::{platform::sqs::Queue, refresh::JobMessage};
use testkit::TestDb;

async fn moto_queue() -> (Queue, aws_sdk_sqs::Client) {
    let sdk = testkit::aws_config().await;
    let url = testkit::create_queue(&sdk, "full-refresh-jobs").await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    (Queue::new(client.clone(), url), client)
}

async fn received(client: &aws_sdk_sqs::Client, queue: &Queue) -> Vec<String> {
    let out = client
        .receive_message()
        .queue_url(queue.url())
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    out.messages()
        .iter()
        .filter_map(|m| m.body().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn start_creates_a_run_and_queues_one_job_then_a_second_start_gets_409() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let (queue, sqs) = moto_queue().await;
    let app = http_app(&db, Arc::new(queue.clone()));

    let resp = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&token("user-7", "ops")),
            Some(r#"{"year": 2025}"#),
        ))
        .await;
    assert_eq!(resp.status_code, 202, "{:?}", resp.body);
    let body = body_json(&resp);
    assert_eq!(body["status"], "queued");
    assert_eq!(body["leads"], 0);
    assert_eq!(body["contacts"], 0);
    assert_eq!(body["vehicles"], 0);
    let run_id = body["runId"].as_str().unwrap().to_string();

    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT triggered_by, year, status FROM kommo_import_runs WHERE id = $1::text::uuid",
            &[&run_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("user-7"));
    assert_eq!(row.get::<_, i32>(1), 2025);
    assert_eq!(row.get::<_, String>(2), "queued");

    let msgs = received(&sqs, &queue).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let job = JobMessage::parse(&msgs[0]).unwrap();
    assert_eq!(job.run_id.to_string(), run_id);

    // A concurrent start is refused with the active run's id, and queues nothing.
    let again = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&token("user-8", "admin")),
            None,
        ))
        .await;
    assert_eq!(again.status_code, 409);
    let err = body_json(&again);
    assert_eq!(err["error"]["runId"], run_id.as_str());
    assert_eq!(db.count("kommo_import_runs").await, 1);
    assert!(received(&sqs, &queue).await.is_empty());
}

#[tokio::test]
async fn simultaneous_starts_create_exactly_one_run() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = Arc::new(http_app(&db, queue.clone()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.handle(request(
                "POST",
                "/integrations/kommo/full-refresh",
                "",
                Some(&token(&format!("user-{i}"), "ops")),
                None,
            ))
            .await
            .status_code
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, vec![202, 409, 409, 409, 409, 409]);
    assert_eq!(db.count("kommo_import_runs").await, 1);
    assert_eq!(queue.len(), 1);
}

#[tokio::test]
async fn flag_off_gives_403_with_a_reason_and_creates_nothing() {
    let db = TestDb::new().await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = http_app(&db, queue.clone());
    let resp = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&token("user-1", "admin")),
            None,
        ))
        .await;
    assert_eq!(resp.status_code, 403);
    let body = body_json(&resp);
    assert_eq!(body["error"]["code"], "kommo_disabled");
    assert!(body["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("enableKommoLive"));
    assert_eq!(db.count("kommo_import_runs").await, 0);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn no_token_is_401_and_a_wrong_role_is_403_on_every_route() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = http_app(&db, queue.clone());
    let routes = [
        ("POST", "/integrations/kommo/full-refresh"),
        ("GET", "/integrations/kommo/full-refresh"),
        (
            "GET",
            "/integrations/kommo/full-refresh/6f1c1f5e-0000-4000-8000-000000000001",
        ),
    ];
    for (method, path) in routes {
        let none = app.handle(request(method, path, "", None, None)).await;
        assert_eq!(none.status_code, 401, "{method} {path} without a token");
        let forged = issue_forged();
        let bad = app
            .handle(request(method, path, "", Some(&forged), None))
            .await;
        assert_eq!(bad.status_code, 401, "{method} {path} with a forged token");
        let sales = app
            .handle(request(method, path, "", Some(&token("u", "sales")), None))
            .await;
        assert_eq!(sales.status_code, 403, "{method} {path} as sales");
        assert_eq!(body_json(&sales)["error"]["code"], "forbidden");
    }
    assert_eq!(db.count("kommo_import_runs").await, 0);
    assert!(queue.is_empty());
}

fn issue_forged() -> String {
    shared::platform::auth::issue_staff_token("not-the-key", "u", "admin", 600)
}

#[tokio::test]
async fn status_and_list_show_runs_and_bad_input_is_refused() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = http_app(&db, queue.clone());
    let admin = token("user-1", "admin");

    let started = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&admin),
            Some(r#"{"year": 2024}"#),
        ))
        .await;
    assert_eq!(started.status_code, 202);
    let run_id = body_json(&started)["runId"].as_str().unwrap().to_string();
    let c = db.client().await;
    c.execute(
        "UPDATE kommo_import_runs SET status = 'running', phase = 'fetching', pages_fetched = 3,
                leads_count = 700 WHERE id = $1::text::uuid",
        &[&run_id],
    )
    .await
    .unwrap();

    let status = app
        .handle(request(
            "GET",
            &format!("/integrations/kommo/full-refresh/{run_id}"),
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(status.status_code, 200);
    let s = body_json(&status);
    assert_eq!(s["status"], "running");
    assert_eq!(s["phase"], "fetching");
    assert_eq!(s["pagesFetched"], 3);
    assert_eq!(s["leads"], 700);
    assert_eq!(s["year"], 2024);

    let list = app
        .handle(request(
            "GET",
            "/integrations/kommo/full-refresh",
            "limit=5",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(list.status_code, 200);
    assert_eq!(body_json(&list)["runs"][0]["runId"], run_id.as_str());

    let missing = app
        .handle(request(
            "GET",
            "/integrations/kommo/full-refresh/6f1c1f5e-0000-4000-8000-000000000001",
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(missing.status_code, 404);
    let bad_id = app
        .handle(request(
            "GET",
            "/integrations/kommo/full-refresh/not-a-uuid",
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(bad_id.status_code, 400);
    let bad_limit = app
        .handle(request(
            "GET",
            "/integrations/kommo/full-refresh",
            "limit=0",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(bad_limit.status_code, 400);
}

#[tokio::test]
async fn bad_bodies_are_refused_before_anything_is_created() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = http_app(&db, queue.clone());
    let admin = token("user-1", "admin");
    for (body, code) in [
        ("{\"year\": \"2025\"}", 400),
        ("{\"year\": 2025, \"force\": true}", 400),
        ("not json", 400),
        ("{\"year\": 1999}", 422),
        ("{\"year\": 3000}", 422),
    ] {
        let resp = app
            .handle(request(
                "POST",
                "/integrations/kommo/full-refresh",
                "",
                Some(&admin),
                Some(body),
            ))
            .await;
        assert_eq!(resp.status_code, code, "{body}");
    }
    assert_eq!(db.count("kommo_import_runs").await, 0);
    let wrong_method = app
        .handle(request(
            "DELETE",
            "/integrations/kommo/full-refresh",
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(wrong_method.status_code, 405);
}

#[tokio::test]
async fn a_queue_outage_closes_the_run_so_the_next_start_is_not_blocked() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    queue.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = http_app(&db, queue.clone());
    let admin = token("user-1", "admin");
    let resp = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(resp.status_code, 503);
    let c = db.client().await;
    let status: String = c
        .query_one("SELECT status FROM kommo_import_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
    queue.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let resp = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&admin),
            None,
        ))
        .await;
    assert_eq!(resp.status_code, 202);
}

#[tokio::test]
async fn an_abandoned_run_does_not_block_a_new_start_forever() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO kommo_import_runs (status, year, phase, updated_at)
         VALUES ('running', 2025, 'fetching', now() - interval '2 hours')",
        &[],
    )
    .await
    .unwrap();
    let queue = Arc::new(testkit::refresh::MemoryQueue::default());
    let app = http_app(&db, queue.clone());
    let resp = app
        .handle(request(
            "POST",
            "/integrations/kommo/full-refresh",
            "",
            Some(&token("user-1", "admin")),
            None,
        ))
        .await;
    assert_eq!(resp.status_code, 202);
    let old: (String, Option<String>) = c
        .query_one(
            "SELECT status, error FROM kommo_import_runs WHERE phase <> 'queued'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(old.0, "failed");
    assert!(old.1.unwrap().contains("abandoned"));
}
