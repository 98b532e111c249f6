//! The source's side: pre-copy of a running guest's memory, then the
//! switch-over.
//!
//! Round 0 sends what the destination lacks (a clone's own pages when the
//! destination maps the same template; every non-zero page otherwise) while
//! the guest runs with dirty logging on. Each later round sends the pages
//! written during the one before. Once what is left would take no longer
//! than the downtime budget at the bandwidth measured, and has stopped
//! shrinking (a few rounds more at most), the source scans every page one
//! last time and the rounds go on from logs that are cheap to read
//! (`Source::narrow_dirty_log`) while they shrink; then the guest is
//! paused, the last dirty pages and the VM's state go, and the source waits for the
//! destination to say it holds everything (`Ready`). Only then does
//! it send `Go`, after which it never runs the guest again: a VM is never
//! running on both hosts (if `Go` is lost, it runs on neither, and a
//! supervisor sees that). A guest that dirties memory faster than the link
//! drains it is throttled (auto-converge); past `Limits::max_time` or
//! `max_rounds`, the migration is abandoned and the guest runs on, here.

use std::io::{BufWriter, Read, Write};
use std::time::{Duration, Instant};

use crate::guest_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::disks::OutgoingDisk;
use super::pages::PageSet;
use super::stream::{
    put_frame, put_pages, read_frame, write_frame, Frame, Hello, StreamError, Welcome, MAX_PAGES_PER_FRAME, PAGE_SIZE,
};
use super::trees::{OutgoingTree, TreeChanges};
use super::MigrationError;
use crate::devices::virtio::block::written::CHUNK;

/// When to switch over, and when to give up.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest the guest may stand still for the last round and its state.
    pub downtime: Duration,
    /// Past this, the migration is abandoned and the guest runs on here.
    pub max_time: Duration,
    /// As many pre-copy rounds at most (the same fate past it).
    pub max_rounds: u32,
    /// Pages go as LZ4 blocks where that makes them smaller: a guest
    /// kernel's pages shrink to about a third, at a cost in CPU time that a
    /// link slower than LZ4 (about 500 MB/s a core) never shows.
    pub compress: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            downtime: Duration::from_millis(50),
            max_time: Duration::from_secs(300),
            max_rounds: 100,
            compress: true,
        }
    }
}

/// Rounds past the first that fits the downtime budget, while the dirty
/// set still shrinks (as many again once the log is narrowed); and a set
/// too small to be worth another.
const EXTRA_ROUNDS: u32 = 4;
const SMALL_ENOUGH: u64 = 64;

/// Frames are gathered into writes of up to this much (larger pages
/// frames go as they are): each write wakes the destination.
const OUT_BUFFER: usize = 256 << 10;

/// Auto-converge, as QEMU's: a first throttle, its step, and its ceiling
/// (percent of the vCPUs' time taken away).
const THROTTLE_FIRST: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;

/// The throttle for a guest still outrunning the link under `current`:
/// a step up, or at once what would bring its writes under half the
/// link's rate if that is more (on a slow link, stepping 20, 30, ... 99
/// two rounds a step took minutes). Under a throttle the guest runs
/// about (100 - current)% of the time, so its unthrottled rate is
/// estimated back from `dirty_rate`: pages rewritten within a round count
/// once, which makes the estimate low; the duty cycle advancing only
/// between pages (`Source::tick`), a long wait on the link can leave the
/// guest running longer than its share, which makes it high.
pub(super) fn next_throttle(current: u8, dirty_rate: f64, link: f64) -> u8 {
    let step = match current {
        0 => THROTTLE_FIRST,
        t => t.saturating_add(THROTTLE_STEP),
    }
    .min(THROTTLE_MAX);
    let running = f64::from(100 - current.min(THROTTLE_MAX)) / 100.0;
    let unthrottled = dirty_rate / running;
    if !(unthrottled.is_finite() && unthrottled > 0.0 && link.is_finite() && link > 0.0) {
        return step;
    }
    let needed = (100.0 * (1.0 - link / (2.0 * unthrottled))).ceil();
    step.max(needed.clamp(0.0, f64::from(THROTTLE_MAX)) as u8)
}

