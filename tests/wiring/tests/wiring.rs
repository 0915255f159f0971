//! The local AWS wiring against moto: provisioning, the SQS pump's partial
//! batch semantics and redrive, the HTTP invoker, and the schedule ticker.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lambda_events::event::{
    cloudwatch_events::CloudWatchEvent,
    sqs::{SqsBatchResponse, SqsEvent},
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};
use wiring::{
    HttpInvoker, InProcess, InvokeError, Invoker, ProvisionSpec, PumpConfig, Redrive,
    ScheduleTicker, SqsPump,
};

async fn moto() -> aws_config::SdkConfig {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        panic!(
            "AWS_ENDPOINT_URL is not set: these tests need moto_server. \
             Run them with `cargo xtask test`, which starts moto and sets it."
        );
    }
    wiring::aws_config_from_env().await
}

fn unique_prefix(test: &str) -> String {
    format!(
        "t{}-{test}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// One record the handler saw: (body, ApproximateReceiveCount).
type Seen = Arc<Mutex<Vec<(String, u32)>>>;

/// A handler that fails every record whose body is `fail`, and records what it saw.
fn failing_handler(seen: Seen) -> Arc<dyn Invoker> {
    Arc::new(InProcess::new(move |event: SqsEvent| {
        let seen = seen.clone();
        async move {
            let mut resp = SqsBatchResponse::default();
            for r in event.records {
                let body = r.body.clone().unwrap_or_default();
                let count = r
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
                assert!(r
                    .event_source_arn
                    .as_deref()
                    .is_some_and(|a| a.starts_with("arn:aws:sqs:")));
                seen.lock().unwrap().push((body.clone(), count));
                if body == "fail" {
                    resp.add_failure(r.message_id.unwrap_or_default());
                }
            }
            Ok::<_, String>(resp)
        }
    }))
}

async fn queue_depth(sdk: &aws_config::SdkConfig, url: &str) -> (u64, u64) {
    let attrs = aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let n = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        n(QueueAttributeName::ApproximateNumberOfMessages),
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn drain_bodies(sdk: &aws_config::SdkConfig, url: &str) -> Vec<String> {
    let out = aws_sdk_sqs::Client::new(sdk)
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    out.messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.body)
        .collect()
}

async fn send_all(sdk: &aws_config::SdkConfig, url: &str, bodies: &[&str]) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for b in bodies {
        sqs.send_message()
            .queue_url(url)
            .message_body(*b)
            .send()
            .await
            .unwrap();
    }
}

fn fast_pump(url: &str) -> PumpConfig {
    let mut cfg = PumpConfig::new(url);
    cfg.wait_time = Duration::from_secs(0);
    cfg.retry_visibility = Duration::from_secs(0);
    cfg
}

#[tokio::test]
async fn only_the_failed_record_comes_back_and_lands_in_the_dlq_after_the_receive_count() {
    let sdk = moto().await;
    let mut spec = ProvisionSpec::local(
        &unique_prefix("redrive"),
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    );
    spec.max_receive_count = 3;
    let p = wiring::provision(&sdk, &spec).await.unwrap();
    let q = &p.kommo_events;
    send_all(&sdk, &q.url, &["ok-1", "fail", "ok-2"]).await;

    let seen: Seen = Arc::default();
    let pump = SqsPump::new(&sdk, fast_pump(&q.url), failing_handler(seen.clone()))
        .await
        .unwrap();

    let dlq_url = q.dlq_url.clone();
    let sdk2 = sdk.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        pump.poll_once().await.unwrap();
        if queue_depth(&sdk2, &dlq_url).await.0 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed record never reached the DLQ"
        );
    }

    let seen = seen.lock().unwrap().clone();
    let times = |body: &str| seen.iter().filter(|(b, _)| b == body).count();
    assert_eq!(times("ok-1"), 1, "succeeded records are deleted: {seen:?}");
    assert_eq!(times("ok-2"), 1, "succeeded records are deleted: {seen:?}");
    let fail_counts: Vec<u32> = seen
        .iter()
        .filter(|(b, _)| b == "fail")
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(
        fail_counts,
        vec![1, 2, 3],
        "the failed record is retried until maxReceiveCount: {seen:?}"
    );
    assert_eq!(
        queue_depth(&sdk, &q.url).await,
        (0, 0),
        "main queue is empty"
    );
    assert_eq!(
        drain_bodies(&sdk, &q.dlq_url).await,
        vec!["fail".to_string()]
    );
}

