//! Data and run directories of a test process's own, for tests that drive
//! `hull` directly (hulld's tests get theirs from [`crate::hulld::Hulld`]):
//! the tests' guest set-up is shared (its `guest.json`), but templates,
//! disks, sockets and VMs are the test's, so a host's own hull — its
//! templates and running containers — is never touched or counted.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct OwnDirs {
    pub data: PathBuf,
    pub run: PathBuf,
}

impl OwnDirs {
    /// Fresh directories under `scratch` (a test binary's
    /// `CARGO_TARGET_TMPDIR`), named `name`: what an earlier run of the same
    /// test binary left there is removed first.
    pub fn new(scratch: &Path, name: &str) -> OwnDirs {
        let root = scratch.join(name);
        let _ = std::fs::remove_dir_all(&root);
        let (data, run) = (root.join("data"), root.join("run"));
        std::fs::create_dir_all(&data).expect("making the test's data directory");
        std::fs::create_dir_all(&run).expect("making the test's run directory");
        std::fs::copy(crate::test_guest_json(), data.join("guest.json")).expect("copying the test guest's guest.json");
        OwnDirs { data, run }
    }

    /// `command` (a `hull`) in these directories.
    pub fn apply<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.env("HULL_DATA_DIR", &self.data).env("HULL_RUN_DIR", &self.run)
    }

    /// The hull-vmm processes of these directories (their command lines
    /// name them): "PID: command line" each.
    pub fn vmm_processes(&self) -> Vec<(u32, String)> {
        let mut found = processes_naming("hull-vmm", &self.data);
        found.extend(processes_naming("hull-vmm", &self.run));
        found.sort();
        found.dedup();
        found
    }
}

/// The processes of `programs` (a pgrep pattern such as `hull-(vmm|shim)`)
/// whose command line names `dir`: (PID, command line) each.
pub fn processes_naming(programs: &str, dir: &Path) -> Vec<(u32, String)> {
    let pattern = format!("{programs} .*{}", dir.display());
    let found = Command::new("pgrep").args(["-f", &pattern]).output();
    let found = found
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    found
        .lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .map(|pid: u32| {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, cmdline.replace('\0', " "))
        })
        .collect()
}
