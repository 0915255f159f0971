//! Scenario 7: Zoho in lockstep (issue 15).
//!
//! - Calls per change: `N / 5` clients, each with a booking, that Zoho holds
//!   in step take `N` changes in five rounds: every client's email, then
//!   every booking's price, dates, cancellation, and a column Zoho does not
//!   receive. Each round is queued by the producers' statement in
//!   transactions of 100 changes and drained into the Zoho sandbox before
//!   the next, as the minute's ticks would. The baseline is one call per
//!   change.
//! - Reconcile: a full pass over `M` bookings (and their clients) that are
//!   all in step; it must queue nothing, so its time is the cost of looking.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use sandbox::zoho::{ZohoOptions, ZohoSandbox, ENDPOINT_TOKEN};
use serde_json::{json, Map, Value};
use shared::{
    outbox::{
        lockstep::{enqueue_changed, Table},
        reconcile, Drain, ReconcileLimits,
    },
    platform::{deadline::Deadline, flags::FeatureFlags},
    zoho::LazyZohoClient,
};
use testkit::TestDb;
use uuid::Uuid;

use super::{
    outbox::{default_config, zoho_client},
    table::{Quantity, RowBuilder},
    Bench,
};

const CALLS_PER_CHANGE_TARGET: f64 = 0.02;
const RECONCILE_TARGET_S: f64 = 2.0;
const CHANGES_PER_TX: usize = 100;

/// `clients` clients with `per_client` bookings each, in step with Zoho:
/// Zoho ids set (`zoho_ids`, or fakes) and fingerprints as the drain stores them.
async fn seed_in_step(
    db: &TestDb,
    clients: usize,
    per_client: usize,
    zoho_ids: Option<(&[String], &[String])>,
) -> Result<()> {
    let c = db.client().await;
    c.execute(
        "WITH c AS (
             INSERT INTO clients (full_name, first_name, last_name, email, phone, zoho_contact_id)
             SELECT 'Bench Client ' || i, 'Bench', 'Client' || i, 'bench' || i || '@example.com',
                    '+1555' || lpad(i::text, 7, '0'), 'ZC' || i
               FROM generate_series(1, $1::int) AS i
             RETURNING id, zoho_contact_id)
         INSERT INTO bookings (channel, created_by, client_id, title, total_amount, currency,
                               start_at, end_at, zoho_sales_order_id, zoho_sync_status)
         SELECT 'Kommo', 'bench', c.id, 'Bench booking', 100, 'EUR', now(), now() + interval '1 day',
                c.zoho_contact_id || '-' || j, 'synced'
           FROM c, generate_series(1, $2::int) AS j",
        &[&(clients as i32), &(per_client as i32)],
    )
    .await?;
    if let Some((contacts, orders)) = zoho_ids {
        c.execute(
            "UPDATE clients c SET zoho_contact_id = u.zid
               FROM unnest($1::text[], $2::text[]) AS u(old, zid) WHERE c.zoho_contact_id = u.old",
            &[
                &(1..=contacts.len())
                    .map(|i| format!("ZC{i}"))
                    .collect::<Vec<_>>(),
                &contacts,
            ],
        )
        .await?;
        c.execute(
            "UPDATE bookings b SET zoho_sales_order_id = u.zid
               FROM unnest($1::text[], $2::text[]) AS u(old, zid) WHERE b.zoho_sales_order_id = u.old",
            &[&(1..=orders.len()).map(|i| format!("ZC{i}-1")).collect::<Vec<_>>(), &orders],
        )
        .await?;
    }
    c.batch_execute(
        "UPDATE clients SET zoho_fingerprint =
                zoho_contact_fingerprint(full_name, first_name, last_name, email, phone);
         UPDATE bookings SET zoho_fingerprint =
                zoho_order_fingerprint(client_id, title, external_code, total_amount, currency,
                                       start_at, end_at, status, is_active);",
    )
    .await?;
    Ok(())
}

