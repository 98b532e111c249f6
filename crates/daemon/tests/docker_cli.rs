//! The real `docker` CLI against hulld, for everything that needs no VM:
//! API negotiation, system information, images (pull from a real registry
//! on loopback, list, inspect, tag, remove) and containers that are
//! created, listed, renamed and removed, with Docker's errors for bad input.

use std::process::Output;

use serde_json::json;
use testkit::hulld::{ok, text, Hulld};
use testkit::oci::{busybox_image, push_image, Registry};

fn fails(out: &Output, code: i32, message: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {} stderr: {stderr}",
        text(&out.stdout)
    );
    assert!(stderr.contains(message), "expected {message:?} in: {stderr}");
}

/// One raw HTTP/1.1 request on the API socket: the status line and headers, and the body.
/// A hulld of its own and a registry holding `test/box:v1` (busybox, `Cmd: sh`).
fn with_box_image(name: &str) -> (Hulld, Registry, String) {
    with_box_image_args(name, &[])
}

/// The same, hulld started with `args` too.
fn with_box_image_args(name: &str, args: &[&str]) -> (Hulld, Registry, String) {
    Hulld::with_registry(name, args, json!({"Cmd": ["sh"]})).unwrap()
}

#[test]
fn the_cli_negotiates_the_api_and_reads_the_system() {
    let hulld = Hulld::start("system").unwrap();
    // The first command after the start (issue 17 saw `docker logs UNKNOWN`
    // exit 1 with nothing printed; the CLI prints every error it gets, so
    // only an unread or closed stderr is silent).
    fails(&hulld.docker(&["logs", "UNKNOWN"]), 1, "No such container: UNKNOWN");
    let version = ok(&hulld.docker(&["version"]));
    assert!(version.contains("Server: hull"), "{version}");
    assert!(version.contains("1.51 (minimum version 1.24)"), "{version}");
    let os = ok(&hulld.docker(&["info", "--format", "{{.OperatingSystem}} {{.Containers}} {{.Driver}}"]));
    assert_eq!(os.trim(), "hull (containers in KVM microVMs) 0 hull");

    let (head, body) = hulld.raw("HEAD /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("api-version: 1.51"), "{head}");
    assert!(body.is_empty());
    let (head, body) = hulld.raw("GET /v1.50/_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && body == "OK", "{head}{body}");
    let (head, body) = hulld.raw("GET /v1.12/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("client version 1.12 is too old"), "{body}");
    let (head, body) = hulld.raw("GET /nothing/here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 404") && body.contains("\"message\""),
        "{head}{body}"
    );
    let (head, body) = hulld.raw("POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{bad}",
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("invalid JSON"),
        "{head}{body}"
    );

    // A second daemon on the same socket is refused; the first keeps serving.
    let second = std::process::Command::new(testkit::boot::workspace_binary("hulld").unwrap())
        .arg("--socket")
        .arg(&hulld.socket)
        .arg("--data-dir")
        .arg(hulld.work.join("other"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("already serving"),
        "{}",
        text(&second.stderr)
    );
    ok(&hulld.docker(&["version"]));
}

#[test]
fn images_are_pulled_listed_tagged_inspected_and_removed() {
    let (hulld, registry, name) = with_box_image("images");

    let out = ok(&hulld.docker(&["pull", &name]));
    assert!(out.contains("Pull complete"), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {name}")),
        "{out}"
    );
    assert!(out.contains("Digest: sha256:"), "{out}");
    let again = ok(&hulld.docker(&["pull", &name]));
    assert!(again.contains("Image is up to date"), "{again}");

    let listed = ok(&hulld.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(listed.trim(), name);
    let os = ok(&hulld.docker(&["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", &name]));
    assert_eq!(os.trim(), "linux/amd64");
    ok(&hulld.docker(&["tag", &name, "mine:latest"]));
    let listed = ok(&hulld.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert!(listed.contains("mine:latest"), "{listed}");
    let untagged = ok(&hulld.docker(&["rmi", "mine"]));
    assert!(untagged.contains("Untagged: mine:latest"), "{untagged}");

    fails(
        &hulld.docker(&["pull", &format!("{}/test/absent:v1", registry.addr)]),
        1,
        "not found",
    );
    fails(
        &hulld.docker(&["image", "inspect", "nothing:here"]),
        1,
        "No such image: nothing:here",
    );
    fails(&hulld.docker(&["rmi", "nothing:here"]), 1, "No such image");

    // An image a container uses is kept unless forced.
    ok(&hulld.docker(&["create", "--name", "user", &name]));
    fails(&hulld.docker(&["rmi", &name]), 1, "image is being used");
    ok(&hulld.docker(&["rm", "user"]));
    let removed = ok(&hulld.docker(&["rmi", &name]));
    assert!(removed.contains("Deleted: sha256:"), "{removed}");
    assert_eq!(ok(&hulld.docker(&["images", "-q"])).trim(), "");
}

#[test]
fn containers_are_created_listed_renamed_and_removed() {
    let (hulld, registry, name) = with_box_image("create");
    let bare = push_image(&registry, &hulld.work, busybox_image(json!({})), "test/bare:v1").unwrap();

    // Not in the store: `docker create` pulls it, as Docker does.
    let created = hulld.docker(&["create", "--name", "web", "-l", "tier=front", &name, "echo", "hi"]);
    let id = ok(&created).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(
        text(&created.stderr).contains("Unable to find image"),
        "{}",
        text(&created.stderr)
    );

    let row = ok(&hulld.docker(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Command}}"]));
    assert_eq!(row.trim(), format!("{} web Created \"echo hi\"", &id[..12]));
    assert_eq!(ok(&hulld.docker(&["ps", "-q"])).trim(), "", "not running");
    let filtered = ok(&hulld.docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=tier=front",
        "--filter",
        "status=created",
    ]));
    assert_eq!(filtered.trim(), &id[..12]);
    assert_eq!(ok(&hulld.docker(&["ps", "-aq", "--filter", "name=nomatch"])).trim(), "");
    let state = ok(&hulld.docker(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.Name}} {{.Config.Hostname}} {{.Path}} {{.Args}} {{.Config.Labels.tier}}",
        "web",
    ]));
    assert_eq!(state.trim(), format!("created /web {} echo [hi] front", &id[..12]));

    fails(
        &hulld.docker(&["create", "--name", "web", &name]),
        1,
        "is already in use by container",
    );
    fails(
        &hulld.docker(&["create", "--name", "-bad", &name]),
        1,
        "Invalid container name",
    );
    fails(
        &hulld.docker(&["create", "--ip", "172.17.0.9", &name]),
        1,
        "user specified IP address is supported on user defined networks only",
    );
    fails(
        &hulld.docker(&["create", "--network", "nosuch", &name]),
        1,
        "network nosuch not found",
    );
    fails(
        &hulld.docker(&["create", "--network", "host", &name]),
        1,
        "--network host is not supported",
    );
    fails(
        &hulld.docker(&[
            "create",
            "--mount",
            "type=bind,source=/nonexistent-hull-test,target=/x",
            &name,
        ]),
        1,
        "bind source path does not exist: /nonexistent-hull-test",
    );
    fails(
        &hulld.docker(&["create", "-v", "/tmp:/tmp:rshared", &name]),
        1,
        "bind propagation 'rshared' is not supported",
    );
    fails(
        &hulld.docker(&["create", "--cap-add", "FLY", &name]),
        1,
        "unknown capability: \"CAP_FLY\"",
    );
    fails(
        &hulld.docker(&["create", "--pid", "container:other", &name]),
        1,
        "each container runs in its own VM",
    );
    fails(&hulld.docker(&["create", &bare]), 1, "No command specified");
    fails(
        &hulld.docker(&["create", "--pull", "never", "absent:v9"]),
        1,
        "No such image",
    );
    fails(&hulld.docker(&["create", "-m", "1t", &name]), 1, "memory");
    let body =
        format!(r#"{{"Image":"{name}","HostConfig":{{"AutoRemove":true,"RestartPolicy":{{"Name":"always"}}}}}}"#);
    let (head, answer) = hulld.raw(&format!(
            "POST /v1.51/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && answer.contains("AutoRemove"),
        "{head}{answer}"
    );

    ok(&hulld.docker(&["rename", "web", "web2"]));
    fails(&hulld.docker(&["inspect", "web"]), 1, "No such");
    assert_eq!(
        ok(&hulld.docker(&["ps", "-a", "--format", "{{.Names}}"])).trim(),
        "web2"
    );
    // A created container: logs are empty, wait answers at once, kill refuses.
    assert_eq!(ok(&hulld.docker(&["logs", "web2"])), "");
    assert_eq!(ok(&hulld.docker(&["wait", "web2"])).trim(), "0");
    fails(&hulld.docker(&["kill", "web2"]), 1, "is not running");
    fails(&hulld.docker(&["exec", "web2", "true"]), 1, "is not running");
    fails(
        &hulld.docker(&["exec", "nothing", "true"]),
        1,
        "No such container: nothing",
    );

    // What happened so far, as `docker events` tells it.
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let events = ok(&hulld.docker(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "type=container",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ]));
    assert_eq!(events, "container create web\ncontainer rename web2\n", "{events}");

    // Records survive a daemon restart.
    let mut hulld = hulld;
    hulld.restart().unwrap();
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])).trim(), &id[..12]);
    ok(&hulld.docker(&["rm", &id[..6]]));
    fails(&hulld.docker(&["rm", "web2"]), 1, "No such container: web2");
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])).trim(), "");
    assert!(
        !hulld.data.join("containers").join(&id).exists(),
        "the container's files are gone"
    );
}

