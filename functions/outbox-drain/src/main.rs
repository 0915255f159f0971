//! Outbox drain Lambda: every minute, sends due outbox rows to Zoho; daily
//! (and on demand, `{"mode": "reconcile"}`), queues whatever Zoho is behind on.
//!
//! The clients are built once per cold start; the handler is in `handler.rs`
//! and the domain logic in `shared::outbox` and `shared::retention`.

mod handler;
mod mode;

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use shared::{
    outbox::Drain,
    platform::{context::AppContext, slack::Slack},
    retention::RetentionSettings,
};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // ZOHO_SECRET_ID is read lazily: with enableZohoLive off the drain needs no secret.
    let ctx = AppContext::start("outbox-drain", &[]).await?;
    let drain = Arc::new(Drain::from_context(&ctx));
    let upkeep = Arc::new(handler::Upkeep {
        pool: ctx.pool.clone(),
        settings: RetentionSettings::from_env()?,
        slack: Slack::new(ctx.flags.clone(), ctx.slack_target()),
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (drain, upkeep) = (drain.clone(), upkeep.clone());
        async move { handler::handle(&drain, &upkeep, event).await }
    }))
    .await
}
