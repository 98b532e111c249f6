//! Applying layer tarballs to a root directory, in order, the way Docker
//! does: whiteouts (`.wh.NAME`) delete what lower layers made, an opaque
//! marker (`.wh..wh..opq`) hides a directory's lower contents, and hard
//! links, symlinks, device nodes, ownership, modes, timestamps and xattrs
//! are kept.
//!
//! A layer is hostile input. Entry paths are cleaned and refused if they
//! climb out with `..`; every parent directory is resolved *inside* the root
//! (a symlink, absolute or relative, can never lead a write outside it); a
//! hard link may only point at something inside the root.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

use crate::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The largest file a layer may hold as a sparse entry: a few bytes of
/// archive must not ask for an arbitrarily large image disk.
const MAX_SPARSE_FILE: u64 = 4 << 30;

/// How many symlinks one path may traverse (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} escapes the root filesystem")]
    Escapes(String),
    #[error("layer entry {path:?}: {detail}")]
    Entry { path: String, detail: String },
    #[error("the layer is not a valid tar stream: {0}")]
    Tar(io::Error),
    #[error("the layer's uncompressed content is {actual}, but the image config says {expected}")]
    DiffId { expected: Digest, actual: Digest },
}

/// What applying one layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Wraps `blob` in the decompressor its first bytes call for (gzip, zstd,
/// or none), whatever the media type claims.
pub fn decompressed<'a>(blob: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(256 * 1024, blob);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// Applies one layer (compressed or not) on top of `root`.
pub fn apply_layer(root: &Path, blob: impl Read) -> Result<LayerStats, UnpackError> {
    let stream = decompressed(blob).map_err(UnpackError::Tar)?;
    let mut hashing = HashingReader::new(HeaderGuard::new(stream));
    let mut layer = Layer {
        root,
        created: HashSet::new(),
        dir_times: Vec::new(),
        entries: 0,
        bytes: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_mask(0);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(UnpackError::Tar)? {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            layer.apply(&mut entry)?;
        }
    }
    // Directory times last: adding children changed them.
    for (dir, mtime) in layer.dir_times.iter().rev() {
        let _ = filetime::set_symlink_file_times(dir, *mtime, *mtime);
    }
    let (diff_id, _) = hashing.finish().map_err(UnpackError::Tar)?;
    Ok(LayerStats {
        diff_id,
        entries: layer.entries,
        bytes: layer.bytes,
    })
}

/// Largest GNU long name / long link or PAX header a layer may carry (the
/// tar crate reads them whole into memory).
const MAX_HEADER_EXTENSION: u64 = 1 << 20;

/// Watches the tar stream go by and refuses header extensions (GNU long
/// names and links, PAX records) larger than `MAX_HEADER_EXTENSION`, so a
/// hostile layer cannot make unpacking allocate without bound. It follows
/// the 512-byte block structure itself, honouring a PAX `size` override.
struct HeaderGuard<R> {
    inner: R,
    /// Bytes of the current entry's data (with padding) still to pass.
    skip: u64,
    header: Vec<u8>,
    /// The data of a PAX header being collected, and how much is left of it.
    pax: Option<(Vec<u8>, u64)>,
    size_override: Option<u64>,
}

