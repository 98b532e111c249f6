//! hulld against many and slow clients (no VM): a thousand long-lived
//! streams (`logs -f`, attach, events) held at once while `docker ps` stays
//! quick, the stream cap's 503, every slot back once the clients leave, and
//! clients that send their request head slowly, never, or go idle cut off.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::hulld::{eventually, ok, Hulld};
use testkit::oci::Registry;

/// A hulld of its own started with `args`, a registry holding
/// `test/box:v1`, and the image's name.
fn hulld_with_image(name: &str, args: &[&str]) -> (Hulld, Registry, String) {
    let (hulld, registry, image) = Hulld::with_registry(name, args, json!({"Cmd": ["sh"]})).unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    (hulld, registry, image)
}

/// A created container made to look running, with a log: its "supervisor"
/// is a `sleep` of the test's own, so no VM is needed. Killing the child
/// ends the container as far as hulld can tell.
struct FakeRunning {
    id: String,
    log: PathBuf,
    sleeper: Child,
}

impl FakeRunning {
    fn new(hulld: &Hulld, image: &str, name: &str) -> FakeRunning {
        let id = ok(&hulld.docker(&["create", "--name", name, image, "sh"]))
            .trim()
            .to_string();
        let sleeper = Command::new("sleep").arg("600").spawn().unwrap();
        let dir = hulld.data.join("containers").join(&id);
        let pid = sleeper.id();
        let state = json!({
            "status": "running",
            "pid": pid,
            "pid_start": runtime::container::process_start_time(pid).unwrap(),
            "started_at": "2026-01-01T00:00:00.000000000Z",
            "finished_at": null,
            "exit_code": null,
            "error": "",
        });
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
        let fake = FakeRunning {
            id,
            log: dir.join("container-json.log"),
            sleeper,
        };
        fake.write_line("first line");
        fake
    }

    fn write_line(&self, text: &str) {
        let entry = json!({"log": format!("{text}\n"), "stream": "stdout", "time": "2026-01-01T00:00:01Z"});
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "{entry}").unwrap();
    }

    fn end(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
    }
}

impl Drop for FakeRunning {
    fn drop(&mut self) {
        self.end();
    }
}

/// Sends `request` and reads the answer's head (and whatever came with
/// it); a hulld that does not answer within 20 s fails the test.
fn open(socket: &Path, request: &str) -> (UnixStream, String) {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).expect("hulld answers within 20 s");
        assert!(n > 0, "hulld closed the connection: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    (conn, String::from_utf8_lossy(&seen).into_owned())
}

fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

fn logs_follow(id: &str) -> String {
    format!("GET /containers/{id}/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: hull\r\n\r\n")
}

/// Reads from `conn` until `wanted` shows up; false if the connection ends
/// or 20 s pass first.
fn receives(conn: &mut UnixStream, wanted: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        if String::from_utf8_lossy(&seen).contains(wanted) {
            return true;
        }
    }
    false
}

/// The test holds a thousand sockets; its soft limit may be 1024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit of our own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 4096,
        "this test needs 4096 open files, the hard limit is {}",
        limit.rlim_cur
    );
}

const STREAMS: usize = 1000;

/// 20 raw `GET /containers/json` and 5 `docker ps -a`, timed.
fn list_timings(hulld: &Hulld, expected: &str) -> (testkit::bench::Summary, testkit::bench::Summary) {
    let mut list_times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (head, body) = hulld.raw("GET /containers/json?all=1 HTTP/1.1\r\nHost: hull\r\nConnection: close\r\n\r\n");
        list_times.push(started.elapsed());
        assert_eq!(status(&head), "200", "{head}");
        assert!(body.contains(expected), "{body}");
    }
    let mut ps_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let listed = ok(&hulld.docker(&["ps", "-a", "--format", "{{.Names}}"]));
        ps_times.push(started.elapsed());
        assert!(listed.contains("running") && listed.contains("created"), "{listed}");
    }
    let summary = |times: &[Duration]| testkit::bench::Summary::of(times).expect("samples");
    (summary(&list_times), summary(&ps_times))
}

