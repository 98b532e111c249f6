//! Reports on the guest for the host (`docker stats`, `docker top`), read
//! from the guest kernel's /proc: the VM's own view of its CPU time,
//! memory and processes.

use std::fs;

use proto::{GuestProcess, GuestStats, MAX_PROCESSES};

/// /proc/stat counts CPU time in USER_HZ ticks, 100 per second on Linux.
const NS_PER_TICK: u64 = 10_000_000;
const MS_PER_TICK: u64 = 10;
/// Longest command line reported (so a `Processes` answer fits a frame).
const MAX_COMMAND: usize = 256;

pub fn stats() -> GuestStats {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut stats = GuestStats::default();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
                let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
                // user nice system idle iowait irq softirq steal
                let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
                stats.cpu_busy_ns = busy * NS_PER_TICK;
                stats.cpu_user_ns = (at(0) + at(1)) * NS_PER_TICK;
                stats.cpu_total_ns = (busy + at(3) + at(4)) * NS_PER_TICK;
            }
            Some(name) if name.starts_with("cpu") => stats.online_cpus += 1,
            _ => {}
        }
    }
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    stats.memory_total = kib("MemTotal:");
    stats.memory_available = kib("MemAvailable:");
    // The VM's, as its memory and CPU are.
    stats.processes = processes(&crate::pid_namespace::Members::NotIn(Vec::new())).len() as u32;
    (stats.disk_read_bytes, stats.disk_write_bytes) =
        disk_bytes(&fs::read_to_string("/proc/diskstats").unwrap_or_default());
    stats
}

/// Bytes read and written on the virtio disks, from /proc/diskstats
/// (major minor name reads merged sectors-read ms writes merged
/// sectors-written ...; sectors of 512 bytes); partitions are not counted
/// twice.
fn disk_bytes(diskstats: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in diskstats.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = fields.get(2) else { continue };
        let whole_disk = name.starts_with("vd") && name[2..].chars().all(|c| c.is_ascii_lowercase());
        if !whole_disk {
            continue;
        }
        let sectors = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        read = read.saturating_add(sectors(5).saturating_mul(512));
        written = written.saturating_add(sectors(9).saturating_mul(512));
    }
    (read, written)
}

/// The processes of `members`, but the agent (PID 1) and kernel threads.
pub fn processes(members: &crate::pid_namespace::Members) -> Vec<GuestProcess> {
    let boot_time = fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter(|&pid| pid > 2 && members.has(pid))
        .filter_map(|pid| process(pid, boot_time))
        .take(MAX_PROCESSES)
        .collect()
}

fn process(pid: u32, boot_time: u64) -> Option<GuestProcess> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let name_end = stat.rfind(')')?;
    let name = stat.get(stat.find('(')? + 1..name_end)?;
    let fields: Vec<&str> = stat.get(name_end + 1..)?.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ppid = field(4)? as u32;
    if ppid == 2 {
        return None; // a kernel thread
    }
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut command = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim_end()
        .to_string();
    if command.is_empty() {
        command = format!("[{name}]");
    }
    if command.len() > MAX_COMMAND {
        let mut cut = MAX_COMMAND;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
    }
    Some(GuestProcess {
        pid,
        ppid,
        uid,
        started: boot_time + field(22)? / 100,
        cpu_ms: (field(14)? + field(15)?) * MS_PER_TICK,
        tty: tty_name(field(7)?),
        command,
    })
}

/// The name of a terminal from its device number (stat's `tty_nr`).
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        0 => String::new(),
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        4 if minor >= 64 => format!("ttyS{}", minor - 64),
        4 => format!("tty{minor}"),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_bytes_sum_whole_virtio_disks() {
        let text = "\
 253       0 vda 120 0 4096 30 0 0 0 0 0 40 30 0 0 0 0 0 0
 253       1 vda1 10 0 100 3 0 0 0 0 0 4 3 0 0 0 0 0 0
 253      16 vdb 5 0 16 1 7 1 64 2 0 3 3 0 0 0 0 0 0
   7       0 loop0 9 0 999 1 9 0 999 1 0 1 1 0 0 0 0 0 0
 253      32 vdc bad
";
        assert_eq!(disk_bytes(text), ((4096 + 16) * 512, 64 * 512));
    }

    #[test]
    fn terminal_names_follow_ps() {
        assert_eq!(tty_name(0), "");
        assert_eq!(tty_name(136 << 8), "pts/0");
        assert_eq!(tty_name((136 << 8) | 5), "pts/5");
        assert_eq!(tty_name((4 << 8) | 64), "ttyS0");
    }

    #[test]
    fn this_machine_reports_itself() {
        // The agent reads the same /proc files on the host as in a guest.
        let stats = stats();
        assert!(stats.online_cpus >= 1 && stats.cpu_total_ns >= stats.cpu_busy_ns);
        assert!(stats.memory_total > 0 && stats.memory_available <= stats.memory_total);
        let me = std::process::id();
        let listed = processes(&crate::pid_namespace::Members::NotIn(Vec::new()));
        let mine = listed
            .iter()
            .find(|p| p.pid == me)
            .expect("this test process is listed");
        // By namespace: this one's holds it, another (none has inode 0) not.
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
        let in_ours = processes(&crate::pid_namespace::Members::In(ours));
        assert!(in_ours.iter().any(|p| p.pid == me));
        assert!(processes(&crate::pid_namespace::Members::In(0)).is_empty());
        let not_ours = processes(&crate::pid_namespace::Members::NotIn(vec![ours]));
        assert!(!not_ours.iter().any(|p| p.pid == me));
        assert!(
            mine.command.contains("hull_agent") || mine.command.contains("report"),
            "{mine:?}"
        );
    }
}
