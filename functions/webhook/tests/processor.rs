//! The processor end to end: deliveries built by the Kommo sandbox go through
//! the receiver into moto SQS, then through the processor into Postgres,
//! with the lead data fetched from the sandbox's API.

mod common;

use std::{sync::Arc, time::Duration};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use common::*;
use sandbox::kommo::{ForcedError, KommoOptions, KommoSandbox, WebhookAction, WebhookEvent};
use shared::{
    ingest::Pipeline,
    kommo::{webhook::QueuedDelivery, KommoClient, KommoClientOptions},
    platform::secrets::Redacted,
    platform::sqs::Queue,
};
use webhook::processor::Processor;

struct World {
    db: testkit::TestDb,
    kommo: KommoSandbox,
    sqs: aws_sdk_sqs::Client,
    url: String,
    app: webhook::http::HttpApp,
}

impl World {
    async fn new() -> Self {
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
        let url = fresh_queue(&sqs).await;
        let app = http_app(db.pool(), Queue::new(sqs.clone(), &url));
        World {
            db,
            kommo,
            sqs,
            url,
            app,
        }
    }

    fn processor(&self) -> Processor {
        processor_for(&self.db.pool(), &self.kommo)
    }

    /// A lead that will produce a booking (active status, a contact).
    fn bookable_lead(&self) -> i64 {
        self.kommo
            .leads()
            .into_iter()
            .find(|l| {
                !l.contact_ids.is_empty() && ![142, 143, 79790631, 91703923].contains(&l.status_id)
            })
            .expect("the sandbox has a bookable lead")
            .id
    }

    /// Posts the delivery Kommo would send for `events` through the receiver.
    async fn deliver(&self, events: &[WebhookEvent]) -> i64 {
        let body = self.kommo.webhook_body(events);
        let mut req = load_event("webhook-contact-update.json");
        req.body = Some(body);
        let resp = self.app.handle(req).await;
        resp.status_code
    }

    async fn queued(&self) -> Vec<SqsMessage> {
        drain(&self.sqs, &self.url)
            .await
            .into_iter()
            .map(|m| {
                let mut s = SqsMessage::default();
                s.message_id = m.message_id;
                s.body = m.body;
                s
            })
            .collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        count(&self.db.client().await, sql).await
    }

    async fn text(&self, sql: &str) -> String {
        self.db
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

fn batch(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

fn failed_ids(resp: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn a_status_delivery_becomes_a_booking_with_zoho_work() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    assert_eq!(
        w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await,
        200
    );
    let msgs = w.queued().await;
    assert_eq!(msgs.len(), 1);
    let (resp, report) = w.processor().handle(batch(msgs)).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 1);

    let lead = w.kommo.lead(lead_id).unwrap();
    let c = w.db.client().await;
    let row = c
        .query_one(
            "SELECT b.kommo_status_id, b.channel, b.created_by, b.title, c.kommo_contact_id
               FROM bookings b JOIN clients c ON c.id = b.client_id
              WHERE b.source_payload_id = $1",
            &[&format!("kommo:{lead_id}")],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), lead.status_id);
    assert_eq!(row.get::<_, String>(1), "Kommo");
    assert_eq!(row.get::<_, String>(2), "system-kommo");
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some(lead.name.as_str())
    );
    assert_eq!(row.get::<_, Option<i64>>(4), Some(lead.contact_ids[0]));
    assert_eq!(
        w.count("SELECT count(*) FROM integrations_outbox WHERE event_type IN ('contact.upsert', 'sales_order.create')")
            .await,
        2
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed' AND attempts = 1"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_same_delivery_five_times_in_a_row_is_applied_once() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    for _ in 0..5 {
        assert_eq!(
            w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await,
            200
        );
    }
    let msgs = w.queued().await;
    assert_eq!(msgs.len(), 5);
    let p = w.processor();
    for m in msgs {
        let (resp, _) = p.handle(batch(vec![m])).await;
        assert!(resp.batch_item_failures.is_empty());
    }
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
    assert_eq!(w.count("SELECT count(*) FROM clients").await, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM integrations_outbox WHERE event_type = 'contact.upsert'")
            .await,
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM integrations_outbox WHERE event_type = 'sales_order.create'")
            .await,
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed' AND duplicate_count = 4")
            .await,
        1
    );
}

