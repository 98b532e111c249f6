//! Image tests against a real registry (Debian's docker-registry on
//! 127.0.0.1), driving the `hull` binary: pull, store, tag, rmi, load, and
//! the read-only disk each image becomes. Images are built here, layer by
//! layer, and pushed with skopeo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use testkit::oci::{busybox_layer, debian_image, sha256, write_layout, Compression, ImageSpec, LayerBuilder, Registry};

struct Env {
    data: PathBuf,
    work: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let work = std::env::temp_dir().join(format!("hull-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        Env {
            data: work.join("data"),
            work,
        }
    }

    fn hull(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(args)
            .env("HULL_DATA_DIR", &self.data)
            .env("DOCKER_CONFIG", self.work.join("docker-config"))
            .output()
            .unwrap()
    }

    fn store(&self) -> image::Store {
        image::Store::open(&self.data).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure; stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

/// The test application image: busybox (gzip), a layer of files with owners,
/// links and a device (zstd), and a layer of whiteouts and an opaque
/// directory (uncompressed).
fn app_image(arch: &str) -> ImageSpec {
    let base = busybox_layer(&["sh", "cat", "id", "ls", "echo", "stat", "env", "pwd", "touch", "rm"]);
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
        .file("opt/old/two", b"2")
        .file("etc/doomed", b"deleted above")
        .hardlink("home/app/notes-link", "home/app/notes.txt")
        .symlink("etc/motd", "/home/app/notes.txt")
        .char_device("dev/hull-null", 1, 3)
        .file(&format!("opt/{}/long", "n".repeat(150)), b"a GNU long name")
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
        architecture: arch.into(),
    }
}

/// `debugfs` reads the ext4 image without mounting it.
fn debugfs(disk: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(disk)
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn pull_store_and_disk_of_a_multi_layer_image() {
    let env = Env::new("pull");
    let registry = Registry::start("pull", None).unwrap();
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[app_image("amd64")]).unwrap();
    registry.push(&layout, "v1", "test/app:v1", None).unwrap();
    let name = format!("{}/test/app:v1", registry.addr);

    let out = env.hull(&["pull", &name]);
    ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Pull complete") && stderr.contains("Digest: sha256:"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Status: Downloaded newer image for {name}")),
        "{stderr}"
    );

    // A second pull finds everything present.
    let again = env.hull(&["pull", &name]);
    ok(&again);
    assert!(
        text(&again.stderr).contains("Already exists"),
        "{}",
        text(&again.stderr)
    );
    assert!(
        text(&again.stderr).contains("Image is up to date"),
        "{}",
        text(&again.stderr)
    );

    let listing = ok(&env.hull(&["images"]));
    assert!(
        listing.contains(&format!("{}/test/app", registry.addr)) && listing.contains("v1"),
        "{listing}"
    );
    let inspect: Value = serde_json::from_str(&ok(&env.hull(&["image", "inspect", &name]))).unwrap();
    let image = &inspect[0];
    assert_eq!(image["Config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(image["Config"]["User"], "app");
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    assert!(image["RepoDigests"][0].as_str().unwrap().contains("@sha256:"));

    // The read-only disk: every layer applied, owners, links and devices kept.
    let store = env.store();
    let record = store.resolve(&name).unwrap();
    let disk = image::disk::image_disk(&store, &record).unwrap();
    assert!(disk.ends_with(format!("{}.ext4", record.chain_id().unwrap().hex())));
    let notes = debugfs(&disk, "stat /home/app/notes.txt");
    assert!(
        notes.contains("User:  1000") && notes.contains("Group:  1000"),
        "{notes}"
    );
    assert!(notes.contains("Mode:  0640") && notes.contains("Links: 2"), "{notes}");
    assert_eq!(debugfs(&disk, "cat /opt/old/three"), "3");
    assert_eq!(
        debugfs(&disk, &format!("cat /opt/{}/long", "n".repeat(150))),
        "a GNU long name"
    );
    let listing = debugfs(&disk, "ls -l /opt/old");
    assert!(
        !listing.contains(" one") && !listing.contains(" two"),
        "opaque dir: {listing}"
    );
    assert!(!debugfs(&disk, "ls -l /etc").contains("doomed"), "whiteout");
    assert!(debugfs(&disk, "stat /dev/hull-null").contains("Type: character special"));
    assert!(debugfs(&disk, "stat /etc/motd").contains("Fast link dest: \"/home/app/notes.txt\""));
    // Built once: the same disk again, untouched.
    let built = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let again = image::disk::image_disk(&store, &record).unwrap();
    assert_eq!(
        (again, std::fs::metadata(&disk).unwrap().modified().unwrap()),
        (disk, built)
    );
}

#[test]
fn a_manifest_list_resolves_to_linux_amd64() {
    let env = Env::new("list");
    let registry = Registry::start("list", None).unwrap();
    let layout = env.work.join("layout");
    let mut arm = app_image("arm64");
    arm.config["Env"] = json!(["ARCH=arm64"]);
    write_layout(&layout, "multi", &[arm, app_image("amd64")]).unwrap();
    registry.push(&layout, "multi", "test/multi:latest", None).unwrap();
    let name = format!("{}/test/multi", registry.addr);
    ok(&env.hull(&["pull", "-q", &name]));
    let inspect: Value = serde_json::from_str(&ok(&env.hull(&["image", "inspect", &name]))).unwrap();
    assert_eq!(inspect[0]["Architecture"], "amd64");
    assert_eq!(inspect[0]["Config"]["Env"], json!(["PATH=/bin", "APP_MODE=test"]));
}

#[test]
fn registry_errors_and_bad_blobs_leave_the_store_as_it_was() {
    let env = Env::new("errors");
    let mut registry = Registry::start("errors", None).unwrap();
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[app_image("amd64")]).unwrap();
    registry.push(&layout, "v1", "test/app:v1", None).unwrap();

    let unknown = failed(&env.hull(&["pull", &format!("{}/test/app:nope", registry.addr)]));
    assert!(unknown.contains("manifest unknown"), "{unknown}");
    let unknown_repo = failed(&env.hull(&["pull", &format!("{}/no/such:v1", registry.addr)]));
    assert!(
        unknown_repo.contains("repository does not exist") || unknown_repo.contains("manifest unknown"),
        "{unknown_repo}"
    );
    let bad_name = failed(&env.hull(&["pull", "UPPER/case"]));
    assert!(bad_name.contains("invalid reference format"), "{bad_name}");

    // Corrupt the biggest layer in the registry's storage.
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let stored = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let name = format!("{}/test/app:v1", registry.addr);
    let corrupt = failed(&env.hull(&["pull", &name]));
    assert!(corrupt.contains(&layer) && corrupt.contains("rejected"), "{corrupt}");
    let store = env.store();
    assert!(!store.has_blob(&image::digest::Digest::parse(&layer).unwrap(), None));
    assert!(
        store.images().unwrap().is_empty(),
        "no image recorded from a failed pull"
    );
    let before: Vec<_> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for blob in &before {
        let content = std::fs::read(blob).unwrap();
        assert_eq!(
            sha256(&content)[7..],
            *blob.file_name().unwrap().to_str().unwrap(),
            "only verified blobs"
        );
    }

    // Restore it, and pre-seed half of it as an interrupted download: the pull resumes.
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let partial = store.partial_path(&image::digest::Digest::parse(&layer).unwrap());
    std::fs::write(&partial, &bytes[..middle]).unwrap();
    ok(&env.hull(&["pull", "-q", &name]));
    assert!(!partial.exists());
    assert!(store.has_blob(&image::digest::Digest::parse(&layer).unwrap(), Some(bytes.len() as u64)));

    // A registry that is gone: a clear error, the store unchanged.
    registry.stop();
    let images_before = ok(&env.hull(&["images", "-q"]));
    let gone = failed(&env.hull(&["pull", &format!("{}/test/other:v1", registry.addr)]));
    assert!(gone.contains(&registry.addr), "{gone}");
    assert_eq!(ok(&env.hull(&["images", "-q"])), images_before);
}

