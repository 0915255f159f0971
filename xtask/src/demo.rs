//! `cargo xtask demo`: the whole story, end to end, against the sandboxes,
//! through `cargo lambda watch` and the local SQS/schedule wiring; and
//! `cargo xtask events`: every sample event in `events/` invoked with the
//! real `cargo lambda invoke`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sandbox::{
    kommo::{
        data::{
            date_time_field, vehicle_field, vehicles, FIELD_COLLECT, FIELD_DELIVERY, STATUS_WON,
        },
        SandboxContact, SandboxLead, WebhookAction, WebhookEvent,
    },
    wiring::{HttpInvoker, Invoker, PumpConfig, ScheduleTicker, SqsPump, StopHandle},
    zoho::{ENDPOINT_CONTACTS_UPSERT, ENDPOINT_SALES_ORDERS},
};
use serde_json::Value;

use crate::{
    dev::start_lambda_watch,
    devstack::{wait_until, DevOptions, DevStack},
    root, stack,
};

const EXCLUDED: [i64; 4] = [142, 143, 79790631, 91703923];

/// The running system: the stack, `cargo lambda watch`, pumps and ticker.
struct Running {
    dev: DevStack,
    base: String,
    _pumps: Vec<StopHandle>,
}

/// The function binaries `cargo lambda watch` serves.
pub const FUNCTIONS: [&str; 5] = [
    "webhook",
    "webhook-processor",
    "full-refresh",
    "full-refresh-worker",
    "outbox-drain",
];

/// Builds each function the way `cargo lambda watch` runs it (`cargo run --bin <name>`), so
/// the first invocation does not wait for a compile inside the emulator's timeout.
pub fn prebuild_functions() -> Result<()> {
    for bin in FUNCTIONS {
        crate::step(
            &format!("cargo build --bin {bin}"),
            crate::cargo().args(["build", "--quiet", "--bin", bin]),
        )?;
    }
    Ok(())
}

async fn start(tick: Duration) -> Result<Running> {
    prebuild_functions()?;
    let work = crate::workdir()?;
    let dev = DevStack::start(
        &work,
        DevOptions {
            leads: 120,
            contacts: 80,
            ..DevOptions::default()
        },
    )
    .await?;
    let port = stack::free_port()?;
    let logs = root().join("target/dev");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join("lambda-watch.log");
    eprintln!(
        "xtask: starting cargo lambda watch on port {port} (log: {})",
        log.display()
    );
    start_lambda_watch(&dev.function_env(), port, &log)?;
    let base = format!("http://127.0.0.1:{port}");
    let invoker = |name: &str| -> Arc<dyn Invoker> {
        Arc::new(HttpInvoker::new(&base, name, Duration::from_secs(600)))
    };
    let mut events = PumpConfig::new(&dev.provisioned.kommo_events.url);
    events.batch_size = 10;
    events.wait_time = Duration::from_secs(1);
    events.retry_visibility = Duration::from_secs(2);
    let mut jobs = PumpConfig::new(&dev.provisioned.full_refresh_jobs.url);
    jobs.batch_size = 1;
    jobs.wait_time = Duration::from_secs(1);
    let pumps = vec![
        SqsPump::new(&dev.sdk, events, invoker("webhook-processor"))
            .await?
            .spawn(),
        SqsPump::new(&dev.sdk, jobs, invoker("full-refresh-worker"))
            .await?
            .spawn(),
        ScheduleTicker::new(invoker("outbox-drain"))
            .interval(tick)
            .spawn(),
    ];
    Ok(Running {
        dev,
        base,
        _pumps: pumps,
    })
}

struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
    took: Duration,
}

