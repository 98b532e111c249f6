//! Boots the emulated test host for real (QEMU TCG; needs no KVM) and checks
//! what comes back: output, exit status, writable shares, time limits, errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmhost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmhost"))
        .args(args)
        .output()
        .expect("vmhost runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmhost-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run directories (`vmhost-run-PID-N`) whose vmhost is gone: another
/// vmhost running beside the tests (a benchmark, a user's) keeps its own.
fn leftovers() -> Vec<String> {
    let dirs = std::fs::read_dir(std::env::temp_dir()).unwrap();
    dirs.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let pid = n.strip_prefix("vmhost-run-").and_then(|rest| rest.split('-').next());
            pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

#[test]
#[ignore = "boots the emulated test host; run through scripts/test"]
fn command_runs_as_root_with_env_cwd_kvm_modules_and_its_status_comes_back() {
    let share = scratch("share");
    let script = format!(
        "echo to-stdout; echo to-stderr >&2; echo \"mark=$VMHOST_TEST_MARK\"; echo \"cwd=$(pwd)\"; id -u; \
         grep -qw svm /proc/cpuinfo && test -c /dev/kvm && echo kvm-hardware; \
         modprobe bridge && modprobe tun && modprobe vhost_vsock && echo modprobe-ok; \
         echo kept > {share}/from-inside; touch /etc/vmhost-overlay-probe; exit 42",
        share = share.display()
    );
    let share_arg = share.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_vmhost"))
        .args(["--memory", "2G", "--rw", &share_arg, "--", "sh", "-c", &script])
        .env("VMHOST_TEST_MARK", "it's \"quoted\" $x")
        .current_dir("/usr/share")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(42),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    for expected in [
        "to-stdout",
        "to-stderr",
        "mark=it's \"quoted\" $x",
        "cwd=/usr/share",
        "kvm-hardware",
        "modprobe-ok",
    ] {
        assert!(
            stdout.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stdout.lines().any(|l| l == "0"), "not root:\n{stdout}");
    assert_eq!(std::fs::read_to_string(share.join("from-inside")).unwrap(), "kept\n");
    assert!(
        !Path::new("/etc/vmhost-overlay-probe").exists(),
        "a write outside --rw reached the host"
    );
    assert!(leftovers().is_empty(), "run directories left behind: {:?}", leftovers());
    std::fs::remove_dir_all(&share).unwrap();
}

#[test]
#[ignore = "boots the emulated test host; run through scripts/test"]
fn time_limit_kills_the_host_and_shows_the_console() {
    let out = vmhost(&["--time-limit", "3", "--", "sleep", "600"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("time limit of 3s was hit"), "{stderr}");
    assert!(stderr.contains("Last console lines"), "{stderr}");
    assert!(leftovers().is_empty(), "run directories left behind: {:?}", leftovers());
}

#[test]
fn too_much_memory_is_refused_before_booting() {
    let out = vmhost(&["--memory", "100000G", "--", "true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("not enough memory"), "{stderr}");
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    // A PATH with apt-cache (to resolve the cached kernel) but no QEMU.
    let bin = scratch("path");
    let apt_cache = Command::new("sh")
        .args(["-c", "command -v apt-cache"])
        .output()
        .unwrap();
    std::os::unix::fs::symlink(text(&apt_cache.stdout).trim(), bin.join("apt-cache")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmhost"))
        .args(["--", "true"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("apt-get install qemu-system-x86"), "{stderr}");
    std::fs::remove_dir_all(&bin).unwrap();
}

#[test]
fn a_command_is_required() {
    let out = vmhost(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no command given"));
}

#[test]
#[ignore = "rebuilds the shared test-host initramfs; run through scripts/test"]
fn a_truncated_initramfs_is_detected_and_rebuilt() {
    let prepared = vmhost(&["prepare"]);
    assert!(prepared.status.success(), "{}", text(&prepared.stderr));
    let initramfs = text(&prepared.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("initramfs ").map(PathBuf::from))
        .unwrap();
    let full = std::fs::metadata(&initramfs).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&initramfs).unwrap();
    file.set_len(full / 2).unwrap();
    let again = vmhost(&["prepare"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::metadata(&initramfs).unwrap().len(), full);
}