#[test]
fn basic_auth_from_the_docker_config() {
    let env = Env::new("auth");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let registry = Registry::start("auth", Some(&format!("tester:{hash}\n"))).unwrap();
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[app_image("amd64")]).unwrap();
    registry
        .push(&layout, "v1", "private/app:v1", Some("tester:s3cret"))
        .unwrap();
    let name = format!("{}/private/app:v1", registry.addr);

    let denied = failed(&env.hull(&["pull", &name]));
    assert!(
        denied.contains("pull access denied") || denied.contains("authentication"),
        "{denied}"
    );
    std::fs::create_dir_all(env.work.join("docker-config")).unwrap();
    let auth = testkit::oci::base64(b"tester:s3cret");
    std::fs::write(
        env.work.join("docker-config/config.json"),
        json!({"auths": {registry.addr.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    ok(&env.hull(&["pull", "-q", &name]));
}

#[test]
fn tag_rmi_load_and_prune() {
    let env = Env::new("manage");
    let layout = env.work.join("layout");
    // Docker archives cannot hold zstd layers.
    let mut spec = app_image("amd64");
    spec.layers.iter_mut().for_each(|(_, how)| *how = Compression::Gzip);
    write_layout(&layout, "v1", &[spec]).unwrap();
    // An OCI layout directory loads; a bare tag carries no repository, so by ID.
    let loaded = ok(&env.hull(&["load", "-i", layout.to_str().unwrap()]));
    assert!(loaded.contains("Loaded image ID: sha256:"), "{loaded}");
    // A docker save archive (written by skopeo) loads with its tag.
    let archive = env.work.join("saved.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-archive:{}:saved/app:v2", archive.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        ok(&env.hull(&["load", "-i", archive.to_str().unwrap()])),
        "Loaded image: saved/app:v2\n"
    );
    let id = ok(&env.hull(&["images", "-q"]));
    assert_eq!(id.lines().count(), 1, "the same image either way: {id}");

    ok(&env.hull(&["tag", "saved/app:v2", "another:name"]));
    assert_eq!(ok(&env.hull(&["rmi", "another:name"])), "Untagged: another:name\n");
    let err = failed(&env.hull(&["rmi", "another:name"]));
    assert!(err.contains("No such image: another:name"), "{err}");

    // In use by a (live) container: refused without -f.
    let record = env.store().resolve("saved/app:v2").unwrap();
    let run_dir = env.data.join("run/ctr1");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(
        run_dir.join("image"),
        format!("{}\n{}\n", record.id, std::process::id()),
    )
    .unwrap();
    let err = failed(&env.hull(&["rmi", "saved/app:v2"]));
    assert!(err.contains("image is being used by ctr1"), "{err}");
    std::fs::remove_dir_all(&run_dir).unwrap();
    let removed = ok(&env.hull(&["rmi", "saved/app:v2"]));
    assert!(
        removed.contains("Untagged: saved/app:v2") && removed.contains("Deleted: sha256:"),
        "{removed}"
    );
    let blobs = std::fs::read_dir(env.store().root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "the image's blobs were collected");
    ok(&env.hull(&["image", "prune"]));

    let garbage = env.work.join("garbage.tar");
    std::fs::write(
        &garbage,
        b"this is not a tar archive at all, not even close............",
    )
    .unwrap();
    failed(&env.hull(&["load", "-i", garbage.to_str().unwrap()]));
}

#[test]
fn a_hostile_layer_is_refused_when_its_disk_is_built() {
    let env = Env::new("hostile");
    let layout = env.work.join("layout");
    // tar::Builder refuses `..`, so the hostile name goes into a raw header.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(1);
    header.set_mode(0o644);
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../../escaped");
    header.set_cksum();
    let mut evil = tar::Builder::new(Vec::new());
    evil.append(&header, &b"x"[..]).unwrap();
    let spec = ImageSpec {
        layers: vec![(evil.into_inner().unwrap(), Compression::Gzip)],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    };
    write_layout(&layout, "v1", &[spec]).unwrap();
    ok(&env.hull(&["load", "-i", layout.to_str().unwrap()]));
    let store = env.store();
    let record = store.images().unwrap().remove(0);
    let err = image::disk::image_disk(&store, &record).unwrap_err().to_string();
    assert!(err.contains("escapes the root filesystem"), "{err}");
    assert!(!env.data.join("images/escaped").exists() && !env.data.join("escaped").exists());
}

#[test]
fn bearer_token_flow_and_a_transfer_broken_mid_blob() {
    use testkit::oci::{MockBehaviour, MockRegistry};
    let env = Env::new("token");
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[app_image("amd64")]).unwrap();
    let behaviour = MockBehaviour {
        token: Some(("hull-test".into(), Some("tester:s3cret".into()))),
        break_blobs_after: Some(1000),
    };
    let registry = MockRegistry::start(&layout, "team/app", "v1", behaviour).unwrap();
    let name = format!("{}/team/app:v1", registry.addr);

    // The token endpoint wants credentials: without them, access is denied.
    let denied = failed(&env.hull(&["pull", &name]));
    assert!(denied.contains("pull access denied"), "{denied}");
    std::fs::create_dir_all(env.work.join("docker-config")).unwrap();
    std::fs::write(
        env.work.join("docker-config/config.json"),
        json!({"auths": {registry.addr.clone(): {"auth": testkit::oci::base64(b"tester:s3cret")}}}).to_string(),
    )
    .unwrap();
    // Every blob's first transfer breaks after 1000 bytes; the pull resumes it.
    ok(&env.hull(&["pull", "-q", &name]));
    let requests = registry.requests();
    assert!(requests.iter().any(|r| r.starts_with("GET /token")), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.contains("Range") || r.contains("bytes=1000-")),
        "{requests:?}"
    );
    let store = env.store();
    let record = store.resolve(&name).unwrap();
    assert!(record.blobs().all(|b| store.has_blob(b, None)));
    assert!(std::fs::read_dir(store.root().join("partial")).unwrap().count() <= 1);
    assert!(
        image::disk::image_disk(&store, &record).is_ok(),
        "resumed layers are intact"
    );
}

#[test]
fn two_pulls_of_one_image_at_once() {
    let env = Env::new("concurrent");
    let registry = Registry::start("concurrent", None).unwrap();
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[app_image("amd64")]).unwrap();
    registry.push(&layout, "v1", "test/app:v1", None).unwrap();
    let name = format!("{}/test/app:v1", registry.addr);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["pull", "-q", &name])
            .env("HULL_DATA_DIR", &env.data)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let store = env.store();
    assert_eq!(store.images().unwrap().len(), 1);
    let record = store.resolve(&name).unwrap();
    for blob in record.blobs() {
        let content = std::fs::read(store.blob_path(blob)).unwrap();
        assert_eq!(sha256(&content), blob.to_string());
    }
}

