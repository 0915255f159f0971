//! Outages of hours never send buffered deliveries to the dead-letter queue.
//!
//! Time is compressed: one second stands for five minutes. The queue's
//! visibility timeout is one unit (the template's is 6 minutes), its
//! `maxReceiveCount` is the template's 5, and a held-back delivery first
//! waits one unit (`KOMMO_OUTAGE_HOLD_SECONDS` is 300). Each outage lasts 72
//! units, six hours, with deliveries arriving throughout; SQS, the pump (as
//! Lambda's poller) and the processor are real.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use sandbox::kommo::{KommoOptions, KommoSandbox, WebhookEvent};
use shared::{
    ingest::Pipeline,
    kommo::{KommoClient, KommoClientOptions},
    platform::{db::DbPool, secrets::Redacted, sqs::Queue},
};
use webhook::processor::{HoldBack, Processor};
use wiring::{InProcess, Invoker, PumpConfig, SqsPump};

const UNIT: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(72);

fn processor(pool: DbPool, kommo: &KommoSandbox, token: &str, hold: Queue) -> Processor {
    let opts = KommoClientOptions {
        retry_min_delay: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(20),
        max_retries: 1,
        ..KommoClientOptions::default()
    };
    let kommo = KommoClient::with_token(&kommo.base_url(), Redacted::new(token), opts).unwrap();
    let flags = Arc::new(shared::platform::flags::FeatureFlags::new(
        pool.clone(),
        Duration::ZERO,
    ));
    Processor {
        pipeline: Pipeline::new(pool, flags, kommo),
        hold_back: Some(HoldBack {
            queue: hold,
            base: UNIT,
        }),
    }
}

/// The processor during the outage, then after it; and how often each
/// message was received.
struct Function {
    during: Processor,
    after: Processor,
    over: AtomicBool,
    receives: Mutex<HashMap<String, u32>>,
}

impl Function {
    async fn handle(&self, event: SqsEvent) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        for r in &event.records {
            let n: u32 = r.attributes["ApproximateReceiveCount"].parse().unwrap();
            let id = r.message_id.clone().unwrap();
            let mut seen = self.receives.lock().unwrap();
            let max = seen.entry(id).or_default();
            *max = (*max).max(n);
        }
        let p = match self.over.load(Ordering::SeqCst) {
            false => &self.during,
            true => &self.after,
        };
        p.handle(event).await.0
    }
}

/// Plays a six-hour outage with a delivery every 12 units; returns the
/// dead-letter queue's depth, the receives per message and the world.
async fn six_hours(outage: fn(&testkit::TestDb, &KommoSandbox) -> (DbPool, String)) {
    let db = testkit::TestDb::new().await;
    set_live(&db.client().await, true).await;
    let kommo = KommoSandbox::start(KommoOptions {
        leads: 30,
        contacts: 20,
        account_id: ACCOUNT_ID,
        ..KommoOptions::default()
    })
    .await
    .unwrap();
    let sqs = sqs().await;
    // Shaped like the template's: 5 receives, a visibility timeout of one unit.
    let (main, dlq) = queue_with_dlq(&sqs, 5, Some(UNIT)).await;
    let receiver = http_app(dead_pool(), Queue::new(sqs.clone(), &main));
    let (down_pool, down_token) = outage(&db, &kommo);
    let function = Arc::new(Function {
        during: processor(
            down_pool,
            &kommo,
            &down_token,
            Queue::new(sqs.clone(), &main),
        ),
        after: processor(
            db.pool(),
            &kommo,
            kommo.token(),
            Queue::new(sqs.clone(), &main),
        ),
        over: AtomicBool::new(false),
        receives: Mutex::new(HashMap::new()),
    });
    let f = function.clone();
    let invoker: Arc<dyn Invoker> = Arc::new(InProcess::new(move |event: SqsEvent| {
        let f = f.clone();
        async move { Ok::<_, std::convert::Infallible>(f.handle(event).await) }
    }));
    let mut config = PumpConfig::new(&main);
    config.wait_time = Duration::from_secs(1);
    config.leave_failed = true;
    let pump = SqsPump::new(&testkit::aws_config().await, config, invoker)
        .await
        .unwrap()
        .spawn();

    // A delivery every two hours of the outage (24 units), each a new lead status.
    let leads: Vec<i64> = kommo.leads().iter().map(|l| l.id).take(4).collect();
    let started = Instant::now();
    for (n, lead) in leads.iter().enumerate() {
        tokio::time::sleep_until((started + OUTAGE * n as u32 / 3).into()).await;
        let mut req = load_event("webhook-contact-update.json");
        req.body = Some(kommo.webhook_body(&[WebhookEvent::lead_status(*lead, 1)]));
        assert_eq!(receiver.handle(req).await.status_code, 200);
    }
    tokio::time::sleep_until((started + OUTAGE).into()).await;
    function.over.store(true, Ordering::SeqCst);

    let c = db.client().await;
    let done = "SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed'";
    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&c, done).await < leads.len() as i64 && Instant::now() < deadline {
        tokio::time::sleep(UNIT).await;
    }
    pump.stop().await;

    assert_eq!(
        count(&c, done).await,
        leads.len() as i64,
        "every delivery applied"
    );
    assert!(
        drain(&sqs, &dlq).await.is_empty(),
        "nothing in the dead-letter queue"
    );
    let receives = function.receives.lock().unwrap().clone();
    assert_eq!(receives.len(), leads.len());
    let first = receives.values().max().copied().unwrap();
    assert!(
        (3..=5).contains(&first),
        "the first delivery was held back, not received every visibility timeout: {receives:?}"
    );
}

#[tokio::test]
async fn a_six_hour_database_outage_sends_nothing_to_the_dlq() {
    six_hours(|_, kommo| (dead_pool(), kommo.token().to_string())).await;
}

#[tokio::test]
async fn a_six_hour_kommo_401_sends_nothing_to_the_dlq() {
    six_hours(|db, _| (db.pool(), "a-token-kommo-refuses".to_string())).await;
}
