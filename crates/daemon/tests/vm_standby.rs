//! VM tests of standby VMs (`hulld --standby-vms N`, `runtime::standby`):
//! a container started while one stands ready runs in it (its disks and
//! taps plugged into that running VM), and works as one started in a VM
//! of its own does: its address and published port, its writes kept
//! across a restart, exec, pause, a CPU limit, a move to a new VMM; the
//! standby is replaced after each claim; a container it cannot serve (a
//! volume) starts a VM of its own; nothing of it outlives hulld.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use testkit::hulld::{cgroup_dir, eventually, ok, text, Hulld};

/// Container `name`'s VMM, as its supervisor recorded it.
fn vmm_pid(hulld: &Hulld, name: &str) -> u32 {
    let id = hulld.inspect("{{.Id}}", name);
    let dir = runtime::container::ContainerDir {
        id: id.clone(),
        path: hulld.data.join("containers").join(&id),
    };
    let state = dir.state().unwrap().expect("a running container's state");
    assert_ne!(state.vmm_pid, 0, "its VMM is recorded");
    state.vmm_pid
}

fn vmm_command_line(hulld: &Hulld, name: &str) -> String {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vmm_pid(hulld, name))).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).replace('\0', " ")
}

/// The processes of this host for which `keep(pid, command line)` holds.
fn processes(keep: impl Fn(u32, &str) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            keep(pid, &String::from_utf8_lossy(&cmdline))
        })
        .collect()
}

/// Standby supervisors (`hull-shim --standby`) of the hulld whose data
/// directory is `data` (named in their environment).
fn standby_supervisors(data: &Path) -> Vec<u32> {
    let wanted = format!("HULL_DATA_DIR={}", data.display());
    processes(|pid, cmdline| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        cmdline.contains("--standby") && environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
    })
}

/// Field `field` (1-based, as proc(5) counts) of `/proc/PID/stat`.
fn stat_field(pid: u32, field: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .nth(field - 3)
        .unwrap_or_default()
        .to_string()
}

/// Its niceness, and whether it leads a session of its own.
fn niceness_and_own_session(pid: u32) -> (String, bool) {
    (stat_field(pid, 19), stat_field(pid, 6) == pid.to_string())
}

/// File `name` of process `pid`'s cgroup (each VMM has its own).
fn cgroup_file(pid: u32, name: &str) -> String {
    let dir = cgroup_dir(pid).unwrap_or_else(|| panic!("process {pid} has no cgroup"));
    std::fs::read_to_string(dir.join(name)).unwrap().trim().to_string()
}

/// The VMMs of `hulld`'s standby VMs, claimed or not (their disks' paths
/// name `DATA/standby/`).
fn standby_vmms(hulld: &Hulld) -> Vec<u32> {
    let files = format!("{}/standby/", hulld.data.display());
    processes(|pid, cmdline| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        comm.trim() == "hull-vmm" && cmdline.contains(&files)
    })
}

/// Whether container `name` runs in a VM that stood by before it started.
fn in_standby_vm(hulld: &Hulld, name: &str) -> bool {
    vmm_command_line(hulld, name).contains("/standby/")
}

/// `/proc/net/if_inet6`'s spelling of the link-local address Linux makes
/// from `mac` (EUI-64).
fn link_local(mac: &str) -> String {
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    assert_eq!(bytes.len(), 6, "{mac}");
    let eui = [
        bytes[0] ^ 2,
        bytes[1],
        bytes[2],
        0xff,
        0xfe,
        bytes[3],
        bytes[4],
        bytes[5],
    ];
    let hex: String = eui.iter().map(|b| format!("{b:02x}")).collect();
    format!("fe80000000000000{hex}")
}

/// Container `name`'s /etc/hostname and /etc/hosts name it, its
/// /etc/resolv.conf has its nameservers, each bound over its root once.
fn assert_own_etc_files(hulld: &Hulld, name: &str) {
    let hostname = hulld.inspect("{{.Config.Hostname}}", name);
    assert_eq!(
        ok(&hulld.docker(&["exec", name, "cat", "/etc/hostname"])),
        format!("{hostname}\n")
    );
    let hosts = ok(&hulld.docker(&["exec", name, "cat", "/etc/hosts"]));
    assert!(hosts.contains(&hostname), "{hosts}");
    let resolv = ok(&hulld.docker(&["exec", name, "cat", "/etc/resolv.conf"]));
    assert!(resolv.starts_with("nameserver "), "{resolv}");
    let mounts = ok(&hulld.docker(&["exec", name, "cat", "/proc/mounts"]));
    for file in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        let binds = mounts.lines().filter(|l| l.split(' ').nth(1) == Some(file)).count();
        assert_eq!(binds, 1, "{file} in {mounts}");
    }
}

