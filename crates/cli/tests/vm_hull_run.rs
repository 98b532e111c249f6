//! VM tests for `hull run`: real microVMs booting the Debian cloud kernel
//! with hull-agent, a busybox rootfs built here. Assertions are grouped so
//! each boot checks several things (boots are slow inside vmhost).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use testkit::own_dirs::OwnDirs;

const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "id",
    "pwd",
    "env",
    "sleep",
    "head",
    "sha256sum",
    "kill",
    "true",
    "false",
    "hostname",
    "ls",
];

/// A busybox root filesystem in a fresh directory.
fn busybox_rootfs(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("hull-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

/// This test binary's own hull data and run directories: its templates
/// and VMs, never a host's.
fn dirs() -> &'static OwnDirs {
    static DIRS: OnceLock<OwnDirs> = OnceLock::new();
    DIRS.get_or_init(|| OwnDirs::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "vm_hull_run"))
}

fn hull(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hull"));
    dirs().apply(&mut command).args(args);
    command
}

fn run(rootfs: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let rootfs = rootfs.display().to_string();
    let mut args = vec!["run", "--rootfs", &rootfs];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    hull(&args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    text(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn run_dirs() -> usize {
    std::fs::read_dir(dirs().data.join("run"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn vmm_processes() -> usize {
    dirs().vmm_processes().len()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn output_status_env_cwd_user_and_streams() {
    let root = busybox_rootfs("basics");
    let out = run(
        &root,
        &["-e", "GREETING=hello there", "-w", "/work/dir"],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id; echo to-stderr >&2; echo \"path=$PATH\"; exit 42",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(42),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout,
        "hello there\n/work/dir\nuid=0 gid=0 groups=0\npath=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    assert_eq!(text(&out.stderr), "to-stderr\n");

    let out = run(&root, &["-u", "1000:1001"], &["id"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "uid=1000 gid=1001 groups=1001\n".to_string())
    );

    let out = run(&root, &[], &["false"]);
    assert_eq!(out.status.code(), Some(1));
    // PID 1 of its own namespace cannot be killed from inside it, as under
    // Docker; beside the agent (`--pid host`) it can.
    let out = run(&root, &[], &["sh", "-c", "kill -9 $$; echo survived"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "survived\n".to_string())
    );
    let out = run(&root, &["--pid", "host"], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "death by SIGKILL is 128+9");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_volume_keeps_data_between_runs_and_a_host_directory_is_shared() {
    let root = busybox_rootfs("volume");
    let name = format!("hull-run-test-{}", std::process::id());
    let writable = format!("{name}:/data");
    let out = run(&root, &["-v", &writable], &["sh", "-c", "echo kept > /data/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let read_only = format!("{name}:/in:ro");
    let out = run(&root, &["-v", &read_only], &["cat", "/in/f"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "kept\n".to_string()));
    let listed = hull(&["volume", "ls"]).output().unwrap();
    assert!(text(&listed.stdout).contains(&name), "{}", text(&listed.stdout));
    // A host directory is shared with the VM; a relative one is refused.
    let shared = root.with_extension("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("greeting"), "from the host\n").unwrap();
    let bind = format!("{}:/x", shared.display());
    let out = run(
        &root,
        &["-v", &bind],
        &["sh", "-c", "cat /x/greeting; echo back > /x/reply"],
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "from the host\n".to_string())
    );
    assert_eq!(std::fs::read_to_string(shared.join("reply")).unwrap(), "back\n");
    std::fs::remove_dir_all(&shared).unwrap();
    let out = run(&root, &["-v", "./x:/x"], &["true"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a relative host path");
    assert!(text(&out.stderr).contains("absolute"), "{}", text(&out.stderr));
    let removed = hull(&["volume", "rm", &name]).output().unwrap();
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let listed = hull(&["volume", "ls"]).output().unwrap();
    assert!(!text(&listed.stdout).contains(&name));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn ten_mib_of_stdout_and_of_stdin_arrive_intact() {
    let root = busybox_rootfs("bulk");
    let out = run(
        &root,
        &["--memory", "512M"],
        &[
            "sh",
            "-c",
            "head -c 10485760 /dev/urandom > /tmp/blob; sha256sum /tmp/blob >&2; cat /tmp/blob",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 10 << 20);
    let guest_sum = text(&out.stderr)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sha256_hex(&out.stdout), guest_sum);

    let input: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let rootfs = root.display().to_string();
    let mut child = hull(&["run", "--rootfs", &rootfs, "-i", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).map(|_| input));
    let out = child.wait_with_output().unwrap();
    let input = feeder.join().unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(sha256_hex(&input).as_str())
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn two_at_once_then_ten_in_a_row_leave_nothing_behind() {
    let root = busybox_rootfs("many");
    let rootfs = root.display().to_string();
    let before = (run_dirs(), vmm_processes());
    let spawn = |word: &str| {
        hull(&["run", "--rootfs", &rootfs, "--", "echo", word])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("first"), spawn("second"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (text(&a.stdout), text(&b.stdout)),
        ("first\n".to_string(), "second\n".to_string())
    );
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    for i in 0..10 {
        let out = run(&root, &[], &["echo", &i.to_string()]);
        assert_eq!(text(&out.stdout), format!("{i}\n"), "{}", text(&out.stderr));
    }
    assert_eq!(
        std::fs::read_dir("/proc/self/fd").unwrap().count(),
        fds_before,
        "file descriptors leaked"
    );
    assert_eq!(
        (run_dirs(), vmm_processes()),
        before,
        "VM processes or run directories left behind"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn bad_input_gets_clear_errors() {
    let root = busybox_rootfs("bad");
    let out = run(&root, &[], &["no-such-command", "arg"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{}",
        text(&out.stderr)
    );

    let out = run(Path::new("/nonexistent/rootfs"), &[], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("rootfs /nonexistent/rootfs does not exist"));

    let empty = std::env::temp_dir().join(format!("hull-run-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(&empty, &[], &["true"]);
    assert!(text(&out.stderr).contains("is empty"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&empty).unwrap();

    for memory in ["16M", "100000G"] {
        let out = run(&root, &["--memory", memory], &["true"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains("guest memory must be between"),
            "{}",
            text(&out.stderr)
        );
    }

    // A clone reaches its agent in well under a second: boot cold to be late.
    let out = run(&root, &["--cold-boot", "--boot-timeout", "1"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("did not reach its agent within 1s"),
        "{}",
        text(&out.stderr)
    );

    // A data directory nobody ran `hull setup` in.
    let fresh = std::env::temp_dir().join(format!("hull-run-fresh-{}", std::process::id()));
    let out = hull(&["run", "--rootfs", &root.display().to_string(), "--", "true"])
        .env("HULL_DATA_DIR", &fresh)
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("run `hull setup` first"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_guest_that_panics_is_reported_with_its_console() {
    // A guest whose initramfs has no agent: its init is a shell script that exits.
    let data = std::env::temp_dir().join(format!("hull-data-panic-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let guest: serde_json::Value = serde_json::from_slice(&std::fs::read(testkit::test_guest_json()).unwrap()).unwrap();
    let initramfs = data.join("panic.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "d=$(mktemp -d) && mkdir -p $d/bin && cp /bin/busybox $d/bin/ && printf '#!/bin/busybox sh\\nexit 3\\n' > $d/init \
             && chmod +x $d/init && (cd $d && find . | cpio -o -H newc --quiet) > {} && rm -rf $d",
            initramfs.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let record = serde_json::json!({"kernel_release": guest["kernel_release"], "kernel": guest["kernel"], "initramfs": initramfs});
    std::fs::write(data.join("guest.json"), record.to_string()).unwrap();
    let root = busybox_rootfs("panic");
    let rootfs = root.display().to_string();
    let out = hull(&["run", "--cold-boot", "--rootfs", &rootfs, "--", "true"])
        .env("HULL_DATA_DIR", &data)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("the VM stopped before its agent started"), "{stderr}");
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    // The same guest as a template never reaches its snapshot point.
    let out = hull(&["run", "--rootfs", &rootfs, "--", "true"])
        .env("HULL_DATA_DIR", &data)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("making the template"), "{stderr}");
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(data.join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "lock")
        .collect();
    assert!(leftovers.is_empty(), "a failed template leaves nothing: {leftovers:?}");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn an_init_starts_the_command_and_reaps_its_orphans() {
    let root = busybox_rootfs("init");
    // Docker's docker-init is PID 1, the command its first child; an
    // orphan comes to the init and is reaped (no zombie left).
    let script = "cat /proc/1/cmdline; echo; echo $$; (sleep 0.2 &); sleep 1; cat /proc/[0-9]*/stat";
    let out = run(&root, &["--init"], &["sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("/sbin/docker-init\0--\0sh\0-c\0{script}\0").as_str())
    );
    assert_eq!(lines.next(), Some("2"));
    let states: Vec<&str> = lines
        .map(|stat| stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]))
        .collect();
    assert!(!states.is_empty() && !states.contains(&"Z"), "{stdout}");
    // Its status is the command's; a missing command is 127, as with
    // Docker's init; the command is not PID 1, so it can be killed.
    assert_eq!(run(&root, &["--init"], &["sh", "-c", "exit 3"]).status.code(), Some(3));
    let out = run(&root, &["--init"], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("docker-init: exec no-such-command failed"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&root, &["--init"], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Sends `signal` to a `hull run` once its command printed "ready", and
/// returns hull's exit status. The command runs beside the agent (`--pid
/// host`) or under an init (`--init`): as PID 1 of its own namespace it
/// would ignore the signals it sets no handler for, as under Docker.
fn status_after_signal(root: &Path, how: &[&str], script: &str, signal: i32) -> Option<i32> {
    use std::io::{BufRead, BufReader};
    let rootfs = root.display().to_string();
    let mut args = vec!["run"];
    args.extend_from_slice(how);
    args.extend_from_slice(&["--rootfs", &rootfs, "--", "sh", "-c", script]);
    let mut child = hull(&args).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    child.wait().unwrap().code()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn signals_to_hull_reach_the_container() {
    let root = busybox_rootfs("signals");
    // SIGTERM to hull ends the container's command with it: 128 + 15.
    let started = std::time::Instant::now();
    let status = status_after_signal(&root, &["--pid", "host"], "echo ready; exec sleep 600", libc::SIGTERM);
    assert_eq!(status, Some(143));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(300),
        "the container did not stop"
    );
    // Ctrl-C (SIGINT): 128 + 2.
    assert_eq!(
        status_after_signal(&root, &["--pid", "host"], "echo ready; exec sleep 600", libc::SIGINT),
        Some(130)
    );
    // Under `--init` the init forwards it to the command, which has no
    // handler and ends (as PID 1 itself it would ignore it).
    assert_eq!(
        status_after_signal(&root, &["--init"], "echo ready; exec sleep 600", libc::SIGTERM),
        Some(143)
    );
    std::fs::remove_dir_all(&root).unwrap();
}
