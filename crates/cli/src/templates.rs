//! `hull template create|ls|rm`.

use anyhow::Context;
use runtime::template;

pub fn create(memory_mib: u64, cpus: u8) -> anyhow::Result<bool> {
    vmm::host::require_guest_capable()?;
    let guest = runtime::guest::Guest::current()?;
    let vmm = runtime::sibling_binary("hull-vmm").context("hull-vmm not found beside hull")?;
    vmm::vm::validate_shape(memory_mib, cpus)?;
    let made = template::create(&guest, &vmm, memory_mib, cpus)?;
    println!("{}", made.name);
    Ok(true)
}

pub fn list() -> anyhow::Result<bool> {
    let templates = template::list();
    let width = templates.iter().map(|t| t.name.len()).max().unwrap_or(0).max(28);
    println!(
        "{:<width$} {:>8} {:>5} {:>12} {:<20}",
        "NAME", "MEMORY", "CPUS", "DISK", "KERNEL"
    );
    for t in templates {
        let (memory, cpus, kernel) = match &t.record {
            Some(r) => (
                format!("{}MiB", r.memory_mib),
                r.cpus.to_string(),
                r.kernel
                    .path
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            ),
            // Sent by another host with a container that moved here.
            None if t.name.starts_with("arrived/") => (
                format!("{}MiB", t.memory_size >> 20),
                "-".into(),
                "(from another host)".into(),
            ),
            None => ("?".into(), "?".into(), "(damaged)".into()),
        };
        let disk = format!("{:.1}MiB", t.memory_bytes as f64 / (1 << 20) as f64);
        println!(
            "{:<width$} {:>8} {:>5} {:>12} {:<20}",
            t.name, memory, cpus, disk, kernel
        );
    }
    Ok(true)
}

pub fn remove(names: &[String]) -> anyhow::Result<bool> {
    Ok(crate::each_named(names, template::remove))
}