#[tokio::test]
async fn the_same_delivery_five_times_at_once_is_applied_once() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    let events = [WebhookEvent::lead_status(lead_id, 1)];
    let sends = (0..5).map(|_| w.deliver(&events));
    for status in futures::future::join_all(sends).await {
        assert_eq!(status, 200);
    }
    let msgs = w.queued().await;
    assert_eq!(msgs.len(), 5);
    // Five Lambda invocations at once, each with its own processor and pool.
    let runs = msgs.into_iter().map(|m| {
        let p = w.processor();
        async move { p.handle(batch(vec![m])).await }
    });
    for (resp, _) in futures::future::join_all(runs).await {
        assert!(resp.batch_item_failures.is_empty());
    }
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
    assert_eq!(w.count("SELECT count(*) FROM clients").await, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM integrations_outbox WHERE event_type = 'contact.upsert'")
            .await,
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM integrations_outbox WHERE event_type = 'sales_order.create'")
            .await,
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events").await,
        1
    );
}

#[tokio::test]
async fn duplicates_inside_one_batch_are_applied_once() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    for _ in 0..5 {
        w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    }
    let (resp, report) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!((report.processed, report.duplicates), (1, 4));
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
    assert_eq!(w.count("SELECT count(*) FROM integrations_outbox").await, 2);
    // The batch is recorded in one statement: one row, four duplicates.
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed' AND duplicate_count = 4")
            .await,
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events").await,
        1
    );
}

#[tokio::test]
async fn an_operators_status_mapping_applies_once_the_cached_tables_expire() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    let p = w.processor();
    let status_sql = format!("SELECT status FROM bookings WHERE kommo_lead_id = {lead_id}");
    let booking_status = || w.text(&status_sql);
    // A first batch loads the mapping tables into the container's cache.
    w.kommo.set_lead_status(lead_id, 67548607);
    w.deliver(&[WebhookEvent::lead_status(lead_id, 67548607)])
        .await;
    let (resp, _) = p.handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());

    w.db.client()
        .await
        .execute(
            "INSERT INTO kommo_status_map (status_id, label, booking_status)
             VALUES (4242, 'Paid', 'confirmed'), (4243, 'Paid in full', 'confirmed')",
            &[],
        )
        .await
        .unwrap();
    w.kommo.set_lead_status(lead_id, 4242);
    w.deliver(&[WebhookEvent::lead_status(lead_id, 4242)]).await;
    let (resp, report) = p.handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.processed, 1);
    assert_eq!(
        booking_status().await,
        "requested",
        "the cached tables are used"
    );
    assert_eq!(
        w.count(&format!("SELECT count(*) FROM bookings WHERE kommo_lead_id = {lead_id} AND kommo_status_id = 4242")).await,
        1
    );

    // Ten seconds later (MAPPING_TTL) the tables are read again.
    p.pipeline.reload_mapping();
    w.kommo.set_lead_status(lead_id, 4243);
    w.deliver(&[WebhookEvent::lead_status(lead_id, 4243)]).await;
    let (resp, report) = p.handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.processed, 1);
    assert_eq!(booking_status().await, "confirmed");
}

#[tokio::test]
async fn an_older_update_after_a_newer_one_changes_nothing() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    let now = chrono::Utc::now().timestamp();
    w.kommo.update_lead(lead_id, |l| {
        l.name = "Newest name".into();
        l.updated_at = now;
    });
    w.deliver(&[WebhookEvent::lead(WebhookAction::Update, lead_id)])
        .await;
    w.processor().handle(batch(w.queued().await)).await;

    // Kommo's late retry of an earlier change: the API (a lagging replica,
    // or a replay) reports an older state.
    w.kommo.update_lead(lead_id, |l| {
        l.name = "Older name".into();
        l.updated_at = now - 3600;
    });
    w.deliver(&[WebhookEvent::lead(WebhookAction::Update, lead_id)])
        .await;
    let (resp, _) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());

    let c = w.db.client().await;
    let title: String = c
        .query_one("SELECT title FROM bookings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(title, "Newest name");
    let name: String = c
        .query_one("SELECT name FROM sales_leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Newest name");
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_database_outage_loses_nothing() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    // The receiver with the database down still takes the delivery.
    let down = http_app(dead_pool(), Queue::new(w.sqs.clone(), &w.url));
    let mut req = load_event("webhook-contact-update.json");
    req.body = Some(
        w.kommo
            .webhook_body(&[WebhookEvent::lead_status(lead_id, 1)]),
    );
    assert_eq!(down.handle(req).await.status_code, 200);
    let msgs = w.queued().await;
    assert_eq!(msgs.len(), 1);

    // The processor with the database down hands the record back to SQS.
    let dead = processor_for(&dead_pool(), &w.kommo);
    let (resp, _) = dead.handle(batch(msgs.clone())).await;
    assert_eq!(failed_ids(&resp), vec![msgs[0].message_id.clone().unwrap()]);

    // Database back: the redelivered message completes.
    let (resp, report) = w.processor().handle(batch(msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.processed, 1);
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
}

#[tokio::test]
async fn a_429_then_200_from_kommo_is_processed() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    w.kommo.reset_stats();
    w.kommo.set_forced_error(Some(ForcedError::once(1, 429)));
    let (resp, report) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 1);
    assert_eq!(w.kommo.stats().status(429), 1);
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
}

