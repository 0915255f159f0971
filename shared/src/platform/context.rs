//! Dependencies built once per cold start and shared by every invocation.

use std::sync::Arc;

use crate::{
    platform::config::{Config, ConfigError, Need},
    platform::db::{DbError, DbPool, DbSettings},
    platform::flags::FeatureFlags,
    platform::secrets::{SecretError, Secrets},
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
    /// Reads the environment and builds the clients. No network call is made
    /// unless the database settings live in a secret.
    pub async fn from_env(needs: &[Need]) -> Result<Self, InitError> {
        let config = Config::from_env(needs)?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
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
        aws_sdk_sqs::Client::new(&self.sdk)
    }
}