#[test]
fn log_drivers_and_options_are_checked_at_create_and_shown_in_inspect() {
    let (hulld, _registry, name) = with_box_image("logopts");
    // Log drivers and options, checked at create with dockerd's messages.
    for (args, message) in [
        (
            &["--log-driver", "foo"][..],
            "logger: no log driver named 'foo' is registered",
        ),
        (
            &["--log-driver", "syslog"],
            "the syslog log driver is not supported by hull",
        ),
        (&["--log-opt", "max-size=ten"], "invalid size: 'ten'"),
        (&["--log-opt", "max-file=0"], "max-file cannot be less than 1"),
        (
            &["--log-opt", "frequency=1"],
            "unknown log opt 'frequency' for json-file log driver",
        ),
    ] {
        let create: Vec<&str> = ["create"]
            .into_iter()
            .chain(args.iter().copied())
            .chain([name.as_str()])
            .collect();
        fails(&hulld.docker(&create), 1, message);
    }
    let logged = ok(&hulld.docker(&["create", "--log-driver", "local", "--log-opt", "max-size=5m", &name]));
    assert_eq!(
        hulld.inspect(
            "{{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}}",
            logged.trim()
        ),
        "local 5m"
    );
    let plain = ok(&hulld.docker(&["create", "--log-opt", "max-file=3", "--log-opt", "max-size=1k", &name]));
    assert_eq!(
        hulld.inspect("{{json .HostConfig.LogConfig}}", plain.trim()),
        r#"{"Type":"json-file","Config":{"max-file":"3","max-size":"1k"}}"#
    );
    ok(&hulld.docker(&["rm", logged.trim(), plain.trim()]));
}

