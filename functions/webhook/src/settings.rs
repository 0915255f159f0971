//! Settings of the webhook function that the shared config does not cover.
//!
//! Time budgets are settings so tests can shorten them: Kommo gives up on a
//! delivery after 2 seconds, so every wait on the HTTP side is capped.

use std::time::Duration;

use shared::platform::config::{ConfigError, Env};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSettings {
    /// Larger bodies get 413 (`WEBHOOK_MAX_BODY_BYTES`, 256 KiB).
    pub max_body_bytes: usize,
    /// Cap on reading the flag or recording a rejected body (`WEBHOOK_DB_TIMEOUT_MS`, 700).
    pub db_timeout: Duration,
    /// Cap on the SQS send before answering 503 (`WEBHOOK_SQS_TIMEOUT_MS`, 1000).
    pub sqs_timeout: Duration,
    /// How much of a rejected body goes into the log line (`WEBHOOK_LOG_BODY_CHARS`, 2048).
    pub log_body_chars: usize,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        ReceiverSettings {
            max_body_bytes: 256 * 1024,
            db_timeout: Duration::from_millis(700),
            sqs_timeout: Duration::from_millis(1000),
            log_body_chars: 2048,
        }
    }
}

impl ReceiverSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Env::load_process(Self::read)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Env::load(lookup, Self::read)
    }

    /// Every value is a positive whole number; the problems found stay in `env`.
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = ReceiverSettings::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ReceiverSettings {
            max_body_bytes: env.positive("WEBHOOK_MAX_BODY_BYTES", d.max_body_bytes as u64)
                as usize,
            db_timeout: Duration::from_millis(
                env.positive("WEBHOOK_DB_TIMEOUT_MS", ms(d.db_timeout)),
            ),
            sqs_timeout: Duration::from_millis(
                env.positive("WEBHOOK_SQS_TIMEOUT_MS", ms(d.sqs_timeout)),
            ),
            log_body_chars: env.positive("WEBHOOK_LOG_BODY_CHARS", d.log_body_chars as u64)
                as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = ReceiverSettings::from_lookup(|_| None).unwrap();
        assert_eq!(s, ReceiverSettings::default());
        assert_eq!(s.max_body_bytes, 262_144);
        let s =
            ReceiverSettings::from_lookup(|k| (k == "WEBHOOK_DB_TIMEOUT_MS").then(|| "50".into()))
                .unwrap();
        assert_eq!(s.db_timeout, Duration::from_millis(50));
        let e = ReceiverSettings::from_lookup(|k| {
            (k == "WEBHOOK_MAX_BODY_BYTES").then(|| "big".into())
        })
        .unwrap_err();
        assert_eq!(
            e.problems,
            vec!["WEBHOOK_MAX_BODY_BYTES must be a positive whole number"]
        );
    }
}
