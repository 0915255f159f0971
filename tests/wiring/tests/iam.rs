//! Least privilege, proven: each function's AWS calls succeed with exactly
//! the permissions `template.yaml` grants it, and fail without them.
//!
//! moto enforces IAM when started with `INITIAL_NO_AUTH_ACTION_COUNT`.
//! `iam/stack.py` expands the template with the SAM transform (as `sam
//! deploy` does), creates the secrets and queues it names, and makes one IAM
//! user per function holding exactly that function's statements. Each user
//! then does what the function's settings make the shared code do: read every
//! secret the function is configured with, again after the cache's TTL, and
//! send to every queue it is configured with. moto checks SQS resources but
//! not Secrets Manager ones, so the secrets' resources are also compared with
//! the grants here.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::Deserialize;
use shared::platform::{
    secrets::Secrets,
    sqs::{self, Queue},
};

/// Longer than the cache's TTL in the test, so the second read is a refresh.
const TTL: Duration = Duration::from_millis(300);

#[derive(Deserialize)]
struct Stack {
    admin: (String, String),
    functions: BTreeMap<String, Function>,
}

#[derive(Deserialize)]
struct Function {
    env: BTreeMap<String, String>,
    statements: Vec<serde_json::Value>,
    key: (String, String),
    control_key: Option<(String, String)>,
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A moto server of its own that checks IAM from the fourth call on.
fn start_moto() -> (Moto, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server on PATH (cargo xtask test installs it)");
    let moto = Moto(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (moto, format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not listen on {port}");
}

fn expand_template(endpoint: &str) -> Stack {
    let root = root();
    let out = Command::new("python3")
        .arg(root.join("tests/wiring/iam/stack.py"))
        .arg(endpoint)
        .arg(root.join("template.yaml"))
        .output()
        .expect("python3 (with boto3 and cfn-lint's aws-sam-translator)");
    assert!(
        out.status.success(),
        "iam/stack.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stack.py prints JSON")
}

async fn sdk_for(endpoint: &str, key: &(String, String)) -> aws_config::SdkConfig {
    shared::platform::aws::config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            &key.0, &key.1, None, None, "iam-test",
        ))
        .load()
        .await
}

fn configured<'a>(env: &'a BTreeMap<String, String>, suffix: &str) -> Vec<(&'a str, &'a str)> {
    env.iter()
        .filter(|(k, v)| k.ends_with(suffix) && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// What the shared code does with the function's settings; every refusal.
async fn exercise(
    endpoint: &str,
    admin: &(String, String),
    function: &str,
    key: &(String, String),
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let sdk = sdk_for(endpoint, key).await;
    let secrets = Secrets::new(&sdk, TTL).await.expect("secrets client");
    let mut refused = Vec::new();
    for (var, id) in configured(env, "_SECRET_ID") {
        if let Err(e) = secrets.get_string(id).await {
            refused.push(format!("{var}: {e}"));
            continue;
        }
        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
        if let Err(e) = secrets.get_string(id).await {
            refused.push(format!("{var} after the TTL: {e}"));
        }
    }
    for (var, url) in configured(env, "_QUEUE_URL") {
        let queue = Queue::new(sqs::client(&sdk), url);
        let done = match queue_use(function, var) {
            QueueUse::Send => queue.send("{}").await.map(drop),
            QueueUse::HoldBack => {
                let receipt = received(endpoint, admin, url).await;
                queue.hold(&receipt, Duration::from_secs(30)).await
            }
        };
        if let Err(e) = done {
            refused.push(format!("{var}: {e}"));
        }
    }
    refused
}

/// What a function's code does with a queue it is configured with.
enum QueueUse {
    Send,
    /// The processor holds deliveries back during an outage.
    HoldBack,
}

fn queue_use(function: &str, var: &str) -> QueueUse {
    match (function, var) {
        ("WebhookProcessor", "KOMMO_EVENTS_QUEUE_URL") => QueueUse::HoldBack,
        _ => QueueUse::Send,
    }
}

/// The receipt of a message received by Lambda's poller (here the admin),
/// as the processor gets it in its event.
async fn received(endpoint: &str, admin: &(String, String), url: &str) -> String {
    let sqs = sqs::client(&sdk_for(endpoint, admin).await);
    sqs.send_message()
        .queue_url(url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let out = sqs.receive_message().queue_url(url).send().await.unwrap();
    out.messages.unwrap_or_default()[0]
        .receipt_handle
        .clone()
        .unwrap()
}

/// Whether an Allow statement grants `action` on exactly `resource`.
fn grants(statements: &[serde_json::Value], action: &str, resource: &str) -> bool {
    let listed = |v: &serde_json::Value, want: &str| match v {
        serde_json::Value::String(s) => s == want || s == "*",
        serde_json::Value::Array(a) => a.iter().any(|s| s == want || s == "*"),
        _ => false,
    };
    statements.iter().any(|s| {
        s["Effect"] == "Allow" && listed(&s["Action"], action) && listed(&s["Resource"], resource)
    })
}

/// Every refusal a function would meet with `statements` as its policy:
/// the calls moto refuses, and the secrets read that no statement grants.
async fn refusals(
    stack: &(String, (String, String)),
    function: &str,
    key: &(String, String),
    env: &BTreeMap<String, String>,
    statements: &[serde_json::Value],
) -> Vec<String> {
    let (endpoint, admin) = stack;
    let mut refused = exercise(endpoint, admin, function, key, env).await;
    for (var, id) in configured(env, "_SECRET_ID") {
        if !grants(statements, "secretsmanager:GetSecretValue", id) {
            refused.push(format!(
                "{var}: AccessDenied, no statement grants GetSecretValue on {id}"
            ));
        }
    }
    refused
}

#[tokio::test]
async fn each_function_works_with_exactly_the_permissions_the_template_grants() {
    let (_moto, endpoint) = start_moto();
    let Stack { admin, functions } = expand_template(&endpoint);
    let stack = (endpoint, admin);
    assert_eq!(
        functions.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "FullRefresh",
            "FullRefreshWorker",
            "OutboxDrain",
            "Webhook",
            "WebhookProcessor"
        ]
    );

    let runs = functions.iter().map(|(name, f)| {
        let stack = &stack;
        async move {
            let refused = refusals(stack, name, &f.key, &f.env, &f.statements).await;
            // The same function with its last statement removed from the template.
            let control = match &f.control_key {
                Some(key) => {
                    let fewer = &f.statements[..f.statements.len() - 1];
                    Some(refusals(stack, name, key, &f.env, fewer).await)
                }
                None => None,
            };
            (name, refused, control)
        }
    });
    for (name, refused, control) in futures::future::join_all(runs).await {
        assert!(
            refused.is_empty(),
            "{name} is refused with the template's permissions:\n{}",
            refused.join("\n")
        );
        if let Some(control) = control {
            assert!(
                control.iter().any(|e| e.contains("AccessDenied")),
                "{name} without its last statement should be refused something, got {control:?}"
            );
        }
    }
}
