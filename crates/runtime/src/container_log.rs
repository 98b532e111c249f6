//! A container's log in Docker's json-file format: one JSON object per
//! line, `{"log":"text\n","stream":"stdout","time":"…"}`, split at newlines
//! (a line longer than 16 KiB goes out in pieces, as Docker does). The log is
//! kept after the container ends and read by hulld for `logs`, `logs -f` and
//! attach. With `--log-opt max-size` it is rotated as Docker rotates it:
//! once the file holds max-size bytes, `LOG.1` becomes `LOG.2` and so on,
//! `LOG` becomes `LOG.1`, and at most max-file files are kept (with one,
//! the file is emptied instead). Readers follow the log across rotations.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::log_config::LogConfig;

use serde::{Deserialize, Serialize};

use crate::run::OutputStream;

/// Docker's longest log message; longer lines are split.
const MAX_MESSAGE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

impl LogEntry {
    pub fn is_stderr(&self) -> bool {
        self.stream == "stderr"
    }
}

/// Appends a command's output to its log, a line at a time.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    max_size: Option<u64>,
    max_file: u32,
    pending: [Vec<u8>; 2],
}

/// The `n`th rotated file of the log at `path` (`LOG.n`).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log's rotated files as they are numbered: `LOG.1` (the newest),
/// `LOG.2`…
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    (1..)
        .map(|n| rotated_path(path, n))
        .take_while(|p| p.exists())
        .collect()
}

/// The log's files that hold what was written before its current file,
/// oldest first (`LOG.k` … `LOG.1`).
pub fn older_files(path: &Path) -> Vec<PathBuf> {
    let mut files = rotated_files(path);
    files.reverse();
    files
}

/// The files of a log no longer written that hold what was written after
/// the file with inode `inode` (rotated since), oldest first, the log
/// itself last; none if that file is still the log; every one if it was
/// rotated out. The caller holds that file open (its inode is then not
/// another file's).
pub fn newer_than(path: &Path, inode: u64) -> Vec<PathBuf> {
    let inode_of = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    if inode_of(path) == Some(inode) {
        return Vec::new();
    }
    let rotated = rotated_files(path);
    let ours = rotated.iter().position(|p| inode_of(p) == Some(inode));
    let mut newer: Vec<PathBuf> = rotated[..ours.unwrap_or(rotated.len())].iter().rev().cloned().collect();
    newer.push(path.to_path_buf());
    newer
}

fn open_for_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogWriter {
    pub fn open(path: &Path, config: &LogConfig) -> std::io::Result<LogWriter> {
        let file = open_for_append(path)?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            size: file.metadata()?.len(),
            file,
            max_size: config.max_size,
            max_file: config.max_file.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Starts a new file (Docker's order: the check comes before a write).
    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_file == 1 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.max_file - 1).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
            self.file = open_for_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    pub fn write(&mut self, stream: OutputStream, data: &[u8]) {
        let slot = stream as usize;
        self.pending[slot].extend_from_slice(data);
        while let Some(end) = self.pending[slot].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending[slot].drain(..=end).collect();
            self.append(stream, &line);
        }
        while self.pending[slot].len() >= MAX_MESSAGE {
            let piece: Vec<u8> = self.pending[slot].drain(..MAX_MESSAGE).collect();
            self.append(stream, &piece);
        }
    }

    /// Writes out partial lines (the command ended without a newline).
    pub fn flush(&mut self) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.append(stream, &rest);
            }
        }
    }

    fn append(&mut self, stream: OutputStream, bytes: &[u8]) {
        let entry = LogEntry {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: match stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
            }
            .into(),
            time: crate::container::now_rfc3339(),
        };
        if let Ok(mut line) = serde_json::to_vec(&entry) {
            line.push(b'\n');
            if self.max_size.is_some_and(|max| self.size >= max) {
                if let Err(e) = self.rotate() {
                    eprintln!("hull-shim: rotating {}: {e}", self.path.display());
                }
            }
            // One write per entry, so a reader never sees half a line (O_APPEND).
            if self.file.write_all(&line).is_ok() {
                self.size += line.len() as u64;
            }
        }
    }
}

/// Reads a log from a byte offset on, a whole line at a time; a line still
/// being written (no newline yet) is left for the next read.
pub struct LogReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// The inode being read: another one at `path` means the log rotated.
    inode: u64,
    offset: u64,
}