#[tokio::test]
async fn a_persistent_5xx_fails_the_record_and_the_event_row_says_why() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    let msgs = w.queued().await;
    w.kommo
        .set_forced_error(Some(ForcedError::persistent(1, 503)));
    let (resp, report) = w.processor().handle(batch(msgs.clone())).await;
    assert_eq!(failed_ids(&resp), vec![msgs[0].message_id.clone().unwrap()]);
    assert_eq!(report.failed, 1);
    let c = w.db.client().await;
    let row = c
        .query_one(
            "SELECT status, error, attempts FROM kommo_webhook_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(
        row.get::<_, Option<String>>(1).unwrap().contains("503"),
        "{:?}",
        row.get::<_, Option<String>>(1)
    );
    assert_eq!(row.get::<_, i32>(2), 1);
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 0);

    // SQS redelivers; once Kommo recovers the same record goes through.
    w.kommo.clear_faults();
    let (resp, _) = w.processor().handle(batch(msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    let row = c
        .query_one(
            "SELECT status, error, attempts, duplicate_count FROM kommo_webhook_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "processed");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, i32>(2), 2);
    assert_eq!(row.get::<_, i32>(3), 0, "a redelivery is not a duplicate");
}

#[tokio::test]
async fn one_leads_call_per_batch() {
    let w = World::new().await;
    let ids: Vec<i64> = w
        .kommo
        .leads()
        .into_iter()
        .filter(|l| !l.contact_ids.is_empty())
        .take(4)
        .map(|l| l.id)
        .collect();
    for id in &ids {
        w.deliver(&[WebhookEvent::lead(WebhookAction::Update, *id)])
            .await;
    }
    w.kommo.reset_stats();
    let (resp, report) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.processed, 4);
    assert_eq!(w.kommo.stats().leads, 1);
    assert_eq!(w.count("SELECT count(*) FROM sales_leads").await, 4);
}

#[tokio::test]
async fn delete_and_contact_update_through_the_processor() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    let contact_id = w.kommo.lead(lead_id).unwrap().contact_ids[0];
    w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    w.processor().handle(batch(w.queued().await)).await;

    let later = chrono::Utc::now().timestamp() + 60;
    w.kommo.update_contact(contact_id, |c| {
        c.name = "Renamed Person".into();
        c.set_email(Some("renamed@example.test"));
        c.updated_at = later;
    });
    w.kommo.delete_lead(lead_id);
    // Several entities and actions in one body, as Kommo groups them.
    w.deliver(&[
        WebhookEvent::contact(WebhookAction::Update, contact_id),
        WebhookEvent::lead(WebhookAction::Delete, lead_id),
    ])
    .await;
    let (resp, _) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());

    let c = w.db.client().await;
    let row = c
        .query_one(
            "SELECT full_name, email FROM clients WHERE kommo_contact_id = $1",
            &[&contact_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Renamed Person");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("renamed@example.test")
    );
    assert_eq!(
        w.count("SELECT count(*) FROM bookings WHERE is_active")
            .await,
        0
    );
    assert_eq!(
        w.count("SELECT count(*) FROM sales_leads WHERE archived_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn a_late_delete_of_a_lead_that_exists_again_is_ignored() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    w.processor().handle(batch(w.queued().await)).await;
    // The lead is still (again) in Kommo, but an old delete delivery arrives.
    w.deliver(&[WebhookEvent::lead(WebhookAction::Delete, lead_id)])
        .await;
    let (resp, _) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(
        w.count("SELECT count(*) FROM bookings WHERE is_active")
            .await,
        1
    );
}

#[tokio::test]
async fn the_sample_sqs_event_is_processed() {
    let w = World::new().await;
    // The sample names the sandbox's first lead; make it one that books.
    let mut lead = w.kommo.lead(w.bookable_lead()).unwrap();
    lead.id = 30000001;
    w.kommo.upsert_lead(lead);
    let text = std::fs::read_to_string(event_path("webhook-processor-sqs.json")).unwrap();
    let event: SqsEvent = serde_json::from_str(&text).unwrap();
    let (resp, report) = w.processor().handle(event).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM bookings WHERE kommo_lead_id = 30000001")
            .await,
        1
    );
}

#[tokio::test]
async fn an_unusable_message_is_recorded_and_not_retried() {
    let w = World::new().await;
    let mut bad = SqsMessage::default();
    bad.message_id = Some("m-bad".into());
    bad.body = Some("not an envelope".into());
    let mut unparseable = SqsMessage::default();
    unparseable.message_id = Some("m-unparseable".into());
    unparseable.body = Some(QueuedDelivery::new("{json}".into(), None, None, None).to_json());
    let (resp, report) = w.processor().handle(batch(vec![bad, unparseable])).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.rejected, 2);
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events WHERE status = 'rejected'")
            .await,
        2
    );
}

