//! The outbox drain as tests build it: settings like the deployed defaults
//! but with a short deadline margin, and a drain bound to a Zoho sandbox.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use shared::{
    outbox::Drain,
    platform::{
        config::{OutboxSettings, ZohoSettings},
        flags::FeatureFlags,
        secrets::ZohoSecret,
    },
    zoho::{LazyZohoClient, ZohoClient},
};

use crate::TestDb;

pub fn outbox_settings() -> OutboxSettings {
    OutboxSettings {
        batch_size: 500,
        max_attempts: 5,
        backoff_base: Duration::from_secs(30),
        backoff_cap: Duration::from_secs(3600),
        lease: Duration::from_secs(300),
        zoho_concurrency: 5,
        deadline_margin: Duration::from_secs(1),
        defer: Duration::from_secs(60),
    }
}

/// Contacts matched on `duplicate_check` by upserts; orders on `ERP_Booking_Id`.
pub fn zoho_settings(duplicate_check: &str) -> ZohoSettings {
    ZohoSettings {
        duplicate_check_fields: vec![duplicate_check.into()],
        sales_order_unique_field: "ERP_Booking_Id".into(),
        product_id: Some("5725767000011358006".into()),
        http_timeout: Duration::from_secs(5),
        contact_key_field: None,
        token_refresh_margin: Duration::from_secs(300),
        throttle_circuit: Duration::from_secs(600),
    }
}

/// A drain as one Lambda container has it (own pool, own token cache),
/// talking to the Zoho whose `ZohoSecret` JSON is `secret`; flags are read
/// afresh on every run.
pub fn drain(db: &TestDb, secret: Value, zoho: ZohoSettings) -> Drain {
    drain_with(db, secret, zoho, outbox_settings())
}

/// [`drain`] with outbox settings of the test's own.
pub fn drain_with(db: &TestDb, secret: Value, zoho: ZohoSettings, outbox: OutboxSettings) -> Drain {
    let pool = db.pool();
    let secret: ZohoSecret = serde_json::from_value(secret).expect("a ZohoSecret");
    let client = ZohoClient::new(secret, zoho, pool.clone()).expect("zoho client");
    let flags = Arc::new(FeatureFlags::new(pool.clone(), Duration::ZERO));
    let lazy = LazyZohoClient::ready(Arc::new(client));
    Drain::new(pool, flags, outbox, Arc::new(lazy))
}
