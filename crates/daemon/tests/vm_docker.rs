//! VM tests: the real `docker` CLI runs containers through hulld, each in
//! its own microVM cloned from the template: foreground and detached runs,
//! exit statuses, stdout and stderr kept apart, standard input, logs kept
//! after exit, stop/kill/start/restart/wait, restart policies, a daemon
//! restart while containers run, many `--rm` runs in a row and at once
//! with nothing left behind.

use std::io::Write;
use std::process::Stdio;

use testkit::hulld::{cgroup_dir, eventually, ok, text, Hulld};

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn docker_run_in_the_foreground_and_detached() {
    let (mut hulld, _registry, image) = Hulld::with_busybox("vm-run").unwrap();

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
        "--group-add",
        "777",
        "--group-add",
        "4242",
        &image,
        "sh",
        "-c",
        "echo $GREETING $(id -u) $(pwd) $(hostname) $(id -G)",
    ]));
    assert_eq!(out, "hi 1000 /tmp box 0 777 4242\n");
    let unknown = hulld.docker(&["run", "--rm", "--group-add", "nosuch", &image, "true"]);
    assert_eq!(unknown.status.code(), Some(125), "{}", text(&unknown.stderr));
    assert!(
        text(&unknown.stderr).contains("unable to find group nosuch"),
        "{}",
        text(&unknown.stderr)
    );
    assert_eq!(
        hulld.inspect("{{.State.Status}} {{.State.ExitCode}}", "conf"),
        "exited 0"
    );
    assert_eq!(
        ok(&hulld.docker(&["logs", "conf"])),
        "hi 1000 /tmp box 0 777 4242\n",
        "logs outlive the run"
    );

    // Capabilities as in Docker: its default set (no CAP_NET_ADMIN: root
    // cannot change the guest's network), changed by --cap-add and
    // --cap-drop, the container's for its execs, none for another user.
    let out = ok(&hulld.docker(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "grep CapEff /proc/self/status; busybox ip link add d0 type dummy 2>&1; true",
    ]));
    assert!(
        out.starts_with("CapEff:\t00000000a80425fb\n"),
        "Docker's default set: {out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "capped",
        "--cap-add",
        "net_admin",
        "--cap-drop",
        "MKNOD",
        &image,
        "sleep",
        "600",
    ]));
    let effective = |args: &[&str]| {
        let mut exec = vec!["exec"];
        exec.extend_from_slice(args);
        exec.extend_from_slice(&["capped", "busybox", "grep", "CapEff", "/proc/self/status"]);
        ok(&hulld.docker(&exec))
    };
    assert_eq!(
        effective(&[]),
        "CapEff:\t00000000a00435fb\n",
        "NET_ADMIN added, MKNOD dropped"
    );
    assert_eq!(effective(&["-u", "1000"]), "CapEff:\t0000000000000000\n");
    assert_eq!(
        hulld.inspect("{{.HostConfig.CapAdd}} {{.HostConfig.CapDrop}}", "capped"),
        "[CAP_NET_ADMIN] [CAP_MKNOD]"
    );
    // Its own PID namespace, as under Docker: the command is PID 1 and
    // sees only its own processes; an exec joins it, and `docker top`
    // still lists them.
    assert_eq!(
        ok(&hulld.docker(&["exec", "capped", "cat", "/proc/1/cmdline"])),
        "sleep\x00600\x00"
    );
    let listed = ok(&hulld.docker(&[
        "exec",
        "capped",
        "sh",
        "-c",
        "echo $$; for p in /proc/[0-9]*; do echo ${p#/proc/}; done",
    ]));
    let mut lines = listed.lines();
    let shell = lines.next().unwrap_or_default().to_string();
    let mut seen: Vec<&str> = lines.collect();
    seen.sort_unstable();
    let mut expected = vec!["1", shell.as_str()];
    expected.sort_unstable();
    assert_eq!(seen, expected, "only the command and the exec: {listed}");
    assert!(ok(&hulld.docker(&["top", "capped"])).contains("sleep 600"));
    // Its writable disk holds the file system's metadata and what it
    // wrote, no more: the guest kernel has no inode tables to zero there
    // (it would write them out, 2 MiB a group, within seconds of the start).
    let id = hulld.inspect("{{.Id}}", "capped");
    let disk = hulld.data.join("containers").join(&id).join("rw.ext4");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&disk).unwrap()) * 512;
    assert!(allocated < 1 << 20, "{} allocates {allocated} bytes", disk.display());
    ok(&hulld.docker(&["rm", "-f", "capped"]));
    // `--pid host`: the VM's namespace, where the agent (/init) is PID 1.
    let out = ok(&hulld.docker(&[
        "run",
        "--rm",
        "--pid",
        "host",
        &image,
        "sh",
        "-c",
        "cat /proc/1/comm; echo $$",
    ]));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("init"), "{out}");
    assert_ne!(lines.next(), Some("1"), "{out}");
    assert_eq!(
        ok(&hulld.docker(&["run", "--rm", &image, "sh", "-c", "echo $$"])),
        "1\n"
    );
    // `--init`: Docker's docker-init is PID 1, the command its child.
    assert_eq!(
        ok(&hulld.docker(&["run", "--rm", "--init", &image, "sh", "-c", "cat /proc/1/comm; echo $$"])),
        "docker-init\n2\n"
    );
    let none = ok(&hulld.docker(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        &image,
        "busybox",
        "grep",
        "CapEff",
        "/proc/self/status",
    ]));
    assert_eq!(none, "CapEff:\t0000000000000000\n");

    // Logs rotate as Docker's do: at most max-file files of about max-size
    // bytes; `logs` reads the kept files, oldest first.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        &image,
        "sh",
        "-c",
        "i=1; while [ $i -le 400 ]; do echo $i; i=$((i+1)); done",
    ]));
    assert_eq!(ok(&hulld.docker(&["wait", "chatty"])).trim(), "0");
    let log = std::path::PathBuf::from(hulld.inspect("{{.LogPath}}", "chatty"));
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", log.display()));
    assert!(log.exists() && rotated(1).exists() && !rotated(2).exists());
    for file in [log.clone(), rotated(1)] {
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size < 1000 + 100, "{file:?} holds {size} bytes");
    }
    let kept: Vec<u32> = ok(&hulld.docker(&["logs", "chatty"]))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(kept.len() > 10 && kept.len() < 60, "{kept:?}");
    assert_eq!(kept, (401 - kept.len() as u32..=400).collect::<Vec<_>>());
    // `logs -f` straight after `run -d` waits for the log, then follows it to the end.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "fast",
        &image,
        "sh",
        "-c",
        "echo hi; sleep 2; echo bye",
    ]));
    assert_eq!(ok(&hulld.docker(&["logs", "-f", "fast"])), "hi\nbye\n");
    ok(&hulld.docker(&["rm", "fast"]));
    // `none` keeps nothing to read, yet an attached client gets the output.
    let quiet = ok(&hulld.docker(&["run", "--name", "quiet", "--log-driver", "none", &image, "echo", "hi"]));
    assert_eq!(quiet, "hi\n");
    let unread = hulld.docker(&["logs", "quiet"]);
    assert!(
        text(&unread.stderr).contains("configured logging driver does not support reading"),
        "{}",
        text(&unread.stderr)
    );
    ok(&hulld.docker(&["rm", "chatty", "quiet"]));

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
        "--group-add",
        "777",
        &image,
        "sleep",
        "600",
    ]));
    let id = hulld.inspect("{{.Id}}", "limited");
    // An exec takes the container's extra groups, as in Docker.
    assert_eq!(ok(&hulld.docker(&["exec", "limited", "id", "-G"])), "0 777\n");
    assert_eq!(hulld.inspect("{{.HostConfig.PidsLimit}}", "limited"), "6");
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
    // `docker update --cpus` changes a running VM's CPU time at once.
    ok(&hulld.docker(&["update", "--cpus", "0.25", "limited"]));
    assert_eq!(
        std::fs::read_to_string(cgroup.join("cpu.max")).unwrap().trim(),
        "25000 100000"
    );
    assert_eq!(hulld.inspect("{{.HostConfig.NanoCpus}}", "limited"), "250000000");
    ok(&hulld.docker(&["rm", "-f", "limited"]));

    ok(&hulld.docker(&["rm", "conf", "disk"]));
    hulld.assert_no_leftovers();
}

