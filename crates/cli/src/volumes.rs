//! `hull volume create|ls|rm`: the named volumes `hull run -v` mounts
//! (the same ones hulld's `docker volume` commands see).

use runtime::volume;

/// Makes a shared volume (a directory), or with `disk` an ext4 disk.
pub fn create(name: &str, disk: bool) -> anyhow::Result<bool> {
    let kind = match disk {
        true => volume::VolumeKind::Disk,
        false => volume::VolumeKind::Shared,
    };
    let (record, _) = volume::create(name, Default::default(), false, kind)?;
    println!("{}", record.name);
    Ok(true)
}

pub fn list() -> anyhow::Result<bool> {
    println!("{:<40} {:<7} {:>12} {:<30}", "NAME", "KIND", "SIZE", "CREATED");
    for record in volume::list()? {
        let size = format!("{:.1}MiB", volume::size_on_disk(&record) as f64 / (1 << 20) as f64);
        let kind = match record.kind {
            volume::VolumeKind::Disk => "disk",
            volume::VolumeKind::Shared => "shared",
        };
        println!("{:<40} {:<7} {:>12} {:<30}", record.name, kind, size, record.created_at);
    }
    Ok(true)
}

/// Removes volumes; a volume a running VM has is refused. (hull's CLI does
/// not read hulld's container records: `docker volume rm` also refuses
/// volumes that stopped containers name.)
pub fn remove(names: &[String]) -> anyhow::Result<bool> {
    Ok(crate::each_named(names, volume::remove))
}
