//! Shared core of the Kommo → ERP → Zoho integration.
//!
//! Every Lambda in `functions/` is a thin adapter over this crate: it builds a
//! [`platform::context`] once per cold start and calls domain code from here, so the
//! logic can be tested against a real Postgres without AWS.

pub mod erp;
pub mod ingest;
pub mod kommo;
pub mod outbox;
pub mod platform;
pub mod refresh;
pub mod retention;
pub mod zoho;
