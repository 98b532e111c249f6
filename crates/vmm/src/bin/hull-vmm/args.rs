//! hull-vmm's command line. Parsed with lexopt, not a derive framework:
//! every restore starts a fresh hull-vmm, and a large parser's code is
//! paid for each time (clap's took 20-25 ms of a restore under emulation).

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;
use vmm::devices::virtio::fs::Share;
use vmm::vm::{self, DiskConfig};

const USAGE: &str = "\
Run one KVM microVM

Usage: hull-vmm (--kernel PATH | --restore DIR | --incoming PATH | --incoming-fd FD) [OPTIONS]

Start:
  --kernel PATH          the guest kernel (bzImage)
  --restore DIR          resume the snapshot in DIR instead of booting; disks
                         and vsock given here replace the snapshot's, slot for slot
  --incoming PATH        take a running VM migrated from another hull-vmm, which
                         connects to a unix socket made at PATH
  --incoming-fd FD       as --incoming, the source already connected on FD
  --template DIR         with --incoming: the template snapshot this host has
  --receive-disks        with --incoming: the read-write disks are empty copies
                         the source fills
  --receive-share N      with --incoming: the Nth --share is an empty directory
                         the source fills (repeatable)
  --snapshot-to DIR      make a template: save the VM into DIR when its agent asks
  --initrd PATH          the initramfs
  --cmdline TEXT         the kernel command line
                         [default: console=ttyS0 quiet panic=-1 pci=off]
VM:
  --memory MIB           guest memory [default: 256]
  --cpus N               vCPUs [default: 1]
  --serial-log PATH      write the guest console here
  --console              copy the guest console to stderr
  --disk PATH[:ro]       a virtio-blk disk (repeatable: vda, vdb, ...)
  --vsock-uds PATH       virtio-vsock's host side (guest port P connects to PATH_P)
  --vsock-cid CID        the guest's vsock context id [default: 3]
  --net-tap NAME         NIC 0 on this host tap (made if missing)
  --net-fd SLOT=FD       NIC SLOT on an inherited tap descriptor (repeatable)
  --net-slots N          the VM has N NICs; those without a tap are unplugged [default: 0]
  --net-mac MAC          NIC 0's MAC (NIC N's last byte is N more) [default: 02:68:75:6c:6c:01]
  --fs                   give the VM its virtio-fs device (tag `hull`)
  --share PATH[:ro]      share a host directory through virtio-fs (repeatable: /0, /1, ...)
  --control-socket PATH  serve the control channel on this unix socket
  --jail DIR             lock the VMM down, pivoted into DIR (set by vmm::jail::VmmCommand)
  --lifeline-fd FD       with --jail: end when this pipe hangs up
  -h, --help             print this
";

pub struct Args {
    pub kernel: Option<PathBuf>,
    pub restore: Option<PathBuf>,
    pub incoming: Option<PathBuf>,
    pub incoming_fd: Option<i32>,
    pub template: Option<PathBuf>,
    pub receive_disks: bool,
    pub receive_shares: Vec<usize>,
    pub snapshot_to: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory: u64,
    pub cpus: u8,
    pub serial_log: Option<PathBuf>,
    pub console: bool,
    pub disks: Vec<DiskConfig>,
    pub vsock_uds: Option<PathBuf>,
    pub net_tap: Option<String>,
    pub net_fd: Vec<(u8, i32)>,
    pub net_slots: u8,
    pub net_mac: [u8; 6],
    pub fs: bool,
    pub shares: Vec<Share>,
    pub control_socket: Option<PathBuf>,
    pub jail: Option<PathBuf>,
    pub lifeline_fd: Option<i32>,
    /// Tests only: a guest write to a fixed MMIO address makes a vCPU
    /// thread break its seccomp filter.
    pub seccomp_selftest: bool,
    pub vsock_cid: u64,
}

