//! Both sides of a migration over a socket pair, with a simulated guest
//! that writes its memory between the sender's looks at the dirty log.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::guest_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::receive::{abort, check_hello, read_hello, ready, receive_memory, receive_memory_with, resumed, welcome};
use super::stream::{read_frame, write_frame, Frame, VmShape, PAGE_SIZE, VERSION};
use super::*;
use crate::devices::virtio::block::written::{WrittenChunks, CHUNK};

/// The simulated guest's disk, when it has one.
const DISK_CHUNKS: u64 = 64;

const PAGES: u64 = 1024;
const BYTES: u64 = PAGES * PAGE_SIZE as u64;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), BYTES as usize)]).unwrap()
}

fn page_of(memory: &GuestMemoryMmap, page: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    memory
        .read_slice(&mut bytes, GuestAddress(page * PAGE_SIZE as u64))
        .unwrap();
    bytes
}

fn fill(memory: &GuestMemoryMmap, page: u64, byte: u8) {
    memory
        .write_slice(&[byte; PAGE_SIZE], GuestAddress(page * PAGE_SIZE as u64))
        .unwrap();
}

/// The guest: its memory, what it wrote since the last look, and how the
/// sender has treated it.
struct Guest {
    memory: GuestMemoryMmap,
    written: PageSet,
    logging: bool,
    paused: bool,
    resumed: bool,
    throttles: Vec<u8>,
    throttle: u8,
    /// Pages the guest writes between two looks, unthrottled.
    writes_per_look: u64,
    /// A guest settling down (going idle): half as many writes each look.
    settling: bool,
    /// It writes zero pages (which go as a flag).
    writes_zeros: bool,
    next_page: u64,
    counter: u8,
    /// The sender's looks at the dirty log.
    looks: u32,
    /// A disk the guest writes a chunk of at each look, and zeros another.
    disk: Option<(std::fs::File, Arc<WrittenChunks>)>,
    /// Its state as the log starts, sent ahead of the pages if any.
    early_state: Option<Vec<u8>>,
}

impl Guest {
    fn new(writes_per_look: u64) -> Arc<Mutex<Guest>> {
        let memory = memory();
        // Some pages hold data, most are zero.
        for page in (0..PAGES).step_by(3) {
            fill(&memory, page, (page % 250) as u8 + 1);
        }
        Arc::new(Mutex::new(Guest {
            memory,
            written: PageSet::empty(PAGES),
            logging: false,
            paused: false,
            resumed: false,
            throttles: Vec::new(),
            throttle: 0,
            writes_per_look,
            settling: false,
            writes_zeros: false,
            next_page: 0,
            counter: 0,
            looks: 0,
            disk: None,
            early_state: None,
        }))
    }

    /// The guest runs for a while: fewer writes the more it is throttled.
    fn run(&mut self) {
        if self.paused {
            return;
        }
        let writes = self.writes_per_look * u64::from(100 - self.throttle) / 100;
        for _ in 0..writes {
            self.counter = self.counter.wrapping_add(1).max(1);
            let page = self.next_page % PAGES;
            fill(&self.memory, page, if self.writes_zeros { 0 } else { self.counter });
            if self.logging {
                self.written.insert(page);
            }
            self.next_page += 7;
        }
        if self.settling {
            self.writes_per_look /= 2;
        }
        if let Some((file, written)) = &self.disk {
            use std::os::unix::fs::FileExt;
            let chunk = u64::from(self.looks) % DISK_CHUNKS;
            let at = chunk * CHUNK + 512;
            file.write_all_at(&[self.looks as u8 | 1; 4096], at).unwrap();
            written.mark(at, 4096);
            let zeroed = (chunk + DISK_CHUNKS / 2) % DISK_CHUNKS * CHUNK;
            file.write_all_at(&vec![0; CHUNK as usize], zeroed).unwrap();
            written.mark(zeroed, CHUNK);
        }
    }
}

struct AsSource(Arc<Mutex<Guest>>, GuestMemoryMmap, Vec<OutgoingDisk>);

impl Source for AsSource {
    fn memory(&self) -> &GuestMemoryMmap {
        &self.1
    }
    fn start_dirty_log(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().logging = true;
        Ok(())
    }
    fn take_dirty(&mut self) -> std::io::Result<PageSet> {
        let mut guest = self.0.lock().unwrap();
        guest.looks += 1;
        guest.run();
        Ok(std::mem::replace(&mut guest.written, PageSet::empty(PAGES)))
    }
    fn stop_dirty_log(&mut self) {
        self.0.lock().unwrap().logging = false;
    }
    fn pause(&mut self) -> Result<(), String> {
        self.0.lock().unwrap().paused = true;
        Ok(())
    }
    fn resume(&mut self) {
        let mut guest = self.0.lock().unwrap();
        guest.paused = false;
        guest.resumed = true;
    }
    fn throttle(&mut self, percent: u8) {
        let mut guest = self.0.lock().unwrap();
        guest.throttle = percent;
        guest.throttles.push(percent);
    }
    fn state(&mut self) -> Result<Vec<u8>, String> {
        Ok(b"vcpus and devices".to_vec())
    }
    fn early_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().unwrap().early_state.take())
    }
    fn disks(&self) -> &[OutgoingDisk] {
        &self.2
    }
}

/// The simulated guest's make: 1 vCPU, a disk, vsock, entropy and a NIC.
fn shape() -> VmShape {
    VmShape {
        memory_bytes: BYTES,
        vcpus: 1,
        devices: vec![2, 19, 4, 1],
        nics_on_taps: vec![0],
        disks: vec![],
        travelling_shares: vec![],
    }
}

