//! Scenario 6: the account's one Kommo budget across containers.
//!
//! Three webhook processors and a full refresh (two pages in flight) run at
//! once against the Kommo sandbox's 7 req/s limit, each with its own
//! database pool and Kommo client, as four containers would. The figure is
//! their combined request rate as a share of the limit, with the 429s
//! Kommo answered. The baseline is the same four with a limiter each and no
//! shared budget, as before the budget existed.

use std::time::{Duration, Instant};

use anyhow::Result;
use sandbox::kommo::{KommoOptions, KommoSandbox};
use shared::{
    kommo::{BudgetSettings, KommoClient, KommoClientOptions, Lane, SharedBudget},
    platform::secrets::Redacted,
};
use testkit::TestDb;

use super::{
    table::{Quantity, RowBuilder},
    Bench,
};

const LIMIT: f64 = 7.0;
const SHARE_TARGET: f64 = 0.85;

/// What Kommo saw: requests per second and 429s.
struct Seen {
    rate: f64,
    refused: usize,
    requests: usize,
}

/// Four containers for `run`; `shared` gives them the account's budget,
/// otherwise each limits itself to 7 req/s.
async fn four_containers(
    db: &TestDb,
    k: &KommoSandbox,
    run: Duration,
    shared: bool,
) -> Result<Seen> {
    k.reset_stats();
    let until = Instant::now() + run;
    let lanes = [
        Lane::Webhooks,
        Lane::Webhooks,
        Lane::Webhooks,
        Lane::Refresh,
        Lane::Refresh,
    ];
    let work = lanes.iter().enumerate().map(|(n, lane)| {
        let mut kommo = KommoClient::with_token(
            &k.base_url(),
            Redacted::new(k.token()),
            KommoClientOptions {
                retry_min_delay: Duration::from_millis(50),
                retry_max_delay: Duration::from_millis(500),
                ..KommoClientOptions::default()
            },
        )
        .expect("sandbox URL");
        if shared {
            let pool = db.settings().pool().expect("pool");
            kommo = kommo.sharing_budget(SharedBudget::new(pool, *lane, BudgetSettings::default()));
        }
        let lane = *lane;
        async move {
            let mut page = n as u32;
            while Instant::now() < until {
                // Errors (429s after retries) are what the figure counts, not a failure.
                let _ = match lane {
                    Lane::Refresh => kommo
                        .leads_page(0, i64::MAX, page % 40 + 1, 10)
                        .await
                        .map(drop),
                    Lane::Webhooks => kommo.leads_by_ids(&[1]).await.map(drop),
                };
                page += 2;
            }
        }
    });
    futures::future::join_all(work).await;
    let requests = k.requests();
    let first = requests.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = requests.iter().map(|r| r.at_ms).max().unwrap_or(1);
    let ok = requests.iter().filter(|r| r.status != 429).count();
    Ok(Seen {
        rate: ok.saturating_sub(1) as f64 / ((last - first).max(1) as f64 / 1000.0),
        refused: requests.len() - ok,
        requests: requests.len(),
    })
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let run = Duration::from_secs(if b.smoke { 3 } else { 15 });
    let db = TestDb::new().await;
    let k = KommoSandbox::start(KommoOptions {
        leads: 400,
        contacts: 50,
        ..KommoOptions::default()
    })
    .await?;
    k.set_rate_limit(Some(LIMIT as u32));
    let shared = four_containers(&db, &k, run, true).await?;
    let alone = four_containers(&db, &k, run, false).await?;
    let share = shared.rate / LIMIT;
    b.push(
        RowBuilder::new(
            "Kommo budget",
            "3 processors + a refresh: share of 7 req/s used",
            Quantity::new(share, "× limit"),
        )
        .baseline(
            "a limiter per container",
            Quantity::new(alone.rate / LIMIT, "× limit"),
        )
        .target(
            format!("≥ {SHARE_TARGET}× and zero 429s"),
            share >= SHARE_TARGET && shared.refused == 0,
            b.judged(),
        )
        .detail(format!(
            "{:.0} s each; shared budget: {} requests, {} answered 429; per-container \
             limiters: {} requests, {} answered 429",
            run.as_secs_f64(),
            shared.requests,
            shared.refused,
            alone.requests,
            alone.refused
        ))
        .build(),
    );
    Ok(())
}
