//! Exponential backoff with jitter for retried outbox rows.

use std::time::Duration;

use rand::Rng;

/// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped, with
/// "equal jitter" (half fixed, half random), so retries of a batch that failed
/// together spread out but are never immediate.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let full = base.saturating_mul(1u32 << exp).min(cap);
    let half = full / 2;
    let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_the_cap_and_jitters() {
        let base = Duration::from_secs(30);
        let cap = Duration::from_secs(3600);
        for _ in 0..50 {
            let d1 = backoff(1, base, cap);
            assert!(d1 >= Duration::from_secs(15) && d1 <= base, "{d1:?}");
            let d3 = backoff(3, base, cap);
            assert!(
                d3 >= Duration::from_secs(60) && d3 <= Duration::from_secs(120),
                "{d3:?}"
            );
            let d20 = backoff(20, base, cap);
            assert!(d20 >= cap / 2 && d20 <= cap, "{d20:?}");
        }
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(4, base, cap)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
        assert_eq!(backoff(0, Duration::ZERO, cap), Duration::ZERO);
    }
}