pub fn demo() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let started = Instant::now();
        let sys = start(Duration::from_secs(2)).await?;
        let mut steps = Vec::new();
        let db = sys.dev.db().await?;
        let http = reqwest::Client::new();
        let webhook_url = format!(
            "{}/lambda-url/webhook/kommo/webhook/{}",
            sys.base, sys.dev.spec.kommo.webhook_token
        );
        let kommo = &sys.dev.kommo;
        let zoho = &sys.dev.zoho;

        // 1. A new lead arrives by webhook, becomes a client and a booking, and reaches Zoho.
        progress("1/4 new Kommo lead → booking → Zoho (first run builds the functions)");
        let t = Instant::now();
        let lead_id = new_lead(kommo, "Demo: Jet ski weekend");
        let resp = kommo
            .send_webhook(&webhook_url, &[WebhookEvent::lead(WebhookAction::Add, lead_id)])
            .await?;
        let synced = resp.status == 200
            && wait_until(Duration::from_secs(180), || async {
                let row = db
                    .query_opt(
                        "SELECT b.zoho_sync_status, c.zoho_contact_id IS NOT NULL
                           FROM bookings b JOIN clients c ON c.id = b.client_id
                          WHERE b.source_payload_id = $1",
                        &[&format!("kommo:{lead_id}")],
                    )
                    .await?;
                Ok(row.is_some_and(|r| r.get::<_, String>(0) == "synced" && r.get::<_, bool>(1)))
            })
            .await?;
        steps.push(Step {
            name: "new lead → client, booking, Zoho contact + sales order",
            ok: synced,
            detail: format!("webhook answered {}; lead {lead_id}", resp.status),
            took: t.elapsed(),
        });

        // 2. A status change is delivered twice; the second copy is a duplicate.
        progress("2/4 status change delivered twice");
        let t = Instant::now();
        let old_status = kommo.set_lead_status(lead_id, STATUS_WON).unwrap_or_default();
        let events = [WebhookEvent::lead_status(lead_id, old_status)];
        let first = kommo.send_webhook(&webhook_url, &events).await?;
        let second = kommo.send_webhook(&webhook_url, &events).await?;
        let deduped = wait_until(Duration::from_secs(60), || async {
            let r = db
                .query_one(
                    "SELECT coalesce(max(duplicate_count), 0),
                            (SELECT count(*) FROM bookings WHERE source_payload_id = $1),
                            (SELECT kommo_status_id FROM bookings WHERE source_payload_id = $1)
                       FROM kommo_webhook_events WHERE status = 'processed'",
                    &[&format!("kommo:{lead_id}")],
                )
                .await?;
            Ok(r.get::<_, i32>(0) >= 1
                && r.get::<_, i64>(1) == 1
                && r.get::<_, Option<i64>>(2) == Some(STATUS_WON))
        })
        .await?;
        steps.push(Step {
            name: "status change twice → applied once, duplicate recorded",
            ok: first.status == 200 && second.status == 200 && deduped,
            detail: format!("answers {} and {}", first.status, second.status),
            took: t.elapsed(),
        });

        // 3. A full refresh imports the year.
        progress("3/4 full refresh of the current year");
        let t = Instant::now();
        let jwt = shared::platform::auth::issue_staff_token(
            &sys.dev.spec.staff_jwt.hs256_secret,
            "demo-operator",
            "admin",
            3600,
        );
        let start = http
            .post(format!(
                "{}/lambda-url/full-refresh/integrations/kommo/full-refresh",
                sys.base
            ))
            .bearer_auth(&jwt)
            .json(&serde_json::json!({}))
            .send()
            .await?;
        let start_status = start.status().as_u16();
        let body: Value = start.json().await.unwrap_or(Value::Null);
        let run_id = body["runId"].as_str().unwrap_or_default().to_string();
        let mut run_status = String::new();
        if start_status == 202 && !run_id.is_empty() {
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                run_status = db
                    .query_one(
                        "SELECT status FROM kommo_import_runs WHERE id = $1::text::uuid",
                        &[&run_id],
                    )
                    .await?
                    .get(0);
                if !matches!(run_status.as_str(), "queued" | "running") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let leads: i64 = db
            .query_one(
                "SELECT coalesce(max(leads_count), 0)::bigint FROM kommo_import_runs WHERE status = 'succeeded'",
                &[],
            )
            .await?
            .get(0);
        steps.push(Step {
            name: "full refresh imports the year",
            ok: start_status == 202 && run_status == "succeeded" && leads > 0,
            detail: format!("start answered {start_status}; run {run_status}; {leads} leads"),
            took: t.elapsed(),
        });

        // 4. Zoho is down for a while: rows are retried, then recover.
        progress("4/4 Zoho outage, retries, recovery");
        let t = Instant::now();
        zoho.fail_next_with_5xx(3, 503);
        let lead2 = new_lead(kommo, "Demo: Boat trip during a Zoho outage");
        kommo
            .send_webhook(&webhook_url, &[WebhookEvent::lead(WebhookAction::Add, lead2)])
            .await?;
        let mut saw_retry = false;
        let mut recovered = false;
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline && !recovered {
            let r = db
                .query_one(
                    "SELECT coalesce(max(o.attempts), 0), bool_and(o.status = 'succeeded'), count(*)
                       FROM integrations_outbox o
                       JOIN bookings b ON b.id = o.entity_id OR b.client_id = o.entity_id
                      WHERE b.source_payload_id = $1",
                    &[&format!("kommo:{lead2}")],
                )
                .await?;
            saw_retry |= r.get::<_, i32>(0) > 1;
            recovered = r.get::<_, i64>(2) > 0 && r.get::<_, Option<bool>>(1) == Some(true);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        steps.push(Step {
            name: "Zoho 503s → retried with backoff → synced",
            ok: recovered && saw_retry,
            detail: format!("retried: {saw_retry}"),
            took: t.elapsed(),
        });

        summary(&db, zoho, &steps, started.elapsed()).await?;
        if steps.iter().all(|s| s.ok) {
            Ok(())
        } else {
            bail!("the demo did not produce what it should; see target/dev/lambda-watch.log")
        }
    })
}