impl<R: Read> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            skip: 0,
            header: Vec::with_capacity(512),
            pax: None,
            size_override: None,
        }
    }

    fn padded(size: u64) -> u64 {
        size.div_ceil(512).saturating_mul(512)
    }

    /// The header's size field: octal, or GNU base-256 for large values.
    fn size_field(header: &[u8]) -> io::Result<u64> {
        let field = &header[124..136];
        if field[0] & 0x80 != 0 {
            let mut value: u64 = 0;
            for &b in &field[4..] {
                value = value
                    .checked_mul(256)
                    .ok_or_else(|| io::Error::other("tar size overflows"))?
                    | b as u64;
            }
            return Ok(value);
        }
        let text: String = field.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        u64::from_str_radix(text, 8).map_err(|_| io::Error::other(format!("bad tar size field {text:?}")))
    }

    fn header_done(&mut self) -> io::Result<()> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(()); // end-of-archive blocks
        }
        let kind = self.header[156];
        let mut size = Self::size_field(&self.header)?;
        let is_extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if is_extension && size > MAX_HEADER_EXTENSION {
            return Err(io::Error::other(format!(
                "a tar header extension of {size} bytes exceeds the {MAX_HEADER_EXTENSION}-byte limit"
            )));
        }
        if !is_extension {
            if let Some(overridden) = self.size_override.take() {
                size = overridden;
            }
        }
        if kind == b'x' {
            self.pax = Some((Vec::with_capacity(size as usize), size));
            self.skip = Self::padded(size) - size;
            if size == 0 {
                self.pax_done();
            }
        } else {
            self.skip = Self::padded(size);
        }
        Ok(())
    }

    fn pax_done(&mut self) {
        if let Some((records, _)) = self.pax.take() {
            let text = String::from_utf8_lossy(&records);
            for record in text.lines() {
                if let Some(value) = record.split_once(' ').and_then(|(_, kv)| kv.strip_prefix("size=")) {
                    self.size_override = value.trim().parse().ok();
                }
            }
        }
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if let Some((records, left)) = self.pax.as_mut() {
                let take = (*left).min((n - i) as u64) as usize;
                records.extend_from_slice(&buf[i..i + take]);
                *left -= take as u64;
                i += take;
                if *left == 0 {
                    self.pax_done();
                }
                continue;
            }
            if self.skip > 0 {
                let take = self.skip.min((n - i) as u64) as usize;
                self.skip -= take as u64;
                i += take;
                continue;
            }
            let take = (512 - self.header.len()).min(n - i);
            self.header.extend_from_slice(&buf[i..i + take]);
            i += take;
            if self.header.len() == 512 {
                self.header_done()?;
                self.header.clear();
            }
        }
        Ok(n)
    }
}

/// The cleaned components of an entry path, or an error if `..` climbs
/// above the root.
fn clean_components(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let display = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(UnpackError::Entry {
            path: display(),
            detail: "NUL in path".into(),
        });
    }
    let mut parts: Vec<OsString> = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_os_string()),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(UnpackError::Escapes(display()));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(parts)
}

