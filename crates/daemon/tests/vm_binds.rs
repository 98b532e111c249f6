//! VM tests: host directories bind-mounted into containers (`-v
//! /host/dir:/path[:ro]`, `--mount type=bind`) and shared volumes, shared
//! with each VM through hull-vmm's virtio-fs device; host changes raise
//! inotify events in the container.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use testkit::hulld::{eventually, ok, text, Hulld};
use testkit::oci::{
    busybox_image_with, busybox_layer, hostile_tools_layer, push_image, Compression, ImageSpec, Registry,
};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "id", "ls", "touch", "rm", "mkdir", "chown", "chmod", "mount", "ln", "sync",
    "stat", "mv",
];

struct Setup {
    hulld: Hulld,
    _registry: Registry,
    image: String,
}

fn setup() -> Setup {
    setup_with_env(&[])
}

fn setup_with_env(env: &[(&str, &str)]) -> Setup {
    let hulld = Hulld::start_with_env("vm-binds", &[], env).unwrap();
    let registry = Registry::start("vm-binds", None).unwrap();
    let image = ImageSpec {
        layers: vec![(busybox_layer(APPLETS), Compression::Gzip)],
        config: serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
        architecture: "amd64".into(),
    };
    let image = push_image(&registry, &hulld.work, image, "test/binds:v1").unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    Setup {
        hulld,
        _registry: registry,
        image,
    }
}

