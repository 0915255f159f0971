//! Settings read from the environment once per cold start, all through one
//! reader, [`Env`]: the common [`Config`] here, and each function's own
//! settings next to the function.
//!
//! Every problem is collected before failing, so an operator fixing a
//! deployment sees the whole list in one log line instead of one per deploy.

use std::{fmt::Display, str::FromStr, time::Duration};

use crate::platform::text::non_empty;

/// What a function needs beyond the common settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    KommoSecret,
    ZohoSecret,
    StaffJwtSecret,
    KommoEventsQueue,
    FullRefreshQueue,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {}", problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Where the database connection settings come from.
#[derive(Clone, PartialEq, Eq)]
pub enum DbSource {
    /// A `postgres://` URL, for local work and tests.
    Url(String),
    /// The ARN or name of an RDS-format secret (`host`, `port`, `username`, `password`, `dbname`).
    Secret(String),
}

impl std::fmt::Debug for DbSource {
    // The URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbSource::Url(_) => f.write_str("Url(<redacted>)"),
            DbSource::Secret(id) => f.debug_tuple("Secret").field(id).finish(),
        }
    }
}

/// How the full refresh computes a year's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YearBounds {
    Utc,
    AccountTimezone,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub batch_size: i64,
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub lease: Duration,
    pub zoho_concurrency: usize,
    /// Stop claiming when less than this is left before the Lambda deadline.
    pub deadline_margin: Duration,
    /// How long a sales order waits, uncharged, when its contact could not be synced first.
    pub defer: Duration,
}

