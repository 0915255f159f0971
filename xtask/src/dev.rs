//! `cargo xtask dev`: the system on one machine until Ctrl-C, with a banner
//! that says where each part runs and how to poke at it.

use std::time::Duration;

use anyhow::Result;
use sandbox::kommo::SandboxLead;

use crate::{
    devstack::DevOptions,
    env_file,
    local::{LocalOptions, LocalSystem},
    stack,
};

pub struct DevArgs {
    pub port: u16,
    pub tick: Duration,
    pub leads: usize,
    /// Start `cargo lambda watch` (else the developer runs it).
    pub watch: bool,
}

pub fn run(args: DevArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let sys = LocalSystem::start(LocalOptions {
            // The ports `.env.example` names, so plain `cargo lambda watch` finds this stack.
            stack: DevOptions {
                leads: args.leads,
                pg_port: env_file::PG_PORT,
                moto_port: env_file::MOTO_PORT,
                kommo_port: env_file::KOMMO_PORT,
                zoho_port: env_file::ZOHO_PORT,
                ..DevOptions::default()
            },
            port: args.port,
            tick: args.tick,
            invoke_timeout: Duration::from_secs(300),
            quick_pumps: false,
            watch: args.watch,
        })
        .await?;
        let lead = sys.lead_for_banner("Dev: jet ski weekend")?;
        println!("{}", banner(&sys, args.tick, &lead, args.watch));
        // The Ctrl-C handler stops children and exits; until then, serve.
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// One thing to try: what it shows, and the shell command lines that do it.
pub struct Try {
    pub what: &'static str,
    pub commands: Vec<String>,
}

/// The commands the banner prints, every one ready to paste (`cargo xtask
/// events` runs them all). `cargo lambda invoke` is given the address, because
/// its default (`::1`) is not where xtask's `cargo lambda watch` listens.
pub fn tries(sys: &LocalSystem, lead: &SandboxLead) -> Vec<Try> {
    let dev = &sys.dev;
    let (base, port, db) = (&sys.base, sys.port, &dev.db_url);
    let jwt = shared::platform::auth::issue_staff_token(
        &dev.spec.staff_jwt.hs256_secret,
        "dev-operator",
        "admin",
        86_400,
    );

    let invoke = |function: &str, file: &str| {
        format!(
            "cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port {port} {function} \
             --data-file events/{file}"
        )
    };
    vec![
        Try {
            what: "Send a Kommo webhook (a status change of the new lead; within seconds it is \
                   a booking, then a Zoho sales order)",
            commands: vec![webhook_curl(sys, lead)],
        },
        Try {
            what: "Invoke a function with a sample event",
            commands: vec![
                invoke("webhook", "webhook-lead-status.json"),
                invoke("webhook-processor", "webhook-processor-sqs.json"),
                // The list, not the start: the curl below starts the refresh,
                // and a second start while one runs answers 409.
                invoke("full-refresh", "full-refresh-list.json"),
                invoke("outbox-drain", "outbox-drain-schedule.json"),
                // Queues whatever Zoho is behind on; the next tick sends it.
                invoke("outbox-drain", "outbox-drain-reconcile.json"),
            ],
        },
        Try {
            what: "Book by hand, as staff do when Kommo is down",
            commands: vec![booking_curl(sys, lead, &jwt)],
        },
        Try {
            what: "Start a full refresh as a staff user, then list the runs",
            commands: vec![
                format!(
                    "{CURL} -X POST '{base}/integrations/kommo/full-refresh' \\\n     \
                     -H 'authorization: Bearer {jwt}' -H 'content-type: application/json' -d '{{}}'"
                ),
                format!(
                    "{CURL} '{base}/integrations/kommo/full-refresh' -H 'authorization: Bearer {jwt}'"
                ),
            ],
        },
        Try {
            what: "Look at the data",
            commands: vec![
                format!("psql '{db}' -c 'SELECT source_payload_id, status, zoho_sync_status FROM bookings ORDER BY created_at DESC LIMIT 5'"),
                format!("psql '{db}' -c 'SELECT event_type, status, count(*) FROM integrations_outbox GROUP BY 1, 2'"),
            ],
        },
        Try {
            what: "Flip a flag off and on again (the kill switch; takes effect within 10 s)",
            commands: [false, true]
                .map(|on| format!("psql '{db}' -c \"UPDATE system_feature_flags SET enabled = {on} WHERE key = 'enableZohoLive'\""))
                .to_vec(),
        },
    ]
}

const CURL: &str = "curl -sS --fail-with-body";

/// A Kommo status-change delivery of `lead` to the receiver's route.
fn webhook_curl(sys: &LocalSystem, lead: &SandboxLead) -> String {
    let dev = &sys.dev;
    format!(
        "{CURL} -X POST '{base}/kommo/webhook/{token}' \\\n     \
         -H 'content-type: application/x-www-form-urlencoded' \\\n     \
         --data 'leads[status][0][id]={id}&leads[status][0][status_id]={status}\
         &leads[status][0][pipeline_id]={pipeline}&account[id]={account}'",
        base = sys.base,
        token = dev.spec.kommo.webhook_token,
        id = lead.id,
        status = lead.status_id,
        pipeline = lead.pipeline_id,
        account = dev.kommo.account().id,
    )
}

/// A manual booking whose external code is the lead's, so it is new once per lead.
fn booking_curl(sys: &LocalSystem, lead: &SandboxLead, jwt: &str) -> String {
    let booking = format!(
        r#"{{"external_code":"MAN-DEV-{}","client":{{"full_name":"Grace Hopper","email":"grace@example.com"}},"start_at":"2027-01-10T09:00:00Z","end_at":"2027-01-12T18:00:00Z","title":"Van hire"}}"#,
        lead.id
    );
    format!(
        "{CURL} -X POST '{}/bookings' -H 'authorization: Bearer {jwt}' \\\n     \
         -H 'content-type: application/json' -d '{booking}'",
        sys.base
    )
}

/// Where everything runs and what to try, with `lead` in the sample webhook.
fn banner(sys: &LocalSystem, tick: Duration, lead: &SandboxLead, watch: bool) -> String {
    let dev = &sys.dev;
    let other_logs = stack::logs()
        .iter()
        .map(|(name, path)| format!("  {name:<21} {}", path.display()))
        .collect::<Vec<_>>()
        .join("\n");
    let functions = if watch {
        format!("{}   (cargo lambda watch)", sys.base)
    } else {
        format!(
            "{}   not started: run `cargo lambda watch` in another terminal",
            sys.base
        )
    };
    let tries: String = tries(sys, lead)
        .iter()
        .map(|t| format!("\n{}:\n  {}\n", t.what, t.commands.join("\n  ")))
        .collect();
    format!(
        r#"
The system is running. Ctrl-C stops everything.

  Lambda functions      {functions}
  Kommo sandbox         {kommo}  (token {ktoken})
  Zoho sandbox          {zoho}   (state: {zoho}/_sandbox/state)
  PostgreSQL            {db}
  moto (SQS, secrets)   {aws}
  outbox-drain tick     every {tick:?} (AWS: every minute; --tick-seconds 60 to match)

Logs:
  functions             {watch_log}
{other_logs}

Plain `cargo lambda watch` serves the same functions with the same settings:
{plain}
{tries}"#,
        watch_log = sys.watch_log.display(),
        kommo = dev.kommo.base_url(),
        ktoken = dev.kommo.token(),
        zoho = dev.zoho.base_url(),
        db = dev.db_url,
        aws = dev.aws_endpoint,
        plain = plain_watch_note(sys),
    )
}

/// How a developer runs `cargo lambda watch` against this stack: bare when
/// `.env.example` names it, else with the env file of this run.
fn plain_watch_note(sys: &LocalSystem) -> String {
    let example = std::fs::read_to_string(crate::root().join(env_file::EXAMPLE))
        .map(|t| env_file::parse(&t))
        .unwrap_or_default();
    let actual = env_file::comparable(&sys.dev.function_env());
    let differ = env_file::differences(&example, &actual);
    if differ.is_empty() {
        "  cargo lambda watch   (reads .env.example; routes as in template.yaml)\n".to_string()
    } else {
        format!(
            "  not as it stands: .env.example names the default ports, and this run differs in\n  \
             {} (DATABASE_URL or AWS_ENDPOINT_URL set?). This run's settings: {}\n",
            differ.join(", "),
            sys.env_file.display()
        )
    }
}
