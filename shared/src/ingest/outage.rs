//! How long a delivery held back by an outage waits before it is received
//! again.
//!
//! A failed message comes back after the queue's visibility timeout (6
//! minutes) and reaches the dead-letter queue after `maxReceiveCount` (5)
//! receives, so a database outage or a refused Kommo token of half an hour
//! used to send every buffered delivery there. A message that fails for a
//! reason outside itself waits longer each time instead: the base, then four
//! times as long, up to SQS's 12 hours. With the 5-minute base its receives
//! come at 0, 5 min, 25 min, 1 h 45, 7 h 05 and 19 h: an outage of up to
//! about 19 hours costs nothing but time, well within the queue's 4-day
//! retention, while a message that fails on its own still reaches the
//! dead-letter queue within half an hour.

use std::time::Duration;

/// SQS keeps a message invisible for at most 12 hours.
pub const MAX_HOLD: Duration = Duration::from_secs(12 * 3600);

/// The wait after the `receive_count`-th receive of a held-back message.
pub fn hold_back(receive_count: u32, base: Duration) -> Duration {
    let growth = 4u64.saturating_pow(receive_count.saturating_sub(1).min(16));
    let secs = base.as_secs().max(1).saturating_mul(growth);
    Duration::from_secs(secs).min(MAX_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_fourfold_up_to_twelve_hours() {
        let base = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=7).map(|n| hold_back(n, base).as_secs()).collect();
        assert_eq!(waits, [300, 1200, 4800, 19_200, 43_200, 43_200, 43_200]);
        assert_eq!(
            hold_back(0, base),
            base,
            "a missing count reads as the first"
        );
        assert_eq!(hold_back(u32::MAX, base), MAX_HOLD);
    }
}