#[tokio::test]
async fn with_the_flag_off_the_processor_leaves_the_batch_in_the_queue() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    w.deliver(&[WebhookEvent::lead_status(lead_id, 1)]).await;
    let msgs = w.queued().await;
    set_live(&w.db.client().await, false).await;
    let (resp, _) = w.processor().handle(batch(msgs)).await;
    assert_eq!(resp.batch_item_failures.len(), 1);
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events").await,
        0
    );
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 0);
}

/// A processor wired like `webhook-processor`'s main, against the sandbox,
/// with retry delays shortened so the failure tests stay fast.
fn processor_for(pool: &shared::platform::db::DbPool, kommo: &KommoSandbox) -> Processor {
    let client = KommoClient::with_token(
        &kommo.base_url(),
        Redacted::new(kommo.token()),
        KommoClientOptions {
            retry_min_delay: Duration::from_millis(5),
            retry_max_delay: Duration::from_millis(20),
            ..KommoClientOptions::default()
        },
    )
    .unwrap();
    Processor::from(Pipeline::new(
        pool.clone(),
        Arc::new(shared::platform::flags::FeatureFlags::new(
            pool.clone(),
            Duration::ZERO,
        )),
        client,
    ))
}

#[tokio::test]
async fn after_the_receive_limit_the_delivery_is_in_the_dlq_and_the_events_table_says_why() {
    use wiring::{InProcess, Invoker, PumpConfig, SqsPump};

    let w = World::new().await;
    let (main, dlq) = queue_with_dlq(&w.sqs, 2, None).await;
    let app = http_app(w.db.pool(), Queue::new(w.sqs.clone(), &main));
    let mut req = load_event("webhook-contact-update.json");
    req.body = Some(
        w.kommo
            .webhook_body(&[WebhookEvent::lead_status(w.bookable_lead(), 1)]),
    );
    assert_eq!(app.handle(req).await.status_code, 200);

    w.kommo
        .set_forced_error(Some(ForcedError::persistent(1, 502)));
    let processor = Arc::new(w.processor());
    let invoker: Arc<dyn Invoker> = Arc::new(InProcess::new(move |event: SqsEvent| {
        let p = processor.clone();
        async move { Ok::<_, std::convert::Infallible>(p.handle(event).await.0) }
    }));
    let mut config = PumpConfig::new(&main);
    config.wait_time = Duration::ZERO;
    config.retry_visibility = Duration::ZERO;
    let pump = SqsPump::new(&testkit::aws_config().await, config, invoker)
        .await
        .unwrap();
    let mut failures = 0;
    for _ in 0..6 {
        failures += pump.poll_once().await.unwrap().failed;
    }
    assert_eq!(failures, 2, "two receives, then the dead-letter queue");
    assert_eq!(drain(&w.sqs, &dlq).await.len(), 1);
    assert!(drain(&w.sqs, &main).await.is_empty());

    let c = w.db.client().await;
    let row = c
        .query_one(
            "SELECT status, attempts, error FROM kommo_webhook_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, i32>(1), 2);
    assert!(row.get::<_, Option<String>>(2).unwrap().contains("502"));
}

#[tokio::test]
async fn a_nul_from_kommo_is_dropped_instead_of_failing_the_delivery() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    // The API answers the lead's name with `\u0000`, which jsonb and text refuse.
    let mut lead = w.kommo.lead(lead_id).unwrap();
    lead.name = "Safari\0 booking".into();
    w.kommo.upsert_lead(lead);
    // The delivery carries `%00` in a field too.
    let body = w
        .kommo
        .webhook_body(&[WebhookEvent::lead_status(lead_id, 1)])
        + "&leads[status][0][name]=x%00y";
    let mut req = load_event("webhook-contact-update.json");
    req.body = Some(body);
    assert_eq!(w.app.handle(req).await.status_code, 200);

    let (resp, report) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 1);
    let c = w.db.client().await;
    let name: String = c
        .query_one(
            "SELECT name FROM sales_leads WHERE kommo_lead_id = $1",
            &[&lead_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Safari booking");
}

/// Three deliveries for three different bookable-or-not leads, queued.
async fn three_deliveries(w: &World) -> Vec<SqsMessage> {
    let leads: Vec<i64> = w.kommo.leads().iter().map(|l| l.id).take(3).collect();
    for lead in &leads {
        assert_eq!(w.deliver(&[WebhookEvent::lead_status(*lead, 1)]).await, 200);
    }
    let msgs = w.queued().await;
    assert_eq!(msgs.len(), 3);
    msgs
}

#[tokio::test]
async fn a_batch_fetch_kommo_refuses_falls_back_to_one_fetch_per_delivery() {
    let w = World::new().await;
    let msgs = three_deliveries(&w).await;
    // The batch's one leads call is refused as if one id were bad.
    w.kommo.set_forced_error(Some(ForcedError::once(1, 400)));
    w.kommo.reset_stats();
    let (resp, report) = w.processor().handle(batch(msgs)).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 3, "the neighbours do not fail with it");
    assert!(
        w.kommo.stats().leads >= 4,
        "one refused batch call, then one call per delivery: {:?}",
        w.kommo.stats()
    );
}

