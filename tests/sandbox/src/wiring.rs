//! Local AWS wiring: what `cargo lambda watch` does not provide.
//!
//! In AWS, Lambda's event-source mapping polls SQS and EventBridge invokes the
//! outbox drain every minute. Locally nothing does, so this module:
//! - provisions the queues (each with a dead-letter queue and a redrive
//!   policy) and the secrets in moto, pointing the secrets at the sandboxes;
//! - pumps an SQS queue into a function with a real `SqsEvent`, honouring
//!   `batchItemFailures` the way the event-source mapping does;
//! - ticks a function with an EventBridge `Scheduled Event`.
//!
//! Functions are reached through [`Invoker`]: in process (tests, benchmarks)
//! or over HTTP through `cargo lambda watch` (the dev stack).

use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    future::Future,
    marker::PhantomData,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use aws_lambda_events::{
    encodings::Base64Data,
    event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute},
};
use aws_sdk_secretsmanager::Client as SecretsClient;
use aws_sdk_sqs::{
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
        MessageSystemAttributeName, QueueAttributeName,
    },
    Client as SqsClient,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle};

/// Queue base names, as in `template.yaml` (which prefixes them with the stack name).
pub const KOMMO_EVENTS_QUEUE: &str = "kommo-events";
pub const FULL_REFRESH_JOBS_QUEUE: &str = "full-refresh-jobs";

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("SQS {operation} on {queue} failed: {reason}")]
    Sqs {
        operation: &'static str,
        queue: String,
        reason: String,
    },
    #[error("Secrets Manager {operation} on {secret} failed: {reason}")]
    Secrets {
        operation: &'static str,
        secret: String,
        reason: String,
    },
    #[error("queue {queue} has no usable {attribute} attribute")]
    QueueAttribute {
        queue: String,
        attribute: &'static str,
    },
    #[error("invalid wiring setting: {0}")]
    Setting(String),
}