/// The running VM as the sender sees it.
pub trait Source {
    fn memory(&self) -> &GuestMemoryMmap;
    /// Starts tracking the pages written from now on, by the guest or by
    /// the VMM's devices on its behalf.
    fn start_dirty_log(&mut self) -> std::io::Result<()>;
    /// The pages written since the last call (or the start), clearing the
    /// log — except the last call, with the guest paused, which need not.
    fn take_dirty(&mut self) -> std::io::Result<PageSet>;
    /// Before the pause: starts logs of every write that are cheap to
    /// read; `take_dirty` then scans everything once with the guest
    /// running, and after that (the last rounds, and once paused) reads
    /// only those logs. Ok(false): not supported (the pause scans
    /// everything).
    fn narrow_dirty_log(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }
    /// Ends every log (a narrowed one too); the guest runs at full speed.
    fn stop_dirty_log(&mut self);
    /// Stops every vCPU and device (the guest stands still).
    fn pause(&mut self) -> Result<(), String>;
    /// Lets them run again (a migration that failed before `Go`).
    fn resume(&mut self);
    /// Takes `percent` of the vCPUs' time away from now on (0: none).
    fn throttle(&mut self, percent: u8);
    /// Called between frames: a throttled source keeps its duty cycle here.
    fn tick(&mut self) {}
    /// Just before the pause, everything running: puts what was written
    /// so far on the storage the destination opens, so that the flush in
    /// the pause (`state`) finds little left to do.
    fn flush_ahead(&mut self) {}
    /// The paused VM's state, encoded for the destination.
    fn state(&mut self) -> Result<Vec<u8>, String>;
    /// The state as it stood when `start_dirty_log` began the log (the
    /// guest stood still for it then), encoded as `state` encodes it, if
    /// it was taken: it goes ahead of the pages (`Frame::EarlyState`).
    fn early_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    /// The disks that travel with the VM (none: the destination sees the
    /// same files).
    fn disks(&self) -> &[OutgoingDisk] {
        &[]
    }
    /// The shared directories whose files travel with the VM.
    fn trees(&mut self) -> &mut [OutgoingTree] {
        &mut []
    }
}

/// How a round went, as the sender reports it while it runs (the type
/// the control channel and hull's supervisor pass on).
pub use proto::MigrationProgress as Progress;

/// What a migration that ended well did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Pre-copy rounds, the final (paused) one not counted.
    pub rounds: u32,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    /// Pages sent as "all zeros", without their bytes.
    pub zero_pages: u64,
    pub total: Duration,
    /// From the pause to the destination's word that it runs the guest.
    pub downtime: Duration,
    pub max_throttle: u8,
    /// False if the link broke after `Go`: the destination may or may not run it.
    pub confirmed: bool,
}

/// Counts the bytes written through it, and the time the writes took
/// (the link's share of a round: the rest is reading pages and packing).
struct Counted<'a, S> {
    inner: &'a mut S,
    written: u64,
    writing: Duration,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: &'a mut S) -> Self {
        Counted {
            inner,
            written: 0,
            writing: Duration::ZERO,
        }
    }
}

impl<S: Write> Write for Counted<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let started = Instant::now();
        let n = self.inner.write(buf)?;
        self.writing += started.elapsed();
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pages and zero runs on their way into frames.
struct Batch {
    first: u64,
    data: Vec<u8>,
    zeros_first: u64,
    zeros: u32,
    pages_sent: u64,
    zero_pages: u64,
    /// The bytes LZ4 kept off the link.
    saved: u64,
    compress: bool,
    /// A page frame being made, when LZ4 packs it (timed apart from the link).
    packed: Vec<u8>,
    /// The time LZ4 took over how many bytes of pages.
    packing: Duration,
    packed_input: u64,
}

impl Batch {
    fn new(compress: bool) -> Batch {
        Batch {
            first: 0,
            data: Vec::with_capacity(MAX_PAGES_PER_FRAME * PAGE_SIZE),
            zeros_first: 0,
            zeros: 0,
            pages_sent: 0,
            zero_pages: 0,
            saved: 0,
            compress,
            packed: Vec::new(),
            packing: Duration::ZERO,
            packed_input: 0,
        }
    }

