//! The secrets cache against a fake Secrets Manager whose answers the test
//! controls: what a deployed function meets when Secrets Manager is slow,
//! failing or denying, and how many calls the cache makes.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{http::HeaderMap, routing::post, Router};
use shared::platform::secrets::Secrets;

/// What the fake answers next.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Value(u32),
    ServerError,
    Denied,
}

#[derive(Default)]
struct Fake {
    mode: Option<Mode>,
    /// Every `X-Amz-Target` received, in order.
    calls: Vec<String>,
}

struct Server {
    fake: Arc<Mutex<Fake>>,
    sdk: aws_config::SdkConfig,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        let fake = Arc::new(Mutex::new(Fake {
            mode: Some(mode),
            calls: Vec::new(),
        }));
        let state = fake.clone();
        let app = Router::new().route(
            "/",
            post(move |headers: HeaderMap| {
                let state = state.clone();
                async move { answer(&state, &headers).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let sdk = shared::platform::aws::config_loader()
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url(format!("http://{addr}"))
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await;
        Server { fake, sdk }
    }

    fn set(&self, mode: Mode) {
        self.fake.lock().unwrap().mode = Some(mode);
    }

    fn calls(&self) -> Vec<String> {
        self.fake.lock().unwrap().calls.clone()
    }
}

async fn answer(
    state: &Mutex<Fake>,
    headers: &HeaderMap,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mode = {
        let mut f = state.lock().unwrap();
        f.calls.push(target.clone());
        f.mode
    };
    // Slow enough that concurrent readers overlap with one fetch.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let json = [("content-type", "application/x-amz-json-1.1")];
    use axum::http::StatusCode;
    match (target.as_str(), mode) {
        ("secretsmanager.GetSecretValue", Some(Mode::Value(v))) => (
            StatusCode::OK,
            json,
            serde_json::json!({
                "ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf",
                "Name": "app",
                "VersionId": format!("v{v}"),
                "SecretString": format!("value-{v}"),
            })
            .to_string(),
        ),
        ("secretsmanager.GetSecretValue", Some(Mode::ServerError)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json,
            r#"{"__type":"InternalServiceError","message":"try again"}"#.to_string(),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            json,
            r#"{"__type":"AccessDeniedException","message":"not authorized to perform this action"}"#
                .to_string(),
        ),
    }
}

#[tokio::test]
async fn past_its_ttl_the_cache_calls_only_get_secret_value() {
    let server = Server::start(Mode::Value(1)).await;
    let secrets = Secrets::new(&server.sdk, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(secrets.get_string("app").await.unwrap().expose(), "value-1");
    server.set(Mode::Value(2));
    assert_eq!(
        secrets.get_string("app").await.unwrap().expose(),
        "value-1",
        "within the TTL the cached value is served"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(secrets.get_string("app").await.unwrap().expose(), "value-2");
    let calls = server.calls();
    assert_eq!(
        calls,
        vec!["secretsmanager.GetSecretValue"; 2],
        "the template grants GetSecretValue and nothing else"
    );
}

#[tokio::test]
async fn a_transient_failure_serves_the_last_good_value_and_a_denial_does_not_hide() {
    let server = Server::start(Mode::Value(1)).await;
    let secrets = Secrets::new(&server.sdk, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(secrets.get_string("app").await.unwrap().expose(), "value-1");

    server.set(Mode::ServerError);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        secrets.get_string("app").await.unwrap().expose(),
        "value-1",
        "a 5xx past the TTL serves the last good value"
    );
    let after_failure = server.calls().len();
    assert_eq!(secrets.get_string("app").await.unwrap().expose(), "value-1");
    assert_eq!(
        server.calls().len(),
        after_failure,
        "a failed refresh waits before it is tried again"
    );

    let fresh = Secrets::new(&server.sdk, Duration::from_millis(100))
        .await
        .unwrap();
    server.set(Mode::Denied);
    let err = fresh.get_string("app").await.unwrap_err().to_string();
    assert!(err.contains("`app` could not be read"), "{err}");
    assert!(err.contains("AccessDenied"), "says why: {err}");
}

#[tokio::test]
async fn concurrent_readers_share_one_fetch_and_a_refused_credential_gets_a_newer_value() {
    let server = Server::start(Mode::Value(1)).await;
    let secrets = Secrets::new(&server.sdk, Duration::from_secs(300))
        .await
        .unwrap();
    let reads = (0..8).map(|_| {
        let s = secrets.clone();
        tokio::spawn(async move { s.get_string("app").await.unwrap().expose().to_string() })
    });
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap(), "value-1");
    }
    assert_eq!(server.calls().len(), 1, "one fetch in flight per secret");

    // A credential refused now wants a value fetched after the refusal, well
    // within the 5-minute TTL; eight refusals at once cost one read.
    server.set(Mode::Value(2));
    let refused_at = Instant::now();
    let reads = (0..8).map(|_| {
        let s = secrets.clone();
        tokio::spawn(async move {
            s.get_string_newer_than("app", refused_at)
                .await
                .unwrap()
                .expose()
                .to_string()
        })
    });
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap(), "value-2");
    }
    assert_eq!(server.calls().len(), 2);
    assert_eq!(secrets.get_string("app").await.unwrap().expose(), "value-2");
}
