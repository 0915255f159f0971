//! Settings read from the environment once per cold start.
//!
//! Every problem is collected before failing, so an operator fixing a
//! deployment sees the whole list in one log line instead of one per deploy.

use std::{collections::BTreeSet, str::FromStr, time::Duration};

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
    pub full_refresh_default_year: Option<i32>,
    pub full_refresh_year_bounds: YearBounds,
    pub full_refresh_keep_runs: i64,
    pub outbox: OutboxSettings,
    pub zoho: ZohoSettings,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env(needs: &[Need]) -> Result<Self, ConfigError> {
        Self::from_lookup(needs, |k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(
        needs: &[Need],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup: &lookup,
            problems: Vec::new(),
        };
        let needs: BTreeSet<Need> = needs.iter().copied().collect();

        let db = match (r.string("DATABASE_URL"), r.string("DB_SECRET_ID")) {
            (Some(url), _) => DbSource::Url(url),
            (None, Some(id)) => DbSource::Secret(id),
            (None, None) => {
                r.problems
                    .push("DATABASE_URL or DB_SECRET_ID must be set".to_string());
                DbSource::Url(String::new())
            }
        };
        let db_ca_bundle = r.string("DB_CA_BUNDLE_PATH");
        let db_pool_size = r.parse("DB_POOL_SIZE", 2usize);
        if db_pool_size == 0 {
            r.problems
                .push("DB_POOL_SIZE must be at least 1".to_string());
        }
        let db_statement_timeout =
            Duration::from_millis(r.parse("DB_STATEMENT_TIMEOUT_MS", 15_000u64));
        let db_require_tls = r.opt_parse::<bool>("DB_REQUIRE_TLS");
        let secrets_ttl = Duration::from_secs(r.parse("SECRETS_TTL_SECONDS", 300u64));
        let flags_ttl = Duration::from_secs(r.parse("FLAGS_TTL_SECONDS", 10u64));

        let required = |r: &mut Reader<'_>, need: Need, key: &str| {
            let v = r.string(key);
            if v.is_none() && needs.contains(&need) {
                r.problems.push(format!("{key} must be set"));
            }
            v
        };
        let kommo_secret_id = required(&mut r, Need::KommoSecret, "KOMMO_SECRET_ID");
        let zoho_secret_id = required(&mut r, Need::ZohoSecret, "ZOHO_SECRET_ID");
        let staff_jwt_secret_id = required(&mut r, Need::StaffJwtSecret, "STAFF_JWT_SECRET_ID");
        let kommo_events_queue_url =
            required(&mut r, Need::KommoEventsQueue, "KOMMO_EVENTS_QUEUE_URL");
        let full_refresh_queue_url =
            required(&mut r, Need::FullRefreshQueue, "FULL_REFRESH_QUEUE_URL");
        let slack_secret_id = r.string("SLACK_SECRET_ID");

        let staff_roles = r
            .string("STAFF_ROLES")
            .map(|s| split_list(&s))
            .unwrap_or_else(|| vec!["admin".to_string(), "ops".to_string()]);
        let kommo_rate_per_second = r.parse("KOMMO_RATE_PER_SECOND", 7u32);
        if kommo_rate_per_second == 0 {
            r.problems
                .push("KOMMO_RATE_PER_SECOND must be at least 1".to_string());
        }
        let kommo_http_timeout = Duration::from_millis(r.parse("KOMMO_HTTP_TIMEOUT_MS", 10_000u64));
        let full_refresh_default_year = r.opt_parse::<i32>("FULL_REFRESH_DEFAULT_YEAR");
        let full_refresh_year_bounds = match r.string("FULL_REFRESH_YEAR_BOUNDS").as_deref() {
            None | Some("utc") => YearBounds::Utc,
            Some("account") => YearBounds::AccountTimezone,
            Some(other) => {
                r.problems.push(format!(
                    "FULL_REFRESH_YEAR_BOUNDS must be `utc` or `account`, not `{other}`"
                ));
                YearBounds::Utc
            }
        };
        let full_refresh_keep_runs = r.parse("FULL_REFRESH_KEEP_RUNS", 3i64);

        let outbox = OutboxSettings {
            batch_size: r.parse("OUTBOX_BATCH_SIZE", 200i64),
            max_attempts: r.parse("OUTBOX_MAX_ATTEMPTS", 5i32),
            backoff_base: Duration::from_secs(r.parse("OUTBOX_BACKOFF_BASE_SECONDS", 30u64)),
            backoff_cap: Duration::from_secs(r.parse("OUTBOX_BACKOFF_CAP_SECONDS", 3_600u64)),
            lease: Duration::from_secs(r.parse("OUTBOX_LEASE_SECONDS", 300u64)),
            zoho_concurrency: r.parse("ZOHO_CONCURRENCY", 5usize),
            deadline_margin: Duration::from_millis(r.parse("OUTBOX_DEADLINE_MARGIN_MS", 15_000u64)),
            defer: Duration::from_secs(r.parse("OUTBOX_DEFER_SECONDS", 60u64)),
        };
        if outbox.batch_size < 1 {
            r.problems
                .push("OUTBOX_BATCH_SIZE must be at least 1".to_string());
        }
        if outbox.max_attempts < 1 {
            r.problems
                .push("OUTBOX_MAX_ATTEMPTS must be at least 1".to_string());
        }
        if outbox.zoho_concurrency < 1 {
            r.problems
                .push("ZOHO_CONCURRENCY must be at least 1".to_string());
        }
        let zoho = ZohoSettings {
            duplicate_check_fields: r
                .string("ZOHO_DUPLICATE_CHECK_FIELDS")
                .map(|s| split_list(&s))
                .unwrap_or_else(|| vec!["Email".to_string()]),
            sales_order_unique_field: r
                .string("ZOHO_SALES_ORDER_UNIQUE_FIELD")
                .unwrap_or_else(|| "ERP_Booking_Id".to_string()),
            product_id: r.string("ZOHO_PRODUCT_ID"),
            http_timeout: Duration::from_millis(r.parse("ZOHO_HTTP_TIMEOUT_MS", 10_000u64)),
            contact_key_field: r.string("ZOHO_CONTACT_KEY_FIELD"),
            token_refresh_margin: Duration::from_secs(
                r.parse("ZOHO_TOKEN_REFRESH_MARGIN_SECONDS", 300u64),
            ),
            throttle_circuit: Duration::from_secs(r.parse("ZOHO_THROTTLE_CIRCUIT_SECONDS", 900u64)),
        };
        // Zoho keeps the token endpoint blocked for the rest of its 10-minute window.
        if zoho.throttle_circuit < Duration::from_secs(600) {
            r.problems
                .push("ZOHO_THROTTLE_CIRCUIT_SECONDS must be at least 600".to_string());
        }

        if !r.problems.is_empty() {
            return Err(ConfigError {
                problems: r.problems,
            });
        }
        Ok(Config {
            db,
            db_ca_bundle,
            db_pool_size,
            db_statement_timeout,
            db_require_tls,
            secrets_ttl,
            flags_ttl,
            kommo_secret_id,
            zoho_secret_id,
            staff_jwt_secret_id,
            slack_secret_id,
            kommo_events_queue_url,
            full_refresh_queue_url,
            staff_roles,
            kommo_rate_per_second,
            kommo_http_timeout,
            full_refresh_default_year,
            full_refresh_year_bounds,
            full_refresh_keep_runs,
            outbox,
            zoho,
        })
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn string(&mut self, key: &str) -> Option<String> {
        (self.lookup)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn opt_parse<T: FromStr>(&mut self, key: &str) -> Option<T> {
        let raw = self.string(key)?;
        match raw.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                // The value is not echoed: a misplaced secret must not reach the logs.
                self.problems.push(format!(
                    "{key} is not a valid {}",
                    std::any::type_name::<T>()
                ));
                None
            }
        }
    }

    fn parse<T: FromStr>(&mut self, key: &str, default: T) -> T {
        self.opt_parse(key).unwrap_or(default)
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
}
