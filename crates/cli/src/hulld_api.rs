//! Requests to hulld's API on its unix socket (`--host`, else
//! `DOCKER_HOST` when it names a unix socket, else /run/hull/docker.sock),
//! for the commands the docker CLI has no verb for.

use std::io::{BufRead, BufReader, Read, Write};
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
    let mut body = String::new();
    post_lines(host, target, &mut |line| {
        body.push_str(line);
        body.push('\n');
    })?;
    Ok(body.trim().to_string())
}

/// POSTs to `target` and gives each line of a 2xx answer's body to `line`
/// as it comes (a streamed answer: a migration's progress); else hulld's
/// message as the error. HTTP/1.0, so the body comes unchunked, to the
/// connection's end.
pub fn post_lines(host: Option<String>, target: &str, line: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let path = socket(host);
    let mut conn = UnixStream::connect(&path).with_context(|| format!("connecting to hulld at {}", path.display()))?;
    let request = format!("POST {target} HTTP/1.0\r\nHost: hull\r\nContent-Length: 0\r\n\r\n");
    conn.write_all(request.as_bytes())
        .context("sending the request to hulld")?;
    let mut answer = BufReader::new(conn);
    let mut status_line = String::new();
    answer.read_line(&mut status_line).context("reading hulld's answer")?;
    let status = status_line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut header = String::new();
        if answer.read_line(&mut header).context("reading hulld's answer")? == 0 || header.trim().is_empty() {
            break;
        }
    }
    if !status.starts_with('2') {
        let mut body = String::new();
        answer.read_to_string(&mut body).context("reading hulld's answer")?;
        let body = body.trim();
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.to_string());
        bail!("{message}")
    }
    for text in answer.lines() {
        let text = text.context("reading hulld's answer")?;
        if !text.trim().is_empty() {
            line(text.trim());
        }
    }
    Ok(())
}