    /// Adds guest page `page`, read from `memory` straight into the frame
    /// being made (one copy; a zero page is taken back out of it).
    fn page(
        &mut self,
        w: &mut impl Write,
        memory: &GuestMemoryMmap,
        page: u64,
        skip_zeros: bool,
    ) -> Result<(), MigrationError> {
        // A page that does not follow the frame's (or finds it full) ends
        // it, zero or not: a zero page ends it too.
        let next = self.first + (self.data.len() / PAGE_SIZE) as u64;
        if !self.data.is_empty() && (next != page || self.data.len() == MAX_PAGES_PER_FRAME * PAGE_SIZE) {
            self.flush_data(w)?;
        }
        let at = self.data.len();
        self.data.resize(at + PAGE_SIZE, 0);
        // The guest may be writing this page as it is read: then it is in
        // the dirty log again and goes again in the next round.
        memory
            .read_slice(&mut self.data[at..], GuestAddress(page * PAGE_SIZE as u64))
            .map_err(|e| MigrationError::Memory(format!("reading guest page {page}: {e}")))?;
        let zero = is_zero(&self.data[at..]);
        if !zero {
            self.flush_zeros(w)?;
            if at == 0 {
                self.first = page;
            }
            self.pages_sent += 1;
            return Ok(());
        }
        self.data.truncate(at);
        if skip_zeros {
            return Ok(self.flush(w)?);
        }
        self.pages_sent += 1;
        self.flush_data(w)?;
        if self.zeros > 0 && self.zeros_first + u64::from(self.zeros) != page {
            self.flush_zeros(w)?;
        }
        if self.zeros == 0 {
            self.zeros_first = page;
        }
        self.zeros += 1;
        self.zero_pages += 1;
        Ok(())
    }

    /// Writes the frame being made; its buffer is kept for the next.
    fn flush_data(&mut self, w: &mut impl Write) -> Result<(), StreamError> {
        if self.data.is_empty() {
            return Ok(());
        }
        if !self.compress {
            put_pages(w, self.first, &self.data, false)?;
        } else {
            let (started, input) = (Instant::now(), self.data.len() as u64);
            self.packed.clear();
            self.saved += put_pages(&mut self.packed, self.first, &self.data, true)?;
            self.packing += started.elapsed();
            self.packed_input += input;
            w.write_all(&self.packed).map_err(StreamError::Io)?;
        }
        self.data.clear();
        Ok(())
    }

    fn flush_zeros(&mut self, w: &mut impl Write) -> Result<(), StreamError> {
        if self.zeros > 0 {
            put_frame(
                w,
                &Frame::Zeros {
                    first: self.zeros_first,
                    count: self.zeros,
                },
            )?;
            self.zeros = 0;
        }
        Ok(())
    }

    fn flush(&mut self, w: &mut impl Write) -> Result<(), StreamError> {
        self.flush_data(w)?;
        self.flush_zeros(w)
    }
}

/// Whether every byte of `bytes` is zero: 128 bytes at a time OR-ed
/// together, which the compiler keeps in vector registers (seven times
/// faster than a test of each eight bytes; every page sent is tested,
/// those of the pause included).
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(128);
    let zero_block = |block: &[u8]| {
        block
            .chunks_exact(8)
            .fold(0u64, |any, w| any | u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])))
            == 0
    };
    blocks.all(zero_block) && blocks.remainder().iter().all(|&b| b == 0)
}

/// The link's measured rates, for deciding whether LZ4 pays in the pause.
#[derive(Default)]
struct Rates {
    /// Bytes a second on the wire, reading and packing pages left out (the best round's).
    wire: f64,
    /// What LZ4 made of what it was given, over every round.
    packed_out: u64,
    packed_in: u64,
}

impl Rates {
    /// Whether the pause's pages go faster as LZ4 blocks: packing a byte
    /// and sending what is left of it takes less than sending it.
    fn lz4_pays(&self, batch: &Batch) -> bool {
        let packing = batch.packing.as_secs_f64();
        if self.wire <= 0.0 || packing <= 0.0 || self.packed_in == 0 || batch.packed_input == 0 {
            return true;
        }
        let lz4_rate = batch.packed_input as f64 / packing;
        let kept = self.packed_out as f64 / self.packed_in as f64;
        1.0 / lz4_rate + kept / self.wire < 1.0 / self.wire
    }
}

