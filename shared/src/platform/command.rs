//! What an operator's command (`migrate`, `replay-rejected`) shares with the
//! functions: their settings, their database, and one way to fail.

use std::future::Future;

use crate::platform::{
    config::{Config, Need},
    db::DbSettings,
    secrets::Secrets,
    telemetry,
};

/// The functions' settings, AWS config and a database connection.
pub struct Command {
    pub config: Config,
    pub sdk: aws_config::SdkConfig,
    pub db: tokio_postgres::Client,
}

impl Command {
    /// Reads the settings (`DATABASE_URL` or `DB_SECRET_ID`, and `needs`)
    /// and connects as the functions do.
    pub async fn connect(needs: &[Need]) -> anyhow::Result<Self> {
        let config = Config::from_env(needs)?;
        let sdk = crate::platform::aws::load_config().await;
        let secrets = Secrets::new(&sdk, config.secrets_ttl).await?;
        let db = DbSettings::resolve(&config, Some(&secrets))
            .await?
            .connect()
            .await?;
        Ok(Command { config, sdk, db })
    }
}

/// A command's `main`: logging first, then `body`; an error ends the
/// process with its reason on stderr and exit code 1.
pub async fn main(name: &str, body: impl Future<Output = anyhow::Result<()>>) {
    telemetry::init();
    if let Err(e) = body.await {
        tracing::error!(error = %e, "{name} failed");
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}