#[test]
fn docker_update_changes_the_restart_policy_and_a_stopped_containers_resources() {
    let (hulld, _registry, name) = with_box_image("update");
    let id = ok(&hulld.docker(&["create", "--name", "upd", &name, "true"]));
    assert_eq!(
        ok(&hulld.docker(&["update", "--restart", "on-failure:3", "upd"])).trim(),
        "upd"
    );
    assert_eq!(
        hulld.inspect(
            "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            "upd"
        ),
        "on-failure 3"
    );
    ok(&hulld.docker(&[
        "update",
        "--memory",
        "512m",
        "--cpus",
        "1.5",
        "--pids-limit",
        "20",
        "upd",
    ]));
    assert_eq!(
        hulld.inspect(
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
            "upd"
        ),
        "536870912 1500000000 20"
    );
    // The next start takes them: the VM's shape is in the container's spec.
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(hulld.data.join("containers").join(id.trim()).join("spec.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            &spec["memory_mib"],
            &spec["cpus"],
            &spec["cpu_limit_millis"],
            &spec["pids_limit"]
        ),
        (&json!(512), &json!(2), &json!(1500), &json!(20))
    );
    fails(
        &hulld.docker(&["update", "--restart", "sometimes", "upd"]),
        1,
        "invalid restart policy",
    );
    fails(&hulld.docker(&["update", "--cpus", "0.001", "upd"]), 1, "Range of CPUs");
    fails(
        &hulld.docker(&["update", "--restart", "always", "nosuch"]),
        1,
        "No such container",
    );
    ok(&hulld.docker(&["create", "--rm", "--name", "gone", &name, "true"]));
    fails(
        &hulld.docker(&["update", "--restart", "always", "gone"]),
        1,
        "Restart policy cannot be updated because AutoRemove is enabled",
    );
    ok(&hulld.docker(&["rm", "upd", "gone"]));

    // A healthcheck from the flags, shown in inspect; --no-healthcheck.
    let checked = ok(&hulld.docker(&[
        "create",
        "--health-cmd",
        "exit 0",
        "--health-interval",
        "2s",
        "--health-retries",
        "4",
        &name,
        "true",
    ]));
    assert_eq!(
        hulld.inspect(
            "{{json .Config.Healthcheck.Test}} {{.Config.Healthcheck.Interval}} {{.Config.Healthcheck.Retries}}",
            checked.trim()
        ),
        r#"["CMD-SHELL","exit 0"] 2s 4"#
    );
    let unchecked = ok(&hulld.docker(&["create", "--no-healthcheck", &name, "true"]));
    assert_eq!(
        hulld.inspect("{{json .Config.Healthcheck.Test}}", unchecked.trim()),
        r#"["NONE"]"#
    );
    ok(&hulld.docker(&["rm", checked.trim(), unchecked.trim()]));
}

#[test]
fn the_python_docker_sdk_drives_hulld() {
    let (hulld, _registry, name) = with_box_image("sdk");
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/docker_sdk.py"))
        .arg(&hulld.socket)
        .arg(&name)
        .output()
        .unwrap();
    assert_eq!(ok(&out).trim(), "sdk ok", "{}", text(&out.stderr));
}

#[test]
fn images_are_saved_loaded_pruned_and_counted() {
    let (hulld, _registry, image) = with_box_image("save");
    ok(&hulld.docker(&["pull", "-q", &image]));
    let history = ok(&hulld.docker(&["history", "--format", "{{.CreatedBy}}|{{.Size}}", &image]));
    let rows: Vec<&str> = history.lines().collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert_eq!(rows[0], "testkit: config|0B", "newest first: {history}");
    assert!(
        rows[1].starts_with("testkit: layer 0|") && !rows[1].ends_with("|0B"),
        "{history}"
    );
    fails(&hulld.docker(&["history", "nothing:here"]), 1, "No such image");

    // save, remove, load back: the same image under the same name.
    let id = ok(&hulld.docker(&["image", "inspect", "--format", "{{.Id}}", &image]))
        .trim()
        .to_string();
    let archive = hulld.work.join("box.tar");
    ok(&hulld.docker(&["save", "-o", archive.to_str().unwrap(), &image]));
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = text(&listing.stdout);
    for entry in ["manifest.json", "index.json", "oci-layout"] {
        assert!(names.lines().any(|l| l == entry), "{entry} in {names}");
    }
    ok(&hulld.docker(&["rmi", &image]));
    let loaded = ok(&hulld.docker(&["load", "-i", archive.to_str().unwrap()]));
    assert!(loaded.contains(&format!("Loaded image: {image}")), "{loaded}");
    let again = ok(&hulld.docker(&["image", "inspect", "--format", "{{.Id}}", &image]));
    assert_eq!(again.trim(), id);
    // skopeo reads it as an OCI archive too.
    let skopeo = std::process::Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(skopeo.status.success(), "{}", text(&skopeo.stderr));
    let garbage = hulld.work.join("garbage.tar");
    std::fs::write(&garbage, b"not a tar at all").unwrap();
    let refused = hulld.docker(&["load", "-i", garbage.to_str().unwrap()]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(text(&refused.stderr).contains("archive"), "{}", text(&refused.stderr));
    ok(&hulld.docker(&["image", "inspect", &image]));

    // An image saved by ID loads untagged: dangling, and pruned.
    let untagged = hulld.work.join("untagged.tar");
    ok(&hulld.docker(&["save", "-o", untagged.to_str().unwrap(), &id]));
    ok(&hulld.docker(&["rmi", &image]));
    let loaded = ok(&hulld.docker(&["load", "-i", untagged.to_str().unwrap()]));
    assert!(loaded.contains(&format!("Loaded image ID: {id}")), "{loaded}");
    let pruned = ok(&hulld.docker(&["image", "prune", "-f"]));
    assert!(pruned.contains(&format!("deleted: {id}")), "{pruned}");
    assert_eq!(ok(&hulld.docker(&["images", "-q"])), "");

    // prune -a keeps what a container uses; container prune removes stopped ones.
    ok(&hulld.docker(&["load", "-i", archive.to_str().unwrap()]));
    let container = ok(&hulld.docker(&["create", "--name", "user", &image, "true"]))
        .trim()
        .to_string();
    ok(&hulld.docker(&["image", "prune", "-a", "-f"]));
    ok(&hulld.docker(&["image", "inspect", &image]));
    let df = ok(&hulld.docker(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"]));
    assert!(df.contains("Images 1 1") && df.contains("Containers 1 0"), "{df}");
    let pruned = ok(&hulld.docker(&["container", "prune", "-f"]));
    assert!(pruned.contains(&container), "{pruned}");
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])), "");
    let pruned = ok(&hulld.docker(&["system", "prune", "-a", "-f"]));
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert_eq!(ok(&hulld.docker(&["images", "-q"])), "", "nothing used it any more");
}

