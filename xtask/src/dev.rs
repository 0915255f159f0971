//! `cargo xtask dev`: the system on one machine until Ctrl-C, with a banner
//! that says where each part runs and how to poke at it.

use std::time::Duration;

use anyhow::{Context, Result};
use sandbox::kommo::SandboxLead;

use crate::{
    devstack::DevOptions,
    local::{new_lead, LocalOptions, LocalSystem},
    stack,
};

pub struct DevArgs {
    pub port: u16,
    pub tick: Duration,
    pub leads: usize,
}

pub fn run(args: DevArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let sys = LocalSystem::start(LocalOptions {
            stack: DevOptions {
                leads: args.leads,
                ..DevOptions::default()
            },
            port: args.port,
            tick: args.tick,
            invoke_timeout: Duration::from_secs(300),
            quick_pumps: false,
        })
        .await?;
        // A lead that becomes a booking (open status, dates, a contact), so the
        // curl in the banner shows the whole path: webhook → booking → Zoho.
        let id = new_lead(&sys.dev.kommo, "Dev: jet ski weekend");
        let lead = sys
            .dev
            .kommo
            .leads()
            .into_iter()
            .find(|l| l.id == id)
            .context("the lead just added to the Kommo sandbox")?;
        println!("{}", banner(&sys, args.tick, &lead));
        // The Ctrl-C handler stops children and exits; until then, serve.
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Where everything runs and what to try, with `lead` in the sample webhook.
fn banner(sys: &LocalSystem, tick: Duration, lead: &SandboxLead) -> String {
    let dev = &sys.dev;
    let jwt = shared::platform::auth::issue_staff_token(
        &dev.spec.staff_jwt.hs256_secret,
        "dev-operator",
        "admin",
        86_400,
    );
    let other_logs = stack::logs()
        .iter()
        .map(|(name, path)| format!("  {name:<21} {}", path.display()))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
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
        base = sys.base,
        watch = sys.watch_log.display(),
        kommo = dev.kommo.base_url(),
        ktoken = dev.kommo.token(),
        zoho = dev.zoho.base_url(),
        db = dev.db_url,
        aws = dev.aws_endpoint,
        wtoken = dev.spec.kommo.webhook_token,
        port = sys.port,
        lead = lead.id,
        pipeline = lead.pipeline_id,
        status = lead.status_id,
        account = dev.kommo.account().id,
    )
}
