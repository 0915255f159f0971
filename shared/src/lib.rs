//! Shared core of the Kommo → ERP → Zoho integration.
//!
//! Every Lambda in `functions/` is a thin adapter over this crate: it builds a
//! [`context`] once per cold start and calls domain code from here, so the
//! logic can be tested against a real Postgres without AWS.

pub mod api;
pub mod auth;
pub mod bookings;
pub mod config;
pub mod context;
pub mod db;
pub mod flags;
pub mod ingest;
pub mod kommo;
pub mod outbox;
pub mod refresh;
pub mod secrets;
pub mod sqs;
pub mod telemetry;
pub mod zoho;