/// Sends `set`'s pages as they are now; zero pages are left out when the
/// destination's copy is known to be zero (`skip_zeros`).
fn send_pages(
    w: &mut impl Write,
    source: &mut dyn Source,
    set: &PageSet,
    skip_zeros: bool,
    batch: &mut Batch,
) -> Result<(), MigrationError> {
    for (first, count) in set.runs() {
        for page in first..first + count {
            batch.page(w, source.memory(), page, skip_zeros)?;
            // A throttled guest's duty cycle is kept by the clock, not by
            // how many pages go (late rounds send few).
            source.tick();
        }
    }
    batch.flush(w)?;
    Ok(())
}

/// Sends each travelling disk's `chunk_sets` (in `Source::disks`' order).
fn send_disks(
    w: &mut impl Write,
    source: &dyn Source,
    chunk_sets: &[PageSet],
    skip_zeros: bool,
    batch: &mut Batch,
) -> Result<(), MigrationError> {
    for (disk, chunks) in source.disks().iter().zip(chunk_sets) {
        batch.saved += disk.send(w, chunks, skip_zeros, batch.compress)?;
    }
    Ok(())
}

/// Sends each travelling tree's `changes` (in `Source::trees`' order).
fn send_trees(
    w: &mut impl Write,
    source: &mut dyn Source,
    changes: &[TreeChanges],
    batch: &mut Batch,
) -> Result<(), MigrationError> {
    for (tree, changes) in source.trees().iter_mut().zip(changes) {
        batch.saved += tree.send(w, changes, batch.compress)?.saved;
    }
    Ok(())
}

/// What changed in each travelling tree since it was last sent.
fn tree_changes(source: &mut dyn Source) -> Result<Vec<TreeChanges>, MigrationError> {
    source
        .trees()
        .iter()
        .map(|tree| {
            tree.changes()
                .map_err(|e| MigrationError::Tree(format!("walking shared directory {}: {e}", tree.share)))
        })
        .collect()
}

fn tree_bytes(changes: &[TreeChanges]) -> u64 {
    changes.iter().map(TreeChanges::bytes).sum()
}

/// The bytes of disk the chunk sets stand for (at most: a last chunk may be short).
fn chunk_bytes(chunk_sets: &[PageSet]) -> u64 {
    chunk_sets.iter().map(|s| s.count() * CHUNK).sum()
}

/// Migrates the VM `source` over `conn`. `hello` announces it;
/// `first_round(has_template)` is what round 0 sends (a clone's own pages if
/// the destination has its template, else every page), asked for once the
/// dirty log runs (so that no write falls between the two). On an error before
/// `Go` the guest runs on here, unthrottled, and the destination is told.
pub fn send<C: Read + Write>(
    conn: &mut C,
    source: &mut dyn Source,
    hello: Hello,
    first_round: &dyn Fn(bool) -> std::io::Result<PageSet>,
    limits: &Limits,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, MigrationError> {
    let mut paused = false;
    let result = precopy_and_switch(conn, source, hello, first_round, limits, progress, &mut paused)
        .map_err(|e| its_reason(conn, e));
    source.stop_dirty_log();
    source.disks().iter().for_each(|d| d.written.stop());
    if let Err(e) = &result {
        // The guest first: telling the destination may block on the link.
        source.throttle(0);
        if paused {
            source.resume();
        }
        if !matches!(e, MigrationError::Refused(_) | MigrationError::Aborted(_)) {
            let _ = write_frame(conn, &Frame::Abort { reason: e.to_string() });
        }
    }
    result
}

/// A destination that gives up says why and hangs up, maybe while this
/// side still writes (a round's pages it cannot take): a write then fails
/// on a closed connection, and the reason it left is read instead of the
/// broken pipe.
fn its_reason(conn: &mut impl Read, failed: MigrationError) -> MigrationError {
    let MigrationError::Stream(StreamError::Io(e)) = &failed else {
        return failed;
    };
    if !matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    ) {
        return failed;
    }
    // The round trip before each round leaves nothing else unread.
    match read_frame(conn) {
        Ok(Some(Frame::Abort { reason })) => MigrationError::Aborted(reason),
        _ => failed,
    }
}

