//! Stateful HTTP fakes of the Kommo v4 and Zoho CRM v8 APIs.
//!
//! Kommo and Zoho cannot be reached from a development machine or from CI,
//! so tests, the dev stack and the benchmarks talk to these instead. They
//! follow the documented behaviour, including its traps (HTTP 204 past the
//! last page, errors as HTTP 200 from Zoho's token endpoint).

pub mod kommo;
pub mod zoho;