/// Serves `body` once over HTTP on loopback; the URL to fetch it from.
fn serve_once(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
    });
    format!("http://127.0.0.1:{port}/rootfs.tgz")
}

#[test]
fn images_are_imported_from_tarballs_files_and_urls_with_changes() {
    let hulld = Hulld::start("import").unwrap();
    let root = hulld.work.join("rootfs");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/run.sh"), "#!/bin/sh\necho imported\n").unwrap();
    std::fs::write(root.join("motd"), "hello\n").unwrap();
    let tgz = hulld.work.join("rootfs.tgz");
    let made = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-czf")
        .arg(&tgz)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    let plain_digest = {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("gunzip -c {} | sha256sum", tgz.display()))
            .output()
            .unwrap();
        format!("sha256:{}", text(&out.stdout).split_whitespace().next().unwrap())
    };

    // A file, with changes and a message: the config, comment and single layer are Docker's.
    let id = ok(&hulld.docker(&[
        "import",
        "-c",
        "CMD [\"/app/run.sh\"]",
        "-c",
        "ENV MODE=prod",
        "-c",
        "EXPOSE 8080",
        "-m",
        "first import",
        tgz.to_str().unwrap(),
        "imp/app:v1",
    ]));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let seen = ok(&hulld.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}|{{json .Config.Cmd}}|{{json .Config.Env}}|{{json .Config.ExposedPorts}}|{{.Comment}}|{{json .RootFS.Layers}}",
        "imp/app:v1",
    ]));
    assert_eq!(
        seen.trim(),
        format!(
            "{}|[\"/app/run.sh\"]|[\"MODE=prod\"]|{{\"8080/tcp\":{{}}}}|first import|[\"{plain_digest}\"]",
            id.trim()
        )
    );
    let history = ok(&hulld.docker(&["history", "--format", "{{.Comment}}", "imp/app:v1"]));
    assert_eq!(history.trim(), "first import");
    assert!(ok(&hulld.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])).contains("imp/app:v1"));

    // Standard input, untagged but for the name given; a URL, with Docker's default comment.
    let from_stdin = hulld
        .docker_command(&["import", "-", "imp/stdin"])
        .stdin(std::fs::File::open(&tgz).unwrap())
        .output()
        .unwrap();
    assert!(from_stdin.status.success(), "{}", text(&from_stdin.stderr));
    let url = serve_once(std::fs::read(&tgz).unwrap());
    ok(&hulld.docker(&["import", &url, "imp/url:1"]));
    let comment = ok(&hulld.docker(&["image", "inspect", "--format", "{{.Comment}}", "imp/url:1"]));
    assert_eq!(comment.trim(), format!("Imported from {url}"));
    // The same content makes the same layer: one blob under three images.
    let layers = ok(&hulld.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        "imp/stdin",
        "imp/url:1",
    ]));
    assert_eq!(layers.matches(&plain_digest).count(), 2, "{layers}");

    // It saves as any image does.
    let saved = hulld.work.join("imported.tar");
    ok(&hulld.docker(&["save", "-o", saved.to_str().unwrap(), "imp/app:v1"]));
    assert!(std::fs::metadata(&saved).unwrap().len() > 0);

    // Bad input: Docker's words, and nothing stored.
    let garbage = hulld.work.join("garbage.tar");
    std::fs::write(&garbage, vec![b'x'; 2048]).unwrap();
    fails(
        &hulld.docker(&["import", garbage.to_str().unwrap(), "imp/bad"]),
        1,
        "not a tar archive",
    );
    fails(
        &hulld.docker(&["import", "-c", "RUN rm -rf /", tgz.to_str().unwrap(), "imp/bad"]),
        1,
        "run is not a valid change command",
    );
    fails(
        &hulld.docker(&["import", "-c", "EXPOSE 99999", tgz.to_str().unwrap(), "imp/bad"]),
        1,
        "invalid containerPort",
    );
    let bzip = hulld.work.join("rootfs.tar.bz2");
    std::fs::write(&bzip, b"BZh91AY&SY not really").unwrap();
    fails(
        &hulld.docker(&["import", bzip.to_str().unwrap(), "imp/bad"]),
        1,
        "bzip2 tarballs are not supported",
    );
    // The CLI reads anything but http(s) as a file; the API is asked directly.
    let (head, body) = hulld.raw(
        "POST /images/create?fromSrc=ftp://example/x.tar&repo=imp/bad HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("only http and https"),
        "{head}\n{body}"
    );
    fails(&hulld.docker(&["image", "inspect", "imp/bad"]), 1, "No such image");
    let partial: Vec<_> = std::fs::read_dir(hulld.data.join("images/partial")).unwrap().collect();
    assert!(partial.is_empty(), "scratch files left behind: {partial:?}");
}