fn hello(template: Option<[u8; 32]>) -> Hello {
    Hello {
        version: VERSION,
        page_size: PAGE_SIZE as u32,
        shape: shape(),
        template,
        guest_macs: Vec::new(),
    }
}

/// A destination that takes everything, over `conn`, into `memory` (which
/// holds `template`'s pages, if any). Its memory and what it received.
fn destination(
    mut conn: UnixStream,
    memory: GuestMemoryMmap,
    template: Option<[u8; 32]>,
) -> thread::JoinHandle<Result<(GuestMemoryMmap, Vec<u8>), MigrationError>> {
    thread::spawn(move || {
        let state = take_all(&mut conn, &memory, template, &mut |_| Ok(()))?;
        Ok((memory, state))
    })
}

/// A destination's side, from the hello to `Resumed`, the source's early
/// state given to `early_state`: the state that came.
fn take_all(
    conn: &mut UnixStream,
    memory: &GuestMemoryMmap,
    template: Option<[u8; 32]>,
    early_state: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, MigrationError> {
    let hello = read_hello(conn)?;
    let check = check_hello(&hello, &shape()).map(|_| template.is_some() && hello.template == template);
    welcome(conn, check)?;
    let incoming = receive_memory_with(
        conn,
        memory,
        BYTES,
        &IncomingDisks::default(),
        &mut IncomingTrees::default(),
        &mut |_, _| {},
        early_state,
    )?;
    ready(conn)?;
    resumed(conn)?;
    Ok(incoming.state)
}

fn migrate(
    guest: &Arc<Mutex<Guest>>,
    conn: &mut UnixStream,
    template: Option<[u8; 32]>,
    first_round: &dyn Fn(bool) -> std::io::Result<PageSet>,
    limits: &Limits,
) -> (Result<Report, MigrationError>, Vec<Progress>) {
    let memory = guest.lock().unwrap().memory.clone();
    migrate_from(
        &mut AsSource(guest.clone(), memory, Vec::new()),
        conn,
        template,
        first_round,
        limits,
    )
}

fn migrate_from(
    source: &mut dyn Source,
    conn: &mut UnixStream,
    template: Option<[u8; 32]>,
    first_round: &dyn Fn(bool) -> std::io::Result<PageSet>,
    limits: &Limits,
) -> (Result<Report, MigrationError>, Vec<Progress>) {
    let mut rounds = Vec::new();
    let result = send::send(conn, source, hello(template), first_round, limits, &mut |p| {
        rounds.push(*p)
    });
    (result, rounds)
}

/// Time enough for any guest of these tests to converge.
fn generous() -> Limits {
    Limits {
        downtime: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// `migrate` to a destination without the template: every page goes.
fn migrate_whole(
    guest: &Arc<Mutex<Guest>>,
    conn: &mut UnixStream,
    limits: &Limits,
) -> (Result<Report, MigrationError>, Vec<Progress>) {
    migrate(guest, conn, None, &|_| Ok(PageSet::full(PAGES)), limits)
}

fn assert_same_memory(a: &GuestMemoryMmap, b: &GuestMemoryMmap) {
    for page in 0..PAGES {
        assert_eq!(page_of(a, page), page_of(b, page), "page {page} differs");
    }
}

#[test]
fn a_running_guest_arrives_whole_and_zero_pages_stay_home() {
    let guest = Guest::new(40);
    let (mut here, there) = UnixStream::pair().unwrap();
    let dest = destination(there, memory(), None);
    let (report, rounds) = migrate_whole(&guest, &mut here, &generous());
    let report = report.unwrap();
    let (arrived, state) = dest.join().unwrap().unwrap();
    assert_eq!(state, b"vcpus and devices");
    assert!(report.confirmed);
    assert_same_memory(&guest.lock().unwrap().memory, &arrived);
    // Round 0 sent the non-zero pages only: a third of the guest, and the
    // pages the guest wrote while it ran.
    assert!(rounds[0].pages_sent < PAGES / 2, "{:?}", rounds[0]);
    assert!(report.bytes_sent < BYTES / 2, "{report:?}");
    let guest = guest.lock().unwrap();
    assert!(guest.paused && !guest.resumed, "the source stays paused for good");
    assert!(!guest.logging);
}

#[test]
fn pages_travel_compressed_unless_told_not_to_and_arrive_the_same() {
    let mut bytes = Vec::new();
    for compress in [true, false] {
        let guest = Guest::new(0);
        let (mut here, there) = UnixStream::pair().unwrap();
        let dest = destination(there, memory(), None);
        let limits = Limits {
            compress,
            ..Limits::default()
        };
        let (report, _) = migrate_whole(&guest, &mut here, &limits);
        let report = report.unwrap();
        let (arrived, _) = dest.join().unwrap().unwrap();
        assert_same_memory(&guest.lock().unwrap().memory, &arrived);
        bytes.push((report.bytes_sent, report.pages_sent - report.zero_pages));
    }
    let [(compressed, pages), (raw, same_pages)] = bytes[..] else {
        unreachable!()
    };
    assert_eq!(pages, same_pages);
    assert!(raw >= pages * PAGE_SIZE as u64, "{raw} bytes for {pages} pages");
    // Each page is one byte repeated: LZ4 makes it a few dozen bytes.
    assert!(compressed * 20 < raw, "{compressed} compressed against {raw}");
}

#[test]
fn a_clone_sends_only_its_own_pages_to_a_destination_with_its_template() {
    let template = memory();
    for page in 0..PAGES {
        fill(&template, page, 9);
    }
    let guest = Guest::new(0);
    let (memory_now, own_pages) = {
        let g = guest.lock().unwrap();
        for page in 0..PAGES {
            fill(&g.memory, page, 9);
        }
        // The clone changed three pages, and zeroed one.
        fill(&g.memory, 10, 1);
        fill(&g.memory, 11, 2);
        fill(&g.memory, 500, 3);
        fill(&g.memory, 700, 0);
        let mut own = PageSet::empty(PAGES);
        for page in [10, 11, 500, 700] {
            own.insert(page);
        }
        (g.memory.clone(), own)
    };
    let (mut here, there) = UnixStream::pair().unwrap();
    let id = Some([5; 32]);
    let dest = destination(there, template, id);
    let first = |has_template: bool| {
        Ok(match has_template {
            true => own_pages.clone(),
            false => PageSet::full(PAGES),
        })
    };
    let (report, _) = migrate(&guest, &mut here, id, &first, &Limits::default());
    let report = report.unwrap();
    let (arrived, _) = dest.join().unwrap().unwrap();
    assert_same_memory(&memory_now, &arrived);
    assert_eq!(report.pages_sent, 4);
    assert_eq!(report.zero_pages, 1, "the zeroed page went as zeros");
    assert!(report.bytes_sent < 4 * PAGE_SIZE as u64, "{report:?}");
}

#[test]
fn the_dirty_log_is_read_only_once_the_destination_holds_the_round() {
    let guest = Guest::new(10);
    let seen = guest.clone();
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let dest = thread::spawn(move || {
        read_hello(&mut there).unwrap();
        welcome(&mut there, Ok(false)).unwrap();
        let memory = memory();
        // Round 0 by hand, its receipt late: the sender waits for it.
        loop {
            match read_frame(&mut there).unwrap() {
                Some(Frame::RoundEnd { round: 0, pages }) => {
                    assert!(pages > 0);
                    break;
                }
                Some(Frame::Pages { first, data }) => memory
                    .write_slice(&data, GuestAddress(first * PAGE_SIZE as u64))
                    .unwrap(),
                Some(Frame::Zeros { .. }) => {}
                other => panic!("{other:?} in round 0"),
            }
        }
        thread::sleep(Duration::from_millis(200));
        assert_eq!(
            seen.lock().unwrap().looks,
            0,
            "the dirty log was read before the receipt"
        );
        write_frame(&mut there, &Frame::RoundIn { round: 0 }).unwrap();
        receive_memory(
            &mut there,
            &memory,
            BYTES,
            &IncomingDisks::default(),
            &mut IncomingTrees::default(),
            &mut |_, _| {},
        )
        .unwrap();
        ready(&mut there).unwrap();
        resumed(&mut there).unwrap();
    });
    let (report, rounds) = migrate_whole(&guest, &mut here, &Limits::default());
    dest.join().unwrap();
    assert!(report.unwrap().confirmed);
    // Round 0's bandwidth is the pages it carried (before LZ4) over the
    // time to its receipt: the destination's 200 ms are in it.
    let first = &rounds[0];
    let carried = (first.pages_sent + 1) * PAGE_SIZE as u64;
    assert!(
        first.bandwidth <= carried * 5,
        "{} bytes/s for {} pages",
        first.bandwidth,
        first.pages_sent
    );
}

#[test]
fn a_guest_settling_down_gets_more_rounds_while_its_dirty_set_shrinks() {
    let steady = Guest::new(40);
    let settling = Guest::new(600);
    settling.lock().unwrap().settling = true;
    let limits = Limits {
        downtime: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut last_sets = Vec::new();
    for guest in [&steady, &settling] {
        let (mut here, there) = UnixStream::pair().unwrap();
        let dest = destination(there, memory(), None);
        let (report, rounds) = migrate_whole(guest, &mut here, &limits);
        report.unwrap();
        let (arrived, _) = dest.join().unwrap().unwrap();
        assert_same_memory(&guest.lock().unwrap().memory, &arrived);
        last_sets.push((rounds.len(), rounds.last().unwrap().dirty_pages));
    }
    // Everything fits the budget at once; the steady guest's set does not
    // shrink, so it switches over after the first round. The settling one
    // goes on while its set shrinks (600, 300, 150, 75 pages) and leaves
    // 37 for the pause.
    assert_eq!(last_sets, [(1, 40), (5, 37)]);
}

/// `migrate_whole` with no downtime allowed (only a guest writing nothing
/// fits), checked to arrive whole.
fn migrate_without_downtime(guest: &Arc<Mutex<Guest>>) -> (Report, Vec<Progress>) {
    let (mut here, there) = UnixStream::pair().unwrap();
    let dest = destination(there, memory(), None);
    let limits = Limits {
        downtime: Duration::ZERO,
        ..Limits::default()
    };
    let (report, rounds) = migrate_whole(guest, &mut here, &limits);
    let report = report.unwrap();
    let (arrived, _) = dest.join().unwrap().unwrap();
    assert_same_memory(&guest.lock().unwrap().memory, &arrived);
    (report, rounds)
}

#[test]
fn a_guest_outrunning_the_link_is_throttled_until_it_converges() {
    // 90 pages a look: none at 99% throttle.
    let guest = Guest::new(90);
    // Only a guest throttled to a standstill converges.
    let (report, rounds) = migrate_without_downtime(&guest);
    assert_eq!(report.max_throttle, 99, "{rounds:?}");
    assert!(rounds.windows(2).all(|w| w[0].throttle <= w[1].throttle));
    let throttles = guest.lock().unwrap().throttles.clone();
    // Up by at least QEMU's steps (more when the rates seen call for it:
    // `next_throttle`), never down, until the pause lifts it.
    let (last, raised) = throttles.split_last().unwrap();
    assert_eq!(*last, 0, "unthrottled at the switch-over");
    assert!(raised[0] >= 20, "{throttles:?}");
    assert!(
        raised.windows(2).all(|w| w[1] >= w[0].saturating_add(10).min(99)),
        "{throttles:?}"
    );
}

#[test]
fn a_guest_writing_zero_pages_is_not_taken_for_one_outrunning_the_link() {
    // 600 zero pages, then half as many each look: what a round sends
    // (counted whole) is twice what the guest writes meanwhile.
    let guest = Guest::new(600);
    guest.lock().unwrap().settling = true;
    guest.lock().unwrap().writes_zeros = true;
    // Nothing fits until the guest is idle: every round is weighed.
    let (report, rounds) = migrate_without_downtime(&guest);
    assert!(rounds.len() > 3, "{rounds:?}");
    assert_eq!(report.max_throttle, 0, "{rounds:?}");
}

#[test]
fn a_throttled_guest_pauses_after_the_narrowed_scan_without_more_rounds() {
    // 90 pages a look: none at 99% throttle, 90 again once it is lifted.
    let guest = Guest::new(90);
    let limits = Limits {
        downtime: Duration::ZERO,
        ..Limits::default()
    };
    let (report, calls, narrowed) = migrate_narrowing(&guest, &limits);
    assert_eq!(report.max_throttle, 99);
    assert_eq!(&calls[narrowed..], ["narrow", "take", "pause", "take"], "{calls:?}");
    // Lifted before the scan: no held phase runs on into the pause.
    assert_eq!(guest.lock().unwrap().throttles.last(), Some(&0));
    assert_eq!(calls[..narrowed].last(), Some(&"unthrottle"), "{calls:?}");
}

#[test]
fn a_migration_that_cannot_converge_is_abandoned_and_the_guest_runs_on() {
    let guest = Guest::new(200);
    let (mut here, there) = UnixStream::pair().unwrap();
    let dest = destination(there, memory(), None);
    let limits = Limits {
        downtime: Duration::ZERO,
        max_rounds: 4,
        ..Limits::default()
    };
    let (report, _) = migrate_whole(&guest, &mut here, &limits);
    let err = report.unwrap_err();
    assert!(matches!(err, MigrationError::DidNotConverge { rounds: 4, .. }), "{err}");
    assert!(err.to_string().contains("runs on here"));
    let dest_err = dest.join().unwrap().unwrap_err();
    assert!(matches!(dest_err, MigrationError::Aborted(_)), "{dest_err}");
    let guest = guest.lock().unwrap();
    assert!(!guest.paused && !guest.logging && guest.throttle == 0);
}

#[test]
fn a_destination_made_for_another_vm_refuses_before_anything_is_sent() {
    let bigger = VmShape {
        memory_bytes: BYTES * 2,
        ..shape()
    };
    let two_vcpus = VmShape { vcpus: 2, ..shape() };
    let no_nic = VmShape {
        devices: vec![2, 19, 4],
        ..shape()
    };
    let no_tap = VmShape {
        nics_on_taps: vec![],
        ..shape()
    };
    for (ours, why) in [
        (bigger, "8 MiB"),
        (two_vcpus, "the VM has 1 vCPUs; this destination was made for 2"),
        (
            no_nic,
            "the VM's devices are [block, vsock, rng, net]; this destination was made with [block, vsock, rng]",
        ),
        (
            no_tap,
            "the VM's NICs on host taps are [0]; this destination has taps for []",
        ),
    ] {
        let guest = Guest::new(10);
        let (mut here, mut there) = UnixStream::pair().unwrap();
        let dest = thread::spawn(move || {
            let hello = read_hello(&mut there).unwrap();
            welcome(&mut there, check_hello(&hello, &ours).map(|_| false))
        });
        let (report, rounds) = migrate_whole(&guest, &mut here, &Limits::default());
        let err = report.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(matches!(dest.join().unwrap(), Err(MigrationError::Refused(_))));
        assert!(rounds.is_empty());
        assert!(!guest.lock().unwrap().logging);
    }
}

#[test]
fn a_destination_that_fails_after_the_state_leaves_the_source_running() {
    let guest = Guest::new(10);
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let dest = thread::spawn(move || {
        let hello = read_hello(&mut there).unwrap();
        welcome(&mut there, Ok(false)).unwrap();
        assert_eq!(hello.shape, shape());
        receive_memory(
            &mut there,
            &memory(),
            BYTES,
            &IncomingDisks::default(),
            &mut IncomingTrees::default(),
            &mut |_, _| {},
        )
        .unwrap();
        receive::abort(&mut there, "restoring the vCPUs failed");
    });
    let (report, _) = migrate_whole(&guest, &mut here, &Limits::default());
    dest.join().unwrap();
    let err = report.unwrap_err();
    assert!(err.to_string().contains("restoring the vCPUs failed"), "{err}");
    let guest = guest.lock().unwrap();
    assert!(
        guest.resumed && !guest.paused,
        "paused for the switch-over, then resumed"
    );
}

#[test]
fn a_destination_that_gives_up_mid_round_is_heard_past_the_broken_pipe() {
    let guest = Guest::new(10);
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let dest = thread::spawn(move || {
        read_hello(&mut there).unwrap();
        welcome(&mut there, Ok(false)).unwrap();
        // One frame of round 0 (which is more than a socket buffer), then
        // it hangs up with the rest unread.
        read_frame(&mut there).unwrap();
        receive::abort(&mut there, "no room for these pages");
    });
    // Pages as they are: a third of 4 MiB, more than the socket holds.
    let limits = Limits {
        compress: false,
        ..Limits::default()
    };
    let (report, _) = migrate_whole(&guest, &mut here, &limits);
    dest.join().unwrap();
    let err = report.unwrap_err();
    assert!(
        matches!(&err, MigrationError::Aborted(reason) if reason == "no room for these pages"),
        "{err}"
    );
    assert!(!guest.lock().unwrap().paused, "the guest runs on");
}

#[test]
fn hostile_sources_are_refused_without_touching_memory_beyond_the_guest() {
    let memory = memory();
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (
            vec![Frame::Pages {
                first: PAGES,
                data: vec![1; PAGE_SIZE],
            }],
            "beyond",
        ),
        (
            vec![Frame::Zeros {
                first: u64::MAX,
                count: 2,
            }],
            "beyond",
        ),
        (
            vec![Frame::Zeros {
                first: 1,
                count: u32::MAX,
            }],
            "beyond",
        ),
        (vec![Frame::Done], "before the VM state"),
        (vec![Frame::State(vec![1]), Frame::State(vec![2])], "out of order"),
        (vec![Frame::Go], "out of order"),
        // Only ahead of every page, once.
        (
            vec![Frame::Zeros { first: 0, count: 1 }, Frame::EarlyState(vec![1])],
            "early state where",
        ),
        (
            vec![Frame::EarlyState(vec![1]), Frame::EarlyState(vec![1])],
            "early state where",
        ),
        (vec![Frame::State(vec![1]), Frame::Done, Frame::Go], "more after done"),
        (vec![], "closed the stream"),
    ];
    for (frames, expected) in cases {
        // A few small frames: they fit in the socket's buffer.
        let (mut source, mut there) = UnixStream::pair().unwrap();
        for frame in &frames {
            write_frame(&mut source, frame).unwrap();
        }
        source.shutdown(std::net::Shutdown::Write).unwrap();
        let err = receive_memory(
            &mut there,
            &memory,
            BYTES,
            &IncomingDisks::default(),
            &mut IncomingTrees::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{frames:?}: {err}");
    }
}

#[test]
fn a_destination_that_hangs_after_the_state_leaves_the_source_running() {
    let guest = Guest::new(10);
    let (mut here, mut there) = UnixStream::pair().unwrap();
    // The VMM bounds its waits on the connection (SO_RCVTIMEO); here, briefly.
    here.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let dest = thread::spawn(move || {
        read_hello(&mut there).unwrap();
        welcome(&mut there, Ok(false)).unwrap();
        receive_memory(
            &mut there,
            &memory(),
            BYTES,
            &IncomingDisks::default(),
            &mut IncomingTrees::default(),
            &mut |_, _| {},
        )
        .unwrap();
        // Never says Ready; keeps the connection open a while.
        thread::sleep(Duration::from_secs(2));
    });
    let (report, _) = migrate_whole(&guest, &mut here, &Limits::default());
    let err = report.unwrap_err();
    assert!(matches!(err, MigrationError::Stream(StreamError::Io(_))), "{err}");
    {
        let guest = guest.lock().unwrap();
        assert!(guest.resumed && !guest.paused, "the guest runs on here");
    }
    dest.join().unwrap();
}

/// A scratch file of `bytes`, removed when dropped.
struct ScratchFile(std::path::PathBuf, std::fs::File);

impl ScratchFile {
    fn new(name: &str, bytes: u64) -> ScratchFile {
        let path = std::env::temp_dir().join(format!("hull-migrate-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(bytes).unwrap();
        ScratchFile(path, file)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_disk_travels_with_its_guest_and_writes_made_meanwhile_are_sent_again() {
    use std::os::unix::fs::FileExt;
    let disk_bytes = DISK_CHUNKS * CHUNK;
    let source_disk = ScratchFile::new("src", disk_bytes);
    // Data in a few chunks, an allocated chunk of zeros, holes elsewhere.
    for chunk in [1u64, 2, 40, 63] {
        source_disk
            .1
            .write_all_at(&[chunk as u8; 3000], chunk * CHUNK + 100)
            .unwrap();
    }
    source_disk
        .1
        .write_all_at(&vec![0; CHUNK as usize], 10 * CHUNK)
        .unwrap();
    // The destination's copy holds stale bytes: it is emptied first.
    let dest_disk = ScratchFile::new("dst", disk_bytes);
    dest_disk.1.write_all_at(&[0xee; 8192], 5 * CHUNK).unwrap();

    let guest = Guest::new(20);
    let written = Arc::new(WrittenChunks::new(disk_bytes));
    guest.lock().unwrap().disk = Some((source_disk.1.try_clone().unwrap(), written.clone()));
    let outgoing = OutgoingDisk {
        disk: 0,
        file: source_disk.1.try_clone().unwrap(),
        bytes: disk_bytes,
        written: written.clone(),
    };
    let shape = move || VmShape {
        disks: vec![stream::DiskShape {
            bytes: disk_bytes,
            read_only: false,
            travels: true,
        }],
        ..shape()
    };
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let dest_file = dest_disk.1.try_clone().unwrap();
    let dest = thread::spawn(move || {
        let hello = read_hello(&mut there)?;
        welcome(&mut there, check_hello(&hello, &shape()).map(|_| false))?;
        let disks = IncomingDisks::new(vec![Some((dest_file, disk_bytes))]).unwrap();
        let memory = memory();
        receive_memory(
            &mut there,
            &memory,
            BYTES,
            &disks,
            &mut IncomingTrees::default(),
            &mut |_, _| {},
        )?;
        ready(&mut there)?;
        resumed(&mut there)?;
        Ok::<_, MigrationError>(memory)
    });
    let memory = guest.lock().unwrap().memory.clone();
    let mut source = AsSource(guest.clone(), memory, vec![outgoing]);
    let mut hello = hello(None);
    hello.shape = shape();
    let limits = Limits {
        downtime: Duration::from_secs(5),
        ..Limits::default()
    };
    let report = send::send(
        &mut here,
        &mut source,
        hello,
        &|_| Ok(PageSet::full(PAGES)),
        &limits,
        &mut |_| {},
    )
    .unwrap();
    let arrived = dest.join().unwrap().unwrap();
    assert!(report.confirmed);
    assert_same_memory(&guest.lock().unwrap().memory, &arrived);
    let read_all = |file: &std::fs::File| {
        let mut bytes = vec![0u8; disk_bytes as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    };
    assert!(
        guest.lock().unwrap().looks > 0,
        "the guest wrote its disk during the move"
    );
    assert!(read_all(&source_disk.1) == read_all(&dest_disk.1), "the disks differ");
    // The log is off once the move is over.
    written.mark(0, 1);
    assert!(written.take().iter().all(|w| *w == 0));
}

#[test]
fn a_destination_refuses_disks_it_does_not_expect_and_bytes_past_a_disk() {
    let dest_disk = ScratchFile::new("bounds", 4 * CHUNK);
    let disks = IncomingDisks::new(vec![None, Some((dest_disk.1.try_clone().unwrap(), 4 * CHUNK))]).unwrap();
    assert!(matches!(disks.write(0, 0, &[1; 10]), Err(MigrationError::Disk(_))));
    assert!(matches!(disks.write(7, 0, &[1; 10]), Err(MigrationError::Disk(_))));
    assert!(matches!(
        disks.write(1, 4 * CHUNK - 5, &[1; 10]),
        Err(MigrationError::Disk(_))
    ));
    assert!(matches!(disks.zero(1, u64::MAX - 1, 10), Err(MigrationError::Disk(_))));
    disks.write(1, 4 * CHUNK - 10, &[1; 10]).unwrap();
    disks.zero(1, 0, 4 * CHUNK).unwrap();
    let with_disk = |travels| VmShape {
        disks: vec![stream::DiskShape {
            bytes: 4 * CHUNK,
            read_only: false,
            travels,
        }],
        ..shape()
    };
    let mut hello = hello(None);
    hello.shape = with_disk(true);
    let refused = check_hello(&hello, &with_disk(false)).unwrap_err();
    assert!(refused.contains("disks"), "{refused}");
}

/// A fuzz seed's stream as the source's end of a link (the destination's
/// answers are dropped).
struct SeedLink<'a>(&'a [u8]);

impl std::io::Read for SeedLink<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for SeedLink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_fuzz_targets_disk_seed_is_a_whole_stream_that_lands() {
    use std::os::unix::fs::FileExt;
    // Mode byte, then frames: disk data, disk zeros, pages, a round's end, the state, done.
    let seed = include_bytes!("../../../../fuzz/seeds/migration_stream/disk");
    let copy = ScratchFile::new("seed", 256 << 10);
    copy.1.write_all_at(&[9; 8192], 8192).unwrap();
    let disks = IncomingDisks::new(vec![None, Some((copy.1.try_clone().unwrap(), 256 << 10))]).unwrap();
    copy.1.write_all_at(&[9; 4096], 8192).unwrap();
    let memory = memory();
    let incoming = receive_memory(
        &mut SeedLink(&seed[1..]),
        &memory,
        BYTES,
        &disks,
        &mut IncomingTrees::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(incoming.state, b"state");
    assert_eq!(page_of(&memory, 2), vec![7; PAGE_SIZE]);
    let mut bytes = vec![0u8; 12288];
    copy.1.read_exact_at(&mut bytes, 4096).unwrap();
    assert_eq!(&bytes[..100], (0..100).collect::<Vec<u8>>().as_slice());
    assert!(bytes[4096..].iter().all(|&b| b == 0), "the zeros landed");
}

#[test]
fn the_fuzz_targets_compressed_seed_is_a_stream_that_lands() {
    // Mode byte, then an LZ4 pages frame (two pages of 7s, one byte 1),
    // a round's end, the state, done.
    let seed = include_bytes!("../../../../fuzz/seeds/migration_stream/compressed");
    assert_eq!(seed[1], 15, "the seed begins with a compressed pages frame");
    let memory = memory();
    let incoming = receive_memory(
        &mut SeedLink(&seed[1..]),
        &memory,
        BYTES,
        &IncomingDisks::default(),
        &mut IncomingTrees::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(incoming.state, b"state");
    let mut expected = vec![7u8; 2 * PAGE_SIZE];
    expected[5000] = 1;
    assert_eq!([page_of(&memory, 2), page_of(&memory, 3)].concat(), expected);
}

#[test]
fn a_guest_far_faster_than_the_link_is_throttled_at_once_to_what_the_link_carries() {
    use super::send::next_throttle;
    let mb = 1e6;
    // Unthrottled, 40 MB/s of writes against 8 MB/s: 90% leaves 4 MB/s.
    assert_eq!(next_throttle(0, 40.0 * mb, 8.0 * mb), 90);
    // Barely faster than the link: QEMU's first step.
    assert_eq!(next_throttle(0, 5.0 * mb, 8.0 * mb), 20);
    // 10 MB/s seen at 50% is 20 MB/s unthrottled: 80% leaves 4 MB/s.
    assert_eq!(next_throttle(50, 10.0 * mb, 8.0 * mb), 80);
    // A step when the rates say less, and never past the ceiling.
    assert_eq!(next_throttle(50, 1.0 * mb, 8.0 * mb), 60);
    assert_eq!(next_throttle(95, 100.0 * mb, 1.0 * mb), 99);
    assert_eq!(next_throttle(99, 100.0 * mb, 1.0 * mb), 99);
    // No rate to go by: a step.
    assert_eq!(next_throttle(0, 0.0, 8.0 * mb), 20);
    assert_eq!(next_throttle(30, f64::NAN, 8.0 * mb), 40);
}

/// A guest whose shared directory travels: for its first three looks at
/// the dirty log, each time, it has written files in it (a log appended
/// to, a file a look, the oldest of those removed).
struct WithTree {
    guest: AsSource,
    trees: Vec<OutgoingTree>,
    dir: std::path::PathBuf,
    looks: u32,
}

impl WithTree {
    fn write(&mut self) {
        use std::io::Write;
        // A look every 30 ms: files stop being too recent to trust.
        thread::sleep(Duration::from_millis(30));
        if self.guest.0.lock().unwrap().paused || self.looks == 3 {
            return;
        }
        self.looks += 1;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join("log"))
            .unwrap();
        writeln!(log, "look {}", self.looks).unwrap();
        std::fs::create_dir_all(self.dir.join("looks")).unwrap();
        std::fs::write(
            self.dir.join(format!("looks/{}", self.looks)),
            vec![self.looks as u8; 5000],
        )
        .unwrap();
        let _ = std::fs::remove_file(self.dir.join(format!("looks/{}", self.looks.saturating_sub(3))));
    }
}

impl Source for WithTree {
    fn memory(&self) -> &GuestMemoryMmap {
        self.guest.memory()
    }
    fn start_dirty_log(&mut self) -> std::io::Result<()> {
        self.guest.start_dirty_log()
    }
    fn take_dirty(&mut self) -> std::io::Result<PageSet> {
        self.write();
        self.guest.take_dirty()
    }
    fn stop_dirty_log(&mut self) {
        self.guest.stop_dirty_log()
    }
    fn pause(&mut self) -> Result<(), String> {
        self.guest.pause()
    }
    fn resume(&mut self) {
        self.guest.resume()
    }
    fn throttle(&mut self, percent: u8) {
        self.guest.throttle(percent)
    }
    fn state(&mut self) -> Result<Vec<u8>, String> {
        self.guest.state()
    }
    fn trees(&mut self) -> &mut [OutgoingTree] {
        &mut self.trees
    }
}

/// Every file below `dir` (relative path, content), sorted.
fn files_below(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(at) = dirs.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => dirs.push(path),
                false => files.push((
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                )),
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_travelling_directory_arrives_as_the_paused_guest_left_it() {
    let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(from.path().join("before"), "there before the move").unwrap();
    let guest = Guest::new(0);
    let guest_memory = guest.lock().unwrap().memory.clone();
    let mut source = WithTree {
        guest: AsSource(guest.clone(), guest_memory, Vec::new()),
        trees: vec![OutgoingTree::new(0, std::fs::File::open(from.path()).unwrap()).unwrap()],
        dir: from.path().to_path_buf(),
        looks: 0,
    };
    let mut with_tree = hello(None);
    with_tree.shape.travelling_shares = vec![0];
    let expected = with_tree.shape.clone();
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let into = std::fs::File::open(to.path()).unwrap();
    let dest = thread::spawn(move || -> Result<(), MigrationError> {
        let hello = read_hello(&mut there)?;
        welcome(&mut there, check_hello(&hello, &expected).map(|_| false))?;
        let mut trees = IncomingTrees::new(vec![Some(into.into())]);
        receive_memory(
            &mut there,
            &memory(),
            BYTES,
            &IncomingDisks::default(),
            &mut trees,
            &mut |_, _| {},
        )?;
        ready(&mut there)?;
        resumed(&mut there)
    });
    // Rounds until nothing is left: the files written in each.
    let limits = Limits {
        downtime: Duration::ZERO,
        ..Limits::default()
    };
    let report = send::send(
        &mut here,
        &mut source,
        with_tree,
        &|_| Ok(PageSet::full(PAGES)),
        &limits,
        &mut |_| {},
    );
    assert!(report.unwrap().rounds >= 3);
    dest.join().unwrap().unwrap();
    assert_eq!(source.looks, 3);
    let arrived = files_below(to.path());
    assert_eq!(arrived, files_below(from.path()));
    assert!(arrived.iter().any(|(name, _)| name == "before"));
    assert_eq!(
        arrived.iter().find(|(name, _)| name == "log").unwrap().1,
        (1..=source.looks)
            .map(|n| format!("look {n}\n"))
            .collect::<String>()
            .into_bytes()
    );
}

#[test]
fn the_tree_fuzz_seed_makes_files_in_the_travelling_share_only() {
    let seed = include_bytes!("../../../../fuzz/seeds/migration_stream/tree");
    assert_eq!(seed[1], 17, "the seed begins with a tree entry");
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::File::open(dir.path()).unwrap();
    let taken = |trees: &mut IncomingTrees| {
        receive_memory(
            &mut SeedLink(&seed[1..]),
            &memory(),
            BYTES,
            &IncomingDisks::default(),
            trees,
            &mut |_, _| {},
        )
        .unwrap_err()
    };
    // It ends before the state: the stream is cut, after its entries.
    let cut = taken(&mut IncomingTrees::new(vec![None, Some(root.into())]));
    assert!(cut.to_string().contains("closed the stream"), "{cut}");
    assert_eq!(std::fs::read(dir.path().join("dir/file")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read_link(dir.path().join("dir/link")).unwrap(),
        std::path::Path::new("file")
    );
    assert!(!dir.path().join("dir/gone").exists());
    // Into a share that does not travel: refused.
    let refused = taken(&mut IncomingTrees::default());
    assert!(refused.to_string().contains("does not travel"), "{refused}");
}

/// A source that logs every write cheaply from just before its last full
/// scan (`narrow_dirty_log`): the calls it gets, in order.
struct Narrowing(AsSource, Vec<&'static str>);

impl Source for Narrowing {
    fn memory(&self) -> &GuestMemoryMmap {
        self.0.memory()
    }
    fn start_dirty_log(&mut self) -> std::io::Result<()> {
        self.0.start_dirty_log()
    }
    fn take_dirty(&mut self) -> std::io::Result<PageSet> {
        self.1.push("take");
        self.0.take_dirty()
    }
    fn narrow_dirty_log(&mut self) -> std::io::Result<bool> {
        self.1.push("narrow");
        Ok(true)
    }
    fn stop_dirty_log(&mut self) {
        self.0.stop_dirty_log()
    }
    fn pause(&mut self) -> Result<(), String> {
        self.1.push("pause");
        self.0.pause()
    }
    fn resume(&mut self) {
        self.0.resume()
    }
    fn throttle(&mut self, percent: u8) {
        if percent == 0 {
            self.1.push("unthrottle");
        }
        self.0.throttle(percent)
    }
    fn state(&mut self) -> Result<Vec<u8>, String> {
        self.0.state()
    }
}

/// `guest` migrated whole as a `Narrowing` source under `limits`, checked
/// to arrive as it is: the report, the source's calls, and where the
/// narrowing is among them.
fn migrate_narrowing(guest: &Arc<Mutex<Guest>>, limits: &Limits) -> (Report, Vec<&'static str>, usize) {
    let (mut here, there) = UnixStream::pair().unwrap();
    let dest = destination(there, memory(), None);
    let memory = guest.lock().unwrap().memory.clone();
    let mut source = Narrowing(AsSource(guest.clone(), memory, Vec::new()), Vec::new());
    let (report, _) = migrate_from(&mut source, &mut here, None, &|_| Ok(PageSet::full(PAGES)), limits);
    let report = report.unwrap();
    let (arrived, _) = dest.join().unwrap().unwrap();
    assert_same_memory(&guest.lock().unwrap().memory, &arrived);
    let calls = source.1;
    let narrowed = calls.iter().position(|&c| c == "narrow").expect("narrowed");
    (report, calls, narrowed)
}

#[test]
fn a_source_that_narrows_its_log_scans_then_sends_a_round_from_the_log_before_the_pause() {
    let guest = Guest::new(40);
    // The guest wrote between the narrowed scan and the pause: those pages
    // came too (the helper compares the memory).
    let (report, calls, narrowed) = migrate_narrowing(&guest, &generous());
    assert!(report.confirmed);
    // The scan, a round whose writes come from the cheap log (40 pages: too
    // few for another), and the log read once in the pause.
    assert_eq!(
        &calls[narrowed..],
        ["narrow", "take", "take", "pause", "take"],
        "{calls:?}"
    );
}

#[test]
fn rounds_go_on_from_the_narrowed_log_while_they_shrink() {
    let guest = Guest::new(1000);
    guest.lock().unwrap().settling = true;
    let (report, calls, narrowed) = migrate_narrowing(&guest, &generous());
    assert!(report.confirmed);
    let takes = calls[narrowed..]
        .iter()
        .take_while(|&&c| c != "pause")
        .filter(|&&c| c == "take")
        .count();
    // The scan, then rounds while the halving writes stay above 64 pages
    // (500 scanned, then 250, 125, 62).
    assert_eq!(takes, 4, "{calls:?}");
    assert_eq!(calls.last(), Some(&"take"), "{calls:?}");
}

#[test]
fn zero_checks_see_a_single_set_byte_anywhere() {
    let mut page = vec![0u8; PAGE_SIZE + 5];
    assert!(send::is_zero(&page));
    for at in [0, 7, 8, PAGE_SIZE - 1, PAGE_SIZE + 4] {
        page[at] = 1;
        assert!(!send::is_zero(&page), "byte {at}");
        page[at] = 0;
    }
}

/// A guest with an early state, moved to a destination that checks it
/// with `check`: the source's outcome, the early states the destination
/// was given, and whether its memory was still untouched when it
/// finished (or gave up).
fn migrate_checked_early(
    check: fn(&[u8]) -> Result<(), String>,
) -> (Result<Report, MigrationError>, Vec<Vec<u8>>, bool) {
    let guest = Guest::new(40);
    guest.lock().unwrap().early_state = Some(b"as it began".to_vec());
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let dest = thread::spawn(move || {
        let memory = memory();
        let mut early = Vec::new();
        let taken = take_all(&mut there, &memory, None, &mut |state| {
            early.push(state.to_vec());
            check(state)
        });
        // As a VMM does: the source hears why.
        if let Err(e) = taken {
            abort(&mut there, &e.to_string());
        }
        let untouched = (0..PAGES).all(|page| page_of(&memory, page).iter().all(|&b| b == 0));
        (early, untouched)
    });
    let (report, _) = migrate_whole(&guest, &mut here, &generous());
    let (early, untouched) = dest.join().unwrap();
    (report, early, untouched)
}

#[test]
fn the_early_state_goes_ahead_of_the_pages() {
    let (report, early, untouched) = migrate_checked_early(|_| Ok(()));
    assert!(report.unwrap().confirmed);
    assert_eq!(early, [b"as it began".to_vec()]);
    assert!(!untouched, "the guest's pages came too");
}

#[test]
fn a_destination_that_cannot_take_the_early_state_refuses_the_vm_before_its_pages() {
    let (report, early, untouched) = migrate_checked_early(|_| Err("KVM refused MSR 0x4b564d02".into()));
    let err = report.unwrap_err();
    assert!(matches!(err, MigrationError::Aborted(_)), "{err}");
    assert!(err.to_string().contains("KVM refused MSR 0x4b564d02"), "{err}");
    assert_eq!(early.len(), 1);
    assert!(untouched, "a page was taken before the early state was refused");
}
