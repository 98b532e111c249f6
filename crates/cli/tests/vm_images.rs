//! VM tests for running OCI images: an image built here (busybox, files
//! with owners, whiteouts, an opaque directory) is pushed to a real
//! registry on loopback, then `hull run IMAGE` pulls it and runs it in
//! microVMs with Docker's config rules, each container writing to its own
//! disk over the shared read-only image disk.

use std::process::{Command, Output};

use serde_json::json;
use testkit::oci::{busybox_layer, debian_image, write_layout, Compression, ImageSpec, LayerBuilder, Registry};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hull(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(args)
        .env("HULL_DATA_DIR", data)
        .output()
        .unwrap()
}

fn app_image() -> ImageSpec {
    let base = busybox_layer(&["sh", "cat", "id", "ls", "echo", "touch", "pwd", "df", "dd", "sync"]);
    let files = LayerBuilder::new()
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
        .dir("home", 0o755)
        .file_owned("home/app/notes.txt", b"owned by app\n", 0o640, 1000, 1000)
        .file("opt/old/one", b"1")
        .file("etc/doomed", b"deleted above")
        .build();
    let changes = LayerBuilder::new()
        .whiteout("etc/doomed")
        .opaque("opt/old")
        .file("opt/old/three", b"3")
        .build();
    ImageSpec {
        layers: vec![
            (base, Compression::Gzip),
            (files, Compression::Zstd),
            (changes, Compression::None),
        ],
        config: json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo default command"],
            "Env": ["PATH=/bin", "APP_MODE=test"],
            "WorkingDir": "/home/app",
            "User": "app",
        }),
        architecture: "amd64".into(),
    }
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn images_run_with_their_config_on_shared_disks() {
    // The guest set-up (kernel, initramfs) is shared; images go to a fresh data dir.
    let work = std::env::temp_dir().join(format!("hull-vm-images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(testkit::test_guest_json(), data.join("guest.json")).unwrap();

    let registry = Registry::start("vm", None).unwrap();
    let layout = work.join("layout");
    write_layout(&layout, "v1", &[app_image()]).unwrap();
    registry.push(&layout, "v1", "test/app:v1", None).unwrap();
    let name = format!("{}/test/app:v1", registry.addr);

    // Not in the store yet: run pulls it, then runs the image's own command.
    let out = hull(&data, &["run", &name]);
    let stderr = text(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "default command\n".into()),
        "{stderr}"
    );
    assert!(stderr.contains("Unable to find image"), "{stderr}");

    // The image's user, workdir, env; its layers' files, whiteouts and opaque dir; a write.
    let script = "id; pwd; echo $HOME $APP_MODE $EXTRA; cat notes.txt; ls /opt/old; \
                  cat /etc/doomed 2>/dev/null || echo doomed is gone; echo more >> notes.txt && echo wrote";
    let out = hull(&data, &["run", "-e", "EXTRA=yes", &name, script]);
    assert_eq!(
        text(&out.stdout),
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n/home/app\n/home/app test yes\nowned by app\n\
         three\ndoomed is gone\nwrote\n",
        "{}",
        text(&out.stderr)
    );

    // A new container sees the image, not the last one's writes; -u and --entrypoint override.
    let out = hull(
        &data,
        &[
            "run",
            "-u",
            "root",
            "--entrypoint",
            "/bin/cat",
            "-w",
            "/",
            &name,
            "/home/app/notes.txt",
        ],
    );
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "owned by app\n".into()),
        "{}",
        text(&out.stderr)
    );

    // Writes go to the container's own disk (4 MiB of them fit; the image disk is read-only).
    let out = hull(
        &data,
        &[
            "run",
            "-u",
            "0",
            &name,
            "dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null && sync && ls /big && id -u",
        ],
    );
    assert_eq!(text(&out.stdout), "/big\n0\n", "{}", text(&out.stderr));

    let out = hull(&data, &["run", "-u", "nobody", &name, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("unable to find user nobody"),
        "{}",
        text(&out.stderr)
    );

    let out = hull(&data, &["run", "--entrypoint", "", &name]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("No command specified"),
        "{}",
        text(&out.stderr)
    );

    // Nothing is left running and no container directories remain.
    let run_dirs = std::fs::read_dir(data.join("run")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(run_dirs, 0);
    drop(registry);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_debootstrap_debian_image_runs_as_docker_would() {
    let data = std::env::temp_dir().join(format!("hull-vm-debian-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(testkit::test_guest_json(), data.join("guest.json")).unwrap();
    let registry = Registry::start("vm-debian", None).unwrap();
    let layout = data.join("layout");
    write_layout(&layout, "v1", &[debian_image().unwrap()]).unwrap();
    registry.push(&layout, "v1", "test/debian:minbase", None).unwrap();
    let name = format!("{}/test/debian:minbase", registry.addr);

    let out = hull(&data, &["run", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("12."),
        "default Cmd: {}",
        text(&out.stdout)
    );

    let probe = "id; pwd; echo $GREETING; ls /usr/share/doc; test -e /etc/motd || echo no-motd; \
                 stat -c '%a %U %G' /etc/shadow; dpkg-query -W -f='${Status}\\n' coreutils; \
                 touch mine && ls -l mine | cut -d' ' -f3,4";
    let out = hull(&data, &["run", &name, "sh", "-c", probe]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(
        stdout,
        "uid=1000(app) gid=1000(app) groups=1000(app)\n/home/app\ndebian\nhull-note\nno-motd\n640 root shadow\n\
         install ok installed\napp app\n"
    );
    let _ = std::fs::remove_dir_all(&data);
}
