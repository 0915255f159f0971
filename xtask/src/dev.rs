//! `cargo xtask dev`: the system on one machine until Ctrl-C.
//!
//! `cargo lambda watch` serves the functions as Lambda would; the SQS pumps
//! and the schedule ticker stand in for the event-source mappings and the
//! EventBridge rule that `cargo lambda watch` does not provide.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use sandbox::wiring::{HttpInvoker, Invoker, PumpConfig, ScheduleTicker, SqsPump};

use crate::{
    devstack::{DevOptions, DevStack},
    root, stack,
};

pub struct DevArgs {
    pub port: u16,
    pub tick: Duration,
    pub leads: usize,
}

/// Starts `cargo lambda watch` with the stack's environment; its output goes to `log`.
pub fn start_lambda_watch(
    stack_env: &[(String, String)],
    port: u16,
    log: &std::path::Path,
) -> Result<()> {
    // Otherwise the wait below would find someone else's server and call it ours.
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        anyhow::bail!(
            "port {port} is already in use (another `cargo lambda watch`?); stop it or pick \
             another port with --port"
        );
    }
    let cargo_lambda = stack::ensure_pip_tool("cargo-lambda", "cargo-lambda")?;
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = stack::spawn_group(
        Command::new(cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .current_dir(root())
            .envs(stack_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
    )
    .context("start cargo lambda watch")?;
    stack::kill_group_on_cleanup(child, "cargo lambda watch");
    stack::wait_for_port(port, "cargo lambda watch", Duration::from_secs(120))
}

pub fn run(args: DevArgs) -> Result<()> {
    // Built before the stack starts, so the first webhook is not answered
    // after a compile inside `cargo lambda watch`.
    crate::demo::prebuild_functions()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let logs = root().join("target/dev");
        std::fs::create_dir_all(&logs)?;
        let work = crate::workdir()?;
        let dev = DevStack::start(
            &work,
            DevOptions {
                leads: args.leads,
                ..DevOptions::default()
            },
        )
        .await?;
        let env = dev.function_env();
        let watch_log = logs.join("lambda-watch.log");
        eprintln!("xtask: starting cargo lambda watch on port {}", args.port);
        start_lambda_watch(&env, args.port, &watch_log)?;
        let base = format!("http://127.0.0.1:{}", args.port);
        let invoker = |name: &str| -> Arc<dyn Invoker> {
            Arc::new(HttpInvoker::new(&base, name, Duration::from_secs(300)))
        };
        let mut events = PumpConfig::new(&dev.provisioned.kommo_events.url);
        events.batch_size = 10;
        let _events_pump = SqsPump::new(&dev.sdk, events, invoker("webhook-processor"))
            .await?
            .spawn();
        let mut jobs = PumpConfig::new(&dev.provisioned.full_refresh_jobs.url);
        jobs.batch_size = 1;
        let _jobs_pump = SqsPump::new(&dev.sdk, jobs, invoker("full-refresh-worker"))
            .await?
            .spawn();
        let _ticker = ScheduleTicker::new(invoker("outbox-drain"))
            .interval(args.tick)
            .spawn();

        // A lead that becomes a booking (open status, dates, a contact), so the
        // curl below shows the whole path: webhook → booking → Zoho.
        let lead = crate::demo::new_lead(&dev.kommo, "Dev: jet ski weekend");
        let (pipeline, status) = dev
            .kommo
            .leads()
            .iter()
            .find(|l| l.id == lead)
            .map(|l| (l.pipeline_id, l.status_id))
            .context("the lead just added to the Kommo sandbox")?;
        let token = shared::platform::auth::issue_staff_token(&dev.spec.staff_jwt.hs256_secret, "dev-operator", "admin", 86_400);
        println!(
            r#"
The system is running. Ctrl-C stops everything.

  Lambda functions      {base}   (cargo lambda watch)
  Kommo sandbox         {kommo}  (token {ktoken})
  Zoho sandbox          {zoho}   (state: {zoho}/_sandbox/state)
  PostgreSQL            {db}
  moto (SQS, secrets)   {aws}
  outbox-drain tick     every {tick:?} (AWS: every minute; --tick-seconds 60 to match)

Logs:
  functions             {watch}
{other_logs}

Send a Kommo webhook (status change of lead {lead}; within seconds it is a booking, then a Zoho sales order):
  curl -s -X POST '{base}/lambda-url/webhook/kommo/webhook/{wtoken}' \
       -H 'content-type: application/x-www-form-urlencoded' \
       --data 'leads[status][0][id]={lead}&leads[status][0][status_id]={status}&leads[status][0][pipeline_id]={pipeline}&account[id]={account}'

Invoke a function with a sample event:
  cargo lambda invoke -P {port} webhook --data-file events/webhook-lead-status.json
  cargo lambda invoke -P {port} webhook-processor --data-file events/webhook-processor-sqs.json
  cargo lambda invoke -P {port} full-refresh --data-file events/full-refresh-start.json
  cargo lambda invoke -P {port} outbox-drain --data-file events/outbox-drain-schedule.json

Start a full refresh as a staff user:
  curl -s -X POST '{base}/lambda-url/full-refresh/integrations/kommo/full-refresh' \
       -H 'authorization: Bearer {jwt}' -H 'content-type: application/json' -d '{{}}'

Look at the data:
  psql '{db}' -c 'SELECT source_payload_id, status, zoho_sync_status FROM bookings ORDER BY created_at DESC LIMIT 5'
  psql '{db}' -c 'SELECT event_type, status, count(*) FROM integrations_outbox GROUP BY 1, 2'

Flip a flag (the kill switch; takes effect within 10 s):
  psql '{db}' -c "UPDATE system_feature_flags SET enabled = false WHERE key = 'enableZohoLive'"
"#,
            watch = watch_log.display(),
            kommo = dev.kommo.base_url(),
            ktoken = dev.kommo.token(),
            zoho = dev.zoho.base_url(),
            db = dev.db_url,
            aws = dev.aws_endpoint,
            tick = args.tick,
            wtoken = dev.spec.kommo.webhook_token,
            jwt = token,
            port = args.port,
            account = dev.kommo.account().id,
            other_logs = stack::logs()
                .iter()
                .map(|(name, path)| format!("  {name:<21} {}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        // The Ctrl-C handler stops children and exits; until then, serve.
        std::future::pending::<()>().await;
        Ok(())
    })
}
