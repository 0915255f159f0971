//! Opening Postgres connections with the current credentials.
//!
//! The RDS secret's password can be rotated under a warm container. When
//! Postgres refuses the password (SQLSTATE 28P01), the connector reads the
//! secret again (a value newer than the refused attempt, so many refusals at
//! once cost one read) and retries once with it. Pooled connections and
//! single ones (migrations, `COPY`) share the same credentials.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tokio_postgres::{error::SqlState, Client, Config, Error, NoTls};

use crate::platform::secrets::{DbSecret, Secrets};

/// Where the connector re-reads a refused password.
#[derive(Clone)]
pub(super) struct Rotation {
    pub secrets: Secrets,
    pub secret_id: String,
}

#[derive(Clone)]
pub(super) struct Connector {
    pg: Arc<RwLock<Config>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    rotation: Option<Rotation>,
}

type Opened = (Client, JoinHandle<()>);

impl Connector {
    pub fn new(
        pg: Config,
        tls: Option<Arc<rustls::ClientConfig>>,
        rotation: Option<Rotation>,
    ) -> Self {
        Connector {
            pg: Arc::new(RwLock::new(pg)),
            tls,
            rotation,
        }
    }

    /// The settings connections are opened with now.
    pub fn current(&self) -> Config {
        self.pg
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Opens a connection, re-reading a refused password once.
    pub async fn open(&self) -> Result<Opened, Error> {
        let started = Instant::now();
        match self.open_with(&self.current()).await {
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                match self.reread(started).await {
                    Some(pg) => self.open_with(&pg).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn open_with(&self, pg: &Config) -> Result<Opened, Error> {
        Ok(match &self.tls {
            Some(tls) => {
                let connect = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, conn) = pg.connect(connect).await?;
                (client, spawn_connection(conn))
            }
            None => {
                let (client, conn) = pg.connect(NoTls).await?;
                (client, spawn_connection(conn))
            }
        })
    }

    /// The secret as it is now, applied to the settings; None when there is
    /// no secret to read or it cannot be read (the refusal stands).
    async fn reread(&self, refused_at: Instant) -> Option<Config> {
        let rotation = self.rotation.as_ref()?;
        let read = rotation
            .secrets
            .get_json_newer_than::<DbSecret>(&rotation.secret_id, refused_at)
            .await;
        match read {
            Ok(secret) => {
                let mut pg = self.current();
                apply_secret(&mut pg, &secret);
                *self.pg.write().unwrap_or_else(PoisonError::into_inner) = pg.clone();
                tracing::info!(
                    "database password refused; retrying with the secret's current value"
                );
                Some(pg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "database password refused and the secret could not be read again");
                None
            }
        }
    }
}

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _pg: &Config,
    ) -> Pin<Box<dyn Future<Output = Result<Opened, Error>> + Send + '_>> {
        Box::pin(self.open())
    }
}

/// Writes the secret's address and credentials into `pg`.
pub(super) fn apply_secret(pg: &mut Config, s: &DbSecret) {
    pg.host(&s.host)
        .port(s.port)
        .user(&s.username)
        .password(s.password.expose())
        .dbname(&s.dbname);
}

fn spawn_connection(
    conn: impl Future<Output = Result<(), Error>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    })
}

/// How long opening a connection may take, on top of the pool's own limit.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
