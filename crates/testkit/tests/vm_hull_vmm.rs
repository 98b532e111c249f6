//! VM tests: hull-vmm boots the stock Debian cloud kernel, its ACPI-described
//! devices are found (disks, entropy, a NIC on a host tap), and the way the
//! guest ends comes back as the exit status; every thread runs under its
//! seccomp filter, and the control channel pauses and resumes the VM.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proto::vmm_control::{read_message, write_message, VmmReply, VmmRequest};
use testkit::boot::{hull_vmm_command, timed_boot, timed_boot_with, timed_jailed_boot_with};
use testkit::guest;

const LIMIT: Duration = Duration::from_secs(300);

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vm-hull-vmm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn boots_the_cloud_kernel_to_init_and_powers_off_cleanly() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("poweroff");
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), guest::POWEROFF).unwrap();
    let run = timed_boot(hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap(), LIMIT).unwrap();
    let console = run.console.join("\n");
    assert_eq!(
        run.status.code(),
        Some(0),
        "hull-vmm should report a clean poweroff:\n{console}"
    );
    assert!(!console.contains("failed"), "{console}");
    eprintln!("hull-vmm: guest ready after {:?}", run.ready_after);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_guest_kernel_panic_is_reported_with_its_console() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("panic");
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), guest::KILL_INIT).unwrap();
    let run = timed_boot(hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap(), LIMIT).unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(2), "{console}");
    assert!(console.contains("hull-vmm: the guest kernel panicked"), "{console}");
    assert!(console.contains("Attempted to kill init"), "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: needs hardware KVM; run through scripts/test"]
