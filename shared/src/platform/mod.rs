//! Platform: what every function needs from AWS and Postgres, and nothing
//! about Kommo, Zoho or the ERP's tables.
//!
//! Settings from the environment, the AWS SDK's HTTPS client, secrets, the
//! database pool, feature flags, staff authentication, SQS, API Gateway
//! plumbing, the Lambda deadline and telemetry live here. Domain modules may depend on this folder; nothing
//! here depends on them.

pub mod apigw;
pub mod auth;
pub mod aws;
pub mod command;
pub mod config;
pub mod context;
pub mod db;
pub mod deadline;
pub mod flags;
pub mod secrets;
pub mod slack;
pub mod sqs;
pub mod telemetry;
pub mod text;
