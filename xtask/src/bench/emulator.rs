//! A minimal Lambda Runtime API: just enough to see when a function binary
//! is ready for its first event.
//!
//! The runtime client calls `GET /2018-06-01/runtime/invocation/next` as soon
//! as the function's init code has finished, so the moment that request
//! arrives is the end of the cold start. The request is then held open, as
//! Lambda does while no event is waiting, until the benchmark stops the
//! process. An init failure (`POST …/runtime/init/error`) is reported too.
//!
//! Functions that read a secret at init get it from the same server, which
//! answers Secrets Manager's `GetSecretValue` at once: the cold-start target
//! excludes the network, and a local answer costs a loopback round trip.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

#[derive(Debug)]
pub enum RuntimeCall {
    /// The function asked for its next event at this instant.
    Next(Instant),
    /// The function reported an init error with this body.
    InitError(String),
}

pub struct Emulator {
    pub addr: SocketAddr,
    pub calls: mpsc::UnboundedReceiver<RuntimeCall>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Emulator {
    /// `secrets` maps secret ids to the `SecretString` to answer.
    pub async fn start(secrets: HashMap<String, String>) -> Result<Self> {
        let secrets = Arc::new(secrets);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the runtime emulator")?;
        let addr = listener.local_addr()?;
        let (tx, calls) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let secrets = secrets.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, tx, &secrets).await;
                });
            }
        });
        Ok(Emulator { addr, calls, task })
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// The value for `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
    pub fn secrets_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forgets calls left over from an earlier process.
    pub fn clear(&mut self) {
        while self.calls.try_recv().is_ok() {}
    }
}

async fn serve(
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<RuntimeCall>,
    secrets: &HashMap<String, String>,
) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let Some(head_end) = read_head(&mut stream, &mut buf).await? else {
        return Ok(());
    };
    let arrived = Instant::now();
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();

    if method == "GET" && path.ends_with("/runtime/invocation/next") {
        let _ = tx.send(RuntimeCall::Next(arrived));
        // Held open until the process goes away: no event is ever served.
        let mut chunk = [0u8; 1024];
        while stream.read(&mut chunk).await.unwrap_or(0) > 0 {}
        return Ok(());
    }

    let body = read_body(&mut stream, &head, buf[head_end..].to_vec()).await?;
    let target = header(&head, "x-amz-target").unwrap_or_default();
    if method == "POST" && target == "secretsmanager.GetSecretValue" {
        stream
            .write_all(secret_value_reply(secrets, &body).as_bytes())
            .await?;
    } else if method == "POST" && path.ends_with("/runtime/init/error") {
        let _ = tx.send(RuntimeCall::InitError(
            String::from_utf8_lossy(&body).into_owned(),
        ));
        stream
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
    } else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
    }
    Ok(())
}

/// Reads into `buf` up to the end of the request head; returns where the
/// body starts, or `None` when the client closed first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<usize>> {
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > 64 * 1024 {
            anyhow::bail!("request head too large");
        }
    }
}

/// The body, from what came with the head (`body`) and the rest of
/// `content-length` (capped at 1 MiB).
async fn read_body(stream: &mut TcpStream, head: &str, mut body: Vec<u8>) -> Result<Vec<u8>> {
    let length = header(head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1024 * 1024);
    let mut chunk = [0u8; 1024];
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// Secrets Manager's answer to `GetSecretValue` with the request `body`.
fn secret_value_reply(secrets: &HashMap<String, String>, body: &[u8]) -> String {
    let id = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["SecretId"].as_str().map(str::to_string))
        .unwrap_or_default();
    let (status, answer) = match secrets.get(&id) {
        Some(text) => (
            "200 OK",
            serde_json::json!({
                "ARN": format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:{id}-AbCdEf"),
                "Name": id,
                "VersionId": "00000000-0000-4000-8000-000000000001",
                "SecretString": text,
                "VersionStages": ["AWSCURRENT"],
                "CreatedDate": 1_795_000_000.0,
            }),
        ),
        None => (
            "400 Bad Request",
            serde_json::json!({
                "__type": "ResourceNotFoundException",
                "message": "Secrets Manager can't find the specified secret.",
            }),
        ),
    };
    let text = answer.to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn next_is_reported_and_held_open_and_init_errors_are_answered() {
        let mut emu = Emulator::start(HashMap::new()).await.unwrap();
        let mut s = TcpStream::connect(emu.addr).await.unwrap();
        s.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        match emu.calls.recv().await.unwrap() {
            RuntimeCall::Next(_) => {}
            other => panic!("expected next, got {other:?}"),
        }
        // Nothing is answered while the function waits for an event.
        let mut b = [0u8; 16];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut b)).await;
        assert!(read.is_err(), "the next-event request must stay open");

        let mut s = TcpStream::connect(emu.addr).await.unwrap();
        s.write_all(
            b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\ncontent-length: 5\r\n\r\noops!",
        )
        .await
        .unwrap();
        match emu.calls.recv().await.unwrap() {
            RuntimeCall::InitError(body) => assert_eq!(body, "oops!"),
            other => panic!("expected an init error, got {other:?}"),
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    }

    #[tokio::test]
    async fn the_sdk_reads_secrets_from_it() {
        let mut m = HashMap::new();
        m.insert("bench/x".to_string(), r#"{"a":1}"#.to_string());
        let emu = Emulator::start(m).await.unwrap();
        let sdk = shared::platform::aws::config_loader()
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(emu.secrets_endpoint())
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .load()
            .await;
        let secrets =
            shared::platform::secrets::Secrets::new(&sdk, std::time::Duration::from_secs(60))
                .await
                .unwrap();
        let got = secrets.get_string("bench/x").await.unwrap();
        assert_eq!(got.expose(), r#"{"a":1}"#);
        assert!(secrets.get_string("bench/missing").await.is_err());
    }
}