fn progress(msg: &str) {
    eprintln!("xtask: ▶ {msg}");
}

/// Adds a dated lead with a contact and a vehicle to the Kommo sandbox.
pub fn new_lead(kommo: &sandbox::kommo::KommoSandbox, name: &str) -> i64 {
    let template = kommo
        .leads()
        .into_iter()
        .find(|l| !EXCLUDED.contains(&l.status_id))
        .expect("the sandbox has leads in open statuses");
    let now = chrono::Utc::now().timestamp();
    let contact_id = kommo.next_contact_id();
    let mut contact = SandboxContact::new(contact_id, "Demo", &format!("Client {contact_id}"), now);
    contact.set_email(Some(&format!("demo{contact_id}@example.com")));
    contact.set_phone(Some("+971 50 123 4567"));
    kommo.upsert_contact(contact);
    let id = kommo.next_lead_id();
    let mut lead = SandboxLead::new(id, name, template.pipeline_id, template.status_id, now);
    lead.price = 1500;
    lead.responsible_user_id = template.responsible_user_id;
    lead.contact_ids = vec![contact_id];
    lead.set_field(date_time_field(
        FIELD_DELIVERY,
        "Date/Time Delivery",
        now + 86_400,
    ));
    lead.set_field(date_time_field(
        FIELD_COLLECT,
        "Date/Time Collect",
        now + 3 * 86_400,
    ));
    if let Some(v) = vehicles().first().and_then(|(id, _)| vehicle_field(*id)) {
        lead.set_field(v);
    }
    kommo.upsert_lead(lead);
    id
}

