//! The end-to-end tests' world: the Kommo sandbox, a worker against it,
//! and a live database.

use std::{sync::Arc, time::Duration};

use chrono::{TimeZone, Utc};
use sandbox::kommo::{KommoOptions, KommoSandbox, SandboxLead};
use shared::{
    kommo::{KommoClient, KommoClientOptions},
    platform::secrets::Redacted,
    refresh::{RefreshSettings, Worker},
};
use testkit::{refresh::MemoryQueue, TestDb};

use super::flags;

pub const YEAR: i32 = 2025;

pub async fn sandbox(leads: usize, contacts: usize) -> KommoSandbox {
    KommoSandbox::start(KommoOptions {
        seed: 6,
        leads,
        contacts,
        year: Some(YEAR),
        ..KommoOptions::default()
    })
    .await
    .expect("sandbox starts")
}

pub fn settings() -> RefreshSettings {
    RefreshSettings {
        // Small pages, so a small account spans several.
        page_limit: 40,
        ..RefreshSettings::default()
    }
}

/// A fast client of the sandbox, as the worker and the processor use.
pub fn kommo_client(kommo: &KommoSandbox) -> KommoClient {
    KommoClient::with_token(
        &kommo.base_url(),
        Redacted::new(kommo.token()),
        KommoClientOptions {
            rate_per_second: 1000,
            timeout: Duration::from_secs(5),
            max_retries: 1,
            retry_min_delay: Duration::from_millis(5),
            retry_max_delay: Duration::from_millis(20),
            ids_per_request: 50,
        },
    )
    .expect("kommo client")
}

pub fn worker(
    db: &TestDb,
    kommo: &KommoSandbox,
    queue: Arc<MemoryQueue>,
    settings: RefreshSettings,
) -> Worker {
    Worker {
        pool: db.pool(),
        kommo: kommo_client(kommo),
        queue,
        flags: flags(db),
        alerter: None,
        settings,
    }
}

pub async fn live_db() -> TestDb {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    db
}

/// Created in `year` (UTC).
pub fn created_in(l: &SandboxLead, year: i32) -> bool {
    let start = |y: i32| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).unwrap().timestamp();
    l.created_at >= start(year) && l.created_at < start(year + 1)
}

pub fn in_year(l: &SandboxLead) -> bool {
    created_in(l, YEAR)
}
