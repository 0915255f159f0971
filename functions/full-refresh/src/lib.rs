//! The full-refresh function: an HTTP API that starts runs and reports their
//! progress, and an SQS worker that carries them out.
//!
//! Both binaries build their dependencies once per cold start and hand each
//! event to [`http::HttpApp`] or [`worker::WorkerApp`]; the domain lives in
//! `shared::refresh`, so tests and the benchmark drive it in-process.

pub mod http;
pub mod worker;

pub use shared::platform::secrets::SecretSource;
