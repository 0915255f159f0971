//! `cargo xtask demo`: the whole story, end to end, against the sandboxes,
//! through `cargo lambda watch` and the local SQS/schedule wiring.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sandbox::{
    kommo::{data::STATUS_WON, WebhookAction, WebhookEvent},
    zoho::{ENDPOINT_CONTACTS_UPSERT, ENDPOINT_SALES_ORDERS},
};
use serde_json::Value;

use crate::{
    devstack::wait_until,
    local::{new_lead, LocalOptions, LocalSystem},
};

/// One step of the story and how it went.
struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
    took: Duration,
}

pub fn run() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let started = Instant::now();
        let sys = LocalSystem::start(LocalOptions::scripted(Duration::from_secs(2))?).await?;
        let demo = Demo::new(&sys).await?;
        progress("1/4 new Kommo lead → booking → Zoho");
        let (first, lead_id) = demo.new_lead_reaches_zoho().await?;
        progress("2/4 status change delivered twice");
        let second = demo.status_change_twice(lead_id).await?;
        progress("3/4 full refresh of the current year");
        let third = demo.full_refresh().await?;
        progress("4/4 Zoho outage, retries, recovery");
        let fourth = demo.zoho_outage().await?;
        let steps = [first, second, third, fourth];
        summary(&demo.db, &sys.dev.zoho, &steps, started.elapsed()).await?;
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

/// What the steps share: the system, a database connection and the webhook URL.
struct Demo<'a> {
    sys: &'a LocalSystem,
    db: tokio_postgres::Client,
    webhook_url: String,
}

impl<'a> Demo<'a> {
    async fn new(sys: &'a LocalSystem) -> Result<Self> {
        let webhook_url = format!(
            "{}/lambda-url/webhook/kommo/webhook/{}",
            sys.base, sys.dev.spec.kommo.webhook_token
        );
        Ok(Demo {
            sys,
            db: sys.dev.db().await?,
            webhook_url,
        })
    }

    /// A new lead arrives by webhook, becomes a client and a booking, and reaches Zoho.
    async fn new_lead_reaches_zoho(&self) -> Result<(Step, i64)> {
        let t = Instant::now();
        let kommo = &self.sys.dev.kommo;
        let lead_id = new_lead(kommo, "Demo: Jet ski weekend");
        let resp = kommo
            .send_webhook(
                &self.webhook_url,
                &[WebhookEvent::lead(WebhookAction::Add, lead_id)],
            )
            .await?;
        let synced = resp.status == 200
            && wait_until(Duration::from_secs(180), || async {
                let row = self
                    .db
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
        let step = Step {
            name: "new lead → client, booking, Zoho contact + sales order",
            ok: synced,
            detail: format!("webhook answered {}; lead {lead_id}", resp.status),
            took: t.elapsed(),
        };
        Ok((step, lead_id))
    }

    /// A status change is delivered twice; the second copy is a duplicate.
    async fn status_change_twice(&self, lead_id: i64) -> Result<Step> {
        let t = Instant::now();
        let kommo = &self.sys.dev.kommo;
        let old_status = kommo
            .set_lead_status(lead_id, STATUS_WON)
            .unwrap_or_default();
        let events = [WebhookEvent::lead_status(lead_id, old_status)];
        let first = kommo.send_webhook(&self.webhook_url, &events).await?;
        let second = kommo.send_webhook(&self.webhook_url, &events).await?;
        let deduped = wait_until(Duration::from_secs(60), || async {
            let r = self
                .db
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
        Ok(Step {
            name: "status change twice → applied once, duplicate recorded",
            ok: first.status == 200 && second.status == 200 && deduped,
            detail: format!("answers {} and {}", first.status, second.status),
            took: t.elapsed(),
        })
    }

    /// A full refresh imports the year.
    async fn full_refresh(&self) -> Result<Step> {
        let t = Instant::now();
        let jwt = shared::platform::auth::issue_staff_token(
            &self.sys.dev.spec.staff_jwt.hs256_secret,
            "demo-operator",
            "admin",
            3600,
        );
        let start = reqwest::Client::new()
            .post(format!(
                "{}/lambda-url/full-refresh/integrations/kommo/full-refresh",
                self.sys.base
            ))
            .bearer_auth(&jwt)
            .json(&serde_json::json!({}))
            .send()
            .await?;
        let start_status = start.status().as_u16();
        let body: Value = start.json().await.unwrap_or(Value::Null);
        let run_id = body["runId"].as_str().unwrap_or_default().to_string();
        let run_status = if start_status == 202 && !run_id.is_empty() {
            self.wait_for_run(&run_id).await?
        } else {
            String::new()
        };
        let leads: i64 = self
            .db
            .query_one(
                "SELECT coalesce(max(leads_count), 0)::bigint FROM kommo_import_runs WHERE status = 'succeeded'",
                &[],
            )
            .await?
            .get(0);
        Ok(Step {
            name: "full refresh imports the year",
            ok: start_status == 202 && run_status == "succeeded" && leads > 0,
            detail: format!("start answered {start_status}; run {run_status}; {leads} leads"),
            took: t.elapsed(),
        })
    }

    /// The run's status once it is neither queued nor running, or after five minutes.
    async fn wait_for_run(&self, run_id: &str) -> Result<String> {
        let mut run_status = String::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            run_status = self
                .db
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
        Ok(run_status)
    }

    /// Zoho is down for a while: rows are retried, then recover.
    async fn zoho_outage(&self) -> Result<Step> {
        let t = Instant::now();
        let kommo = &self.sys.dev.kommo;
        self.sys.dev.zoho.fail_next_with_5xx(3, 503);
        let lead = new_lead(kommo, "Demo: Boat trip during a Zoho outage");
        kommo
            .send_webhook(
                &self.webhook_url,
                &[WebhookEvent::lead(WebhookAction::Add, lead)],
            )
            .await?;
        let mut saw_retry = false;
        let mut recovered = false;
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline && !recovered {
            let r = self
                .db
                .query_one(
                    "SELECT coalesce(max(o.attempts), 0), bool_and(o.status = 'succeeded'), count(*)
                       FROM integrations_outbox o
                       JOIN bookings b ON b.id = o.entity_id OR b.client_id = o.entity_id
                      WHERE b.source_payload_id = $1",
                    &[&format!("kommo:{lead}")],
                )
                .await?;
            saw_retry |= r.get::<_, i32>(0) > 1;
            recovered = r.get::<_, i64>(2) > 0 && r.get::<_, Option<bool>>(1) == Some(true);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(Step {
            name: "Zoho 503s → retried with backoff → synced",
            ok: recovered && saw_retry,
            detail: format!("retried: {saw_retry}"),
            took: t.elapsed(),
        })
    }
}

/// The steps, then what they left in the database and in the Zoho sandbox.
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
