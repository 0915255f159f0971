//! Scenario 4: the full refresh of a year with 50,000 leads to import, whose
//! main contacts are about 35,000 of the Kommo sandbox's 75,000.
//!
//! The refresh runs in a child process (this same binary, started with a
//! hidden argument), so its peak RSS (`VmHWM`) is that of a process doing
//! only the refresh, as a Lambda container would; the sandbox stays here.
//! The child runs [`run_to_completion`] from the start of the run to the
//! committed swap and reports its time and memory.
//!
//! Two more comparisons are made in the same run:
//! - the staging load of exactly the rows that run staged, page by page in
//!   one transaction per page as the worker writes them, with binary `COPY`
//!   and with one `INSERT` per row (the seed's design);
//! - the refresh again with the client at Kommo's 7 req/s, against the
//!   floor of requests / 7 that the rate limit sets.

use std::{
    collections::{BTreeMap, HashMap},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use sandbox::kommo::{data, KommoOptions, KommoSandbox};
use serde::{Deserialize, Serialize};
use shared::{
    kommo::{KommoClient, KommoClientOptions, MappedContact},
    platform::db::DbSettings,
    platform::flags::FeatureFlags,
    platform::secrets::Redacted,
    refresh::{
        staging::{JsonText, StagedContact, StagedLead, StagedPage, StagedVehicle},
        RefreshSettings, RunStatus, Worker,
    },
};
use testkit::{
    refresh::{run_to_completion, stage_page_with, MemoryQueue, StagingMethod},
    TestDb,
};
use uuid::Uuid;

use super::{
    table::{Quantity, RowBuilder},
    Bench,
};

/// Database time of the whole run (staging writes, checkpoints, swap).
const DB_TIME_TARGET_S: f64 = 5.0;
const RSS_LIMIT_MIB: f64 = 128.0;
const SPEEDUP_TARGET: f64 = 20.0;
const KOMMO_RATE: u32 = 7;
const RATE_TOLERANCE: f64 = 0.05;
/// Marks the child's result line on its stdout.
const RESULT_PREFIX: &str = "BENCH_CHILD_RESULT ";

/// What the parent asks the child to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub db_url: String,
    pub kommo_url: String,
    pub token: String,
    pub year: i32,
    pub rate_per_second: u32,
}

/// What the child reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildResult {
    pub seconds: f64,
    pub vm_hwm_kib: u64,
    pub status: String,
    pub run_id: Uuid,
    pub leads: i32,
    pub contacts: i32,
    pub vehicles: i32,
    pub pages: i32,
    /// The worker's own account of its database writes (from the checkpoint).
    pub staging_ms: u64,
    pub swap_ms: u64,
    /// Leads or contacts the mapping refused (the sandbox seeds a few).
    pub skipped: u64,
}

fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// The child's side: one full refresh, then its time and peak RSS on stdout.
pub fn child_main(spec_json: &str) -> Result<()> {
    let spec: ChildSpec = serde_json::from_str(spec_json).context("child spec")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let pool = DbSettings::from_url(&spec.db_url)
            .and_then(|s| s.pool())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let kommo = KommoClient::with_token(
            &spec.kommo_url,
            Redacted::new(spec.token.clone()),
            KommoClientOptions {
                rate_per_second: spec.rate_per_second,
                ..KommoClientOptions::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let queue = Arc::new(MemoryQueue::default());
        let worker = Worker {
            pool: pool.clone(),
            kommo,
            queue: queue.clone(),
            flags: Arc::new(FeatureFlags::new(pool, Duration::from_secs(10))),
            alerter: None,
            settings: RefreshSettings {
                default_year: Some(spec.year),
                ..RefreshSettings::default()
            },
        };
        let t = Instant::now();
        let run = run_to_completion(&worker, &queue, "bench", spec.year)
            .await
            .map_err(|e| anyhow::anyhow!("full refresh: {e}"))?;
        let seconds = t.elapsed().as_secs_f64();
        let cp = run.checkpoint.clone().unwrap_or_default();
        let ms = |k: &str| cp.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        anyhow::Ok(ChildResult {
            staging_ms: ms("stagingMs"),
            swap_ms: ms("swapMs"),
            skipped: ms("skipped"),
            seconds,
            vm_hwm_kib: 0,
            status: run.status.as_str().to_string(),
            run_id: run.id,
            leads: run.leads,
            contacts: run.contacts,
            vehicles: run.vehicles,
            pages: run.pages_fetched,
        })
    });
    drop(rt);
    let mut result = result?;
    result.vm_hwm_kib = vm_hwm_kib()?;
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Starts this binary as the refresh child and waits for its result.
async fn run_child(spec: &ChildSpec) -> Result<ChildResult> {
    let exe = std::env::current_exe().context("locate the xtask binary")?;
    let out = tokio::process::Command::new(exe)
        .args(["bench", "--child-refresh", &serde_json::to_string(spec)?])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .context("run the refresh child")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the refresh child failed ({}): {stdout}", out.status);
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .context("the refresh child printed no result")?;
    serde_json::from_str(line).context("the refresh child's result")
}

/// An account with `leads` leads created in `year` that the refresh of
/// that year imports, and the closed-lost ones among them that it skips.
fn account(leads: usize, contacts: usize, year: i32) -> data::AccountData {
    let from = Utc
        .with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp());
    let to = Utc
        .with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0)
        .single()
        .map_or(0, |t| t.timestamp());
    // Half the generated leads fall in the reference year and about one in
    // eight of those is closed-lost; generate enough.
    let mut account = data::generate(11, leads * 5 / 2 + 20, contacts, year);
    account
        .leads
        .retain(|l| l.created_at >= from && l.created_at < to);
    let mut importable = 0;
    let keep = account
        .leads
        .iter()
        .position(|l| {
            importable += usize::from(l.status_id != data::STATUS_LOST);
            importable == leads
        })
        .map_or(account.leads.len(), |i| i + 1);
    account.leads.truncate(keep);
    account
}

/// The rows one run staged, read back and cut into the worker's pages.
async fn staged_pages(db: &TestDb, run_id: Uuid, page_size: usize) -> Result<Vec<StagedPage>> {
    let c = db.client().await;
    let leads = staged_leads(&c, run_id).await?;
    let contacts = staged_contacts(&c, run_id).await?;
    let vehicles = staged_vehicles(&c, run_id).await?;
    Ok(into_pages(leads, contacts, vehicles, page_size))
}

async fn staged_leads(c: &tokio_postgres::Client, run_id: Uuid) -> Result<Vec<StagedLead>> {
    Ok(c.query(
        "SELECT lead_id, payload, contact_id, vehicle_enum_id, source_enum_id, created_at,
                updated_at, name, status_id, pipeline_id, price, responsible_user_id,
                owner_id, booking_status, excluded, start_at, end_at, lead_source, closed_at
           FROM stg_kommo_leads WHERE run_id = $1 ORDER BY lead_id",
        &[&run_id],
    )
    .await?
    .iter()
    .map(|r| StagedLead {
        lead_id: r.get(0),
        payload: r.get(1),
        contact_id: r.get(2),
        vehicle_enum_id: r.get(3),
        source_enum_id: r.get(4),
        created_at: r.get::<_, Option<DateTime<Utc>>>(5),
        updated_at: r.get::<_, Option<DateTime<Utc>>>(6),
        name: r.get(7),
        status_id: r.get::<_, Option<i64>>(8).unwrap_or_default(),
        pipeline_id: r.get(9),
        price: r.get(10),
        responsible_user_id: r.get(11),
        owner_id: r.get(12),
        booking_status: r.get::<_, Option<String>>(13).unwrap_or_default(),
        excluded: r.get(14),
        start_at: r.get(15),
        end_at: r.get(16),
        lead_source: r.get(17),
        closed_at: r.get(18),
    })
    .collect())
}

