//! Postgres access: a small pool sized for Lambda, TLS for remote hosts, and
//! the embedded migrations.
//!
//! A Lambda container serves one invocation at a time, so the pool holds one
//! or two connections. A connection idle for a second or more is verified
//! with a round trip when it is taken: a container that thaws after minutes
//! frozen finds its socket dead, and must reconnect instead of failing the
//! invocation. One handed back a moment ago (the next delivery of the same
//! batch) is not, which saves a round trip per delivery.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio_postgres::config::{Host, SslMode};

mod connector;

use connector::{Connector, Rotation};

use crate::{
    platform::config::{Config, DbSource},
    platform::secrets::{DbSecret, SecretError, Secrets},
};

/// A pooled connection unused for this long is checked before it is handed out.
const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(1);

pub use deadpool_postgres::{
    Object as PooledClient, Pool as DbPool, Transaction as PooledTransaction,
};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database settings are invalid: {0}")]
    Settings(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(String),
}

impl DbError {
    /// True when the database could not be reached at all (as opposed to a query error).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Secret(_) => true,
            DbError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// Connection settings resolved from the config and, when needed, the RDS secret.
#[derive(Clone)]
pub struct DbSettings {
    connector: Connector,
    pub pool_size: usize,
}

impl DbSettings {
    /// Reads the URL or the RDS secret. With the secret, a password Postgres
    /// later refuses is read again from it (see [`connector`]).
    pub async fn resolve(cfg: &Config, secrets: Option<&Secrets>) -> Result<Self, DbError> {
        let (mut pg, rotation) = match &cfg.db {
            DbSource::Url(url) => (
                url.parse::<tokio_postgres::Config>().map_err(|_| {
                    DbError::Settings("DATABASE_URL is not a valid postgres URL".into())
                })?,
                None,
            ),
            DbSource::Secret(id) => {
                let secrets = secrets.ok_or_else(|| {
                    DbError::Settings("DB_SECRET_ID is set but no secrets client was given".into())
                })?;
                let s: DbSecret = secrets.get_json(id).await?;
                let mut pg = tokio_postgres::Config::new();
                connector::apply_secret(&mut pg, &s);
                let rotation = Rotation {
                    secrets: secrets.clone(),
                    secret_id: id.clone(),
                };
                (pg, Some(rotation))
            }
        };
        pg.application_name("kommo-zoho-integration")
            .connect_timeout(connector::CONNECT_TIMEOUT)
            .keepalives(true)
            .options(format!(
                "-c statement_timeout={}",
                cfg.db_statement_timeout.as_millis()
            ));
        let tls = tls_for(&mut pg, cfg)?;
        Ok(DbSettings {
            connector: Connector::new(pg, tls, rotation),
            pool_size: cfg.db_pool_size,
        })
    }

    pub fn from_url(url: &str) -> Result<Self, DbError> {
        let pg = url
            .parse::<tokio_postgres::Config>()
            .map_err(|_| DbError::Settings("not a valid postgres URL".into()))?;
        Ok(DbSettings {
            connector: Connector::new(pg, None, None),
            pool_size: 2,
        })
    }

    /// The settings connections are opened with now (after any rotation).
    fn pg(&self) -> tokio_postgres::Config {
        self.connector.current()
    }

    /// Builds the pool; no connection is made until first use.
    pub fn pool(&self) -> Result<Pool, DbError> {
        // `Fast` still drops a connection whose socket is known closed.
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = Manager::from_connect(self.pg(), self.connector.clone(), mgr_cfg);
        Pool::builder(mgr)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .pre_recycle(Hook::async_fn(|client, metrics| {
                Box::pin(async move {
                    if metrics.last_used() >= VERIFY_IDLE_AFTER {
                        client.simple_query("").await.map_err(HookError::Backend)?;
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| DbError::Settings(e.to_string()))
    }

    /// A single connection outside the pool, for migrations and `COPY`.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, _connection) = self.connector.open().await?;
        Ok(client)
    }
}

/// TLS for remote hosts (or as `DB_REQUIRE_TLS` says), never silently
/// downgraded: `prefer` would fall back to plaintext, so TLS is required.
fn tls_for(
    pg: &mut tokio_postgres::Config,
    cfg: &Config,
) -> Result<Option<Arc<rustls::ClientConfig>>, DbError> {
    let remote = pg.get_hosts().iter().any(|h| match h {
        Host::Tcp(name) => !is_local_host(name),
        Host::Unix(_) => false,
    });
    if !cfg.db_require_tls.unwrap_or(remote) {
        return Ok(None);
    }
    pg.ssl_mode(SslMode::Require);
    Ok(Some(Arc::new(tls_config(cfg.db_ca_bundle.as_deref())?)))
}

fn is_local_host(name: &str) -> bool {
    matches!(name, "localhost" | "127.0.0.1" | "::1") || name.ends_with(".localhost")
}

fn tls_config(ca_bundle: Option<&str>) -> Result<rustls::ClientConfig, DbError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| DbError::Tls(format!("cannot read DB_CA_BUNDLE_PATH {path}: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| DbError::Tls(format!("bad PEM in {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("bad certificate in {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(DbError::Tls(format!("{path} holds no certificates")));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // ring is the one crypto provider in the tree (deny.toml bans aws-lc-rs);
    // naming it keeps rustls from guessing a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Applies every pending migration; a second run changes nothing.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<String>, DbError> {
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await
        .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// A fingerprint of the embedded migrations (names and checksums), so test
/// harnesses can cache a migrated template database per schema version.
pub fn migrations_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for m in embedded::migrations::runner().get_migrations() {
        h.update(m.to_string().as_bytes());
        h.update(m.checksum().to_le_bytes());
    }
    hex::encode(&h.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_hosts_need_tls_and_local_do_not() {
        assert!(is_local_host("localhost"));
        assert!(is_local_host("127.0.0.1"));
        assert!(!is_local_host("db.abcdefgh.eu-west-1.rds.amazonaws.com"));
    }

    #[test]
    fn missing_ca_bundle_is_a_clear_error() {
        let err = tls_config(Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(err
            .to_string()
            .contains("DB_CA_BUNDLE_PATH /nonexistent/ca.pem"));
    }
}