/// What parsing ended with, short of a VM to run.
pub enum Stop {
    Help,
    Bad(String),
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, Stop> {
        let mut parser = lexopt::Parser::from_args(args);
        let mut a = Args {
            kernel: None,
            restore: None,
            incoming: None,
            incoming_fd: None,
            template: None,
            receive_disks: false,
            receive_shares: Vec::new(),
            snapshot_to: None,
            initrd: None,
            cmdline: "console=ttyS0 quiet panic=-1 pci=off".into(),
            memory: 256,
            cpus: 1,
            serial_log: None,
            console: false,
            disks: Vec::new(),
            vsock_uds: None,
            net_tap: None,
            net_fd: Vec::new(),
            net_slots: 0,
            net_mac: DEFAULT_MAC,
            fs: false,
            shares: Vec::new(),
            control_socket: None,
            jail: None,
            lifeline_fd: None,
            seccomp_selftest: false,
            vsock_cid: 3,
        };
        let bad = |e: lexopt::Error| Stop::Bad(e.to_string());
        while let Some(arg) = parser.next().map_err(bad)? {
            let Long(name) = arg else {
                return match arg {
                    Short('h') => Err(Stop::Help),
                    other => Err(Stop::Bad(other.unexpected().to_string())),
                };
            };
            let name = name.to_owned();
            // Each option's value, parsed with `parse` and named in its error.
            let mut text = || -> Result<String, Stop> {
                let value = parser.value().map_err(bad)?;
                value
                    .into_string()
                    .map_err(|v| Stop::Bad(format!("--{name}: not UTF-8: {v:?}")))
            };
            let named = |e: String| Stop::Bad(format!("--{name}: {e}"));
            match name.as_str() {
                "help" => return Err(Stop::Help),
                "kernel" => a.kernel = Some(text()?.into()),
                "restore" => a.restore = Some(text()?.into()),
                "incoming" => a.incoming = Some(text()?.into()),
                "incoming-fd" => a.incoming_fd = Some(number(&text()?).map_err(named)?),
                "template" => a.template = Some(text()?.into()),
                "receive-disks" => a.receive_disks = true,
                "receive-share" => a.receive_shares.push(number(&text()?).map_err(named)?),
                "snapshot-to" => a.snapshot_to = Some(text()?.into()),
                "initrd" => a.initrd = Some(text()?.into()),
                "cmdline" => a.cmdline = text()?,
                "memory" => a.memory = number(&text()?).map_err(named)?,
                "cpus" => a.cpus = number(&text()?).map_err(named)?,
                "serial-log" => a.serial_log = Some(text()?.into()),
                "console" => a.console = true,
                "disk" => a.disks.push(parse_disk(&text()?).map_err(named)?),
                "vsock-uds" => a.vsock_uds = Some(text()?.into()),
                "vsock-cid" => a.vsock_cid = number(&text()?).map_err(named)?,
                "net-tap" => a.net_tap = Some(text()?),
                "net-fd" => a.net_fd.push(parse_net_fd(&text()?).map_err(named)?),
                "net-slots" => a.net_slots = number(&text()?).map_err(named)?,
                "net-mac" => a.net_mac = parse_mac(&text()?).map_err(named)?,
                "fs" => a.fs = true,
                "share" => a.shares.push(parse_share(&text()?).map_err(named)?),
                "control-socket" => a.control_socket = Some(text()?.into()),
                "jail" => a.jail = Some(text()?.into()),
                "lifeline-fd" => a.lifeline_fd = Some(number(&text()?).map_err(named)?),
                "seccomp-selftest" => a.seccomp_selftest = true,
                _ => return Err(Stop::Bad(format!("unknown option --{name} (see --help)"))),
            }
        }
        a.check().map_err(Stop::Bad)?;
        Ok(a)
    }

    /// Options that exclude or need one another.
    fn check(&self) -> Result<(), String> {
        let arriving = self.incoming.is_some() || self.incoming_fd.is_some();
        let given = [
            ("--kernel", self.kernel.is_some()),
            ("--restore", self.restore.is_some()),
            ("--incoming", self.incoming.is_some()),
            ("--incoming-fd", self.incoming_fd.is_some()),
        ];
        match given
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()[..]
        {
            [] => return Err("give --kernel, --restore, --incoming or --incoming-fd".into()),
            [_] => {}
            [first, second, ..] => return Err(format!("{first} and {second} exclude each other")),
        }
        let excluded = [
            (arriving, self.snapshot_to.is_some(), "--incoming", "--snapshot-to"),
            (
                self.jail.is_some(),
                self.snapshot_to.is_some(),
                "--jail",
                "--snapshot-to",
            ),
            (self.net_tap.is_some(), !self.net_fd.is_empty(), "--net-tap", "--net-fd"),
        ];
        if let Some((_, _, a, b)) = excluded.iter().find(|(x, y, _, _)| *x && *y) {
            return Err(format!("{a} and {b} exclude each other"));
        }
        let needs = [
            (self.template.is_some(), arriving, "--template", "--incoming"),
            (self.receive_disks, arriving, "--receive-disks", "--incoming"),
            (
                !self.receive_shares.is_empty(),
                arriving,
                "--receive-share",
                "--incoming",
            ),
            (
                self.jail.is_some(),
                self.lifeline_fd.is_some(),
                "--jail",
                "--lifeline-fd",
            ),
            (
                self.lifeline_fd.is_some(),
                self.jail.is_some(),
                "--lifeline-fd",
                "--jail",
            ),
        ];
        if let Some((_, _, a, b)) = needs.iter().find(|(x, y, _, _)| *x && !*y) {
            return Err(format!("{a} needs {b}"));
        }
        Ok(())
    }
}

pub fn usage() -> &'static str {
    USAGE
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{text:?} is not a number in range"))
}