fn host_dir(hulld: &Hulld, name: &str) -> PathBuf {
    let dir = hulld.work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bind(dir: &Path, target: &str, mode: &str) -> String {
    format!("{}:{target}{mode}", dir.display())
}

/// `docker run --rm -v MOUNT IMAGE sh -c SCRIPT`, as root with every
/// capability (it may mount and remount): the host's side holds on its own.
fn sh_with(hulld: &Hulld, image: &str, mount: &str, script: &str) -> std::process::Output {
    hulld.docker(&[
        "run",
        "--rm",
        "--cap-add",
        "ALL",
        "-v",
        mount,
        image,
        "sh",
        "-c",
        script,
    ])
}

/// The docker command failed with status 125 and this in its message.
fn refused(out: &std::process::Output, message: &str) {
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn bind_mounts_share_host_directories_both_ways() {
    let Setup { hulld, image, .. } = setup();
    let dir = host_dir(&hulld, "app");
    std::fs::write(dir.join("hello"), "from the host\n").unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    // Read what the host put there; write as root and as another user:
    // the host sees the files with the container's owners.
    let script = "cat /data/hello && echo from-root > /data/by-root && mkdir /data/sub && \
                  chown 1234:2345 /data/sub && ls /data";
    let out = ok(&sh_with(&hulld, &image, &bind(&dir, "/data", ""), script));
    assert!(out.starts_with("from the host\n"), "{out}");
    assert!(out.contains("by-root") && out.contains("sub"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("by-root")).unwrap(), "from-root\n");
    let root_file = std::fs::metadata(dir.join("by-root")).unwrap();
    assert_eq!((root_file.uid(), root_file.gid()), (0, 0));
    let sub = std::fs::metadata(dir.join("sub")).unwrap();
    assert_eq!((sub.uid(), sub.gid()), (1234, 2345));
    ok(&hulld.docker(&[
        "run",
        "--rm",
        "-u",
        "1000:1001",
        "-v",
        &bind(&dir, "/data", ""),
        &image,
        "sh",
        "-c",
        "echo mine > /data/by-user",
    ]));
    let user_file = std::fs::metadata(dir.join("by-user")).unwrap();
    assert_eq!((user_file.uid(), user_file.gid()), (1000, 1001));

    // A running container sees the host's later edits.
    let mount = format!("type=bind,source={},target=/data", dir.display());
    ok(&hulld.docker(&[
        "run", "-d", "--name", "watcher", "--mount", &mount, &image, "sleep", "600",
    ]));
    std::fs::write(dir.join("late"), "edited on the host\n").unwrap();
    eventually("the host's new file in the container", || {
        text(&hulld.docker(&["exec", "watcher", "cat", "/data/late"]).stdout) == "edited on the host\n"
    });
    std::fs::write(dir.join("late"), "edited again\n").unwrap();
    eventually("the host's edit in the container", || {
        text(&hulld.docker(&["exec", "watcher", "cat", "/data/late"]).stdout) == "edited again\n"
    });
    // A directory larger than one read of it, listed while it is deleted
    // (the test host's /tmp is overlayfs, whose positions shift).
    let script = "mkdir /data/many && i=0 && while [ $i -lt 150 ]; do touch /data/many/file-$i; i=$((i+1)); done \
                  && rm -rf /data/many && echo removed";
    assert_eq!(ok(&hulld.docker(&["exec", "watcher", "sh", "-c", script])), "removed\n");
    assert!(!dir.join("many").exists());
    let mounts = hulld.inspect(
        "{{range .Mounts}}{{.Type}} {{.Source}} {{.Destination}} {{.RW}}{{end}}",
        "watcher",
    );
    assert_eq!(mounts, format!("bind {} /data true", dir.display()));

    // Written and synced, then the VM is killed: the data is on the host.
    ok(&hulld.docker(&[
        "exec",
        "watcher",
        "sh",
        "-c",
        "echo durable > /data/synced && sync /data/synced",
    ]));
    let vmms = hulld.processes_of("hull-vmm");
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    // SAFETY: kill(2) of the VMM this test's container runs in.
    unsafe { libc::kill(vmms[0].0 as i32, libc::SIGKILL) };
    eventually("the container to end with its VM", || {
        hulld.inspect("{{.State.Running}}", "watcher") == "false"
    });
    assert_eq!(std::fs::read_to_string(dir.join("synced")).unwrap(), "durable\n");
    ok(&hulld.docker(&["rm", "-f", "watcher"]));
    hulld.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn read_only_binds_hold_against_guest_root_and_nothing_escapes() {
    let Setup { hulld, image, .. } = setup();
    let dir = host_dir(&hulld, "config");
    std::fs::write(dir.join("app.conf"), "key=value\n").unwrap();
    // Planted on the host: links that point out of the shared directory.
    let secret = host_dir(&hulld, "secret").join("only-on-the-host");
    std::fs::write(&secret, "secret\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("../secret/only-on-the-host", dir.join("relative-link")).unwrap();

    // Root in the guest cannot write, not even after remounting read-write:
    // the host's mount of the directory is read-only.
    let script = "cat /data/app.conf; echo x > /data/new; echo status=$?; \
                  mount -o remount,rw /data; echo y > /data/new2; echo status=$?; \
                  rm /data/app.conf; echo status=$?";
    let out = text(&sh_with(&hulld, &image, &bind(&dir, "/data", ":ro"), script).stdout);
    assert!(out.starts_with("key=value\n"), "{out}");
    assert_eq!(out.matches("status=1").count(), 3, "{out}");
    assert!(!dir.join("new").exists() && !dir.join("new2").exists());
    assert!(dir.join("app.conf").exists());

    // Links resolve inside the guest, never to the host's files; `..`
    // stops at the container's own root.
    let script = "cat /data/absolute-link; echo status=$?; cat /data/relative-link; echo status=$?; \
                  ls /data/../../; ln -s /etc/passwd /data/made-link 2>/dev/null; true";
    let out = text(&sh_with(&hulld, &image, &bind(&dir, "/data", ""), script).stdout);
    assert!(!out.contains("secret"), "{out}");
    assert_eq!(out.matches("status=1").count(), 2, "{out}");
    assert!(out.contains("bin"), "the container's own root: {out}");

    // Bad requests: Docker's messages, nothing made.
    let missing = hulld.work.join("missing");
    let mount = format!("type=bind,source={},target=/data", missing.display());
    refused(
        &hulld.docker(&["run", "--rm", "--mount", &mount, &image, "true"]),
        "bind source path does not exist",
    );
    assert!(!missing.exists());
    // `-v` makes a missing directory, as Docker does.
    let made = hulld.work.join("made-by-v");
    ok(&hulld.docker(&[
        "run",
        "--rm",
        "-v",
        &bind(&made, "/data", ""),
        &image,
        "touch",
        "/data/x",
    ]));
    assert!(made.join("x").is_file());
    hulld.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_single_file_is_bound_alone() {
    let Setup { hulld, image, .. } = setup();
    let dir = host_dir(&hulld, "etc");
    std::fs::write(dir.join("app.conf"), "key=1\n").unwrap();
    std::fs::write(dir.join("sibling"), "secret\n").unwrap();
    let file = dir.join("app.conf");

    // Read-only: read, and refused to root even after a remount.
    let script = "cat /etc/app.conf; echo x > /etc/app.conf; echo status=$?; \
                  mount -o remount,rw /etc/app.conf; echo y > /etc/app.conf; echo status=$?";
    let run = sh_with(&hulld, &image, &bind(&file, "/etc/app.conf", ":ro"), script);
    let out = text(&run.stdout);
    assert!(out.starts_with("key=1\n"), "{out}{}", text(&run.stderr));
    assert_eq!(out.matches("status=1").count(), 2, "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "key=1\n");

    // Read-write, on a target the image lacks (made, as Docker makes it).
    ok(&sh_with(
        &hulld,
        &image,
        &bind(&file, "/conf/d/app.conf", ""),
        "echo key=2 > /conf/d/app.conf",
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "key=2\n");

    // Root in the guest mounting the shared file system itself sees the
    // file alone, and can change neither its directory nor its siblings.
    let script = "mkdir /m && mount -t virtiofs hull /m && ls -a /m/0; \
                  cat /m/0/sibling; echo status=$?; chmod 777 /m/0; echo status=$?; \
                  touch /m/0/new; echo status=$?; mv /m/0/app.conf /m/0/moved; echo status=$?; \
                  ln /m/0/app.conf /m/0/linked; echo status=$?";
    let out = text(&sh_with(&hulld, &image, &bind(&file, "/etc/app.conf", ""), script).stdout);
    let listed: Vec<&str> = out.lines().take_while(|l| !l.starts_with("status=")).collect();
    assert_eq!(listed, ["app.conf"], "{out}");
    assert!(!out.contains("secret"), "{out}");
    assert_eq!(out.matches("status=1").count(), 5, "{out}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["app.conf", "sibling"]);
    let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
    assert_ne!(mode, 0o777);

    // A file on a directory: refused with Docker's hint.
    let out = sh_with(&hulld, &image, &bind(&file, "/bin", ""), "true");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("onto a file"), "{}", text(&out.stderr));
    hulld.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_shared_volume_is_used_by_several_running_containers_at_once() {
    let Setup { hulld, image, .. } = setup();
    ok(&hulld.docker(&["volume", "create", "common"]));
    let mountpoint = hulld.inspect("{{.Mountpoint}}", "common");
    assert!(mountpoint.ends_with("/volumes/common/_data"), "{mountpoint}");
    assert!(Path::new(&mountpoint).is_dir());
    for name in ["writer", "reader"] {
        ok(&hulld.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "-v",
            "common:/shared",
            &image,
            "sleep",
            "600",
        ]));
    }
    // Each sees the other's writes, and the host sees both at the Mountpoint.
    ok(&hulld.docker(&["exec", "writer", "sh", "-c", "echo from-writer > /shared/note"]));
    eventually("the writer's file in the reader", || {
        text(&hulld.docker(&["exec", "reader", "cat", "/shared/note"]).stdout) == "from-writer\n"
    });
    ok(&hulld.docker(&["exec", "reader", "sh", "-c", "echo reply >> /shared/note"]));
    eventually("the reader's line in the writer", || {
        text(&hulld.docker(&["exec", "writer", "cat", "/shared/note"]).stdout) == "from-writer\nreply\n"
    });
    assert_eq!(
        std::fs::read_to_string(Path::new(&mountpoint).join("note")).unwrap(),
        "from-writer\nreply\n"
    );
    let mounts = hulld.inspect("{{range .Mounts}}{{.Type}} {{.Name}} {{.Source}}{{end}}", "reader");
    assert_eq!(mounts, format!("volume common {mountpoint}"));
    // In use: not removed.
    let out = hulld.docker(&["volume", "rm", "common"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    ok(&hulld.docker(&["rm", "-f", "writer", "reader"]));
    ok(&hulld.docker(&["volume", "rm", "common"]));
    assert!(!Path::new(&mountpoint).exists());
    hulld.assert_no_leftovers();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn host_changes_raise_inotify_events_in_the_container() {
    let Setup {
        hulld,
        _registry: registry,
        ..
    } = setup();
    let image = push_image(
        &registry,
        &hulld.work,
        busybox_image_with(hostile_tools_layer()),
        "test/watcher:v1",
    )
    .unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    let project = host_dir(&hulld, "project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/app.js"), "version 1").unwrap();
    let config = host_dir(&hulld, "config");
    std::fs::write(config.join("settings"), "a=1").unwrap();
    // A file watcher, as a dev server's: one directory of a read-write
    // bind, one of a read-only one.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "dev",
        "-v",
        &bind(&project, "/app", ""),
        "-v",
        &bind(&config, "/config", ":ro"),
        &image,
        "hull-hostile",
        "inotify:/app/src,/config",
    ]));
    let logs = || text(&hulld.docker(&["logs", "dev"]).stdout);
    eventually("the watcher to start", || logs().contains("watching"));
    let seen = |event: &str| {
        let started = Instant::now();
        eventually(event, || logs().contains(event));
        eprintln!("{event}: seen {:?} after the host's change", started.elapsed());
    };

    std::fs::write(project.join("src/app.js"), "version 2, longer").unwrap();
    seen("inotify /app/src MODIFY app.js");
    assert_eq!(
        ok(&hulld.docker(&["exec", "dev", "cat", "/app/src/app.js"])),
        "version 2, longer"
    );
    // The same length: the guest's cached pages must not hide it.
    std::fs::write(project.join("src/app.js"), "version 3, LONGER").unwrap();
    eventually("the second edit", || logs().matches("MODIFY app.js").count() >= 2);
    assert_eq!(
        ok(&hulld.docker(&["exec", "dev", "cat", "/app/src/app.js"])),
        "version 3, LONGER"
    );

    std::fs::write(project.join("src/new.js"), "new").unwrap();
    seen("inotify /app/src CREATE new.js");
    std::fs::create_dir(project.join("src/lib")).unwrap();
    seen("inotify /app/src CREATE,ISDIR lib");
    std::fs::remove_file(project.join("src/new.js")).unwrap();
    seen("inotify /app/src DELETE new.js");
    std::fs::remove_dir(project.join("src/lib")).unwrap();
    seen("inotify /app/src DELETE,ISDIR lib");
    std::fs::rename(project.join("src/app.js"), project.join("src/main.js")).unwrap();
    seen("inotify /app/src DELETE app.js");
    seen("inotify /app/src CREATE main.js");
    assert_eq!(ok(&hulld.docker(&["exec", "dev", "ls", "/app/src"])), "main.js\n");

    std::fs::write(config.join("settings"), "a=2").unwrap();
    seen("inotify /config MODIFY settings");
    assert_eq!(ok(&hulld.docker(&["exec", "dev", "cat", "/config/settings"])), "a=2");
    // Read-only stays read-only for the container.
    let write = hulld.docker(&["exec", "dev", "sh", "-c", "echo x > /config/settings"]);
    assert!(!write.status.success());
    assert_eq!(std::fs::read_to_string(config.join("settings")).unwrap(), "a=2");

    // The container's own change raises its event too (the guest's own).
    ok(&hulld.docker(&["exec", "dev", "touch", "/app/src/own.js"]));
    seen("inotify /app/src CREATE own.js");
    assert!(project.join("src/own.js").exists());
    // Nothing the replays did reached the host.
    let mut names: Vec<String> = std::fs::read_dir(project.join("src"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["main.js", "own.js"]);
    assert_eq!(
        std::fs::read_to_string(project.join("src/main.js")).unwrap(),
        "version 3, LONGER"
    );
    ok(&hulld.docker(&["rm", "-f", "dev"]));
    hulld.assert_no_leftovers();
}

/// Descriptors process `pid` holds.
fn descriptors_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Active objects of the guest kernel's slab cache `cache`, from the
/// container's `/proc/slabinfo`.
fn slab_objects(hulld: &Hulld, container: &str, cache: &str) -> usize {
    let slabinfo = ok(&hulld.docker(&["exec", container, "cat", "/proc/slabinfo"]));
    slabinfo
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(cache)).then(|| fields.next().and_then(|n| n.parse().ok()))?
        })
        .unwrap_or_else(|| panic!("no {cache} in the guest's slabinfo"))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_large_tree_is_listed_with_bounded_host_descriptors() {
    const MOST_OPEN: usize = 500;
    let most_open = MOST_OPEN.to_string();
    let Setup { hulld, image, .. } = setup_with_env(&[("HULL_FS_OPEN_INODES", &most_open)]);
    let dir = host_dir(&hulld, "tree");
    for d in 0..20 {
        std::fs::create_dir(dir.join(format!("d{d}"))).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "lister",
        "-v",
        &bind(&dir, "/data", ""),
        &image,
        "sleep",
        "600",
    ]));
    let vmms = hulld.processes_of("hull-vmm");
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let before = descriptors_of(vmms[0].0);

    // `ls -l` looks up and stats every one of the 20,020 names; the guest
    // keeps them all (its fuse_inode cache shows it).
    let started = Instant::now();
    let listing = ok(&hulld.docker(&["exec", "lister", "ls", "-lR", "/data"]));
    let took = started.elapsed();
    let files = listing.lines().filter(|line| line.starts_with("-rw")).count();
    assert_eq!(files, 20_000, "{}", &listing[..listing.len().min(2000)]);
    let cached = slab_objects(&hulld, "lister", "fuse_inode");
    assert!(cached >= 20_000, "the guest holds {cached} FUSE inodes");
    let held = descriptors_of(vmms[0].0);
    eprintln!(
        "ls -lR of 20,000 files: {took:.1?}; the guest holds {cached} FUSE inodes, \
         hull-vmm {held} descriptors ({before} before, at most {MOST_OPEN} for inodes)"
    );
    assert!(
        held <= before + MOST_OPEN + 16,
        "hull-vmm holds {held} descriptors ({before} before the listing)"
    );

    // Inodes closed long ago answer as the files they were, and changes
    // through the guest still land on the host.
    let script = "cat /data/d0/f0 /data/d0/f1 && echo && mv /data/d0/f2 /data/moved && cat /data/moved";
    assert_eq!(
        ok(&hulld.docker(&["exec", "lister", "sh", "-c", script])),
        "0/00/1\n0/2"
    );
    assert!(dir.join("moved").exists() && !dir.join("d0/f2").exists());
    ok(&hulld.docker(&["rm", "-f", "lister"]));
    hulld.assert_no_leftovers();
}