/// The cgroup of the jailed VMM whose socket directory is the container's
/// (`run/c/ID16`).
fn vmm_cgroup(id16: &str) -> std::path::PathBuf {
    let marker = format!("/c/{id16}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("hull-vmm") || !cmdline.contains(&marker) {
            continue;
        }
        // The jailed VMM, born in its own group.
        if let Some(dir) = cgroup_dir(pid).filter(|d| d.to_string_lossy().contains("/hull/vmm-")) {
            return dir;
        }
    }
    panic!("no jailed hull-vmm of container {id16}");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn restart_policies_and_many_containers() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-many").unwrap();

    // Healthchecks run in the VM: starting (failures in the start period do
    // not count), then healthy; a failing check is unhealthy after its retries.
    let since = ok(&hulld.docker(&["system", "info", "--format", "{{.SystemTime}}"]));
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "checked",
        "--health-cmd",
        "test -e /tmp/ready",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-start-period",
        "60s",
        "--health-start-interval",
        "300ms",
        &image,
        "sh",
        "-c",
        "sleep 3; touch /tmp/ready; sleep 600",
    ]));
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "sick",
        "--health-cmd",
        "echo not well; exit 3",
        "--health-interval",
        "500ms",
        "--health-retries",
        "2",
        &image,
        "sleep",
        "600",
    ]));
    eventually("the healthcheck to pass", || {
        hulld.inspect("{{.State.Health.Status}}", "checked") == "healthy"
    });
    let log = hulld.inspect("{{range .State.Health.Log}}{{.ExitCode}} {{end}}", "checked");
    assert!(log.starts_with('1') && log.ends_with('0'), "failed, then passed: {log}");
    assert_eq!(hulld.inspect("{{.State.Health.FailingStreak}}", "checked"), "0");
    eventually("the failing check to make it unhealthy", || {
        hulld.inspect("{{.State.Health.Status}}", "sick") == "unhealthy"
    });
    assert_eq!(
        hulld.inspect(
            "{{(index .State.Health.Log 0).ExitCode}} {{(index .State.Health.Log 0).Output}}",
            "sick"
        ),
        "3 not well"
    );
    let healthy = ok(&hulld.docker(&["ps", "--filter", "health=healthy", "--format", "{{.Names}} {{.Status}}"]));
    assert!(
        healthy.starts_with("checked Up ") && healthy.trim_end().ends_with("(healthy)"),
        "{healthy}"
    );
    let sick = ok(&hulld.docker(&["ps", "-q", "--filter", "health=unhealthy"]));
    assert_eq!(sick.trim(), &hulld.inspect("{{.Id}}", "sick")[..12]);
    let until = ok(&hulld.docker(&["system", "info", "--format", "{{.SystemTime}}"]));
    let events = ok(&hulld.docker(&[
        "events",
        "--since",
        since.trim(),
        "--until",
        until.trim(),
        "--format",
        "{{.Actor.Attributes.name}} {{.Action}}",
    ]));
    assert!(events.contains("checked health_status: healthy"), "{events}");
    assert!(events.contains("sick health_status: unhealthy"), "{events}");
    ok(&hulld.docker(&["rm", "-f", "checked", "sick"]));

    // Start means running: pause and exec work the moment `run -d` returns
    // (no "still starting" answer, which dockerd never gives).
    for i in 0..20 {
        let name = format!("quick{i}");
        ok(&hulld.docker(&["run", "-d", "--name", &name, &image, "sleep", "600"]));
        ok(&hulld.docker(&["pause", &name]));
        assert_eq!(hulld.inspect("{{.State.Status}}", &name), "paused");
        ok(&hulld.docker(&["unpause", &name]));
        assert_eq!(ok(&hulld.docker(&["exec", &name, "echo", "ready"])), "ready\n");
        ok(&hulld.docker(&["rm", "-f", &name]));
    }

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

    // Between its runs a container under `--restart always` is restarting
    // (and running, as Docker shows it): listed by `ps`, not removable
    // without -f, and `stop` calls the next run off. From the sixth restart
    // on the wait is 6.4 s, time enough to look.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "bouncy",
        "--restart",
        "always",
        &image,
        "sh",
        "-c",
        "exit 3",
    ]));
    let shown = |h: &Hulld| {
        h.inspect(
            "{{.RestartCount}} {{.State.Status}} {{.State.Restarting}} {{.State.Running}}",
            "bouncy",
        )
    };
    eventually("a sixth restart's wait", || {
        let now = shown(&hulld);
        now.ends_with("restarting true true") && now.split(' ').next().and_then(|n| n.parse::<u32>().ok()) >= Some(6)
    });
    let listed = ok(&hulld.docker(&["ps", "--filter", "name=bouncy", "--format", "{{.Status}}"]));
    assert!(listed.starts_with("Restarting (3)"), "{listed}");
    let refused = hulld.docker(&["rm", "bouncy"]);
    assert!(
        text(&refused.stderr).contains("container is restarting: stop the container before removing or force remove"),
        "{}",
        text(&refused.stderr)
    );
    let count = shown(&hulld).split(' ').next().unwrap_or_default().to_string();
    ok(&hulld.docker(&["stop", "bouncy"]));
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(
        shown(&hulld),
        format!("{count} exited false false"),
        "the pending restart was called off"
    );
    ok(&hulld.docker(&["rm", "bouncy"]));

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
    hulld.assert_no_leftovers();
    let dirs = std::fs::read_dir(hulld.data.join("containers")).map_or(0, |d| d.count());
    assert_eq!(dirs, 0, "every container directory is gone");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn volumes_keep_data_between_containers() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-vol").unwrap();

    // A named (disk) volume starts empty, keeps what one container wrote
    // for the next.
    ok(&hulld.docker(&["volume", "create", "-o", "type=disk", "data"]));
    assert_eq!(
        ok(&hulld.docker(&["volume", "inspect", "-f", "{{.Options.type}}", "data"])),
        "disk\n"
    );
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
    // --mount type=volume creates the volume when missing (a shared one).
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
    // (the shell itself then runs from the volume, through virtio-fs).
    let out = ok(&hulld.docker(&["run", "--rm", "-v", "tools:/bin", &image, "sh", "-c", "ls /bin"]));
    assert!(out.lines().any(|l| l == "sleep"), "{out}");
    let names = ok(&hulld.docker(&["volume", "ls", "-q"]));
    assert_eq!(names.lines().collect::<Vec<_>>(), ["data", "made", "tools"]);

    // One running VM at a time has a disk volume; a volume in use is not
    // removed.
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

    ok(&hulld.docker(&["volume", "rm", "data", "made", "tools"]));
    assert_eq!(ok(&hulld.docker(&["volume", "ls", "-q"])), "");
    hulld.assert_no_leftovers();
}
