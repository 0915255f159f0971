//! The ERP tables Kommo feeds: `clients`, `bookings`, `sales_leads`, `vehicles`.
//!
//! Every write to them lives here, whoever makes it: webhook ingest and
//! manual bookings write one row at a time, the full refresh's swap writes
//! one run's staging rows at once, and the outbox's settle writes back Zoho
//! ids. Each table's per-row and set-based statements sit side by side in its
//! module and share their column lists, so the two paths cannot drift apart
//! again (they once matched clients by different rules).

pub mod bookings;
pub mod clients;
pub mod sales_leads;
pub mod vehicles;

pub use bookings::{ClientRef, NewBooking};
pub use clients::{ClientInput, ClientOutcome, MatchedBy};
