//! Settings of the full refresh. The common ones come from [`Config`]; the
//! few only the refresh uses are read here through the same [`Env`] reader,
//! so every problem is named at once.

use std::time::Duration;

use crate::platform::config::{Config, ConfigError, Env, YearBounds};

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// Leads per Kommo page (Kommo caps it at 250).
    pub page_limit: u32,
    /// When less than this is left before the Lambda deadline, the worker
    /// checkpoints and queues a continuation instead of fetching another page.
    pub deadline_margin: Duration,
    /// A queued or running run with no progress for this long is treated as
    /// abandoned (its worker died), so a new start is not refused forever.
    pub stale_after: Duration,
    /// A run whose lead count drops by more than this fraction against the
    /// last successful run of the same year is held as `needs_review`.
    pub max_drop: f64,
    /// Staging of this many most recent successful runs is kept.
    pub keep_runs: i64,
    pub year_bounds: YearBounds,
    pub default_year: Option<i32>,
    /// `pg_try_advisory_lock` key held by the one worker allowed to run.
    pub lock_key: i64,
    /// `statement_timeout` of each statement of the swap, sized for the
    /// account (`FULL_REFRESH_SWAP_TIMEOUT_MS`). An invocation that fetched
    /// pages does not start the swap with less than this left before its
    /// deadline margin: it checkpoints and a fresh invocation swaps.
    pub swap_timeout: Duration,
    /// JWT roles that may approve or discard a run held for review
    /// (`FULL_REFRESH_ADMIN_ROLES`), apart from those that may start one.
    pub admin_roles: Vec<String>,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            page_limit: 250,
            deadline_margin: Duration::from_secs(60),
            stale_after: Duration::from_secs(30 * 60),
            max_drop: 0.30,
            keep_runs: 3,
            year_bounds: YearBounds::Utc,
            default_year: None,
            lock_key: 90_901,
            swap_timeout: Duration::from_secs(120),
            admin_roles: vec!["refresh_admin".to_string()],
        }
    }
}

impl RefreshSettings {
    pub fn from_env(cfg: &Config) -> Result<Self, ConfigError> {
        Env::load_process(|env| Self::read(env, cfg))
    }

    /// `FULL_REFRESH_PAGE_LIMIT`, `FULL_REFRESH_DEADLINE_MARGIN_MS`,
    /// `FULL_REFRESH_STALE_AFTER_SECONDS`, `FULL_REFRESH_MAX_DROP_PERCENT`,
    /// `FULL_REFRESH_SWAP_TIMEOUT_MS`,
    /// plus the year and keep-runs settings of [`Config`].
    pub fn from_lookup(
        cfg: &Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Env::load(lookup, |env| Self::read(env, cfg))
    }

    fn read(env: &mut Env<'_>, cfg: &Config) -> Self {
        let page_limit = env.or::<u32>("FULL_REFRESH_PAGE_LIMIT", 250);
        let deadline_margin = env.millis("FULL_REFRESH_DEADLINE_MARGIN_MS", 60_000);
        let stale_after = env.secs("FULL_REFRESH_STALE_AFTER_SECONDS", 1_800);
        let drop_pct = env.or::<u32>("FULL_REFRESH_MAX_DROP_PERCENT", 30);
        let swap_timeout = env.millis("FULL_REFRESH_SWAP_TIMEOUT_MS", 120_000);
        if swap_timeout.is_zero() {
            env.problem(
                "FULL_REFRESH_SWAP_TIMEOUT_MS must be more than 0 (0 would mean no timeout)",
            );
        }
        if !(1..=250).contains(&page_limit) {
            env.problem("FULL_REFRESH_PAGE_LIMIT must be 1..=250");
        }
        if drop_pct > 100 {
            env.problem("FULL_REFRESH_MAX_DROP_PERCENT must be 0..=100");
        }
        if cfg.full_refresh_keep_runs < 1 {
            env.problem("FULL_REFRESH_KEEP_RUNS must be at least 1");
        }
        RefreshSettings {
            page_limit,
            deadline_margin,
            stale_after,
            max_drop: f64::from(drop_pct) / 100.0,
            swap_timeout,
            keep_runs: cfg.full_refresh_keep_runs,
            year_bounds: cfg.full_refresh_year_bounds,
            default_year: cfg.full_refresh_default_year,
            admin_roles: env.list("FULL_REFRESH_ADMIN_ROLES", &["refresh_admin"]),
            ..RefreshSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_lookup(&[], |k| {
            (k == "DATABASE_URL").then(|| "postgres://x".into())
        })
        .unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = RefreshSettings::from_lookup(&cfg(), |_| None).unwrap();
        assert_eq!(s.page_limit, 250);
        assert_eq!(s.deadline_margin, Duration::from_secs(60));
        assert!((s.max_drop - 0.30).abs() < 1e-9);
        let s = RefreshSettings::from_lookup(&cfg(), |k| match k {
            "FULL_REFRESH_DEADLINE_MARGIN_MS" => Some("5".into()),
            "FULL_REFRESH_MAX_DROP_PERCENT" => Some("50".into()),
            "FULL_REFRESH_SWAP_TIMEOUT_MS" => Some("300000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.deadline_margin, Duration::from_millis(5));
        assert!((s.max_drop - 0.5).abs() < 1e-9);
        assert_eq!(s.swap_timeout, Duration::from_secs(300));
    }

    #[test]
    fn bad_values_are_all_reported() {
        let err = RefreshSettings::from_lookup(&cfg(), |k| match k {
            "FULL_REFRESH_PAGE_LIMIT" => Some("400".into()),
            "FULL_REFRESH_STALE_AFTER_SECONDS" => Some("soon".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