/// A tmpfs of `mib` MiB mounted for the life of the value (the tests run as root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a small tmpfs (needs root)");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_pull_and_keeps_the_store() {
    let env = Env::new("full");
    let _disk = SmallDisk::mount(&env.data, 6);
    let registry = Registry::start("full", None).unwrap();
    let small = ImageSpec {
        layers: vec![(busybox_layer(&["sh"]), Compression::Gzip)],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    };
    // Random bytes do not compress: this layer cannot fit in what is left.
    let mut noise = vec![0u8; 8 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in noise.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let big = ImageSpec {
        layers: vec![
            (busybox_layer(&["sh"]), Compression::Gzip),
            (LayerBuilder::new().file("noise", &noise).build(), Compression::Gzip),
        ],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    };
    for (name, spec) in [("small", small), ("big", big)] {
        let layout = env.work.join(name);
        write_layout(&layout, "v1", &[spec]).unwrap();
        registry.push(&layout, "v1", &format!("test/{name}:v1"), None).unwrap();
    }
    ok(&env.hull(&["pull", "-q", &format!("{}/test/small:v1", registry.addr)]));
    let before = ok(&env.hull(&["images"]));

    let full = failed(&env.hull(&["pull", "-q", &format!("{}/test/big:v1", registry.addr)]));
    assert!(full.contains("No space left on device"), "{full}");
    assert_eq!(ok(&env.hull(&["images"])), before, "the store lists what it did before");
    for blob in std::fs::read_dir(env.store().root().join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let content = std::fs::read(blob.path()).unwrap();
        assert_eq!(
            sha256(&content)[7..],
            *blob.file_name().to_str().unwrap(),
            "only complete, verified blobs"
        );
    }
    // The image still in the store is intact and usable.
    ok(&env.hull(&["image", "inspect", &format!("{}/test/small:v1", registry.addr)]));
}

