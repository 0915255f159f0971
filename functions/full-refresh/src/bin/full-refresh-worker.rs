//! SQS function: carries out full-refresh runs, one job at a time.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use full_refresh::worker::WorkerApp;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    kommo::{KommoClient, KommoClientOptions},
    platform::config::Need,
    platform::context::AppContext,
    platform::deadline::Deadline,
    platform::secrets::KommoSecret,
    platform::sqs::Queue,
    platform::telemetry,
    refresh::{alert::SlackTarget, Alerter, RefreshSettings, Worker},
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let ctx = AppContext::from_env(&[Need::KommoSecret, Need::FullRefreshQueue]).await?;
    let settings = RefreshSettings::from_env(&ctx.config)?;
    let need = |v: &Option<String>| v.clone().unwrap_or_default();
    let kommo_secret: KommoSecret = ctx
        .secrets
        .get_json(&need(&ctx.config.kommo_secret_id))
        .await?;
    let kommo = KommoClient::new(&kommo_secret, KommoClientOptions::from_config(&ctx.config))?;
    let target = match &ctx.config.slack_secret_id {
        Some(id) => SlackTarget::Secret {
            secrets: ctx.secrets.clone(),
            id: id.clone(),
        },
        None => SlackTarget::None,
    };
    let margin = settings.deadline_margin;
    let app = Arc::new(WorkerApp {
        worker: Worker {
            pool: ctx.pool.clone(),
            kommo,
            queue: Arc::new(Queue::new(
                ctx.sqs_client(),
                need(&ctx.config.full_refresh_queue_url),
            )),
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