/// `PATH`, `PATH:rw` or `PATH:ro`: the path and whether read-only.
fn split_mode(spec: &str) -> (&str, bool) {
    match spec.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    }
}

fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = split_mode(spec);
    if path.is_empty() {
        return Err("a disk needs a path: PATH or PATH:ro".into());
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_share(spec: &str) -> Result<Share, String> {
    let (path, read_only) = split_mode(spec);
    if !path.starts_with('/') {
        return Err(format!("{spec}: a shared directory is an absolute PATH or PATH:ro"));
    }
    Ok(Share {
        path: path.into(),
        read_only,
        receives: false,
    })
}

fn parse_net_fd(spec: &str) -> Result<(u8, i32), String> {
    let bad = || format!("{spec}: SLOT=FD is expected, e.g. 0=3");
    let (slot, fd) = spec.split_once('=').ok_or_else(bad)?;
    let slot = slot.parse().map_err(|_| bad())?;
    let fd = fd.parse().map_err(|_| bad())?;
    if slot >= vm::MAX_NICS || fd < 0 {
        return Err(format!("{spec}: slots are 0 to {}", vm::MAX_NICS - 1));
    }
    Ok((slot, fd))
}

/// NIC 0's MAC unless `--net-mac` names one: 02:68:75:6c:6c:01 ("hull").
const DEFAULT_MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x6c, 0x6c, 0x01];

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("not a MAC address: {text}")))
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("a MAC address has 6 bytes: {text}"))?;
    if !vmm::devices::virtio::net::is_unicast(&mac) {
        return Err(format!("{text} is a multicast address"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        Args::parse(line.split_whitespace().skip(1).map(OsString::from)).map_err(|stop| match stop {
            Stop::Help => "help".into(),
            Stop::Bad(e) => e,
        })
    }

    #[test]
    fn mac_addresses_are_six_unicast_bytes() {
        assert_eq!(parse_mac("02:68:75:6c:6c:01"), Ok(DEFAULT_MAC));
        assert!(parse_mac("02:68:75:6c:6c").is_err());
        assert!(parse_mac("02:68:75:6c:6c:01:02").is_err());
        assert!(parse_mac("zz:68:75:6c:6c:01").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
    }

    #[test]
    fn a_restore_line_parses_with_both_value_forms() {
        let a = parse(
            "hull-vmm --restore /t --memory=512 --cpus 2 --disk /a:ro --disk /b --net-fd 1=7 \
             --net-slots 4 --fs --share /s:ro --vsock-uds /v --control-socket /c --jail /j --lifeline-fd 9",
        )
        .unwrap();
        assert_eq!(a.restore, Some("/t".into()));
        assert_eq!((a.memory, a.cpus, a.net_slots), (512, 2, 4));
        assert_eq!(a.disks.len(), 2);
        assert!(a.disks[0].read_only && !a.disks[1].read_only);
        assert_eq!(a.net_fd, vec![(1, 7)]);
        assert!(a.fs && a.shares[0].read_only);
        assert_eq!((a.jail, a.lifeline_fd), (Some("/j".into()), Some(9)));
        assert_eq!(a.cmdline, "console=ttyS0 quiet panic=-1 pci=off");
        assert_eq!(a.vsock_cid, 3);
    }

    #[test]
    fn options_that_exclude_or_need_others_are_refused() {
        for (line, says) in [
            ("hull-vmm", "give --kernel"),
            ("hull-vmm --kernel /k --restore /t", "--kernel and --restore exclude"),
            (
                "hull-vmm --restore /t --incoming /i",
                "--restore and --incoming exclude",
            ),
            (
                "hull-vmm --incoming /i --snapshot-to /s",
                "--incoming and --snapshot-to",
            ),
            ("hull-vmm --restore /t --template /x", "--template needs --incoming"),
            ("hull-vmm --restore /t --receive-disks", "--receive-disks needs"),
            ("hull-vmm --restore /t --jail /j", "--jail needs --lifeline-fd"),
            ("hull-vmm --restore /t --lifeline-fd 3", "--lifeline-fd needs --jail"),
            (
                "hull-vmm --kernel /k --net-tap t0 --net-fd 0=3",
                "--net-tap and --net-fd",
            ),
            (
                "hull-vmm --kernel /k --memory lots",
                "--memory: \"lots\" is not a number",
            ),
            ("hull-vmm --kernel /k --cpus 300", "--cpus"),
            ("hull-vmm --kernel /k --net-fd 9=3", "slots are 0 to"),
            ("hull-vmm --kernel /k --share rel", "absolute"),
            ("hull-vmm --kernel /k --bogus", "unknown option --bogus"),
            ("hull-vmm --kernel /k extra", "extra"),
            ("hull-vmm --kernel", "missing argument"),
            ("hull-vmm --help", "help"),
        ] {
            let err = parse(line).err().unwrap_or_else(|| panic!("{line} was taken"));
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