#[tokio::test]
async fn near_the_deadline_the_rest_of_the_batch_is_handed_back_not_failed() {
    let w = World::new().await;
    let msgs = three_deliveries(&w).await;
    let ids: Vec<String> = msgs.iter().map(|m| m.message_id.clone().unwrap()).collect();
    let spent = shared::platform::deadline::Deadline::after(Duration::ZERO, Duration::ZERO);
    let (resp, report) = w
        .processor()
        .handle_until(batch(msgs.clone()), &spent)
        .await;
    let mut failed = failed_ids(&resp);
    failed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(failed, want, "handed back to SQS");
    assert_eq!((report.handed_back, report.failed), (3, 0));
    assert_eq!(
        w.count(
            "SELECT count(*) FROM kommo_webhook_events WHERE status = 'failed' OR attempts > 0"
        )
        .await,
        0,
        "nothing about them counts as a failure"
    );

    let (resp, report) = w.processor().handle(batch(msgs)).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.processed, 3);
}

#[tokio::test]
async fn a_delivery_rejected_by_an_older_parser_is_replayed_and_applied() {
    let w = World::new().await;
    let lead_id = w.bookable_lead();
    // As an older parser left it: the body as Kommo sent it, rejected.
    let body = w
        .kommo
        .webhook_body(&[WebhookEvent::lead_status(lead_id, 1)]);
    let c = w.db.client().await;
    c.execute(
        "INSERT INTO kommo_webhook_events (dedupe_key, raw_payload, status, error)
         VALUES ($1, $2, 'rejected', 'unknown field')",
        &[&shared::kommo::webhook::body_hash(body.as_bytes()), &body],
    )
    .await
    .unwrap();

    let queue = Queue::new(w.sqs.clone(), &w.url);
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let n = shared::ingest::replay::replay_rejected(&c, &queue, since)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (resp, report) = w.processor().handle(batch(w.queued().await)).await;
    assert!(resp.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.processed, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM kommo_webhook_events WHERE status = 'processed'")
            .await,
        1
    );
    assert_eq!(w.count("SELECT count(*) FROM bookings").await, 1);
    let again = shared::ingest::replay::replay_rejected(&c, &queue, since)
        .await
        .unwrap();
    assert_eq!(again, 0, "a replayed delivery is not replayed twice");
}
