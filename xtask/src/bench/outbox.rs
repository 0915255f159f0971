//! Scenario 3: the outbox drain against the Zoho sandbox with 20 ms latency.
//!
//! `N` clients with a pending `contact.upsert` each are drained by the real
//! [`Drain`] (claim with lease, batched upserts, settle). Zoho charges API
//! credits per call, so the figure is calls per row. The baseline is the
//! seed's design, one call per row, run with the same concurrency against a
//! fresh sandbox with the same latency; because that design is linear in the
//! row count, it runs on at most 1,000 rows and its wall time is scaled to `N`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use sandbox::zoho::{ZohoOptions, ZohoSandbox, ENDPOINT_TOKEN};
use serde_json::{json, Value};
use shared::{
    outbox::{self, Drain},
    platform::config::Config,
    platform::flags::FeatureFlags,
    platform::secrets::ZohoSecret,
    zoho::{LazyZohoClient, ZohoClient},
};
use testkit::TestDb;
use uuid::Uuid;

use super::{
    lockstep::drain_all,
    table::{Quantity, RowBuilder},
    Bench,
};

const LATENCY: Duration = Duration::from_millis(20);
const CALLS_PER_ROW_TARGET: f64 = 0.01;
const WALL_TARGET_S: f64 = 10.0;
const BASELINE_MAX_ROWS: usize = 1_000;

