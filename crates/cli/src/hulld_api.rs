//! Requests to hulld's API on its unix socket (`--host`, else
//! `DOCKER_HOST` when it names a unix socket, else /run/hull/docker.sock),
//! for the commands the docker CLI has no verb for.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// hulld's socket, as the docker CLI would find it.
fn socket(host: Option<String>) -> PathBuf {
    let host = host.or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_default();
    match host.strip_prefix("unix://") {
        Some(path) => path.into(),
        None => "/run/hull/docker.sock".into(),
    }
}

/// A path or query value with everything but unreserved characters escaped.
pub fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// POSTs to `target` (a path with its query, escaped already); the body of
/// a 2xx answer, else hulld's message as the error.
pub fn post(host: Option<String>, target: &str) -> anyhow::Result<String> {
    let path = socket(host);
    let mut conn = UnixStream::connect(&path).with_context(|| format!("connecting to hulld at {}", path.display()))?;
    let request = format!("POST {target} HTTP/1.1\r\nHost: hull\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .context("sending the request to hulld")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).context("reading hulld's answer")?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if status.starts_with('2') {
        return Ok(body.to_string());
    }
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    bail!("{message}")
}
