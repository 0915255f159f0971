//! The EventBridge rule that invokes the outbox drain every minute, as a
//! local ticker.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};

use crate::{InvokeError, Invoker, StopHandle};

/// The payload EventBridge sends for a `Schedule` (rule) target.
pub fn scheduled_event(time: chrono::DateTime<chrono::Utc>, rule_arn: &str) -> Value {
    let region = rule_arn.split(':').nth(3).unwrap_or("us-east-1");
    let account = rule_arn.split(':').nth(4).unwrap_or("123456789012");
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    })
}

/// Invokes a function with a scheduled event every `interval`, like the
/// template's `rate(1 minute)` rule. Ticks do not overlap: a slow invocation
/// delays the next tick, much as reserved concurrency 1 does in AWS.
pub struct ScheduleTicker {
    invoker: Arc<dyn Invoker>,
    interval: Duration,
    rule_arn: String,
}

impl ScheduleTicker {
    pub fn new(invoker: Arc<dyn Invoker>) -> Self {
        ScheduleTicker {
            invoker,
            interval: Duration::from_secs(60),
            rule_arn: "arn:aws:events:us-east-1:123456789012:rule/local-outbox-drain-tick"
                .to_string(),
        }
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn rule_arn(mut self, arn: impl Into<String>) -> Self {
        self.rule_arn = arn.into();
        self
    }

    /// One tick, now.
    pub async fn tick_once(&self) -> Result<Value, InvokeError> {
        let event = scheduled_event(chrono::Utc::now(), &self.rule_arn);
        self.invoker.invoke(event).await
    }

    /// Ticks until stopped; the first tick fires at once.
    pub fn spawn(self) -> StopHandle {
        StopHandle::spawn(move |mut stopped| async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                if *stopped.borrow() {
                    break;
                }
                // A failed tick is dropped, like MaximumRetryAttempts 0 in the template.
                if let Err(e) = self.tick_once().await {
                    tracing::warn!(error = %e, "scheduled invocation failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_event_fits_the_cloudwatch_event_type() {
        let v = scheduled_event(
            chrono::Utc::now(),
            "arn:aws:events:eu-west-1:111122223333:rule/tick",
        );
        let ev: aws_lambda_events::event::cloudwatch_events::CloudWatchEvent =
            serde_json::from_value(v).unwrap();
        assert_eq!(ev.detail_type.as_deref(), Some("Scheduled Event"));
        assert_eq!(ev.source.as_deref(), Some("aws.events"));
        assert_eq!(ev.region.as_deref(), Some("eu-west-1"));
        assert_eq!(ev.account_id.as_deref(), Some("111122223333"));
        assert_eq!(
            ev.resources,
            vec!["arn:aws:events:eu-west-1:111122223333:rule/tick"]
        );
    }
}
