//! `hull migrate CONTAINER`: moves a container hulld runs to a new VMM
//! while it runs (live migration), through hulld's API, and reports what
//! the move took.

use crate::hulld_api::{escape, post};

pub fn run(container: &str, to: Option<&str>, downtime_ms: u32, host: Option<String>) -> anyhow::Result<bool> {
    let mut target = format!("/containers/{}/migrate?downtime={downtime_ms}", escape(container));
    if let Some(to) = to {
        target.push_str(&format!("&to={}", escape(to)));
    }
    let body = post(host, &target)?;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let field = |name: &str| report[name].as_u64().unwrap_or(0);
    println!(
        "{container}: moved in {} ms ({} rounds, {:.1} MiB sent); downtime {} ms",
        field("TotalMs"),
        field("Rounds"),
        field("BytesSent") as f64 / f64::from(1u32 << 20),
        field("DowntimeMs")
    );
    Ok(true)
}
