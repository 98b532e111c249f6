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
    println!(
        "{:<28} {:>8} {:>5} {:>12} {:<20}",
        "NAME", "MEMORY", "CPUS", "DISK", "KERNEL"
    );
    for t in template::list() {
        let (memory, cpus, kernel) = match &t.record {
            Some(r) => (
                format!("{}MiB", r.memory_mib),
                r.cpus.to_string(),
                r.kernel
                    .path
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            ),
            None => ("?".into(), "?".into(), "(damaged)".into()),
        };
        let disk = format!("{:.1}MiB", t.memory_bytes as f64 / (1 << 20) as f64);
        println!("{:<28} {:>8} {:>5} {:>12} {:<20}", t.name, memory, cpus, disk, kernel);
    }
    Ok(true)
}

pub fn remove(names: &[String]) -> anyhow::Result<bool> {
    Ok(crate::each_named(names, template::remove))
}
