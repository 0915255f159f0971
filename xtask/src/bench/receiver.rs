//! Scenario 1: the webhook receiver's in-process latency.
//!
//! Realistic deliveries (the Kommo sandbox's wire format for stage moves and
//! updates, base64-encoded by API Gateway as a form body is) go through the
//! whole HTTP handler: routing, token check, size and content-type checks,
//! parsing, the flag read (cached as in a warm Lambda) and the envelope. The
//! SQS send is replaced by a queue that answers at once, because the target
//! excludes it; the same send to moto is timed separately for reference.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use base64::Engine;
use sandbox::kommo::{KommoOptions, KommoSandbox, WebhookAction, WebhookEvent};
use serde_json::json;
use shared::{
    platform::flags::FeatureFlags,
    platform::secrets::{KommoSecret, Redacted, StaffJwtSecret},
    platform::sqs::{Queue, SqsError},
};
use webhook::{
    http::HttpApp, manual::ManualBookings, receiver::DeliveryQueue, receiver::Receiver,
    settings::ReceiverSettings, SecretSource,
};

use super::{
    table::{percentile, Quantity, RowBuilder},
    Bench,
};

const P99_TARGET_MS: f64 = 5.0;
/// Kommo gives up on a delivery after 2 seconds.
const KOMMO_DEADLINE_MS: f64 = 2_000.0;
const TOKEN: &str = "bench-webhook-token";

/// A queue that accepts at once: what the receiver costs without the network.
struct InstantQueue(AtomicU64);

#[async_trait]
impl DeliveryQueue for InstantQueue {
    async fn send(&self, body: &str) -> Result<String, SqsError> {
        std::hint::black_box(body);
        Ok(format!("bench-{}", self.0.fetch_add(1, Ordering::Relaxed)))
    }
}

/// An API Gateway HTTP API (v2) request as Kommo's POST arrives.
pub fn delivery_request(body: &str, n: usize) -> Result<ApiGatewayV2httpRequest> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let path = format!("/kommo/webhook/{TOKEN}");
    let v = json!({
        "version": "2.0",
        "routeKey": "POST /kommo/webhook/{token}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept-encoding": "gzip",
            "content-type": "application/x-www-form-urlencoded",
            "host": "bench.execute-api.us-east-1.amazonaws.com",
            "user-agent": "amoCRM-Webhooks/3.0",
            "x-amocrm-requestid": format!("00000000-0000-4000-8000-{n:012}"),
            "content-length": body.len().to_string(),
        },
        "pathParameters": { "token": TOKEN },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "amoCRM-Webhooks/3.0"
            },
            "requestId": format!("bench-{n}"),
            "routeKey": "POST /kommo/webhook/{token}",
            "stage": "$default",
            "time": "23/Nov/2026:17:00:00 +0000",
            "timeEpoch": 1795453200000u64
        },
        "body": b64,
        "isBase64Encoded": true
    });
    serde_json::from_value(v).context("build an HTTP API request")
}

/// Delivery bodies as Kommo sends them: mostly single stage moves, some
/// updates, and some grouped changes of several leads.
pub fn delivery_bodies(kommo: &KommoSandbox, n: usize) -> Vec<String> {
    let leads = kommo.leads();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let lead = &leads[i % leads.len()];
        let events = match i % 10 {
            0..=5 => vec![WebhookEvent::lead_status(lead.id, lead.status_id)],
            6..=8 => vec![WebhookEvent::lead(WebhookAction::Update, lead.id)],
            _ => {
                let other = &leads[(i * 7 + 3) % leads.len()];
                vec![
                    WebhookEvent::lead_status(lead.id, lead.status_id),
                    WebhookEvent::lead(WebhookAction::Update, other.id),
                ]
            }
        };
        out.push(kommo.webhook_body(&events));
    }
    out
}

fn app(
    pool: shared::platform::db::DbPool,
    account_id: i64,
    queue: Arc<dyn DeliveryQueue>,
) -> HttpApp {
    HttpApp {
        receiver: Receiver {
            secret: SecretSource::Fixed(KommoSecret {
                base_url: "http://127.0.0.1:9".into(),
                access_token: Redacted::new("unused"),
                webhook_token: Redacted::new(TOKEN),
                account_id: Some(account_id),
            }),
            // A warm Lambda reads the flag once per TTL; 10 s is the default.
            flags: Arc::new(FeatureFlags::new(pool.clone(), Duration::from_secs(10))),
            pool: pool.clone(),
            queue,
            settings: ReceiverSettings::default(),
        },
        bookings: ManualBookings {
            secret: SecretSource::Fixed(StaffJwtSecret {
                hs256_secret: Redacted::new("unused-bench-key"),
                issuer: None,
                audience: None,
            }),
            allowed_roles: vec!["admin".into()],
            flags: Arc::new(FeatureFlags::new(pool.clone(), Duration::from_secs(10))),
            pool,
        },
    }
}