/// `send`'s work; `paused` says whether the guest stands still when it fails.
fn precopy_and_switch<C: Read + Write>(
    conn: &mut C,
    source: &mut dyn Source,
    hello: Hello,
    first_round: &dyn Fn(bool) -> std::io::Result<PageSet>,
    limits: &Limits,
    progress: &mut dyn FnMut(&Progress),
    paused: &mut bool,
) -> Result<Report, MigrationError> {
    let started = Instant::now();
    write_frame(conn, &Frame::Hello(hello))?;
    let has_template = match read_frame(conn)? {
        Some(Frame::Welcome(Welcome::Accepted { has_template })) => has_template,
        Some(Frame::Welcome(Welcome::Refused { reason })) => return Err(MigrationError::Refused(reason)),
        // A destination that could not read the hello says why.
        Some(Frame::Abort { reason }) => return Err(MigrationError::Refused(reason)),
        other => return Err(unexpected("a welcome", other)),
    };
    source
        .start_dirty_log()
        .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
    let mut set = first_round(has_template).map_err(|e| MigrationError::Source(format!("the VM's own pages: {e}")))?;
    // A destination that cannot take the VM's state says so now, before
    // the memory travels (its answer is read at round 0's end).
    if let Some(early) = source.early_state().map_err(MigrationError::Source)? {
        write_frame(conn, &Frame::EarlyState(early))?;
    }
    // The disks' writes are logged from before their first pass reads them.
    let mut chunk_sets = Vec::new();
    for disk in source.disks() {
        disk.written.start();
        let allocated = disk
            .allocated()
            .map_err(|e| MigrationError::Disk(format!("disk {}'s extents: {e}", disk.disk)))?;
        chunk_sets.push(allocated);
    }
    // Each tree whole, first (its destination is empty).
    let mut tree_sets = tree_changes(source)?;
    let mut skip_zeros = !has_template;
    let mut batch = Batch::new(limits.compress);
    let mut total_bytes = 0;
    let mut round = 0u32;
    let mut throttle = 0u8;
    let mut max_throttle = 0u8;
    let mut rounds_not_shrinking = 0;
    let mut extra_rounds = 0;
    // Whether the log is narrowed: the rounds from then on read cheap logs.
    let mut narrowed = false;
    // The link's throughput: the best a round reached, from its first page
    // sent to the destination's receipt. A small round spends most of its
    // time on a round trip and would make the link look slower than it is.
    let mut link = 1.0f64;
    let mut rates = Rates::default();
    loop {
        let round_started = Instant::now();
        let pages_before = batch.pages_sent;
        let saved_before = batch.saved;
        let zeros_before = batch.zero_pages;
        let mut counted = Counted::new(&mut *conn);
        let mut out = BufWriter::with_capacity(OUT_BUFFER, &mut counted);
        send_pages(&mut out, source, &set, skip_zeros, &mut batch)?;
        // The destination's copies start empty: zeros need not go first.
        send_disks(&mut out, source, &chunk_sets, round == 0, &mut batch)?;
        send_trees(&mut out, source, &tree_sets, &mut batch)?;
        write_frame(
            &mut out,
            &Frame::RoundEnd {
                round,
                pages: batch.pages_sent - pages_before,
            },
        )?;
        drop(out);
        let (bytes, writing) = (counted.written, counted.writing);
        let waiting = Instant::now();
        // Once the destination holds the round, nothing is left in flight:
        // the time so far is the link's, and a pause from here waits for
        // no backlog.
        match read_frame(conn)? {
            Some(Frame::RoundIn { round: done }) if done == round => {}
            Some(Frame::Abort { reason }) => return Err(MigrationError::Aborted(reason)),
            other => return Err(unexpected("the round's receipt", other)),
        }
        // The link's own time: writes that waited for it, then its last bytes in.
        let on_wire = writing + waiting.elapsed();
        let delivering = round_started.elapsed().max(Duration::from_micros(100));
        // What the round carried before LZ4, its zero pages (a flag on the
        // wire) counted whole: estimates are of pages to go, whatever they
        // hold. Counted as the few bytes they are, a guest rewriting zeros
        // looked like one outrunning the link, and was throttled.
        let packed_in = bytes + (batch.saved - saved_before);
        let carried = packed_in + (batch.zero_pages - zeros_before) * PAGE_SIZE as u64;
        link = link.max(carried as f64 / delivering.as_secs_f64());
        rates.wire = rates
            .wire
            .max(bytes as f64 / on_wire.max(Duration::from_micros(100)).as_secs_f64());
        rates.packed_in += packed_in;
        rates.packed_out += bytes;
        source.tick();
        let next = source
            .take_dirty()
            .map_err(|e| MigrationError::DirtyLog(e.to_string()))?;
        let next_chunks: Vec<PageSet> = source.disks().iter().map(OutgoingDisk::written_since).collect();
        let next_trees = tree_changes(source)?;
        total_bytes += bytes;
        skip_zeros = false;
        let elapsed = round_started.elapsed().max(Duration::from_micros(100));
        let bandwidth = link;
        let dirty_bytes = next.count() * PAGE_SIZE as u64 + chunk_bytes(&next_chunks) + tree_bytes(&next_trees);
        let expected_downtime = Duration::from_secs_f64(dirty_bytes as f64 / bandwidth);
        progress(&Progress {
            round,
            pages_sent: batch.pages_sent - pages_before,
            bytes_sent: bytes,
            dirty_pages: next.count(),
            dirty_rate: (dirty_bytes as f64 / elapsed.as_secs_f64()) as u64,
            bandwidth: bandwidth as u64,
            expected_downtime_ms: expected_downtime.as_millis() as u64,
            throttle,
        });
        let set_bytes = set.count() * PAGE_SIZE as u64 + chunk_bytes(&chunk_sets) + tree_bytes(&tree_sets);
        let shrinking = dirty_bytes * 4 < set_bytes * 3 && dirty_bytes > SMALL_ENOUGH * PAGE_SIZE as u64;
        set = next;
        chunk_sets = next_chunks;
        tree_sets = next_trees;
        round += 1;
        // Within the budget, a set still shrinking by a quarter a round
        // (an idle guest's) is worth another round: what is left is sent
        // with the guest paused, at a rate the estimate overstates.
        let fits = expected_downtime <= limits.downtime;
        if narrowed {
            // The last rounds, from the cheap logs: on while they fit and
            // shrink, a few at most. The first one also waited for the
            // scan, and so let the guest write more: it is not held
            // against them unless what it left is already small.
            let small = dirty_bytes <= SMALL_ENOUGH * PAGE_SIZE as u64;
            if !fits || small || extra_rounds == EXTRA_ROUNDS || (!shrinking && extra_rounds > 0) {
                break;
            }
            extra_rounds += 1;
            continue;
        }
        if fits && (!shrinking || extra_rounds == EXTRA_ROUNDS) {
            // The guest runs at full speed from here: a held phase of the
            // throttle must not run on into the pause, where the downtime
            // would not count it.
            let outran_the_link = throttle > 0;
            throttle = 0;
            source.throttle(0);
            // The costly last scan of every page runs now, with the guest
            // running. A guest that does not outrun the link then gets
            // rounds from cheap logs while they shrink: the pause sends
            // only the last short round's writes, not that scan's and the
            // round's before it. One that does would write more during a
            // round than it sends.
            if !narrow_and_scan(source, &mut set)? || outran_the_link {
                break;
            }
            narrowed = true;
            extra_rounds = 0;
            continue;
        }
        if fits {
            extra_rounds += 1;
        }
        if started.elapsed() >= limits.max_time || round >= limits.max_rounds {
            return Err(MigrationError::DidNotConverge {
                rounds: round,
                seconds: started.elapsed().as_secs(),
                left: dirty_bytes,
            });
        }
        // The guest wrote more than half of what this round sent: it is
        // outrunning the link; two such rounds in a row and it is slowed.
        rounds_not_shrinking = match dirty_bytes * 2 > carried {
            true => rounds_not_shrinking + 1,
            false => 0,
        };
        if rounds_not_shrinking >= 2 && throttle < THROTTLE_MAX {
            throttle = next_throttle(throttle, dirty_bytes as f64 / elapsed.as_secs_f64(), link);
            max_throttle = max_throttle.max(throttle);
            source.throttle(throttle);
            rounds_not_shrinking = 0;
        }
    }

    source.flush_ahead();
    // Switch-over: the guest stands still from here.
    // On a link faster than LZ4 packs, the pause sends pages as they are.
    batch.compress = batch.compress && rates.lz4_pays(&batch);
    if crate::trace::enabled() {
        crate::trace::mark(&format!(
            "migration: pausing after {round} rounds, {} pages left ({})",
            set.count(),
            match batch.compress {
                true => "as LZ4 blocks",
                false => "as they are",
            }
        ));
    }
    let paused_at = Instant::now();
    source.pause().map_err(MigrationError::Source)?;
    crate::trace::mark("migration: paused");
    *paused = true;
    set.add(
        &source
            .take_dirty()
            .map_err(|e| MigrationError::DirtyLog(e.to_string()))?,
    );
    // The logs stay on until the end (`send`): turning KVM's off changes a
    // memory slot, work in proportion to the guest's memory, not for the pause.
    for (disk, chunks) in source.disks().iter().zip(&mut chunk_sets) {
        chunks.add(&disk.written_since());
    }
    // Walked again: what changed since the last walk, and what it found
    // and was not sent (the guest stands still now).
    let tree_sets = tree_changes(source)?;
    crate::trace::mark("migration: last dirty pages read");
    let mut counted = Counted::new(&mut *conn);
    let mut out = BufWriter::with_capacity(OUT_BUFFER, &mut counted);
    send_pages(&mut out, source, &set, false, &mut batch)?;
    send_disks(&mut out, source, &chunk_sets, false, &mut batch)?;
    send_trees(&mut out, source, &tree_sets, &mut batch)?;
    // Sent now: a destination on another core takes them while this one
    // captures the state.
    out.flush().map_err(StreamError::Io)?;
    crate::trace::mark("migration: last pages sent");
    let state = source.state().map_err(MigrationError::Source)?;
    if crate::trace::enabled() {
        crate::trace::mark(&format!("migration: state encoded, {} bytes", state.len()));
    }
    put_frame(&mut out, &Frame::State(state))?;
    write_frame(&mut out, &Frame::Done)?;
    drop(out);
    crate::trace::mark("migration: state sent");
    total_bytes += counted.written;
    match read_frame(conn)? {
        Some(Frame::Ready) => {}
        Some(Frame::Abort { reason }) => return Err(MigrationError::Aborted(reason)),
        other => return Err(unexpected("ready", other)),
    }
    crate::trace::mark("migration: destination ready");
    write_frame(conn, &Frame::Go)?;
    // Committed: from here this side never runs the guest again.
    *paused = false;
    let confirmed = matches!(read_frame(conn), Ok(Some(Frame::Resumed)));
    crate::trace::mark("migration: destination runs the guest");
    Ok(Report {
        rounds: round,
        bytes_sent: total_bytes,
        pages_sent: batch.pages_sent,
        zero_pages: batch.zero_pages,
        total: started.elapsed(),
        downtime: paused_at.elapsed(),
        max_throttle,
        confirmed,
    })
}

