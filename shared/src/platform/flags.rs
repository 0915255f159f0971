//! Feature flags from `system_feature_flags`, cached for a few seconds.
//!
//! The flags are kill switches: an operator who turns one off expects the
//! system to stop within seconds, so the cache is short (10 s by default).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::platform::db::{DbError, DbPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    KommoLive,
    ZohoLive,
    SlackAlerts,
    ManualBookings,
}

impl Flag {
    pub fn key(self) -> &'static str {
        match self {
            Flag::KommoLive => "enableKommoLive",
            Flag::ZohoLive => "enableZohoLive",
            Flag::SlackAlerts => "enableSlackAlerts",
            Flag::ManualBookings => "enableManualBookings",
        }
    }
}

pub struct FeatureFlags {
    pool: DbPool,
    ttl: Duration,
    cache: Mutex<Option<(Instant, HashMap<String, bool>)>>,
}

impl FeatureFlags {
    pub fn new(pool: DbPool, ttl: Duration) -> Self {
        FeatureFlags {
            pool,
            ttl,
            cache: Mutex::new(None),
        }
    }

    /// Whether `flag` is on. A flag missing from the table is off.
    pub async fn is_enabled(&self, flag: Flag) -> Result<bool, DbError> {
        if let Some((at, map)) = &*self.cache.lock().expect("flag cache poisoned") {
            if at.elapsed() < self.ttl {
                return Ok(map.get(flag.key()).copied().unwrap_or(false));
            }
        }
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT key, enabled FROM system_feature_flags", &[])
            .await?;
        let map: HashMap<String, bool> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
            .collect();
        let on = map.get(flag.key()).copied().unwrap_or(false);
        *self.cache.lock().expect("flag cache poisoned") = Some((Instant::now(), map));
        Ok(on)
    }

    /// Forgets the cached values (tests and operators' tools).
    pub fn invalidate(&self) {
        *self.cache.lock().expect("flag cache poisoned") = None;
    }
}

/// Sets a flag (tests, `cargo xtask flag`, and the runbook's kill switch).
pub async fn set_flag(
    client: &tokio_postgres::Client,
    flag: &str,
    enabled: bool,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE system_feature_flags SET enabled = $2, updated_at = now() WHERE key = $1",
            &[&flag, &enabled],
        )
        .await?)
}