#[test]
fn a_thousand_streams_do_not_stall_docker_ps_and_their_slots_come_back() {
    raise_open_file_limit();
    let max_streams = STREAMS.to_string();
    let (hulld, _registry, image) = hulld_with_image("streams", &["--max-streams", &max_streams]);
    let created = ok(&hulld.docker(&["create", "--name", "created", &image, "sh"]))
        .trim()
        .to_string();
    let mut running = FakeRunning::new(&hulld, &image, "running");

    let (list_before, ps_before) = list_timings(&hulld, &created);

    // 400 attached to a container that never started, 400 following a
    // running one's log, 200 watching events: each holds its stream.
    let attach = format!(
        "POST /containers/{created}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: hull\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    );
    let started = Instant::now();
    let mut streams = Vec::new();
    for n in 0..STREAMS {
        let request = match n % 5 {
            0 | 1 => attach.clone(),
            2 | 3 => logs_follow(&running.id),
            _ => "GET /events HTTP/1.1\r\nHost: hull\r\n\r\n".to_string(),
        };
        let (conn, head) = open(&hulld.socket, &request);
        let wanted = if n % 5 < 2 { "101" } else { "200" };
        assert_eq!(status(&head), wanted, "stream {n}: {head}");
        streams.push(conn);
    }
    let opened_in = started.elapsed();

    // The API answers as before while they are all held.
    let (list, ps) = list_timings(&hulld, &created);
    eprintln!(
        "{STREAMS} streams opened in {opened_in:?}; GET /containers/json median {:.1} ms p95 {:.1} ms (before: {:.1}/{:.1}), docker ps median {:.1} ms p95 {:.1} ms (before: {:.1}/{:.1})",
        list.median_ms, list.p95_ms, list_before.median_ms, list_before.p95_ms, ps.median_ms, ps.p95_ms, ps_before.median_ms, ps_before.p95_ms
    );
    testkit::bench::write_report(
        "streams",
        &json!({
            "streams_held": STREAMS,
            "open_all_ms": opened_in.as_millis() as u64,
            "containers_json_before": list_before.to_json(),
            "containers_json_while_held": list.to_json(),
            "docker_ps_before": ps_before.to_json(),
            "docker_ps_while_held": ps.to_json(),
            "environment": testkit::bench::environment(),
        }),
    )
    .unwrap();
    assert!(
        list.p95_ms < 1000.0,
        "GET /containers/json p95 {} ms with the streams held",
        list.p95_ms
    );
    assert!(
        ps.p95_ms < 3000.0,
        "docker ps p95 {} ms with the streams held",
        ps.p95_ms
    );

    // A new line reaches a follower; one stream more is refused at once.
    running.write_line("late line");
    assert!(receives(&mut streams[2], "late line"), "a follower got the new line");
    let (_, refused) = open(&hulld.socket, &logs_follow(&running.id));
    assert_eq!(status(&refused), "503", "{refused}");
    assert!(refused.contains("too many concurrent streams"), "{refused}");
    // docker logs without -f takes no slot.
    assert!(ok(&hulld.docker(&["logs", "running"])).contains("late line"));

    // The running container ends: its followers' answers end.
    running.end();
    let follower = &mut streams[3];
    follower.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(
        receives(follower, "0\r\n\r\n"),
        "a follower's answer ended with its container"
    );

    // Every client leaves: all the slots come back, the attached clients'
    // too, though their container never wrote a byte to notice them by.
    drop(streams);
    let left = Instant::now();
    let mut again = Vec::new();
    eventually("every stream slot is free again", || {
        again.clear();
        let events = "GET /events HTTP/1.1\r\nHost: hull\r\n\r\n";
        for _ in 0..STREAMS {
            let (conn, head) = open(&hulld.socket, events);
            if status(&head) != "200" {
                return false;
            }
            again.push(conn);
        }
        true
    });
    assert_eq!(again.len(), STREAMS);
    assert!(
        left.elapsed() < Duration::from_secs(15),
        "slots came back after {:?}",
        left.elapsed()
    );
}

#[test]
fn slow_silent_and_idle_clients_are_cut_off_but_streams_are_not() {
    let (hulld, _registry, image) = hulld_with_image("slow", &["--header-timeout", "2"]);
    let running = FakeRunning::new(&hulld, &image, "running");
    let closed_within = |conn: &mut UnixStream, limit: Duration| {
        let started = Instant::now();
        conn.set_read_timeout(Some(limit + Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let took = started.elapsed();
        assert!(took < limit, "closed after {took:?}, wanted within {limit:?}");
    };

    // Says nothing at all.
    let mut silent = UnixStream::connect(&hulld.socket).unwrap();
    closed_within(&mut silent, Duration::from_secs(5));

    // Sends its head a header at a time, never finishing.
    let mut slow = UnixStream::connect(&hulld.socket).unwrap();
    slow.write_all(b"GET /_ping HTTP/1.1\r\nHost: hull\r\n").unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        if slow.write_all(b"X-Slow: yes\r\n").is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client trickling its headers was still served after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        started.elapsed()
    );

    // A keep-alive connection: served, then closed once idle.
    let (mut idle, head) = open(&hulld.socket, "GET /_ping HTTP/1.1\r\nHost: hull\r\n\r\n");
    assert_eq!(status(&head), "200", "{head}");
    closed_within(&mut idle, Duration::from_secs(5));

    // A follower whose container writes nothing for longer is not cut off.
    let (mut follower, head) = open(&hulld.socket, &logs_follow(&running.id));
    assert_eq!(status(&head), "200", "{head}");
    std::thread::sleep(Duration::from_secs(5));
    running.write_line("after a quiet while");
    assert!(
        receives(&mut follower, "after a quiet while"),
        "the quiet follower was kept"
    );
    // And hulld serves everyone else throughout.
    assert!(ok(&hulld.docker(&["version"])).contains("Server: hull"));
}
