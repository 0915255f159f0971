//! Scenario 2: the webhook processor's throughput into Postgres.
//!
//! Each lead of a zero-latency Kommo sandbox gets one stage-move delivery,
//! queued as the receiver queues it; batches of 10 (the template's SQS
//! `BatchSize`) go through [`Processor::handle`] one after another, as one
//! Lambda container takes them: record, dedupe, one Kommo fetch per batch,
//! one transaction per delivery with its booking and outbox rows.
//!
//! The baseline is the database's limit for the same work: the same ingest
//! statements (`record_received`, then `lock_event`, `lock_leads`,
//! `apply_lead`, `mark_processed` in one transaction per delivery) on the
//! same pre-fetched leads, in a tight loop on one connection, into a fresh
//! database.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use sandbox::kommo::{KommoOptions, KommoSandbox, WebhookEvent};
use shared::{
    ingest::{self, Fetched, Pipeline},
    kommo::{
        webhook::{parse_delivery, QueuedDelivery},
        KommoClient, KommoClientOptions,
    },
    platform::flags::FeatureFlags,
    platform::secrets::Redacted,
};
use testkit::TestDb;
use webhook::processor::Processor;

use super::{
    table::{Quantity, RowBuilder},
    Bench,
};

const BATCH: usize = 10;
const LEADS_PER_S_TARGET: f64 = 300.0;
const RATIO_TARGET: f64 = 0.7;

struct Delivery {
    lead_id: i64,
    message_id: String,
    body: String,
}