/// Narrows the source's log and adds its last full scan (made with the
/// guest running) to `set`; false if the source cannot narrow it (its
/// pause then scans everything).
fn narrow_and_scan(source: &mut dyn Source, set: &mut PageSet) -> Result<bool, MigrationError> {
    match source.narrow_dirty_log() {
        Ok(true) => {
            set.add(
                &source
                    .take_dirty()
                    .map_err(|e| MigrationError::DirtyLog(e.to_string()))?,
            );
            crate::trace::mark("migration: written pages scanned");
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(e) => {
            eprintln!("hull-vmm: the pause scans every page: {e}");
            Ok(false)
        }
    }
}

pub(super) fn unexpected(wanted: &str, got: Option<Frame>) -> MigrationError {
    MigrationError::Unexpected(match got {
        None => format!("the peer closed the stream where {wanted} was due"),
        Some(frame) => format!("{} where {wanted} was due", frame_name(&frame)),
    })
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a hello",
        Frame::Welcome(_) => "a welcome",
        Frame::Pages { .. } => "pages",
        Frame::Zeros { .. } => "zero pages",
        Frame::Disk { .. } => "disk data",
        Frame::DiskZeros { .. } => "disk zeros",
        Frame::TreeEntry(_) => "a shared directory's entry",
        Frame::TreeData { .. } => "a shared directory's file data",
        Frame::RoundEnd { .. } => "a round's end",
        Frame::RoundIn { .. } => "a round's receipt",
        Frame::State(_) => "the VM state",
        Frame::EarlyState(_) => "the VM's early state",
        Frame::Done => "done",
        Frame::Ready => "ready",
        Frame::Go => "go",
        Frame::Resumed => "resumed",
        Frame::Abort { .. } => "an abort",
    }
}
