//! HTTP function: `POST /kommo/webhook/{token}` and `POST /bookings`.

use std::{convert::Infallible, sync::Arc};

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::platform::{config::Need, context::AppContext, sqs::Queue, telemetry};
use webhook::{
    http::HttpApp, manual::ManualBookings, receiver::Receiver, settings::ReceiverSettings,
    SecretSource,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let ctx = AppContext::from_env(&[
        Need::KommoSecret,
        Need::StaffJwtSecret,
        Need::KommoEventsQueue,
    ])
    .await?;
    let settings = ReceiverSettings::from_env()?;
    let need = |v: &Option<String>| v.clone().unwrap_or_default();
    let app = Arc::new(HttpApp {
        receiver: Receiver {
            secret: SecretSource::Manager {
                secrets: ctx.secrets.clone(),
                id: need(&ctx.config.kommo_secret_id),
            },
            flags: ctx.flags.clone(),
            pool: ctx.pool.clone(),
            queue: Arc::new(Queue::new(
                ctx.sqs_client(),
                need(&ctx.config.kommo_events_queue_url),
            )),
            settings,
        },
        bookings: ManualBookings {
            secret: SecretSource::Manager {
                secrets: ctx.secrets.clone(),
                id: need(&ctx.config.staff_jwt_secret_id),
            },
            allowed_roles: ctx.config.staff_roles.clone(),
            pool: ctx.pool.clone(),
        },
    });
    run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(event.payload).await) }
        },
    ))
    .await
}
