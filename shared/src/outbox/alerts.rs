//! Slack alerts for an outbox that no longer reaches Zoho.
//!
//! Outbox failures are rows, not function errors, so without these an
//! operator would learn from a customer that Zoho sync had stopped. Each
//! drain tick checks three conditions (the same the CloudWatch alarms watch)
//! and posts each at most once an hour across every container: the claim
//! on `ops_alerts` is one statement.

use crate::platform::{db::DbError, slack::Slack};

/// What is wrong, as the alert's key and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub key: &'static str,
    pub text: String,
}

/// The conditions that hold now.
pub async fn conditions(client: &tokio_postgres::Client) -> Result<Vec<Condition>, DbError> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM integrations_outbox
                      WHERE status = 'failed' AND updated_at > now() - interval '1 hour'),
                    (SELECT floor(extract(epoch FROM now() - min(created_at)) / 60)::bigint
                       FROM integrations_outbox WHERE status = 'pending'),
                    (SELECT max(throttled_until) FROM zoho_oauth_tokens
                      WHERE throttled_until > now())",
            &[],
        )
        .await?;
    let failed: i64 = row.try_get(0)?;
    let oldest_minutes: Option<i64> = row.try_get(1)?;
    let circuit: Option<chrono::DateTime<chrono::Utc>> = row.try_get(2)?;
    let mut out = Vec::new();
    if failed > 0 {
        out.push(Condition {
            key: "outbox_failed",
            text: format!(":warning: {failed} outbox rows failed for good in the last hour; Zoho is missing them until they are requeued (runbook: failed outbox rows)."),
        });
    }
    if let Some(m) = oldest_minutes.filter(|m| *m >= 15) {
        out.push(Condition {
            key: "outbox_pending_old",
            text: format!(":warning: the oldest pending outbox row has waited {m} minutes; the drain is not reaching Zoho."),
        });
    }
    if let Some(until) = circuit {
        out.push(Condition {
            key: "zoho_token_circuit",
            text: format!(
                ":warning: Zoho throttled the token endpoint; every Zoho call waits until {until}."
            ),
        });
    }
    Ok(out)
}

/// Posts every condition that holds and was not posted in the last hour;
/// returns how many were posted.
pub async fn alert(client: &tokio_postgres::Client, slack: &Slack) -> Result<usize, DbError> {
    if !slack.enabled().await {
        return Ok(0);
    }
    let mut posted = 0;
    for c in conditions(client).await? {
        if !claim(client, c.key).await? {
            continue;
        }
        if slack.post(&c.text).await {
            posted += 1;
        } else {
            // Not delivered: the next tick may try again.
            client
                .execute("DELETE FROM ops_alerts WHERE condition = $1", &[&c.key])
                .await?;
        }
    }
    Ok(posted)
}

/// True for the one caller that may post `key` now.
async fn claim(client: &tokio_postgres::Client, key: &str) -> Result<bool, DbError> {
    let claimed = client
        .query_opt(
            "INSERT INTO ops_alerts (condition, last_sent_at) VALUES ($1, now())
             ON CONFLICT (condition) DO UPDATE SET last_sent_at = now()
              WHERE ops_alerts.last_sent_at < now() - interval '1 hour'
             RETURNING 1",
            &[&key],
        )
        .await?;
    Ok(claimed.is_some())
}
