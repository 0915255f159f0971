//! One Kommo budget for the whole account, across processes.
//!
//! The main test starts three "processor containers" and a "refresh worker"
//! as separate processes (this test binary again, running the ignored
//! `container` entry point), each with its own pool and Kommo client, against
//! the Kommo sandbox's 7 req/s limit.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use sandbox::kommo::{KommoOptions, KommoSandbox};
use shared::{
    kommo::{BudgetSettings, KommoClient, KommoClientOptions, KommoError, Lane, SharedBudget},
    platform::{db::DbSettings, secrets::Redacted},
};
use testkit::TestDb;

const RUN: Duration = Duration::from_secs(6);

fn opts() -> KommoClientOptions {
    KommoClientOptions {
        // Only the shared budget may limit: a container's own limiter is off.
        rate_per_second: 1000,
        retry_min_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(200),
        ..KommoClientOptions::default()
    }
}

fn client(url: &str, token: &str, pool: shared::platform::db::DbPool, lane: Lane) -> KommoClient {
    KommoClient::with_token(url, Redacted::new(token), opts())
        .unwrap()
        .sharing_budget(SharedBudget::new(pool, lane, BudgetSettings::default()))
}

/// Entry point of one container process; does nothing unless started by
/// the main test (which sets `BUDGET_CONTAINER`).
#[tokio::test]
#[ignore = "run as a child process by three_processors_and_a_refresh_share_seven_requests_per_second"]
async fn container() {
    let Ok(lane) = std::env::var("BUDGET_CONTAINER") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let pool = DbSettings::from_url(&var("BUDGET_DB"))
        .unwrap()
        .pool()
        .unwrap();
    let lane = if lane == "refresh" {
        Lane::Refresh
    } else {
        Lane::Webhooks
    };
    let kommo = client(&var("BUDGET_KOMMO"), &var("BUDGET_TOKEN"), pool, lane);
    let until = Instant::now() + RUN;
    // The refresh keeps two pages in flight, so the budget, not one
    // request's latency on a busy machine, sets the pace.
    let loops = if lane == Lane::Refresh { 2 } else { 1 };
    let work = (0..loops).map(|n| {
        let kommo = kommo.clone();
        async move {
            let mut page = 1 + n;
            while Instant::now() < until {
                match lane {
                    Lane::Refresh => {
                        kommo.leads_page(0, i64::MAX, page, 10).await.unwrap();
                        page += loops;
                    }
                    Lane::Webhooks => {
                        kommo.leads_by_ids(&[1]).await.unwrap();
                    }
                }
            }
        }
    });
    futures::future::join_all(work).await;
}

fn spawn(lane: &str, db: &TestDb, k: &KommoSandbox) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "container", "--ignored", "--quiet"])
        .env("BUDGET_CONTAINER", lane)
        .env("BUDGET_DB", &db.url)
        .env("BUDGET_KOMMO", k.base_url())
        .env("BUDGET_TOKEN", k.token())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn three_processors_and_a_refresh_share_seven_requests_per_second() {
    let db = TestDb::new().await;
    let k = KommoSandbox::start(KommoOptions {
        leads: 400,
        contacts: 50,
        ..KommoOptions::default()
    })
    .await
    .unwrap();
    k.set_rate_limit(Some(7));

    let children: Vec<Child> = ["webhooks", "webhooks", "webhooks", "refresh"]
        .iter()
        .map(|lane| spawn(lane, &db, &k))
        .collect();
    for mut c in children {
        let status = tokio::task::spawn_blocking(move || c.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "a container failed: {status}");
    }

    let requests = k.requests();
    eprintln!(
        "DEBUG {:?}",
        requests
            .iter()
            .map(|r| (r.at_ms, r.status, r.query.contains("page=")))
            .collect::<Vec<_>>()
    );
    let refused = requests.iter().filter(|r| r.status == 429).count();
    assert_eq!(refused, 0, "no request went over Kommo's limit");
    let first = requests.iter().map(|r| r.at_ms).min().unwrap();
    let last = requests.iter().map(|r| r.at_ms).max().unwrap();
    let rate = (requests.len() - 1) as f64 / ((last - first) as f64 / 1000.0);
    assert!(
        rate >= 0.85 * 7.0,
        "together they used {rate:.2} req/s of the 7 ({} requests in {} ms)",
        requests.len(),
        last - first
    );
    let refresh = requests
        .iter()
        .filter(|r| r.query.contains("page="))
        .count();
    let webhooks = requests.len() - refresh;
    assert!(
        refresh > webhooks,
        "the running refresh gets most of the budget: {refresh} refresh, {webhooks} webhook requests"
    );
    assert!(
        webhooks >= 6,
        "webhooks are not starved: {webhooks} requests"
    );
}

#[tokio::test]
async fn a_403_pauses_every_container_and_a_429_pushes_everyones_next_slot() {
    let db = TestDb::new().await;
    let k = KommoSandbox::start(KommoOptions::default()).await.unwrap();
    let a = client(
        &k.base_url(),
        k.token(),
        db.settings().pool().unwrap(),
        Lane::Webhooks,
    );
    let b = client(
        &k.base_url(),
        k.token(),
        db.settings().pool().unwrap(),
        Lane::Refresh,
    );

    k.set_ip_blocked(true);
    let err = a.leads_by_ids(&[1]).await.unwrap_err();
    assert!(matches!(err, KommoError::IpBlocked { .. }), "{err:?}");
    k.set_ip_blocked(false);
    let before = k.stats().total;
    let err = b.account_timezone().await.unwrap_err();
    assert!(matches!(err, KommoError::IpBlocked { .. }), "{err:?}");
    assert!(err.body_excerpt().unwrap().contains("paused"), "{err:?}");
    assert_eq!(
        k.stats().total,
        before,
        "the other container did not call Kommo"
    );

    db.client()
        .await
        .batch_execute("UPDATE kommo_request_budget SET blocked_until = NULL")
        .await
        .unwrap();
    let budget = SharedBudget::new(db.pool(), Lane::Webhooks, BudgetSettings::default());
    budget.push_back(Duration::from_millis(800)).await.unwrap();
    let t = Instant::now();
    b.account_timezone().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "Retry-After holds every container back: waited {:?}",
        t.elapsed()
    );
}

/// A Kommo that answers its first request 429 with `Retry-After: 1`, then 204.
async fn kommo_asking_to_wait() -> String {
    use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = Router::new().route(
        "/api/v4/leads",
        get(move || {
            let seen = seen.clone();
            async move {
                match seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{}")
                        .into_response(),
                    _ => StatusCode::NO_CONTENT.into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_retry_after_from_kommo_holds_the_retry_back_for_that_long() {
    let db = TestDb::new().await;
    let url = kommo_asking_to_wait().await;
    let kommo = client(&url, "token", db.pool(), Lane::Webhooks);
    let t = Instant::now();
    kommo.leads_by_ids(&[1]).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "the retry waited for Retry-After, not the client's 50 ms backoff: {:?}",
        t.elapsed()
    );
}