/// The settings a deployed function has by default, read the same way.
pub(super) fn default_config(db_url: &str) -> Result<Config> {
    let url = db_url.to_string();
    Config::from_lookup(&[], move |k| (k == "DATABASE_URL").then(|| url.clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `n` clients, each with its `contact.upsert` enqueued, in one transaction.
async fn seed(db: &TestDb, n: usize) -> Result<Vec<Uuid>> {
    let mut c = db.client().await;
    let tx = c.transaction().await?;
    let ids: Vec<Uuid> = tx
        .query(
            "INSERT INTO clients (full_name, first_name, last_name, email, phone)
             SELECT 'Bench Client' || i, 'Bench', 'Client' || i,
                    'bench' || i || '@example.com', '+1555' || lpad(i::text, 7, '0')
               FROM generate_series(1, $1::int) AS i
             RETURNING id",
            &[&(n as i32)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &ids {
        outbox::enqueue_contact_upsert(&tx, *id).await?;
    }
    tx.commit().await?;
    Ok(ids)
}

pub(super) fn zoho_client(db: &TestDb, z: &ZohoSandbox, cfg: &Config) -> Result<ZohoClient> {
    let secret: ZohoSecret =
        serde_json::from_value(z.secret_json()).context("sandbox secret shape")?;
    ZohoClient::new(secret, cfg.zoho.clone(), db.pool()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// CRM API calls (the ones that cost credits): everything but the token endpoint.
fn api_calls(z: &ZohoSandbox) -> u64 {
    z.state()
        .calls
        .iter()
        .filter(|(k, _)| k.as_str() != ENDPOINT_TOKEN)
        .map(|(_, v)| *v)
        .sum()
}

async fn drain_run(n: usize) -> Result<(f64, u64, u64)> {
    let db = TestDb::new().await;
    db.set_flag("enableZohoLive", true).await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await?;
    z.set_latency(LATENCY);
    seed(&db, n).await?;
    let cfg = default_config(&db.url)?;
    let mut settings = cfg.outbox.clone();
    settings.deadline_margin = Duration::from_secs(1);
    let pool = db.pool();
    let drain = Drain::new(
        pool.clone(),
        Arc::new(FeatureFlags::new(pool, Duration::from_secs(10))),
        settings,
        Arc::new(LazyZohoClient::ready(Arc::new(zoho_client(&db, &z, &cfg)?))),
    );
    let t = Instant::now();
    // One scheduled run drains everything due; more runs only if it stopped early.
    let succeeded = drain_all(&drain).await?;
    let wall = t.elapsed().as_secs_f64();
    if succeeded as usize != n {
        bail!("the drain sent {succeeded} of {n} rows");
    }
    let sent = z.state().contacts.len();
    if sent != n {
        bail!("Zoho holds {sent} contacts after draining {n} rows");
    }
    let token_calls = z.state().calls_to(ENDPOINT_TOKEN);
    Ok((wall, api_calls(&z), token_calls))
}

/// The seed's design: one upsert call per row, `concurrency` at a time.
async fn one_call_per_row(m: usize, concurrency: usize) -> Result<(f64, u64)> {
    let db = TestDb::new().await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await?;
    z.set_latency(LATENCY);
    seed(&db, m).await?;
    let cfg = default_config(&db.url)?;
    let client = Arc::new(zoho_client(&db, &z, &cfg)?);
    let records: Vec<Value> = db
        .client()
        .await
        .query(
            "SELECT first_name, last_name, email, phone FROM clients ORDER BY created_at, id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "First_Name": r.get::<_, Option<String>>(0),
                "Last_Name": r.get::<_, Option<String>>(1),
                "Email": r.get::<_, Option<String>>(2),
                "Phone": r.get::<_, Option<String>>(3),
            })
        })
        .collect();
    // The token is fetched once up front, as the drain does, so only the row calls are timed.
    client
        .access_token()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    stream::iter(records.into_iter().map(|rec| {
        let client = client.clone();
        async move {
            client
                .upsert_contacts(std::slice::from_ref(&rec))
                .await
                .map_err(|e| anyhow::anyhow!("upsert: {e}"))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<_>>()
    .await?;
    let wall = t.elapsed().as_secs_f64();
    let sent = z.state().contacts.len();
    if sent != m {
        bail!("the one-call-per-row baseline left {sent} of {m} contacts in Zoho");
    }
    Ok((wall, api_calls(&z)))
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let n = b.sizes.outbox_rows;
    let concurrency = default_config("postgres://x@127.0.0.1/x")?
        .outbox
        .zoho_concurrency;
    let (wall, calls, token_calls) = drain_run(n).await?;
    let m = n.min(BASELINE_MAX_ROWS);
    let (base_wall_m, base_calls) = one_call_per_row(m, concurrency).await?;
    let base_wall = base_wall_m * n as f64 / m as f64;
    let per_row = calls as f64 / n as f64;
    let base_per_row = base_calls as f64 / m as f64;

    b.push(
        RowBuilder::new(
            "outbox drain",
            format!("Zoho API calls per row ({n} rows)"),
            Quantity::new(per_row, "calls/row"),
        )
        .baseline("one call per row", Quantity::new(base_per_row, "calls/row"))
        .target(
            format!("≤ {CALLS_PER_ROW_TARGET}"),
            per_row <= CALLS_PER_ROW_TARGET + 1e-9,
            b.judged(),
        )
        .detail(format!(
            "{calls} CRM calls for {n} contact.upsert rows (plus {token_calls} token refresh); \
             baseline {base_calls} calls for {m} rows"
        ))
        .build(),
    );
    b.push(
        RowBuilder::new(
            "outbox drain",
            format!("wall time, {n} rows"),
            Quantity::new(wall, "s"),
        )
        .baseline(
            if m == n {
                "one call per row".to_string()
            } else {
                format!(
                    "one call per row (×{:.0} from {m} rows)",
                    n as f64 / m as f64
                )
            },
            Quantity::new(base_wall, "s"),
        )
        .target(
            format!("< {WALL_TARGET_S:.0} s"),
            wall < WALL_TARGET_S,
            b.judged(),
        )
        .detail(format!(
            "Zoho sandbox latency {} ms per call, ZOHO_CONCURRENCY {concurrency} for both; \
             baseline measured {base_wall_m:.2} s for {m} rows",
            LATENCY.as_millis()
        ))
        .build(),
    );
    Ok(())
}
