//! OCI image fixtures for tests and benchmarks: layer tarballs built entry
//! by entry (whiteouts, opaque directories, links, devices, owners), OCI
//! image layouts written from them, and a real registry (Debian's
//! `docker-registry`) on 127.0.0.1 to push them to with `skopeo copy`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer tarball, built entry by entry.
pub struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid, gid, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_owned(path, data, 0o644, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.builder.append_data(&mut h, path, data).expect("tar file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.builder.append_link(&mut h, path, target).expect("tar symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.builder.append_link(&mut h, path, target).expect("tar hardlink");
        self
    }

    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("tar device");
        self
    }

    /// Deletes `path` of lower layers.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"")
    }

    /// Hides everything lower layers put in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    /// Every regular file of `dir` (recursively) under `prefix`, keeping symlinks.
    pub fn tree(mut self, dir: &Path, prefix: &str) -> Self {
        self.builder.follow_symlinks(false);
        self.builder.append_dir_all(prefix, dir).expect("tar tree");
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.builder.into_inner().expect("tar finish")
    }
}

/// How a layer is stored in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// An image to write as an OCI layout.
pub struct ImageSpec {
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// The `config` object of the image config (Entrypoint, Cmd, Env, …).
    pub config: Value,
    pub architecture: String,
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let digest = sha256(bytes);
    let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((digest, bytes.len() as u64))
}

fn compress(tar: &[u8], how: Compression) -> Result<(Vec<u8>, &'static str)> {
    Ok(match how {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar)?;
            (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => (zstd::encode_all(tar, 3)?, "application/vnd.oci.image.layer.v1.tar+zstd"),
    })
}

/// Writes one image's blobs into `layout` and returns its manifest descriptor.
fn write_image(layout: &Path, image: &ImageSpec) -> Result<Value> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, how) in &image.layers {
        diff_ids.push(sha256(tar));
        let (blob, media_type) = compress(tar, *how)?;
        let (digest, size) = write_blob(layout, &blob)?;
        layers.push(json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let config = json!({
        "created": "2026-01-02T03:04:05Z",
        "architecture": image.architecture,
        "os": "linux",
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": (0..image.layers.len())
            .map(|i| json!({"created": "2026-01-02T03:04:05Z", "created_by": format!("testkit: layer {i}")}))
            .chain([json!({"created": "2026-01-02T03:04:05Z", "created_by": "testkit: config", "empty_layer": true})])
            .collect::<Vec<_>>(),
    });
    let (config_digest, config_size) = write_blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&manifest)?)?;
    Ok(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": size,
        "platform": {"architecture": image.architecture, "os": "linux"},
    }))
}

/// Writes an OCI image layout at `layout` holding `images` under `tag`: one
/// image directly, several as a multi-platform index.
pub fn write_layout(layout: &Path, tag: &str, images: &[ImageSpec]) -> Result<()> {
    let _ = std::fs::remove_dir_all(layout);
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descriptors = Vec::new();
    for image in images {
        descriptors.push(write_image(layout, image)?);
    }
    let mut top = if descriptors.len() == 1 {
        descriptors.remove(0)
    } else {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descriptors,
        });
        let (digest, size) = write_blob(layout, &serde_json::to_vec(&index)?)?;
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size})
    };
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// The Debian tree `scripts/debian-rootfs` makes (debootstrap minbase);
/// an error says how to make it.
pub fn debian_rootfs() -> Result<PathBuf> {
    let dir = std::env::var_os("HULL_DEBIAN_ROOTFS")
        .map_or_else(|| PathBuf::from("/var/cache/hull/debian-minbase"), PathBuf::from);
    if !dir.join("etc/debian_version").is_file() {
        bail!("{} has no Debian tree: run scripts/debian-rootfs", dir.display());
    }
    Ok(dir)
}

