//! Which containers use which image: each running container's directory
//! records its image ID and its owner's PID, so `rmi` can refuse to remove
//! an image in use (and ignore the leftovers of a killed `hull`).

use std::collections::HashMap;
use std::path::Path;

use image::digest::Digest;

/// Notes in a container's directory that it uses image `id`: while process
/// `owner` lives (`hull run`), or while the directory exists (`None`: a
/// container of hulld, which keeps its image until it is removed).
pub fn record(dir: &Path, id: &Digest, owner: Option<u32>) -> std::io::Result<()> {
    let owner = owner.map(|pid| pid.to_string()).unwrap_or_default();
    image::store::write_atomic(&dir.join("image"), format!("{id}\n{owner}\n").as_bytes())
}

/// Image ID → the containers using it: live `hull run`s and every
/// container hulld keeps (running or not).
pub fn images_in_use() -> HashMap<Digest, Vec<String>> {
    let mut users: HashMap<Digest, Vec<String>> = HashMap::new();
    for parent in [crate::data_dir().join("run"), crate::containers_dir()] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("image")) else {
                continue;
            };
            let mut lines = text.lines();
            let Some(Ok(id)) = lines.next().map(Digest::parse) else {
                continue;
            };
            let alive = match lines.next().unwrap_or_default() {
                "" => true,
                pid => pid
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists()),
            };
            if alive {
                users
                    .entry(id)
                    .or_default()
                    .push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    users
}
