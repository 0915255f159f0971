//! HTTP function: start a Kommo full refresh and report runs.

use std::{convert::Infallible, sync::Arc};

use full_refresh::http::HttpApp;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    platform::{apigw::Request, config::Need, context::AppContext},
    refresh::RefreshSettings,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let needs = [Need::StaffJwtSecret, Need::FullRefreshQueue];
    let ctx = AppContext::start("full-refresh", &needs).await?;
    let config = &ctx.config;
    let staff_key = ctx.staff_key().await?;
    let app = Arc::new(HttpApp {
        pool: ctx.pool.clone(),
        flags: ctx.flags.clone(),
        jwt: staff_key,
        allowed_roles: config.staff_roles.clone(),
        queue: Arc::new(ctx.queue(&config.full_refresh_queue_url)),
        settings: RefreshSettings::from_env(config)?,
    });
    run(service_fn(move |event: LambdaEvent<Request>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(event.payload).await) }
    }))
    .await
}