/// The components of `path` that `resolve_in_root` walks: names and `..`
/// (a leading `/` and `.` say nothing there).
pub fn path_parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(c) => Some(c.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Resolves `parts` under `root` following symlinks as if `root` were `/`:
/// nothing reached this way is outside `root`. The last component is
/// followed too only if `follow_last`.
pub fn resolve_in_root(root: &Path, parts: &[OsString], follow_last: bool) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<(OsString, bool)> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i + 1 == parts.len()))
        .collect();
    let mut links = 0;
    while let Some((part, is_last)) = pending.pop_front() {
        match part.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        let is_link = fs::symlink_metadata(&candidate).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link || (is_last && !follow_last) {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(io::Error::other("too many levels of symbolic links"));
        }
        let target = fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        let target_parts = path_parts(&target);
        let count = target_parts.len();
        for (i, p) in target_parts.into_iter().enumerate().rev() {
            pending.push_front((p, is_last && i + 1 == count));
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(path)
}

struct Layer<'r> {
    root: &'r Path,
    /// Paths this layer made: an opaque marker keeps them.
    created: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, FileTime)>,
    entries: u64,
    bytes: u64,
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Layer<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let fail = |detail: String| UnpackError::Entry {
            path: shown.clone(),
            detail,
        };
        let parts = clean_components(&raw)?;
        let Some((name, parents)) = parts.split_last() else {
            return Ok(()); // the root itself ("./")
        };
        let parent = resolve_in_root(self.root, parents, true).map_err(|e| fail(e.to_string()))?;
        self.entries += 1;

        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            return self.make_opaque(&parent).map_err(|e| fail(e.to_string()));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(fail("malformed whiteout".into()));
            }
            return remove_any(&parent.join(OsStr::from_bytes(hidden))).map_err(|e| fail(e.to_string()));
        }

        create_implicit_dirs(&parent).map_err(|e| fail(format!("creating its parent: {e}")))?;
        let dst = parent.join(name);
        let kind = entry.header().entry_type();
        let existing = fs::symlink_metadata(&dst).ok();
        // Anything but a directory over a directory replaces it, and vice versa.
        if let Some(meta) = &existing {
            if !(kind.is_dir() && meta.is_dir()) {
                remove_any(&dst).map_err(|e| fail(format!("replacing it: {e}")))?;
            }
        }
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !dst.is_dir() {
                    fs::create_dir(&dst).map_err(|e| fail(e.to_string()))?;
                }
                self.set_metadata(entry, &dst).map_err(|e| fail(e.to_string()))?;
                if let Ok(mtime) = entry.header().mtime() {
                    self.dir_times
                        .push((dst.clone(), FileTime::from_unix_time(mtime as i64, 0)));
                }
            }
            // A GNU sparse file reads back whole (the tar crate fills its holes).
            T::Regular | T::Continuous | T::GNUSparse | T::Symlink => {
                if kind == T::GNUSparse {
                    // Its holes cost nothing to send but count in the image disk's size.
                    let real = entry.header().as_gnu().and_then(|g| g.real_size().ok());
                    let real = real.ok_or_else(|| fail("a sparse file without its real size".into()))?;
                    if real > MAX_SPARSE_FILE {
                        return Err(fail(format!(
                            "a sparse file of {real} bytes exceeds the {MAX_SPARSE_FILE}-byte limit"
                        )));
                    }
                    self.bytes += real;
                } else if kind != T::Symlink {
                    self.bytes += entry.size();
                }
                entry.unpack(&dst).map_err(|e| fail(e.to_string()))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("hard link without a target".into()))?
                    .into_owned();
                let target_parts = clean_components(&target)?;
                let source = resolve_in_root(self.root, &target_parts, false).map_err(|e| fail(e.to_string()))?;
                let meta = fs::symlink_metadata(&source).map_err(|_| {
                    fail(format!(
                        "hard link to {:?}, which does not exist",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                if meta.is_dir() {
                    return Err(fail("hard link to a directory".into()));
                }
                fs::hard_link(&source, &dst).map_err(|e| fail(e.to_string()))?;
            }
            T::Char | T::Block | T::Fifo => {
                let header = entry.header();
                let file_type = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let c_path = CString::new(dst.as_os_str().as_bytes()).map_err(|e| fail(e.to_string()))?;
                // SAFETY: c_path is a valid NUL-terminated path for the call.
                let rc = unsafe { libc::mknod(c_path.as_ptr(), file_type | 0o600, libc::makedev(major, minor)) };
                if rc != 0 {
                    return Err(fail(format!("mknod: {}", io::Error::last_os_error())));
                }
                self.set_metadata(entry, &dst).map_err(|e| fail(e.to_string()))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = FileTime::from_unix_time(mtime as i64, 0);
                    let _ = filetime::set_symlink_file_times(&dst, t, t);
                }
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => return Err(fail(format!("unsupported entry type {other:?}"))),
        }
        self.created.insert(dst);
        Ok(())
    }

    /// Ownership, mode and xattrs for entries the tar crate leaves to us.
    fn set_metadata<R: Read>(&self, entry: &mut tar::Entry<R>, dst: &Path) -> io::Result<()> {
        let header = entry.header();
        let (uid, gid) = (header.uid()?, header.gid()?);
        let mode = header.mode()? & 0o7777;
        let (uid, gid) = (
            u32::try_from(uid).map_err(|_| io::Error::other("uid out of range"))?,
            u32::try_from(gid).map_err(|_| io::Error::other("gid out of range"))?,
        );
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
        // chown clears set-id bits, so the mode comes after it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                if let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattr::set(dst, OsStr::from_bytes(name), extension.value_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Hides everything lower layers put in `dir`.
    fn make_opaque(&mut self, dir: &Path) -> io::Result<()> {
        let Ok(children) = fs::read_dir(dir) else {
            return create_implicit_dirs(dir);
        };
        for child in children {
            let path = child?.path();
            if !self.created.contains(&path) {
                remove_any(&path)?;
            }
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents as a layer's implicit
/// directories: 0755 whatever the process's umask (hull's is 077), as
/// Docker makes them.
pub fn create_implicit_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_implicit_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `path` is (still) inside `root`, by device and inode of each
/// ancestor: used by tests to prove hostile layers wrote nothing outside.
pub fn is_within(root: &Path, path: &Path) -> bool {
    let Ok(root_meta) = fs::metadata(root) else {
        return false;
    };
    let mut current = path.parent();
    while let Some(dir) = current {
        if fs::metadata(dir).is_ok_and(|m| m.dev() == root_meta.dev() && m.ino() == root_meta.ino()) {
            return true;
        }
        current = dir.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h
        }
        /// Writes a header with a raw name, bypassing the builder's path checks.
        fn raw(mut self, name: &[u8], mut header: tar::Header, data: &[u8]) -> Tar {
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Tar {
            let h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
            self.raw(name.as_bytes(), h, data)
        }
        fn dir(self, name: &str) -> Tar {
            self.raw(name.as_bytes(), Self::header(tar::EntryType::Directory, 0o755, 0), &[])
        }
        fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Tar {
            let mut h = Self::header(kind, 0o777, 0);
            h.set_link_name(target).unwrap();
            self = self.raw(name.as_bytes(), h, &[]);
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hull-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("root")).unwrap();
        dir
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
        let dir = temp_root("order");
        let root = dir.join("root");
        let lower = Tar::new()
            .dir("etc/")
            .file("etc/keep", b"keep")
            .file("etc/gone", b"gone")
            .dir("opt/")
            .file("opt/old", b"old")
            .file("usr/bin/tool", b"tool")
            .link(tar::EntryType::Link, "usr/bin/tool-hardlink", "usr/bin/tool")
            .link(tar::EntryType::Symlink, "bin", "usr/bin")
            .bytes();
        let stats = apply_layer(&root, &lower[..]).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&lower));
        let upper = Tar::new()
            .file("etc/.wh.gone", b"")
            .file("opt/new", b"new")
            .file("opt/.wh..wh..opq", b"")
            .file("bin/added", b"through the symlink")
            .bytes();
        // gzip-compressed, to prove decompression and diff IDs of the plain stream.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &upper).unwrap();
        let stats = apply_layer(&root, &gz.finish().unwrap()[..]).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&upper));
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"keep");
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("opt/old").exists(), "opaque directory hides lower contents");
        assert_eq!(fs::read(root.join("opt/new")).unwrap(), b"new");
        assert_eq!(fs::read(root.join("usr/bin/added")).unwrap(), b"through the symlink");
        let (a, b) = (
            fs::metadata(root.join("usr/bin/tool")).unwrap(),
            fs::metadata(root.join("usr/bin/tool-hardlink")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        assert_eq!(fs::metadata(root.join("etc/keep")).unwrap().mtime(), 1_600_000_000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_layers_cannot_write_outside_the_root() {
        let dir = temp_root("hostile");
        let root = dir.join("root");
        let escape = Tar::new().file("../escaped", b"x").bytes();
        assert!(matches!(apply_layer(&root, &escape[..]), Err(UnpackError::Escapes(_))));
        assert!(!dir.join("escaped").exists());

        // An absolute symlink to the outside, then a write through it: the
        // write lands inside the root, where "/outside" resolves.
        let outside = dir.join("outside");
        fs::create_dir_all(&outside).unwrap();
        let through = Tar::new()
            .link(tar::EntryType::Symlink, "evil", outside.to_str().unwrap())
            .file("evil/pwned", b"x")
            .link(tar::EntryType::Symlink, "up", "../../../../..")
            .file("up/pwned2", b"x")
            .bytes();
        apply_layer(&root, &through[..]).unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(!dir.join("pwned2").exists());
        let inside = root.join(outside.strip_prefix("/").unwrap()).join("pwned");
        assert!(inside.exists() && is_within(&root, &inside));
        assert!(root.join("pwned2").exists());

        let hardlink_out = Tar::new().link(tar::EntryType::Link, "h", "../../etc/passwd").bytes();
        assert!(matches!(
            apply_layer(&root, &hardlink_out[..]),
            Err(UnpackError::Escapes(_))
        ));
        let abs_hardlink = Tar::new().link(tar::EntryType::Link, "h", "/etc/passwd").bytes();
        assert!(
            apply_layer(&root, &abs_hardlink[..]).is_err(),
            "resolved in the root, where it is missing"
        );

        // A GNU long name of 64 MiB is refused before it is read whole.
        let mut long = Tar::header(tar::EntryType::GNULongName, 0o644, 64 << 20);
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_cksum();
        let mut huge = long.as_bytes().to_vec();
        huge.extend(std::iter::repeat_n(b'a', 4096));
        let err = apply_layer(&root, &huge[..]).unwrap_err().to_string();
        assert!(err.contains("exceeds the 1048576-byte limit"), "{err}");

        let truncated = Tar::new().file("big", &[1u8; 4096]).bytes();
        assert!(apply_layer(&root, &truncated[..1000]).is_err());
        let garbage = vec![0x42u8; 2048];
        assert!(apply_layer(&root, &garbage[..]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A PAX extended header carrying one record.
    fn pax(tar: Tar, key: &str, value: &str) -> Tar {
        let body = format!(" {key}={value}\n");
        let mut len = body.len();
        while format!("{len}{body}").len() != len {
            len = format!("{len}{body}").len();
        }
        let record = format!("{len}{body}");
        let header = Tar::header(tar::EntryType::XHeader, 0o644, record.len() as u64);
        tar.raw(b"PaxHeader", header, record.as_bytes())
    }

    /// A tar of `file` as the tar crate writes a file with holes: GNU sparse.
    fn sparse_tar_of(file: &Path) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.sparse(true);
        builder.append_path_with_name(file, "data/sparse").unwrap();
        let bytes = builder.into_inner().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let kinds: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().entry_type())
            .collect();
        assert_eq!(kinds, [tar::EntryType::GNUSparse], "written as a sparse entry");
        bytes
    }

    #[test]
    fn sparse_files_unpack_whole_within_a_bound() {
        let dir = temp_root("sparse");
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        let file = dir.join("holes");
        let mut f = fs::File::create(&file).unwrap();
        f.set_len(8 << 20).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(5 << 20)).unwrap();
        std::io::Write::write_all(&mut f, b"data in the middle").unwrap();
        drop(f);
        let stats = apply_layer(&root, sparse_tar_of(&file).as_slice()).unwrap();
        assert_eq!(fs::read(root.join("data/sparse")).unwrap(), fs::read(&file).unwrap());
        assert!(stats.bytes >= 8 << 20, "counted at its real size: {}", stats.bytes);

        let huge = dir.join("huge");
        fs::File::create(&huge).unwrap().set_len(MAX_SPARSE_FILE + 1).unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&huge).unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        drop(f);
        let err = apply_layer(&root, sparse_tar_of(&huge).as_slice())
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds the"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn xattrs_of_files_and_directories_are_kept() {
        let dir = temp_root("xattrs");
        let root = dir.join("root");
        let layer = pax(Tar::new(), "SCHILY.xattr.user.hull", "dir-value").dir("data/");
        let layer = pax(layer, "SCHILY.xattr.user.hull", "file-value").file("data/file", b"x");
        apply_layer(&root, &layer.bytes()[..]).unwrap();
        assert_eq!(
            xattr::get(root.join("data"), "user.hull").unwrap(),
            Some(b"dir-value".to_vec())
        );
        assert_eq!(
            xattr::get(root.join("data/file"), "user.hull").unwrap(),
            Some(b"file-value".to_vec())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_nodes_fifos_and_ownership_are_kept() {
        let dir = temp_root("devices");
        let root = dir.join("root");
        let mut null = Tar::header(tar::EntryType::Char, 0o666, 0);
        null.set_device_major(1).unwrap();
        null.set_device_minor(3).unwrap();
        let mut owned = Tar::header(tar::EntryType::Regular, 0o4750, 2);
        owned.set_uid(1234);
        owned.set_gid(5678);
        let layer = Tar::new()
            .raw(b"dev/null", null, &[])
            .raw(b"run/fifo", Tar::header(tar::EntryType::Fifo, 0o600, 0), &[])
            .raw(b"bin/suid", owned, b"hi")
            .bytes();
        apply_layer(&root, &layer[..]).unwrap();
        let null = fs::metadata(root.join("dev/null")).unwrap();
        assert_eq!(
            (null.mode() & libc::S_IFMT, null.rdev()),
            (libc::S_IFCHR, libc::makedev(1, 3))
        );
        let fifo = fs::metadata(root.join("run/fifo")).unwrap();
        assert_eq!(fifo.mode() & libc::S_IFMT, libc::S_IFIFO);
        let suid = fs::metadata(root.join("bin/suid")).unwrap();
        assert_eq!((suid.uid(), suid.gid(), suid.mode() & 0o7777), (1234, 5678, 0o4750));
        fs::remove_dir_all(&dir).unwrap();
    }
}