fn processor(db: &TestDb, kommo: &KommoSandbox) -> Result<Processor> {
    let client = KommoClient::with_token(
        &kommo.base_url(),
        Redacted::new(kommo.token()),
        KommoClientOptions {
            // Lifted so the figure is the database's work, not Kommo's 7 req/s.
            rate_per_second: 10_000,
            ..KommoClientOptions::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = db.pool();
    Ok(Processor::from(Pipeline::new(
        pool.clone(),
        Arc::new(FeatureFlags::new(pool, Duration::from_secs(10))),
        client,
    )))
}

fn sqs_batch(chunk: &[Delivery], account_id: i64) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = chunk
        .iter()
        .map(|d| {
            let mut m = SqsMessage::default();
            m.message_id = Some(d.message_id.clone());
            m.body = Some(
                QueuedDelivery::new(
                    d.body.clone(),
                    Some(format!("req-{}", d.message_id)),
                    None,
                    Some(account_id),
                )
                .to_json(),
            );
            m
        })
        .collect();
    event
}

async fn count(db: &TestDb, sql: &str) -> Result<i64> {
    Ok(db.client().await.query_one(sql, &[]).await?.get(0))
}

/// The processor, end to end; returns (seconds, rows written summary).
async fn processor_run(
    kommo: &KommoSandbox,
    deliveries: &[Delivery],
    account_id: i64,
) -> Result<(f64, String)> {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let p = processor(&db, kommo)?;
    let batches: Vec<SqsEvent> = deliveries
        .chunks(BATCH)
        .map(|c| sqs_batch(c, account_id))
        .collect();
    let t = Instant::now();
    let mut processed = 0;
    for batch in batches {
        let (resp, report) = p.handle(batch).await;
        if !resp.batch_item_failures.is_empty() {
            bail!("the processor failed deliveries: {report:?}");
        }
        processed += report.processed;
    }
    let secs = t.elapsed().as_secs_f64();
    if processed != deliveries.len() {
        bail!(
            "the processor applied {processed} of {} deliveries",
            deliveries.len()
        );
    }
    let events = count(
        &db,
        "SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed'",
    )
    .await?;
    if events != deliveries.len() as i64 {
        bail!(
            "{events} processed events recorded for {} deliveries",
            deliveries.len()
        );
    }
    let leads = count(&db, "SELECT count(*) FROM sales_leads").await?;
    let bookings = count(&db, "SELECT count(*) FROM bookings").await?;
    let outbox = count(&db, "SELECT count(*) FROM integrations_outbox").await?;
    if bookings == 0 || outbox == 0 {
        bail!("the processor wrote no bookings ({bookings}) or outbox rows ({outbox})");
    }
    Ok((
        secs,
        format!("{leads} sales leads, {bookings} bookings, {outbox} outbox rows"),
    ))
}

/// The same statements in a tight loop, one transaction per delivery.
async fn baseline_run(
    deliveries: &[Delivery],
    fetched: &Fetched,
    account_id: i64,
) -> Result<(f64, i64)> {
    let db = TestDb::new().await;
    // A pooled connection, as the processor has: the same statement cache.
    let mut client = db.pooled().await;
    let parsed: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            parse_delivery(d.body.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|p| serde_json::to_value(&p).context("delivery as JSON"))
        })
        .collect::<Result<_>>()?;
    let t = Instant::now();
    for (d, parsed) in deliveries.iter().zip(&parsed) {
        let row = ingest::record_received(&client, &d.body, Some(account_id), Some(&d.message_id))
            .await?;
        let tx = client.transaction().await?;
        ingest::lock_event(&tx, row.id).await?;
        ingest::lock_leads(&tx, &[d.lead_id]).await?;
        if let Some(Ok((lead, contact))) = fetched.leads.get(&d.lead_id) {
            ingest::apply_lead(&tx, lead, contact.as_ref()).await?;
        }
        ingest::mark_processed(&tx, row.id, parsed).await?;
        tx.commit().await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let bookings = count(&db, "SELECT count(*) FROM bookings").await?;
    Ok((secs, bookings))
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let n = b.sizes.leads;
    let kommo = KommoSandbox::start(KommoOptions {
        leads: n,
        contacts: (n * 4 / 5).max(1),
        ..KommoOptions::default()
    })
    .await?;
    let account_id = kommo.account().id;
    let deliveries: Vec<Delivery> = kommo
        .leads()
        .iter()
        .enumerate()
        .map(|(i, l)| Delivery {
            lead_id: l.id,
            message_id: format!("00000000-0000-4000-8000-{i:012}"),
            body: kommo.webhook_body(&[WebhookEvent::lead_status(l.id, l.status_id)]),
        })
        .collect();
    if deliveries.is_empty() {
        bail!("the Kommo sandbox has no leads");
    }

    let (secs, written) = processor_run(&kommo, &deliveries, account_id).await?;
    let rate = deliveries.len() as f64 / secs;

    // The baseline's leads come from the same API and mapping, fetched
    // before its clock starts, one batch's worth at a time as the processor does.
    let mapping_db = TestDb::new().await;
    let p = processor(&mapping_db, &kommo)?;
    let mut fetched = Fetched::default();
    for chunk in deliveries.chunks(BATCH) {
        let ids: Vec<i64> = chunk.iter().map(|d| d.lead_id).collect();
        let f = p
            .pipeline
            .fetch(&ids, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        fetched.leads.extend(f.leads);
    }
    let (base_secs, base_bookings) = baseline_run(&deliveries, &fetched, account_id).await?;
    let base_rate = deliveries.len() as f64 / base_secs;
    let ratio = rate / base_rate;

    b.push(
        RowBuilder::new(
            "webhook processor",
            format!(
                "leads/s, SQS event → committed rows ({} leads)",
                deliveries.len()
            ),
            Quantity::new(rate, "leads/s"),
        )
        .baseline("same SQL, tight loop", Quantity::new(base_rate, "leads/s"))
        .target(
            format!("≥ {LEADS_PER_S_TARGET:.0} leads/s and ≥ {RATIO_TARGET}× baseline"),
            rate >= LEADS_PER_S_TARGET && ratio >= RATIO_TARGET,
            b.judged(),
        )
        .detail(format!(
            "batches of {BATCH}, one container, sequential; Kommo sandbox with no latency \
             and the client's rate limit lifted; wrote {written}; processor {secs:.2} s, \
             baseline {base_secs:.2} s ({base_bookings} bookings)"
        ))
        .build(),
    );
    Ok(())
}