impl LogReader {
    /// `None` if there is no log (yet).
    pub fn open(path: &Path, offset: u64) -> std::io::Result<Option<LogReader>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let inode = file.metadata()?.ino();
        file.seek(SeekFrom::Start(offset))?;
        Ok(Some(LogReader {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            inode,
            offset,
        }))
    }

    /// The whole log, rotated files first: what `docker logs` shows.
    pub fn read_all(path: &Path) -> std::io::Result<(Vec<LogEntry>, Option<LogReader>)> {
        // The current file first, so a rotation meanwhile repeats entries
        // rather than losing them.
        let current = LogReader::open(path, 0)?;
        let mut entries = Vec::new();
        for older in older_files(path) {
            if let Some(mut old) = LogReader::open(&older, 0)? {
                entries.extend(old.read_file());
            }
        }
        let current = current.map(|mut reader| {
            entries.extend(reader.read_new());
            reader
        });
        Ok((entries, current))
    }

    /// Where the next read starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The entries written since the last call, following the log to its
    /// next file when it rotated. Lines that are not valid entries (a
    /// damaged log) are skipped.
    pub fn read_new(&mut self) -> Vec<LogEntry> {
        let mut entries = self.read_file();
        match std::fs::metadata(&self.path) {
            // Rotated: the old file no longer grows once renamed, so what
            // it got before is read, then each newer file in order.
            Ok(meta) if meta.ino() != self.inode => {
                entries.extend(self.read_file());
                for next in self.newer_files() {
                    *self = next;
                    entries.extend(self.read_file());
                }
            }
            // Emptied (a single file rotates in place).
            Ok(meta) if meta.len() < self.offset && self.reader.seek(SeekFrom::Start(0)).is_ok() => {
                self.offset = 0;
                entries.extend(self.read_file());
            }
            _ => {}
        }
        entries
    }

    /// After a rotation, the files written since ours, oldest first (the
    /// log being written last), opened together between two rotations.
    /// Ours is found by its inode among `LOG.1`, `LOG.2`…; if it is gone
    /// (the reader fell more than max-file files behind), from the oldest kept.
    fn newer_files(&self) -> Vec<LogReader> {
        let inode_of = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
        for _ in 0..10 {
            let rotated = rotated_files(&self.path);
            let ours = rotated.iter().position(|p| inode_of(p) == Some(self.inode));
            let newer = &rotated[..ours.unwrap_or(rotated.len())];
            let opened: Vec<LogReader> = newer
                .iter()
                .rev()
                .chain([&self.path])
                .filter_map(|p| LogReader::open(p, 0).ok().flatten())
                .map(|mut reader| {
                    // Each keeps the name of the log, which the last one is.
                    reader.path = self.path.clone();
                    reader
                })
                .collect();
            // No rotation while they were opened: the same file still
            // follows the newest of them.
            let settled = match ours {
                Some(k) => inode_of(&rotated[k]) == Some(self.inode),
                None => true,
            } && opened.last().map(|r| r.inode) == inode_of(&self.path);
            if settled && opened.len() == newer.len() + 1 {
                return opened;
            }
        }
        LogReader::open(&self.path, 0).ok().flatten().into_iter().collect()
    }

    /// The complete entries of the file being read, from where it was left.
    fn read_file(&mut self) -> Vec<LogEntry> {
        let mut entries = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) if line.last() != Some(&b'\n') => {
                    // Incomplete: read it again next time.
                    let _ = self.reader.seek_relative(-(n as i64));
                    break;
                }
                Ok(n) => {
                    self.offset += n as u64;
                    if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) {
                        entries.push(entry);
                    }
                }
            }
        }
        entries
    }
}

