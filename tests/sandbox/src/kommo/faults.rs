//! Fault knobs: latency, a requests-per-second limit, forced errors and the
//! "IP blocked" mode, plus the request counters tests assert on.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// A forced error answered on some API requests.
///
/// Requests are counted from the moment the fault is set (the first request
/// after setting it is number 1), so a test can say "the 3rd call from now
/// fails" without knowing how many calls happened before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedError {
    /// 1-based number of the first request that fails.
    pub nth: u64,
    /// How many consecutive requests fail; `None` means every request from `nth` on.
    #[serde(default = "one")]
    pub times: Option<u64>,
    /// HTTP status to answer, 500 by default; 429 works too.
    #[serde(default = "five_hundred")]
    pub status: u16,
}

fn one() -> Option<u64> {
    Some(1)
}
fn five_hundred() -> u16 {
    500
}

impl ForcedError {
    /// The `nth` request from now fails once with `status`.
    pub fn once(nth: u64, status: u16) -> Self {
        ForcedError {
            nth,
            times: Some(1),
            status,
        }
    }

    /// Every request from the `nth` one on fails with `status`.
    pub fn persistent(nth: u64, status: u16) -> Self {
        ForcedError {
            nth,
            times: None,
            status,
        }
    }
}

/// All fault knobs. The default is a healthy, zero-latency server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every API request before anything else happens.
    pub latency_ms: u64,
    /// More API requests than this within any one second get 429.
    pub rate_limit_per_second: Option<u32>,
    pub forced: Option<ForcedError>,
    /// Every `GET /api/v4/leads` with this `page` answers 500.
    pub fail_leads_page: Option<u32>,
    /// Every API request gets 403 with nginx's HTML page, as after repeated rate-limit abuse.
    pub ip_blocked: bool,
}

/// One API request as the sandbox saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
}

/// Request counters since start (or since the last reset).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RequestStats {
    /// API requests (`/api/v4/...`), whatever their answer.
    pub total: u64,
    pub leads: u64,
    pub contacts: u64,
    pub account: u64,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
}

impl RequestStats {
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// Keeps the recorded request log bounded for long benchmark runs.
const MAX_RECORDED: usize = 100_000;

/// Mutable fault and counting state, behind the sandbox's mutex.
pub(crate) struct FaultState {
    pub faults: Faults,
    /// Value of `seen` when `faults.forced` was set.
    forced_base: u64,
    /// API requests seen, including rejected ones.
    seen: u64,
    window: VecDeque<Instant>,
    pub stats: RequestStats,
    pub log: Vec<RecordedRequest>,
    started: Instant,
}

/// What the fault layer decided for one request.
pub(crate) enum Verdict {
    Pass,
    IpBlocked,
    RateLimited,
    Forced(u16),
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        FaultState {
            faults,
            forced_base: 0,
            seen: 0,
            window: VecDeque::new(),
            stats: RequestStats::default(),
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn set(&mut self, faults: Faults) {
        if faults.forced != self.faults.forced {
            self.forced_base = self.seen;
        }
        self.faults = faults;
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.faults.latency_ms)
    }

    /// Decides a request's fate; requests refused by the rate limit do not use up the budget.
    pub fn judge(&mut self, now: Instant) -> Verdict {
        self.seen += 1;
        if self.faults.ip_blocked {
            return Verdict::IpBlocked;
        }
        if let Some(limit) = self.faults.rate_limit_per_second {
            while self
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                self.window.pop_front();
            }
            if self.window.len() >= limit as usize {
                return Verdict::RateLimited;
            }
            self.window.push_back(now);
        }
        if let Some(f) = self.faults.forced {
            let n = self.seen - self.forced_base;
            let hit = n >= f.nth && f.times.is_none_or(|t| n < f.nth.saturating_add(t));
            if hit {
                return Verdict::Forced(f.status);
            }
        }
        Verdict::Pass
    }

    pub fn record(&mut self, method: &str, path: &str, query: &str, status: u16) {
        self.stats.total += 1;
        if path.starts_with("/api/v4/leads") {
            self.stats.leads += 1;
        } else if path.starts_with("/api/v4/contacts") {
            self.stats.contacts += 1;
        } else if path.starts_with("/api/v4/account") {
            self.stats.account += 1;
        }
        *self.stats.by_status.entry(status).or_insert(0) += 1;
        if self.log.len() < MAX_RECORDED {
            self.log.push(RecordedRequest {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                status,
                at_ms: self.started.elapsed().as_millis() as u64,
            });
        }
    }

    pub fn reset_stats(&mut self) {
        self.stats = RequestStats::default();
        self.log.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_error_counts_from_when_it_is_set() {
        let mut s = FaultState::new(Faults::default());
        let now = Instant::now();
        for _ in 0..5 {
            assert!(matches!(s.judge(now), Verdict::Pass));
        }
        s.set(Faults {
            forced: Some(ForcedError {
                nth: 2,
                times: Some(2),
                status: 503,
            }),
            ..Faults::default()
        });
        let got: Vec<Option<u16>> = (0..5)
            .map(|_| match s.judge(now) {
                Verdict::Forced(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![None, Some(503), Some(503), None, None]);
    }

    #[test]
    fn rate_limit_window_slides() {
        let mut s = FaultState::new(Faults {
            rate_limit_per_second: Some(2),
            ..Faults::default()
        });
        let t0 = Instant::now();
        assert!(matches!(s.judge(t0), Verdict::Pass));
        assert!(matches!(s.judge(t0), Verdict::Pass));
        assert!(matches!(s.judge(t0), Verdict::RateLimited));
        let t1 = t0 + Duration::from_millis(1001);
        assert!(matches!(s.judge(t1), Verdict::Pass));
    }
}