#[tokio::test]
async fn a_function_error_or_an_unknown_item_retries_the_whole_batch() {
    let sdk = moto().await;
    let spec = ProvisionSpec::local(&unique_prefix("whole"), "http://k", "http://z");
    let p = wiring::provision(&sdk, &spec).await.unwrap();
    let url = p.full_refresh_jobs.url.clone();
    send_all(&sdk, &url, &["a", "b"]).await;

    // First call errors, second names an id not in the batch, third succeeds.
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let invoker: Arc<dyn Invoker> = Arc::new(InProcess::new(move |event: SqsEvent| {
        let c = c.clone();
        async move {
            let n = {
                let mut n = c.lock().unwrap();
                *n += 1;
                *n
            };
            let mut resp = SqsBatchResponse::default();
            match n {
                1 => return Err("boom".to_string()),
                2 => resp.add_failure("not-in-this-batch"),
                _ => assert_eq!(event.records.len(), 2, "both records come back"),
            }
            Ok(resp)
        }
    }));
    let pump = SqsPump::new(&sdk, fast_pump(&url), invoker).await.unwrap();
    let mut outcomes: Vec<wiring::PollOutcome> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes.last().is_none_or(|o| o.succeeded < 2) {
        assert!(Instant::now() < deadline, "timed out: {outcomes:?}");
        let o = pump.poll_once().await.unwrap();
        if o.received > 0 {
            outcomes.push(o);
        }
    }
    let failed: Vec<usize> = outcomes.iter().map(|o| o.failed).collect();
    assert_eq!(failed, vec![2, 2, 0], "{outcomes:?}");
    assert_eq!(queue_depth(&sdk, &url).await, (0, 0));
}

#[tokio::test]
async fn the_pump_redrives_itself_when_the_queue_has_no_redrive_policy() {
    let sdk = moto().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let prefix = unique_prefix("self");
    let create = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.create_queue()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap()
        }
    };
    // A plain queue: moto will not redrive, so only the pump can.
    let url = create(format!("{prefix}-plain")).await;
    let dlq_url = create(format!("{prefix}-plain-dlq")).await;
    send_all(&sdk, &url, &["fail", "ok"]).await;

    let seen: Seen = Arc::default();
    let mut cfg = fast_pump(&url);
    cfg.redrive = Some(Redrive {
        dlq_url: dlq_url.clone(),
        max_receive_count: 2,
    });
    let pump = SqsPump::new(&sdk, cfg, failing_handler(seen.clone()))
        .await
        .unwrap();
    let mut redriven = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while redriven == 0 {
        assert!(
            Instant::now() < deadline,
            "never redriven: {:?}",
            seen.lock().unwrap()
        );
        redriven += pump.poll_once().await.unwrap().redriven;
    }
    let fails = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| b == "fail")
        .count();
    assert_eq!(fails, 2, "handed to the function max_receive_count times");
    assert_eq!(queue_depth(&sdk, &url).await, (0, 0));
    assert_eq!(drain_bodies(&sdk, &dlq_url).await, vec!["fail".to_string()]);
}

#[tokio::test]
async fn provisioning_is_idempotent_and_secrets_have_the_shapes_shared_reads() {
    let sdk = moto().await;
    let prefix = unique_prefix("prov");
    let mut spec = ProvisionSpec::local(&prefix, "http://127.0.0.1:7001", "http://127.0.0.1:7002");
    spec.db = Some(wiring::DbSecretSpec {
        host: "127.0.0.1".to_string(),
        port: 55432,
        username: "postgres".to_string(),
        password: "pw".to_string(),
        dbname: "erp".to_string(),
    });
    spec.slack_webhook_url = Some("http://127.0.0.1:7003/hook".to_string());
    let first = wiring::provision(&sdk, &spec).await.unwrap();

    // A restarted sandbox on a new port: provisioning again updates the secret.
    spec.kommo.base_url = "http://127.0.0.1:7999".to_string();
    spec.max_receive_count = 7;
    let second = wiring::provision(&sdk, &spec).await.unwrap();
    assert_eq!(first.kommo_events.url, second.kommo_events.url);
    assert_eq!(
        first.full_refresh_jobs.dlq_url,
        second.full_refresh_jobs.dlq_url
    );
    assert_eq!(first.kommo_secret_id, second.kommo_secret_id);

    assert_secrets_have_the_shapes_shared_reads(&sdk, &spec, &second).await;
    assert_redrive_policy_follows_the_spec(&sdk, &second).await;
    assert_env_names_what_config_reads(&second);
}