fn sqs_err<E>(operation: &'static str, queue: &str, e: E) -> WiringError
where
    E: std::error::Error + 'static,
{
    WiringError::Sqs {
        operation,
        queue: queue.to_string(),
        reason: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
    }
}

fn secrets_err<E>(operation: &'static str, secret: &str, e: E) -> WiringError
where
    E: std::error::Error + 'static,
{
    WiringError::Secrets {
        operation,
        secret: secret.to_string(),
        // The SDK's error text never contains the secret string we sent.
        reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
    }
}

/// An SDK config for the emulator: `AWS_ENDPOINT_URL`, `AWS_REGION` and the
/// credentials come from the environment, as for the functions themselves.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

// ------------------------------------------------------------------ provision

/// Kommo secret contents (`shared::platform::secrets::KommoSecret`).
#[derive(Debug, Clone)]
pub struct KommoSecretSpec {
    /// Usually the Kommo sandbox's URL.
    pub base_url: String,
    pub access_token: String,
    pub webhook_token: String,
    pub account_id: Option<i64>,
}

/// Zoho secret contents (`shared::platform::secrets::ZohoSecret`).
#[derive(Debug, Clone)]
pub struct ZohoSecretSpec {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Usually the Zoho sandbox's URL (it serves `/oauth/v2/token`).
    pub accounts_url: String,
    pub api_domain: Option<String>,
}

/// Staff JWT secret contents (`shared::platform::secrets::StaffJwtSecret`).
#[derive(Debug, Clone)]
pub struct StaffJwtSecretSpec {
    pub hs256_secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// RDS-format database secret contents (`shared::platform::secrets::DbSecret`).
#[derive(Debug, Clone)]
pub struct DbSecretSpec {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub dbname: String,
}

/// What to create in the emulator. Names are `<prefix>-<queue>` and
/// `<prefix>/<secret>`, so parallel tests with distinct prefixes never meet.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    pub prefix: String,
    /// Receives before SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// Visibility timeout of the main queues; failed records are made visible
    /// sooner by the pump (see [`PumpConfig::retry_visibility`]).
    pub visibility_timeout: Duration,
    pub kommo: KommoSecretSpec,
    pub zoho: ZohoSecretSpec,
    pub staff_jwt: StaffJwtSecretSpec,
    /// Local work usually passes `DATABASE_URL` instead.
    pub db: Option<DbSecretSpec>,
    pub slack_webhook_url: Option<String>,
}

impl ProvisionSpec {
    /// Local defaults around the two sandbox URLs.
    pub fn local(prefix: &str, kommo_url: &str, zoho_url: &str) -> Self {
        ProvisionSpec {
            prefix: prefix.to_string(),
            max_receive_count: 5,
            visibility_timeout: Duration::from_secs(30),
            kommo: KommoSecretSpec {
                base_url: kommo_url.to_string(),
                access_token: "sandbox-kommo-access-token".to_string(),
                webhook_token: "sandbox-webhook-token".to_string(),
                account_id: None,
            },
            zoho: ZohoSecretSpec {
                client_id: "sandbox-client-id".to_string(),
                client_secret: "sandbox-client-secret".to_string(),
                refresh_token: "sandbox-refresh-token".to_string(),
                accounts_url: zoho_url.to_string(),
                api_domain: Some(zoho_url.to_string()),
            },
            staff_jwt: StaffJwtSecretSpec {
                hs256_secret: "sandbox-staff-jwt-secret-at-least-32-bytes".to_string(),
                issuer: None,
                audience: None,
            },
            db: None,
            slack_webhook_url: None,
        }
    }
}

/// A queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub max_receive_count: u32,
}

/// What [`provision`] created (or found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub kommo_events: QueuePair,
    pub full_refresh_jobs: QueuePair,
    /// Secret ARNs; the functions accept an ARN or a name.
    pub kommo_secret_id: String,
    pub zoho_secret_id: String,
    pub staff_jwt_secret_id: String,
    pub db_secret_id: Option<String>,
    pub slack_secret_id: Option<String>,
}

