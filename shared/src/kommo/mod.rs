//! Kommo API v4: client, wire model, webhook deliveries and lead mapping.

pub mod webhook;
