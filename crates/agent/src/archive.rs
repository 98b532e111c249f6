//! File operations in the container's root for the host (`docker cp`,
//! `docker export`), what the container changed (`docker diff`) and its
//! writable layer as an image layer (`docker commit`).
//!
//! An archive operation runs as a process of its own: the agent starts
//! itself (`/proc/self/exe hull-archive OP`) chrooted into the container's
//! root like any exec, so paths and symlinks resolve inside the container
//! and a tar stream of any size flows through the ordinary stdout/stdin
//! relay. Walks stay on one filesystem (the kernel's /proc, /sys, /dev and
//! /tmp mounts are listed, not entered), as `tar --one-file-system` does.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use proto::{ArchiveOp, Change, PathStat, ARCHIVE_FAILED, ARCHIVE_NOT_A_DIRECTORY, ARCHIVE_NOT_FOUND};

/// The first argument that makes the agent an archive helper.
pub const HELPER_ARG: &str = "hull-archive";

/// The process that carries out `op` in the container (see the module doc).
pub fn helper_argv(op: &ArchiveOp) -> Result<Vec<String>, String> {
    let op = serde_json::to_string(op).map_err(|e| e.to_string())?;
    Ok(vec!["/proc/self/exe".into(), HELPER_ARG.into(), op])
}

/// The helper's `main`: its exit status (`proto::ARCHIVE_*`).
pub fn helper_main(op: &str) -> i32 {
    let result = serde_json::from_str::<ArchiveOp>(op)
        .map_err(|e| (ARCHIVE_FAILED, format!("bad archive request: {e}")))
        .and_then(run);
    match result {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

type OpResult = Result<(), (i32, String)>;

fn failed(what: &str) -> impl FnOnce(io::Error) -> (i32, String) + '_ {
    move |e| (ARCHIVE_FAILED, format!("{what}: {e}"))
}

fn lstat(path: &str) -> Result<fs::Metadata, (i32, String)> {
    fs::symlink_metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => (ARCHIVE_NOT_FOUND, format!("no such file or directory: {path}")),
        _ => (ARCHIVE_FAILED, format!("{path}: {e}")),
    })
}

fn run(op: ArchiveOp) -> OpResult {
    let stdout = io::stdout();
    match op {
        ArchiveOp::Stat { path } => {
            let stat = path_stat(&path, &lstat(&path)?);
            let json = serde_json::to_string(&stat).map_err(|e| (ARCHIVE_FAILED, e.to_string()))?;
            writeln!(stdout.lock(), "{json}").map_err(failed("writing the answer"))
        }
        ArchiveOp::Get { path } => {
            let meta = lstat(&path)?;
            let mut builder = tar::Builder::new(stdout.lock());
            builder.follow_symlinks(false);
            builder.sparse(false); // plain files, as dockerd writes them
            walk(
                &mut builder,
                Path::new(&path),
                &PathBuf::from(base_name(&path)),
                meta.dev(),
            )
            .map_err(failed("archiving"))?;
            builder
                .into_inner()
                .and_then(|mut w| w.flush())
                .map_err(failed("archiving"))
        }
        ArchiveOp::Export => {
            let meta = lstat("/")?;
            let mut builder = tar::Builder::new(stdout.lock());
            builder.follow_symlinks(false);
            builder.sparse(false); // plain files, as dockerd writes them
            walk(&mut builder, Path::new("/"), Path::new(""), meta.dev()).map_err(failed("exporting"))?;
            builder
                .into_inner()
                .and_then(|mut w| w.flush())
                .map_err(failed("exporting"))
        }
        ArchiveOp::Put {
            path,
            no_overwrite_dir_non_dir,
        } => put(&path, no_overwrite_dir_non_dir),
    }
}

/// The name an archive of `path` gives it: its last component.
fn base_name(path: &str) -> String {
    match Path::new(path).file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => ".".into(), // the root itself
    }
}

/// Appends `fs_path` as `name` (the root of an export has no entry of its
/// own), then, for a directory on filesystem `dev`, its contents.
fn walk<W: Write>(builder: &mut tar::Builder<W>, fs_path: &Path, name: &Path, dev: u64) -> io::Result<()> {
    let meta = match fs::symlink_metadata(fs_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()), // gone meanwhile
        Err(e) => return Err(e),
    };
    if meta.file_type().is_socket() {
        return Ok(()); // tar has no sockets
    }
    if !name.as_os_str().is_empty() {
        builder.append_path_with_name(fs_path, name)?;
    }
    if meta.is_dir() && meta.dev() == dev {
        let mut children: Vec<_> = fs::read_dir(fs_path)?
            .filter_map(|e| Some(e.ok()?.file_name()))
            .collect();
        children.sort();
        for child in children {
            walk(builder, &fs_path.join(&child), &name.join(&child), dev)?;
        }
    }
    Ok(())
}

