//! VM tests of live migration through hulld (`POST
//! /containers/{id}/migrate`, `hull migrate`): a running container's VM
//! moves to a new VMM while it runs, and the container goes on as it was:
//! its output (and a running exec's, both ways) without a number lost or
//! repeated, exec, pause, stop; a
//! move reports its rounds and can be given up. And to another hulld
//! (`to=HOST`): the container, its log and its record go there, and back.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use testkit::hulld::{eventually, ok, text, Hulld};

/// `POST /containers/{id}/migrate?QUERY`: the status line and the body.
fn migrate(hulld: &Hulld, id: &str, query: &str) -> (String, serde_json::Value) {
    let (head, body) = hulld.raw(&format!(
        "POST /containers/{id}/migrate?{query} HTTP/1.1\r\nHost: hull\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, serde_json::from_str(body.trim()).unwrap_or_default())
}

/// The container's log as numbers, one a line (a line that is not one fails).
fn counted(hulld: &Hulld, id: &str) -> Vec<u64> {
    let out = hulld.docker(&["logs", id]);
    text(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        .collect()
}

/// Asserts `numbers` are 1, 2, 3, ... each once; a failure names the
/// first line that breaks the run and the lines around it (the whole list,
/// thousands of numbers, would push the reason out of CI's excerpt).
fn assert_counted_once(numbers: &[u64], what: &str) {
    if let Some(at) = (0..numbers.len()).find(|&i| numbers[i] != i as u64 + 1) {
        let around = &numbers[at.saturating_sub(3)..(at + 4).min(numbers.len())];
        panic!(
            "{what}: line {} of {} is {}, not {}; lines around it: {around:?}",
            at + 1,
            numbers.len(),
            numbers[at],
            at + 1
        );
    }
}

/// `hull ARGS` against this hulld.
fn hull_cli(hulld: &Hulld, args: &[&str]) -> std::process::Command {
    let mut hull = std::process::Command::new(testkit::boot::workspace_binary("hull").unwrap());
    hull.args(args)
        .arg("-H")
        .arg(format!("unix://{}", hulld.socket.display()));
    hull
}

/// A `docker exec -i` in container `id` echoing each line it reads as
/// "got LINE", its first line answered: the process, its input and its
/// output's lines.
fn echoing_exec(
    hulld: &Hulld,
    id: &str,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let mut exec = hulld
        .docker_command(&["exec", "-i", id, "sh", "-c", "while read l; do echo got $l; done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = exec.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(exec.stdout.take().unwrap()).lines();
    input.write_all(b"before\n").unwrap();
    assert_eq!(output.next().unwrap().unwrap(), "got before");
    (exec, input, output)
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_running_container_moves_to_a_new_vmm_twice_and_counts_on_without_a_gap() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-migrate").unwrap();
    let counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done";
    let id = ok(&hulld.docker(&["run", "-d", "--network", "none", &image, "sh", "-c", counter]))
        .trim()
        .to_string();
    eventually("the container counts", || counted(&hulld, &id).len() >= 30);
    let mut events = hulld.docker_command(&[
        "events",
        "--filter",
        "event=migrate",
        "--format",
        "{{.Action}} {{.Actor.Attributes.phase}}",
    ]);
    let mut events = events.stdout(std::process::Stdio::piped()).spawn().unwrap();
    // A move that cannot finish in time is given up: the VM runs on where
    // it was, counting, and nothing of the new VMM is left.
    let (status, report) = migrate(&hulld, &id, "downtime=1&timeout=1");
    assert!(status.contains(" 409 "), "{status} {report}");
    assert!(report["message"].as_str().unwrap().contains("runs on"), "{report}");
    let before = counted(&hulld, &id).len();
    eventually("the container counts on where it was", || {
        counted(&hulld, &id).len() >= before + 20
    });
    // Execs running across the moves: one writing, one echoing its input.
    let writer = "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo e$i; sleep 0.01; done";
    let exec_out = hulld
        .docker_command(&["exec", &id, "sh", "-c", writer])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut echo_exec, mut echo_in, mut echoed) = echoing_exec(&hulld, &id);
    let mut vmm_pids = Vec::new();
    for round in 0..2 {
        let before = counted(&hulld, &id).len() as u64;
        // The emulated test host is 20-50x slower than hardware: its budget.
        let (status, report) = migrate(&hulld, &id, "downtime=2000");
        assert!(status.contains(" 200 "), "move {round}: {status} {report}");
        let pid = report["VmmPid"].as_u64().unwrap();
        eprintln!("move {round}: {report}");
        assert!(report["Rounds"].as_u64().unwrap() >= 1, "{report}");
        assert_eq!(report["OutputFramesLost"], 0, "{report}");
        assert!(alive(pid), "the new VMM runs");
        vmm_pids.push(pid);
        // It counts on in the new VMM, past where it was.
        eventually("the container counts on after the move", || {
            counted(&hulld, &id).len() as u64 >= before + 60
        });
        assert_eq!(hulld.inspect("{{.State.Status}}", &id), "running");
    }
    assert!(!alive(vmm_pids[0]), "the first move's VMM ended with the second move");
    // The execs went on through both moves: their connections were taken
    // back through each new VMM, nothing lost or repeated either way.
    echo_in.write_all(b"after\n").unwrap();
    assert_eq!(echoed.next().unwrap().unwrap(), "got after");
    drop(echo_in);
    assert!(echo_exec.wait().unwrap().success());
    ok(&hulld.docker(&["exec", &id, "touch", "/tmp/stop"]));
    let written = exec_out.wait_with_output().unwrap();
    assert!(written.status.success(), "{:?}", written.status);
    let lines: Vec<String> = text(&written.stdout).lines().map(str::to_string).collect();
    let expected: Vec<String> = (1..=lines.len()).map(|i| format!("e{i}")).collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    assert!(
        lines == expected,
        "the exec's output across the moves: {} lines, first wrong at {:?}",
        lines.len(),
        lines.iter().zip(&expected).position(|(a, b)| a != b)
    );
    // Everything that reaches the VM goes to the new VMM: exec, pause.
    assert_eq!(ok(&hulld.docker(&["exec", &id, "echo", "moved"])), "moved\n");
    ok(&hulld.docker(&["pause", &id]));
    let (status, report) = migrate(&hulld, &id, "");
    assert!(status.contains(" 409 "), "{status} {report}");
    assert!(report["message"].as_str().unwrap().contains("paused"), "{report}");
    ok(&hulld.docker(&["unpause", &id]));
    ok(&hulld.docker(&["stop", "-t", "1", &id]));
    let numbers = counted(&hulld, &id);
    assert_counted_once(&numbers, "every number once, across both moves");
    ok(&hulld.docker(&["rm", &id]));
    let _ = events.kill();
    let seen = text(&events.wait_with_output().unwrap().stdout);
    assert_eq!(seen.matches("migrate finish").count(), 2, "{seen}");
    assert_eq!(seen.matches("migrate failed").count(), 1, "{seen}");
    hulld.assert_no_leftovers();
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every container ID the hulld has, running or not.
fn all_ids(hulld: &Hulld) -> String {
    ok(&hulld.docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}}"]))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_running_container_moves_to_another_hulld_and_back_ten_times_and_counts_on_without_a_gap() {
    // Two hosts' hullds (own data, run directories and firewall names),
    // each taking containers on a loopback port.
    let (source_port, dest_port) = (free_port(), free_port());
    let source_listen = format!("127.0.0.1:{source_port}");
    let dest_listen = format!("127.0.0.1:{dest_port}");
    // Storage both hosts see at the same path (here, the test host's own
    // directory), named shared on both: a bind mount under it moves.
    let storage = std::env::temp_dir().join(format!("vm-migrate-storage-{}", std::process::id()));
    std::fs::create_dir_all(storage.join("app")).unwrap();
    std::fs::create_dir_all(storage.join("vol")).unwrap();
    std::fs::write(storage.join("vol/hello"), "from the shared storage\n").unwrap();
    let storage_arg = storage.display().to_string();
    let (source, _registry, image) = Hulld::with_busybox_args(
        "vm-migrate-src",
        &["--migration-listen", &source_listen, "--shared-storage", &storage_arg],
    )
    .unwrap();
    let dest = Hulld::start_with(
        "vm-migrate-dst",
        &["--migration-listen", &dest_listen, "--shared-storage", &storage_arg],
    )
    .unwrap();
    // Another host has no template of the source's (it would boot its own,
    // another VM): the first move sends it, and it is kept.
    std::fs::remove_dir_all(dest.data.join("templates")).unwrap();
    let arrived_templates = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        std::fs::read_dir(dest.data.join("templates-arrived"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
            .collect()
    };
    // It also appends each number to a file it holds open on the shared
    // storage: that file stays open across the hosts. And to one it holds
    // open in a volume of hull's own, whose files only the host it is on
    // sees: they travel with it.
    let counter = "exec 3>>/shared/count 4>>/local/count; i=0; \
                   while :; do i=$((i+1)); echo $i; echo $i >&3; echo $i >&4; sleep 0.01; done";
    let shared_bind = format!("{}:/shared", storage.join("app").display());
    // And a volume of a directory there (Docker's local driver's bind):
    // its definition goes with it, its files stay.
    let device = format!("device={}", storage.join("vol").display());
    ok(&source.docker(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        &device,
        "onstorage",
    ]));
    // Its disk volume goes with it.
    ok(&source.docker(&[
        "volume",
        "create",
        "-o",
        "type=disk",
        "--label",
        "kind=travelling",
        "data",
    ]));
    let id = ok(&source.docker(&[
        "run",
        "-d",
        "--name",
        "travelling",
        "--network",
        "none",
        "--label",
        "app=counter",
        "-v",
        "data:/data",
        "-v",
        &shared_bind,
        "-v",
        "onstorage:/vol",
        "-v",
        "local:/local",
        // Its log rotates every few seconds, during moves too: the files
        // it rotated into go with it, and none of its lines is lost.
        "--log-opt",
        "max-size=16k",
        "--log-opt",
        "max-file=1000",
        &image,
        "sh",
        "-c",
        counter,
    ]))
    .trim()
    .to_string();
    eventually("the container counts", || counted(&source, &id).len() >= 30);
    // The destination lacks the image: the first move sends it.
    assert_eq!(ok(&dest.docker(&["images", "-q"])).trim(), "");
    // Data in its writable layer goes with it.
    ok(&source.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo kept > /kept; echo stored > /data/stored; sync",
    ]));
    // A tree in the volume of its own: a link, an owner, a mode.
    ok(&source.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "mkdir -p /local/dir/sub && echo tree > /local/dir/sub/f && ln -s sub/f /local/dir/link \
         && chown 1:2 /local/dir/sub/f && chmod 640 /local/dir/sub/f",
    ]));
    let volumes = |hulld: &Hulld| ok(&hulld.docker(&["volume", "ls", "-q"]));
    let mut hosts = [&source, &dest];
    let listens = [&source_listen, &dest_listen];
    // Back and forth, ten moves.
    let mut sent_template = Vec::new();
    for round in 0..10 {
        let (from, to) = (hosts[0], hosts[1]);
        if round == 5 {
            ok(&from.docker(&["exec", &id, "sh", "-c", "rm /local/dir/link && echo five > /local/five"]));
        }
        let before = counted(from, &id).len() as u64;
        let (status, report) = migrate(from, &id, &format!("to={}&downtime=2000", listens[1 - round % 2]));
        // One short line a move: a failure's message must fit CI's excerpt.
        eprintln!(
            "move {round}: {} ms down, {} ms, {} bytes",
            report["DowntimeMs"], report["TotalMs"], report["BytesSent"]
        );
        assert!(status.contains(" 200 "), "move {round}: {status} {report}");
        assert_eq!(report["OutputFramesLost"], 0, "{report}");
        // The template goes once, with the first move: the source's own
        // (the same identity) and the kept one serve the later moves.
        // So does the image, which the destination lacked.
        for sent_once in ["TemplateBytes", "ImageBytes"] {
            match round {
                0 => assert!(report[sent_once].as_u64().is_some_and(|b| b > 0), "{report}"),
                _ => assert!(report[sent_once].is_null(), "{report}"),
            }
        }
        // Only the clone's own pages: each side maps the template (the
        // whole guest's would be tens of thousands).
        assert!(report["PagesSent"].as_u64().unwrap() < 6000, "{report}");
        // Only the destination has it now: same ID, name, labels, running.
        assert!(!all_ids(from).contains(&id), "move {round}: still listed where it was");
        assert!(all_ids(to).contains(&id), "move {round}: not listed where it went");
        assert_eq!(
            to.inspect("{{.Name}} {{.State.Status}} {{.Config.Labels.app}}", &id),
            "/travelling running counter"
        );
        // Its log goes on there from where it was, every number once.
        eventually("it counts on where it went", || {
            counted(to, &id).len() as u64 >= before + 30
        });
        let numbers = counted(to, &id);
        assert_counted_once(&numbers, &format!("move {round}: every number once, across the hosts"));
        assert_eq!(ok(&to.docker(&["exec", &id, "cat", "/kept"])), "kept\n");
        assert_eq!(ok(&to.docker(&["exec", &id, "cat", "/data/stored"])), "stored\n");
        // The volume is where its data is: there, with its labels, and no
        // longer here.
        assert_eq!(volumes(to).trim(), "data\nlocal\nonstorage", "move {round}");
        // The volume of its own came with its files, as they were.
        let tree = ok(&to.docker(&[
            "exec",
            &id,
            "sh",
            "-c",
            "stat -c '%a %u:%g' /local/dir/sub/f; cat /local/dir/sub/f; \
             readlink /local/dir/link || echo no link; cat /local/five 2>/dev/null || echo no five",
        ]));
        let expected = match round {
            0..=4 => "640 1:2\ntree\nsub/f\nno five\n",
            _ => "640 1:2\ntree\nno link\nfive\n",
        };
        assert_eq!(tree, expected, "move {round}");
        assert_eq!(
            ok(&to.docker(&["exec", &id, "cat", "/vol/hello"])),
            "from the shared storage\n"
        );
        assert_eq!(volumes(from).trim(), "", "move {round}");
        assert_eq!(
            ok(&to.docker(&["volume", "inspect", "--format", "{{.Labels.kind}}", "data"])).trim(),
            "travelling"
        );
        if round == 0 {
            assert_eq!(
                ok(&to.docker(&["image", "inspect", "--format", "{{.Id}}", &image])),
                ok(&from.docker(&["image", "inspect", "--format", "{{.Id}}", &image])),
                "the image arrived under its name"
            );
        }
        hosts.swap(0, 1);
        if round == 0 {
            sent_template = arrived_templates();
            assert_eq!(sent_template.len(), 1, "the template the first move sent is kept");
        }
    }
    assert_eq!(arrived_templates(), sent_template, "the template was sent once");
    let rotated = std::fs::read_dir(source.data.join("containers").join(&id))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".log."))
        .count();
    // About one rotation per 200 numbers: a few in a run of ten moves.
    assert!(rotated >= 2, "{rotated} rotated log files came back with it");
    assert!(
        !dest.data.join("templates").exists(),
        "the destination booted no template"
    );
    // `hull template ls` there lists it; `hull template rm` removes it.
    let identity = sent_template[0].0.file_name().unwrap().to_string_lossy().into_owned();
    let hull_there = |args: &[&str]| {
        let mut hull = std::process::Command::new(testkit::boot::workspace_binary("hull").unwrap());
        hull.args(args).env("HULL_DATA_DIR", &dest.data).output().unwrap()
    };
    let listed = text(&hull_there(&["template", "ls"]).stdout);
    let line = listed
        .lines()
        .find(|l| l.contains(&identity))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with(&format!("arrived/{identity}"))
            && line.contains("256MiB")
            && line.contains("(from another host)"),
        "{listed}"
    );
    let removed = hull_there(&["template", "rm", &format!("arrived/{identity}")]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(arrived_templates().is_empty());
    assert!(!text(&hull_there(&["template", "ls"]).stdout).contains(&identity));
    // The file it held open in its own volume, carried ten times: every
    // number once.
    let local: Vec<u64> = ok(&source.docker(&["exec", &id, "cat", "/local/count"]))
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert!(local.len() > 100, "{} numbers in /local/count", local.len());
    assert_counted_once(&local, "every number once in /local/count");
    ok(&source.docker(&["stop", "-t", "1", &id]));
    assert_eq!(source.inspect("{{.State.Status}}", &id), "exited");
    // The file it held open on the shared storage: every number once,
    // across the ten moves.
    let written: Vec<u64> = std::fs::read_to_string(storage.join("app/count"))
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert!(
        written.len() as u64 + 1 >= counted(&source, &id).len() as u64,
        "{} written",
        written.len()
    );
    assert_counted_once(&written, "every number once in the file on shared storage");
    ok(&source.docker(&["rm", &id]));
    let _ = std::fs::remove_dir_all(&storage);
    source.assert_no_leftovers();
    dest.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_move_to_another_hulld_given_up_cancelled_or_losing_that_hulld_leaves_the_container_running_where_it_was() {
    let dest_port = free_port();
    let dest_listen = format!("127.0.0.1:{dest_port}");
    let (source, _registry, image) = Hulld::with_busybox("vm-migrate-keep").unwrap();
    let mut dest = Hulld::start_with("vm-migrate-lose", &["--migration-listen", &dest_listen]).unwrap();
    ok(&dest.docker(&["pull", "-q", &image]));
    let counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done";
    let id = ok(&source.docker(&["run", "-d", "--network", "none", &image, "sh", "-c", counter]))
        .trim()
        .to_string();
    eventually("the container counts", || counted(&source, &id).len() >= 30);
    // A move that keeps going while the test acts on it: a budget of 1 ms
    // is never met (the guest counts).
    let start_move = || {
        let source_socket = source.socket.clone();
        let (id, to) = (id.clone(), dest_listen.clone());
        std::thread::spawn(move || {
            let mut hull = std::process::Command::new(testkit::boot::workspace_binary("hull").unwrap());
            hull.args(["migrate", &id, "--to", &to, "--downtime", "1"])
                .arg("-H")
                .arg(format!("unix://{}", source_socket.display()));
            hull.output().unwrap()
        })
    };
    let arriving = |dest: &Hulld| !dest.processes_of("hull-vmm").is_empty();
    let counts_on_here = |what: &str| {
        let before = counted(&source, &id).len();
        eventually(what, || counted(&source, &id).len() >= before + 20);
        assert_eq!(source.inspect("{{.State.Status}}", &id), "running");
    };

    // No hulld takes containers there: nothing moves.
    let (status, report) = migrate(&source, &id, &format!("to=127.0.0.1:{}", free_port()));
    assert!(status.contains(" 502 "), "{status} {report}");
    counts_on_here("it counts on after a move to no one");

    // Past its deadline the move is given up.
    let (status, report) = migrate(&source, &id, &format!("to={dest_listen}&downtime=1&timeout=2"));
    assert!(status.contains(" 409 "), "{status} {report}");
    assert!(report["message"].as_str().unwrap().contains("runs on"), "{report}");
    counts_on_here("it counts on after a move given up");
    dest.assert_no_leftovers();

    // Cancelled by its user.
    let moving = start_move();
    eventually("a VMM waits for the VM at the destination", || arriving(&dest));
    let cancel = hull_cli(&source, &["migrate", "--cancel", &id]).output().unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    let out = moving.join().unwrap();
    assert!(!out.status.success(), "the cancelled move says so");
    assert!(text(&out.stderr).contains("cancelled"), "{}", text(&out.stderr));
    counts_on_here("it counts on after a cancelled move");
    dest.assert_no_leftovers();

    // The destination's hulld dies mid-move: its half-arrived VM ends with it.
    let moving = start_move();
    eventually("a VMM waits for the VM at the destination", || arriving(&dest));
    dest.kill();
    let out = moving.join().unwrap();
    assert!(!out.status.success(), "the move to a dead hulld fails");
    counts_on_here("it counts on after its destination died");
    eventually("the half-arrived VM ends", || !arriving(&dest));
    dest.assert_no_leftovers();
    // Its directory is there until that hulld starts again, which removes it.
    let half_arrived = dest.data.join("containers").join(&id);
    assert!(
        half_arrived.exists(),
        "the half-arrived container left nothing to clean"
    );
    dest.start_again().unwrap();
    assert!(!all_ids(&dest).contains(&id));
    assert!(!half_arrived.exists(), "the half-arrived container's directory stays");

    ok(&source.docker(&["stop", "-t", "1", &id]));
    let numbers = counted(&source, &id);
    assert_counted_once(&numbers, "every number once, across three moves that did not happen");
    source.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn the_log_has_every_number_once_across_moves_bad_requests_are_refused_and_a_move_is_cancelled() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-migrate-log").unwrap();
    // Counts as fast as it can to a fixed end: many frames are in flight
    // when the VM moves.
    let counter = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo $i; done; sleep 600";
    let id = ok(&hulld.docker(&["run", "-d", "--network", "none", &image, "sh", "-c", counter]))
        .trim()
        .to_string();
    eventually("the container counts", || counted(&hulld, &id).len() >= 100);
    let (status, report) = migrate(&hulld, &id, "downtime=2000");
    assert!(status.contains(" 200 "), "{status} {report}");
    eprintln!("a move sharing nothing: {report}");
    eventually("the container counts to its end", || counted(&hulld, &id).len() >= 3000);
    let numbers = counted(&hulld, &id);
    assert_eq!(numbers, (1..=3000).collect::<Vec<_>>(), "no number lost or repeated");

    // Bad requests get Docker's codes and a reason.
    let (status, report) = migrate(&hulld, &id, "to=no.such.host.invalid");
    assert!(status.contains(" 400 "), "{status} {report}");
    assert!(
        report["message"].as_str().unwrap().contains("invalid \"to\""),
        "{report}"
    );

    let (status, report) = migrate(&hulld, &id, "downtime=soon");
    assert!(status.contains(" 400 "), "{status} {report}");
    let (status, _) = migrate(&hulld, "nosuchcontainer", "");
    assert!(status.contains(" 404 "), "{status}");
    // A container sharing a host directory moves with the file it holds
    // open there: it goes on appending to it through the new VMM, with no
    // number lost or repeated, and finds what the host writes after.
    let shared = std::env::temp_dir().join(format!("vm-migrate-share-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    let bind = format!("{}:/shared", shared.display());
    let appender =
        "cd /shared; exec 3>>log; i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo $i >&3; sleep 0.02; done; sleep 600";
    let sharing = ok(&hulld.docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "-v",
        &bind,
        &image,
        "sh",
        "-c",
        appender,
    ]))
    .trim()
    .to_string();
    let logged = || -> Vec<u64> {
        let text = std::fs::read_to_string(shared.join("log")).unwrap_or_default();
        text.lines().filter_map(|line| line.parse().ok()).collect()
    };
    eventually("the container appends to the shared file", || logged().len() >= 20);
    let (status, report) = migrate(&hulld, &sharing, "downtime=2000");
    assert!(status.contains(" 200 "), "{status} {report}");
    // Shown beside the move without a share above, not asserted.
    eprintln!("a move sharing a directory, a file held open: {report}");
    let moved_at = logged().len();
    assert!(moved_at < 300, "the move ended after the writer: {moved_at}");
    eventually("the writer ends through the new VMM", || logged().len() >= 300);
    assert_eq!(logged(), (1..=300).collect::<Vec<_>>(), "no line lost or repeated");
    std::fs::write(shared.join("after"), "written on the host after the move").unwrap();
    assert_eq!(
        ok(&hulld.docker(&["exec", &sharing, "cat", "/shared/after"])),
        "written on the host after the move"
    );
    // A file it holds open whose name is gone cannot be opened again by
    // name: that move is refused, naming why, and it runs on.
    ok(&hulld.docker(&[
        "exec",
        "-d",
        &sharing,
        "sh",
        "-c",
        "exec 4</shared/after; rm /shared/after; sleep 600",
    ]));
    eventually("the held file is deleted", || !shared.join("after").exists());
    let (status, report) = migrate(&hulld, &sharing, "downtime=2000");
    assert!(status.contains(" 409 "), "{status} {report}");
    assert!(
        report["message"].as_str().unwrap().contains("deleted or moved away"),
        "{report}"
    );
    let log = ok(&hulld.docker(&["exec", &sharing, "cat", "/shared/log"]));
    assert!(log.ends_with("\n300\n"), "{log}");
    ok(&hulld.docker(&["rm", "-f", &id, &sharing]));
    let _ = std::fs::remove_dir_all(&shared);

    // `hull migrate` prints each pre-copy round as it ends; `hull migrate
    // --cancel` gives the move up and the container runs on where it was.
    // The container rewrites memory faster than 1 ms of downtime could
    // send: the move does not end before the cancel.
    let dirtier = "awk 'BEGIN { while (1) for (i = 0; i < 100000; i++) a[i] = i }'";
    let busy = ok(&hulld.docker(&["run", "-d", "--network", "none", &image, "sh", "-c", dirtier]))
        .trim()
        .to_string();
    let vmms_before = hulld.processes_of("hull-vmm");
    let mut moving = hull_cli(&hulld, &["migrate", "--downtime", "1", &busy])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rounds = std::io::BufReader::new(moving.stderr.take().unwrap()).lines();
    let first = rounds.next().expect("a round reported").unwrap();
    assert!(first.starts_with("round 0: "), "{first}");
    let cancelled = hull_cli(&hulld, &["migrate", "--cancel", &busy]).output().unwrap();
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    let rest: Vec<String> = rounds.map_while(Result::ok).collect();
    let status = moving.wait().unwrap();
    assert!(!status.success(), "the cancelled move failed: {rest:?}");
    assert!(
        rest.last()
            .is_some_and(|l| l.contains("cancelled") && l.contains("runs on")),
        "{rest:?}"
    );
    assert_eq!(hulld.inspect("{{.State.Status}}", &busy), "running");
    assert_eq!(ok(&hulld.docker(&["exec", &busy, "echo", "here"])), "here\n");
    eventually("only the VM's own VMM is left", || {
        hulld.processes_of("hull-vmm") == vmms_before
    });
    // Nothing under way: nothing to cancel.
    let again = hull_cli(&hulld, &["migrate", "--cancel", &busy]).output().unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("is not being migrated"),
        "{}",
        text(&again.stderr)
    );
    ok(&hulld.docker(&["rm", "-f", &busy]));
    let (status, _) = migrate(&hulld, &id, "");
    assert!(status.contains(" 404 "), "{status}");
    hulld.assert_no_leftovers();
}

