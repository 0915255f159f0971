//! The whole system on one machine: PostgreSQL, moto, the Kommo and Zoho
//! sandboxes, queues and secrets provisioned in moto, migrations, flags and
//! mapping seeds. `dev`, `demo` and the sample-event check all start from here.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use sandbox::{
    kommo::{KommoOptions, KommoSandbox},
    zoho::{ZohoOptions, ZohoSandbox},
};
use wiring::{ProvisionSpec, Provisioned};

use crate::{env_file, stack};

#[derive(Clone, Copy)]
pub struct DevOptions {
    pub leads: usize,
    pub contacts: usize,
    /// Ports; 0 is any free one.
    pub pg_port: u16,
    pub moto_port: u16,
    pub kommo_port: u16,
    pub zoho_port: u16,
    /// A database of its own on the server, rather than its admin database:
    /// a scripted run against a reused `DATABASE_URL` then starts empty.
    pub own_database: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            leads: 300,
            contacts: 200,
            pg_port: 0,
            moto_port: 0,
            kommo_port: 0,
            zoho_port: 0,
            own_database: false,
        }
    }
}

pub struct DevStack {
    pub db_url: String,
    pub aws_endpoint: String,
    pub kommo: KommoSandbox,
    pub zoho: ZohoSandbox,
    pub provisioned: Provisioned,
    /// What was provisioned; the sample events in `events/` use its webhook token and JWT key.
    pub spec: ProvisionSpec,
    pub sdk: aws_config::SdkConfig,
}

impl DevStack {
    /// Starts (or reuses, through `DATABASE_URL` / `AWS_ENDPOINT_URL`) every part.
    pub async fn start(work: &Path, opts: DevOptions) -> Result<Self> {
        let pg = stack::postgres_on(work, opts.pg_port)?;
        let aws_endpoint = match std::env::var("AWS_ENDPOINT_URL") {
            Ok(url) => url,
            Err(_) => stack::moto_on(work, opts.moto_port)?,
        };
        for (k, v) in stack::aws_env(&aws_endpoint) {
            // Only this process and its children; set before any SDK client is built.
            std::env::set_var(k, v);
        }

        let kommo = KommoSandbox::start(KommoOptions {
            leads: opts.leads,
            contacts: opts.contacts,
            port: opts.kommo_port,
            ..KommoOptions::default()
        })
        .await
        .context("start the Kommo sandbox")?;
        let zoho = ZohoSandbox::start(ZohoOptions {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], opts.zoho_port)),
            ..ZohoOptions::default()
        })
        .await
        .context("start the Zoho sandbox")?;

        let db_url = if opts.own_database {
            own_database(&pg.admin_url).await?
        } else {
            pg.admin_url
        };
        let mut client = shared::platform::db::DbSettings::from_url(&db_url)
            .context("DATABASE_URL")?
            .connect()
            .await
            .context("connect to PostgreSQL")?;
        shared::platform::db::migrate(&mut client)
            .await
            .context("apply migrations")?;
        seed(&client, &kommo).await?;

        let sdk = wiring::aws_config_from_env().await;
        let mut spec = ProvisionSpec::local(env_file::PREFIX, &kommo.base_url(), &zoho.base_url());
        spec.kommo.access_token = kommo.token().to_string();
        spec.zoho.client_id = zoho.client_id();
        spec.zoho.client_secret = zoho.client_secret();
        spec.zoho.refresh_token = zoho.refresh_token();
        // Failed deliveries come back quickly on one machine.
        spec.max_receive_count = 3;
        let provisioned = wiring::provision(&sdk, &spec)
            .await
            .context("provision queues and secrets in moto")?;

        Ok(DevStack {
            db_url,
            aws_endpoint,
            kommo,
            zoho,
            provisioned,
            spec,
            sdk,
        })
    }

    /// Environment for the functions (config names as `shared::platform::config` reads them).
    pub fn function_env(&self) -> Vec<(String, String)> {
        function_env(&self.db_url, &self.aws_endpoint, self.provisioned.env())
    }

    pub async fn db(&self) -> Result<tokio_postgres::Client> {
        Ok(shared::platform::db::DbSettings::from_url(&self.db_url)?
            .connect()
            .await?)
    }
}

/// The functions' environment for a stack at `db_url` and `aws_endpoint`,
/// with the queues and secrets of `provisioned`.
pub fn function_env(
    db_url: &str,
    aws_endpoint: &str,
    provisioned: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", db_url),
        ("RUST_LOG", "info"),
        // Read by people in a terminal, not by CloudWatch.
        ("AWS_LAMBDA_LOG_FORMAT", "Text"),
        ("STAFF_ROLES", "admin,ops"),
        ("OUTBOX_BACKOFF_BASE_SECONDS", "2"),
        ("OUTBOX_BACKOFF_CAP_SECONDS", "10"),
        ("ZOHO_PRODUCT_ID", "5725767000000649013"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    env.extend(stack::aws_env(aws_endpoint));
    env.extend(provisioned);
    env
}

/// Flags on, and the sandbox's users mapped to staff accounts.
async fn seed(client: &tokio_postgres::Client, kommo: &KommoSandbox) -> Result<()> {
    for flag in ["enableKommoLive", "enableZohoLive"] {
        shared::platform::flags::set_flag(client, flag, true).await?;
    }
    for user in kommo.users() {
        client
            .execute(
                "WITH s AS (
                     INSERT INTO staff_accounts (email, full_name, role) VALUES ($1, $2, 'sales')
                     ON CONFLICT (email) DO UPDATE SET full_name = excluded.full_name
                     RETURNING id)
                 INSERT INTO kommo_user_map (kommo_user_id, staff_account_id, kommo_user_name)
                 SELECT $3, id, $2 FROM s
                 ON CONFLICT (kommo_user_id) DO UPDATE SET staff_account_id = excluded.staff_account_id",
                &[&user.email, &user.name, &user.id],
            )
            .await
            .context("seed kommo_user_map")?;
    }
    Ok(())
}

/// Waits until `check` returns true or the timeout passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// Creates `kommo_local_<pid>_<millis>` on the server of `admin_url` and
/// answers its URL.
async fn own_database(admin_url: &str) -> Result<String> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // Digits and underscores only: safe to quote into the statement.
    let name = format!("kommo_local_{}_{millis}", std::process::id());
    let admin = shared::platform::db::DbSettings::from_url(admin_url)
        .context("DATABASE_URL")?
        .connect()
        .await
        .context("connect to PostgreSQL")?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("create database {name}"))?;
    let mut url = reqwest::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&name);
    eprintln!("xtask: this run uses its own database {name}");
    Ok(url.to_string())
}
