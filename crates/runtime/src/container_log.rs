//! A container's log in Docker's json-file format: one JSON object per
//! line, `{"log":"text\n","stream":"stdout","time":"…"}`, split at newlines
//! (a line longer than 16 KiB goes out in pieces, as Docker does). The log is
//! kept after the container ends and read by hulld for `logs`, `logs -f` and
//! attach.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

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
    file: File,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter {
            file,
            pending: [Vec::new(), Vec::new()],
        })
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
            // One write per entry, so a reader never sees half a line (O_APPEND).
            let _ = self.file.write_all(&line);
        }
    }
}

/// Reads a log from a byte offset on, a whole line at a time; a line still
/// being written (no newline yet) is left for the next read.
pub struct LogReader {
    reader: BufReader<File>,
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
        file.seek(SeekFrom::Start(offset))?;
        Ok(Some(LogReader {
            reader: BufReader::new(file),
            offset,
        }))
    }

    /// Where the next read starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The entries written since the last call. Lines that are not valid
    /// entries (a damaged log) are skipped.
    pub fn read_new(&mut self) -> Vec<LogEntry> {
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
        let mut log = LogWriter::open(&path).unwrap();
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
        let mut log = LogWriter::open(&path).unwrap();
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
}