/// Unpacks the tar stream on standard input into directory `dir`.
fn put(dir: &str, no_overwrite_dir_non_dir: bool) -> OpResult {
    let meta = fs::metadata(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => (ARCHIVE_NOT_FOUND, format!("no such directory: {dir}")),
        _ => (ARCHIVE_FAILED, format!("{dir}: {e}")),
    })?;
    if !meta.is_dir() {
        return Err((ARCHIVE_NOT_A_DIRECTORY, format!("not a directory: {dir}")));
    }
    let stdin = io::stdin();
    let mut archive = tar::Archive::new(stdin.lock());
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(failed("reading the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(failed("reading the archive"))?;
        let name = entry.path().map_err(failed("reading the archive"))?.into_owned();
        if no_overwrite_dir_non_dir {
            let existing = fs::symlink_metadata(Path::new(dir).join(&name));
            let is_dir = entry.header().entry_type().is_dir();
            if existing.is_ok_and(|m| m.is_dir() != is_dir) {
                return Err((
                    ARCHIVE_FAILED,
                    format!(
                        "cannot overwrite {} {} with a {}",
                        if is_dir { "non-directory" } else { "directory" },
                        name.display(),
                        if is_dir { "directory" } else { "non-directory" }
                    ),
                ));
            }
        }
        // unpack_in refuses names that would land outside `dir` (`..`).
        entry
            .unpack_in(dir)
            .map_err(failed(&format!("unpacking {}", name.display())))?;
    }
    Ok(())
}

/// Go's `os.FileMode` bits for `meta`, as Docker reports them.
fn go_file_mode(meta: &fs::Metadata) -> u32 {
    let file_type = meta.file_type();
    let mut mode = meta.mode() & 0o777;
    let bits = [
        (file_type.is_dir(), 1 << 31),
        (file_type.is_symlink(), 1 << 27),
        (file_type.is_block_device(), 1 << 26),
        (file_type.is_char_device(), (1 << 26) | (1 << 21)),
        (file_type.is_fifo(), 1 << 25),
        (file_type.is_socket(), 1 << 24),
        (meta.mode() & 0o4000 != 0, 1 << 23),
        (meta.mode() & 0o2000 != 0, 1 << 22),
        (meta.mode() & 0o1000 != 0, 1 << 20),
    ];
    for (set, bit) in bits {
        if set {
            mode |= bit;
        }
    }
    mode
}

fn path_stat(path: &str, meta: &fs::Metadata) -> PathStat {
    PathStat {
        name: base_name(path),
        size: meta.len(),
        mode: go_file_mode(meta),
        mtime: rfc3339(meta.mtime()),
        link_target: fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Seconds since the epoch as RFC 3339 UTC (the civil-from-days algorithm).
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The mount points the agent makes in every container: not changes of its own.
const KERNEL_MOUNTS: &[&str] = &["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"];
/// The files the agent bind-mounts over the container's (`network.rs`):
/// the container did not change them, as Docker's diff does not show them.
const NETWORK_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

/// Whether `path` in the upper layer is a mount point or file the agent
/// made for the container rather than one the container wrote.
fn made_by_the_agent(path: &str, in_image: bool) -> bool {
    (KERNEL_MOUNTS.contains(&path) && !in_image) || NETWORK_FILES.contains(&path)
}

/// overlayfs's mark of a deleted path: a 0:0 character device.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// overlayfs's mark of a directory that hides the image's one beneath it
/// (it was removed and made again).
fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: a NUL-terminated path, a NUL-terminated name, and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// The container's writable layer as an OCI image layer, for `docker
/// commit`: the overlay's upper directory (`upper`, read against the
/// image at `lower`) with whiteouts written as `.wh.NAME` files and opaque
/// directories marked by a `.wh..wh..opq` entry, as the layer format has
/// them; what the agent made for the container is left out.
pub fn write_layer(upper: &Path, lower: &Path, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.sparse(false); // plain files, as dockerd writes them
    layer_dir(&mut builder, upper, lower, Path::new(""))?;
    builder.into_inner()?.flush()
}

fn layer_dir<W: Write>(builder: &mut tar::Builder<W>, upper: &Path, lower: &Path, at: &Path) -> io::Result<()> {
    let mut children: Vec<_> = fs::read_dir(upper.join(at))?
        .filter_map(|e| Some(e.ok()?.file_name()))
        .collect();
    children.sort();
    for child in children {
        let relative = at.join(&child);
        let path = upper.join(&relative);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        let in_image = fs::symlink_metadata(lower.join(&relative)).is_ok();
        let absolute = Path::new("/").join(&relative);
        if made_by_the_agent(&absolute.to_string_lossy(), in_image) || meta.file_type().is_socket() {
            continue;
        }
        if is_whiteout(&meta) {
            let mut name = std::ffi::OsString::from(".wh.");
            name.push(&child);
            append_marker(builder, &at.join(name), meta.mtime())?;
            continue;
        }
        builder.append_path_with_name(&path, &relative)?;
        if meta.is_dir() {
            if is_opaque(&path) {
                append_marker(builder, &relative.join(".wh..wh..opq"), meta.mtime())?;
            }
            layer_dir(builder, upper, lower, &relative)?;
        }
    }
    Ok(())
}

/// An empty file that marks a deletion in the layer format.
fn append_marker<W: Write>(builder: &mut tar::Builder<W>, name: &Path, mtime: i64) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o600);
    header.set_mtime(mtime.max(0) as u64);
    builder.append_data(&mut header, name, io::empty())
}