#[derive(Debug, Clone)]
pub struct ZohoSettings {
    pub duplicate_check_fields: Vec<String>,
    /// Custom unique field on Sales_Orders that holds the booking id (idempotency).
    pub sales_order_unique_field: String,
    /// Product used for the single line item of a sales order.
    pub product_id: Option<String>,
    pub http_timeout: Duration,
    /// Optional Contacts field holding the ERP client id (a unique or External ID field).
    pub contact_key_field: Option<String>,
    /// Refresh the shared token when less than this is left before it expires.
    pub token_refresh_margin: Duration,
    /// How long the token endpoint is left alone after Zoho's "Access Denied" throttle.
    pub throttle_circuit: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub db: DbSource,
    pub db_ca_bundle: Option<String>,
    pub db_pool_size: usize,
    pub db_statement_timeout: Duration,
    pub db_require_tls: Option<bool>,
    pub secrets_ttl: Duration,
    pub flags_ttl: Duration,
    pub kommo_secret_id: Option<String>,
    pub zoho_secret_id: Option<String>,
    pub staff_jwt_secret_id: Option<String>,
    pub slack_secret_id: Option<String>,
    pub kommo_events_queue_url: Option<String>,
    pub full_refresh_queue_url: Option<String>,
    pub staff_roles: Vec<String>,
    pub kommo_rate_per_second: u32,
    pub kommo_http_timeout: Duration,
    /// First wait of a delivery held back by an outage (`KOMMO_OUTAGE_HOLD_SECONDS`).
    pub kommo_outage_hold: Duration,
    pub full_refresh_default_year: Option<i32>,
    pub full_refresh_year_bounds: YearBounds,
    pub full_refresh_keep_runs: i64,
    pub outbox: OutboxSettings,
    pub zoho: ZohoSettings,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env(needs: &[Need]) -> Result<Self, ConfigError> {
        Env::load_process(|env| Config::read(env, needs))
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(
        needs: &[Need],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Env::load(lookup, |env| Config::read(env, needs))
    }

    /// Every common setting; the problems found stay in `env`.
    pub fn read(env: &mut Env<'_>, needs: &[Need]) -> Config {
        let needed = |need: Need| needs.contains(&need);
        Config {
            db: DbSource::read(env),
            db_ca_bundle: env.text("DB_CA_BUNDLE_PATH"),
            db_pool_size: env.at_least("DB_POOL_SIZE", 2usize, 1),
            db_statement_timeout: env.millis("DB_STATEMENT_TIMEOUT_MS", 15_000),
            db_require_tls: env.opt("DB_REQUIRE_TLS"),
            secrets_ttl: env.secs("SECRETS_TTL_SECONDS", 300),
            flags_ttl: env.secs("FLAGS_TTL_SECONDS", 10),
            kommo_secret_id: env.required("KOMMO_SECRET_ID", needed(Need::KommoSecret)),
            zoho_secret_id: env.required("ZOHO_SECRET_ID", needed(Need::ZohoSecret)),
            staff_jwt_secret_id: env.required("STAFF_JWT_SECRET_ID", needed(Need::StaffJwtSecret)),
            kommo_events_queue_url: env
                .required("KOMMO_EVENTS_QUEUE_URL", needed(Need::KommoEventsQueue)),
            full_refresh_queue_url: env
                .required("FULL_REFRESH_QUEUE_URL", needed(Need::FullRefreshQueue)),
            slack_secret_id: env.text("SLACK_SECRET_ID"),
            staff_roles: env.list("STAFF_ROLES", &["admin", "ops"]),
            kommo_rate_per_second: env.at_least("KOMMO_RATE_PER_SECOND", 7u32, 1),
            kommo_http_timeout: env.millis("KOMMO_HTTP_TIMEOUT_MS", 10_000),
            kommo_outage_hold: env.secs("KOMMO_OUTAGE_HOLD_SECONDS", 300),
            full_refresh_default_year: env.opt("FULL_REFRESH_DEFAULT_YEAR"),
            full_refresh_year_bounds: env.choice(
                "FULL_REFRESH_YEAR_BOUNDS",
                &[
                    ("utc", YearBounds::Utc),
                    ("account", YearBounds::AccountTimezone),
                ],
            ),
            full_refresh_keep_runs: env.or("FULL_REFRESH_KEEP_RUNS", 3i64),
            outbox: OutboxSettings::read(env),
            zoho: ZohoSettings::read(env),
        }
    }
}

impl DbSource {
    fn read(env: &mut Env<'_>) -> DbSource {
        match (env.text("DATABASE_URL"), env.text("DB_SECRET_ID")) {
            (Some(url), _) => DbSource::Url(url),
            (None, Some(id)) => DbSource::Secret(id),
            (None, None) => {
                env.problem("DATABASE_URL or DB_SECRET_ID must be set");
                DbSource::Url(String::new())
            }
        }
    }
}

impl OutboxSettings {
    fn read(env: &mut Env<'_>) -> OutboxSettings {
        OutboxSettings {
            batch_size: env.at_least("OUTBOX_BATCH_SIZE", 200i64, 1),
            max_attempts: env.at_least("OUTBOX_MAX_ATTEMPTS", 5i32, 1),
            backoff_base: env.secs("OUTBOX_BACKOFF_BASE_SECONDS", 30),
            backoff_cap: env.secs("OUTBOX_BACKOFF_CAP_SECONDS", 3_600),
            lease: env.secs("OUTBOX_LEASE_SECONDS", 300),
            zoho_concurrency: env.at_least("ZOHO_CONCURRENCY", 5usize, 1),
            deadline_margin: env.millis("OUTBOX_DEADLINE_MARGIN_MS", 15_000),
            defer: env.secs("OUTBOX_DEFER_SECONDS", 60),
        }
    }
}

impl ZohoSettings {
    fn read(env: &mut Env<'_>) -> ZohoSettings {
        ZohoSettings {
            duplicate_check_fields: env.list("ZOHO_DUPLICATE_CHECK_FIELDS", &["Email"]),
            sales_order_unique_field: env
                .text("ZOHO_SALES_ORDER_UNIQUE_FIELD")
                .unwrap_or_else(|| "ERP_Booking_Id".to_string()),
            product_id: env.text("ZOHO_PRODUCT_ID"),
            http_timeout: env.millis("ZOHO_HTTP_TIMEOUT_MS", 10_000),
            contact_key_field: env.text("ZOHO_CONTACT_KEY_FIELD"),
            token_refresh_margin: env.secs("ZOHO_TOKEN_REFRESH_MARGIN_SECONDS", 300),
            // Zoho keeps the token endpoint blocked for the rest of its 10-minute window.
            throttle_circuit: Duration::from_secs(env.at_least(
                "ZOHO_THROTTLE_CIRCUIT_SECONDS",
                900u64,
                600,
            )),
        }
    }
}

/// The one reader of settings, from the process environment or from a
/// test's lookup. A value is trimmed and a blank one counts as unset. Each
/// getter falls back to its default on a bad value and notes the problem, so
/// [`Env::load`] can name every problem at once.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl<'a> Env<'a> {
    /// What `read` makes of the settings `lookup` gives, or every problem
    /// it found.
    pub fn load<T>(
        lookup: impl Fn(&str) -> Option<String>,
        read: impl FnOnce(&mut Env<'_>) -> T,
    ) -> Result<T, ConfigError> {
        let mut env = Env {
            lookup: &lookup,
            problems: Vec::new(),
        };
        let value = read(&mut env);
        if env.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: env.problems,
            })
        }
    }

    /// [`Env::load`] from the process environment.
    pub fn load_process<T>(read: impl FnOnce(&mut Env<'_>) -> T) -> Result<T, ConfigError> {
        Env::load(|k| std::env::var(k).ok(), read)
    }

    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    pub fn text(&self, key: &str) -> Option<String> {
        non_empty((self.lookup)(key).as_deref())
    }

    /// The value, with a problem when it is missing and `needed`.
    pub fn required(&mut self, key: &str, needed: bool) -> Option<String> {
        let value = self.text(key);
        if value.is_none() && needed {
            self.problem(format!("{key} must be set"));
        }
        value
    }

    pub fn opt<T: FromStr>(&mut self, key: &str) -> Option<T> {
        let raw = self.text(key)?;
        let parsed = raw.parse::<T>().ok();
        if parsed.is_none() {
            // The value is not echoed: a misplaced secret must not reach the logs.
            let problem = format!("{key} is not a valid {}", std::any::type_name::<T>());
            self.problem(problem);
        }
        parsed
    }

    pub fn or<T: FromStr>(&mut self, key: &str, default: T) -> T {
        self.opt(key).unwrap_or(default)
    }

    pub fn at_least<T: FromStr + PartialOrd + Display>(
        &mut self,
        key: &str,
        default: T,
        min: T,
    ) -> T {
        let value = self.or(key, default);
        if value < min {
            self.problem(format!("{key} must be at least {min}"));
        }
        value
    }

    /// A whole number above zero; anything else is one problem, "must be a
    /// positive whole number".
    pub fn positive(&mut self, key: &str, default: u64) -> u64 {
        match self.text(key).map(|v| v.parse::<u64>()) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                self.problem(format!("{key} must be a positive whole number"));
                default
            }
        }
    }

    pub fn millis(&mut self, key: &str, default_ms: u64) -> Duration {
        Duration::from_millis(self.or(key, default_ms))
    }

    pub fn secs(&mut self, key: &str, default_secs: u64) -> Duration {
        Duration::from_secs(self.or(key, default_secs))
    }

    /// A comma-separated list, blanks dropped.
    pub fn list(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        match self.text(key) {
            Some(s) => s.split(',').filter_map(|p| non_empty(Some(p))).collect(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// One of `options` by name; unset means the first.
    pub fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> T {
        let default = options[0].1;
        let Some(given) = self.text(key) else {
            return default;
        };
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == given) {
            return *value;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.problem(format!(
            "{key} must be {}, not `{given}`",
            names.join(" or ")
        ));
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(needs: &[Need], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(needs, |k| map.get(k).cloned())
    }

    #[test]
    fn every_problem_is_named_in_one_error() {
        let err = load(
            &[Need::KommoSecret, Need::KommoEventsQueue],
            &[
                ("DB_POOL_SIZE", "lots"),
                ("OUTBOX_MAX_ATTEMPTS", "s3cr3t-value"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DATABASE_URL or DB_SECRET_ID must be set"),
            "{text}"
        );
        assert!(text.contains("DB_POOL_SIZE is not a valid usize"), "{text}");
        assert!(text.contains("KOMMO_SECRET_ID must be set"), "{text}");
        assert!(
            text.contains("KOMMO_EVENTS_QUEUE_URL must be set"),
            "{text}"
        );
        assert!(
            text.contains("OUTBOX_MAX_ATTEMPTS is not a valid i32"),
            "{text}"
        );
        assert!(
            !text.contains("s3cr3t-value"),
            "values are never echoed: {text}"
        );
        assert_eq!(err.problems.len(), 5);
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_set() {
        let cfg = load(&[], &[("DATABASE_URL", "postgres://u:pw@localhost/db")]).unwrap();
        assert_eq!(cfg.db_pool_size, 2);
        assert_eq!(cfg.flags_ttl, Duration::from_secs(10));
        assert_eq!(cfg.secrets_ttl, Duration::from_secs(300));
        assert_eq!(cfg.outbox.max_attempts, 5);
        assert_eq!(cfg.kommo_rate_per_second, 7);
        assert_eq!(cfg.full_refresh_year_bounds, YearBounds::Utc);
        assert_eq!(cfg.staff_roles, vec!["admin", "ops"]);
        assert!(!format!("{:?}", cfg.db).contains("pw"));
    }

    #[test]
    fn unknown_year_bounds_are_rejected() {
        let err = load(
            &[],
            &[
                ("DATABASE_URL", "postgres://x"),
                ("FULL_REFRESH_YEAR_BOUNDS", "mars"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].contains("`mars`"));
    }

    #[test]
    fn the_reader_trims_lists_and_names_bad_values() {
        let vars: HashMap<&str, &str> = [
            ("LIST", " a, ,b "),
            ("ZERO", "0"),
            ("WORD", "many"),
            ("BLANK", "  "),
        ]
        .into_iter()
        .collect();
        let err = Env::load(
            |k| vars.get(k).map(|v| v.to_string()),
            |env| {
                assert_eq!(env.list("LIST", &["x"]), vec!["a", "b"]);
                assert_eq!(env.list("BLANK", &["x"]), vec!["x"]);
                assert_eq!(env.positive("ZERO", 3), 3);
                assert_eq!(env.positive("WORD", 4), 4);
                assert_eq!(env.positive("UNSET", 5), 5);
                assert_eq!(env.required("BLANK", false), None);
            },
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            vec![
                "ZERO must be a positive whole number",
                "WORD must be a positive whole number"
            ]
        );
    }
}
