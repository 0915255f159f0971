//! What an invocation asks for: a drain (every schedule tick and any event
//! without a `mode`) or a reconcile.
//!
//! The reconcile event, also sent by the daily schedule:
//! `{"mode": "reconcile"}`, optionally with `"max_pages"` (pages of
//! `"page_rows"` clients or bookings each) to bound one invocation tighter
//! than the deadline does. A `mode` this function does not know, or a
//! malformed limit, is refused with a clear error rather than drained.

use serde_json::Value;
use shared::outbox::ReconcileLimits;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Drain,
    Reconcile(ReconcileLimits),
}

impl Mode {
    pub fn from_payload(v: &Value) -> Result<Self, String> {
        let obj = match v {
            Value::Null => return Ok(Mode::Drain),
            Value::Object(obj) => obj,
            other => return Err(format!("expected a JSON object, got {other}")),
        };
        match obj.get("mode") {
            None => Ok(Mode::Drain),
            Some(Value::String(m)) if m == "drain" => Ok(Mode::Drain),
            Some(Value::String(m)) if m == "reconcile" => {
                let mut limits = ReconcileLimits::default();
                if let Some(n) = positive(obj.get("max_pages"), "max_pages")? {
                    limits.max_pages = u32::try_from(n).unwrap_or(u32::MAX);
                }
                if let Some(n) = positive(obj.get("page_rows"), "page_rows")? {
                    limits.page_rows = i64::try_from(n).unwrap_or(i64::MAX);
                }
                Ok(Mode::Reconcile(limits))
            }
            Some(other) => Err(format!(
                "unknown mode {other}: send {{\"mode\": \"reconcile\"}} or no mode to drain"
            )),
        }
    }
}

/// An optional positive integer field.
fn positive(v: Option<&Value>, name: &str) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("{name} must be a positive integer, got {v}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schedules_drain_and_the_reconcile_payload_reconciles() {
        assert_eq!(Mode::from_payload(&Value::Null), Ok(Mode::Drain));
        let tick = json!({"detail-type": "Scheduled Event", "source": "aws.events"});
        assert_eq!(Mode::from_payload(&tick), Ok(Mode::Drain));
        assert_eq!(
            Mode::from_payload(&json!({"mode": "reconcile"})),
            Ok(Mode::Reconcile(ReconcileLimits::default()))
        );
        let bounded = Mode::from_payload(&json!({"mode": "reconcile", "max_pages": 3}));
        assert!(matches!(bounded, Ok(Mode::Reconcile(l)) if l.max_pages == 3));
    }

    #[test]
    fn unknown_payloads_are_refused_with_a_reason() {
        for bad in [
            json!({"mode": "reconcil"}),
            json!({"mode": 1}),
            json!({"mode": "reconcile", "max_pages": 0}),
            json!({"mode": "reconcile", "page_rows": "many"}),
            json!("reconcile"),
        ] {
            let err = Mode::from_payload(&bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }
}
