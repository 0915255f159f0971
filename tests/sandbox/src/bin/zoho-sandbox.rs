//! Runs the Zoho CRM sandbox on its own (dev stack, demo, manual poking).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use sandbox::zoho::{Faults, ZohoOptions, ZohoSandbox};

/// Zoho CRM v8 sandbox: accounts host (`/oauth/v2/token`) and API host
/// (`/crm/v8/...`) on one address, inspection at `GET /_sandbox/state`,
/// fault knobs at `POST /_sandbox/faults`.
#[derive(Debug, Parser)]
#[command(name = "zoho-sandbox", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ZOHO_SANDBOX_BIND", default_value = "127.0.0.1:8092")]
    bind: SocketAddr,
    /// OAuth client id the token endpoint accepts.
    #[arg(long, default_value = "1000.SANDBOXCLIENT")]
    client_id: String,
    /// OAuth client secret the token endpoint accepts.
    #[arg(long, default_value = "sandbox-client-secret")]
    client_secret: String,
    /// Refresh token the token endpoint accepts.
    #[arg(long, default_value = "1000.sandbox.refresh")]
    refresh_token: String,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// Refreshes allowed per window before "Access Denied".
    #[arg(long, default_value_t = 10)]
    refresh_limit: usize,
    /// Length of the refresh window in seconds.
    #[arg(long, default_value_t = 600)]
    refresh_window_secs: u64,
    /// HTTP status of the throttle body (Zoho has been seen answering 400 and 200).
    #[arg(long, default_value_t = 400)]
    throttle_status: u16,
    /// Active tokens per refresh token; the oldest is evicted past it.
    #[arg(long, default_value_t = 15)]
    max_active_tokens: usize,
    /// Sales_Orders field that rejects duplicates with DUPLICATE_DATA.
    #[arg(long, default_value = "ERP_Booking_Id")]
    sales_order_unique_field: String,
    /// Latency added to every CRM call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// CRM calls in flight above this are answered 429.
    #[arg(long)]
    concurrency_limit: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let opts = ZohoOptions {
        bind: a.bind,
        client_id: a.client_id,
        client_secret: a.client_secret,
        refresh_token: a.refresh_token,
        token_lifetime: Duration::from_secs(a.token_lifetime_secs),
        refresh_limit: a.refresh_limit,
        refresh_window: Duration::from_secs(a.refresh_window_secs),
        throttle_status: a.throttle_status,
        max_active_tokens: a.max_active_tokens,
        sales_order_unique_field: a.sales_order_unique_field,
        faults: Faults {
            latency: Duration::from_millis(a.latency_ms),
            concurrency_limit: a.concurrency_limit,
            ..Faults::default()
        },
        ..ZohoOptions::default()
    };
    let zoho = ZohoSandbox::start(opts).await?;
    tracing::info!(base_url = %zoho.base_url(), "zoho sandbox listening");
    println!("{}", zoho.base_url());
    tokio::signal::ctrl_c().await?;
    zoho.stop().await;
    Ok(())
}
