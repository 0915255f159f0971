//! The AWS SDK's one HTTPS client (`shared::platform::aws`) against a local
//! Secrets Manager over TLS: what a deployed function does on every cold
//! start, now on rustls with ring rather than the SDK's default aws-lc stack.
//!
//! The server's certificate names `localhost` and comes from a test CA in
//! `tests/fixtures/tls`. The client trusts the system's roots, as the SDK's
//! default client does; `SSL_CERT_FILE` makes the test CA the system's roots.

use std::sync::{Arc, Mutex};

use shared::platform::secrets::Secrets;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

const SECRET: &str = r#"{"ARN":"arn:aws:secretsmanager:eu-west-1:000000000000:secret:tls-probe","Name":"tls-probe","SecretString":"over-tls","VersionId":"v1","VersionStages":["AWSCURRENT"]}"#;

/// A fake Secrets Manager on TLS: every request gets [`SECRET`]. Returns its
/// port and the `X-Amz-Target` of every request that got past the handshake.
async fn serve() -> (u16, Arc<Mutex<Vec<String>>>) {
    let certs = CertificateDer::pem_file_iter(format!("{FIXTURES}/localhost.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{FIXTURES}/localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let target = read_request(&mut tls).await;
                log.lock().unwrap().push(target);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{SECRET}",
                    SECRET.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// Reads one request (head and body) and returns its `X-Amz-Target`.
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed before a full request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let length: usize = header("content-length:").parse().unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    header("x-amz-target:")
}

/// The SDK config a function loads, pointed at `endpoint`; `retries` off
/// shows the first attempt's error rather than the retries' timeout.
async fn sdk_at(endpoint: String, retries: bool) -> aws_config::SdkConfig {
    let retry = if retries {
        aws_config::retry::RetryConfig::standard()
    } else {
        aws_config::retry::RetryConfig::disabled()
    };
    shared::platform::aws::config_loader()
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .retry_config(retry)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}

// One test, so SSL_CERT_FILE is set before any thread reads the environment
// and before the client loads the roots (once per process).
#[tokio::test]
async fn the_sdk_reads_a_secret_over_https_and_checks_the_name() {
    std::env::set_var("SSL_CERT_FILE", format!("{FIXTURES}/ca.pem"));
    let (port, seen) = serve().await;

    let sdk = sdk_at(format!("https://localhost:{port}"), true).await;
    let secrets = Secrets::new(&sdk, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let value = secrets.get_string("tls-probe").await.unwrap();
    assert_eq!(value.expose(), "over-tls");
    assert_eq!(
        *seen.lock().unwrap(),
        ["secretsmanager.getsecretvalue"],
        "one GetSecretValue, over TLS"
    );

    // The same server under a name its certificate does not carry: the
    // handshake fails, and no request is sent.
    seen.lock().unwrap().clear();
    let sdk = sdk_at(format!("https://127.0.0.1:{port}"), false).await;
    let err = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id("tls-probe")
        .send()
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(
        chain.contains("certificate not valid for name"),
        "expected rustls to refuse the name, got: {chain}"
    );
    assert!(seen.lock().unwrap().is_empty(), "a request got through");
}
