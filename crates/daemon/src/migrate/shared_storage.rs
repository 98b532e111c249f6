//! Storage every host sees at the same path (NFS, a cluster file system),
//! named by each hulld's operator (`hulld --shared-storage DIR`). A
//! container's bind mounts move with it to another host only when each
//! lies under such a directory on both hosts: its files stay where they
//! are, and its VM's view of them (open files, inodes) moves by name
//! (`vmm::devices::virtio::fs`). A destination takes a bind only under its
//! own list, so a peer host cannot have it share a directory its operator
//! did not name.

use std::path::{Component, Path, PathBuf};

use runtime::bind::BindMount;

/// The directories named, each resolved (it must exist).
pub fn resolve(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|dir| {
            let resolved =
                std::fs::canonicalize(dir).map_err(|e| anyhow::anyhow!("--shared-storage {}: {e}", dir.display()))?;
            anyhow::ensure!(resolved.is_dir(), "--shared-storage {}: not a directory", dir.display());
            Ok(resolved)
        })
        .collect()
}

/// Why `binds` cannot move between hosts with `storage` named shared
/// here, if one cannot: each must be an absolute path with no `.` or `..`
/// and no symbolic link in it, under one of `storage`.
pub fn refuse(binds: &[BindMount], storage: &[PathBuf]) -> Option<String> {
    binds.iter().find(|bind| !on_shared(&bind.source, storage)).map(|bind| {
        format!(
            "bind mount {} is not on storage this host shares with others: a container's bind mounts move \
             between hosts only from under a directory every host sees at the same path, named on both with \
             hulld --shared-storage DIR",
            bind.source.display()
        )
    })
}

/// Whether `path` is an absolute path with no `.` or `..` and no symbolic
/// link in it, under one of `storage`.
pub fn on_shared(path: &Path, storage: &[PathBuf]) -> bool {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let resolved = plain && std::fs::canonicalize(path).is_ok_and(|real| real == path);
    resolved && storage.iter().any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &Path) -> BindMount {
        BindMount {
            source: source.to_path_buf(),
            target: "/data".into(),
            read_only: false,
        }
    }

    #[test]
    fn only_plain_paths_under_shared_storage_move() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let storage = root.join("nfs");
        std::fs::create_dir_all(storage.join("app")).unwrap();
        std::fs::create_dir_all(root.join("local")).unwrap();
        std::os::unix::fs::symlink(root.join("local"), storage.join("escape")).unwrap();
        let storage = resolve(&[storage]).unwrap();
        let nfs = &storage[0];
        assert_eq!(refuse(&[bind(&nfs.join("app"))], &storage), None);
        assert_eq!(refuse(&[], &[]), None);
        for outside in [
            root.join("local"),
            nfs.join("app/../../local"),
            nfs.join("escape"),
            nfs.join("missing"),
            PathBuf::from("relative/app"),
        ] {
            let refused = refuse(&[bind(&nfs.join("app")), bind(&outside)], &storage);
            assert!(
                refused.as_deref().is_some_and(|r| r.contains("--shared-storage")),
                "{} was let through",
                outside.display()
            );
        }
        // Nothing named shared: no bind moves.
        assert!(refuse(&[bind(&nfs.join("app"))], &[]).is_some());
        assert!(resolve(&[root.join("no-such-dir")]).is_err());
    }
}
