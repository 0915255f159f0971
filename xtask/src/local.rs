//! The system running on this machine as `dev`, `demo` and `events` use it:
//! the dev stack, `cargo lambda watch` serving the functions, and the SQS
//! pumps and schedule ticker that stand in for the event-source mappings and
//! the EventBridge rule `cargo lambda watch` does not provide.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use sandbox::kommo::{
    data::{
        date_time_field, vehicle_field, vehicles, FIELD_COLLECT, FIELD_DELIVERY,
        STATUS_BOT_ANSWERING, STATUS_FOLLOW_UP, STATUS_LOST, STATUS_WON,
    },
    KommoSandbox, SandboxContact, SandboxLead,
};
use wiring::{HttpInvoker, Invoker, PumpConfig, ScheduleTicker, SqsPump, StopHandle};

use crate::{
    devstack::{DevOptions, DevStack},
    env_file, root, stack,
};

/// A new lead copies the status of a lead in none of these, an open one.
const EXCLUDED: [i64; 4] = [
    STATUS_WON,
    STATUS_LOST,
    STATUS_BOT_ANSWERING,
    STATUS_FOLLOW_UP,
];

/// The function binaries `cargo lambda watch` serves.
pub const FUNCTIONS: [&str; 5] = [
    "webhook",
    "webhook-processor",
    "full-refresh",
    "full-refresh-worker",
    "outbox-drain",
];

/// How to start the local system.
pub struct LocalOptions {
    pub stack: DevOptions,
    /// Port of `cargo lambda watch`.
    pub port: u16,
    /// Between outbox-drain schedule ticks.
    pub tick: Duration,
    /// Per invocation; covers the function's own timeout.
    pub invoke_timeout: Duration,
    /// Pumps that poll every second and retry a failed webhook after two
    /// seconds, so a scripted run does not wait on the usual pace.
    pub quick_pumps: bool,
    /// Start `cargo lambda watch`; without it the pumps and the ticker call
    /// the one the developer runs on `port`.
    pub watch: bool,
}

impl LocalOptions {
    /// For a scripted run (`demo`, `events`): a smaller account, a free port
    /// and quick pumps; `tick` as the script needs the outbox drained.
    pub fn scripted(tick: Duration) -> Result<Self> {
        Ok(LocalOptions {
            stack: DevOptions {
                leads: 120,
                contacts: 80,
                own_database: true,
                ..DevOptions::default()
            },
            port: stack::free_port()?,
            tick,
            invoke_timeout: Duration::from_secs(600),
            quick_pumps: true,
            watch: true,
        })
    }
}

/// The running system: the stack, `cargo lambda watch`, pumps and ticker.
pub struct LocalSystem {
    pub dev: DevStack,
    /// Base URL of `cargo lambda watch`.
    pub base: String,
    pub port: u16,
    pub watch_log: PathBuf,
    /// The functions' environment, as an env file.
    pub env_file: PathBuf,
    _event_sources: Vec<StopHandle>,
}

impl LocalSystem {
    pub async fn start(opts: LocalOptions) -> Result<Self> {
        if opts.watch {
            prebuild_functions()?;
        }
        let work = crate::workdir()?;
        let dev = DevStack::start(&work, opts.stack).await?;
        let logs = root().join("target/dev");
        std::fs::create_dir_all(&logs)?;
        let watch_log = logs.join("lambda-watch.log");
        // `cargo lambda watch` re-reads the metadata's `env_file` (the
        // relative `.env.example`, which names fixed ports) from its working
        // directory before starting each function, and lets it win over
        // `--env-file`. So this run's watch works in a directory of its own
        // whose `.env.example` holds this run's settings.
        let watch_dir = logs.join(format!("watch-{}", opts.port));
        std::fs::create_dir_all(&watch_dir)?;
        let env_file = watch_dir.join(env_file::EXAMPLE);
        env_file::write(&env_file, &dev.function_env())?;
        if opts.watch {
            eprintln!(
                "xtask: starting cargo lambda watch on port {} (log: {})",
                opts.port,
                watch_log.display()
            );
            start_lambda_watch(&env_file, opts.port, &watch_log)?;
        }
        let base = format!("http://127.0.0.1:{}", opts.port);
        let event_sources = start_event_sources(&dev, &base, &opts).await?;
        Ok(LocalSystem {
            dev,
            base,
            port: opts.port,
            watch_log,
            env_file,
            _event_sources: event_sources,
        })
    }
}

