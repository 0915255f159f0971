//! Zoho CRM v8: OAuth token shared through Postgres, contacts upsert, sales orders.
//!
//! - [`TokenManager`]: one access token for every container, refreshed
//!   single-flight under a row lock about 5 minutes before it expires, with a
//!   circuit that stays open at least 10 minutes after Zoho's throttle.
//! - [`ZohoClient`]: per-record results of batch calls, one token replacement
//!   and retry on 401 `INVALID_TOKEN`, and typed errors that say whether a
//!   failure is retryable ([`ErrorClass`]).

mod client;
mod error;
mod token;

pub use client::{
    CallStats, CallStatsSnapshot, LazyZohoClient, RecordResult, ZohoClient, ACTION_EXISTING,
    MAX_RECORDS_PER_CALL,
};
pub use error::{ErrorClass, RecordError, ZohoError};
pub use token::{AccessToken, TokenManager, DEFAULT_TOKEN_ROW};