/// The log's current length: attach starts reading there.
pub fn end_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_becomes_docker_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path, &LogConfig::default()).unwrap();
        log.write(OutputStream::Stdout, b"one\ntw");
        log.write(OutputStream::Stderr, b"err\n");
        log.write(OutputStream::Stdout, b"o\nthree");
        log.write(OutputStream::Stdout, &[0xff, b'\n']);
        let mut reader = LogReader::open(&path, 0).unwrap().unwrap();
        let first: Vec<(String, String)> = reader.read_new().into_iter().map(|e| (e.stream, e.log)).collect();
        assert_eq!(
            first,
            [
                ("stdout".into(), "one\n".into()),
                ("stderr".into(), "err\n".into()),
                ("stdout".into(), "two\n".into()),
                ("stdout".into(), "three\u{fffd}\n".into()),
            ]
        );
        log.write(OutputStream::Stdout, b"tail");
        log.flush();
        let more = reader.read_new();
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].log, "tail");
        assert!(chrono::DateTime::parse_from_rfc3339(&more[0].time).is_ok());
        assert_eq!(reader.offset(), end_offset(&path));
    }

    #[test]
    fn long_lines_are_split_and_partial_lines_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path, &LogConfig::default()).unwrap();
        log.write(OutputStream::Stdout, &vec![b'x'; MAX_MESSAGE * 2 + 5]);
        let mut reader = LogReader::open(&path, 0).unwrap().unwrap();
        assert_eq!(reader.read_new().len(), 2);
        // A writer caught mid-line: the reader waits for the newline.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"log":"a\n","stream":"stdout","#)
            .unwrap();
        assert!(reader.read_new().is_empty());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\"time\":\"2026-01-01T00:00:00Z\"}\nnot json\n")
            .unwrap();
        let entries = reader.read_new();
        assert_eq!(entries.len(), 1, "the damaged line is skipped");
        assert_eq!(entries[0].log, "a\n");
    }

    fn rotating(max_size: u64, max_file: u32) -> LogConfig {
        LogConfig {
            max_size: Some(max_size),
            max_file,
            ..LogConfig::default()
        }
    }

    #[test]
    fn rotation_keeps_at_most_max_file_files_and_readers_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path, &rotating(500, 3)).unwrap();
        let mut follower = None;
        let mut followed = Vec::new();
        for i in 0..100 {
            log.write(OutputStream::Stdout, format!("line {i}\n").as_bytes());
            follower = follower.or_else(|| LogReader::open(&path, 0).unwrap());
            followed.extend(follower.as_mut().unwrap().read_new().into_iter().map(|e| e.log));
        }
        // Every line followed, in order, across the rotations.
        let all: Vec<String> = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(followed, all);
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        for file in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            let len = std::fs::metadata(&file).unwrap().len();
            // At most one entry beyond max-size, as in Docker.
            assert!(len < 500 + 100, "{file:?}: {len}");
        }
        // `logs` reads the kept files, oldest first: the last lines, in order.
        let (kept, _) = LogReader::read_all(&path).unwrap();
        let kept: Vec<String> = kept.into_iter().map(|e| e.log).collect();
        assert!(kept.len() > 10 && kept.len() < 100, "{}", kept.len());
        assert_eq!(kept[..], all[100 - kept.len()..]);
    }

    #[test]
    fn a_reader_several_rotations_behind_finds_its_way_through_the_kept_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path, &rotating(300, 8)).unwrap();
        log.write(OutputStream::Stdout, b"first\n");
        let mut follower = LogReader::open(&path, 0).unwrap().unwrap();
        let mut followed = Vec::new();
        for i in 0..120 {
            log.write(OutputStream::Stdout, format!("line {i}\n").as_bytes());
            // About five files go by between two reads.
            if i % 20 == 19 {
                followed.extend(follower.read_new().into_iter().map(|e| e.log));
            }
        }
        let mut all = vec!["first\n".to_string()];
        all.extend((0..120).map(|i| format!("line {i}\n")));
        assert_eq!(followed, all);
    }

    #[test]
    fn the_files_before_and_after_a_file_of_the_log_are_found_by_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut log = LogWriter::open(&path, &rotating(100, 6)).unwrap();
        let mut write = |n: usize| {
            for i in 0..n {
                log.write(OutputStream::Stdout, format!("a line of the log, {i}\n").as_bytes());
            }
        };
        write(10);
        let older = older_files(&path);
        assert!(older.len() >= 2, "{older:?}");
        assert_eq!(older[0], rotated_path(&path, older.len() as u32), "oldest first");
        assert_eq!(older.last(), Some(&rotated_path(&path, 1)));
        // Held open, as a reader holds it: its inode is not reused once
        // it is rotated out.
        let held = File::open(&path).unwrap();
        let was_current = held.metadata().unwrap().ino();
        assert!(
            newer_than(&path, was_current).is_empty(),
            "still the log: nothing newer"
        );
        write(4);
        // Rotated since: it is LOG.k now; LOG.k-1 … LOG.1 and LOG came after.
        let k = (1..6).find(|&n| inode(&rotated_path(&path, n)) == was_current).unwrap();
        assert!(k >= 1);
        let mut after: Vec<PathBuf> = (1..k).rev().map(|n| rotated_path(&path, n)).collect();
        after.push(path.clone());
        assert_eq!(newer_than(&path, was_current), after);
        write(30);
        // Rotated out of the kept files: every file is newer.
        assert_eq!(newer_than(&path, was_current).len(), 6);
    }

    #[test]
    fn a_single_file_is_emptied_and_a_reopened_log_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path, &rotating(200, 1)).unwrap();
        let mut follower = LogReader::open(&path, 0).unwrap().unwrap();
        let mut followed = 0;
        for i in 0..50 {
            log.write(OutputStream::Stderr, format!("entry {i}\n").as_bytes());
            followed += follower.read_new().len();
        }
        assert_eq!(followed, 50);
        assert!(std::fs::metadata(&path).unwrap().len() < 300);
        assert!(!rotated_path(&path, 1).exists());
        drop(log);
        let before = std::fs::metadata(&path).unwrap().len();
        let mut again = LogWriter::open(&path, &rotating(before, 2)).unwrap();
        again.write(OutputStream::Stdout, b"after\n");
        assert!(rotated_path(&path, 1).exists());
        assert_eq!(LogReader::read_all(&path).unwrap().0.last().unwrap().log, "after\n");
    }
}
