//! Bind mounts: host directories and files a container sees at a path of
//! its own (`-v /host/dir:/path[:ro]`, `--mount type=bind,...`), shared into its VM
//! through virtio-fs (`vmm::devices::virtio::fs`): writes land on the host
//! at once, with the container's uid and gid, as with Docker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The most bind mounts one container has (the VM's shared directories).
pub const MAX_PER_CONTAINER: usize = vmm::devices::virtio::fs::MAX_SHARES;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// An absolute host path, symlinks resolved when the container was made.
    pub source: PathBuf,
    /// An absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What a missing source gets, as in Docker: `-v` makes the directory,
/// `--mount` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSource {
    Create,
    Refuse,
}

impl BindMount {
    /// A bind mount of host path `source` (absolute) on `target`; `mode` is
    /// `-v`'s third field: `ro`, `rw`, SELinux's `z`/`Z` (no meaning
    /// in a VM) and `private`/`rprivate` propagation, comma-separated.
    pub fn parse(source: &str, target: &str, mode: &str) -> Result<BindMount, String> {
        if !source.starts_with('/') {
            return Err(format!("invalid bind source '{source}': a host path must be absolute"));
        }
        let mut read_only = false;
        for option in mode.split(',').filter(|o| !o.is_empty()) {
            match option {
                "ro" => read_only = true,
                "rw" | "z" | "Z" | "private" | "rprivate" => {}
                "shared" | "rshared" | "slave" | "rslave" => {
                    return Err(format!(
                        "bind propagation '{option}' is not supported: the container is in a VM, which no host mount event reaches"
                    ))
                }
                other => return Err(format!("invalid mode: {other}")),
            }
        }
        Ok(BindMount {
            source: PathBuf::from(source),
            target: crate::volume::check_target(target)?,
            read_only,
        })
    }

    /// Checks the source on the host (made first, if `missing` says so) and
    /// records it with its symlinks resolved.
    pub fn resolve(mut self, missing: MissingSource) -> Result<BindMount, String> {
        let shown = self.source.display().to_string();
        if missing == MissingSource::Create && !self.source.exists() {
            std::fs::create_dir_all(&self.source)
                .map_err(|e| format!("error while creating mount source path '{shown}': {e}"))?;
        }
        let resolved = self.source.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("invalid mount config for type \"bind\": bind source path does not exist: {shown}")
            }
            _ => format!("invalid mount config for type \"bind\": {shown}: {e}"),
        })?;
        let kind = std::fs::metadata(&resolved)
            .map_err(|e| format!("invalid mount config for type \"bind\": {shown}: {e}"))?
            .file_type();
        if !kind.is_dir() && !kind.is_file() {
            return Err(format!(
                "bind-mounting {shown} is not supported: hull shares directories and regular files with a container's VM, not sockets, devices or FIFOs, which would not reach across it"
            ));
        }
        if kind.is_file() && resolved.file_name().and_then(|n| n.to_str()).is_none() {
            return Err(format!("bind-mounting {shown}: a file's name must be UTF-8"));
        }
        self.source = resolved;
        Ok(self)
    }
}

/// Checks a container's bind mounts against each other and its volumes'
/// mount points.
pub fn check(binds: &[BindMount], volume_targets: &[&str]) -> Result<(), String> {
    if binds.len() > MAX_PER_CONTAINER {
        return Err(format!(
            "{} bind mounts given: a container has at most {MAX_PER_CONTAINER}",
            binds.len()
        ));
    }
    for (i, bind) in binds.iter().enumerate() {
        if binds[..i].iter().any(|o| o.target == bind.target) || volume_targets.contains(&bind.target.as_str()) {
            return Err(format!("duplicate mount point: {}", bind.target));
        }
    }
    Ok(())
}

/// A directory a container's VM shares: a bind mount's, or a shared
/// volume's, which starts with the image's files at its mount point when
/// it is empty, as Docker's volumes do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub mount: BindMount,
    pub fill_if_empty: bool,
    /// Its files are this host's alone (a volume of hull's own): they go
    /// with the VM when it moves to another host.
    pub travels: bool,
}

/// The numbers (as the VM's virtio-fs numbers them: `/0` is 0) of the
/// shares whose files travel with the VM to another host.
pub fn travelling(shares: &[Share]) -> Vec<u8> {
    (0..)
        .zip(shares)
        .filter(|(_, share)| share.travels)
        .map(|(index, _)| index)
        .collect()
}

impl Share {
    /// The shared file's name when one file is shared (its directory is
    /// served with the rest hidden): the guest binds that name.
    pub fn file_name(&self) -> Option<String> {
        match self.mount.source.is_file() {
            true => self.mount.source.file_name()?.to_str().map(str::to_owned),
            false => None,
        }
    }

    /// hull-vmm's `--share` argument.
    pub fn vmm_arg(&self) -> std::ffi::OsString {
        let mut arg = self.mount.source.as_os_str().to_owned();
        if self.mount.read_only {
            arg.push(":ro");
        }
        arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_docker_s() {
        let bind = BindMount::parse("/srv/app", "/app/", "ro,Z").unwrap();
        assert_eq!(
            bind,
            BindMount {
                source: "/srv/app".into(),
                target: "/app".into(),
                read_only: true
            }
        );
        assert!(!BindMount::parse("/srv", "/app", "rw,rprivate").unwrap().read_only);
        assert!(BindMount::parse("/srv", "/app", "rshared")
            .unwrap_err()
            .contains("not supported"));
        assert!(BindMount::parse("/srv", "/app", "bogus")
            .unwrap_err()
            .contains("invalid mode"));
        assert!(BindMount::parse("srv", "/app", "").unwrap_err().contains("absolute"));
        assert!(BindMount::parse("/srv", "app", "").is_err());
        assert!(BindMount::parse("/srv", "/", "").is_err());
    }

    #[test]
    fn missing_sources_are_made_or_refused_and_only_files_and_dirs_shared() {
        let dir = std::env::temp_dir().join(format!("hull-bind-test-{}", std::process::id()));
        let missing = dir.join("made");
        let bind = BindMount::parse(missing.to_str().unwrap(), "/data", "").unwrap();
        let err = bind.clone().resolve(MissingSource::Refuse).unwrap_err();
        assert!(err.contains("bind source path does not exist"), "{err}");
        assert!(!missing.exists());
        let made = bind.resolve(MissingSource::Create).unwrap();
        assert!(made.source.is_dir());
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let share = |source: &std::path::Path| Share {
            travels: false,
            mount: BindMount::parse(source.to_str().unwrap(), "/f", "")
                .unwrap()
                .resolve(MissingSource::Refuse)
                .unwrap(),
            fill_if_empty: false,
        };
        assert_eq!(share(&file).file_name().as_deref(), Some("file"));
        assert_eq!(share(&dir).file_name(), None);
        let socket = dir.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = BindMount::parse(socket.to_str().unwrap(), "/s", "")
            .unwrap()
            .resolve(MissingSource::Refuse)
            .unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mount_points_are_not_shared() {
        let bind = |target: &str| BindMount {
            source: "/srv".into(),
            target: target.into(),
            read_only: false,
        };
        assert!(check(&[bind("/a"), bind("/b")], &["/c"]).is_ok());
        assert!(check(&[bind("/a"), bind("/a")], &[]).is_err());
        assert!(check(&[bind("/a")], &["/a"]).is_err());
    }
}
