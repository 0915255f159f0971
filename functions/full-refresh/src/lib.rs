//! The full-refresh function: an HTTP API that starts runs and reports their
//! progress, and an SQS worker that carries them out.
//!
//! Both binaries build their dependencies once per cold start and hand each
//! event to [`http::HttpApp`] or [`worker::WorkerApp`]; the domain lives in
//! `shared::refresh`, so tests and the benchmark drive it in-process.

pub mod http;
pub mod worker;

use std::sync::Arc;

use shared::secrets::{SecretError, Secrets};

/// Where a secret comes from: Secrets Manager (cached there), or a fixed
/// value for tests and the dev stack.
#[derive(Clone)]
pub enum SecretSource<T> {
    Manager { secrets: Arc<Secrets>, id: String },
    Fixed(T),
}

impl<T: Clone + serde::de::DeserializeOwned> SecretSource<T> {
    pub async fn get(&self) -> Result<T, SecretError> {
        match self {
            SecretSource::Manager { secrets, id } => secrets.get_json(id).await,
            SecretSource::Fixed(v) => Ok(v.clone()),
        }
    }
}
