//! SQS function: carries out full-refresh runs, one job at a time.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use full_refresh::worker::WorkerApp;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    kommo::{KommoClient, Lane},
    platform::{config::Need, context::AppContext, deadline::Deadline},
    refresh::{Alerter, RefreshSettings, Worker},
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let needs = [Need::KommoSecret, Need::FullRefreshQueue];
    let ctx = AppContext::start("full-refresh-worker", &needs).await?;
    let config = &ctx.config;
    let settings = RefreshSettings::from_env(config)?;
    let kommo_secret = ctx.secret(&config.kommo_secret_id);
    let kommo =
        KommoClient::for_function(kommo_secret, config, ctx.pool.clone(), Lane::Refresh).await?;
    let target = ctx.slack_target();
    let margin = settings.deadline_margin;
    let app = Arc::new(WorkerApp {
        worker: Worker {
            pool: ctx.pool.clone(),
            kommo,
            queue: Arc::new(ctx.queue(&config.full_refresh_queue_url)),
            flags: ctx.flags.clone(),
            alerter: Some(Alerter::new(ctx.flags.clone(), target)),
            settings,
        },
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let app = app.clone();
        async move {
            let deadline = Deadline::from_epoch_ms(event.context.deadline, margin);
            Ok::<SqsBatchResponse, Error>(app.handle(event.payload, deadline).await)
        }
    }))
    .await
}
