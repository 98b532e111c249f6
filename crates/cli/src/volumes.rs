//! `hull volume create|ls|rm`: the named volumes `hull run -v` mounts
//! (the same ones hulld's `docker volume` commands see).

use runtime::volume;

pub fn create(name: &str) -> anyhow::Result<bool> {
    let (record, _) = volume::create(name, Default::default(), false)?;
    println!("{}", record.name);
    Ok(true)
}

pub fn list() -> anyhow::Result<bool> {
    println!("{:<40} {:>12} {:<30}", "NAME", "DISK", "CREATED");
    for record in volume::list()? {
        let disk = format!("{:.1}MiB", volume::size_on_disk(&record.name) as f64 / (1 << 20) as f64);
        println!("{:<40} {:>12} {:<30}", record.name, disk, record.created_at);
    }
    Ok(true)
}

/// Removes volumes; a volume a running VM has is refused. (hull's CLI does
/// not read hulld's container records: `docker volume rm` also refuses
/// volumes that stopped containers name.)
pub fn remove(names: &[String]) -> anyhow::Result<bool> {
    Ok(crate::each_named(names, volume::remove))
}
