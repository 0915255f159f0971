//! The one deadline type: when an invocation must have stopped starting
//! new work, read from Lambda's deadline and kept with a safety margin.
//!
//! The full-refresh worker and the outbox drain both stop before the Lambda
//! deadline, so each checkpoints or hands rows back instead of being killed
//! in the middle of a page or a Zoho call.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Instants before 2020-01-01 in milliseconds since the epoch. Lambda's
/// `Lambda-Runtime-Deadline-Ms` is always later than this.
const EPOCH_MS_2020: u64 = 1_577_836_800_000;

/// Time left in this invocation, from `lambda_runtime::Context::deadline`.
///
/// Lambda sends an instant in milliseconds since the epoch. `cargo lambda
/// watch` sends a fixed `600000` (a ten-minute budget, not an instant); read
/// as an instant it lies in 1970, and every run would stop before its first
/// batch. So a value too small to be an instant is taken as a budget from
/// now, and `0` (no header at all) as "no deadline given".
pub fn time_left(deadline_ms: u64) -> Option<Duration> {
    match deadline_ms {
        0 => None,
        ms if ms < EPOCH_MS_2020 => Some(Duration::from_millis(ms)),
        ms => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(Duration::from_millis(ms.saturating_sub(now_ms)))
        }
    }
}

/// The invocation's deadline minus a safety margin.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Option<Instant>,
    margin: Duration,
}

impl Deadline {
    /// No deadline (local runs and the benchmark).
    pub fn none() -> Self {
        Deadline {
            at: None,
            margin: Duration::ZERO,
        }
    }

    /// `remaining` from now, of which the last `margin` is not to be used.
    pub fn after(remaining: Duration, margin: Duration) -> Self {
        Deadline {
            at: Some(Instant::now() + remaining),
            margin,
        }
    }

    /// From `lambda_runtime::Context::deadline`; see [`time_left`].
    pub fn from_epoch_ms(deadline_ms: u64, margin: Duration) -> Self {
        match time_left(deadline_ms) {
            Some(left) => Self::after(left, margin),
            None => Self::none(),
        }
    }

    /// True when less than the margin is left.
    pub fn near(&self) -> bool {
        self.at
            .is_some_and(|at| at.saturating_duration_since(Instant::now()) <= self.margin)
    }

    /// This deadline, or `budget` from now when that comes first: a step
    /// with a budget of its own still ends inside the invocation.
    pub fn at_most(self, budget: Duration) -> Self {
        let capped = Instant::now() + budget + self.margin;
        Deadline {
            at: Some(self.at.map_or(capped, |at| at.min(capped))),
            margin: self.margin,
        }
    }

    /// Whether `work` still fits before the margin (always, with no deadline).
    pub fn allows(&self, work: Duration) -> bool {
        self.at.is_none_or(|at| {
            at.saturating_duration_since(Instant::now()) > self.margin.saturating_add(work)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_keeps_the_earlier_end() {
        let budget = Duration::from_secs(60);
        let capped = Deadline::none().at_most(budget);
        assert!(capped.allows(Duration::from_secs(59)));
        assert!(!capped.allows(Duration::from_secs(61)));
        let short =
            Deadline::after(Duration::from_secs(10), Duration::from_secs(2)).at_most(budget);
        assert!(short.allows(Duration::from_secs(7)));
        assert!(
            !short.allows(Duration::from_secs(9)),
            "the invocation ends first"
        );
        let long =
            Deadline::after(Duration::from_secs(900), Duration::from_secs(2)).at_most(budget);
        assert!(
            !long.allows(Duration::from_secs(61)),
            "the budget ends first"
        );
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn a_lambda_deadline_counts_down_to_the_instant() {
        let left = time_left(now_ms() + 30_000).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(25));
    }

    #[test]
    fn a_passed_deadline_leaves_nothing() {
        assert_eq!(time_left(now_ms() - 1_000), Some(Duration::ZERO));
    }

    #[test]
    fn cargo_lambda_watchs_fixed_value_is_a_budget_and_zero_is_none() {
        assert_eq!(time_left(600_000), Some(Duration::from_secs(600)));
        assert_eq!(time_left(0), None);
    }

    #[test]
    fn deadline_is_near_within_the_margin() {
        assert!(!Deadline::none().near());
        assert!(Deadline::after(Duration::from_secs(10), Duration::from_secs(20)).near());
        assert!(!Deadline::after(Duration::from_secs(60), Duration::from_secs(1)).near());
        // A second ago, in milliseconds since the epoch, as Lambda sends it.
        assert!(Deadline::from_epoch_ms(now_ms() - 1_000, Duration::ZERO).near());
        // No deadline header at all, and `cargo lambda watch`'s fixed ten-minute budget.
        assert!(!Deadline::from_epoch_ms(0, Duration::from_secs(60)).near());
        assert!(!Deadline::from_epoch_ms(600_000, Duration::from_secs(60)).near());
        let d = Deadline::after(Duration::from_secs(100), Duration::from_secs(20));
        assert!(d.allows(Duration::from_secs(60)));
        assert!(!d.allows(Duration::from_secs(90)));
        assert!(Deadline::none().allows(Duration::MAX));
    }
}
