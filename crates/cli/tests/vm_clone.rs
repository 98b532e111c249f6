//! VM tests for instant clone: container VMs restored from a template
//! snapshot must each run correctly, be distinct machines (entropy, clock,
//! hostname, disk), and a damaged template must be detected and remade.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use testkit::own_dirs::OwnDirs;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "head", "od", "date", "hostname", "test", "true", "sleep", "tr",
];

/// One ext4 busybox root filesystem for every test (a file, so runs skip
/// the directory hashing).
fn rootfs() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-clone-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
        let image = dir.with_extension("ext4");
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&dir)
            .arg(&image)
            .arg("16M")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "mkfs.ext4");
        image
    })
}

/// This test binary's own hull data and run directories: its templates
/// and VMs, never a host's.
fn dirs() -> &'static OwnDirs {
    static DIRS: OnceLock<OwnDirs> = OnceLock::new();
    DIRS.get_or_init(|| OwnDirs::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "vm_clone"))
}

fn hull() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hull"));
    dirs().apply(&mut command);
    command
}

/// How long one `hull` run here may take: two minutes (nothing here should
/// take that long when it runs alone).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `command` to completion, but no longer than `DEADLINE`: past that the
/// test fails showing what the VMs were doing, instead of hanging until the
/// suite's time limit.
fn finish(command: &mut Command) -> Output {
    finish_within(command, DEADLINE)
}

