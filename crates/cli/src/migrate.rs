//! `hull migrate CONTAINER [--to HOST]`: moves a container hulld runs to
//! a new VMM, or to another host's hulld, while it runs (live migration), through hulld's API, printing each
//! pre-copy round as it ends and then what the move took;
//! `hull migrate --cancel CONTAINER` gives up the move under way.

use crate::hulld_api::{escape, post, post_lines};

pub fn run(
    container: &str,
    to: Option<&str>,
    downtime_ms: u32,
    compress: bool,
    host: Option<String>,
) -> anyhow::Result<bool> {
    let mut target = format!(
        "/containers/{}/migrate?downtime={downtime_ms}&compress={}&progress=1",
        escape(container),
        u8::from(compress)
    );
    if let Some(to) = to {
        target.push_str(&format!("&to={}", escape(to)));
    }
    let mut report = None;
    let mut failure = None;
    post_lines(host, &target, &mut |line| {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let field = |v: &serde_json::Value, name: &str| v[name].as_u64().unwrap_or(0);
        if let Some(p) = value.get("Progress") {
            eprintln!(
                "round {}: {:.1} MiB sent, {:.0} MB/s of memory; {} pages dirtied ({:.1} MB/s); downtime now {} ms{}",
                field(p, "Round"),
                mib(field(p, "BytesSent")),
                field(p, "Bandwidth") as f64 / 1e6,
                field(p, "DirtyPages"),
                field(p, "DirtyRate") as f64 / 1e6,
                field(p, "ExpectedDowntimeMs"),
                match field(p, "Throttle") {
                    0 => String::new(),
                    t => format!("; vCPUs throttled {t}%"),
                }
            );
        } else if let Some(r) = value.get("Report") {
            report = Some(r.clone());
        } else if let Some(e) = value.get("error") {
            failure = Some(e.as_str().unwrap_or("the migration failed").to_string());
        }
    })?;
    if let Some(message) = failure {
        anyhow::bail!("{message}");
    }
    let report = report.ok_or_else(|| anyhow::anyhow!("hulld's answer ended without the migration's outcome"))?;
    let field = |name: &str| report[name].as_u64().unwrap_or(0);
    let whither = match report["To"].as_str() {
        Some(to) => format!(" to {to}"),
        None => String::new(),
    };
    println!(
        "{container}: moved{whither} in {} ms ({} rounds, {:.1} MiB sent); downtime {} ms",
        field("TotalMs"),
        field("Rounds"),
        mib(field("BytesSent")),
        field("DowntimeMs")
    );
    Ok(true)
}

/// `hull migrate --cancel CONTAINER`.
pub fn cancel(container: &str, host: Option<String>) -> anyhow::Result<bool> {
    post(host, &format!("/containers/{}/migrate/cancel", escape(container)))?;
    println!("{container}: migration cancelled; it runs on where it was");
    Ok(true)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
