//! VM tests: the real `docker` CLI runs containers through hulld, each in
//! its own microVM cloned from the template: foreground and detached runs,
//! exit statuses, stdout and stderr kept apart, standard input, logs kept
//! after exit, stop/kill/start/restart/wait, restart policies, a daemon
//! restart while containers run, many `--rm` runs in a row and at once
//! with nothing left behind.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use testkit::hulld::{eventually, ok, text, Hulld};
use testkit::oci::{busybox_image, push_image, Registry};

fn setup(name: &str) -> (Hulld, Registry, String) {
    let hulld = Hulld::start(name).unwrap();
    let registry = Registry::start(name, None).unwrap();
    let image = push_image(
        &registry,
        &hulld.work,
        busybox_image(json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]})),
        "test/box:v1",
    )
    .unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    // The first container makes the template every later one is cloned from.
    assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "first"])), "first\n");
    (hulld, registry, image)
}

fn no_leftovers(hulld: &Hulld) {
    eventually("every supervisor to end", || hulld.running_supervisors().is_empty());
    // Supervisors and VMMs name a path in the data directory (hulld itself does too).
    let pattern = format!("hull-(vmm|shim) .*{}", hulld.data.display());
    let found = std::process::Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    let left: Vec<String> = text(&found.stdout)
        .lines()
        .map(|pid| {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("{pid}: {}", cmdline.replace('\0', " "))
        })
        .collect();
    assert!(left.is_empty(), "processes of this data directory are left: {left:#?}");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn docker_run_in_the_foreground_and_detached() {
    let (mut hulld, _registry, image) = setup("vm-run");

    // Foreground: output, separate streams, the exit status; --rm leaves nothing.
    let out = hulld.docker(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("out\n"), "{stdout}");
    assert_eq!(
        stdout.lines().nth(1).map(str::len),
        Some(12),
        "the hostname is the short ID: {stdout}"
    );
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])).trim(), "", "--rm removed it");

    // Standard input, to its end.
    let mut child = hulld
        .docker_command(&["run", "-i", "--rm", &image, "sh", "-c", "wc -l; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out), "3\ndone\n");

    // Environment, user, workdir, hostname and name.
    let out = ok(&hulld.docker(&[
        "run",
        "--name",
        "conf",
        "-e",
        "GREETING=hi",
        "-u",
        "1000",
        "-w",
        "/tmp",
        "--hostname",
        "box",
        &image,
        "sh",
        "-c",
        "echo $GREETING $(id -u) $(pwd) $(hostname)",
    ]));
    assert_eq!(out, "hi 1000 /tmp box\n");
    assert_eq!(
        hulld.inspect("{{.State.Status}} {{.State.ExitCode}}", "conf"),
        "exited 0"
    );
    assert_eq!(
        ok(&hulld.docker(&["logs", "conf"])),
        "hi 1000 /tmp box\n",
        "logs outlive the run"
    );

    // Detached: runs on, logs stream, stop sends SIGTERM.
    let id = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        &image,
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 5' TERM; while true; do sleep 1; done",
    ]))
    .trim()
    .to_string();
    assert_eq!(id.len(), 64);
    eventually("the detached container's output", || {
        text(&hulld.docker(&["logs", "sleeper"]).stdout) == "started\n"
    });
    assert_eq!(hulld.inspect("{{.State.Running}}", "sleeper"), "true");
    let ps = ok(&hulld.docker(&["ps", "--format", "{{.Names}} {{.Status}}"]));
    assert!(ps.starts_with("sleeper Up"), "{ps}");
    let refused = hulld.docker(&["rm", "sleeper"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("container is running"),
        "{}",
        text(&refused.stderr)
    );

    // hulld restarts; the container did not notice.
    hulld.restart().unwrap();
    assert_eq!(hulld.inspect("{{.State.Running}}", "sleeper"), "true");

    // exec into it (after the restart): streams, status, env, user, workdir, stdin.
    let out = hulld.docker(&["exec", "sleeper", "sh", "-c", "echo in; echo err >&2; exit 4"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(4), "in\n".into(), "err\n".into())
    );
    let out = ok(&hulld.docker(&[
        "exec",
        "-e",
        "X=1",
        "-u",
        "1000",
        "-w",
        "/tmp",
        "sleeper",
        "sh",
        "-c",
        "echo $X $(id -u) $(pwd) $PATH",
    ]));
    assert_eq!(out, "1 1000 /tmp /bin\n", "the image's env is inherited");
    let mut child = hulld
        .docker_command(&["exec", "-i", "sleeper", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"12345").unwrap();
    assert_eq!(ok(&child.wait_with_output().unwrap()).trim(), "5");
    let missing = hulld.docker(&["exec", "sleeper", "no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing.stderr));
    let follow = hulld
        .docker_command(&["logs", "-f", "sleeper"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ok(&hulld.docker(&["stop", "sleeper"]));
    let followed = follow.wait_with_output().unwrap();
    assert_eq!(ok(&followed), "started\nbye\n", "logs -f ends when the container does");
    assert_eq!(
        hulld.inspect("{{.State.Status}} {{.State.ExitCode}}", "sleeper"),
        "exited 5"
    );
    let refused = hulld.docker(&["exec", "sleeper", "true"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("is not running"),
        "{}",
        text(&refused.stderr)
    );

    // Start again (the writable disk is kept), kill, wait.
    ok(&hulld.docker(&["start", "sleeper"]));
    eventually("the second run's output", || {
        text(&hulld.docker(&["logs", "sleeper"]).stdout) == "started\nbye\nstarted\n"
    });
    ok(&hulld.docker(&["kill", "sleeper"]));
    assert_eq!(ok(&hulld.docker(&["wait", "sleeper"])).trim(), "137");
    let timestamps = ok(&hulld.docker(&["logs", "-t", "--tail", "1", "sleeper"]));
    assert!(
        timestamps.ends_with("Z started\n") && timestamps.starts_with("20"),
        "{timestamps}"
    );

    let out = ok(&hulld.docker(&[
        "run",
        "--name",
        "disk",
        &image,
        "sh",
        "-c",
        "echo more >> /kept; cat /kept",
    ]));
    assert_eq!(out, "more\n");
    let again = ok(&hulld.docker(&["start", "-a", "disk"]));
    assert_eq!(again, "more\nmore\n", "a restarted container keeps its writes");

    ok(&hulld.docker(&["restart", "-t", "1", "sleeper"]));
    assert_eq!(hulld.inspect("{{.State.Running}}", "sleeper"), "true");
    // Its trap is set once it has said so.
    eventually("the third run's output", || {
        text(&hulld.docker(&["logs", "sleeper"]).stdout)
            .matches("started")
            .count()
            == 3
    });
    let waiter = hulld
        .docker_command(&["wait", "sleeper"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ok(&hulld.docker(&["stop", "-t", "30", "sleeper"]));
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(text(&waited.stdout).trim(), "5", "wait answers with the exit status");
    ok(&hulld.docker(&["start", "sleeper"]));
    ok(&hulld.docker(&["rm", "-f", "sleeper"]));
    let gone = hulld.docker(&["inspect", "sleeper"]);
    assert!(text(&gone.stderr).contains("No such"), "{}", text(&gone.stderr));
    // Limits: the jailed VMM's cgroup takes --cpus as CPU time; --pids-limit
    // holds inside the guest, for the command and its execs together.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--cpus",
        "0.5",
        "--pids-limit",
        "6",
        &image,
        "sleep",
        "600",
    ]));
    assert_eq!(hulld.inspect("{{.HostConfig.PidsLimit}}", "limited"), "6");
    let id = hulld.inspect("{{.Id}}", "limited");
    let cgroup = vmm_cgroup(&id[..16]);
    assert_eq!(
        std::fs::read_to_string(cgroup.join("cpu.max")).unwrap().trim(),
        "50000 100000"
    );
    assert_eq!(
        std::fs::read_to_string(cgroup.join("memory.max")).unwrap().trim(),
        ((256 + 128) << 20).to_string(),
        "the guest's memory and the VMM's own"
    );
    let forks = hulld.docker(&[
        "exec",
        "limited",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 60 & done; echo tried",
    ]);
    assert!(
        text(&forks.stderr).contains("can't fork"),
        "the seventh process is refused: {}",
        text(&forks.stderr)
    );
    ok(&hulld.docker(&["rm", "-f", "limited"]));

    ok(&hulld.docker(&["rm", "conf", "disk"]));
    no_leftovers(&hulld);
}

/// The cgroup of the jailed VMM whose socket directory is the container's
/// (`run/c/ID16`).
fn vmm_cgroup(id16: &str) -> std::path::PathBuf {
    let marker = format!("/c/{id16}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("hull-vmm") || !cmdline.contains(&marker) {
            continue;
        }
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        // The jailed VMM (the waiter stays in its parent's group).
        if let Some(path) = cgroup.trim().strip_prefix("0::").filter(|p| p.contains("/hull/vmm-")) {
            return std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        }
    }
    panic!("no jailed hull-vmm of container {id16}");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn restart_policies_and_many_containers() {
    let (hulld, _registry, image) = setup("vm-many");

    // on-failure:2 runs it three times in all.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        &image,
        "sh",
        "-c",
        "echo try; exit 1",
    ]));
    eventually("two restarts", || {
        hulld.inspect("{{.RestartCount}} {{.State.Status}}", "flaky") == "2 exited"
            && text(&hulld.docker(&["logs", "flaky"]).stdout) == "try\ntry\ntry\n"
    });
    ok(&hulld.docker(&["rm", "flaky"]));

    // The Python Docker SDK runs containers too (foreground, detached, logs, kill, wait).
    let sdk = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/docker_sdk.py"))
        .arg(&hulld.socket)
        .arg(&image)
        .arg("--run")
        .output()
        .unwrap();
    assert_eq!(ok(&sdk).trim(), "sdk ok", "{}", text(&sdk.stderr));

    // A hundred in a row, and ten at once; nothing is left behind.
    let runs = 100;
    for i in 0..runs {
        let out = hulld.docker(&["run", "--rm", &image, "echo", &format!("run {i}")]);
        assert_eq!(ok(&out), format!("run {i}\n"));
    }
    let children: Vec<_> = (0..10)
        .map(|i| {
            hulld
                .docker_command(&[
                    "run",
                    "--rm",
                    &image,
                    "sh",
                    "-c",
                    &format!("sleep 1; echo parallel {i}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        assert_eq!(ok(&child.wait_with_output().unwrap()), format!("parallel {i}\n"));
    }
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])).trim(), "");
    no_leftovers(&hulld);
    let dirs = std::fs::read_dir(hulld.data.join("containers")).map_or(0, |d| d.count());
    assert_eq!(dirs, 0, "every container directory is gone");
}

/// The container's terminal size and the like, read through `docker exec`.
fn exec_out(hulld: &Hulld, container: &str, command: &str) -> String {
    ok(&hulld.docker(&["exec", container, "sh", "-c", command]))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn terminals_attach_pause_stats_and_top() {
    let (hulld, _registry, image) = setup("vm-tty");

    // -it: a pty in the guest, of the client terminal's size.
    let out = hulld.in_terminal(
        &format!("stty rows 40 cols 100; docker run -it --rm {image} sh -c 'tty; stty size; echo $TERM; exit 7'"),
        b"",
    );
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{screen}{}", text(&out.stderr));
    assert!(screen.contains("/dev/pts/0"), "{screen}");
    assert!(
        screen.contains("40 100"),
        "the guest terminal has the client's size: {screen}"
    );
    assert!(screen.contains("xterm"), "{screen}");
    // Typed input reaches an interactive shell, which answers on the terminal.
    let out = hulld.in_terminal(
        &format!("docker run -it --rm {image} sh"),
        b"echo hello-$((6*7))\nexit 3\n",
    );
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{screen}{}", text(&out.stderr));
    assert!(screen.contains("hello-42"), "{screen}");

    // A detached container with a terminal: exec -it gets its own, resizes reach both.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "-t",
        "--name",
        "term",
        &image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]));
    let out = hulld.in_terminal("stty rows 30 cols 90; docker exec -it term sh -c 'tty; stty size'", b"");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}{}\n{}", text(&out.stderr), hulld.log());
    assert!(screen.contains("/dev/pts/1") && screen.contains("30 90"), "{screen}");
    let (head, _) = hulld.raw(
        "POST /containers/term/resize?h=50&w=120 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(exec_out(&hulld, "term", "stty -F /dev/pts/0 size"), "50 120\n");
    let (head, body) = hulld.raw(
        "POST /containers/term/resize?h=tall&w=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("invalid terminal height"),
        "{head}{body}"
    );
    let logs = ok(&hulld.docker(&["logs", "term"]));
    assert_eq!(logs, "", "nothing was written to the terminal");

    // top and stats read from inside the VM.
    let top = ok(&hulld.docker(&["top", "term"]));
    assert!(top.starts_with("UID"), "{top}");
    assert!(top.contains("sh -c trap"), "the container's command is listed: {top}");
    assert!(!top.contains("hull-agent"), "the agent is not the container's: {top}");
    let refused = hulld.docker(&["top", "term", "aux"]);
    assert!(
        text(&refused.stderr).contains("ps options are not supported"),
        "{}",
        text(&refused.stderr)
    );
    let stats = ok(&hulld.docker(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}} {{.PIDs}} | {{.BlockIO}}",
        "term",
    ]));
    let fields: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"term"), "{stats}");
    assert!(stats.contains("/ 256MiB"), "the limit is the VM's memory: {stats}");
    let (memory, block_io) = stats.split_once(" | ").unwrap();
    assert!(!memory.contains(" 0B /"), "the guest uses some memory: {stats}");
    assert!(!block_io.starts_with("0B /"), "the guest read its image disk: {stats}");

    // pause stops the whole VM; unpause resumes it where it was.
    ok(&hulld.docker(&["pause", "term"]));
    assert_eq!(
        hulld.inspect("{{.State.Status}} {{.State.Paused}}", "term"),
        "paused true"
    );
    let ps = ok(&hulld.docker(&["ps", "--filter", "status=paused", "--format", "{{.Names}} {{.Status}}"]));
    assert!(ps.starts_with("term Up") && ps.contains("(Paused)"), "{ps}");
    let refused = hulld.docker(&["exec", "term", "true"]);
    assert!(text(&refused.stderr).contains("is paused"), "{}", text(&refused.stderr));
    let refused = hulld.docker(&["pause", "term"]);
    assert!(
        text(&refused.stderr).contains("already paused"),
        "{}",
        text(&refused.stderr)
    );
    ok(&hulld.docker(&["unpause", "term"]));
    assert_eq!(hulld.inspect("{{.State.Status}}", "term"), "running");
    assert_eq!(exec_out(&hulld, "term", "echo alive"), "alive\n");
    // Stopping a paused container resumes it so it can act on SIGTERM.
    ok(&hulld.docker(&["pause", "term"]));
    ok(&hulld.docker(&["stop", "-t", "20", "term"]));
    assert_eq!(
        hulld.inspect("{{.State.Status}} {{.State.ExitCode}}", "term"),
        "exited 0"
    );
    let events = ok(&hulld.docker(&[
        "events",
        "--since",
        "10m",
        "--until",
        "0s",
        "--filter",
        "container=term",
        "--format",
        "{{.Action}}",
    ]));
    assert!(events.contains("pause\n") && events.contains("unpause\n"), "{events}");

    // attach to a running container: its output from then on, input to it.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "-i",
        "--name",
        "reader",
        &image,
        "sh",
        "-c",
        "echo ready; read line; echo got $line; exit 4",
    ]));
    eventually("the reader's first line", || {
        text(&hulld.docker(&["logs", "reader"]).stdout) == "ready\n"
    });
    let mut child = hulld
        .docker_command(&["attach", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(4), "got hello\n".to_string()),
        "{}",
        text(&out.stderr)
    );
    let refused = hulld.docker(&["attach", "reader"]);
    assert!(
        text(&refused.stderr).contains("stopped container"),
        "{}",
        text(&refused.stderr)
    );
    // A client that vanishes mid-attach (killed) hurts neither the container nor hulld.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "-i",
        "--name",
        "chatty",
        &image,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
    ]));
    let mut client = hulld
        .docker_command(&["attach", "chatty"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    std::io::Read::read_exact(client.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"tick\n");
    client.kill().unwrap();
    client.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hulld.inspect("{{.State.Running}}", "chatty"), "true");
    assert_eq!(exec_out(&hulld, "chatty", "echo still here"), "still here\n");
    ok(&hulld.docker(&["rm", "-f", "chatty"]));

    // Files of a running container: cp both ways, diff, export.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "files",
        &image,
        "sh",
        "-c",
        "mkdir -p /data/sub && echo hi > /data/a && rm /bin/wc && touch /ready; trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]));
    eventually("the container's files", || {
        hulld
            .docker(&["exec", "files", "sh", "-c", "test -f /ready"])
            .status
            .success()
    });
    let host = hulld.work.join("cp");
    std::fs::create_dir_all(&host).unwrap();
    ok(&hulld.docker(&["cp", "files:/data", host.join("out").to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(host.join("out/a")).unwrap(), "hi\n");
    assert!(host.join("out/sub").is_dir());
    std::fs::write(host.join("in.txt"), "from the host\n").unwrap();
    ok(&hulld.docker(&["cp", host.join("in.txt").to_str().unwrap(), "files:/data/"]));
    assert_eq!(exec_out(&hulld, "files", "cat /data/in.txt"), "from the host\n");
    ok(&hulld.docker(&["cp", host.join("in.txt").to_str().unwrap(), "files:/data/renamed.txt"]));
    assert_eq!(exec_out(&hulld, "files", "cat /data/renamed.txt"), "from the host\n");
    let tar = hulld.docker(&["cp", "files:/data/a", "-"]);
    assert!(tar.status.success() && tar.stdout.windows(3).any(|w| w == b"hi\n"));
    let missing = hulld.docker(&["cp", "files:/nowhere", host.to_str().unwrap()]);
    assert!(
        text(&missing.stderr).contains("Could not find the file /nowhere in container"),
        "{}",
        text(&missing.stderr)
    );
    let diff = ok(&hulld.docker(&["diff", "files"]));
    for line in [
        "A /data",
        "A /data/a",
        "A /data/in.txt",
        "C /bin",
        "D /bin/wc",
        "A /ready",
    ] {
        assert!(diff.lines().any(|l| l == line), "{line} in {diff}");
    }
    assert!(!diff.contains("/proc"), "the kernel's mounts are not changes: {diff}");
    let exported = host.join("files.tar");
    ok(&hulld.docker(&["export", "-o", exported.to_str().unwrap(), "files"]));
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&exported)
        .output()
        .unwrap();
    let names = text(&listing.stdout);
    assert!(
        names.lines().any(|l| l == "bin/busybox") && names.lines().any(|l| l == "data/a"),
        "{names}"
    );
    assert!(
        !names.lines().any(|l| l == "bin/wc"),
        "deleted files are not exported: {names}"
    );
    assert!(
        !names.contains("proc/self"),
        "the kernel's mounts are not entered: {names}"
    );
    assert_eq!(ok(&hulld.docker(&["port", "files"])), "", "no ports are published");

    // A stopped container's files: its VM is started without its command for each operation.
    ok(&hulld.docker(&["stop", "-t", "20", "files"]));
    let files_id = hulld.inspect("{{.Id}}", "files");
    let console = hulld.data.join("containers").join(&files_id).join("console.log");
    let last_console = std::fs::metadata(&console).unwrap().modified().unwrap();
    let copied = host.join("stopped.txt");
    ok(&hulld.docker(&["cp", "files:/data/in.txt", copied.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "from the host\n");
    ok(&hulld.docker(&["cp", host.join("in.txt").to_str().unwrap(), "files:/data/later.txt"]));
    let diff = ok(&hulld.docker(&["diff", "files"]));
    assert!(diff.lines().any(|l| l == "A /data/later.txt"), "{diff}");
    assert_eq!(hulld.inspect("{{.State.Status}}", "files"), "exited", "still stopped");
    assert_eq!(
        std::fs::metadata(&console).unwrap().modified().unwrap(),
        last_console,
        "the last run's console is kept"
    );
    ok(&hulld.docker(&["start", "files"]));
    eventually("the restarted container", || {
        hulld
            .docker(&["exec", "files", "sh", "-c", "test -f /data/later.txt"])
            .status
            .success()
    });
    ok(&hulld.docker(&["rm", "-f", "files"]));
    // The usual way to put a file into a container before its first run.
    ok(&hulld.docker(&["create", "--name", "fresh", &image, "cat", "/config.txt"]));
    ok(&hulld.docker(&["cp", host.join("in.txt").to_str().unwrap(), "fresh:/config.txt"]));
    assert_eq!(ok(&hulld.docker(&["start", "-a", "fresh"])), "from the host\n");
    let missing = hulld.docker(&["cp", "fresh:/nowhere", host.to_str().unwrap()]);
    assert!(
        text(&missing.stderr).contains("Could not find the file"),
        "{}",
        text(&missing.stderr)
    );
    ok(&hulld.docker(&["rm", "fresh"]));

    ok(&hulld.docker(&["rm", "term", "reader"]));
    no_leftovers(&hulld);
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn volumes_keep_data_between_containers() {
    let (hulld, _registry, image) = setup("vm-vol");

    // A named volume starts empty, keeps what one container wrote for the next.
    ok(&hulld.docker(&["volume", "create", "data"]));
    let out = ok(&hulld.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/srv/data",
        &image,
        "sh",
        "-c",
        "ls -A /srv/data; echo kept > /srv/data/f; echo written",
    ]));
    assert_eq!(out, "written\n", "a new volume is empty (no lost+found)");
    let out = ok(&hulld.docker(&["run", "--rm", "-v", "data:/in:ro", &image, "cat", "/in/f"]));
    assert_eq!(out, "kept\n");
    // Read-only means read-only; the image's own files are untouched.
    let out = hulld.docker(&["run", "--rm", "-v", "data:/in:ro", &image, "sh", "-c", "echo x > /in/g"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("Read-only"), "{}", text(&out.stderr));
    // --mount type=volume creates the volume when missing.
    let out = ok(&hulld.docker(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=made,target=/m",
        &image,
        "sh",
        "-c",
        "echo m > /m/x; cat /m/x",
    ]));
    assert_eq!(out, "m\n");
    // An empty volume starts with what the image has where it is mounted
    // (the shell itself then runs from the volume).
    let out = ok(&hulld.docker(&["run", "--rm", "-v", "tools:/bin", &image, "sh", "-c", "ls /bin"]));
    assert!(out.lines().any(|l| l == "sleep"), "{out}");
    let names = ok(&hulld.docker(&["volume", "ls", "-q"]));
    assert_eq!(names.lines().collect::<Vec<_>>(), ["data", "made", "tools"]);

    // One running VM at a time has a volume; a volume in use is not removed.
    ok(&hulld.docker(&["run", "-d", "--name", "holder", "-v", "data:/d", &image, "sleep", "300"]));
    assert_eq!(
        hulld.inspect("{{range .Mounts}}{{.Name}} {{.Destination}} {{.RW}}{{end}}", "holder"),
        "data /d true"
    );
    let out = hulld.docker(&["run", "--rm", "-v", "data:/d", &image, "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("in use"), "{}", text(&out.stderr));
    let out = hulld.docker(&["volume", "rm", "data"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("in use"), "{}", text(&out.stderr));
    ok(&hulld.docker(&["rm", "-f", "holder"]));

    // -v /path: an anonymous volume, removed with its container by rm -v.
    ok(&hulld.docker(&[
        "run",
        "--name",
        "anon",
        "-v",
        "/scratch",
        &image,
        "sh",
        "-c",
        "echo a > /scratch/a",
    ]));
    let anon = hulld.inspect("{{range .Mounts}}{{.Name}}{{end}}", "anon");
    assert_eq!(anon.len(), 64, "an anonymous volume's name: {anon}");
    assert!(ok(&hulld.docker(&["volume", "ls", "-q"])).contains(&anon));
    ok(&hulld.docker(&["rm", "-v", "anon"]));
    assert!(!ok(&hulld.docker(&["volume", "ls", "-q"])).contains(&anon));

    // Host directories cannot be bound into a VM: a clear refusal.
    let out = hulld.docker(&["run", "--rm", "-v", "/etc:/host-etc", &image, "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("host paths"), "{}", text(&out.stderr));

    ok(&hulld.docker(&["volume", "rm", "data", "made", "tools"]));
    assert_eq!(ok(&hulld.docker(&["volume", "ls", "-q"])), "");
    no_leftovers(&hulld);
}
