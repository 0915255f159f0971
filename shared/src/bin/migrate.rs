//! Applies the embedded migrations using the same settings as the functions
//! (`DATABASE_URL`, or `DB_SECRET_ID` with an RDS-format secret).

use shared::platform::{config::Config, db::DbSettings, secrets::Secrets};

#[tokio::main]
async fn main() {
    shared::platform::telemetry::init();
    if let Err(e) = run().await {
        tracing::error!(error = %e, "migration failed");
        eprintln!("migrate: {e}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env(&[])?;
    let sdk = shared::platform::aws::load_config().await;
    let secrets = Secrets::new(&sdk, config.secrets_ttl).await?;
    let settings = DbSettings::resolve(&config, Some(&secrets)).await?;
    let mut client = settings.connect().await?;
    let applied = shared::platform::db::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("migrate: schema is up to date");
    } else {
        for m in &applied {
            println!("migrate: applied {m}");
        }
    }
    Ok(())
}
