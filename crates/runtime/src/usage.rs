//! Which containers use which image: each running container's directory
//! records its image ID and its owner's PID, so `rmi` can refuse to remove
//! an image in use (and ignore the leftovers of a killed `hull`).

use std::collections::HashMap;
use std::path::Path;

use image::digest::Digest;

/// Notes in a container's run directory that it uses image `id`.
pub fn record(run_dir: &Path, id: &Digest) -> std::io::Result<()> {
    image::store::write_atomic(
        &run_dir.join("image"),
        format!("{id}\n{}\n", std::process::id()).as_bytes(),
    )
}

/// Image ID → the live containers using it.
pub fn images_in_use() -> HashMap<Digest, Vec<String>> {
    let mut users: HashMap<Digest, Vec<String>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(crate::data_dir().join("run")) else {
        return users;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("image")) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(id), Some(pid)) = (lines.next(), lines.next()) else {
            continue;
        };
        let (Ok(id), Ok(pid)) = (Digest::parse(id), pid.parse::<u32>()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            users
                .entry(id)
                .or_default()
                .push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    users
}