#[test]
fn a_debootstrap_debian_image_pulls_into_a_faithful_disk() {
    let env = Env::new("debian");
    let registry = Registry::start("debian", None).unwrap();
    let layout = env.work.join("layout");
    write_layout(&layout, "v1", &[debian_image().unwrap()]).unwrap();
    registry.push(&layout, "v1", "test/debian:minbase", None).unwrap();
    let name = format!("{}/test/debian:minbase", registry.addr);
    ok(&env.hull(&["pull", "-q", &name]));
    let store = env.store();
    let disk = image::disk::image_disk(&store, &store.resolve(&name).unwrap()).unwrap();

    assert!(debugfs(&disk, "cat /etc/debian_version").starts_with("12."));
    let shadow = debugfs(&disk, "stat /etc/shadow");
    assert!(
        shadow.contains("Mode:  0640") && shadow.contains("Group:    42"),
        "{shadow}"
    );
    let passwd_bin = debugfs(&disk, "stat /usr/bin/passwd");
    assert!(passwd_bin.contains("Mode:  04755"), "setuid kept: {passwd_bin}");
    assert!(
        debugfs(&disk, "stat /bin").contains("Fast link dest: \"usr/bin\""),
        "merged /usr"
    );
    let home = debugfs(&disk, "stat /home/app");
    assert!(home.contains("User:  1000") && home.contains("Mode:  0750"), "{home}");
    assert!(!debugfs(&disk, "stat /etc/motd").contains("Inode:"), "whiteout");
    let doc = debugfs(&disk, "ls /usr/share/doc");
    assert!(doc.contains("hull-note") && !doc.contains("coreutils"), "opaque: {doc}");
    let status = debugfs(&disk, "cat /var/lib/dpkg/status");
    assert!(status.contains("Package: coreutils"), "the dpkg database came along");
}