fn bad_configurations_are_refused_before_booting() {
    let kernel = guest::cloud_kernel().unwrap();
    let vmm = testkit::boot::workspace_binary("hull-vmm").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--memory", "16"], "guest memory must be between"),
        (&["--memory", "99999999"], "guest memory must be between"),
        (&["--cpus", "0"], "vCPUs asked for"),
        (&["--initrd", "/nonexistent/initrd"], "cannot open /nonexistent/initrd"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(&vmm)
            .arg("--kernel")
            .arg(kernel.vmlinuz())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = std::process::Command::new(&vmm)
        .args(["--kernel", "/etc/hostname"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a loadable bzImage"));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn disks_and_entropy_reach_the_guest_through_acpi_described_virtio_mmio() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("devices");
    let image = dir.join("image.raw");
    let mut content = b"hull-disk-marker".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&image, &content).unwrap();
    let scratch_disk = dir.join("scratch.raw");
    std::fs::write(&scratch_disk, vec![0u8; 1 << 20]).unwrap();
    let script = "echo vda-size=$($B cat /sys/block/vda/size) vda-ro=$($B cat /sys/block/vda/ro); \
                  echo vda-head=$($B head -c 16 /dev/vda); \
                  echo from-the-guest | $B dd of=/dev/vdb bs=512 seek=3 conv=fsync 2>/dev/null; \
                  echo vda-write=$($B dd if=/dev/zero of=/dev/vda bs=512 count=1 2>&1 >/dev/null | $B head -1 | $B cut -c1-14); \
                  echo rng=$($B head -c 16 /dev/hwrng | $B od -An -tx1 | $B tr -d ' '); \
                  $B poweroff -f";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command
        .arg("--disk")
        .arg(format!("{}:ro", image.display()))
        .arg("--disk")
        .arg(&scratch_disk);
    let run = timed_boot(command, LIMIT).unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(0), "{console}");
    assert!(console.contains("vda-size=2048 vda-ro=1"), "{console}");
    assert!(console.contains("vda-head=hull-disk-marker"), "{console}");
    assert!(
        console.contains("vda-write=dd: error"),
        "a read-only disk took a write:\n{console}"
    );
    let rng = console.lines().find_map(|l| l.strip_prefix("rng=")).unwrap_or_default();
    assert_eq!(rng.len(), 32, "{console}");
    assert_ne!(rng, "00000000000000000000000000000000");
    let written = std::fs::read(&scratch_disk).unwrap();
    assert_eq!(&written[3 * 512..3 * 512 + 15], b"from-the-guest\n");
    assert_eq!(std::fs::read(&image).unwrap(), content, "the read-only disk changed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_disk_plugged_into_an_empty_slot_appears_in_the_running_guest_and_goes_again() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("plug-disk");
    let (empty, disk) = (dir.join("empty.disk"), dir.join("plugged.raw"));
    std::fs::write(&empty, b"").unwrap();
    let mut content = b"hull-plugged!".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&disk, &content).unwrap();
    let script = "size() { $B cat /sys/block/vda/size; }; echo slot-size=$(size); \
                  while [ $(size) = 0 ]; do $B sleep 0.1; done; \
                  echo plugged-size=$(size) head=$($B head -c 13 /dev/vda); \
                  echo write=$(echo x | $B dd of=/dev/vda bs=512 count=1 conv=fsync 2>&1 >/dev/null | $B head -1 | $B cut -c1-9); \
                  echo read-it-all; while [ $(size) != 0 ]; do $B sleep 0.1; done; \
                  echo unplugged-size=$(size); $B poweroff -f";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let (socket, log) = (dir.join("vmm.ctl"), dir.join("console.log"));
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command
        .arg("--disk")
        .arg(&empty)
        .arg("--control-socket")
        .arg(&socket)
        .arg("--serial-log")
        .arg(&log);
    let wait_for = |marker: &str| {
        let deadline = std::time::Instant::now() + LIMIT;
        while !std::fs::read_to_string(&log).unwrap_or_default().contains(marker) {
            assert!(std::time::Instant::now() < deadline, "no {marker} on the console");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (run, replies) = timed_boot_with(command, LIMIT, |_| {
        wait_for("slot-size=0");
        let stream = UnixStream::connect(&socket).unwrap();
        let ask = |request: VmmRequest, fd: Option<&std::fs::File>| vmm::control::ask(&stream, &request, fd).unwrap();
        // Opened read-only: the guest may read it, not write it.
        let plugged = ask(
            VmmRequest::PlugDisk {
                slot: 0,
                lasting: false,
            },
            Some(&std::fs::File::open(&disk).unwrap()),
        );
        let again = ask(
            VmmRequest::PlugDisk {
                slot: 0,
                lasting: false,
            },
            Some(&std::fs::File::open(&disk).unwrap()),
        );
        let no_slot = ask(
            VmmRequest::PlugDisk {
                slot: 9,
                lasting: false,
            },
            Some(&std::fs::File::open(&disk).unwrap()),
        );
        wait_for("read-it-all");
        let unplugged = ask(VmmRequest::UnplugDisk { slot: 0 }, None::<&std::fs::File>);
        (plugged, again, no_slot, unplugged)
    })
    .unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(0), "{console}");
    let (plugged, again, no_slot, unplugged) = replies;
    assert_eq!((plugged, unplugged), (VmmReply::Done, VmmReply::Done), "{console}");
    assert!(
        matches!(&again, VmmReply::Failed { reason } if reason.contains("holds a disk already")),
        "{again:?}"
    );
    assert!(
        matches!(&no_slot, VmmReply::Failed { reason } if reason.contains("no disk slot 9")),
        "{no_slot:?}"
    );
    assert!(console.contains("plugged-size=2048 head=hull-plugged!"), "{console}");
    // dd's own error, and the kernel's: the host refused the write.
    assert!(
        console.contains("write=dd: ") && console.contains("I/O error, dev vda"),
        "a read-only plug took a write:\n{console}"
    );
    assert!(console.contains("unplugged-size=0"), "{console}");
    assert_eq!(std::fs::read(&disk).unwrap(), content, "the read-only disk changed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_nic_on_a_host_tap_carries_frames_both_ways() {
    use std::io::Read;
    use std::process::Command;

    // Where /dev/net/tun is a module (the test host), load it.
    let _ = Command::new("modprobe").arg("tun").status();
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("net");
    let tap = format!("hulltest{}", std::process::id() % 100_000);
    // The guest waits for the host's side of the link, pings it, then
    // sends a line over TCP.
    let script = "$B ip link set eth0 up; $B ip addr add 10.77.0.2/24 dev eth0; \
                  echo mac=$($B cat /sys/class/net/eth0/address); \
                  for i in $($B seq 1 120); do $B ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1 && break; done; \
                  echo ping=$($B ping -c 3 -W 2 10.77.0.1 >/dev/null 2>&1 && echo ok || echo failed); \
                  echo hello-over-tcp | $B nc 10.77.0.1 7777; \
                  $B poweroff -f";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command.args(["--net-tap", &tap, "--net-mac", "02:00:00:00:00:42"]);
    // The host side: once hull-vmm has made the tap, address it and listen.
    let host_side = {
        let tap = tap.clone();
        std::thread::spawn(move || -> String {
            let deadline = std::time::Instant::now() + LIMIT;
            while !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists() {
                assert!(std::time::Instant::now() < deadline, "hull-vmm never made {tap}");
                std::thread::sleep(Duration::from_millis(50));
            }
            for args in [
                vec!["addr", "add", "10.77.0.1/24", "dev", &tap],
                vec!["link", "set", &tap, "up"],
            ] {
                assert!(
                    Command::new("ip").args(&args).status().unwrap().success(),
                    "ip {args:?}"
                );
            }
            let listener = std::net::TcpListener::bind("10.77.0.1:7777").unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            conn.read_to_string(&mut line).unwrap();
            line
        })
    };
    let run = timed_boot(command, LIMIT).unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(0), "{console}");
    assert!(console.contains("mac=02:00:00:00:00:42"), "{console}");
    assert!(console.contains("ping=ok"), "{console}");
    // The guest is gone: the host side has its line, or never will.
    std::thread::sleep(Duration::from_millis(200));
    assert!(host_side.is_finished(), "no TCP connection arrived:\n{console}");
    assert_eq!(host_side.join().unwrap(), "hello-over-tcp\n", "{console}");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "the tap went with hull-vmm"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each thread of process `pid`: (name, the `Seccomp:` mode of its status).
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let task = format!("{pid}/task/{}", task.file_name().to_string_lossy());
        threads.push((status_field(&task, "Name:"), status_field(&task, "Seccomp:")));
    }
    threads.sort();
    threads
}

fn control(stream: &UnixStream, request: VmmRequest) -> VmmReply {
    write_message(&mut &*stream, &request).unwrap();
    read_message(&mut BufReader::new(stream)).unwrap().unwrap()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn every_thread_is_confined_and_the_control_channel_pauses_the_whole_vm() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("confined");
    let disk = dir.join("scratch.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The guest counts on its console for a while (paused in the middle).
    let script = "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo tick $i; $B sleep 0.05; done; $B poweroff -f";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let socket = dir.join("vmm.ctl");
    let log = dir.join("console.log");
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command
        .arg("--disk")
        .arg(&disk)
        .args(["--net-slots", "1"])
        .arg("--control-socket")
        .arg(&socket)
        .arg("--serial-log")
        .arg(&log);
    let (run, checked) = timed_boot_with(command, LIMIT, |pid| {
        let threads = threads(pid);
        let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
        for expected in ["hull-vmm", "vcpu0", "block0", "rng1", "net2", "control"] {
            assert!(names.contains(&expected), "no {expected} thread: {threads:?}");
        }
        // Mode 2: a filter, on every thread.
        assert!(threads.iter().all(|(_, mode)| mode == "2"), "{threads:?}");
        let stream = UnixStream::connect(&socket).unwrap();
        assert_eq!(control(&stream, VmmRequest::Pause), VmmReply::Done);
        let paused_at = std::fs::metadata(&log).unwrap().len();
        std::thread::sleep(Duration::from_secs(2));
        let still = std::fs::metadata(&log).unwrap().len();
        assert!(matches!(
            control(&stream, VmmRequest::Describe),
            VmmReply::Described {
                paused: true,
                vcpus: 1,
                memory_mib: 256
            }
        ));
        assert_eq!(control(&stream, VmmRequest::Resume), VmmReply::Done);
        (paused_at, still)
    })
    .unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(0), "{console}");
    let (paused_at, still) = checked;
    assert_eq!(paused_at, still, "the console grew while the VM was paused");
    assert!(
        std::fs::metadata(&log).unwrap().len() > still,
        "the guest did not go on after resume"
    );
    assert!(console.contains("tick 200"), "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_forbidden_system_call_ends_the_vm_with_the_violation_logged() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("violation");
    let script = format!(
        "$B devmem {:#x} 32 1; echo still-running; $B poweroff -f",
        vmm::layout::SECCOMP_SELFTEST_ADDR
    );
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), &script).unwrap();
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command.arg("--seccomp-selftest");
    let run = timed_boot(command, LIMIT).unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(vmm::seccomp::EXIT_VIOLATION), "{console}");
    assert!(
        console.contains(&format!(
            "hull-vmm: seccomp: the vcpu thread made system call {}",
            libc::SYS_getppid
        )),
        "{console}"
    );
    assert!(!console.contains("still-running"), "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A field of `/proc/ENTRY/status` (a process, or `PID/task/TID`).
fn status_field(entry: impl std::fmt::Display, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{entry}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn jailed_command(dir: &std::path::Path, script: &str) -> std::process::Command {
    let kernel = guest::cloud_kernel().unwrap();
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let jail = dir.join("jail");
    std::fs::create_dir_all(&jail).unwrap();
    let disk = dir.join("scratch.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut command = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    command
        .arg("--disk")
        .arg(&disk)
        .args(["--net-slots", "1"])
        .arg("--control-socket")
        .arg(jail.join("vmm.ctl"));
    command
}

/// Boots `command` jailed in DIR/jail, as the runtime starts its VMMs.
fn jailed_boot<T>(
    dir: &std::path::Path,
    command: std::process::Command,
    at_ready: impl FnOnce(u32) -> T,
) -> anyhow::Result<(testkit::boot::BootRun, T)> {
    let limits = vmm::jail::Limits::new(256, 1, None).unwrap();
    timed_jailed_boot_with(&command, &dir.join("jail"), limits, LIMIT, at_ready)
}

/// The cgroup `pid` is in, as a path under /sys/fs/cgroup.
fn cgroup_dir(pid: u32) -> std::path::PathBuf {
    let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    std::path::Path::new("/sys/fs/cgroup").join(line.trim().trim_start_matches("0::/"))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_jailed_vmm_has_its_own_uid_namespaces_root_and_cgroup() {
    let dir = scratch("jail");
    let script = "i=0; while [ $i -lt 100 ]; do i=$((i+1)); echo tick $i; $B sleep 0.05; done; $B poweroff -f";
    let command = jailed_command(&dir, script);
    let (run, cgroup) = jailed_boot(&dir, command, |vmm| {
        let uid = vmm::jail::uid_of(vmm).to_string();
        assert_eq!(status_field(vmm, "Uid:"), [uid.as_str(); 4].join(" "));
        let gid = vmm::jail::ID_BASE.to_string();
        assert_eq!(status_field(vmm, "Gid:"), [gid.as_str(); 4].join(" "));
        assert_eq!(status_field(vmm, "Groups:"), "");
        assert_eq!(status_field(vmm, "CapEff:"), "0000000000000000");
        assert_eq!(status_field(vmm, "CapPrm:"), "0000000000000000");
        assert_eq!(status_field(vmm, "NoNewPrivs:"), "1");
        // Every thread is filtered; no other process is left (no waiter).
        let threads = threads(vmm);
        assert!(threads.iter().all(|(_, mode)| mode == "2"), "{threads:?}");
        assert!(threads.iter().any(|(name, _)| name == "vcpu0"), "{threads:?}");
        for ns in ["pid", "mnt", "ipc"] {
            let of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            assert_ne!(of(&vmm.to_string()), of("self"), "{ns} namespace");
        }
        // Its root is the jail directory: its sockets, nothing else.
        let names = |dir: String| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(format!("/proc/{vmm}/root")), ["vmm.ctl"]);
        // Every thread is in that one mount namespace, with that root,
        // which holds the jail's mount and nothing of the host's.
        let main_ns = std::fs::read_link(format!("/proc/{vmm}/ns/mnt")).unwrap();
        for task in names(format!("/proc/{vmm}/task")) {
            let ns = std::fs::read_link(format!("/proc/{vmm}/task/{task}/ns/mnt")).unwrap();
            assert_eq!(ns, main_ns, "thread {task}");
            assert_eq!(
                names(format!("/proc/{vmm}/task/{task}/root")),
                ["vmm.ctl"],
                "thread {task}"
            );
        }
        let mounts = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
        assert_eq!(mounts.lines().count(), 1, "{mounts}");
        // Born in its own group, made by its starter (this test).
        let cgroup = cgroup_dir(vmm);
        let name = cgroup.file_name().unwrap().to_string_lossy().into_owned();
        assert!(cgroup.starts_with(vmm::jail::CGROUP_PARENT), "{cgroup:?}");
        assert!(name.starts_with(&format!("vmm-{}-", std::process::id())), "{cgroup:?}");
        // The VMM is its only process (KVM adds its own worker threads,
        // children of kthreadd, to the group of the VM's creator).
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        let users: Vec<&str> = procs
            .split_whitespace()
            .filter(|p| status_field(p, "PPid:") != "2")
            .collect();
        assert_eq!(users, [vmm.to_string()]);
        let limit = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap().trim().to_string();
        assert_eq!(limit("memory.max"), ((256u64 + 128) << 20).to_string());
        assert_eq!(limit("pids.max"), "33");
        assert_eq!(limit("cpu.max"), "max 100000");
        // The control channel works from inside the jail.
        let stream = UnixStream::connect(dir.join("jail/vmm.ctl")).unwrap();
        assert_eq!(control(&stream, VmmRequest::Pause), VmmReply::Done);
        assert_eq!(control(&stream, VmmRequest::Resume), VmmReply::Done);
        cgroup
    })
    .unwrap();
    let console = run.console.join("\n");
    assert_eq!(run.status.code(), Some(0), "{console}");
    assert!(console.contains("tick 100"), "{console}");
    assert!(!cgroup.exists(), "the starter removes the cgroup");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_jailed_vmm_dies_with_its_starter_and_its_cgroup_is_cleared() {
    // A starter of its own (this test binary, re-run), killed once ready.
    if let Some(dir) = std::env::var_os("HULL_JAIL_STARTER").map(std::path::PathBuf::from) {
        let command = jailed_command(&dir, "$B sleep 600");
        let _ = jailed_boot(&dir, command, |vmm| {
            std::fs::write(dir.join("vmm.pid"), vmm.to_string()).unwrap();
            std::thread::sleep(Duration::from_secs(600));
        });
        return;
    }
    let dir = scratch("jail-kill");
    let mut starter = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "a_jailed_vmm_dies_with_its_starter_and_its_cgroup_is_cleared",
        ])
        .env("HULL_JAIL_STARTER", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    let vmm = loop {
        if let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
        {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the jailed guest never got ready");
        assert!(starter.try_wait().unwrap().is_none(), "the starter ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    let cgroup = cgroup_dir(vmm);
    starter.kill().unwrap();
    starter.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{vmm}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{vmm}")).exists(),
        "the jailed VMM outlived its starter"
    );
    // Left behind by the killed starter: the next starter clears it.
    assert!(cgroup.exists());
    let mut next = vmm::jail::VmmCommand::new("/bin/true");
    let limits = vmm::jail::Limits::new(64, 1, None).unwrap();
    next.jail(dir.join("jail"), limits).stderr(vmm::jail::Output::Null);
    let _ = next.spawn().map(|mut p| p.wait());
    assert!(!cgroup.exists(), "an orphaned VMM cgroup stays");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The whole console lines of `logs` read as one stream (a line may begin
/// in one VMM's log and end in the next one's). A last line without its
/// newline is still being written (the UART takes a byte at a time) and
/// is left out: read so, a checksum was cut short (CI, 2026-12-05).
fn console_lines(logs: &[&std::path::Path]) -> Vec<String> {
    let text: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    whole.lines().map(|l| l.trim().to_string()).collect()
}

/// The reader's passes in `logs`: each pass's number and the checksum of
/// what it read.
fn reads(logs: &[&std::path::Path]) -> Vec<(u32, String)> {
    console_lines(logs)
        .iter()
        .filter_map(|l| {
            let (pass, sum) = l.strip_prefix("reads ")?.split_once(' ')?;
            Some((pass.parse().ok()?, sum.to_string()))
        })
        .collect()
}

/// The counter's ticks in `logs`.
fn ticks(logs: &[&std::path::Path]) -> Vec<u32> {
    console_lines(logs)
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// A counting guest's move from a source VMM (its control socket and its
/// console log) to a destination listening at `incoming`.
struct Moving<'a> {
    incoming: &'a std::path::Path,
    control: &'a std::path::Path,
    source_log: &'a std::path::Path,
    /// The destination's standard error, shown if the move fails.
    dest_err: &'a std::path::Path,
}

impl Moving<'_> {
    /// Boots `source`, starts `destination`, and once the guest has
    /// counted a second asks the source for `request` over a connection
    /// to `link(incoming)` (that socket, or a relay to it). The source's
    /// run, its report, and the destination, which said it runs the VM.
    /// A source that did not migrate is killed (its guest would count on
    /// for ever), so is the destination, and the test fails with the
    /// reply and both sides' output.
    fn run(
        &self,
        source: std::process::Command,
        destination: &mut std::process::Command,
        link: impl FnOnce(&std::path::Path) -> std::path::PathBuf,
        request: &VmmRequest,
    ) -> (testkit::boot::BootRun, proto::MigrationReport, std::process::Child) {
        let (run, (reply, dest)) = timed_boot_with(source, LIMIT, |pid| {
            let dest = destination.spawn().unwrap();
            let deadline = std::time::Instant::now() + LIMIT;
            while !(self.incoming.exists() && ticks(&[self.source_log]).len() >= 20) {
                assert!(std::time::Instant::now() < deadline, "neither counting nor listening");
                std::thread::sleep(Duration::from_millis(50));
            }
            let link = UnixStream::connect(link(self.incoming)).unwrap();
            let control = UnixStream::connect(self.control).unwrap();
            let reply = vmm::control::ask(&control, request, Some(&link)).unwrap();
            if !matches!(reply, VmmReply::Migrated { .. }) {
                // SAFETY: kill(2) of the VMM this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            (reply, dest)
        })
        .unwrap();
        let Some(report) = reply.migration_report() else {
            let mut dest = dest;
            let _ = dest.kill();
            panic!(
                "{reply:?}\n{}\n{}",
                run.console.join("\n"),
                std::fs::read_to_string(self.dest_err).unwrap_or_default()
            );
        };
        assert!(
            matches!(reply, VmmReply::Migrated { confirmed: true, .. }),
            "the destination said it runs the VM"
        );
        (run, report, dest)
    }
}

/// Every number the guest counted, at the source and then at the
/// destination, came once (it moved after `moved_at`): the last one.
fn assert_counted_once(source_log: &std::path::Path, dest_log: &std::path::Path, moved_at: u32) -> u32 {
    let all = ticks(&[source_log, dest_log]);
    let last = *all.last().unwrap();
    assert_eq!(
        all,
        (1..=last).collect::<Vec<_>>(),
        "no tick lost or repeated across the move (moved at {moved_at})"
    );
    last
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_running_guest_migrates_with_its_disk_to_another_vmm_and_counts_on_without_a_gap() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("migrate");
    // As between hosts: the destination has an empty copy of the disk
    // (stale bytes in it, which must go), and the disk travels.
    let (disk, dest_disk) = (dir.join("source.raw"), dir.join("dest.raw"));
    let disk_bytes = 8u64 << 20;
    let kept = vec![0x5a_u8; 300 << 10];
    {
        use std::os::unix::fs::FileExt;
        let source = std::fs::File::create(&disk).unwrap();
        source.set_len(disk_bytes).unwrap();
        source.write_all_at(&kept, 4 << 20).unwrap();
        let copy = std::fs::File::create(&dest_disk).unwrap();
        copy.set_len(disk_bytes).unwrap();
        copy.write_all_at(&[0xee; 64 << 10], 0).unwrap();
    }
    // A read-only disk both VMMs are given (it does not travel), read
    // without a pause, 128 KiB at a time: its queue is notified all
    // through the move, also after the source's device thread parked.
    // Nothing else uses it, so a notify lost in the move would leave its
    // reader waiting for ever. Each pass reads another eighth of it, every
    // page different, into the same buffer, which the guest never writes:
    // a page the device filled in the move and the move left behind
    // shows as a wrong checksum.
    let read_disk = dir.join("read.raw");
    let content: Vec<u8> = (0..1usize << 20)
        .map(|i| ((i >> 12) as u8).wrapping_mul(37) ^ (i % 251) as u8)
        .collect();
    std::fs::write(&read_disk, &content).unwrap();
    let eighths: Vec<String> = content
        .chunks(128 << 10)
        .map(|eighth| {
            use sha2::Digest;
            sha2::Sha256::digest(eighth)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let read_only = format!("{}:ro", read_disk.display());
    // The guest counts for as long as it runs, and writes every tenth
    // number to a sector of its own on its disk (sector 9 on).
    let script = "(j=0; while true; do j=$((j+1)); \
                  s=$($B dd if=/dev/vdb bs=4096 count=32 skip=$((j % 8 * 32)) iflag=direct 2>/dev/null | $B sha256sum); \
                  echo reads $j ${s%% *}; done) & \
                  i=0; while true; do i=$((i+1)); echo tick $i; \
                  if [ $((i % 10)) -eq 0 ]; then echo disk $i | $B dd of=/dev/vda bs=512 seek=$((i / 10 + 8)) conv=fsync 2>/dev/null; fi; \
                  $B sleep 0.05; done";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let (source_ctl, source_log) = (dir.join("source.ctl"), dir.join("source.log"));
    let (incoming, dest_log, dest_err) = (dir.join("incoming.sock"), dir.join("dest.log"), dir.join("dest.err"));
    let mut source = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    source
        .arg("--disk")
        .arg(&disk)
        .args(["--disk", &read_only])
        .args(["--net-slots", "1"])
        .arg("--control-socket")
        .arg(&source_ctl)
        .arg("--serial-log")
        .arg(&source_log);
    let mut destination = std::process::Command::new(testkit::boot::workspace_binary("hull-vmm").unwrap());
    destination
        .arg("--incoming")
        .arg(&incoming)
        .args(["--memory", "256", "--net-slots", "1", "--receive-disks"])
        .arg("--disk")
        .arg(&dest_disk)
        .args(["--disk", &read_only])
        .arg("--serial-log")
        .arg(&dest_log)
        .stderr(std::fs::File::create(&dest_err).unwrap());
    // The test host is an emulated machine, 20-50x slower than hardware:
    // its budget is 50 ms's share of that.
    let request = VmmRequest::Migrate {
        downtime_ms: 2000,
        max_seconds: 250,
        send_disks: true,
        uncompressed: false,
        same_host: false,
        send_shares: Vec::new(),
    };
    let moving = Moving {
        incoming: &incoming,
        control: &source_ctl,
        source_log: &source_log,
        dest_err: &dest_err,
    };
    let (run, moved, mut dest) = moving.run(source, &mut destination, |to| to.to_path_buf(), &request);
    let console = run.console.join("\n");
    let dest_stderr = || std::fs::read_to_string(&dest_err).unwrap_or_default();
    let proto::MigrationReport {
        bytes_sent,
        pages_sent,
        downtime_ms,
        rounds,
        ..
    } = moved;
    // The last scan of written pages ran before the pause, KVM and the
    // VMM logging every write meanwhile (no fallback).
    assert!(!console.contains("the pause scans every page"), "{console}");
    assert_eq!(
        run.status.code(),
        Some(5),
        "the source ends once the VM moved:\n{console}"
    );
    assert!(console.contains("migrated"), "{console}");
    eprintln!("migrated in {rounds} rounds: {pages_sent} pages, {bytes_sent} bytes, downtime {downtime_ms} ms");
    // The zero pages of a 256 MiB guest stayed home.
    assert!(bytes_sent < 200 << 20, "{bytes_sent}");
    // It counts on at the destination, past two writes to its disk, and
    // reads on from the other disk.
    let moved_at = *ticks(&[&source_log]).last().unwrap();
    let read_at = reads(&[&source_log]).last().map_or(0, |(pass, _)| *pass);
    let deadline = std::time::Instant::now() + LIMIT;
    while ticks(&[&dest_log]).last().is_none_or(|&t| t < moved_at + 25)
        || reads(&[&dest_log]).last().is_none_or(|(pass, _)| *pass < read_at + 3)
    {
        assert!(
            dest.try_wait().unwrap().is_none(),
            "the destination ended:\n{}",
            dest_stderr()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the guest stopped counting (ticks {:?}) or reading (reads {:?} after {read_at}):\n{}",
            ticks(&[&dest_log]).last(),
            reads(&[&dest_log]).last().map(|(pass, _)| *pass),
            dest_stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    dest.kill().unwrap();
    dest.wait().unwrap();
    // Every pass read what the disk holds, on either side of the move.
    for (pass, sum) in reads(&[&source_log, &dest_log]) {
        assert_eq!(
            sum,
            eighths[pass as usize % 8],
            "pass {pass} (moved after pass {read_at})"
        );
    }
    let last = assert_counted_once(&source_log, &dest_log, moved_at);
    // The destination's copy holds what the source's had (what the guest
    // wrote there, before and during the move) and what it wrote since.
    let copy = std::fs::read(&dest_disk).unwrap();
    assert_eq!(copy.len() as u64, disk_bytes);
    assert!(copy[..4608].iter().all(|&b| b == 0), "the copy's stale bytes stayed");
    assert!(
        copy[4 << 20..(4 << 20) + kept.len()] == kept[..],
        "the source disk's data did not travel"
    );
    for n in (10..last.saturating_sub(10)).step_by(10) {
        let sector = (n as usize / 10 + 8) * 512;
        let text = String::from_utf8_lossy(&copy[sector..sector + 16]);
        assert_eq!(
            text.trim_matches(char::from(0)).trim(),
            format!("disk {n}"),
            "sector {} (moved at tick {moved_at})",
            sector / 512
        );
    }
    assert!(last > moved_at + 20, "the guest wrote its disk at the destination");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The paced link's rate: far below what a guest copying memory writes.
const SLOW_LINK: u64 = 8 << 20;

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_guest_outrunning_a_slow_link_is_throttled_until_it_moves_and_counts_on() {
    let kernel = guest::cloud_kernel().unwrap();
    let dir = scratch("converge");
    // 8 MiB of random bytes (neither zero nor compressible) copied over
    // and over, faster than the link, beside a counter.
    let script = "$B mkdir -p /scratch; $B mount -t tmpfs -o size=32m tmpfs /scratch; \
                  $B dd if=/dev/urandom of=/scratch/source bs=1M count=8 2>/dev/null; \
                  (while true; do $B cp /scratch/source /scratch/copy; done) & \
                  i=0; while true; do i=$((i+1)); echo tick $i; $B sleep 0.05; done";
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("g.cpio"), script).unwrap();
    let (control, source_log) = (dir.join("source.ctl"), dir.join("source.log"));
    let (incoming, dest_log, dest_err) = (dir.join("incoming.sock"), dir.join("dest.log"), dir.join("dest.err"));
    let mut source = hull_vmm_command(&kernel.vmlinuz(), &initramfs, 256).unwrap();
    source
        .arg("--control-socket")
        .arg(&control)
        .arg("--serial-log")
        .arg(&source_log);
    let mut destination = std::process::Command::new(testkit::boot::workspace_binary("hull-vmm").unwrap());
    destination
        .arg("--incoming")
        .arg(&incoming)
        .args(["--memory", "256"])
        .arg("--serial-log")
        .arg(&dest_log)
        .stderr(std::fs::File::create(&dest_err).unwrap());
    // hull's default budget: what is left of 8 MiB rewritten over and
    // over never fits it unless the guest is slowed.
    let request = VmmRequest::Migrate {
        downtime_ms: 50,
        max_seconds: 250,
        send_disks: false,
        uncompressed: false,
        same_host: false,
        send_shares: Vec::new(),
    };
    let moving = Moving {
        incoming: &incoming,
        control: &control,
        source_log: &source_log,
        dest_err: &dest_err,
    };
    let relay = dir.join("slow-link.sock");
    let (_run, moved, mut dest) = moving.run(
        source,
        &mut destination,
        |to| testkit::paced_link::paced_relay(to, SLOW_LINK, &relay).unwrap(),
        &request,
    );
    let dest_stderr = || std::fs::read_to_string(&dest_err).unwrap_or_default();
    let proto::MigrationReport {
        max_throttle,
        rounds,
        total_ms,
        downtime_ms,
        ..
    } = moved;
    eprintln!("moved over {SLOW_LINK} bytes/s: {rounds} rounds, {total_ms} ms, downtime {downtime_ms} ms, throttled up to {max_throttle}%");
    assert!(
        max_throttle > 0,
        "a guest outrunning the link moved without auto-converge"
    );
    // It counts on at the destination, every number once.
    let moved_at = *ticks(&[&source_log]).last().unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while ticks(&[&dest_log]).last().is_none_or(|&t| t < moved_at + 20) {
        assert!(
            dest.try_wait().unwrap().is_none(),
            "the destination ended:\n{}",
            dest_stderr()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the guest stopped counting:\n{}",
            dest_stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    dest.kill().unwrap();
    dest.wait().unwrap();
    assert_counted_once(&source_log, &dest_log, moved_at);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn an_idle_clone_moves_as_its_own_pages_to_a_host_with_its_template() {
    let dir = scratch("clone-migrate");
    // The template is made in this test's own data directory, not the host's.
    let own = testkit::own_dirs::OwnDirs::new(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), "clone-migrate-data");
    std::env::set_var("HULL_DATA_DIR", &own.data);
    std::env::set_var("HULL_RUN_DIR", &own.run);
    let guest = runtime::guest::Guest::current().unwrap();
    let vmm_binary = testkit::boot::workspace_binary("hull-vmm").unwrap();
    let template = runtime::template::ensure(&guest, &vmm_binary, 256, 1).unwrap();
    let record = &template.record;
    // Each side: the template's device slots, with its own empty disks
    // and vsock socket, as a container's VMM binds its own.
    let vmm = |side: &str| {
        let mut command = std::process::Command::new(&vmm_binary);
        command.args(["--memory", "256", "--cpus", "1", "--fs"]);
        for disk in 0..2 + record.volume_slots {
            let path = dir.join(format!("{side}-disk-{disk}"));
            std::fs::File::create(&path).unwrap();
            let spec = match disk {
                0 => format!("{}:ro", path.display()),
                _ => path.display().to_string(),
            };
            command.arg("--disk").arg(spec);
        }
        command
            .args(["--net-slots", &record.nic_slots.to_string()])
            .arg("--vsock-uds")
            .arg(dir.join(format!("{side}.vsock")))
            .arg("--serial-log")
            .arg(dir.join(format!("{side}.log")))
            .arg("--control-socket")
            .arg(dir.join(format!("{side}.ctl")))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{side}.err"))).unwrap());
        command
    };
    // The host end the clone's agent reaches once restored: it connects
    // and waits for work, idle.
    let agent_port =
        std::os::unix::net::UnixListener::bind(format!("{}_{}", dir.join("source.vsock").display(), proto::AGENT_PORT))
            .unwrap();
    let mut source = vmm("source");
    source.arg("--restore").arg(&template.dir);
    let mut source = source.spawn().unwrap();
    let (_agent, _) = agent_port.accept().unwrap();
    // The destination's host end: the agent, holding no container yet,
    // says hello there once the move has reset its connection.
    let agent_there =
        std::os::unix::net::UnixListener::bind(format!("{}_{}", dir.join("dest.vsock").display(), proto::AGENT_PORT))
            .unwrap();
    agent_there.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let incoming = dir.join("incoming.sock");
    let mut destination = vmm("dest");
    destination
        .arg("--incoming")
        .arg(&incoming)
        .arg("--template")
        .arg(&template.dir);
    let mut destination = destination.spawn().unwrap();
    while !incoming.exists() {
        assert!(destination.try_wait().unwrap().is_none(), "the destination ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let link = UnixStream::connect(&incoming).unwrap();
    let source_control = UnixStream::connect(dir.join("source.ctl")).unwrap();
    let request = VmmRequest::Migrate {
        downtime_ms: 2000,
        max_seconds: 250,
        send_disks: false,
        // The other migration test's stream is compressed: this one's not.
        uncompressed: true,
        same_host: false,
        send_shares: Vec::new(),
    };
    let reply = vmm::control::ask(&source_control, &request, Some(&link)).unwrap();
    let source_status = source.wait().unwrap();
    let err = |side: &str| std::fs::read_to_string(dir.join(format!("{side}.err"))).unwrap_or_default();
    let VmmReply::Migrated {
        bytes_sent,
        pages_sent,
        zero_pages,
        confirmed,
        ..
    } = reply
    else {
        let _ = destination.kill();
        panic!("{reply:?}\n{}", err("source"));
    };
    eprintln!("an idle clone moved: {pages_sent} pages ({zero_pages} zero), {bytes_sent} bytes");
    assert_eq!(source_status.code(), Some(5), "{}", err("source"));
    assert!(confirmed);
    // The target: an idle clone sends under 4 MiB once the
    // destination has its template (a 256 MiB guest).
    assert!(bytes_sent < 4 << 20, "{bytes_sent} bytes for an idle clone");
    // The destination reset the guest's vsock transport: the agent lost
    // the old host's connection at once and came to this host.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut agent = loop {
        match agent_there.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the agent never reached the destination's host\n{}",
                    err("dest")
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    };
    agent.set_nonblocking(false).unwrap();
    agent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let hello = proto::read_frame(&mut agent).unwrap();
    assert!(
        matches!(hello, Some(proto::Frame::Control(proto::Control::Hello { .. }))),
        "{hello:?}"
    );
    // The guest runs there: its vCPU and device threads park and go on.
    let dest_control = UnixStream::connect(dir.join("dest.ctl")).unwrap();
    assert_eq!(
        control(&dest_control, VmmRequest::Pause),
        VmmReply::Done,
        "{}",
        err("dest")
    );
    assert_eq!(control(&dest_control, VmmRequest::Resume), VmmReply::Done);
    assert!(destination.try_wait().unwrap().is_none(), "{}", err("dest"));
    destination.kill().unwrap();
    destination.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