#[test]
fn the_api_is_served_over_tls_to_clients_with_a_certificate() {
    let certs = std::env::temp_dir().join(format!("hulld-tls-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    let ca = testkit::certs::Certs::new(&certs).unwrap();
    ca.issue("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    // The client's certificate is signed by the server's CA, as dockerd's
    // set-up has it, under the names DOCKER_CERT_PATH has for it.
    ca.issue("client", "extendedKeyUsage=clientAuth\n").unwrap();
    std::fs::rename(certs.join("client-cert.pem"), certs.join("cert.pem")).unwrap();
    std::fs::rename(certs.join("client-key.pem"), certs.join("key.pem")).unwrap();
    // A stranger: a client certificate from another CA.
    testkit::certs::Certs::new(&certs.join("stranger"))
        .and_then(|stranger| stranger.issue("stranger", "extendedKeyUsage=clientAuth\n"))
        .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let path = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let hulld = Hulld::start_with(
        "tls",
        &[
            "--tls-listen",
            &address,
            "--tlscacert",
            &path("ca.pem"),
            "--tlscert",
            &path("server-cert.pem"),
            "--tlskey",
            &path("server-key.pem"),
            "--max-connections",
            "2",
        ],
    )
    .unwrap();
    let docker = |env: &[(&str, String)], args: &[&str]| {
        let mut command = std::process::Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", format!("tcp://{address}"))
            .env("DOCKER_CONFIG", hulld.work.join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let verified = [("DOCKER_TLS_VERIFY", "1".to_string()), ("DOCKER_CERT_PATH", path(""))];
    let version = ok(&docker(&verified, &["version", "--format", "{{.Server.Version}}"]));
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    assert_eq!(ok(&docker(&verified, &["ps", "-aq"])), "");
    let events = ok(&docker(&verified, &["events", "--since", "1h", "--until", "0s"]));
    assert_eq!(events, "", "a streamed answer ends cleanly over TLS");

    // No client certificate, another CA's, or no TLS at all: refused.
    let refusals = [
        docker(&[], &["--tls", "--tlscacert", &path("ca.pem"), "version"]),
        docker(
            &[],
            &[
                "--tlsverify",
                "--tlscacert",
                &path("ca.pem"),
                "--tlscert",
                &path("stranger/stranger-cert.pem"),
                "--tlskey",
                &path("stranger/stranger-key.pem"),
                "version",
            ],
        ),
        docker(&[], &["version"]),
    ];
    for refused in refusals {
        assert!(!refused.status.success(), "{}", text(&refused.stdout));
        assert!(!text(&refused.stdout).contains("Server:"), "{}", text(&refused.stdout));
    }
    // The unix socket still serves, and hulld survived the strangers.
    assert!(ok(&hulld.docker(&["version"])).contains("Server: hull"));

    // Two connections held (`--max-connections 2`, not even a handshake):
    // the next client is turned away at once; once they close, served again.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let turned_away = docker(&verified, &["ps", "-aq"]);
    assert!(!turned_away.status.success(), "{}", text(&turned_away.stdout));
    drop(held);
    testkit::hulld::eventually("a TLS client is served again", || {
        docker(&verified, &["ps", "-aq"]).status.success()
    });
    let bad_files = std::process::Command::new(testkit::boot::workspace_binary("hulld").unwrap())
        .args(["--socket", "/tmp/never-bound.sock", "--tls-listen", &address])
        .output()
        .unwrap();
    assert!(
        text(&bad_files.stderr).contains("--tlscacert"),
        "{}",
        text(&bad_files.stderr)
    );
    let _ = std::fs::remove_dir_all(&certs);
}

#[test]
fn docker_login_and_pulls_carry_the_clients_credentials() {
    let hulld = Hulld::start("auth").unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let registry = Registry::start("hulld-auth", Some(&format!("tester:{hash}\n"))).unwrap();
    let layout = hulld.work.join("layout");
    testkit::oci::write_layout(&layout, "t", &[busybox_image(json!({"Cmd": ["sh"]}))]).unwrap();
    registry
        .push(&layout, "t", "private/box:v1", Some("tester:s3cret"))
        .unwrap();
    let name = format!("{}/private/box:v1", registry.addr);

    // hulld has no credentials of its own: without the client's, denied.
    let denied = hulld.docker(&["pull", &name]);
    assert!(!denied.status.success());
    let said = text(&denied.stderr);
    assert!(
        said.contains("pull access denied") || said.contains("authentication"),
        "{said}"
    );

    let login = |password: &str| {
        let mut child = hulld
            .docker_command(&["login", "-u", "tester", "--password-stdin", &registry.addr])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let refused = login("wrong");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("unauthorized"),
        "{}",
        text(&refused.stderr)
    );
    let accepted = login("s3cret");
    assert!(ok(&accepted).contains("Login Succeeded"));
    // The CLI now sends X-Registry-Auth with the pull.
    ok(&hulld.docker(&["pull", "-q", &name]));
    ok(&hulld.docker(&["image", "inspect", &name]));

    let (head, body) = hulld.raw(&format!(
        "POST /images/create?fromImage={name} HTTP/1.1\r\nHost: x\r\nX-Registry-Auth: !!not base64!!\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("invalid X-Registry-Auth"), "{body}");
}

#[test]
fn volumes_are_created_listed_inspected_pruned_and_removed() {
    let (hulld, registry, image) = with_box_image("volumes");
    assert_eq!(
        ok(&hulld.docker(&["volume", "create", "--label", "team=db", "pgdata"])),
        "pgdata\n"
    );
    // Creating it again is no error, as in Docker.
    ok(&hulld.docker(&["volume", "create", "pgdata"]));
    let anonymous = ok(&hulld.docker(&["volume", "create"])).trim().to_string();
    assert_eq!(anonymous.len(), 64);
    let listed = ok(&hulld.docker(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]));
    assert!(listed.contains("local pgdata"), "{listed}");
    assert_eq!(
        ok(&hulld.docker(&["volume", "ls", "-q", "--filter", "label=team=db"])),
        "pgdata\n"
    );
    assert_eq!(
        ok(&hulld.docker(&[
            "volume",
            "inspect",
            "--format",
            "{{.Name}} {{.Scope}} {{.Labels.team}}",
            "pgdata"
        ])),
        "pgdata local db\n"
    );
    fails(&hulld.docker(&["volume", "inspect", "nothing"]), 1, "no such volume");
    fails(
        &hulld.docker(&["volume", "create", "bad name"]),
        1,
        "invalid volume name",
    );
    fails(
        &hulld.docker(&["volume", "create", "-d", "nfs", "x1"]),
        1,
        "not supported",
    );
    // Docker's local driver binding a host directory: the volume is that
    // directory, and removing the volume leaves it.
    let device = hulld.work.join("device");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("kept"), "mine").unwrap();
    let device_opt = format!("device={}", device.display());
    ok(&hulld.docker(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        &device_opt,
        "hostdir",
    ]));
    let inspected = ok(&hulld.docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}} {{.Options.type}} {{.Options.o}} {{.Options.device}}",
        "hostdir",
    ]));
    let real = std::fs::canonicalize(&device).unwrap();
    assert_eq!(inspected, format!("{0} none bind {0}\n", real.display()));
    for (options, why) in [
        (vec!["-o", "type=none", "-o", "o=bind"], "all three"),
        (vec!["-o", "o=bind", "-o", &device_opt], "all three"),
        (
            vec!["-o", "type=none", "-o", "o=bind", "-o", "device=relative"],
            "absolute",
        ),
        (
            vec!["-o", "type=none", "-o", "o=bind", "-o", "device=/no/such/dir"],
            "No such file",
        ),
        (
            vec!["-o", "type=nfs", "-o", "o=addr=1.2.3.4", "-o", "device=:/x"],
            "not supported",
        ),
    ] {
        let mut args = vec!["volume", "create"];
        args.extend(options);
        args.push("badbind");
        fails(&hulld.docker(&args), 1, why);
    }
    ok(&hulld.docker(&["volume", "rm", "hostdir"]));
    assert_eq!(std::fs::read_to_string(device.join("kept")).unwrap(), "mine");

    // A container refers to its volumes: not removable (unless forced),
    // and not pruned; a host directory is bound (a file is refused).
    ok(&hulld.docker(&["create", "--name", "db", "-v", "pgdata:/var/lib/data", &image, "true"]));
    let mounts = ok(&hulld.docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{end}}",
        "db",
    ]));
    assert_eq!(mounts, "volume pgdata /var/lib/data\n");
    fails(&hulld.docker(&["volume", "rm", "pgdata"]), 1, "volume is in use");
    let shared = hulld.work.join("shared");
    let bind = format!("{}:/x:ro", shared.display());
    ok(&hulld.docker(&["create", "--name", "dev", "-v", &bind, &image, "true"]));
    assert!(shared.is_dir(), "-v makes a missing host directory, as Docker does");
    let mounts = ok(&hulld.docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Source}} {{.Destination}} {{.RW}}{{end}}",
        "dev",
    ]));
    assert_eq!(mounts, format!("bind {} /x false\n", shared.display()));
    ok(&hulld.docker(&["rm", "dev"]));
    assert!(shared.is_dir(), "a bind mount's directory outlives its container");
    // A single file is bound alone; a socket would not reach across the VM.
    ok(&hulld.docker(&[
        "create",
        "--name",
        "one-file",
        "-v",
        "/etc/hostname:/etc/x:ro",
        &image,
        "true",
    ]));
    ok(&hulld.docker(&["rm", "one-file"]));
    let socket = hulld.work.join("api.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fails(
        &hulld.docker(&["create", "-v", &format!("{}:/x", socket.display()), &image, "true"]),
        1,
        "not supported",
    );
    fails(
        &hulld.docker(&["create", "-v", "pgdata:relative", &image, "true"]),
        1,
        "",
    );
    let df = ok(&hulld.docker(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"]));
    assert!(df.contains("Local Volumes 2 1"), "{df}");
    // prune: only anonymous volumes by default; --all takes unused named ones too.
    ok(&hulld.docker(&["volume", "create", "spare"]));
    let pruned = ok(&hulld.docker(&["volume", "prune", "-f"]));
    assert!(pruned.contains(&anonymous), "{pruned}");
    let left = ok(&hulld.docker(&["volume", "ls", "-q"]));
    assert_eq!(left, "pgdata\nspare\n");
    ok(&hulld.docker(&["volume", "prune", "-a", "-f"]));
    assert_eq!(ok(&hulld.docker(&["volume", "ls", "-q"])), "pgdata\n");
    ok(&hulld.docker(&["rm", "db"]));
    ok(&hulld.docker(&["volume", "rm", "pgdata"]));
    assert_eq!(ok(&hulld.docker(&["volume", "ls", "-q"])), "");

    // An image's VOLUME becomes an anonymous volume, unless a named one is
    // mounted there; it goes with its container (rm -v).
    let with_volume = push_image(
        &registry,
        &hulld.work,
        busybox_image(json!({"Cmd": ["sh"], "Volumes": {"/var/lib/db": {}}})),
        "test/db:v1",
    )
    .unwrap();
    ok(&hulld.docker(&["pull", "-q", &with_volume]));
    ok(&hulld.docker(&["create", "--name", "db2", &with_volume]));
    let mount = ok(&hulld.docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}} {{.Destination}}{{end}}",
        "db2",
    ]));
    let (name, destination) = mount.trim().split_once(' ').unwrap();
    assert_eq!((name.len(), destination), (64, "/var/lib/db"), "{mount}");
    ok(&hulld.docker(&["create", "--name", "db3", "-v", "named:/var/lib/db", &with_volume]));
    let mount = ok(&hulld.docker(&["inspect", "--format", "{{range .Mounts}}{{.Name}}{{end}}", "db3"]));
    assert_eq!(mount, "named\n");
    // A create that fails leaves no volume behind.
    fails(
        &hulld.docker(&["create", "--name", "db2", &with_volume]),
        1,
        "already in use",
    );
    let volumes = ok(&hulld.docker(&["volume", "ls", "-q"]));
    assert_eq!(volumes.lines().count(), 2, "{volumes}");
    ok(&hulld.docker(&["rm", "-v", "db2", "db3"]));
    assert_eq!(ok(&hulld.docker(&["volume", "ls", "-q"])), "named\n");
}