async fn assert_secrets_have_the_shapes_shared_reads(
    sdk: &aws_config::SdkConfig,
    spec: &ProvisionSpec,
    second: &wiring::Provisioned,
) {
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let read = |id: String| {
        let sm = sm.clone();
        async move {
            sm.get_secret_value()
                .secret_id(&id)
                .send()
                .await
                .unwrap()
                .secret_string
                .unwrap()
        }
    };
    let kommo: shared::platform::secrets::KommoSecret = shared::platform::secrets::parse_secret(
        "kommo",
        &read(second.kommo_secret_id.clone()).await,
    )
    .unwrap();
    assert_eq!(kommo.base_url, "http://127.0.0.1:7999");
    assert_eq!(kommo.webhook_token.expose(), spec.kommo.webhook_token);
    let zoho: shared::platform::secrets::ZohoSecret =
        shared::platform::secrets::parse_secret("zoho", &read(second.zoho_secret_id.clone()).await)
            .unwrap();
    assert_eq!(zoho.accounts_url, "http://127.0.0.1:7002");
    let jwt: shared::platform::secrets::StaffJwtSecret = shared::platform::secrets::parse_secret(
        "jwt",
        &read(second.staff_jwt_secret_id.clone()).await,
    )
    .unwrap();
    assert_eq!(jwt.hs256_secret.expose(), spec.staff_jwt.hs256_secret);
    let db: shared::platform::secrets::DbSecret = shared::platform::secrets::parse_secret(
        "db",
        &read(second.db_secret_id.clone().unwrap()).await,
    )
    .unwrap();
    assert_eq!(
        (db.host.as_str(), db.port, db.dbname.as_str()),
        ("127.0.0.1", 55432, "erp")
    );
    let slack: shared::platform::secrets::SlackSecret = shared::platform::secrets::parse_secret(
        "slack",
        &read(second.slack_secret_id.clone().unwrap()).await,
    )
    .unwrap();
    assert_eq!(slack.webhook_url.expose(), "http://127.0.0.1:7003/hook");
}

async fn assert_redrive_policy_follows_the_spec(
    sdk: &aws_config::SdkConfig,
    second: &wiring::Provisioned,
) {
    // The redrive policy follows the spec on every run.
    let policy = aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(&second.kommo_events.url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::RedrivePolicy)
        .unwrap();
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["deadLetterTargetArn"], second.kommo_events.dlq_arn);
    assert_eq!(policy["maxReceiveCount"].to_string().trim_matches('"'), "7");
}

fn assert_env_names_what_config_reads(second: &wiring::Provisioned) {
    // The environment the functions get names what shared::platform::config reads.
    let env: std::collections::HashMap<String, String> = second.env().into_iter().collect();
    assert_eq!(env["KOMMO_EVENTS_QUEUE_URL"], second.kommo_events.url);
    assert_eq!(env["FULL_REFRESH_QUEUE_URL"], second.full_refresh_jobs.url);
    let mut with_db = env.clone();
    with_db.insert("DATABASE_URL".into(), "postgres://localhost/x".into());
    let cfg = shared::platform::config::Config::from_lookup(
        &[
            shared::platform::config::Need::KommoSecret,
            shared::platform::config::Need::ZohoSecret,
            shared::platform::config::Need::StaffJwtSecret,
            shared::platform::config::Need::KommoEventsQueue,
            shared::platform::config::Need::FullRefreshQueue,
        ],
        |k| with_db.get(k).cloned(),
    )
    .unwrap();
    assert_eq!(
        cfg.kommo_secret_id.as_deref(),
        Some(second.kommo_secret_id.as_str())
    );
    assert_eq!(cfg.slack_secret_id, second.slack_secret_id);
}

