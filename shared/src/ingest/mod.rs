//! Ingestion into the ERP: the webhook pipeline and manual bookings.
//!
//! [`pipeline`] takes a batch of queued Kommo deliveries, records them in the
//! delivery log ([`events`]), reads their leads and contacts from Kommo once
//! per batch ([`fetch`]) and applies each delivery in one transaction
//! ([`delivery`], [`apply`]). [`manual`] creates bookings typed by staff.
//! Both write the ERP tables through [`crate::erp`] and enqueue the Zoho
//! work the change causes ([`zoho_work`]).

pub mod apply;
pub mod delivery;
pub mod events;
pub mod fetch;
pub mod manual;
pub mod outage;
pub mod pipeline;
pub mod replay;
pub mod zoho_work;

pub use apply::{
    apply_lead, delete_lead, lock_leads, refresh_contact, source_payload_id, LeadOutcome,
};
pub use events::{
    lock_event, mark_failed, mark_processed, record_received, record_unprocessable, EventRow,
};
pub use fetch::{FetchError, Fetched, FetchedLead};
pub use pipeline::{BatchOutcome, BatchReport, Pipeline, QueuedMessage};
pub use zoho_work::{enqueue_zoho_work, Enqueued};

// The client types ingest takes, under their old path.
pub use crate::erp::clients::{find_client, upsert_client, ClientInput, ClientOutcome, MatchedBy};
/// The mapping's phone normaliser, so ingest and full refresh agree on matching.
pub use crate::kommo::mapping::normalize_phone;

use crate::platform::db::DbError;

/// Why a delivery could not be applied; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Mapping(String),
}

impl IngestError {
    /// Whether every delivery would fail the same way for now: the database
    /// is unreachable, or Kommo refuses the whole account.
    pub fn is_systemic(&self) -> bool {
        match self {
            IngestError::Db(e) => e.is_unavailable(),
            IngestError::Fetch(e) => e.systemic,
            IngestError::Mapping(_) => false,
        }
    }
}