#[test]
fn networks_take_their_subnets_from_the_address_plan() {
    // Networks nobody uses change nothing on the host: this runs outside a VM.
    let hulld = Hulld::start_with(
        "netplan",
        &[
            "--bip",
            "10.123.0.1/24",
            "--default-address-pool",
            "base=10.124.0.0/16,size=24",
        ],
    )
    .unwrap();
    let subnet = |name: &str| {
        ok(&hulld.docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
            name,
        ]))
        .trim()
        .to_string()
    };
    assert_eq!(subnet("bridge"), "10.123.0.0/24 10.123.0.1");
    ok(&hulld.docker(&["network", "create", "one"]));
    ok(&hulld.docker(&["network", "create", "--internal", "--label", "a=b", "two"]));
    assert_eq!(subnet("one"), "10.124.0.0/24 10.124.0.1");
    assert_eq!(subnet("two"), "10.124.1.0/24 10.124.1.1");
    fails(
        &hulld.docker(&["network", "create", "--subnet", "10.123.0.0/16", "clash"]),
        1,
        "overlaps",
    );
    fails(
        &hulld.docker(&["network", "create", "--gateway", "10.9.9.9", "nosubnet"]),
        1,
        "subnet",
    );
    fails(
        &hulld.docker(&[
            "network",
            "create",
            "--subnet",
            "10.125.0.0/24",
            "--gateway",
            "10.125.0.0",
            "outside",
        ]),
        1,
        "invalid gateway",
    );
    fails(&hulld.docker(&["network", "create", "one"]), 1, "already exists");
    fails(
        &hulld.docker(&["network", "create", "--driver", "overlay", "ov"]),
        1,
        "not supported",
    );
    fails(&hulld.docker(&["network", "rm", "bridge"]), 1, "pre-defined");
    fails(&hulld.docker(&["network", "inspect", "nothing"]), 1, "not found");
    // A network that spans hosts: its VXLAN options, checked, and shown.
    let spanning = |name: &str, options: &[&str]| {
        let mut args = vec![
            "network",
            "create",
            "--subnet",
            "10.126.0.0/24",
            "--ip-range",
            "10.126.0.0/25",
        ];
        for option in options {
            args.extend(["-o", option]);
        }
        args.push(name);
        hulld.docker(&args)
    };
    ok(&spanning(
        "span",
        &["hull.vxlan.id=42", "hull.vxlan.peers=192.0.2.2,192.0.2.3"],
    ));
    let options = ok(&hulld.docker(&["network", "inspect", "--format", "{{json .Options}}", "span"]));
    let options: serde_json::Value = serde_json::from_str(options.trim()).unwrap();
    assert_eq!(options["hull.vxlan.id"], "42", "{options}");
    assert_eq!(options["hull.vxlan.peers"], "192.0.2.2,192.0.2.3", "{options}");
    assert_eq!(options["com.docker.network.driver.mtu"], "1450", "{options}");
    fails(&spanning("again", &["hull.vxlan.id=42"]), 1, "already uses VXLAN 42");
    fails(&spanning("badvni", &["hull.vxlan.id=0"]), 1, "invalid hull.vxlan.id");
    fails(
        &spanning("badpeer", &["hull.vxlan.id=7", "hull.vxlan.peers=nowhere"]),
        1,
        "invalid hull.vxlan.peers",
    );
    fails(
        &spanning("noid", &["hull.vxlan.peers=192.0.2.2"]),
        1,
        "needs hull.vxlan.id",
    );
    fails(
        &spanning("other", &["com.docker.network.bridge.name=x"]),
        1,
        "not supported",
    );
    fails(
        &hulld.docker(&["network", "create", "-o", "hull.vxlan.id=8", "nosubnet2"]),
        1,
        "needs --subnet",
    );
    ok(&hulld.docker(&["network", "rm", "span"]));
    let labelled = ok(&hulld.docker(&["network", "ls", "--filter", "label=a=b", "--format", "{{.Name}}"]));
    assert_eq!(labelled.trim(), "two");
    let pruned = ok(&hulld.docker(&["network", "prune", "-f"]));
    assert!(pruned.contains("one") && pruned.contains("two"), "{pruned}");
    assert_eq!(
        ok(&hulld.docker(&["network", "ls", "-q"])).lines().count(),
        2,
        "bridge and none stay"
    );
}

