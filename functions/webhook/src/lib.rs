//! The webhook function: the HTTP side (Kommo receiver and manual bookings)
//! and the SQS processor of buffered Kommo deliveries.
//!
//! The binaries only build an [`http::HttpApp`] or a [`processor::Processor`]
//! once per cold start and hand events to it; everything here can be driven
//! in-process by tests and the benchmark.
//!
//! Dependencies run one way: the router ([`http`]) knows the handlers
//! ([`receiver`], [`manual`]), and the handlers know only
//! `shared::platform::apigw`.

pub mod http;
pub mod manual;
pub mod processor;
pub mod receiver;
pub mod settings;

pub use shared::platform::secrets::SecretSource;