async fn staged_contacts(
    c: &tokio_postgres::Client,
    run_id: Uuid,
) -> Result<HashMap<i64, StagedContact>> {
    Ok(c.query(
        "SELECT contact_id, payload, full_name, first_name, last_name, email, phone,
                phone_normalized, updated_at
           FROM stg_kommo_contacts WHERE run_id = $1",
        &[&run_id],
    )
    .await?
    .iter()
    .map(|r| {
        let id: i64 = r.get(0);
        (
            id,
            StagedContact {
                contact: MappedContact {
                    contact_id: id,
                    full_name: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    first_name: r.get(3),
                    last_name: r.get(4),
                    email: r.get(5),
                    phone: r.get(6),
                    phone_normalized: r.get(7),
                    updated_at: r.get(8),
                },
                payload: r.get(1),
            },
        )
    })
    .collect())
}

/// The staged vehicles by lead.
async fn staged_vehicles(
    c: &tokio_postgres::Client,
    run_id: Uuid,
) -> Result<BTreeMap<i64, Vec<StagedVehicle>>> {
    let mut vehicles: BTreeMap<i64, Vec<StagedVehicle>> = BTreeMap::new();
    for r in c
        .query(
            "SELECT lead_id, vehicle_enum_id, vehicle_name, is_primary
               FROM stg_kommo_booking_vehicles WHERE run_id = $1",
            &[&run_id],
        )
        .await?
    {
        let v = StagedVehicle {
            lead_id: r.get(0),
            vehicle_enum_id: r.get(1),
            vehicle_name: r.get(2),
            is_primary: r.get(3),
        };
        vehicles.entry(v.lead_id).or_default().push(v);
    }
    Ok(vehicles)
}

/// Pages of `page_size` leads. A contact goes with the first page that
/// needs it, as the worker stages it; the unclaimed rest goes with the last.
fn into_pages(
    leads: Vec<StagedLead>,
    mut contacts: HashMap<i64, StagedContact>,
    mut vehicles: BTreeMap<i64, Vec<StagedVehicle>>,
    page_size: usize,
) -> Vec<StagedPage> {
    let mut pages = Vec::new();
    for chunk in leads.chunks(page_size.max(1)) {
        let mut page = StagedPage::default();
        for l in chunk {
            if let Some(c) = l.contact_id.and_then(|id| contacts.remove(&id)) {
                page.contacts.push(c);
            }
            page.vehicles
                .extend(vehicles.remove(&l.lead_id).unwrap_or_default());
        }
        page.leads = chunk.to_vec();
        pages.push(page);
    }
    if let Some(last) = pages.last_mut() {
        last.contacts.extend(contacts.into_values());
        last.vehicles.extend(vehicles.into_values().flatten());
    }
    pages
}

