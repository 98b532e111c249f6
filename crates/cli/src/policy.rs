//! `hull policy CONTAINER LEVEL`: changes who may reach a container that
//! hulld runs, through hulld's API on its unix socket (`--host`, else
//! `DOCKER_HOST` when it names a unix socket, else /run/hull/docker.sock).

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

/// A query value with everything but unreserved characters escaped.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn set(container: &str, level: &str, host: Option<String>) -> anyhow::Result<bool> {
    level.parse::<runtime::network::Policy>().map_err(anyhow::Error::msg)?;
    let path = socket(host);
    let mut conn = UnixStream::connect(&path).with_context(|| format!("connecting to hulld at {}", path.display()))?;
    let request = format!(
        "POST /containers/{}/policy?level={} HTTP/1.1\r\nHost: hull\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        escape(container),
        escape(level)
    );
    conn.write_all(request.as_bytes())
        .context("sending the request to hulld")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).context("reading hulld's answer")?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        return Ok(true);
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let message = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    bail!("{message}")
}
