//! A share of one file (`-v /host/app.conf:/etc/app.conf`): its directory
//! is served with everything but that file hidden at the top, and the top
//! directory itself fixed, so root in the guest can neither reach the
//! file's siblings nor change the directory that holds them (its mode,
//! owner, extended attributes or entries).

use std::ffi::{CStr, CString};
use std::io;

/// The passthrough file system's root inode.
const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub struct OnlyFile {
    name: CString,
}

impl OnlyFile {
    pub fn new(name: CString) -> OnlyFile {
        OnlyFile { name }
    }

    /// Whether a listing of directory `parent` leaves out `name`.
    pub fn hides(&self, parent: u64, name: &[u8]) -> bool {
        parent == ROOT && name != self.name.to_bytes()
    }

    /// A lookup of any other name than the file's at the top finds nothing
    /// (the guest's kernel resolves `.` and `..` itself).
    pub fn lookup(&self, parent: u64, name: &CStr) -> io::Result<()> {
        match parent == ROOT && name != self.name.as_c_str() {
            true => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            false => Ok(()),
        }
    }

    /// A change of directory `inode`'s entries or attributes: refused for
    /// the top directory (which is the user's, not the container's).
    pub fn change(&self, inode: u64) -> io::Result<()> {
        match inode == ROOT {
            true => Err(io::Error::from_raw_os_error(libc::EPERM)),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_file_is_seen_at_the_top_and_the_top_stays_as_it_is() {
        let only = OnlyFile::new(CString::new("app.conf").unwrap());
        assert!(only.lookup(ROOT, c"app.conf").is_ok());
        for hidden in [c"secret", c"..", c".", c"app.conf2"] {
            assert_eq!(
                only.lookup(ROOT, hidden).unwrap_err().raw_os_error(),
                Some(libc::ENOENT)
            );
        }
        // Below the top (the file has no entries, but a stand-in might).
        assert!(only.lookup(7, c"other").is_ok());
        assert_eq!(only.change(ROOT).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(only.change(7).is_ok());
        assert!(only.hides(ROOT, b"secret") && !only.hides(ROOT, b"app.conf"));
        assert!(!only.hides(7, b"other"));
    }
}