impl LocalSystem {
    /// A new lead that becomes a booking (open status, dates, a contact), for
    /// the commands `dev` prints: they show the whole path, webhook → booking → Zoho.
    pub fn lead_for_banner(&self, name: &str) -> Result<SandboxLead> {
        let id = new_lead(&self.dev.kommo, name);
        self.dev
            .kommo
            .leads()
            .into_iter()
            .find(|l| l.id == id)
            .context("the lead just added to the Kommo sandbox")
    }
}

/// Builds each function the way `cargo lambda watch` runs it (`cargo run --bin <name>`), so
/// the first invocation does not wait for a compile inside the emulator's timeout.
fn prebuild_functions() -> Result<()> {
    eprintln!(
        "xtask: building the five functions (the first run compiles the AWS SDK and takes \
         several minutes; later runs take seconds)…"
    );
    let mut build = crate::cargo();
    build.arg("build");
    for bin in FUNCTIONS {
        build.args(["--bin", bin]);
    }
    crate::step("cargo build (the functions)", &mut build)
}

/// Starts `cargo lambda watch` with the environment in `env_file`, from
/// that file's directory; its output goes to `log`.
fn start_lambda_watch(env_file: &Path, port: u16, log: &Path) -> Result<()> {
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
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"))
            .arg("--env-file")
            .arg(env_file)
            .current_dir(env_file.parent().unwrap_or(&root()))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
    )
    .context("start cargo lambda watch")?;
    stack::kill_group_on_cleanup(child, "cargo lambda watch");
    stack::wait_for_port(port, "cargo lambda watch", Duration::from_secs(120))
}

/// The SQS pumps of the two queues and the outbox-drain ticker, invoking
/// the functions through `cargo lambda watch` at `base`.
async fn start_event_sources(
    dev: &DevStack,
    base: &str,
    opts: &LocalOptions,
) -> Result<Vec<StopHandle>> {
    let invoker = |name: &str| -> Arc<dyn Invoker> {
        Arc::new(HttpInvoker::new(base, name, opts.invoke_timeout))
    };
    let mut events = PumpConfig::new(&dev.provisioned.kommo_events.url);
    events.batch_size = 10;
    let mut jobs = PumpConfig::new(&dev.provisioned.full_refresh_jobs.url);
    jobs.batch_size = 1;
    if opts.quick_pumps {
        events.wait_time = Duration::from_secs(1);
        events.retry_visibility = Duration::from_secs(2);
        jobs.wait_time = Duration::from_secs(1);
    }
    Ok(vec![
        SqsPump::new(&dev.sdk, events, invoker("webhook-processor"))
            .await?
            .spawn(),
        SqsPump::new(&dev.sdk, jobs, invoker("full-refresh-worker"))
            .await?
            .spawn(),
        ScheduleTicker::new(invoker("outbox-drain"))
            .interval(opts.tick)
            .spawn(),
    ])
}

/// Adds a dated lead with a contact and a vehicle to the Kommo sandbox: one
/// that becomes a booking.
pub fn new_lead(kommo: &KommoSandbox, name: &str) -> i64 {
    let template = kommo
        .leads()
        .into_iter()
        .find(|l| !EXCLUDED.contains(&l.status_id))
        .expect("the sandbox has leads in open statuses");
    let now = chrono::Utc::now().timestamp();
    let contact_id = kommo.next_contact_id();
    let mut contact = SandboxContact::new(contact_id, "Demo", &format!("Client {contact_id}"), now);
    contact.set_email(Some(&format!("demo{contact_id}@example.com")));
    contact.set_phone(Some("+971 50 123 4567"));
    kommo.upsert_contact(contact);
    let id = kommo.next_lead_id();
    let mut lead = SandboxLead::new(id, name, template.pipeline_id, template.status_id, now);
    lead.price = 1500;
    lead.responsible_user_id = template.responsible_user_id;
    lead.contact_ids = vec![contact_id];
    lead.set_field(date_time_field(
        FIELD_DELIVERY,
        "Date/Time Delivery",
        now + 86_400,
    ));
    lead.set_field(date_time_field(
        FIELD_COLLECT,
        "Date/Time Collect",
        now + 3 * 86_400,
    ));
    if let Some(v) = vehicles().first().and_then(|(id, _)| vehicle_field(*id)) {
        lead.set_field(v);
    }
    kommo.upsert_lead(lead);
    id
}
