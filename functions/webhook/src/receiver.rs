//! `POST /kommo/webhook/{token}`: authenticate, validate, buffer in SQS, answer.
//!
//! Kommo waits 2 seconds for a 2xx and disables the webhook after 100 failed
//! deliveries in 2 hours, so this side does no real work and does not need
//! the database: a delivery is accepted as long as SQS takes it.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::{
    kommo::webhook::{body_hash, parse_delivery, Delivery, QueuedDelivery},
    platform::apigw::{self, ApiError, BodyError, Request, Response},
    platform::db::DbPool,
    platform::flags::{FeatureFlags, Flag},
    platform::secrets::{KommoSecret, SecretSource},
    platform::sqs::{Queue, SqsError},
    platform::text::truncate,
};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::settings::ReceiverSettings;

const FORM: &str = "application/x-www-form-urlencoded";

/// Where accepted deliveries go. SQS in production; the benchmark measures
/// the receiver without the network call by passing a no-op queue.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Sends one message and returns its id.
    async fn send(&self, body: &str) -> Result<String, SqsError>;
}

#[async_trait]
impl DeliveryQueue for Queue {
    async fn send(&self, body: &str) -> Result<String, SqsError> {
        Queue::send(self, body).await
    }
}

pub struct Receiver {
    pub secret: SecretSource<KommoSecret>,
    pub flags: Arc<FeatureFlags>,
    pub pool: DbPool,
    pub queue: Arc<dyn DeliveryQueue>,
    pub settings: ReceiverSettings,
}

