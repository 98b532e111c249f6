//! podman, the no-VM peer, run as its users run it: an image in podman's
//! own store with the overlay driver, and its default network unless the
//! hull side has none. The store sits on a tmpfs of its own (overlay
//! cannot use the test host's overlay root as its lower layers' home).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The image name podman's store holds the benchmark's root filesystem as.
const IMAGE: &str = "localhost/hull-bench/peer:latest";

pub(crate) struct Podman {
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    /// podman's store under `work` (a fresh tmpfs), holding `rootfs` as an
    /// image; `None` where podman is not installed.
    pub(crate) fn with_rootfs(work: &Path, rootfs: &Path) -> Result<Option<Podman>> {
        if !available() {
            return Ok(None);
        }
        load_network_modules();
        let podman = Podman {
            root: work.join("podman-root"),
            runroot: work.join("podman-run"),
        };
        std::fs::create_dir_all(&podman.root)?;
        std::fs::create_dir_all(&podman.runroot)?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4g,mode=0700", "hull-bench-podman"])
            .arg(&podman.root)
            .status()?;
        if !mounted.success() {
            bail!("mounting a tmpfs for podman's store at {}", podman.root.display());
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .output()?;
        if !tar.status.success() {
            bail!("tar of {}: {}", rootfs.display(), String::from_utf8_lossy(&tar.stderr));
        }
        let mut import = podman
            .command()
            .args(["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        import
            .stdin
            .take()
            .context("podman import's input")?
            .write_all(&tar.stdout)?;
        let out = import.wait_with_output()?;
        if !out.status.success() {
            bail!("podman import failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Some(podman))
    }

    /// `podman` with this store's global options (no systemd here).
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args([
                "--storage-driver=overlay",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ]);
        command
    }

    /// `podman run --rm IMAGE ARGS...`, on its default network or none.
    pub(crate) fn run_rm(&self, network: bool, args: &[&str]) -> Command {
        let mut command = self.command();
        command.args(["run", "--rm"]);
        if !network {
            command.arg("--network=none");
        }
        command.arg(IMAGE).args(args);
        command
    }

    /// The image, for `podman run` options of the caller's own.
    pub(crate) fn image(&self) -> &'static str {
        IMAGE
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
    }
}

fn available() -> bool {
    Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// podman's default (CNI) bridge writes iptables rules through nft_compat
/// with these matches; the test host cannot load modules on demand.
fn load_network_modules() {
    let _ = Command::new("modprobe")
        .args([
            "-qa",
            "overlay",
            "nft_compat",
            "xt_comment",
            "xt_conntrack",
            "xt_MASQUERADE",
            "xt_mark",
        ])
        .args([
            "xt_multiport",
            "xt_addrtype",
            "xt_nat",
            "xt_tcpudp",
            "iptable_nat",
            "iptable_filter",
        ])
        .status();
}
