//! HTTP function: `POST /kommo/webhook/{token}` and `POST /bookings`.

use std::{convert::Infallible, sync::Arc};

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::platform::{apigw::Request, config::Need, context::AppContext};
use webhook::{
    http::HttpApp, manual::ManualBookings, receiver::Receiver, settings::ReceiverSettings,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let needs = [
        Need::KommoSecret,
        Need::StaffJwtSecret,
        Need::KommoEventsQueue,
    ];
    let ctx = AppContext::start("webhook", &needs).await?;
    let config = &ctx.config;
    let staff_key = ctx.staff_key().await?;
    let app = Arc::new(HttpApp {
        receiver: Receiver {
            secret: ctx.secret(&config.kommo_secret_id),
            flags: ctx.flags.clone(),
            pool: ctx.pool.clone(),
            queue: Arc::new(ctx.queue(&config.kommo_events_queue_url)),
            settings: ReceiverSettings::from_env()?,
        },
        bookings: ManualBookings {
            secret: staff_key,
            allowed_roles: config.staff_roles.clone(),
            pool: ctx.pool.clone(),
            flags: ctx.flags.clone(),
        },
    });
    run(service_fn(move |event: LambdaEvent<Request>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(event.payload).await) }
    }))
    .await
}