pub async fn run(b: &mut Bench) -> Result<()> {
    let n = b.sizes.deliveries;
    let db = testkit::TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let kommo = KommoSandbox::start(KommoOptions {
        leads: 500,
        contacts: 400,
        ..KommoOptions::default()
    })
    .await?;
    let account_id = kommo.account().id;
    let bodies = delivery_bodies(&kommo, n);
    let requests = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| delivery_request(body, i))
        .collect::<Result<Vec<_>>>()?;
    let app = app(
        db.pool(),
        account_id,
        Arc::new(InstantQueue(AtomicU64::new(0))),
    );
    let ms = time_deliveries(&app, &requests).await?;
    let sqs_ms = time_sqs_sends(&bodies, n.min(300)).await?;
    let mean_body = bodies.iter().map(String::len).sum::<usize>() / bodies.len().max(1);
    push_rows(b, n, mean_body, &ms, &sqs_ms);
    Ok(())
}

/// Milliseconds of each request through the whole handler, after a warm-up.
async fn time_deliveries(app: &HttpApp, requests: &[ApiGatewayV2httpRequest]) -> Result<Vec<f64>> {
    // Warm-up: the pool's first connection and the first flag read are a
    // cold start's cost, not a delivery's.
    for req in requests.iter().take(20) {
        app.handle(req.clone()).await;
    }
    let mut ms = Vec::with_capacity(requests.len());
    for req in requests {
        let req = req.clone();
        let t = Instant::now();
        let resp = app.handle(req).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if resp.status_code != 200 {
            bail!(
                "the receiver answered {} instead of 200: {:?}",
                resp.status_code,
                resp.body
            );
        }
    }
    Ok(ms)
}

/// The excluded part, for reference: milliseconds of the same sends to moto's SQS.
async fn time_sqs_sends(bodies: &[String], sends: usize) -> Result<Vec<f64>> {
    let sdk = testkit::aws_config().await;
    let url = testkit::create_queue(&sdk, "bench-kommo-events").await;
    let queue = Queue::new(aws_sdk_sqs::Client::new(&sdk), url);
    let mut sqs_ms = Vec::with_capacity(sends);
    for body in bodies.iter().take(sends) {
        let t = Instant::now();
        queue
            .send(body)
            .await
            .map_err(|e| anyhow::anyhow!("SQS send to moto: {e}"))?;
        sqs_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(sqs_ms)
}

fn push_rows(b: &mut Bench, n: usize, mean_body: usize, ms: &[f64], sqs_ms: &[f64]) {
    let p50 = percentile(ms, 50.0);
    let p99 = percentile(ms, 99.0);
    let detail = format!(
        "{n} deliveries after 20 warm-up ones, sequential, mean body {mean_body} B; \
         flag cached with the default 10 s TTL; SQS replaced by an instant queue"
    );
    b.push(
        RowBuilder::new(
            "webhook receiver",
            "in-process p50 (no SQS)",
            Quantity::new(p50, "ms"),
        )
        .baseline("Kommo deadline", Quantity::new(KOMMO_DEADLINE_MS, "ms"))
        .target("(p99 is judged)", true, false)
        .detail(detail.clone())
        .build(),
    );
    b.push(
        RowBuilder::new(
            "webhook receiver",
            "in-process p99 (no SQS)",
            Quantity::new(p99, "ms"),
        )
        .baseline("Kommo deadline", Quantity::new(KOMMO_DEADLINE_MS, "ms"))
        .target(
            format!("< {P99_TARGET_MS:.0} ms"),
            p99 < P99_TARGET_MS,
            b.judged(),
        )
        .detail(detail)
        .build(),
    );
    b.push(
        RowBuilder::new(
            "webhook receiver",
            "excluded: SQS send to moto p50",
            Quantity::new(percentile(sqs_ms, 50.0), "ms"),
        )
        .baseline("receiver p50", Quantity::new(p50, "ms"))
        .target("information only (local moto, not AWS)", true, false)
        .detail(format!(
            "{} sends to a moto queue; p99 {:.2} ms",
            sqs_ms.len(),
            percentile(sqs_ms, 99.0)
        ))
        .build(),
    );
}