/// A Debian image from the debootstrap tree: the tree (zstd), then a layer
/// (gzip) that adds a user `app` (1000) with a home, deletes /etc/motd
/// (whiteout) and replaces /usr/share/doc (opaque). Runs as `app`.
pub fn debian_image() -> Result<ImageSpec> {
    let root = debian_rootfs()?;
    let mut base = LayerBuilder::new();
    let mut entries: Vec<_> = std::fs::read_dir(&root)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let kind = entry.file_type()?;
        base = if kind.is_symlink() {
            // bookworm's merged /usr: /bin -> usr/bin and friends.
            let target = std::fs::read_link(&path)?;
            base.symlink(&name, &target.to_string_lossy())
        } else if kind.is_dir() {
            base.tree(&path, &name)
        } else {
            base.file(&name, &std::fs::read(&path)?)
        };
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))? + "app:x:1000:1000:app:/home/app:/bin/sh\n";
    let group = std::fs::read_to_string(root.join("etc/group"))? + "app:x:1000:\n";
    let changes = LayerBuilder::new()
        .file_owned("etc/passwd", passwd.as_bytes(), 0o644, 0, 0)
        .file_owned("etc/group", group.as_bytes(), 0o644, 0, 0)
        .whiteout("etc/motd")
        .opaque("usr/share/doc")
        .file("usr/share/doc/hull-note", b"only this\n")
        .dir("home", 0o755)
        .dir_owned("home/app", 0o750, 1000, 1000)
        .file_owned("home/app/.profile", b"# app\n", 0o644, 1000, 1000)
        .build();
    Ok(ImageSpec {
        layers: vec![(base.build(), Compression::Zstd), (changes, Compression::Gzip)],
        config: json!({
            "Cmd": ["cat", "/etc/debian_version"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=debian"],
            "WorkingDir": "/home/app",
            "User": "app",
        }),
        architecture: "amd64".into(),
    })
}