/// Compares in constant time. Hashing first makes the comparison independent
/// of the lengths too, so the token's length does not leak either.
pub fn token_matches(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else { return false };
    if expected.is_empty() {
        return false;
    }
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

impl Receiver {
    pub async fn handle(
        &self,
        req: &Request,
        path_token: Option<String>,
    ) -> Result<Response, ApiError> {
        let span = tracing::info_span!(
            "kommo_webhook",
            request_id = req.request_context.request_id.as_deref().unwrap_or("-")
        );
        self.receive(req, path_token.as_deref())
            .instrument(span)
            .await
    }

    async fn receive(&self, req: &Request, path_token: Option<&str>) -> Result<Response, ApiError> {
        apigw::expect_method(req, "POST")?;
        let secret = self.authenticate(req, path_token).await?;
        apigw::expect_content_type(req, FORM)?;
        let body = match self.body(req)? {
            Ok(body) => body,
            Err(raw) => {
                return self
                    .reject(req, &raw, &BodyError::BadBase64.to_string())
                    .await
            }
        };
        let delivery = match parse_delivery(&body) {
            Ok(d) => d,
            Err(e) => return self.reject(req, &body, &e.to_string()).await,
        };
        if let Some(expected) = secret.account_id {
            if delivery.account.id != Some(expected) {
                tracing::warn!(account_id = ?delivery.account.id, "webhook: delivery for another account");
                return Err(ApiError::new(
                    403,
                    "wrong_account",
                    "delivery is for another Kommo account",
                ));
            }
        }
        let kommo_request_id = apigw::header(req, "x-amocrm-requestid").map(str::to_string);
        self.log_metadata(&delivery, &body, kommo_request_id.as_deref());

        match self.kommo_live().await {
            Some(false) => {
                tracing::info!("webhook: enableKommoLive is off, delivery stubbed");
                return Ok(apigw::json_response(202, &json!({"mode": "stubbed"})));
            }
            Some(true) => {}
            None => tracing::warn!("webhook: flag unreadable, accepting the delivery anyway"),
        }

        // The body is form-encoded ASCII once it parsed, so this is lossless.
        let text = String::from_utf8_lossy(&body).into_owned();
        let request_id = req.request_context.request_id.clone();
        let envelope = QueuedDelivery::new(text, request_id, kommo_request_id, delivery.account.id);
        self.enqueue(&envelope).await
    }

    /// The Kommo secret, once the token in the path or query matches it.
    async fn authenticate(
        &self,
        req: &Request,
        path_token: Option<&str>,
    ) -> Result<KommoSecret, ApiError> {
        let secret = self.secret.get().await.map_err(|e| {
            // 503 makes Kommo retry later, when the secret may be readable again.
            tracing::error!(error = %e, "webhook: Kommo secret unavailable");
            ApiError::new(503, "unavailable", "try again later")
        })?;
        let given = path_token.or_else(|| req.query_string_parameters.first("token"));
        if !token_matches(given, secret.webhook_token.expose()) {
            tracing::warn!(
                source_ip = req.request_context.http.source_ip.as_deref().unwrap_or("-"),
                token_present = given.is_some(),
                "webhook: wrong or missing token"
            );
            return Err(ApiError::new(401, "unauthorized", "wrong or missing token"));
        }
        Ok(secret)
    }

    /// The body's bytes, or (inner `Err`) the raw text of a body that is not
    /// valid base64, which is kept as unparseable.
    fn body(&self, req: &Request) -> Result<Result<Vec<u8>, Vec<u8>>, ApiError> {
        match apigw::body_bytes(req, self.settings.max_body_bytes) {
            Ok(b) => Ok(Ok(b)),
            Err(e @ BodyError::TooLarge { .. }) => {
                tracing::warn!(error = %e, "webhook: body too large");
                Err(e.into())
            }
            Err(BodyError::BadBase64) => Ok(Err(req.body.clone().unwrap_or_default().into_bytes())),
        }
    }

    /// 200 once SQS has the delivery; 503 (so Kommo retries) when it refuses or is slow.
    async fn enqueue(&self, envelope: &QueuedDelivery) -> Result<Response, ApiError> {
        let sent = tokio::time::timeout(
            self.settings.sqs_timeout,
            self.queue.send(&envelope.to_json()),
        )
        .await;
        match sent {
            Ok(Ok(message_id)) => {
                tracing::info!(message_id = %message_id, sha256 = %envelope.sha256, "webhook: delivery queued");
                return Ok(apigw::json_response(200, &json!({"status": "queued"})));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, sha256 = %envelope.sha256, "webhook: SQS refused the delivery")
            }
            Err(_) => tracing::error!(sha256 = %envelope.sha256, "webhook: SQS send timed out"),
        }
        Err(ApiError::new(503, "queue_unavailable", "try again later"))
    }

    /// `Some(on)` when the flag could be read in time, `None` when not.
    async fn kommo_live(&self) -> Option<bool> {
        match tokio::time::timeout(
            self.settings.db_timeout,
            self.flags.is_enabled(Flag::KommoLive),
        )
        .await
        {
            Ok(Ok(on)) => Some(on),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook: could not read enableKommoLive");
                None
            }
            Err(_) => {
                tracing::warn!("webhook: reading enableKommoLive timed out");
                None
            }
        }
    }

    fn log_metadata(&self, d: &Delivery, body: &[u8], kommo_request_id: Option<&str>) {
        let events: Vec<String> = d
            .events
            .iter()
            .map(|e| format!("{:?}:{:?}:{}", e.entity, e.action, e.id))
            .collect();
        tracing::info!(
            account_id = ?d.account.id,
            subdomain = d.account.subdomain.as_deref().unwrap_or("-"),
            kommo_request_id = kommo_request_id.unwrap_or("-"),
            bytes = body.len(),
            sha256 = %body_hash(body),
            events = ?events,
            ignored = d.ignored.len(),
            "webhook: delivery received"
        );
    }

    /// An authenticated body the parser cannot read. Kommo counts a 4xx as a
    /// failed delivery and disables the webhook after enough of them, so a
    /// format change on its side must not cost the webhook: the body is
    /// queued as it came and answered 200. The processor records it as
    /// `rejected` with the parse error, ready for a replay after a fix
    /// (docs/runbook.md). With the kill switch off nothing is kept.
    async fn reject(&self, req: &Request, body: &[u8], reason: &str) -> Result<Response, ApiError> {
        tracing::warn!(
            error = %reason,
            bytes = body.len(),
            body = %truncate(&String::from_utf8_lossy(body), self.settings.log_body_chars),
            "webhook: unparseable delivery"
        );
        if self.kommo_live().await == Some(false) {
            return Ok(apigw::json_response(202, &json!({"mode": "stubbed"})));
        }
        let text = String::from_utf8_lossy(body).into_owned();
        let request_id = req.request_context.request_id.clone();
        let kommo_request_id = apigw::header(req, "x-amocrm-requestid").map(str::to_string);
        let envelope = QueuedDelivery::new(text, request_id, kommo_request_id, None);
        self.enqueue(&envelope).await?;
        Ok(apigw::json_response(
            200,
            &json!({"status": "rejected", "reason": reason}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"));
        assert!(!token_matches(Some(""), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
        assert!(!token_matches(Some(""), ""));
    }
}
