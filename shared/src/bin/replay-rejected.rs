//! Queues the deliveries kept as `rejected` since a time, once the parser
//! that refused them is fixed (docs/runbook.md, "Replaying rejected
//! deliveries"). Uses the functions' settings: `DATABASE_URL` or
//! `DB_SECRET_ID`, and `KOMMO_EVENTS_QUEUE_URL`.
//!
//! `replay-rejected [HOURS]`: the last HOURS hours (default 24).

use chrono::{Duration, Utc};
use shared::{
    ingest::replay::replay_rejected,
    platform::{
        command::{self, Command},
        config::Need,
        sqs::{self, Queue},
    },
};

#[tokio::main]
async fn main() {
    command::main("replay-rejected", run()).await
}

async fn run() -> anyhow::Result<()> {
    let hours: i64 = match std::env::args().nth(1) {
        Some(h) => h
            .parse()
            .map_err(|_| anyhow::anyhow!("HOURS must be a whole number, not `{h}`"))?,
        None => 24,
    };
    let cmd = Command::connect(&[Need::KommoEventsQueue]).await?;
    let url = cmd
        .config
        .kommo_events_queue_url
        .clone()
        .unwrap_or_default();
    let queue = Queue::new(sqs::client(&cmd.sdk), url);
    let since = Utc::now() - Duration::hours(hours);
    let n = replay_rejected(&cmd.db, &queue, since).await?;
    println!("replay-rejected: queued {n} rejected deliveries received since {since}");
    Ok(())
}
