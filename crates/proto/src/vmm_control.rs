//! The control channel of one `hull-vmm`: a unix socket on which the VM's
//! supervisor asks the VMM to pause, resume or describe the VM, to plug
//! a NIC into a tap or a disk into an empty slot, or to migrate the VM
//! over a connection (the tap's, the disk's or the connection's
//! descriptor passed with the request).
//!
//! A message is one line of JSON. The VMM answers each request with one
//! reply, in order, on the same connection. Lines are bounded
//! (`MAX_LINE`): the socket is the VMM's, but a bug on either side must not
//! make the other allocate without limit.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// The longest request or reply line either side accepts.
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmRequest {
    /// Stop every vCPU and device thread; the reply comes once all have stopped.
    Pause,
    /// Let them go on.
    Resume,
    /// How the VM is.
    Describe,
    /// Plug NIC `slot` into the tap whose descriptor comes with this
    /// request (`SCM_RIGHTS`, non-blocking), in place of what it was on.
    PlugNic { slot: u8 },
    /// Plug NIC `slot` into nothing.
    UnplugNic { slot: u8 },
    /// Put the disk whose descriptor comes with this request into empty
    /// disk slot `slot` (the guest's vda is 0) while the VM runs: the
    /// guest sees that disk's size appear. Opened read-only, the guest
    /// cannot write it. `lasting`: the disk stays for the VM's life, as
    /// one it started with (a standby VM given its container's disks): it
    /// cannot be taken out and a migration takes it as a disk of the VM's.
    PlugDisk {
        slot: u8,
        #[serde(default)]
        lasting: bool,
    },
    /// Take the disk `PlugDisk` put into `slot` out again (the guest has
    /// stopped using it); a disk the VM started with stays.
    UnplugDisk { slot: u8 },
    /// The disk `PlugDisk` put into `slot` stays for the VM's life, as a
    /// `lasting` plug's does (a standby VM's prepared disks, claimed).
    KeepDisk { slot: u8 },
    /// Send the running VM to another hull-vmm over the connection whose
    /// descriptor comes with this request; switch over once the rest fits
    /// in `downtime_ms`, give up after `max_seconds` (the VM runs on here).
    /// Answered with `Progress` after each pre-copy round, then once it has
    /// ended: `Migrated`, after which this VMM ends, or `Failed`, and the VM
    /// runs on. Shutting the migration connection down gives it up (before
    /// `Go`; the VM then runs on here).
    /// `send_disks`: the read-write disks' content travels too (the
    /// destination has empty copies: another host); else both see the files.
    Migrate {
        downtime_ms: u32,
        max_seconds: u32,
        #[serde(default)]
        send_disks: bool,
        /// Pages and disk data travel as they are, without LZ4.
        #[serde(default)]
        uncompressed: bool,
        /// The destination is on this host and opens the same files: the
        /// pause puts nothing on storage (one page cache serves both).
        #[serde(default)]
        same_host: bool,
        /// The shared directories (by number: `/0` is 0) whose files
        /// travel too, into the destination's empty ones (a volume only
        /// this host sees).
        #[serde(default)]
        send_shares: Vec<u8>,
    },
    /// Lend the taps the VM's NICs are on: answered with `Taps` and, in the
    /// same message (`SCM_RIGHTS`), a descriptor of each, in slot order
    /// (for a VMM the VM is about to migrate to on this host).
    Taps,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmReply {
    Done,
    Described {
        paused: bool,
        vcpus: u8,
        memory_mib: u64,
    },
    /// The VM runs on the destination (if `confirmed`; else the link broke
    /// after the source let go, and the destination may or may not run it).
    Migrated {
        rounds: u32,
        bytes_sent: u64,
        pages_sent: u64,
        zero_pages: u64,
        total_ms: u64,
        downtime_ms: u64,
        max_throttle: u8,
        confirmed: bool,
    },
    /// A migration's round has ended (more replies follow).
    Progress(crate::MigrationProgress),
    /// The NIC slots whose taps come with this reply, in order.
    Taps {
        slots: Vec<u8>,
    },
    Failed {
        reason: String,
    },
}

impl VmmReply {
    /// What a completed move's reply (`Migrated`) reports, for the
    /// container's record; `None` for any other reply.
    pub fn migration_report(&self) -> Option<crate::MigrationReport> {
        match *self {
            VmmReply::Migrated {
                rounds,
                bytes_sent,
                pages_sent,
                total_ms,
                downtime_ms,
                max_throttle,
                ..
            } => Some(crate::MigrationReport {
                rounds,
                bytes_sent,
                pages_sent,
                total_ms,
                downtime_ms,
                max_throttle,
                ..Default::default()
            }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("a control line longer than {MAX_LINE} bytes")]
    Oversized,
    #[error("a malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the control connection: {0}")]
    Io(#[from] io::Error),
}

/// Writes one message as a line.
pub fn write_message(w: &mut impl Write, message: &impl Serialize) -> Result<(), ControlError> {
    w.write_all(&encode_message(message)?)?;
    w.flush()?;
    Ok(())
}

/// One message as the line written for it (for a caller that sends it
/// itself, e.g. with a descriptor beside it).
pub fn encode_message(message: &impl Serialize) -> Result<Vec<u8>, ControlError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

/// Parses one line (with or without its newline) already read.
pub fn parse_message<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::Oversized);
    }
    Ok(serde_json::from_slice(line)?)
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> Result<Option<T>, ControlError> {
    let mut line = Vec::new();
    // One byte over the limit tells a line that is too long from one that fits.
    let read = io::Read::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return match line.len() > MAX_LINE {
            true => Err(ControlError::Oversized),
            false => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        };
    }
    Ok(Some(serde_json::from_slice(&line)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_move_reports_what_it_took() {
        let reply = VmmReply::Migrated {
            rounds: 3,
            bytes_sent: 4096,
            pages_sent: 1,
            zero_pages: 7,
            total_ms: 90,
            downtime_ms: 12,
            max_throttle: 20,
            confirmed: true,
        };
        let report = reply.migration_report().unwrap();
        assert_eq!(
            (
                report.rounds,
                report.bytes_sent,
                report.pages_sent,
                report.total_ms,
                report.downtime_ms,
                report.max_throttle
            ),
            (3, 4096, 1, 90, 12, 20)
        );
        assert_eq!(report.vmm_pid, 0, "not the reply's to say");
        assert_eq!(VmmReply::Done.migration_report(), None);
    }

    #[test]
    fn messages_round_trip_one_per_line() {
        let mut wire = Vec::new();
        write_message(&mut wire, &VmmRequest::Pause).unwrap();
        write_message(&mut wire, &VmmRequest::Taps).unwrap();
        write_message(&mut wire, &VmmReply::Taps { slots: vec![0, 2] }).unwrap();
        write_message(&mut wire, &VmmReply::Failed { reason: "no".into() }).unwrap();
        let mut r = io::BufReader::new(&wire[..]);
        assert_eq!(read_message::<VmmRequest>(&mut r).unwrap(), Some(VmmRequest::Pause));
        assert_eq!(read_message::<VmmRequest>(&mut r).unwrap(), Some(VmmRequest::Taps));
        assert_eq!(
            read_message::<VmmReply>(&mut r).unwrap(),
            Some(VmmReply::Taps { slots: vec![0, 2] })
        );
        assert_eq!(
            read_message::<VmmReply>(&mut r).unwrap(),
            Some(VmmReply::Failed { reason: "no".into() })
        );
        assert_eq!(read_message::<VmmReply>(&mut r).unwrap(), None);
    }

    #[test]
    fn hostile_lines_are_errors() {
        let long = vec![b'x'; MAX_LINE * 3];
        let mut r = io::BufReader::new(&long[..]);
        assert!(matches!(
            read_message::<VmmRequest>(&mut r),
            Err(ControlError::Oversized)
        ));
        let mut r = io::BufReader::new(&b"\"explode\"\n"[..]);
        assert!(matches!(
            read_message::<VmmRequest>(&mut r),
            Err(ControlError::Malformed(_))
        ));
        let mut r = io::BufReader::new(&b"\"pause\""[..]);
        assert!(matches!(read_message::<VmmRequest>(&mut r), Err(ControlError::Io(_))));
    }
}
