//! VM tests: interactive containers through the real `docker` CLI, each a
//! microVM cloned from the template: terminals (`-it`, sizes, resize),
//! attach and detach, pause and unpause, stats and top; and images made
//! from containers and their files (commit, export and import). Its own binary (and
//! so its own test host) to keep each VM test binary well inside its time
//! limit.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use testkit::hulld::{eventually, ok, text, Hulld};

/// The container's terminal size and the like, read through `docker exec`.
fn exec_out(hulld: &Hulld, container: &str, command: &str) -> String {
    ok(&hulld.docker(&["exec", container, "sh", "-c", command]))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn terminals_attach_pause_stats_and_top() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-tty").unwrap();

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
    hulld.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn start_returns_once_the_command_runs() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-start").unwrap();
    // `run -d` returns once the command runs: a pause, a top and an exec
    // straight after it act on the running process, never "still starting".
    for i in 0..20 {
        let name = format!("quick{i}");
        ok(&hulld.docker(&["run", "-d", "--name", &name, &image, "sleep", "600"]));
        ok(&hulld.docker(&["pause", &name]));
        assert_eq!(
            ok(&hulld.docker(&["inspect", "-f", "{{.State.Status}}", &name])).trim(),
            "paused"
        );
        ok(&hulld.docker(&["unpause", &name]));
        let top = ok(&hulld.docker(&["top", &name]));
        assert!(top.contains("sleep 600"), "round {i}: {top}");
        assert_eq!(exec_out(&hulld, &name, "echo in-$((40+2))"), "in-42\n", "round {i}");
        ok(&hulld.docker(&["rm", "-f", &name]));
    }
    // `docker start` too, and a command that ends at once still started.
    ok(&hulld.docker(&["create", "--name", "again", &image, "sleep", "600"]));
    ok(&hulld.docker(&["start", "again"]));
    ok(&hulld.docker(&["pause", "again"]));
    ok(&hulld.docker(&["rm", "-f", "again"]));
    ok(&hulld.docker(&["run", "-d", "--name", "brief", &image, "true"]));
    assert_eq!(ok(&hulld.docker(&["wait", "brief"])).trim(), "0");
    ok(&hulld.docker(&["rm", "brief"]));

    // A command that is not there fails the start as in Docker: 127, its
    // message, and the reason in the container's state.
    let missing = hulld.docker(&["run", "-d", "--name", "missing", &image, "no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing.stderr));
    assert!(
        text(&missing.stderr).contains(r#"exec: "no-such-command": executable file not found in $PATH"#),
        "{}",
        text(&missing.stderr)
    );
    let state = ok(&hulld.docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}",
        "missing",
    ]));
    assert!(state.starts_with("exited 127 exec: \"no-such-command\""), "{state}");
    let again = hulld.docker(&["start", "missing"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("executable file not found"),
        "{}",
        text(&again.stderr)
    );
    ok(&hulld.docker(&["rm", "missing"]));
}

/// One hijacked request written whole (`typed` follows the head at once):
/// what hulld sent back before it closed the connection.
fn hijack(hulld: &Hulld, head: &str, typed: &[u8]) -> String {
    use std::io::Read;
    let mut conn = std::os::unix::net::UnixStream::connect(&hulld.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(typed).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .expect("hulld closes the connection once the keys are typed");
    text(&answer)
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn detach_keys_leave_the_process_running() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-detach").unwrap();
    let running = |name: &str| hulld.inspect("{{.State.Status}}", name) == "running";

    // run -it, then ctrl-p ctrl-q: the client leaves, the shell runs on.
    // (The keys go once the client's terminal is raw: a cooked one would
    // take ctrl-q as flow control.)
    let (status, screen) = hulld.typed_in_terminal(
        &format!("docker run -it --name shell {image} sh"),
        &[("", b"echo first-$((1+1))\n"), ("first-2", b"\x10\x11")],
    );
    assert!(
        running("shell"),
        "the shell ended with its client's detach ({status:?}): {screen}"
    );
    // attach with other keys; the typed line reaches the same shell.
    let (status, screen) = hulld.typed_in_terminal(
        "docker attach --detach-keys ctrl-x,y shell",
        &[("", b"echo second-$((2+2))\n"), ("second-4", b"\x18y")],
    );
    assert!(running("shell"), "({status:?}): {screen}");
    // exec -it: the exec's process runs on after its client detaches.
    let (status, screen) = hulld.typed_in_terminal(
        "docker exec -it shell sh -c 'echo exec-$((3+3)); sleep 600'",
        &[("exec-6", b"\x10\x11")],
    );
    let top = ok(&hulld.docker(&["top", "shell"]));
    assert!(top.contains("sleep 600"), "({status:?}) {screen}\n{top}");

    // hulld watches a terminal's input itself (an SDK has no escape proxy):
    // the keys end the connection and never reach the shell.
    let answer = hijack(
        &hulld,
        "POST /containers/shell/attach?stream=1&stdin=1&stdout=1&detachKeys=ctrl-a,b HTTP/1.1\r\n\
         Host: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
        b"echo third\n\x01b echo never\n",
    );
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(running("shell"));
    let logs = text(&hulld.docker(&["logs", "shell"]).stdout);
    assert!(!logs.contains("never"), "input after the keys was dropped: {logs}");
    // Keys that cannot be read are refused as dockerd refuses them.
    let (head, body) = hulld.raw(
        "POST /containers/shell/attach?stream=1&stdin=1&stdout=1&detachKeys=ctrl-1 HTTP/1.1\r\n\
         Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("Invalid detach keys (ctrl-1) provided"),
        "{head}{body}"
    );
    let (head, body) = hulld.raw(
        "POST /containers/shell/exec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 43\r\nConnection: close\r\n\r\n{\"Cmd\":[\"true\"],\"DetachKeys\":\"ctrl-1,ctrl\"}",
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("Invalid escape keys"),
        "{head}{body}"
    );
    ok(&hulld.docker(&["rm", "-f", "shell"]));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn commit_and_import_make_images_that_run() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-commit").unwrap();
    let run = |args: &[&str]| ok(&hulld.docker(&[&["run", "--rm"], args].concat()));

    // A stopped container's changes: new files, a deleted applet, a changed environment.
    ok(&hulld.docker(&[
        "run",
        "--name",
        "made",
        &image,
        "sh",
        "-c",
        "busybox mkdir -p /srv/app /opt && echo v1 > /srv/app/version && echo keep > /opt/f && rm /bin/yes",
    ]));
    let id = ok(&hulld.docker(&[
        "commit",
        "--pause=false",
        "-a",
        "Ann <ann@example.com>",
        "-m",
        "add the app",
        "-c",
        "CMD [\"cat\", \"/srv/app/version\"]",
        "-c",
        "ENV STAGE=two",
        "made",
        "committed/app:v1",
    ]));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(run(&["committed/app:v1"]), "v1\n", "the new command and the new file");
    assert_eq!(
        run(&[
            "committed/app:v1",
            "sh",
            "-c",
            "echo $STAGE; cat /opt/f; test -e /bin/yes || echo deleted"
        ]),
        "two\nkeep\ndeleted\n"
    );
    let seen = ok(&hulld.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Author}}|{{.Comment}}|{{len .RootFS.Layers}}",
        "committed/app:v1",
    ]));
    assert_eq!(seen.trim(), "Ann <ann@example.com>|add the app|2");
    let history = ok(&hulld.docker(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}|{{.Comment}}",
        "committed/app:v1",
    ]));
    let newest = history.lines().next().unwrap_or_default();
    assert!(
        newest.starts_with("sh -c busybox mkdir") && newest.ends_with("|add the app"),
        "{history}"
    );

    // A running container, committed as it runs, on the committed image: a
    // directory removed and made again hides the one beneath it.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "live",
        "committed/app:v1",
        "sh",
        "-c",
        "echo live > /srv/app/version; rm -r /opt; busybox mkdir /opt; echo new > /opt/g; touch /ready; sleep 600",
    ]));
    eventually("the running container made its changes", || {
        hulld
            .docker(&["exec", "live", "sh", "-c", "test -e /ready"])
            .status
            .success()
    });
    // Paused while its layer is read (Docker's default), and thawed after.
    ok(&hulld.docker(&["commit", "live", "committed/app:v2"]));
    assert!(ok(&hulld.docker(&["top", "live"])).contains("sleep 600"), "it runs on");
    assert_eq!(exec_out(&hulld, "live", "echo thawed"), "thawed\n");
    assert_eq!(
        run(&["committed/app:v2", "sh", "-c", "cat /srv/app/version; ls /opt"]),
        "live\ng\n"
    );
    let layers = ok(&hulld.docker(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        "committed/app:v2",
    ]));
    assert_eq!(layers.trim(), "3");

    // Import: the stopped container's whole filesystem, exported, is an image of its own.
    let exported = hulld.work.join("made.tar");
    ok(&hulld.docker(&["export", "-o", exported.to_str().unwrap(), "made"]));
    ok(&hulld.docker(&[
        "import",
        "-c",
        "CMD [\"cat\", \"/srv/app/version\"]",
        exported.to_str().unwrap(),
        "imported:1",
    ]));
    assert_eq!(run(&["imported:1"]), "v1\n");

    // Docker's refusals.
    let missing = hulld.docker(&["commit", "no-such-container", "x:1"]);
    assert!(
        text(&missing.stderr).contains("No such container"),
        "{}",
        text(&missing.stderr)
    );
    let bad = hulld.docker(&["commit", "-c", "RUN true", "made", "x:1"]);
    assert!(
        text(&bad.stderr).contains("run is not a valid change command"),
        "{}",
        text(&bad.stderr)
    );
    ok(&hulld.docker(&["rm", "-f", "live", "made"]));
}