#[test]
fn links_are_checked_recorded_and_removed() {
    // Nothing runs: what a link writes into a guest is vm_network's.
    let (hulld, _registry, image) = with_box_image("links");
    ok(&hulld.docker(&["pull", "-q", &image]));
    ok(&hulld.docker(&["create", "--name", "db", "--expose", "5432", &image, "true"]));
    ok(&hulld.docker(&[
        "create", "--name", "web", "--link", "db:my-db", "--link", "db", &image, "true",
    ]));
    assert_eq!(
        hulld.inspect("{{json .HostConfig.Links}}", "web"),
        r#"["/db:/web/my-db","/db:/web/db"]"#
    );
    // docker rm --link: the CLI's request path has a double slash.
    ok(&hulld.docker(&["rm", "--link", "/web/my-db"]));
    assert_eq!(hulld.inspect("{{json .HostConfig.Links}}", "web"), r#"["/db:/web/db"]"#);
    fails(
        &hulld.docker(&["rm", "--link", "/web/my-db"]),
        1,
        "Could not find container for entity id /web/my-db",
    );
    assert_eq!(
        hulld.inspect("{{.Name}}", "db"),
        "/db",
        "removing a link leaves the container linked to"
    );
    // As dockerd: a start needs its linked containers running.
    fails(
        &hulld.docker(&["start", "web"]),
        1,
        "Cannot link to a non running container: /db AS /web/db",
    );
    fails(
        &hulld.docker(&["create", "--link", "nothing:x", &image, "true"]),
        1,
        "could not get container for nothing",
    );
    fails(
        &hulld.docker(&["create", "--network", "none", "--link", "db", &image, "true"]),
        1,
        "--network=none can't be used with links",
    );
    ok(&hulld.docker(&["network", "create", "apart"]));
    fails(
        &hulld.docker(&["create", "--network", "apart", "--link", "db", &image, "true"]),
        1,
        "Cannot link to /db, as it does not belong to the network apart",
    );
    assert_eq!(
        ok(&hulld.docker(&["ps", "-aq"])).lines().count(),
        2,
        "the refused creates left nothing"
    );
}

#[test]
fn stopped_containers_join_and_leave_up_to_four_networks() {
    // Nothing runs, so nothing on the host changes: this runs outside a VM.
    let (hulld, _registry, image) = with_box_image("netjoin");
    for name in ["front", "back", "third", "fourth", "fifth"] {
        ok(&hulld.docker(&["network", "create", name]));
    }
    // Two networks at create (docker run --network a --network b).
    ok(&hulld.docker(&[
        "create",
        "--name",
        "app",
        "--network",
        "front",
        "--network",
        "back",
        &image,
        "true",
    ]));
    let networks = |name: &str| {
        ok(&hulld.docker(&[
            "inspect",
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}{{.HostConfig.NetworkMode}}",
            name,
        ]))
        .trim()
        .to_string()
    };
    assert_eq!(networks("app"), "back front front");
    fails(
        &hulld.docker(&["network", "connect", "front", "app"]),
        1,
        "endpoint with name app already exists in network front",
    );
    ok(&hulld.docker(&["network", "connect", "--alias", "db", "third", "app"]));
    ok(&hulld.docker(&["network", "connect", "bridge", "app"]));
    assert_eq!(networks("app"), "back bridge front third front");
    // A fifth network needs a fifth NIC.
    fails(
        &hulld.docker(&["network", "connect", "fourth", "app"]),
        1,
        "at most 4 networks",
    );
    let aliases = ok(&hulld.docker(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.Networks.third.Aliases}}",
        "app",
    ]));
    assert_eq!(aliases.trim(), "[db]");
    ok(&hulld.docker(&["network", "disconnect", "back", "app"]));
    fails(
        &hulld.docker(&["network", "disconnect", "back", "app"]),
        1,
        "is not connected to network back",
    );
    // The freed slot takes the next network.
    ok(&hulld.docker(&["network", "connect", "fourth", "app"]));
    assert_eq!(networks("app"), "bridge fourth front third front");
    fails(
        &hulld.docker(&[
            "create",
            "--network",
            "front",
            "--network",
            "back",
            "--network",
            "third",
            "--network",
            "fourth",
            "--network",
            "fifth",
            &image,
        ]),
        1,
        "at most 4 networks",
    );
    fails(&hulld.docker(&["network", "rm", "fourth"]), 1, "has active endpoints");
    // Removing the container gives every address back.
    ok(&hulld.docker(&["rm", "app"]));
    for name in ["front", "back", "third", "fourth", "fifth"] {
        ok(&hulld.docker(&["network", "rm", name]));
    }
}

