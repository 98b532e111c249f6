//! Templates shared by the test hullds of one machine (or one test host).
//! A template is named after a hash of everything it was made from (kernel,
//! initramfs, hull-vmm, shape), so one made by an earlier test's hulld is
//! exactly the template a later one would make: each hulld starts with the
//! cached ones linked into its data directory and boots a template only
//! when none matches. It took 20-40 s of every VM test in the emulated test
//! host. Clones map a template's memory `MAP_PRIVATE` and hulld only ever
//! removes a template directory, so hard links are never written through.

use std::path::{Path, PathBuf};

fn cache_dir() -> PathBuf {
    crate::target_dir().join("test-templates")
}

/// Links (or copies) every cached template into `data/templates/`.
pub fn seed(data: &Path) {
    let into = data.join("templates");
    for entry in std::fs::read_dir(cache_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let _ = link_dir(&entry.path(), &into.join(&name));
    }
}

/// Adds the templates `data`'s hulld made to the cache, replacing cached
/// ones of the same shape made from other inputs (an older hull-vmm).
pub fn keep(data: &Path) {
    let cache = cache_dir();
    for entry in std::fs::read_dir(data.join("templates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let complete = entry.path().join("template.json").is_file();
        if name.starts_with('.') || !complete || cache.join(&name).is_dir() {
            continue;
        }
        let staged = cache.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staged);
        if link_dir(&entry.path(), &staged).is_err() || std::fs::rename(&staged, cache.join(&name)).is_err() {
            let _ = std::fs::remove_dir_all(&staged);
            continue;
        }
        // `256m-1c-<hash>`: the shape is all but the last part.
        let shape = name.rsplit_once('-').map_or(name.as_str(), |(shape, _)| shape);
        for old in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
            let old_name = old.file_name().to_string_lossy().into_owned();
            if old_name != name && old_name.rsplit_once('-').is_some_and(|(s, _)| s == shape) {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
    }
}

/// `to` as a directory of links to `from`'s files (copies across file systems).
fn link_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for file in std::fs::read_dir(from)?.flatten() {
        let target = to.join(file.file_name());
        if std::fs::hard_link(file.path(), &target).is_err() {
            std::fs::copy(file.path(), &target)?;
        }
    }
    Ok(())
}