/// A line sent on `conn` and the echo read back.
/// A connection to the echo server at `address` and its first line back,
/// once it listens (until then the guest resets).
fn connect_echo(address: String) -> (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the echo server never answered on {address}");
        let Ok(mut conn) = std::net::TcpStream::connect(&address) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut back = String::new();
        let sent = conn.write_all(b"before\n").is_ok();
        if sent && reader.read_line(&mut back).is_ok() && !back.is_empty() {
            return (conn, reader, back);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn echo(conn: &mut std::net::TcpStream, reader: &mut std::io::BufReader<std::net::TcpStream>, line: &str) -> String {
    conn.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut back = String::new();
    reader.read_line(&mut back).unwrap();
    back
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_tcp_connection_to_a_published_port_stays_open_across_a_move() {
    let (hulld, _registry, image) = Hulld::with_busybox("vm-migrate-net").unwrap();
    // An echo server on the default bridge, published on the host.
    let port = 18431;
    let publish = format!("127.0.0.1:{port}:7000");
    let server = ["busybox", "nc", "-l", "-p", "7000", "-e", "busybox", "cat"];
    let mut args = vec!["run", "-d", "-p", &publish, &image];
    args.extend(server);
    let id = ok(&hulld.docker(&args)).trim().to_string();
    let address = hulld.inspect("{{.NetworkSettings.IPAddress}}", &id);
    let (mut conn, mut reader, first) = connect_echo(format!("127.0.0.1:{port}"));
    assert_eq!(first, "before\n");
    // What reaches the host on the container's tap: the new VMM announces
    // the guest's MAC there (RARP) once the guest runs in it.
    let mac = hulld.inspect("{{.NetworkSettings.MacAddress}}", &id);
    let watch = RarpWatch::on(&format!("hv{}", &id[..12]));
    let (status, report) = migrate(&hulld, &id, "downtime=2000");
    assert!(status.contains(" 200 "), "{status} {report}");
    eprintln!("moved with its taps: {report}");
    assert!(
        watch.saw_announcement(&mac, Duration::from_secs(30)),
        "no RARP announcement from {mac} after the move"
    );
    // The same connection, the same server process, in the new VMM.
    assert_eq!(echo(&mut conn, &mut reader, "after"), "after\n");
    assert_eq!(echo(&mut conn, &mut reader, "and on"), "and on\n");
    // Its address and published port stay (the server serves one
    // connection: the container ends when it closes).
    assert_eq!(hulld.inspect("{{.NetworkSettings.IPAddress}}", &id), address);
    assert!(ok(&hulld.docker(&["port", &id])).contains(&format!("127.0.0.1:{port}")));
    assert_eq!(ok(&hulld.docker(&["exec", &id, "echo", "still"])), "still\n");
    drop((conn, reader));
    ok(&hulld.docker(&["rm", "-f", &id]));
    hulld.assert_no_leftovers();
}

/// The lines `out` gives, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next of `lines`, which must come within a minute (`waited_for`
/// says what for).
fn next_line(lines: &std::sync::mpsc::Receiver<String>, waited_for: &str) -> String {
    lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no line came for \"{waited_for}\": {e}"))
}

/// Runs `script` with sh; it must succeed.
fn sh(script: &str) {
    let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
}

/// Network namespaces a test made, deleted however it ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a thread in network namespace `name` (a socket made there
/// stays there).
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns(2) of this thread alone into a namespace file we hold open.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_tcp_client_keeps_its_connection_to_a_container_moved_over_tls_to_another_host_on_a_spanning_network() {
    // Host A is this namespace; host B and a client are namespaces of
    // their own, B linked to A by an underlay of its own.
    let tag = std::process::id() % 100_000;
    let (host_b, client) = (format!("hxmb{tag}"), format!("hxmc{tag}"));
    let _namespaces = Namespaces(vec![host_b.clone(), client.clone()]);
    // The hosts move containers over mutual TLS: certificates of one CA,
    // each naming its host's address.
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = testkit::certs::Certs::new(certs_dir.path()).unwrap();
    certs.host("a", "198.51.100.1").unwrap();
    certs.host("b", "198.51.100.2").unwrap();
    let args = |host: &str, extra: &[&str]| {
        let mut args = certs.hulld_args(host);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    for name in [&host_b, &client] {
        sh(&format!("ip netns add {name}; ip -n {name} link set lo up"));
    }
    sh(&format!(
        "modprobe veth; ip link add ua{tag} type veth peer name ub{tag} netns {host_b}; \
         ip addr add 198.51.100.1/24 dev ua{tag}; ip link set ua{tag} up; \
         ip -n {host_b} addr add 198.51.100.2/24 dev ub{tag}; ip -n {host_b} link set ub{tag} up"
    ));
    // Host A listens too: it takes the container back, and host B tells it
    // the names of its containers on the network both share.
    let source_args = args("a", &["--migration-listen", "198.51.100.1:2734"]);
    let source_args: Vec<&str> = source_args.iter().map(String::as_str).collect();
    let (source, _registry, image) = Hulld::with_busybox_args("vm-migrate-span-a", &source_args).unwrap();
    let dest_args = args("b", &["--migration-listen", "198.51.100.2:2734"]);
    let dest_args: Vec<&str> = dest_args.iter().map(String::as_str).collect();
    let dest = Hulld::start_in_netns("vm-migrate-span-b", &host_b, &dest_args).unwrap();
    // The image, as a user without a registry brings it.
    let saved = source.work.join("box.tar");
    ok(&source.docker(&["save", "-o", saved.to_str().unwrap(), &image]));
    ok(&dest.docker(&["load", "-i", saved.to_str().unwrap()]));
    // One network on both hosts: one subnet and VNI, each host its own range.
    for (hulld, range, peer) in [
        (&source, "10.91.0.0/26", "198.51.100.2"),
        (&dest, "10.91.0.64/26", "198.51.100.1"),
    ] {
        ok(&hulld.docker(&[
            "network",
            "create",
            "--subnet",
            "10.91.0.0/24",
            "--ip-range",
            range,
            "-o",
            "hull.vxlan.id=91",
            "-o",
            &format!("hull.vxlan.peers={peer}"),
            "app",
        ]));
    }
    // A TCP echo server, and the container's own standard input echoed
    // (`-i`: a client attaches to it).
    let server = "busybox nc -l -p 7000 -e busybox cat & while read l; do echo stdin $l; done";
    let args = vec![
        "run",
        "-d",
        "-i",
        "--name",
        "echo",
        "--network",
        "app",
        &image,
        "sh",
        "-c",
        server,
    ];
    let id = ok(&source.docker(&args)).trim().to_string();
    // A client attached on host A, typing to the container and reading it.
    let mut attached = source
        .docker_command(&["attach", "--sig-proxy=false", &id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut typed = attached.stdin.take().unwrap();
    let shown = lines_of(attached.stdout.take().unwrap());
    let mut type_line = |line: &str| {
        typed.write_all(format!("{line}\n").as_bytes()).unwrap();
        typed.flush().unwrap();
    };
    type_line("one");
    assert_eq!(next_line(&shown, "stdin one"), "stdin one");
    let address = source.inspect("{{.NetworkSettings.Networks.app.IPAddress}}", &id);
    let mac = source.inspect("{{.NetworkSettings.Networks.app.MacAddress}}", &id);
    // The client: a machine on host A's side of the network.
    let bridge = ok(&source.docker(&[
        "network",
        "inspect",
        "app",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    ]))
    .trim()
    .to_string();
    sh(&format!(
        "ip link add cl{tag} type veth peer name cc{tag} netns {client}; \
         ip link set cl{tag} master {bridge} mtu 1450 up; \
         ip -n {client} addr add 10.91.0.200/24 dev cc{tag}; ip -n {client} link set cc{tag} mtu 1450 up"
    ));
    let server_at = format!("{address}:7000");
    let (mut conn, mut reader, first) = in_netns(&client, move || connect_echo(server_at));
    assert_eq!(first, "before\n");
    // An exec started on host A: its process goes on at host B, and its
    // client, still connected to A's hulld, is taken back through B's.
    let (mut exec, mut exec_in, mut exec_out) = echoing_exec(&source, &id);
    let (status, report) = migrate(&source, &id, "to=198.51.100.2&downtime=2000");
    assert!(status.contains(" 200 "), "{status} {report}");
    eprintln!("moved to host B: {report}");
    // The same connection, to the same server process, now on host B:
    // its frames cross the VXLAN both ways.
    assert_eq!(echo(&mut conn, &mut reader, "after"), "after\n");
    assert_eq!(echo(&mut conn, &mut reader, "and on"), "and on\n");
    assert_eq!(
        dest.inspect("{{.NetworkSettings.Networks.app.IPAddress}}", &id),
        address
    );
    assert_eq!(dest.inspect("{{.NetworkSettings.Networks.app.MacAddress}}", &id), mac);
    // Its name on the network: host A, which it left, answers it from
    // what host B sends (a client on A's side asks A's name server).
    let resolved = |name: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &client, "busybox", "nslookup", name, "10.91.0.1"])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    // Host B sends its names as the container arrives: no 5 s round to
    // wait for (the time is shown, not asserted: an emulated machine).
    let asked = Instant::now();
    eventually("host A resolves the moved container by its name", || {
        resolved("echo")
            .lines()
            .any(|l| l.starts_with("Address") && l.trim_end().ends_with(&address))
    });
    eprintln!("host A resolved the moved container {:?} after asking", asked.elapsed());
    assert!(!resolved("nosuchcontainer").contains(&address));
    assert_eq!(ok(&dest.docker(&["exec", &id, "echo", "on B"])), "on B\n");
    exec_in.write_all(b"after\n").unwrap();
    assert_eq!(exec_out.next().unwrap().unwrap(), "got after");
    // The client attached on host A types on, and reads the container's
    // output from host B (through B's hulld), nothing lost or repeated.
    type_line("two");
    assert_eq!(next_line(&shown, "stdin two"), "stdin two");
    assert!(!all_ids(&source).contains(&id));
    // And back to host A: the connection, and the exec whose client never
    // left A's hulld (now reached on A again, not through B), go on.
    let (status, report) = migrate(&dest, &id, "to=198.51.100.1&downtime=2000");
    assert!(status.contains(" 200 "), "{status} {report}");
    assert_eq!(echo(&mut conn, &mut reader, "home"), "home\n");
    exec_in.write_all(b"home\n").unwrap();
    assert_eq!(exec_out.next().unwrap().unwrap(), "got home");
    type_line("three");
    assert_eq!(next_line(&shown, "stdin three"), "stdin three");
    let _ = attached.kill();
    let _ = attached.wait();
    drop(exec_in);
    assert!(exec.wait().unwrap().success(), "the exec ends well, back on host A");
    assert!(!all_ids(&dest).contains(&id));
    drop((conn, reader));
    ok(&source.docker(&["rm", "-f", &id]));
    source.assert_no_leftovers();
    dest.assert_no_leftovers();
}

/// A raw socket that sees every frame on one host interface (all
/// protocols: on a bridge's port the bridge takes frames before any
/// protocol's own packet sockets see them).
struct RarpWatch(std::os::fd::OwnedFd);

impl RarpWatch {
    fn on(interface: &str) -> RarpWatch {
        use std::os::fd::{AsRawFd, FromRawFd};
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2); the descriptor is owned from here.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(interface).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index != 0, "no interface {interface}");
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: bind(2) with an address of the size given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(bound, 0, "binding to {interface}: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt(2) with a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        RarpWatch(fd)
    }

    /// Whether a RARP frame from `mac` (`aa:bb:...`) announcing `mac`
    /// comes within `patience`.
    fn saw_announcement(&self, mac: &str, patience: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mac: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        let deadline = Instant::now() + patience;
        let mut frame = vec![0u8; 1600];
        while Instant::now() < deadline {
            // SAFETY: recv(2) into a buffer of the length given.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), 0) };
            // Ethernet: source at 6, type at 12; RARP's sender MAC at 22.
            if n >= 42 && frame[12..14] == [0x80, 0x35] && frame[6..12] == mac[..] && frame[22..28] == mac[..] {
                return true;
            }
        }
        false
    }
}
