//! Test harness shared by every crate's integration tests.
//!
//! Each test gets its own database, cloned from a migrated template, so tests
//! run in parallel against a real PostgreSQL. The server itself comes from
//! `DATABASE_URL` (an admin URL), which `cargo xtask test` sets after starting
//! a throwaway cluster; AWS calls go to the moto server at `AWS_ENDPOINT_URL`.

pub mod outbox;
pub mod refresh;

use std::time::Duration;

use shared::platform::db::{DbPool, DbSettings};
use tokio_postgres::NoTls;

/// A fresh database with every migration applied, dropped when the value is dropped.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set. Run the tests with `cargo xtask test`, which starts \
             PostgreSQL and moto itself, or point DATABASE_URL at a PostgreSQL admin URL."
        )
    })
}

/// Replaces the database name (the last path segment) of a postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = admin_url();
        let template = format!("kz_tmpl_{}", shared::platform::db::migrations_fingerprint());
        let admin = connect(&admin_url).await;
        admin
            .execute("SELECT pg_advisory_lock(727274)", &[])
            .await
            .expect("advisory lock");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {template}"))
                .await
                .expect("create template database");
            let mut c = connect(&with_database(&admin_url, &template)).await;
            shared::platform::db::migrate(&mut c)
                .await
                .expect("migrate template");
            drop(c);
        }
        admin
            .execute("SELECT pg_advisory_unlock(727274)", &[])
            .await
            .expect("advisory unlock");

        let name = format!("kz_test_{}", uuid::Uuid::new_v4().simple());
        // The template may still have the migrating connection closing; retry briefly.
        let mut tries = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .await
            {
                Ok(()) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database from template: {e}"),
            }
        }
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    pub fn settings(&self) -> DbSettings {
        DbSettings::from_url(&self.url).expect("test database URL")
    }

    pub fn pool(&self) -> DbPool {
        self.settings().pool().expect("pool")
    }

    /// A connection from the pool, as the functions use: its transactions
    /// are the ones `shared::ingest` takes.
    pub async fn pooled(&self) -> shared::platform::db::PooledClient {
        self.pool().get().await.expect("pooled connection")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Turns a feature flag on or off.
    pub async fn set_flag(&self, key: &str, enabled: bool) {
        let c = self.client().await;
        let n = shared::platform::flags::set_flag(&c, key, enabled)
            .await
            .expect("set flag");
        assert_eq!(n, 1, "unknown flag {key}");
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        let c = self.client().await;
        c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a short-lived thread works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok((c, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                        tokio::spawn(conn);
                        let _ = c
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// The moto endpoint; panics with instructions when it is not configured.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set. Run the tests with `cargo xtask test`, which starts \
             moto_server, or start `moto_server` and point AWS_ENDPOINT_URL at it."
        )
    })
}

/// AWS SDK config for moto with dummy credentials.
pub async fn aws_config() -> aws_config::SdkConfig {
    let endpoint = aws_endpoint();
    shared::platform::aws::config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "testkit",
        ))
        .load()
        .await
}

/// Creates a uniquely named secret in moto holding `value`, returning its id.
pub async fn put_secret(
    sdk: &aws_config::SdkConfig,
    prefix: &str,
    value: &serde_json::Value,
) -> String {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string(value.to_string())
        .send()
        .await
        .expect("create secret in moto");
    name
}

/// Creates a uniquely named SQS queue in moto, returning its URL.
pub async fn create_queue(sdk: &aws_config::SdkConfig, prefix: &str) -> String {
    let client = aws_sdk_sqs::Client::new(sdk);
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("create queue in moto")
        .queue_url
        .expect("queue url")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