fn curl(url: &str) -> String {
    let out = Command::new("curl").args(["-sS", "-m", "5", url]).output().unwrap();
    text(&out.stdout)
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_container_started_while_a_standby_vm_stands_ready_runs_in_it() {
    let (mut hulld, registry, image) = Hulld::with_busybox_args("vm-standby", &["--standby-vms", "1"]).unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    // The first container makes (or finds) the template; a standby of its
    // shape follows it.
    assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "first"])), "first\n");
    // (One hulld started before the template was made, if any, gives way
    // to one whose root is prepared.)
    eventually("a prepared standby VM to stand ready", || {
        let standing = hulld.standing_standbys();
        standing.len() == 1 && standing[0].join("writable").exists()
    });
    let first_standby = hulld.standing_standbys().remove(0);
    // It was told where the last container's command is looked for (as
    // execvp looks), to read it ahead.
    let told: Vec<String> = standby_supervisors(&hulld.data)
        .iter()
        .map(|pid| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned()
        })
        .collect();
    assert!(
        told.iter()
            .any(|cmdline| cmdline.split('\0').any(|arg| arg.ends_with("/echo"))),
        "{told:?}"
    );
    // Until claimed it weighs least beside the VMs of containers.
    let standing = standby_vmms(&hulld);
    assert_eq!(standing.len(), 1, "{standing:?}");
    assert_eq!(cgroup_file(standing[0], "cpu.weight"), "1");
    // ... and its supervisor and VMM are at the lowest priority; hulld
    // spawned the supervisor without a fork, and it made its own session.
    let supervisors = standby_supervisors(&hulld.data);
    assert_eq!(supervisors.len(), 1, "{supervisors:?}");
    assert_eq!(niceness_and_own_session(supervisors[0]), ("19".to_string(), true));
    assert_eq!(stat_field(standing[0], 19), "19");
    // Its root is ready: the image the first container ran, and a writable
    // disk of its own, mounted by its agent.
    let prepared = first_standby.join("writable");
    let prepared_inode = std::fs::metadata(&prepared)
        .unwrap_or_else(|e| panic!("{}: {e}", prepared.display()))
        .ino();

    // run -d returns once the command runs, in the standby's VM: its
    // image and writable disks and its tap were plugged into it.
    let web = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--cpus",
        "0.5",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello from web > /www/index.html && echo started && exec busybox httpd -f -p 80 -h /www",
    ]));
    let web = web.trim().to_string();
    assert!(in_standby_vm(&hulld, "web"), "{}", vmm_command_line(&hulld, "web"));
    assert!(!first_standby.exists(), "the claimed standby's own files went");
    // A new container of that image took the prepared root whole.
    let web_dir = hulld.data.join("containers").join(&web);
    let writable_inode = || std::fs::metadata(web_dir.join("rw.ext4")).unwrap().ino();
    assert_eq!(writable_inode(), prepared_inode, "the standby's writable disk is web's");
    assert!(!web_dir.join("standby-rw.ext4").exists());
    // Its /etc/hosts and /etc/hostname, bound while it stood by, are its own.
    assert_own_etc_files(&hulld, "web");
    // At once: pause and exec find it running.
    ok(&hulld.docker(&["pause", "web"]));
    assert_eq!(hulld.inspect("{{.State.Status}}", "web"), "paused");
    ok(&hulld.docker(&["unpause", "web"]));
    assert_eq!(
        ok(&hulld.docker(&["exec", "web", "cat", "/www/index.html"])),
        "hello from web\n"
    );
    // Its NIC came up before the claim (with no IPv6 address then): its
    // link-local address is made from its own MAC, as in a VM of its own.
    let mac = hulld.inspect("{{.NetworkSettings.MacAddress}}", "web");
    let inet6 = ok(&hulld.docker(&["exec", "web", "cat", "/proc/net/if_inet6"]));
    assert!(inet6.contains(&link_local(&mac)), "{mac}: {inet6}");
    let address = hulld.inspect("{{.NetworkSettings.IPAddress}}", "web");
    assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "IPAddress {address:?}");
    let inside = ok(&hulld.docker(&["exec", "web", "sh", "-c", "ip -4 addr show eth0"]));
    assert!(inside.contains(&format!("inet {address}/")), "{inside}");
    eventually("the published port to serve", || {
        curl("http://127.0.0.1:8080/") == "hello from web\n"
    });
    assert_eq!(ok(&hulld.docker(&["logs", "web"])), "started\n");
    // Its CPU limit is on the standby's VMM's cgroup, and its weight is
    // any VM's again.
    assert_eq!(cgroup_file(vmm_pid(&hulld, "web"), "cpu.max"), "50000 100000");
    assert_eq!(cgroup_file(vmm_pid(&hulld, "web"), "cpu.weight"), "100");
    assert_eq!(stat_field(vmm_pid(&hulld, "web"), 19), "0");
    assert_eq!(niceness_and_own_session(supervisors[0]), ("0".to_string(), true));
    // Its console log is the container's (a quiet guest writes nothing there).
    assert!(hulld.data.join("containers").join(&web).join("console.log").is_file());

    // A new standby stands ready for the next container.
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);

    // Its writes are on its own writable disk: kept across a restart, which
    // takes the next standby.
    ok(&hulld.docker(&["exec", "web", "sh", "-c", "echo kept > /www/note"]));
    ok(&hulld.docker(&["stop", "-t", "1", "web"]));
    ok(&hulld.docker(&["start", "web"]));
    assert!(in_standby_vm(&hulld, "web"));
    // Its own writable disk (the one it took at its first start), not the
    // new standby's prepared one, which was given back.
    assert_eq!(writable_inode(), prepared_inode);
    assert!(!web_dir.join("standby-rw.ext4").exists());
    assert_eq!(ok(&hulld.docker(&["exec", "web", "cat", "/www/note"])), "kept\n");
    eventually("the published port to serve again", || {
        curl("http://127.0.0.1:8080/note") == "kept\n"
    });

    // It moves to a new VMM like any container: its disks are its VM's own.
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);
    let (head, body) = hulld.raw(&format!(
        "POST /containers/{web}/migrate HTTP/1.1\r\nHost: hull\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    assert!(!in_standby_vm(&hulld, "web"), "a VMM of its own now");
    assert_eq!(ok(&hulld.docker(&["exec", "web", "cat", "/www/note"])), "kept\n");
    assert_eq!(curl("http://127.0.0.1:8080/"), "hello from web\n");

    // A new container of another image in a standby prepared from the
    // first: the prepared root is given back, and its own image and
    // writable disk are plugged in; the next standby is prepared from it.
    let other = testkit::oci::busybox_image_with(
        testkit::oci::LayerBuilder::new()
            .file("usr/bin/marker", b"other\n")
            .build(),
    );
    let other = testkit::oci::push_image(&registry, &hulld.work, other, "test/standby-other:v1").unwrap();
    ok(&hulld.docker(&["pull", "-q", &other]));
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);
    let prepared_for_busybox = hulld.standing_standbys().remove(0).join("writable");
    let prepared_inode = std::fs::metadata(&prepared_for_busybox).unwrap().ino();
    let side = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "side",
        &other,
        "sh",
        "-c",
        "echo mine > /note && exec sleep 600",
    ]));
    assert!(in_standby_vm(&hulld, "side"));
    let side_dir = hulld.data.join("containers").join(side.trim());
    assert_ne!(
        std::fs::metadata(side_dir.join("rw.ext4")).unwrap().ino(),
        prepared_inode
    );
    assert_eq!(
        ok(&hulld.docker(&["exec", "side", "cat", "/usr/bin/marker", "/note"])),
        "other\nmine\n"
    );
    // The files bound ahead went with the root given back: its are bound once.
    assert_own_etc_files(&hulld, "side");
    ok(&hulld.docker(&["rm", "-f", "side"]));
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);

    // Without a network its NICs are down again, with no address.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--network",
        "none",
        &image,
        "sleep",
        "600",
    ]));
    assert!(in_standby_vm(&hulld, "quiet"));
    assert_eq!(
        ok(&hulld.docker(&["exec", "quiet", "cat", "/sys/class/net/eth0/operstate"])),
        "down\n"
    );
    let inet6 = ok(&hulld.docker(&["exec", "quiet", "cat", "/proc/net/if_inet6"]));
    assert!(!inet6.contains("eth0"), "{inet6}");
    // Without nameservers the image's resolv.conf stays (this one has
    // none): the one bound ahead is gone, mount and file.
    let mounts = ok(&hulld.docker(&["exec", "quiet", "cat", "/proc/mounts"]));
    assert!(!mounts.contains("/etc/resolv.conf"), "{mounts}");
    assert!(
        !hulld
            .docker(&["exec", "quiet", "sh", "-c", "test -e /etc/resolv.conf"])
            .status
            .success(),
        "an /etc/resolv.conf the image lacks"
    );
    ok(&hulld.docker(&["rm", "-f", "quiet"]));
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);

    // A container with a volume gets a VM of its own; the standby stays.
    let out = ok(&hulld.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        &image,
        "sh",
        "-c",
        "echo in-volume > /data/f && cat /data/f",
    ]));
    assert_eq!(out, "in-volume\n");
    assert_eq!(hulld.standing_standbys().len(), 1, "the standby was not taken");

    // A command that cannot start in a standby fails as in a VM of its own.
    let missing = hulld.docker(&["run", "-d", &image, "no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing.stderr));

    // --rm in a standby leaves nothing.
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);
    assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "done"])), "done\n");
    ok(&hulld.docker(&["rm", "-f", "web"]));
    let removed = hulld.docker(&["ps", "-aq", "--filter", "status=exited"]);
    for id in text(&removed.stdout).lines() {
        ok(&hulld.docker(&["rm", id]));
    }
    eventually("the next standby VM", || hulld.standing_standbys().len() == 1);

    // The standby ends with hulld: no VMM or supervisor of it is left.
    assert_eq!(standby_supervisors(&hulld.data).len(), 1);
    hulld.kill();
    eventually("the standby to end with hulld", || {
        hulld.processes_of("hull-(vmm|shim)").is_empty() && standby_supervisors(&hulld.data).is_empty()
    });
}
