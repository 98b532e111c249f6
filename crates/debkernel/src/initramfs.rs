//! A newc cpio archive builder for initramfs images, written atomically.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use cpio::newc::{trailer, Builder};

/// Collects entries, then writes them as an uncompressed newc archive (the
/// kernel unpacks it without any decompressor, and it is fastest to boot).
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<(String, u32, Vec<u8>)>,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory and its parents.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let path = path.trim_matches('/');
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entries.push((prefix.clone(), S_IFDIR | 0o755, Vec::new()));
            }
        }
        self
    }

    fn parent(&mut self, path: &str) -> String {
        let path = path.trim_matches('/').to_string();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path
    }

    /// Adds a regular file with the given content and permission bits.
    pub fn file(&mut self, path: &str, mode: u32, content: Vec<u8>) -> &mut Self {
        let path = self.parent(path);
        self.entries.push((path, S_IFREG | (mode & 0o7777), content));
        self
    }

    /// Adds a copy of a host file.
    pub fn copy(&mut self, path: &str, mode: u32, source: &Path) -> io::Result<&mut Self> {
        let content =
            std::fs::read(source).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
        Ok(self.file(path, mode, content))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = self.parent(path);
        self.entries.push((path, S_IFLNK | 0o777, target.as_bytes().to_vec()));
        self
    }

    /// Writes the archive to `dest` through a temporary file and a rename.
    pub fn write_to(&self, dest: &Path) -> io::Result<()> {
        let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
        let result = self.write_archive(&tmp).and_then(|_| std::fs::rename(&tmp, dest));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_archive(&self, path: &Path) -> io::Result<()> {
        let mut out = BufWriter::new(File::create(path)?);
        for (ino, (name, mode, content)) in self.entries.iter().enumerate() {
            let size =
                u32::try_from(content.len()).map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
            let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
            let mut w = Builder::new(name)
                .ino(ino as u32 + 1)
                .mode(*mode)
                .nlink(nlink)
                .write(&mut out, size);
            w.write_all(content)?;
            w.finish()?;
        }
        trailer(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// A static ELF has no PT_INTERP program header.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..phnum).all(|i| {
        let offset = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i.saturating_mul(phentsize));
        u32_at(offset).is_some_and(|p_type| p_type != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trips_through_a_reader() {
        let dir = std::env::temp_dir().join(format!("initramfs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.cpio");
        Initramfs::new()
            .file("bin/tool", 0o755, b"hello".to_vec())
            .symlink("sbin/x", "/bin/tool")
            .write_to(&path)
            .unwrap();
        let mut names = Vec::new();
        let mut input = File::open(&path).unwrap();
        loop {
            let mut reader = cpio::newc::Reader::new(input).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mode()));
            let mut content = Vec::new();
            io::Read::read_to_end(&mut reader, &mut content).unwrap();
            if names.last().unwrap().0 == "bin/tool" {
                assert_eq!(content, b"hello");
            }
            input = reader.finish().unwrap();
        }
        assert_eq!(
            names,
            [
                ("bin".into(), 0o40755),
                ("bin/tool".into(), 0o100755),
                ("sbin".into(), 0o40755),
                ("sbin/x".into(), 0o120777)
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
