//! SQS function: processes buffered Kommo deliveries from `kommo-events`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    ingest::Pipeline,
    kommo::{KommoClient, Lane},
    platform::{config::Need, context::AppContext, deadline::Deadline},
};
use webhook::processor::{HoldBack, Processor};

/// Time kept back from the Lambda deadline: one delivery's fetch and apply.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let ctx = AppContext::start("webhook-processor", &[Need::KommoSecret]).await?;
    let kommo_secret = ctx.secret(&ctx.config.kommo_secret_id);
    let kommo =
        KommoClient::for_function(kommo_secret, &ctx.config, ctx.pool.clone(), Lane::Webhooks)
            .await?;
    // The queue the events come from: outages hold its messages back.
    let hold_back = ctx
        .config
        .kommo_events_queue_url
        .as_ref()
        .map(|_| HoldBack {
            queue: ctx.queue(&ctx.config.kommo_events_queue_url),
            base: ctx.config.kommo_outage_hold,
        });
    let pipeline = Pipeline::new(ctx.pool.clone(), ctx.flags.clone(), kommo);
    let processor = Arc::new(Processor {
        pipeline,
        hold_back,
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = processor.clone();
        async move {
            let deadline = Deadline::from_epoch_ms(event.context.deadline, DEADLINE_MARGIN);
            let (resp, _report): (SqsBatchResponse, _) =
                processor.handle_until(event.payload, &deadline).await;
            Ok::<_, Infallible>(resp)
        }
    }))
    .await
}