fn finish_within(command: &mut Command, deadline: Duration) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let limit = deadline;
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let report = hang_report();
            let _ = child.kill();
            panic!("{command:?} ran past its {limit:?} deadline\n{report}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What a `hull` that hit the deadline leaves to look at: the consoles of
/// the VMs still around and the state of every hull-vmm thread.
fn hang_report() -> String {
    let mut report = String::new();
    for dir in std::fs::read_dir(data_dir().join("run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let console = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(15).collect();
        report += &format!(
            "== {}\n{}\n",
            dir.path().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let threads = Command::new("ps")
        .args(["-eLo", "pid,tid,stat,wchan:24,comm"])
        .output()
        .unwrap();
    report += &text(&threads.stdout)
        .lines()
        .filter(|l| l.contains("hull") || l.contains("vcpu") || l.contains("virtio") || l.starts_with("    PID"))
        .collect::<Vec<_>>()
        .join("\n");
    report
}

fn run_sh(script: &str) -> Output {
    finish(
        hull()
            .arg("run")
            .arg("--rootfs")
            .arg(rootfs())
            .args(["--", "sh", "-c", script]),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok_stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn data_dir() -> PathBuf {
    dirs().data.clone()
}

/// The (one) template for the default VM shape.
fn template_dir() -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(data_dir().join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("256m-1c-"))
        })
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn vmm_processes() -> Vec<(u32, String)> {
    dirs().vmm_processes()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn clones_are_distinct_machines() {
    let made = finish(hull().args(["template", "create"]));
    let name = ok_stdout(&made).trim().to_string();
    assert!(name.starts_with("256m-1c-"), "{name}");
    let listed = ok_stdout(&hull().args(["template", "ls"]).output().unwrap());
    assert!(listed.contains(&name), "{listed}");
    // The template's clock stops with it; clones must not wake in its past.
    std::thread::sleep(Duration::from_secs(5));

    let probe = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid; \
                 hostname; date +%s; test -e /marker && echo leaked || echo clean; echo mine > /marker; cat /marker";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let before = unix_now();
        let stdout = ok_stdout(&run_sh(probe));
        let after = unix_now();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 6, "{stdout}");
        let guest_time: u64 = lines[3].parse().unwrap();
        assert!(
            guest_time + 1 >= before && guest_time <= after + 1,
            "guest clock {guest_time}, host between {before} and {after}"
        );
        assert_eq!(
            lines[4], "clean",
            "a file from another clone or the template is visible"
        );
        assert_eq!(lines[5], "mine");
        seen.push((lines[0].to_string(), lines[1].to_string(), lines[2].to_string()));
    }
    assert_eq!(seen[0].0.len(), 64, "{seen:?}");
    assert_ne!(seen[0].0, seen[1].0, "two clones read the same /dev/urandom bytes");
    assert_ne!(seen[0].1, seen[1].1, "two clones made the same UUID");
    assert_ne!(seen[0].2, seen[1].2, "two clones share a hostname");

    // The slow path still works, and is the same machine from the inside.
    let out = hull()
        .arg("run")
        .arg("--cold-boot")
        .arg("--rootfs")
        .arg(rootfs())
        .args([
            "--",
            "sh",
            "-c",
            "echo cold; test -e /marker && echo leaked || echo clean",
        ])
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&out), "cold\nclean\n");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn fifty_in_a_row_then_twenty_at_once() {
    let mut after_first = None;
    for i in 0..50 {
        eprintln!("sequential clone {i}");
        let stdout = ok_stdout(&run_sh(&format!("echo clone {i}")));
        assert_eq!(stdout, format!("clone {i}\n"));
        after_first.get_or_insert_with(std::time::Instant::now);
    }
    // Twenty clones at once need twenty times the CPU of one, and a slow
    // machine (the emulated test host, one core) cannot run them faster than
    // one after another: each may take five times that (a run here went
    // from 55 s to 136 s beside a compiler), and as long to reach its agent.
    // What this checks is that all twenty run right at once; their speed is
    // `scripts/bench clone`'s.
    let one = after_first.map_or(DEADLINE, |t| t.elapsed() / 49);
    let deadline = DEADLINE.max(one * 20 * 5);
    eprintln!("one clone took {one:?}; twenty at once get {deadline:?} each");
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                scope.spawn(move || {
                    let script = format!("sleep 1; echo parallel {i}");
                    finish_within(
                        hull()
                            .arg("run")
                            .arg("--boot-timeout")
                            .arg(deadline.as_secs().to_string())
                            .arg("--rootfs")
                            .arg(rootfs())
                            .args(["--", "sh", "-c", &script]),
                        deadline,
                    )
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().expect("a clone's run")).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(ok_stdout(out), format!("parallel {i}\n"));
    }
    assert_eq!(vmm_processes(), [], "every clone's VMM is gone");
    let runs = std::fs::read_dir(data_dir().join("run")).map_or(0, |d| d.count());
    assert_eq!(runs, 0, "every clone's run directory is gone");
}

/// Damages the template with `damage`, then checks that a run notices,
/// remakes the template and still succeeds.
fn damaged_template_is_remade(damage: impl FnOnce(&Path), expect: &str) {
    ok_stdout(&run_sh("true")); // the template exists
    let dir = template_dir();
    damage(&dir);
    let out = run_sh("echo survived");
    assert_eq!(ok_stdout(&out), "survived\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is unusable") && stderr.contains(expect), "{stderr}");
    // The fresh template is used silently.
    let out = run_sh("echo again");
    assert_eq!(ok_stdout(&out), "again\n");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_damaged_template_is_detected_and_remade() {
    damaged_template_is_remade(
        |dir| {
            let state = dir.join("state");
            let mut bytes = std::fs::read(&state).unwrap();
            let last = bytes.len() - 100;
            bytes[last] ^= 0x40;
            std::fs::write(&state, bytes).unwrap();
        },
        "corrupted (checksum mismatch)",
    );
    damaged_template_is_remade(
        |dir| {
            let memory = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("memory"))
                .unwrap();
            memory.set_len(4096).unwrap();
        },
        "truncated",
    );
    damaged_template_is_remade(|dir| std::fs::remove_file(dir.join("memory")).unwrap(), "memory");

    // hull-vmm itself refuses a snapshot of another VM shape, with its own exit status.
    let dir = template_dir();
    let vmm = Path::new(env!("CARGO_BIN_EXE_hull")).with_file_name("hull-vmm");
    let out = Command::new(vmm)
        .arg("--restore")
        .arg(&dir)
        .args(["--memory", "512"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not fit this VM: it is a 256 MiB, 1-vCPU VM"),
        "{}",
        text(&out.stderr)
    );
}
