//! Running a Lambda function on a JSON event: in this process, or through
//! `cargo lambda watch`'s invoke API, with Lambda's error semantics.

use std::{fmt::Display, future::Future, marker::PhantomData, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use shared::platform::text::truncate;

/// Characters of a bad answer kept in an error, enough to recognise it.
const ANSWER_EXCERPT_CHARS: usize = 300;

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
            return Err(function_failure(status, function_error, &body));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| {
            InvokeError::Payload(format!(
                "answer is not JSON ({e}): {}",
                answer_excerpt(&body)
            ))
        })
    }
}

/// The error a failed invocation reports: the runtime's `errorType` and
/// `errorMessage` when the body has them, else the header and the status.
fn function_failure(
    status: reqwest::StatusCode,
    function_error: Option<String>,
    body: &[u8],
) -> InvokeError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    InvokeError::Function {
        error_type: field("errorType")
            .or(function_error)
            .unwrap_or_else(|| format!("HTTP {status}")),
        message: field("errorMessage").unwrap_or_else(|| answer_excerpt(body)),
    }
}

fn answer_excerpt(body: &[u8]) -> String {
    truncate(&String::from_utf8_lossy(body), ANSWER_EXCERPT_CHARS)
}