/// Stages `pages` under a new run, one transaction per page; returns seconds.
async fn load(db: &TestDb, year: i32, pages: &[StagedPage], method: StagingMethod) -> Result<f64> {
    let mut c = db.client().await;
    let run_id: Uuid = c
        .query_one(
            "INSERT INTO kommo_import_runs (triggered_by, status, year, phase)
             VALUES ('bench-staging', 'failed', $1, 'bench') RETURNING id",
            &[&year],
        )
        .await?
        .get(0);
    let t = Instant::now();
    for page in pages {
        let tx = c.transaction().await?;
        stage_page_with(&tx, run_id, page, method)
            .await
            .map_err(|e| anyhow::anyhow!("staging: {e}"))?;
        tx.commit().await?;
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn refresh_db() -> TestDb {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    db
}

/// The account the refresh reads: its year and how many of its leads count.
struct Account {
    kommo: KommoSandbox,
    year: i32,
    contacts: usize,
    in_year: usize,
    importable: usize,
}

/// One refresh run in the child, and the requests it made to the sandbox.
struct Measured {
    result: ChildResult,
    requests: u64,
}

/// The staging load of one run's rows, both ways.
struct StagingComparison {
    rows: usize,
    pages: usize,
    copy_s: f64,
    rows_s: f64,
    /// The same COPY with every payload replaced by `{}`: what the rows
    /// cost without Kommo's raw JSON, the floor no framing can go under.
    bare_s: f64,
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let account = start_account(b).await?;

    // 1. Zero latency, client rate limit lifted: the refresh's own cost.
    let db = refresh_db().await;
    let spec = ChildSpec {
        db_url: db.url.clone(),
        kommo_url: account.kommo.base_url(),
        token: account.kommo.token().to_string(),
        year: account.year,
        rate_per_second: 10_000,
    };
    let fast = measure(&account.kommo, &spec, "the full refresh").await?;
    if (fast.result.leads as usize) + (fast.result.skipped as usize) < account.importable {
        bail!(
            "the refresh staged {} of {} importable leads ({} skipped)",
            fast.result.leads,
            account.importable,
            fast.result.skipped
        );
    }

    // 2. The same load, staged page by page: COPY against one INSERT per row.
    let staging = compare_staging(&db, fast.result.run_id, account.year).await?;

    // 3. Kommo's 7 req/s, against the floor that limit sets.
    let db7 = refresh_db().await;
    let limited = ChildSpec {
        db_url: db7.url.clone(),
        rate_per_second: KOMMO_RATE,
        ..spec.clone()
    };
    let limited = measure(&account.kommo, &limited, "the rate-limited full refresh").await?;

    push_refresh_rows(b, &account, &fast);
    push_staging_row(b, &staging);
    push_rate_row(b, &limited);
    Ok(())
}

/// The Kommo sandbox with last year's leads, the year the refresh imports.
async fn start_account(b: &Bench) -> Result<Account> {
    let (n, contacts) = (b.sizes.refresh_leads, b.sizes.refresh_contacts);
    let year = Utc::now().year() - 1;
    let opts = KommoOptions {
        seed: 11,
        leads: n,
        contacts,
        year: Some(year),
        ..KommoOptions::default()
    };
    let kommo = KommoSandbox::start_with(opts, account(n, contacts, year), year).await?;
    let in_year = kommo.leads().len();
    // Closed-lost leads are not imported (seed 001).
    let importable = kommo
        .leads()
        .iter()
        .filter(|l| l.status_id != data::STATUS_LOST)
        .count();
    Ok(Account {
        kommo,
        year,
        contacts,
        in_year,
        importable,
    })
}

/// Runs the refresh child on `spec`; `what` must succeed.
async fn measure(kommo: &KommoSandbox, spec: &ChildSpec, what: &str) -> Result<Measured> {
    kommo.reset_stats();
    let result = run_child(spec).await?;
    if result.status != RunStatus::Succeeded.as_str() {
        bail!("{what} ended {}", result.status);
    }
    Ok(Measured {
        result,
        requests: kommo.stats().total,
    })
}

async fn compare_staging(db: &TestDb, run_id: Uuid, year: i32) -> Result<StagingComparison> {
    let pages = staged_pages(db, run_id, RefreshSettings::default().page_limit as usize).await?;
    let rows: usize = pages
        .iter()
        .map(|p| p.leads.len() + p.contacts.len() + p.vehicles.len())
        .sum();
    let copy_s = load(db, year, &pages, StagingMethod::BinaryCopy).await?;
    let rows_s = load(db, year, &pages, StagingMethod::RowInserts).await?;
    let bare = without_payloads(pages);
    let bare_s = load(db, year, &bare, StagingMethod::BinaryCopy).await?;
    Ok(StagingComparison {
        rows,
        pages: bare.len(),
        copy_s,
        rows_s,
        bare_s,
    })
}

fn without_payloads(mut pages: Vec<StagedPage>) -> Vec<StagedPage> {
    let empty = JsonText::of(&serde_json::json!({}));
    for p in &mut pages {
        p.leads.iter_mut().for_each(|l| l.payload = empty.clone());
        p.contacts
            .iter_mut()
            .for_each(|c| c.payload = empty.clone());
    }
    pages
}

/// The unthrottled refresh's time and peak memory.
fn push_refresh_rows(b: &mut Bench, account: &Account, fast: &Measured) {
    let Account {
        year,
        contacts,
        in_year,
        importable,
        ..
    } = account;
    let (r, fast_requests) = (&fast.result, fast.requests);
    let rss_mib = r.vm_hwm_kib as f64 / 1024.0;
    let size = format!("{} leads + {} contacts", r.leads, r.contacts);
    let db_s = (r.staging_ms + r.swap_ms) as f64 / 1000.0;
    b.push(
        RowBuilder::new(
            "full refresh",
            format!("fetch → swap, database time, {size}"),
            Quantity::new(db_s, "s"),
        )
        .baseline("limit", Quantity::new(DB_TIME_TARGET_S, "s"))
        .target(
            format!("< {DB_TIME_TARGET_S:.0} s"),
            db_s < DB_TIME_TARGET_S,
            b.judged(),
        )
        .detail(format!(
            "the worker's own account: {} ms writing staging and checkpoints, {} ms swapping; \
             zero-latency sandbox ({contacts} contacts in the account, {in_year} leads in {year}, \
             {importable} of them not closed-lost), client rate limit lifted; {fast_requests} requests, \
             {} pages, {} vehicles, {} records refused by the mapping",
            r.staging_ms, r.swap_ms, r.pages, r.vehicles, r.skipped
        ))
        .build(),
    );
    b.push(
        RowBuilder::new(
            "full refresh",
            format!("fetch → swap, wall time, {size}"),
            Quantity::new(r.seconds, "s"),
        )
        .baseline("database time", Quantity::new(db_s, "s"))
        .target("information only", true, false)
        .detail(
            "the rest is the sandbox's HTTP answers and the worker's JSON parsing and mapping, \
             in two processes on the same two cores",
        )
        .build(),
    );
    b.push(
        RowBuilder::new(
            "full refresh",
            "peak RSS of the refresh process",
            Quantity::new(rss_mib, "MiB"),
        )
        .baseline("Lambda memory limit", Quantity::new(RSS_LIMIT_MIB, "MiB"))
        .target(
            format!("< {RSS_LIMIT_MIB:.0} MiB"),
            rss_mib < RSS_LIMIT_MIB,
            b.judged(),
        )
        .detail("VmHWM of a child process that ran only the refresh (sandbox in the parent)")
        .build(),
    );
}

fn push_staging_row(b: &mut Bench, s: &StagingComparison) {
    let speedup = s.rows_s / s.copy_s;
    b.push(
        RowBuilder::new(
            "full refresh",
            format!("staging load, binary COPY ({} rows)", s.rows),
            Quantity::new(s.copy_s, "s"),
        )
        .baseline("one INSERT per row", Quantity::new(s.rows_s, "s"))
        .ratio(Some(speedup))
        .target(
            format!("≥ {SPEEDUP_TARGET:.0}× faster"),
            speedup >= SPEEDUP_TARGET,
            b.judged(),
        )
        .detail(format!(
            "the rows of the run above, {} pages, one transaction per page; ratio = speed-up; \
             {:.0} vs {:.0} rows/s",
            s.pages,
            s.rows as f64 / s.copy_s,
            s.rows as f64 / s.rows_s
        ))
        .build(),
    );
    let bare_speedup = s.rows_s / s.bare_s;
    b.push(
        RowBuilder::new(
            "full refresh",
            "staging load, binary COPY, payloads replaced by {}",
            Quantity::new(s.bare_s, "s"),
        )
        .baseline("one INSERT per row", Quantity::new(s.rows_s, "s"))
        .ratio(Some(bare_speedup))
        .target("information only", true, false)
        .detail(
            "the same rows without Kommo's raw JSON: how much of the COPY is the payload, \
             and the ratio even a staging without it would reach",
        )
        .build(),
    );
}

/// The refresh at Kommo's rate against the floor of requests / rate.
fn push_rate_row(b: &mut Bench, limited: &Measured) {
    let limited_requests = limited.requests;
    let floor = limited_requests as f64 / f64::from(KOMMO_RATE);
    let off = (limited.result.seconds - floor).abs() / floor;
    b.push(
        RowBuilder::new(
            "full refresh",
            format!("fetch → swap at {KOMMO_RATE} req/s"),
            Quantity::new(limited.result.seconds, "s"),
        )
        .baseline(
            format!("requests / {KOMMO_RATE} ({limited_requests} requests)"),
            Quantity::new(floor, "s"),
        )
        .target(
            format!("within {:.0}%", RATE_TOLERANCE * 100.0),
            off <= RATE_TOLERANCE,
            b.judged(),
        )
        .detail(format!(
            "client at KOMMO_RATE_PER_SECOND={KOMMO_RATE}; peak RSS {:.1} MiB",
            limited.result.vm_hwm_kib as f64 / 1024.0
        ))
        .build(),
    );
}
