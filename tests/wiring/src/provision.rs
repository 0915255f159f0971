//! What the functions need from AWS, created in the emulator in one call:
//! the queues and the secrets, and the environment that names them.

use std::{collections::HashMap, time::Duration};

use aws_sdk_secretsmanager::Client as SecretsClient;
use aws_sdk_sqs::Client as SqsClient;

use crate::{
    queues::ensure_queue_pair,
    secrets::{ensure_secret, secret_documents},
    DbSecretSpec, KommoSecretSpec, QueuePair, StaffJwtSecretSpec, WiringError, ZohoSecretSpec,
    FULL_REFRESH_JOBS_QUEUE, KOMMO_EVENTS_QUEUE,
};

/// An SDK config for the emulator: `AWS_ENDPOINT_URL`, `AWS_REGION` and the
/// credentials come from the environment, as for the functions themselves.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    shared::platform::aws::config_loader().load().await
}

/// What to create in the emulator. Names are `<prefix>-<queue>` and
/// `<prefix>/<secret>`, so parallel tests with distinct prefixes never meet.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    pub prefix: String,
    /// Receives before SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// Visibility timeout of the main queues; failed records are made visible
    /// sooner by the pump (see [`crate::PumpConfig::retry_visibility`]).
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
                issuer: Some(shared::platform::auth::LOCAL_ISSUER.to_string()),
                audience: Some(shared::platform::auth::LOCAL_AUDIENCE.to_string()),
            },
            db: None,
            slack_webhook_url: None,
        }
    }
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
