//! The AWS SDK's transport: one HTTPS client on rustls with ring.
//!
//! The SDK's default features bring their own TLS stack (aws-lc-rs, and with
//! the legacy client hyper 0.14 with rustls 0.21), a second copy of what
//! reqwest and the Postgres connector already link. They are off in
//! `Cargo.toml`, so the SDK has no client of its own: every SDK config is
//! loaded through [`config_loader`], which hands it this one. `deny.toml`
//! keeps a second stack from creeping back.

use aws_smithy_http_client::{
    tls::{self, rustls_provider::CryptoMode},
    Builder,
};

/// The SDK's HTTP client: hyper 1 with rustls on ring, trusting the system's
/// roots as the SDK's default client does. Plain `http://` endpoints (moto)
/// still work.
pub fn https_client() -> aws_sdk_sqs::config::SharedHttpClient {
    Builder::new()
        .tls_provider(tls::Provider::rustls(CryptoMode::Ring))
        .build_https()
}

/// `aws_config::defaults` with the latest behaviour and [`https_client`]:
/// the one way this workspace loads an SDK config.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}

/// The SDK config from the environment (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn load_config() -> aws_config::SdkConfig {
    config_loader().load().await
}