/// What the container changed against its image: the overlay's upper layer
/// (`upper`) read against the image (`lower`). A whiteout (a 0:0 character
/// device) is a deletion; anything else is a change if the image has the
/// path, an addition if not.
pub fn changes(upper: &Path, lower: &Path) -> Vec<Change> {
    let mut found = Vec::new();
    collect_changes(upper, lower, Path::new("/"), &mut found);
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn collect_changes(upper: &Path, lower: &Path, at: &Path, found: &mut Vec<Change>) {
    let Ok(children) = fs::read_dir(upper.join(at.strip_prefix("/").unwrap_or(at))) else {
        return;
    };
    for child in children.flatten() {
        let path = at.join(child.file_name());
        let relative = path.strip_prefix("/").unwrap_or(&path);
        let Ok(meta) = fs::symlink_metadata(upper.join(relative)) else {
            continue;
        };
        let whiteout = is_whiteout(&meta);
        let in_image = fs::symlink_metadata(lower.join(relative)).is_ok();
        let kind = match (whiteout, in_image) {
            (true, _) => 2,
            (false, true) => 0,
            (false, false) => 1,
        };
        let text = path.to_string_lossy().into_owned();
        if !made_by_the_agent(&text, in_image) {
            found.push(Change { path: text, kind });
        }
        if meta.is_dir() {
            collect_changes(upper, lower, &path, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_modes_are_dockers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_610), "2026-01-01T00:00:10Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        let meta = fs::symlink_metadata(dir.path()).unwrap();
        assert_eq!(go_file_mode(&meta) >> 31, 1, "a directory");
    }

    #[test]
    fn changes_read_the_upper_layer_against_the_image() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::write(lower.path().join("etc/passwd"), "root").unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::write(upper.path().join("etc/passwd"), "root\napp").unwrap();
        fs::write(upper.path().join("new"), "x").unwrap();
        fs::create_dir_all(upper.path().join("proc")).unwrap();
        fs::write(upper.path().join("etc/resolv.conf"), "").unwrap();
        fs::write(lower.path().join("gone"), "x").unwrap();
        let whiteout = std::ffi::CString::new(upper.path().join("gone").to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid path; a 0:0 character device is overlayfs's whiteout.
        assert_eq!(
            unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) },
            0,
            "mknod (needs root)"
        );
        let got = changes(upper.path(), lower.path());
        let listed: Vec<(u8, &str)> = got.iter().map(|c| (c.kind, c.path.as_str())).collect();
        assert_eq!(listed, [(0, "/etc"), (0, "/etc/passwd"), (2, "/gone"), (1, "/new")]);
    }

    #[test]
    fn the_writable_layer_is_written_in_the_layer_format() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("var/cache")).unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::write(upper.path().join("etc/app.conf"), "port=80").unwrap();
        fs::write(upper.path().join("etc/hosts"), "made by the agent").unwrap();
        fs::create_dir_all(upper.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("app.conf", upper.path().join("etc/link")).unwrap();
        let whiteout = std::ffi::CString::new(upper.path().join("gone").to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid path; a 0:0 character device is overlayfs's whiteout.
        assert_eq!(unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) }, 0);
        let remade = upper.path().join("var/cache");
        fs::create_dir_all(&remade).unwrap();
        let remade_c = std::ffi::CString::new(remade.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path and name, and a one-byte value.
        let opaque = unsafe {
            libc::lsetxattr(
                remade_c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        } == 0;
        let mut tar = Vec::new();
        write_layer(upper.path(), lower.path(), &mut tar).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut expected = vec!["etc", "etc/app.conf", "etc/link", ".wh.gone", "var", "var/cache"];
        if opaque {
            expected.push("var/cache/.wh..wh..opq");
        }
        assert_eq!(names, expected, "opaque marks readable here: {opaque}");
    }
}