/// A stand-in for `cargo lambda watch`'s invoke endpoint.
async fn fake_lambda_api(
    answer: (u16, Option<&'static str>, &'static str),
) -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    use axum::{extract::Path, http::StatusCode, routing::post, Json, Router};
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    let app = Router::new().route(
        "/2015-03-31/functions/{name}/invocations",
        post(move |Path(name): Path<String>, Json(event): Json<Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((name, event));
                let mut resp = axum::response::Response::new(axum::body::Body::from(answer.2));
                *resp.status_mut() = StatusCode::from_u16(answer.0).unwrap();
                if let Some(kind) = answer.1 {
                    resp.headers_mut()
                        .insert("x-amz-function-error", kind.parse().unwrap());
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

#[tokio::test]
async fn the_http_invoker_posts_to_the_lambda_invoke_api() {
    let (base, got) = fake_lambda_api((
        200,
        None,
        r#"{"batchItemFailures":[{"itemIdentifier":"m1"}]}"#,
    ))
    .await;
    let inv = HttpInvoker::new(&base, "webhook-processor", Duration::from_secs(5));
    let answer = inv.invoke(json!({"Records": []})).await.unwrap();
    assert_eq!(answer["batchItemFailures"][0]["itemIdentifier"], "m1");
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![("webhook-processor".to_string(), json!({"Records": []}))]
    );

    let (base, _) = fake_lambda_api((
        200,
        Some("Unhandled"),
        r#"{"errorType":"DbDown","errorMessage":"connection refused"}"#,
    ))
    .await;
    let err = HttpInvoker::new(&base, "webhook-processor", Duration::from_secs(5))
        .invoke(json!({}))
        .await
        .unwrap_err();
    match err {
        InvokeError::Function {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "DbDown");
            assert_eq!(message, "connection refused");
        }
        other => panic!("expected a function error, got {other:?}"),
    }

    let err = HttpInvoker::new("http://127.0.0.1:1", "x", Duration::from_secs(2))
        .invoke(json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::Transport(_)), "{err:?}");
}

#[tokio::test]
async fn the_ticker_sends_scheduled_events_on_its_interval() {
    let got: Arc<Mutex<Vec<CloudWatchEvent>>> = Arc::default();
    let g = got.clone();
    let invoker: Arc<dyn Invoker> = Arc::new(InProcess::new(move |ev: CloudWatchEvent| {
        let g = g.clone();
        async move {
            g.lock().unwrap().push(ev);
            Ok::<_, String>(Value::Null)
        }
    }));
    let handle = ScheduleTicker::new(invoker)
        .interval(Duration::from_millis(50))
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the ticker did not tick");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop().await;
    let after_stop = got.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(got.lock().unwrap().len(), after_stop, "no tick after stop");

    let events = got.lock().unwrap().clone();
    for ev in &events {
        assert_eq!(ev.detail_type.as_deref(), Some("Scheduled Event"));
        assert_eq!(ev.source.as_deref(), Some("aws.events"));
        assert_eq!(ev.resources.len(), 1);
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), events.len(), "each tick has its own event id");
}

#[tokio::test]
async fn a_spawned_pump_processes_until_stopped() {
    let sdk = moto().await;
    let spec = ProvisionSpec::local(&unique_prefix("spawn"), "http://k", "http://z");
    let p = wiring::provision(&sdk, &spec).await.unwrap();
    let seen: Seen = Arc::default();
    let mut cfg = fast_pump(&p.kommo_events.url);
    cfg.wait_time = Duration::from_secs(1);
    let handle = SqsPump::new(&sdk, cfg, failing_handler(seen.clone()))
        .await
        .unwrap()
        .spawn();
    send_all(&sdk, &p.kommo_events.url, &["x", "y"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the pump did not deliver");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop().await;
    assert_eq!(queue_depth(&sdk, &p.kommo_events.url).await, (0, 0));
}
