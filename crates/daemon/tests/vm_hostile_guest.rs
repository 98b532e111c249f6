//! VM test: a hostile container, root in its guest, turns on the host side
//! of its VM (`hull-hostile`, from crates/hostile-guest): it floods the
//! console, opens vsock connections to every port, takes the agent's own
//! connection to the host and floods it, reports an impossible exit status
//! through it, and sends it a frame header claiming 4 GiB. Each attack ends
//! at most its own container: the console log stays capped, hulld keeps
//! its memory, and a calm container beside them runs on and answers.

use std::path::PathBuf;
use std::time::Instant;

use testkit::hulld::{eventually, ok, text, Hulld};
use testkit::oci::{busybox_image_with, hostile_tools_layer, push_image, Registry};

/// A process's memory figure from /proc/PID/status, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

fn hulld_pid(hulld: &Hulld) -> u32 {
    hulld.processes_of("hulld").first().expect("hulld runs").0
}

/// The calm container still runs, answers an exec and keeps logging.
fn calm_is_unharmed(hulld: &Hulld) {
    assert_eq!(hulld.inspect("{{.State.Running}}", "calm"), "true");
    assert_eq!(ok(&hulld.docker(&["exec", "calm", "echo", "unharmed"])), "unharmed\n");
    let ticks = |h: &Hulld| ok(&h.docker(&["logs", "calm"])).lines().count();
    let before = ticks(hulld);
    eventually("the calm container's next tick", || ticks(hulld) > before);
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_hostile_guest_ends_only_its_own_container() {
    // A small console cap, reached quickly: the console costs one VM exit a
    // byte, slow under the test host's emulation.
    std::env::set_var("HULL_CONSOLE_LOG_MAX", "65536");
    let cap = runtime::console::log_max();
    let hulld = Hulld::start("vm-hostile").unwrap();
    let registry = Registry::start("vm-hostile", None).unwrap();
    let tools = hostile_tools_layer();
    let image = push_image(&registry, &hulld.work, busybox_image_with(tools), "test/hostile:v1").unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    // The first container makes (or finds, testkit::template_cache) the template every later one is cloned from.
    assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "first"])), "first\n");
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "calm",
        &image,
        "sh",
        "-c",
        "while true; do echo tick; sleep 1; done",
    ]));
    eventually("the calm container's first tick", || {
        ok(&hulld.docker(&["logs", "calm"])).contains("tick")
    });
    let daemon = hulld_pid(&hulld);
    let daemon_before = memory_kib(daemon, "VmRSS:");

    // The console: more than two logs' worth, of which the host keeps two.
    let flood = 2 * cap + 30_000;
    let started = Instant::now();
    let out = ok(&hulld.docker(&[
        "run",
        "--name",
        "noisy",
        &image,
        "hull-hostile",
        &format!("console:{flood}"),
        "ports:1-1100",
    ]));
    eprintln!("console flood and port scan: {:?}\n{out}", started.elapsed());
    assert!(out.contains("hull-hostile: console:"), "{out}");
    assert!(out.contains("connections accepted"), "{out}");
    let noisy = hulld.inspect("{{.Id}}", "noisy");
    let log = hulld.data.join("containers").join(&noisy).join("console.log");
    let older = PathBuf::from(format!("{}.1", log.display()));
    let (size, older_size) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&older).unwrap().len(),
    );
    assert!(size <= cap, "console.log holds {size} bytes");
    assert_eq!(older_size, cap, "console.log.1 is a full log");
    let tail = std::fs::read_to_string(&log).unwrap();
    assert!(
        tail.contains("hull-hostile floods the console"),
        "the newest output is kept"
    );
    calm_is_unharmed(&hulld);

    // In its own PID namespace (Docker's default) the container does not
    // see the agent at all: PID 1 is itself.
    let out = hulld.docker(&["run", "--rm", &image, "hull-hostile", "hijack-exit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("holds no connection to the host"),
        "{}",
        text(&out.stdout)
    );
    // Beside the agent (`--pid host`, the VM's namespace) but with Docker's
    // default capabilities (no CAP_SYS_PTRACE) and an agent that is not
    // dumpable, it cannot take the agent's connection either.
    let out = hulld.docker(&["run", "--rm", "--pid", "host", &image, "hull-hostile", "hijack-exit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("pidfd_getfd on the agent (PID 1): Operation not permitted"),
        "{}",
        text(&out.stdout)
    );
    calm_is_unharmed(&hulld);

    // Beside it and granted CAP_SYS_PTRACE (or through a guest kernel bug)
    // it can: a flood
    // of output in the agent's name, then an exit status no process can
    // have. The host takes both.
    let out = hulld.docker(&[
        "run",
        "--name",
        "hijacker",
        "--pid",
        "host",
        "--cap-add",
        "SYS_PTRACE",
        &image,
        "hull-hostile",
        "hijack-flood:16777216",
        "hijack-exit",
    ]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert_eq!(hulld.inspect("{{.State.ExitCode}}", "hijacker"), "255");
    calm_is_unharmed(&hulld);

    // A frame header claiming 4 GiB, then noise: refused, and only this
    // container ends, with the reason.
    let out = hulld.docker(&[
        "run",
        "--name",
        "garbler",
        "--pid",
        "host",
        "--cap-add",
        "SYS_PTRACE",
        &image,
        "hull-hostile",
        "hijack-garbage",
    ]);
    assert!(!out.status.success());
    assert_eq!(hulld.inspect("{{.State.Status}}", "garbler"), "exited");
    let error = hulld.inspect("{{.State.Error}}", "garbler");
    assert!(error.contains("exceeds"), "the refusal says why: {error}");
    calm_is_unharmed(&hulld);

    let daemon_after = memory_kib(daemon, "VmRSS:");
    eprintln!("hulld: {daemon_before} KiB before, {daemon_after} KiB after");
    assert!(
        daemon_after < daemon_before + 32 * 1024,
        "hulld grew from {daemon_before} to {daemon_after} KiB"
    );
    let log = hulld.log();
    assert!(!log.contains("panicked"), "hulld's log: {log}");
    ok(&hulld.docker(&["rm", "-f", "calm", "noisy", "hijacker", "garbler"]));
}
