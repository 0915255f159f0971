//! The webhook function: the HTTP side (Kommo receiver and manual bookings)
//! and the SQS processor of buffered Kommo deliveries.
//!
//! The binaries only build an [`http::HttpApp`] or a [`processor::Processor`]
//! once per cold start and hand events to it; everything here can be driven
//! in-process by tests and the benchmark.

pub mod http;
pub mod manual;
pub mod processor;
pub mod receiver;
pub mod settings;

use std::sync::Arc;

use shared::secrets::{SecretError, Secrets};

/// Where a secret comes from: Secrets Manager (cached there), or a fixed
/// value for tests, the dev stack and the benchmark.
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
