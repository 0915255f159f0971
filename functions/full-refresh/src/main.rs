//! HTTP function: start a Kommo full refresh and report runs.

use std::{convert::Infallible, sync::Arc};

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use full_refresh::{http::HttpApp, SecretSource};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    platform::{config::Need, context::AppContext, sqs::Queue, telemetry},
    refresh::RefreshSettings,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let ctx = AppContext::from_env(&[Need::StaffJwtSecret, Need::FullRefreshQueue]).await?;
    let settings = RefreshSettings::from_env(&ctx.config)?;
    let need = |v: &Option<String>| v.clone().unwrap_or_default();
    let app = Arc::new(HttpApp {
        pool: ctx.pool.clone(),
        flags: ctx.flags.clone(),
        jwt: SecretSource::Manager {
            secrets: ctx.secrets.clone(),
            id: need(&ctx.config.staff_jwt_secret_id),
        },
        allowed_roles: ctx.config.staff_roles.clone(),
        queue: Arc::new(Queue::new(
            ctx.sqs_client(),
            need(&ctx.config.full_refresh_queue_url),
        )),
        settings,
    });
    run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(event.payload).await) }
        },
    ))
    .await
}
