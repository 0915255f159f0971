//! Dependencies built once per cold start and shared by every invocation.

use std::sync::Arc;

use crate::{
    platform::auth::{check_staff_key, StaffKeyError},
    platform::config::{Config, ConfigError, Need},
    platform::db::{DbError, DbPool, DbSettings},
    platform::flags::FeatureFlags,
    platform::secrets::{SecretError, SecretSource, Secrets, StaffJwtSecret},
    platform::slack::SlackTarget,
    platform::sqs::Queue,
    platform::telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What every function has: settings, AWS config, secrets cache, pool, flags.
#[derive(Clone)]
pub struct AppContext {
    pub config: Arc<Config>,
    pub sdk: aws_config::SdkConfig,
    pub secrets: Arc<Secrets>,
    pub pool: DbPool,
    pub flags: Arc<FeatureFlags>,
}

impl AppContext {
    /// A function's cold start: logging first, so a failure to build the
    /// context is logged like everything else, then [`AppContext::from_env`].
    pub async fn start(function: &str, needs: &[Need]) -> Result<Self, InitError> {
        telemetry::init();
        // Lambda has no cold-start metric of its own; the dashboard counts these.
        let mut m = telemetry::Metrics::new("KommoZoho", function);
        m.add("cold_start", 1.0, telemetry::Unit::Count);
        m.flush();
        Self::from_env(needs).await.inspect_err(|e| {
            tracing::error!(error = %e, function, "the function could not start");
        })
    }

    /// Reads the environment and builds the clients. No network call is made
    /// unless the database settings live in a secret.
    pub async fn from_env(needs: &[Need]) -> Result<Self, InitError> {
        let config = Config::from_env(needs)?;
        let sdk = crate::platform::aws::load_config().await;
        Self::build(config, sdk).await
    }

    pub async fn build(config: Config, sdk: aws_config::SdkConfig) -> Result<Self, InitError> {
        let secrets = Arc::new(Secrets::new(&sdk, config.secrets_ttl).await?);
        let settings = DbSettings::resolve(&config, Some(&secrets)).await?;
        let pool = settings.pool()?;
        let flags = Arc::new(FeatureFlags::new(pool.clone(), config.flags_ttl));
        Ok(AppContext {
            config: Arc::new(config),
            sdk,
            secrets,
            pool,
            flags,
        })
    }

    pub fn sqs_client(&self) -> aws_sdk_sqs::Client {
        crate::platform::sqs::client(&self.sdk)
    }

    /// The Secrets Manager secret a setting names. A missing id is empty
    /// rather than an error: [`Need`] made the settings a function uses required.
    pub fn secret<T>(&self, id: &Option<String>) -> SecretSource<T> {
        SecretSource::Manager {
            secrets: self.secrets.clone(),
            id: id.clone().unwrap_or_default(),
        }
    }

    /// The staff JWT secret, checked now: a function that could not verify
    /// a staff token stops at start, with the reason, rather than answer 503
    /// to every staff request.
    pub async fn staff_key(&self) -> Result<SecretSource<StaffJwtSecret>, StaffKeyError> {
        let source = self.secret(&self.config.staff_jwt_secret_id);
        check_staff_key(&source).await.inspect_err(|e| {
            tracing::error!(error = %e, "the staff JWT secret is unusable; the function stops");
        })?;
        Ok(source)
    }

    /// Where Slack alerts go: the `SLACK_SECRET_ID` secret, or nowhere.
    pub fn slack_target(&self) -> SlackTarget {
        match &self.config.slack_secret_id {
            Some(id) => SlackTarget::Secret {
                secrets: self.secrets.clone(),
                id: id.clone(),
            },
            None => SlackTarget::None,
        }
    }

    /// The SQS queue a setting names (see [`AppContext::secret`] on a missing one).
    pub fn queue(&self, url: &Option<String>) -> Queue {
        Queue::new(self.sqs_client(), url.clone().unwrap_or_default())
    }
}

/// Limits of every AWS SDK call the functions make (Secrets Manager, SQS).
/// Two attempts fit in the operation limit, and the whole stays inside the
/// 2 seconds Kommo gives the webhook receiver.
pub(crate) fn call_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_millis(500))
        .operation_attempt_timeout(std::time::Duration::from_millis(600))
        .operation_timeout(std::time::Duration::from_millis(1200))
        .build()
}