#[test]
fn hull_files_are_private_and_the_socket_is_its_groups() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    // `daemon` (gid 1) stands in for a `hull` group.
    let (hulld, _registry, image) = with_box_image_args("modes", &["--group", "daemon"]);
    let socket = std::fs::metadata(&hulld.socket).unwrap();
    assert_eq!(
        (socket.permissions().mode() & 0o777, socket.gid()),
        (0o660, 1),
        "root:daemon 0660"
    );
    assert_eq!(mode(&hulld.data), 0o700, "the data directory is root's alone");
    ok(&hulld.docker(&["volume", "create", "private"]));
    ok(&hulld.docker(&["create", "--name", "quiet", "-v", "private:/srv", &image, "true"]));
    let mut checked = 0;
    let mut walk = vec![hulld.data.clone()];
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            // guest.json is the test's copy of the host's, made by the test.
            if meta.is_symlink() || entry.file_name() == "guest.json" {
                continue;
            }
            // A shared volume's files are its containers', with their modes,
            // as in Docker: the data directory above keeps others out.
            if entry.file_name() == "_data" {
                continue;
            }
            let bits = meta.permissions().mode() & 0o077;
            assert_eq!(
                bits,
                0,
                "{} is open to others: {:o}",
                entry.path().display(),
                meta.permissions().mode()
            );
            checked += 1;
            if meta.is_dir() {
                walk.push(entry.path());
            }
        }
    }
    assert!(checked > 10, "the store was walked ({checked} entries)");
    let refused = std::process::Command::new(testkit::boot::workspace_binary("hulld").unwrap())
        .arg("--socket")
        .arg(hulld.work.join("other.sock"))
        .arg("--data-dir")
        .arg(hulld.work.join("other"))
        .args(["--group", "no-such-group-here"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("no such group"),
        "{}",
        text(&refused.stderr)
    );
}

/// Runs the docker command `times` times at once; each must succeed.
fn all_at_once(hulld: &Hulld, times: usize, args: &[&str]) {
    let children: Vec<_> = (0..times)
        .map(|_| {
            hulld
                .docker_command(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        ok(&child.wait_with_output().unwrap());
    }
}

#[test]
fn one_image_pulled_by_many_at_once_is_stored_whole() {
    // Each pull stores the image's manifest and config; at once, they
    // once shared a temporary file and one rename took another's away
    // (rarely here: image::store's unit test catches that race every time).
    let (hulld, _registry, image) = with_box_image("manypulls");
    all_at_once(&hulld, 16, &["pull", "-q", &image]);
    let images = ok(&hulld.docker(&["images", "-q"]));
    assert_eq!(images.lines().count(), 1, "{images}");
    ok(&hulld.docker(&["create", &image, "true"]));
}

#[test]
fn unnamed_containers_created_at_once_all_get_names() {
    // 40 generated names from 456 at once: without a retry on a clash
    // between choosing a name and storing it, some creates would fail.
    let (hulld, _registry, image) = with_box_image("manynames");
    ok(&hulld.docker(&["pull", "-q", &image]));
    all_at_once(&hulld, 40, &["create", &image, "true"]);
    let names = ok(&hulld.docker(&["ps", "-a", "--format", "{{.Names}}"]));
    let unique: std::collections::HashSet<&str> = names.lines().collect();
    assert_eq!(unique.len(), 40, "{names}");
}
