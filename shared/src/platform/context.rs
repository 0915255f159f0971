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

/// Instants before 2020-01-01 in milliseconds since the epoch. Lambda's
/// `Lambda-Runtime-Deadline-Ms` is always later than this.
const EPOCH_MS_2020: u64 = 1_577_836_800_000;

/// Time left in this invocation, from `lambda_runtime::Context::deadline`.
///
/// Lambda sends an instant in milliseconds since the epoch. `cargo lambda
/// watch` sends a fixed `600000` (a ten-minute budget, not an instant); read
/// as an instant it lies in 1970, and every run would stop before its first
/// batch. So a value too small to be an instant is taken as a budget from
/// now, and `0` (no header at all) as "no deadline given".
pub fn time_left(deadline_ms: u64) -> Option<std::time::Duration> {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    match deadline_ms {
        0 => None,
        ms if ms < EPOCH_MS_2020 => Some(Duration::from_millis(ms)),
        ms => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(Duration::from_millis(ms.saturating_sub(now_ms)))
        }
    }
}

#[cfg(test)]
mod time_left_tests {
    use super::time_left;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn a_lambda_deadline_counts_down_to_the_instant() {
        let left = time_left(now_ms() + 30_000).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(25));
    }

    #[test]
    fn a_passed_deadline_leaves_nothing() {
        assert_eq!(time_left(now_ms() - 1_000), Some(Duration::ZERO));
    }

    #[test]
    fn cargo_lambda_watchs_fixed_value_is_a_budget_and_zero_is_none() {
        assert_eq!(time_left(600_000), Some(Duration::from_secs(600)));
        assert_eq!(time_left(0), None);
    }
}