/// A busybox root filesystem as a layer: /bin/busybox and its applets.
pub fn busybox_layer(applets: &[&str]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed (/bin/busybox)");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file_owned("bin/busybox", &busybox, 0o755, 0, 0);
    for applet in applets {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.build()
}

/// Debian's `docker-registry` serving from a temporary directory on 127.0.0.1.
pub struct Registry {
    child: Child,
    pub dir: PathBuf,
    pub addr: String,
}

impl Registry {
    /// Starts a registry; `htpasswd` (a file's contents) turns on basic auth.
    pub fn start(name: &str, htpasswd: Option<&str>) -> Result<Registry> {
        let dir = std::env::temp_dir().join(format!("hull-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match htpasswd {
            Some(content) => {
                std::fs::write(dir.join("htpasswd"), content)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: hull-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let registry = Registry { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            if Instant::now() > deadline {
                bail!("docker-registry did not start listening on {}", registry.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Pushes an OCI layout's tag to `repo:tag` here (with --all for indexes).
    pub fn push(&self, layout: &Path, layout_tag: &str, target: &str, creds: Option<&str>) -> Result<()> {
        let mut command = Command::new("skopeo");
        command
            .args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{layout_tag}", layout.display()))
            .arg(format!("docker://{}/{target}", self.addr));
        if let Some(creds) = creds {
            command.arg(format!("--dest-creds={creds}"));
        }
        let out = command.output().context("running skopeo (apt-get install skopeo)")?;
        if !out.status.success() {
            bail!("skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The registry's stored copy of a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small registry of our own, for what docker-registry cannot be made to
/// do in a test: the bearer-token challenge flow (a token endpoint beside
/// it) and a connection that breaks in the middle of a blob. It serves the
/// blobs of an OCI layout under one repository, one request per connection.
pub struct MockRegistry {
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests seen, as "METHOD PATH [range]".
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone)]
pub struct MockBehaviour {
    /// Demand `Authorization: Bearer TOKEN`, handed out by `/token` to
    /// requests with this basic-auth user:password (None: to anyone).
    pub token: Option<(String, Option<String>)>,
    /// Break the first transfer of each blob after this many bytes.
    pub break_blobs_after: Option<usize>,
}

impl MockRegistry {
    /// Serves `layout` (written by [`write_layout`]) as `repo:tag`.
    pub fn start(layout: &Path, repo: &str, tag: &str, behaviour: MockBehaviour) -> Result<MockRegistry> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let top = index["manifests"][0]["digest"]
            .as_str()
            .context("index without manifests")?
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let broken: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let (layout, repo, tag) = (layout.to_path_buf(), repo.to_string(), tag.to_string());
        let (stop_flag, log_sink, addr_for_realm) = (stop.clone(), log.clone(), addr.clone());
        std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let ctx = MockContext {
                    layout: layout.clone(),
                    repo: repo.clone(),
                    tag: tag.clone(),
                    top: top.clone(),
                    realm: format!("http://{addr_for_realm}/token"),
                    behaviour: behaviour.clone(),
                    log: log_sink.clone(),
                    broken: broken.clone(),
                };
                std::thread::spawn(move || {
                    let _ = ctx.serve(stream);
                });
            }
        });
        Ok(MockRegistry { addr, stop, log })
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for MockRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

struct MockContext {
    layout: PathBuf,
    repo: String,
    tag: String,
    top: String,
    realm: String,
    behaviour: MockBehaviour,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    broken: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

const TOKEN: &str = "hull-test-token";

impl MockContext {
    fn serve(&self, stream: std::net::TcpStream) -> std::io::Result<()> {
        use std::io::{BufRead, BufReader};
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut headers = std::collections::HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
        let range = headers.get("range").cloned();
        if let Ok(mut log) = self.log.lock() {
            log.push(format!(
                "{method} {path}{}",
                range.as_ref().map(|r| format!(" {r}")).unwrap_or_default()
            ));
        }
        let mut out = stream;
        let respond = |out: &mut std::net::TcpStream, status: &str, extra: &[(String, String)], body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            if method != "HEAD" {
                out.write_all(body)?;
            }
            out.flush()
        };
        if path.starts_with("/token") {
            let allowed = match &self.behaviour.token {
                Some((_, Some(basic))) => headers
                    .get("authorization")
                    .is_some_and(|a| a == &format!("Basic {}", base64(basic.as_bytes()))),
                _ => true,
            };
            return if allowed {
                let body = json!({"token": TOKEN, "access_token": TOKEN, "expires_in": 300}).to_string();
                respond(
                    &mut out,
                    "200 OK",
                    &[("Content-Type".into(), "application/json".into())],
                    body.as_bytes(),
                )
            } else {
                respond(
                    &mut out,
                    "401 Unauthorized",
                    &[],
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}",
                )
            };
        }
        if let Some((service, _)) = &self.behaviour.token {
            if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
                let challenge = format!(
                    "Bearer realm=\"{}\",service=\"{service}\",scope=\"repository:{}:pull\"",
                    self.realm, self.repo
                );
                return respond(
                    &mut out,
                    "401 Unauthorized",
                    &[
                        ("WWW-Authenticate".into(), challenge),
                        ("Content-Type".into(), "application/json".into()),
                    ],
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
                );
            }
        }
        if path == "/v2/" {
            return respond(&mut out, "200 OK", &[], b"{}");
        }
        let prefix = format!("/v2/{}/", self.repo);
        let Some(rest) = path.strip_prefix(&prefix) else {
            return respond(
                &mut out,
                "404 Not Found",
                &[],
                b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"repository name not known to registry\"}]}",
            );
        };
        let (kind, reference) = rest.split_once('/').unwrap_or(("", ""));
        let digest = if kind == "manifests" && reference == self.tag {
            self.top.clone()
        } else {
            reference.to_string()
        };
        let file = self
            .layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let Ok(body) =
            std::fs::read(&file)
                .map_err(|_| ())
                .and_then(|b| if digest.starts_with("sha256:") { Ok(b) } else { Err(()) })
        else {
            let code = if kind == "manifests" {
                "MANIFEST_UNKNOWN"
            } else {
                "BLOB_UNKNOWN"
            };
            return respond(
                &mut out,
                "404 Not Found",
                &[],
                format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"unknown\"}}]}}").as_bytes(),
            );
        };
        let mut extra = vec![("Docker-Content-Digest".to_string(), digest.clone())];
        if kind == "manifests" {
            let media_type: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let media_type = media_type["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.manifest.v1+json");
            extra.push(("Content-Type".into(), media_type.to_string()));
            return respond(&mut out, "200 OK", &extra, &body);
        }
        // Blobs: ranges honoured; the first transfer may break on purpose.
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0)
            .min(body.len());
        let first_time = self
            .broken
            .lock()
            .map(|mut b| b.insert(digest.clone()))
            .unwrap_or(false);
        if let (Some(limit), true) = (self.behaviour.break_blobs_after, first_time) {
            if body.len() > limit {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                out.write_all(head.as_bytes())?;
                out.write_all(&body[..limit])?;
                out.flush()?;
                return out.shutdown(std::net::Shutdown::Both);
            }
        }
        if start > 0 {
            extra.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
            ));
            return respond(&mut out, "206 Partial Content", &extra, &body[start..]);
        }
        respond(&mut out, "200 OK", &extra, &body)
    }
}

/// Standard base64, for basic-auth headers in tests.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The busybox applets a plain test image carries.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "false", "id", "hostname", "ls", "env", "wc", "head", "yes", "touch", "pwd",
    "rm", "kill", "uname", "date",
];

/// A layer holding host programs (e.g. `/usr/bin/socat`) at their own
/// paths and the shared libraries they load (by `ldd`), so a test image can
/// run Debian's tools beside busybox.
pub fn host_programs_layer(programs: &[&str]) -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("lib", 0o755)
        .dir("lib64", 0o755);
    for (path, source) in program_files(programs)? {
        layer = layer.file_owned(&path, &std::fs::read(&source)?, 0o755, 0, 0);
    }
    Ok(layer.build())
}

/// Host programs and the shared libraries they load (by `ldd`): where each
/// goes in a guest's root (relative: the program at its own path, libraries
/// in /lib, the loader in /lib64), and the host file.
pub fn program_files(programs: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut libraries = std::collections::BTreeSet::new();
    for program in programs {
        files.push((program.trim_start_matches('/').to_string(), PathBuf::from(program)));
        let ldd = std::process::Command::new("ldd").arg(program).output()?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
                libraries.insert(path.to_string());
            }
        }
    }
    for library in libraries {
        let name = Path::new(&library)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = if name.starts_with("ld-linux") { "lib64" } else { "lib" };
        files.push((format!("{dir}/{name}"), PathBuf::from(library)));
    }
    Ok(files)
}