impl Provisioned {
    /// Environment variables for the functions, named as `shared::platform::config` reads them.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("KOMMO_SECRET_ID", self.kommo_secret_id.clone()),
            ("ZOHO_SECRET_ID", self.zoho_secret_id.clone()),
            ("STAFF_JWT_SECRET_ID", self.staff_jwt_secret_id.clone()),
            ("KOMMO_EVENTS_QUEUE_URL", self.kommo_events.url.clone()),
            ("FULL_REFRESH_QUEUE_URL", self.full_refresh_jobs.url.clone()),
        ];
        if let Some(id) = &self.db_secret_id {
            env.push(("DB_SECRET_ID", id.clone()));
        }
        if let Some(id) = &self.slack_secret_id {
            env.push(("SLACK_SECRET_ID", id.clone()));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The secret JSON documents, in the shapes `shared::platform::secrets` parses.
pub fn secret_documents(spec: &ProvisionSpec) -> Vec<(&'static str, Value)> {
    let mut docs = vec![
        (
            "kommo",
            json!({
                "base_url": spec.kommo.base_url,
                "access_token": spec.kommo.access_token,
                "webhook_token": spec.kommo.webhook_token,
                "account_id": spec.kommo.account_id,
            }),
        ),
        (
            "zoho",
            json!({
                "client_id": spec.zoho.client_id,
                "client_secret": spec.zoho.client_secret,
                "refresh_token": spec.zoho.refresh_token,
                "accounts_url": spec.zoho.accounts_url,
                "api_domain": spec.zoho.api_domain,
            }),
        ),
        (
            "staff-jwt",
            json!({
                "hs256_secret": spec.staff_jwt.hs256_secret,
                "issuer": spec.staff_jwt.issuer,
                "audience": spec.staff_jwt.audience,
            }),
        ),
    ];
    if let Some(db) = &spec.db {
        docs.push((
            "db",
            json!({
                "engine": "postgres",
                "host": db.host,
                "port": db.port,
                "username": db.username,
                "password": db.password,
                "dbname": db.dbname,
            }),
        ));
    }
    if let Some(url) = &spec.slack_webhook_url {
        docs.push(("slack", json!({ "webhook_url": url })));
    }
    docs
}

/// Creates the queues and secrets, or brings existing ones up to `spec`.
/// Running it twice is harmless; the second run updates secret values, so a
/// sandbox that restarted on a new port is picked up.
pub async fn provision(
    config: &aws_config::SdkConfig,
    spec: &ProvisionSpec,
) -> Result<Provisioned, WiringError> {
    if spec.max_receive_count == 0 {
        return Err(WiringError::Setting(
            "max_receive_count must be at least 1".to_string(),
        ));
    }
    let sqs = SqsClient::new(config);
    let kommo_events = ensure_queue_pair(&sqs, spec, KOMMO_EVENTS_QUEUE).await?;
    let full_refresh_jobs = ensure_queue_pair(&sqs, spec, FULL_REFRESH_JOBS_QUEUE).await?;

    let sm = SecretsClient::new(config);
    let mut ids: HashMap<&str, String> = HashMap::new();
    for (name, doc) in secret_documents(spec) {
        let full_name = format!("{}/{name}", spec.prefix);
        let arn = ensure_secret(&sm, &full_name, &doc.to_string()).await?;
        ids.insert(name, arn);
    }
    let mut take = |k: &str| ids.remove(k);
    Ok(Provisioned {
        kommo_events,
        full_refresh_jobs,
        kommo_secret_id: take("kommo").unwrap_or_default(),
        zoho_secret_id: take("zoho").unwrap_or_default(),
        staff_jwt_secret_id: take("staff-jwt").unwrap_or_default(),
        db_secret_id: take("db"),
        slack_secret_id: take("slack"),
    })
}

async fn ensure_queue_pair(
    sqs: &SqsClient,
    spec: &ProvisionSpec,
    base: &str,
) -> Result<QueuePair, WiringError> {
    let name = format!("{}-{base}", spec.prefix);
    let dlq_name = format!("{name}-dlq");
    let dlq_url = ensure_queue(sqs, &dlq_name).await?;
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;
    let url = ensure_queue(sqs, &name).await?;
    // Set on every run rather than at creation: CreateQueue on an existing
    // queue with different attributes fails, SetQueueAttributes converges.
    let redrive = json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": spec.max_receive_count,
    });
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            spec.visibility_timeout.as_secs().to_string(),
        )
        .send()
        .await
        .map_err(|e| sqs_err("SetQueueAttributes", &url, e))?;
    let arn = queue_arn(sqs, &url).await?;
    Ok(QueuePair {
        url,
        arn,
        dlq_url,
        dlq_arn,
        max_receive_count: spec.max_receive_count,
    })
}

async fn ensure_queue(sqs: &SqsClient, name: &str) -> Result<String, WiringError> {
    // Any lookup error falls through to CreateQueue: emulators disagree on the
    // "does not exist" error code, and CreateQueue reports the real problem.
    if let Ok(Some(url)) = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map(|o| o.queue_url)
    {
        return Ok(url);
    }
    let out = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sqs_err("CreateQueue", name, e))?;
    out.queue_url.ok_or_else(|| WiringError::QueueAttribute {
        queue: name.to_string(),
        attribute: "QueueUrl",
    })
}

async fn queue_attributes(
    sqs: &SqsClient,
    url: &str,
) -> Result<HashMap<QueueAttributeName, String>, WiringError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| sqs_err("GetQueueAttributes", url, e))?;
    Ok(out.attributes.unwrap_or_default())
}

