//! Reading a standby's next command into the page cache while it stands
//! by: a container's exec otherwise reads its program (and the program's
//! interpreter) from the image disk, each read a trip through the VMM, on
//! the start's path.
//!
//! The paths come from the host (where the last container's command was
//! looked for) but are resolved in the image, which is untrusted: every
//! path is opened beneath the root (`openat2` with `RESOLVE_IN_ROOT`, so a
//! link cannot lead out of it), without blocking, and only a regular file
//! is read, at most `MAX_BYTES` of it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};

/// The most read of one file: a start's program is rarely larger, and the
/// standby's memory is the container's.
const MAX_BYTES: u64 = 32 << 20;
/// The most of a file's start read to find its interpreter.
const HEADER_BYTES: usize = 4096;

/// Reads the first regular file among `candidates` (paths in the image
/// mounted at `root`) and the interpreter it names, if any, into the page
/// cache: the path read first, if one was found.
pub fn command(root: &str, candidates: &[String]) -> io::Result<Option<String>> {
    let root_dir = open_dir(root)?;
    for candidate in candidates {
        let Some(mut file) = open_regular(&root_dir, candidate) else {
            continue;
        };
        let interpreter = read_whole(&mut file)?;
        if let Some(interpreter) = interpreter {
            if let Some(mut file) = open_regular(&root_dir, &interpreter) {
                read_whole(&mut file)?;
            }
        }
        return Ok(Some(candidate.clone()));
    }
    Ok(None)
}

/// What every start reads of its image, whatever its command: the user's
/// and the groups' entries (`user::resolve`).
pub const ALWAYS_READ: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Reads each of `paths` that is a regular file in the image mounted at
/// `root` into the page cache.
pub fn files(root: &str, paths: &[&str]) -> io::Result<()> {
    let root_dir = open_dir(root)?;
    for path in paths {
        if let Some(mut file) = open_regular(&root_dir, path) {
            read_whole(&mut file)?;
        }
    }
    Ok(())
}

fn open_dir(path: &str) -> io::Result<File> {
    let path = CString::new(path).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us alone.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `path` opened beneath `root` (links resolved as if `root` were `/`), if
/// it is a regular file there.
fn open_regular(root: &File, path: &str) -> Option<File> {
    let c_path = CString::new(path).ok()?;
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a directory we hold, a NUL-terminated path and
    // an open_how of the size passed, all alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned to us alone.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    file.metadata().ok()?.is_file().then_some(file)
}

/// Reads `file` (up to `MAX_BYTES`): the interpreter its first bytes name
/// (an ELF program's `PT_INTERP`, a script's `#!`), if any.
fn read_whole(file: &mut File) -> io::Result<Option<String>> {
    let mut header = vec![0u8; HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..])? {
            0 => break,
            n => got += n,
        }
    }
    header.truncate(got);
    let mut rest = file.take(MAX_BYTES.saturating_sub(got as u64));
    io::copy(&mut rest, &mut io::sink())?;
    Ok(interpreter(&header))
}

/// The interpreter a program's first bytes name: an ELF64 little-endian
/// program's `PT_INTERP` (when it lies within `header`), or a script's
/// `#!` path.
fn interpreter(header: &[u8]) -> Option<String> {
    if let Some(line) = header.strip_prefix(b"#!") {
        let line = &line[..line.iter().position(|&b| b == b'\n')?];
        let path = line.split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty())?;
        return std::str::from_utf8(path).ok().map(str::to_string);
    }
    const PT_INTERP: u32 = 3;
    if header.len() < 64 || &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let bytes_at = |at: usize, n: usize| header.get(at..at.checked_add(n)?);
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes_at(at, 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes_at(at, 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes_at(at, 8)?.try_into().ok()?));
    let table = usize::try_from(u64_at(32)?).ok()?;
    let (entry_size, entries) = (usize::from(u16_at(54)?), usize::from(u16_at(56)?));
    (0..entries).find_map(|i| {
        let entry = table.checked_add(i.checked_mul(entry_size)?)?;
        if u32_at(entry)? != PT_INTERP {
            return None;
        }
        let offset = usize::try_from(u64_at(entry.checked_add(8)?)?).ok()?;
        let size = usize::try_from(u64_at(entry.checked_add(32)?)?).ok()?;
        let bytes = bytes_at(offset, size)?;
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
        std::str::from_utf8(bytes).ok().map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        root
    }

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_first_regular_file_found_is_read_links_resolved_in_the_root() {
        let root = root();
        let dir = root.path().to_str().unwrap();
        std::fs::write(root.path().join("bin/busybox"), b"\x7fELF not really").unwrap();
        // An absolute link means the image's /bin/busybox, not the agent's.
        std::os::unix::fs::symlink("/bin/busybox", root.path().join("bin/sh")).unwrap();
        let found = command(dir, &paths(&["/usr/bin/sh", "/bin/sh", "/bin/busybox"])).unwrap();
        assert_eq!(found.as_deref(), Some("/bin/sh"));
        // A link leading out of the root stays in it: nothing there.
        std::os::unix::fs::symlink("../../../../etc/hostname", root.path().join("usr/bin/out")).unwrap();
        assert_eq!(command(dir, &paths(&["/usr/bin/out"])).unwrap(), None);
        assert_eq!(command(dir, &paths(&["/nowhere", "relative"])).unwrap(), None);
        assert_eq!(command(dir, &[]).unwrap(), None);
    }

    #[test]
    fn a_fifo_or_directory_is_passed_over_without_blocking() {
        let root = root();
        let dir = root.path().to_str().unwrap();
        let fifo = CString::new(root.path().join("bin/fifo").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(root.path().join("usr/bin/fifo"), b"#!/bin/sh\n").unwrap();
        let found = command(dir, &paths(&["/bin/fifo", "/usr/bin", "/usr/bin/fifo"])).unwrap();
        assert_eq!(found.as_deref(), Some("/usr/bin/fifo"));
    }

    #[test]
    fn files_missing_or_not_regular_are_passed_over() {
        let root = root();
        let dir = root.path().to_str().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        // An image's /etc/group a FIFO: read ahead, it would block the standby.
        let fifo = CString::new(root.path().join("etc/group").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        files(dir, &ALWAYS_READ).unwrap();
        std::fs::write(root.path().join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        files(dir, &ALWAYS_READ).unwrap();
        assert!(files("/nonexistent-root", &ALWAYS_READ).is_err());
    }

    #[test]
    fn interpreters_are_named_by_a_shebang_or_pt_interp() {
        assert_eq!(interpreter(b"#!/bin/sh -e\necho\n").as_deref(), Some("/bin/sh"));
        assert_eq!(
            interpreter(b"#!  /usr/bin/env python3\n").as_deref(),
            Some("/usr/bin/env")
        );
        assert_eq!(interpreter(b"#!/bin/sh"), None, "no end of line within the header");
        // A minimal ELF64 header with one program header, PT_INTERP.
        let mut elf = vec![0u8; 200];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        elf[72..80].copy_from_slice(&150u64.to_le_bytes());
        let name = b"/lib/ld-musl-x86_64.so.1\0";
        elf[96..104].copy_from_slice(&(name.len() as u64).to_le_bytes());
        elf[150..150 + name.len()].copy_from_slice(name);
        assert_eq!(interpreter(&elf).as_deref(), Some("/lib/ld-musl-x86_64.so.1"));
        // Hostile offsets and sizes fall outside the header: nothing.
        elf[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&elf), None);
        elf[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&elf), None);
        assert_eq!(interpreter(b"\x7fELF"), None);
    }
}