/// A one-layer busybox image with `config` (Cmd, Env, …), for tests that
/// need a small image in a registry.
pub fn busybox_image(config: Value) -> ImageSpec {
    ImageSpec {
        layers: vec![(busybox_layer(BUSYBOX_APPLETS), Compression::Gzip)],
        config,
        architecture: "amd64".into(),
    }
}

/// A layer with hull-hostile (crates/hostile-guest) at /usr/bin: a static
/// program that runs in the guest, built by scripts/test.
pub fn hostile_tools_layer() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/agent/release/hull-hostile");
    let program = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; scripts/test builds it (cargo rustc -p hostile-guest --release --target-dir target/agent -- -C target-feature=+crt-static)",
            path.display()
        )
    });
    LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/hull-hostile", &program, 0o755, 0, 0)
        .build()
}

/// The busybox image with one more layer (programs under /usr/bin).
pub fn busybox_image_with(extra: Vec<u8>) -> ImageSpec {
    ImageSpec {
        layers: vec![
            (busybox_layer(BUSYBOX_APPLETS), Compression::Gzip),
            (extra, Compression::Gzip),
        ],
        config: json!({"Cmd": ["sh"], "Env": ["PATH=/usr/bin:/bin"]}),
        architecture: "amd64".into(),
    }
}

/// Writes `image` as a layout under `work` and pushes it to `registry` as
/// `target` (`repo:tag`); returns the name to pull it by.
pub fn push_image(registry: &Registry, work: &Path, image: ImageSpec, target: &str) -> Result<String> {
    let layout = work.join(format!("layout-{}", target.replace(['/', ':'], "-")));
    write_layout(&layout, "t", &[image])?;
    registry.push(&layout, "t", target, None)?;
    let _ = std::fs::remove_dir_all(&layout);
    Ok(format!("{}/{target}", registry.addr))
}
