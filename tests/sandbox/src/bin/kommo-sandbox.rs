//! Runs the Kommo sandbox on its own, for the dev stack and manual poking.

use std::net::IpAddr;

use clap::Parser;
use sandbox::kommo::{Faults, ForcedError, KommoOptions, KommoSandbox};

/// A stateful fake of the Kommo v4 API, generated from a seed.
///
/// Control endpoints: GET/POST /_sandbox/faults (JSON fault knobs),
/// GET /_sandbox/stats, POST /_sandbox/stats/reset, POST /_sandbox/leads and
/// /_sandbox/contacts (upsert one record), POST /_sandbox/webhook
/// ({"url": "...", "events": [{"entity": "lead", "action": "status", "id": 1}]}).
#[derive(Debug, Parser)]
#[command(name = "kommo-sandbox", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "KOMMO_SANDBOX_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "KOMMO_SANDBOX_PORT", default_value_t = 8181)]
    port: u16,
    /// Seed of the generated data: the same seed gives the same account.
    #[arg(long, env = "KOMMO_SANDBOX_SEED", default_value_t = 42)]
    seed: u64,
    /// Number of leads and of contacts to generate.
    #[arg(long, env = "KOMMO_SANDBOX_SIZE", default_value_t = 1000)]
    size: usize,
    /// Number of leads (overrides --size).
    #[arg(long)]
    leads: Option<usize>,
    /// Number of contacts (overrides --size).
    #[arg(long)]
    contacts: Option<usize>,
    /// Bearer token the API accepts.
    #[arg(
        long,
        env = "KOMMO_SANDBOX_TOKEN",
        default_value = "sandbox-kommo-token"
    )]
    token: String,
    /// Reference year: leads are created in year-2 ..= year (default: current year).
    #[arg(long)]
    year: Option<i32>,
    /// Account id (sent as account[id] in webhooks).
    #[arg(long, default_value_t = 31_361_463)]
    account_id: i64,
    /// Account subdomain.
    #[arg(long, default_value = "sandbox")]
    subdomain: String,
    /// Account timezone served by /api/v4/account?with=datetime_settings.
    #[arg(long, default_value = "Asia/Dubai")]
    timezone: String,
    /// Offset matching --timezone.
    #[arg(long, default_value = "+04:00")]
    timezone_offset: String,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Requests per second above which the API answers 429.
    #[arg(long)]
    rps: Option<u32>,
    /// Answer the Nth API request with --fail-status.
    #[arg(long)]
    fail_nth: Option<u64>,
    /// Status for --fail-nth.
    #[arg(long, default_value_t = 500)]
    fail_status: u16,
    /// Start in "IP blocked" mode: every API request gets 403 with an HTML body.
    #[arg(long)]
    ip_blocked: bool,
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
    let opts = KommoOptions {
        seed: a.seed,
        leads: a.leads.unwrap_or(a.size),
        contacts: a.contacts.unwrap_or(a.size),
        token: a.token,
        year: a.year,
        host: a.host,
        port: a.port,
        account_id: a.account_id,
        subdomain: a.subdomain,
        timezone: a.timezone,
        timezone_offset: a.timezone_offset,
        faults: Faults {
            latency_ms: a.latency_ms,
            rate_limit_per_second: a.rps,
            forced: a.fail_nth.map(|n| ForcedError::once(n, a.fail_status)),
            fail_leads_page: None,
            ip_blocked: a.ip_blocked,
        },
    };
    let kommo = KommoSandbox::start(opts).await?;
    println!("kommo sandbox listening on {}", kommo.base_url());
    tokio::signal::ctrl_c().await?;
    kommo.stop().await;
    Ok(())
}
