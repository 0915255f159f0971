//! One Kommo request budget shared by every container, kept in Postgres.
//!
//! Kommo allows 7 requests per second per account and blocks the IP after
//! repeated excess, so a limiter per container is not enough: three webhook
//! processors and the refresh worker would add up to four times the limit.
//! Every request reserves the next slot of the one `account` row with a
//! single `UPDATE … RETURNING` and sleeps until it (GCRA, burst 1). While a
//! full refresh runs, webhook requests first take a slot of the slower
//! `webhooks` row, so the refresh gets most of the budget and webhooks still
//! move. A 429's `Retry-After` pushes everyone's next slot; a 403 (blocked)
//! stops every container's calls for a while.

use std::time::Duration;

use crate::platform::db::DbPool;

/// Which flow a client's requests belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Webhook processing: slowed to `webhook_share` while a refresh runs.
    Webhooks,
    /// The full refresh: marks itself running with each request.
    Refresh,
}

#[derive(Clone, Debug)]
pub struct BudgetSettings {
    /// Requests per second for the whole account.
    pub per_second: f64,
    /// Requests per second the webhook lane may use while a refresh runs.
    pub webhook_share: f64,
    /// How long after its last request a refresh still counts as running.
    pub refresh_grace: Duration,
    /// How long every call stops after Kommo blocks the IP (403).
    pub block_pause: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            per_second: 7.0,
            webhook_share: 2.0,
            refresh_grace: Duration::from_secs(30),
            block_pause: Duration::from_secs(600),
        }
    }
}

impl BudgetSettings {
    /// The account's rate from `KOMMO_RATE_PER_SECOND`; the rest as default.
    pub fn from_config(cfg: &crate::platform::config::Config) -> Self {
        BudgetSettings {
            per_second: f64::from(cfg.kommo_rate_per_second),
            ..BudgetSettings::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("Kommo calls are paused until {until} after Kommo blocked the IP (HTTP 403)")]
    Blocked {
        until: chrono::DateTime<chrono::Utc>,
    },
    #[error("the shared Kommo budget could not be read: {0}")]
    Store(String),
}

/// The shared budget, cheap to clone.
#[derive(Clone)]
pub struct SharedBudget {
    pool: DbPool,
    lane: Lane,
    settings: BudgetSettings,
}

/// While a refresh runs, a webhook request first takes the next slot of the
/// slower `webhooks` lane; no row when no refresh runs. The answer is the
/// wait in seconds. The account slot is reserved only after this wait, so a
/// queue of webhook requests never holds account slots the refresh could use.
const RESERVE_LANE: &str = "
UPDATE kommo_request_budget w
   SET next_slot = greatest(w.next_slot, clock_timestamp()) + make_interval(secs => $1),
       updated_at = clock_timestamp()
 WHERE w.id = 'webhooks'
   AND EXISTS (SELECT 1 FROM kommo_request_budget a
                WHERE a.id = 'account' AND a.refresh_until > clock_timestamp())
RETURNING greatest(extract(epoch FROM w.next_slot - make_interval(secs => $1)
                                      - clock_timestamp()), 0)::float8";

/// Reserves the next account slot and answers the wait in seconds; a
/// refresh request also marks the refresh running. No row while Kommo has
/// blocked the IP.
const RESERVE_ACCOUNT: &str = "
UPDATE kommo_request_budget
   SET next_slot = greatest(next_slot, clock_timestamp()) + make_interval(secs => $1),
       refresh_until = CASE WHEN $2 THEN clock_timestamp() + make_interval(secs => $3)
                            ELSE refresh_until END,
       updated_at = clock_timestamp()
 WHERE id = 'account'
   AND (blocked_until IS NULL OR blocked_until <= clock_timestamp())
RETURNING greatest(extract(epoch FROM next_slot - make_interval(secs => $1)
                                      - clock_timestamp()), 0)::float8";

impl SharedBudget {
    pub fn new(pool: DbPool, lane: Lane, settings: BudgetSettings) -> Self {
        SharedBudget {
            pool,
            lane,
            settings,
        }
    }

    /// Waits for this request's slot. No pooled connection is held while
    /// waiting: the pool is the function's, and a wait can last seconds.
    pub async fn until_ready(&self) -> Result<(), BudgetError> {
        if self.lane == Lane::Webhooks {
            let spacing = 1.0 / self.settings.webhook_share.max(0.01);
            if let Some(wait) = self.reserve(RESERVE_LANE, &[&spacing]).await? {
                sleep_secs(wait).await;
            }
        }
        let spacing = 1.0 / self.settings.per_second.max(0.01);
        let refresh = self.lane == Lane::Refresh;
        let grace = self.settings.refresh_grace.as_secs_f64();
        match self
            .reserve(RESERVE_ACCOUNT, &[&spacing, &refresh, &grace])
            .await?
        {
            Some(wait) => {
                sleep_secs(wait).await;
                Ok(())
            }
            None => Err(self.blocked_until().await),
        }
    }

    /// Runs one reservation; the wait in seconds, or None when it found no row.
    async fn reserve(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<f64>, BudgetError> {
        let client = self.pool.get().await.map_err(store)?;
        let row = client.query_opt(sql, params).await.map_err(store)?;
        row.map(|r| r.try_get(0).map_err(store)).transpose()
    }

    async fn blocked_until(&self) -> BudgetError {
        let read = async {
            let client = self.pool.get().await.map_err(store)?;
            let row = client
                .query_one(
                    "SELECT blocked_until FROM kommo_request_budget WHERE id = 'account'",
                    &[],
                )
                .await
                .map_err(store)?;
            row.try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(0)
                .map_err(store)
        };
        match read.await {
            Ok(Some(until)) => BudgetError::Blocked { until },
            Ok(None) => BudgetError::Store("no slot and no block recorded".into()),
            Err(e) => e,
        }
    }

    /// Kommo answered 429: nobody sends before `retry_after` has passed.
    pub async fn push_back(&self, retry_after: Duration) -> Result<(), BudgetError> {
        self.execute(
            "UPDATE kommo_request_budget
                SET next_slot = greatest(next_slot, clock_timestamp() + make_interval(secs => $1)),
                    updated_at = clock_timestamp()
              WHERE id = 'account'",
            retry_after,
        )
        .await
    }

    /// Kommo blocked the IP (403): every container stops calling for a while.
    pub async fn block(&self) -> Result<(), BudgetError> {
        tracing::error!(
            pause_seconds = self.settings.block_pause.as_secs(),
            "Kommo blocked the integration's IP; pausing every Kommo call"
        );
        self.execute(
            "UPDATE kommo_request_budget
                SET blocked_until = clock_timestamp() + make_interval(secs => $1),
                    updated_at = clock_timestamp()
              WHERE id = 'account'",
            self.settings.block_pause,
        )
        .await
    }

    async fn execute(&self, sql: &str, d: Duration) -> Result<(), BudgetError> {
        let client = self.pool.get().await.map_err(store)?;
        client
            .execute(sql, &[&d.as_secs_f64()])
            .await
            .map_err(store)?;
        Ok(())
    }
}

async fn sleep_secs(secs: f64) {
    if secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
}

fn store(e: impl std::fmt::Display) -> BudgetError {
    BudgetError::Store(e.to_string())
}