async fn queue_arn(sqs: &SqsClient, url: &str) -> Result<String, WiringError> {
    queue_attributes(sqs, url)
        .await?
        .remove(&QueueAttributeName::QueueArn)
        .ok_or_else(|| WiringError::QueueAttribute {
            queue: url.to_string(),
            attribute: "QueueArn",
        })
}

async fn ensure_secret(sm: &SecretsClient, name: &str, value: &str) -> Result<String, WiringError> {
    match sm
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
    {
        Ok(out) => {
            return out.arn.ok_or_else(|| WiringError::Secrets {
                operation: "CreateSecret",
                secret: name.to_string(),
                reason: "no ARN in the answer".to_string(),
            })
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_exists_exception()) => {}
        Err(e) => return Err(secrets_err("CreateSecret", name, e)),
    }
    let out = sm
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| secrets_err("PutSecretValue", name, e))?;
    out.arn.ok_or_else(|| WiringError::Secrets {
        operation: "PutSecretValue",
        secret: name.to_string(),
        reason: "no ARN in the answer".to_string(),
    })
}

// ------------------------------------------------------------------- invokers

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The function could not be reached (cargo lambda watch not running...).
    #[error("invoke transport error: {0}")]
    Transport(String),
    /// The function ran and returned an error, as Lambda's `X-Amz-Function-Error`.
    #[error("function error {error_type}: {message}")]
    Function { error_type: String, message: String },
    /// The event or the answer did not have the expected JSON shape.
    #[error("invoke payload error: {0}")]
    Payload(String),
}

/// Something that runs a Lambda function on a JSON event and returns its
/// JSON result, as `lambda:Invoke` (RequestResponse) does.
#[async_trait]
pub trait Invoker: Send + Sync {
    async fn invoke(&self, event: Value) -> Result<Value, InvokeError>;
}

#[async_trait]
impl<T: Invoker + ?Sized> Invoker for Arc<T> {
    async fn invoke(&self, event: Value) -> Result<Value, InvokeError> {
        (**self).invoke(event).await
    }
}

/// Runs a handler in this process. The event goes through JSON both ways, as
/// it would in Lambda, so a handler sees exactly what the runtime would give it.
pub struct InProcess<F, E, R> {
    handler: F,
    _types: PhantomData<fn(E) -> R>,
}

impl<F, E, R> InProcess<F, E, R> {
    /// `handler` is usually an async closure, e.g. `|event: SqsEvent| async move { ... }`.
    pub fn new<Fut, Er>(handler: F) -> Self
    where
        F: Fn(E) -> Fut,
        Fut: Future<Output = Result<R, Er>>,
    {
        InProcess {
            handler,
            _types: PhantomData,
        }
    }
}