async fn summary(
    db: &tokio_postgres::Client,
    zoho: &sandbox::zoho::ZohoSandbox,
    steps: &[Step],
    total: Duration,
) -> Result<()> {
    println!("\n{:<58} {:>6} {:>9}  detail", "step", "result", "time");
    for s in steps {
        println!(
            "{:<58} {:>6} {:>8.1}s  {}",
            s.name,
            if s.ok { "ok" } else { "FAILED" },
            s.took.as_secs_f64(),
            s.detail
        );
    }
    println!("\n{:<28} rows", "table");
    for table in [
        "clients",
        "bookings",
        "vehicles",
        "booking_vehicles",
        "sales_leads",
        "kommo_webhook_events",
        "kommo_import_runs",
        "integrations_outbox",
    ] {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        println!("{table:<28} {n}");
    }
    let outbox = db
        .query(
            "SELECT status, count(*) FROM integrations_outbox GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    let states: Vec<String> = outbox
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    println!("\noutbox states: {}", states.join(", "));
    let state = zoho.state();
    println!(
        "Zoho calls: {} contact upserts, {} sales orders, {} token refreshes; {} contacts and {} orders stored",
        state.calls_to(ENDPOINT_CONTACTS_UPSERT),
        state.calls_to(ENDPOINT_SALES_ORDERS),
        state.token_refreshes,
        state.contacts.len(),
        state.sales_orders.len()
    );
    println!("total time {:.1}s", total.as_secs_f64());
    Ok(())
}

/// What a sample event must produce, by file name.
fn expectation(file: &str) -> Option<(&'static str, Expect)> {
    let e = match file {
        "webhook-bad-token.json" => ("webhook", Expect::Status(401)),
        "webhook-contact-update.json" => ("webhook", Expect::Status(200)),
        "webhook-lead-status.json" => ("webhook", Expect::Status(200)),
        "webhook-manual-booking.json" => ("webhook", Expect::Status(201)),
        "webhook-processor-sqs.json" => ("webhook-processor", Expect::NoBatchFailures),
        "outbox-drain-schedule.json" | "outbox-drain-schedule-v2.json" => {
            ("outbox-drain", Expect::DrainedAll)
        }
        "full-refresh-start.json" => ("full-refresh", Expect::Status(202)),
        "full-refresh-status.json" => ("full-refresh", Expect::StatusOneOf(&[200, 404])),
        "full-refresh-list.json" => ("full-refresh", Expect::Status(200)),
        "full-refresh-worker-sqs.json" => ("full-refresh-worker", Expect::NoBatchFailures),
        _ => return None,
    };
    Some(e)
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Status(u16),
    StatusOneOf(&'static [u16]),
    NoBatchFailures,
    /// A drain report that ran until the queue was empty (no `stopped` reason).
    DrainedAll,
}

fn check(expect: Expect, out: &Value) -> Result<(), String> {
    let status = out["statusCode"].as_u64().map(|s| s as u16);
    match expect {
        Expect::Status(want) if status == Some(want) => Ok(()),
        Expect::StatusOneOf(set) if status.is_some_and(|s| set.contains(&s)) => Ok(()),
        Expect::NoBatchFailures
            if out["batchItemFailures"]
                .as_array()
                .is_some_and(|a| a.is_empty()) =>
        {
            Ok(())
        }
        Expect::DrainedAll
            if out.get("errorType").is_none()
                && out.get("claimed").is_some()
                && out["stopped"].is_null() =>
        {
            Ok(())
        }
        _ => Err(format!("expected {expect:?}, got {out}")),
    }
}

/// Invokes every file in `events/` through `cargo lambda watch` with `cargo lambda invoke`.
pub fn events() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let sys = start(Duration::from_secs(3600)).await?;
        let port = sys
            .base
            .rsplit(':')
            .next()
            .context("watch port")?
            .to_string();
        let cargo_lambda = stack::ensure_pip_tool("cargo-lambda", "cargo-lambda")?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("events"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut failures = BTreeMap::new();
        for file in &files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some((function, expect)) = expectation(name) else {
                failures.insert(
                    name.to_string(),
                    "no expectation: add one to xtask/src/demo.rs".to_string(),
                );
                continue;
            };
            let out = Command::new(&cargo_lambda)
                .args([
                    "lambda",
                    "invoke",
                    function,
                    "-A",
                    "127.0.0.1",
                    "-P",
                    &port,
                    "--data-file",
                ])
                .arg(file)
                .current_dir(root())
                .output()
                .context("run cargo lambda invoke")?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let verdict = if !out.status.success() {
                Err(format!(
                    "cargo lambda invoke failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                ))
            } else {
                serde_json::from_str::<Value>(text.trim())
                    .map_err(|e| format!("response is not JSON ({e}): {text}"))
                    .and_then(|v| check(expect, &v))
            };
            match verdict {
                Ok(()) => eprintln!("xtask: events/{name} → {function}: ok"),
                Err(e) => {
                    eprintln!("xtask: events/{name} → {function}: FAILED: {e}");
                    failures.insert(name.to_string(), e);
                }
            }
        }
        if !failures.is_empty() {
            bail!(
                "{} sample event(s) did not produce the expected result: {:?}",
                failures.len(),
                failures.keys().collect::<Vec<_>>()
            );
        }
        eprintln!(
            "xtask: all {} sample events behave as expected",
            files.len()
        );
        Ok(())
    })
}