/// One set-based statement per round of changes, over `(id, k)` pairs: the
/// first changes a client, the rest a booking; only the last does not
/// touch what Zoho receives.
const CHANGES: [&str; 5] = [
    "UPDATE clients c SET email = 'bench' || u.k || '@changed.example', updated_at = now()
       FROM unnest($1::uuid[], $2::int[]) AS u(id, k) WHERE c.id = u.id",
    "UPDATE bookings b SET total_amount = 100 + u.k, updated_at = now()
       FROM unnest($1::uuid[], $2::int[]) AS u(id, k) WHERE b.id = u.id",
    "UPDATE bookings b SET start_at = b.start_at + interval '1 hour', updated_at = now()
       FROM unnest($1::uuid[], $2::int[]) AS u(id, k) WHERE b.id = u.id",
    "UPDATE bookings b SET is_active = NOT b.is_active, updated_at = now()
       FROM unnest($1::uuid[], $2::int[]) AS u(id, k) WHERE b.id = u.id",
    "UPDATE bookings b SET notes = 'note ' || u.k, updated_at = now()
       FROM unnest($1::uuid[], $2::int[]) AS u(id, k) WHERE b.id = u.id",
];

async fn ids(db: &TestDb, table: &str) -> Result<Vec<Uuid>> {
    let sql = format!("SELECT id FROM {table} ORDER BY id");
    let rows = db.client().await.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Change `k` of `round` for the entities `from..to`, applied and queued in
/// one transaction, as a producer does.
async fn apply_changes(
    db: &TestDb,
    round: usize,
    entities: &[Uuid],
    from: usize,
    to: usize,
) -> Result<()> {
    let ids: Vec<Uuid> = entities[from..to].to_vec();
    let ks: Vec<i32> = (from..to)
        .map(|i| (round * entities.len() + i) as i32)
        .collect();
    let mut c = db.client().await;
    let tx = c.transaction().await?;
    tx.execute(CHANGES[round], &[&ids, &ks]).await?;
    let table = if round == 0 {
        Table::Clients
    } else {
        Table::Bookings
    };
    enqueue_changed(&tx, table, &ids).await?;
    tx.commit().await?;
    Ok(())
}

/// Drains until nothing is due (one scheduled run does, unless it stopped
/// early); the rows sent. A failed row fails the benchmark.
pub(super) async fn drain_all(drain: &Drain) -> Result<u64> {
    let mut drained = 0;
    for _ in 0..20 {
        let report = drain
            .run(drain.deadline_in(Duration::from_secs(14 * 60)))
            .await
            .map_err(|e| anyhow::anyhow!("drain: {e}"))?;
        if report.failed > 0 {
            bail!("{} rows failed: {:?}", report.failed, report.stop_detail);
        }
        drained += report.succeeded;
        if report.claimed == 0 {
            break;
        }
    }
    Ok(drained)
}

fn drain(db: &TestDb, z: &ZohoSandbox) -> Result<Drain> {
    let mut cfg = default_config(&db.url)?;
    // Orders need a product for their line item (ZOHO_PRODUCT_ID).
    cfg.zoho.product_id = Some("5725767000011358006".into());
    let client = zoho_client(db, z, &cfg)?;
    let pool = db.pool();
    Ok(Drain::new(
        pool.clone(),
        Arc::new(FeatureFlags::new(pool, Duration::from_secs(10))),
        cfg.outbox.clone(),
        Arc::new(LazyZohoClient::ready(Arc::new(client))),
    ))
}

fn record(pairs: &[(&str, String)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

/// `n` mixed changes drained into Zoho: (CRM calls, rows drained).
async fn changes_run(n: usize) -> Result<(u64, u64)> {
    let db = TestDb::new().await;
    db.set_flag("enableZohoLive", true).await;
    let z = ZohoSandbox::start(ZohoOptions::default()).await?;
    let e = n.div_ceil(CHANGES.len());
    let contacts: Vec<String> = (1..=e)
        .map(|i| z.insert_contact(record(&[("Last_Name", format!("Client{i}"))])))
        .collect();
    let orders: Vec<String> = (1..=e)
        .map(|i| z.insert_sales_order(record(&[("Subject", format!("Bench booking {i}"))])))
        .collect();
    seed_in_step(&db, e, 1, Some((&contacts, &orders))).await?;
    let (clients, bookings) = (ids(&db, "clients").await?, ids(&db, "bookings").await?);
    let drain = drain(&db, &z)?;
    let mut drained = 0;
    for round in 0..CHANGES.len() {
        let entities = if round == 0 { &clients } else { &bookings };
        // The last round may be short when `n` is not a multiple of five.
        let len = e.min(n.saturating_sub(round * e));
        for from in (0..len).step_by(CHANGES_PER_TX) {
            apply_changes(&db, round, entities, from, (from + CHANGES_PER_TX).min(len)).await?;
        }
        drained += drain_all(&drain).await?;
    }
    let left = db
        .count("integrations_outbox WHERE status <> 'succeeded'")
        .await;
    if left > 0 {
        bail!("{left} outbox rows were not sent");
    }
    let s = z.state();
    if s.contacts.len() != e || s.sales_orders.len() != e {
        bail!("Zoho gained records: updates must not create any");
    }
    let calls = s
        .calls
        .iter()
        .filter(|(k, _)| *k != ENDPOINT_TOKEN)
        .map(|(_, v)| *v)
        .sum();
    Ok((calls, drained))
}

/// A full reconcile pass over `m` in-step bookings (two per client):
/// (seconds, rows queued, rows looked at).
async fn reconcile_run(m: usize) -> Result<(f64, i64, i64)> {
    let db = TestDb::new().await;
    seed_in_step(&db, m.div_ceil(2), 2, None).await?;
    let mut c = db.client().await;
    let deadline = Deadline::after(Duration::from_secs(600), Duration::ZERO);
    let t = Instant::now();
    let (mut enqueued, mut scanned) = (0, 0);
    loop {
        let r = reconcile(&mut c, deadline, ReconcileLimits::default())
            .await
            .map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        enqueued += r.enqueued;
        scanned += r.clients_scanned + r.bookings_scanned;
        if r.complete {
            break;
        }
    }
    Ok((t.elapsed().as_secs_f64(), enqueued, scanned))
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let n = b.sizes.lockstep_changes;
    let (calls, drained) = changes_run(n).await?;
    let per_change = calls as f64 / n as f64;
    b.push(
        RowBuilder::new(
            "zoho lockstep",
            format!("Zoho calls per changed row ({n} mixed changes)"),
            Quantity::new(per_change, "calls/row"),
        )
        .baseline("one call per change", Quantity::new(1.0, "calls/row"))
        .target(
            format!("≤ {CALLS_PER_CHANGE_TARGET}"),
            per_change <= CALLS_PER_CHANGE_TARGET + 1e-9,
            b.judged(),
        )
        .detail(format!(
            "{calls} CRM calls for {n} changes to {} clients and their bookings in five rounds \
             (emails, prices, dates, cancellations, an unrelated column), {drained} outbox rows",
            n.div_ceil(5)
        ))
        .build(),
    );
    let m = b.sizes.reconcile_bookings;
    let (secs, enqueued, scanned) = reconcile_run(m).await?;
    if enqueued != 0 {
        bail!("reconcile queued {enqueued} rows for in-step bookings");
    }
    b.push(
        RowBuilder::new(
            "zoho lockstep",
            format!("reconcile, {m} in-step bookings"),
            Quantity::new(secs, "s"),
        )
        .target(
            format!("< {RECONCILE_TARGET_S:.0} s"),
            secs < RECONCILE_TARGET_S,
            b.judged(),
        )
        .detail(format!(
            "one pass over {scanned} clients and bookings in pages of {}; nothing queued",
            shared::outbox::reconcile::DEFAULT_PAGE_ROWS
        ))
        .build(),
    );
    Ok(())
}