#[async_trait]
impl<F, Fut, E, R, Er> Invoker for InProcess<F, E, R>
where
    F: Fn(E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Er>> + Send + 'static,
    E: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    Er: Display + 'static,
{
    async fn invoke(&self, event: Value) -> Result<Value, InvokeError> {
        let event: E = serde_json::from_value(event)
            .map_err(|e| InvokeError::Payload(format!("event does not fit the handler: {e}")))?;
        let out = (self.handler)(event)
            .await
            .map_err(|e| InvokeError::Function {
                error_type: "HandlerError".to_string(),
                message: e.to_string(),
            })?;
        serde_json::to_value(out)
            .map_err(|e| InvokeError::Payload(format!("handler result is not JSON: {e}")))
    }
}

/// Default address of `cargo lambda watch`'s Lambda API emulator.
pub const CARGO_LAMBDA_WATCH_URL: &str = "http://127.0.0.1:9000";

/// Invokes a function through `cargo lambda watch`
/// (`POST /2015-03-31/functions/<name>/invocations`).
#[derive(Debug, Clone)]
pub struct HttpInvoker {
    client: reqwest::Client,
    url: String,
}

impl HttpInvoker {
    /// `base_url` is usually [`CARGO_LAMBDA_WATCH_URL`]. `timeout` should cover
    /// the function's own timeout plus the first build by `cargo lambda watch`.
    pub fn new(base_url: &str, function_name: &str, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        HttpInvoker {
            client,
            url: format!(
                "{}/2015-03-31/functions/{function_name}/invocations",
                base_url.trim_end_matches('/')
            ),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Invoker for HttpInvoker {
    async fn invoke(&self, event: Value) -> Result<Value, InvokeError> {
        let resp = self
            .client
            .post(&self.url)
            .json(&event)
            .send()
            .await
            .map_err(|e| InvokeError::Transport(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let function_error = resp
            .headers()
            .get("x-amz-function-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| InvokeError::Transport(format!("{}: {e}", self.url)))?;
        if function_error.is_some() || !status.is_success() {
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            return Err(InvokeError::Function {
                error_type: field("errorType")
                    .or(function_error)
                    .unwrap_or_else(|| format!("HTTP {status}")),
                message: field("errorMessage")
                    .unwrap_or_else(|| excerpt(&String::from_utf8_lossy(&body), 300)),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| {
            InvokeError::Payload(format!(
                "answer is not JSON ({e}): {}",
                excerpt(&String::from_utf8_lossy(&body), 300)
            ))
        })
    }
}

fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Stops a background pump or ticker and waits for it to finish its current step.
pub struct StopHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StopHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

// ------------------------------------------------------------------- SQS pump

/// A dead-letter queue the pump moves messages to itself.
#[derive(Debug, Clone)]
pub struct Redrive {
    pub dlq_url: String,
    pub max_receive_count: u32,
}

#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub queue_url: String,
    /// Records per event, 1 to 10 (the template uses 10 for webhooks, 1 for jobs).
    pub batch_size: i32,
    /// Long-poll wait of each receive; also how quickly a stop is noticed.
    pub wait_time: Duration,
    /// How long a failed record stays invisible before it is retried. Lambda
    /// leaves it for the queue's visibility timeout; tests want it short.
    pub retry_visibility: Duration,
    /// Redrive done by the pump when the emulator does not do it. `None` reads
    /// the queue's `RedrivePolicy`; moto applies that policy on receive itself,
    /// so the pump's own redrive is then only a fallback.
    pub redrive: Option<Redrive>,
}

impl PumpConfig {
    pub fn new(queue_url: impl Into<String>) -> Self {
        PumpConfig {
            queue_url: queue_url.into(),
            batch_size: 10,
            wait_time: Duration::from_secs(2),
            retry_visibility: Duration::from_secs(5),
            redrive: None,
        }
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub received: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Moved to the dead-letter queue by the pump (not by the emulator).
    pub redriven: usize,
}

/// Polls a queue and invokes a function with each batch, like Lambda's SQS
/// event-source mapping with `ReportBatchItemFailures`.
pub struct SqsPump {
    sqs: SqsClient,
    config: PumpConfig,
    invoker: Arc<dyn Invoker>,
    queue_arn: String,
    region: String,
    redrive: Option<Redrive>,
}

impl SqsPump {
    pub async fn new(
        sdk: &aws_config::SdkConfig,
        config: PumpConfig,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, WiringError> {
        if !(1..=10).contains(&config.batch_size) {
            return Err(WiringError::Setting(format!(
                "batch_size must be 1 to 10, not {}",
                config.batch_size
            )));
        }
        let sqs = SqsClient::new(sdk);
        let mut attrs = queue_attributes(&sqs, &config.queue_url).await?;
        let queue_arn = attrs.remove(&QueueAttributeName::QueueArn).ok_or_else(|| {
            WiringError::QueueAttribute {
                queue: config.queue_url.clone(),
                attribute: "QueueArn",
            }
        })?;
        let redrive = match &config.redrive {
            Some(r) => Some(r.clone()),
            None => match attrs.remove(&QueueAttributeName::RedrivePolicy) {
                Some(policy) => Some(redrive_from_policy(&sqs, &config.queue_url, &policy).await?),
                None => None,
            },
        };
        // arn:aws:sqs:<region>:<account>:<name>
        let region = queue_arn
            .split(':')
            .nth(3)
            .unwrap_or("us-east-1")
            .to_string();
        Ok(SqsPump {
            sqs,
            config,
            invoker,
            queue_arn,
            region,
            redrive,
        })
    }

    pub fn queue_arn(&self) -> &str {
        &self.queue_arn
    }

    /// Receives one batch (waiting up to `wait_time`) and hands it to the function.
    pub async fn poll_once(&self) -> Result<PollOutcome, WiringError> {
        let url = &self.config.queue_url;
        let out = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(self.config.batch_size)
            .wait_time_seconds(self.config.wait_time.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sqs_err("ReceiveMessage", url, e))?;
        let messages = out.messages.unwrap_or_default();
        let mut outcome = PollOutcome {
            received: messages.len(),
            ..PollOutcome::default()
        };
        if messages.is_empty() {
            return Ok(outcome);
        }

        let mut batch = Vec::with_capacity(messages.len());
        for m in messages {
            let over_limit = self
                .redrive
                .as_ref()
                .is_some_and(|r| receive_count(&m) > r.max_receive_count);
            match (&self.redrive, over_limit) {
                (Some(r), true) => {
                    self.move_to_dlq(r, &m).await?;
                    outcome.redriven += 1;
                }
                _ => batch.push(m),
            }
        }
        if batch.is_empty() {
            return Ok(outcome);
        }

        let event = self.event_for(&batch);
        let event = serde_json::to_value(&event)
            .map_err(|e| WiringError::Setting(format!("SQS event could not be serialised: {e}")))?;
        let ids: Vec<&str> = batch
            .iter()
            .map(|m| m.message_id.as_deref().unwrap_or_default())
            .collect();
        let failed_ids = match self.invoker.invoke(event).await {
            Ok(answer) => failed_items(&answer, &ids),
            Err(e) => {
                tracing::warn!(queue = %url, error = %e, "invocation failed; the whole batch is retried");
                ids.iter().map(|s| s.to_string()).collect()
            }
        };

        let (failed, succeeded): (Vec<&Message>, Vec<&Message>) = batch
            .iter()
            .partition(|m| failed_ids.contains(m.message_id.as_deref().unwrap_or_default()));
        outcome.failed = failed.len();
        outcome.succeeded = succeeded.len();
        self.delete(&succeeded).await?;
        self.release(&failed).await?;
        Ok(outcome)
    }

    /// Polls until stopped. Errors are logged and retried after a short pause,
    /// as the event-source mapping keeps polling through them.
    pub fn spawn(self) -> StopHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                match self.poll_once().await {
                    Ok(o) if o.received > 0 => {
                        tracing::debug!(queue = %self.config.queue_url, ?o, "sqs batch")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "sqs pump poll failed");
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stopped.changed()).await;
                    }
                }
            }
        });
        StopHandle { stop, task }
    }

    fn event_for(&self, batch: &[Message]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = batch
            .iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id.clone();
                r.receipt_handle = m.receipt_handle.clone();
                r.body = m.body.clone();
                r.md5_of_body = m.md5_of_body.clone();
                r.md5_of_message_attributes = m.md5_of_message_attributes.clone();
                r.attributes = m
                    .attributes
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect();
                r.message_attributes = m
                    .message_attributes
                    .iter()
                    .flatten()
                    .map(|(k, v)| {
                        let mut a = SqsMessageAttribute::default();
                        a.string_value = v.string_value.clone();
                        a.binary_value = v.binary_value.as_ref().map(|b| {
                            let mut d = Base64Data::default();
                            d.0 = b.as_ref().to_vec();
                            d
                        });
                        a.string_list_values = v.string_list_values.clone().unwrap_or_default();
                        a.data_type = Some(v.data_type.clone());
                        (k.clone(), a)
                    })
                    .collect();
                r.event_source = Some("aws:sqs".to_string());
                r.event_source_arn = Some(self.queue_arn.clone());
                r.aws_region = Some(self.region.clone());
                r
            })
            .collect();
        event
    }

    async fn delete(&self, messages: &[&Message]) -> Result<(), WiringError> {
        if messages.is_empty() {
            return Ok(());
        }
        let url = &self.config.queue_url;
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .build()
                    .map_err(|e| sqs_err("DeleteMessageBatch", url, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_err("DeleteMessageBatch", url, e))?;
        if let Some(f) = out.failed.first() {
            return Err(WiringError::Sqs {
                operation: "DeleteMessageBatch",
                queue: url.clone(),
                reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
            });
        }
        Ok(())
    }

    async fn release(&self, messages: &[&Message]) -> Result<(), WiringError> {
        if messages.is_empty() {
            return Ok(());
        }
        let url = &self.config.queue_url;
        let timeout = self.config.retry_visibility.as_secs().min(43_200) as i32;
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .visibility_timeout(timeout)
                    .build()
                    .map_err(|e| sqs_err("ChangeMessageVisibilityBatch", url, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .sqs
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sqs_err("ChangeMessageVisibilityBatch", url, e))?;
        if let Some(f) = out.failed.first() {
            return Err(WiringError::Sqs {
                operation: "ChangeMessageVisibilityBatch",
                queue: url.clone(),
                reason: format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
            });
        }
        Ok(())
    }

    async fn move_to_dlq(&self, redrive: &Redrive, m: &Message) -> Result<(), WiringError> {
        tracing::info!(
            queue = %self.config.queue_url,
            message_id = m.message_id.as_deref().unwrap_or_default(),
            "receive count exceeded; moving the message to the dead-letter queue"
        );
        self.sqs
            .send_message()
            .queue_url(&redrive.dlq_url)
            .message_body(m.body.clone().unwrap_or_default())
            .set_message_attributes(m.message_attributes.clone())
            .send()
            .await
            .map_err(|e| sqs_err("SendMessage", &redrive.dlq_url, e))?;
        self.delete(&[m]).await
    }
}

fn receive_count(m: &Message) -> u32 {
    m.attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

async fn redrive_from_policy(
    sqs: &SqsClient,
    queue_url: &str,
    policy: &str,
) -> Result<Redrive, WiringError> {
    let bad = || WiringError::QueueAttribute {
        queue: queue_url.to_string(),
        attribute: "RedrivePolicy",
    };
    let v: Value = serde_json::from_str(policy).map_err(|_| bad())?;
    let arn = v
        .get("deadLetterTargetArn")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    // The count is a number in moto and a string in real SQS.
    let max = match v.get("maxReceiveCount") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .ok_or_else(bad)?;
    let dlq_name = arn.rsplit(':').next().ok_or_else(bad)?;
    let dlq_url = sqs
        .get_queue_url()
        .queue_name(dlq_name)
        .send()
        .await
        .map_err(|e| sqs_err("GetQueueUrl", dlq_name, e))?
        .queue_url
        .ok_or_else(bad)?;
    Ok(Redrive {
        dlq_url,
        max_receive_count: max,
    })
}

/// Lambda's rules for a partial batch response: null or an empty list means
/// every record succeeded; an answer that is not a batch response, or names
/// an empty or unknown id, fails the whole batch.
pub fn failed_items(answer: &Value, ids: &[&str]) -> HashSet<String> {
    let all = || ids.iter().map(|s| s.to_string()).collect();
    if answer.is_null() {
        return HashSet::new();
    }
    let resp: SqsBatchResponse = match serde_json::from_value(answer.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "answer is not an SqsBatchResponse; the whole batch is retried");
            return all();
        }
    };
    let mut failed = HashSet::new();
    for f in resp.batch_item_failures {
        if !ids.contains(&f.item_identifier.as_str()) {
            tracing::warn!(
                item = %f.item_identifier,
                "batch item failure names an unknown message; the whole batch is retried"
            );
            return all();
        }
        failed.insert(f.item_identifier);
    }
    failed
}

// ------------------------------------------------------------ schedule ticker

/// The payload EventBridge sends for a `Schedule` (rule) target.
pub fn scheduled_event(time: chrono::DateTime<chrono::Utc>, rule_arn: &str) -> Value {
    let region = rule_arn.split(':').nth(3).unwrap_or("us-east-1");
    let account = rule_arn.split(':').nth(4).unwrap_or("123456789012");
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    })
}

/// Invokes a function with a scheduled event every `interval`, like the
/// template's `rate(1 minute)` rule. Ticks do not overlap: a slow invocation
/// delays the next tick, much as reserved concurrency 1 does in AWS.
pub struct ScheduleTicker {
    invoker: Arc<dyn Invoker>,
    interval: Duration,
    rule_arn: String,
}

impl ScheduleTicker {
    pub fn new(invoker: Arc<dyn Invoker>) -> Self {
        ScheduleTicker {
            invoker,
            interval: Duration::from_secs(60),
            rule_arn: "arn:aws:events:us-east-1:123456789012:rule/local-outbox-drain-tick"
                .to_string(),
        }
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn rule_arn(mut self, arn: impl Into<String>) -> Self {
        self.rule_arn = arn.into();
        self
    }

    /// One tick, now.
    pub async fn tick_once(&self) -> Result<Value, InvokeError> {
        let event = scheduled_event(chrono::Utc::now(), &self.rule_arn);
        self.invoker.invoke(event).await
    }

    /// Ticks until stopped; the first tick fires at once.
    pub fn spawn(self) -> StopHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                if *stopped.borrow() {
                    break;
                }
                // A failed tick is dropped, like MaximumRetryAttempts 0 in the template.
                if let Err(e) = self.tick_once().await {
                    tracing::warn!(error = %e, "scheduled invocation failed");
                }
            }
        });
        StopHandle { stop, task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_or_empty_answer_means_all_succeeded() {
        assert!(failed_items(&Value::Null, &["a", "b"]).is_empty());
        assert!(failed_items(&json!({"batchItemFailures": []}), &["a"]).is_empty());
    }

    #[test]
    fn named_failures_are_returned() {
        let f = failed_items(
            &json!({"batchItemFailures": [{"itemIdentifier": "b"}]}),
            &["a", "b", "c"],
        );
        assert_eq!(f, HashSet::from(["b".to_string()]));
    }

    #[test]
    fn unknown_id_or_bad_shape_fails_the_whole_batch() {
        let all = HashSet::from(["a".to_string(), "b".to_string()]);
        assert_eq!(
            failed_items(
                &json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]}),
                &["a", "b"]
            ),
            all
        );
        assert_eq!(
            failed_items(
                &json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
                &["a", "b"]
            ),
            all
        );
        assert_eq!(failed_items(&json!({"oops": 1}), &["a", "b"]), all);
    }

    #[test]
    fn scheduled_event_fits_the_cloudwatch_event_type() {
        let v = scheduled_event(
            chrono::Utc::now(),
            "arn:aws:events:eu-west-1:111122223333:rule/tick",
        );
        let ev: aws_lambda_events::event::cloudwatch_events::CloudWatchEvent =
            serde_json::from_value(v).unwrap();
        assert_eq!(ev.detail_type.as_deref(), Some("Scheduled Event"));
        assert_eq!(ev.source.as_deref(), Some("aws.events"));
        assert_eq!(ev.region.as_deref(), Some("eu-west-1"));
        assert_eq!(ev.account_id.as_deref(), Some("111122223333"));
        assert_eq!(
            ev.resources,
            vec!["arn:aws:events:eu-west-1:111122223333:rule/tick"]
        );
    }
}
