//! The durable log of one group on one core.
//!
//! # Shape
//! Frames (see [`crate::frame`]) are packed back to back into segment files of
//! [`LogConfig::segment_bytes`], opened with O_DIRECT and written through io_uring from 4 KiB
//! aligned buffers. Segments are prepared before use (zero-filled once, or recycled after a
//! trim) so that a flush is a pure overwrite and its fdatasync commits no file-system
//! metadata; see [`segment`] for the names that keep this safe.
//!
//! # Group commit, adaptive, without a timer
//! An append copies its frame into the *open buffer* (the one copy between the caller's bytes
//! and the disk) and schedules a flush pass. The pass runs after the tasks that are ready now,
//! so everything appended in the same scheduler turn joins one flush. While flushes are in
//! flight, new appends keep gathering in the open buffer; when a flush completes, the next one
//! takes everything gathered. So light load gets the latency of one flush of one block, and
//! heavy load gets flushes of up to [`LogConfig::flush_bytes_max`].
//!
//! A flush writes the blocks from `align_down(start)` to `align_up(end)`: the partial last
//! block is written padded with zeros and *rewritten* by the next flush, which starts at that
//! block. Two writes must never race on one block, so a second flush starts while one is in
//! flight only if the one in flight ended on a block boundary. Under load (at least
//! [`LogConfig::pipeline_bytes`] gathered) flushes are therefore cut at the last block
//! boundary, leaving the partial tail to the next flush, which may then start while this one
//! is in flight: up to [`LogConfig::flushes_in_flight_max`] flushes keep the device busy. The
//! durable index advances only over the contiguous prefix of completed flushes.
//!
//! How a flush becomes durable is [`LogConfig::sync`]: a write linked to an fdatasync (one
//! submission), a write to an `O_DSYNC` segment, or, adaptively, a write flagged `RWF_DSYNC`
//! for a flush that goes out alone under light load (one operation, where one appender waits
//! for just that flush) and write + fdatasync for flushes that pipeline. Each flush is made
//! durable by its own sync; none relies on a later one's (with FUA, an `RWF_DSYNC` write makes
//! only its own range durable).
//!
//! # Durability and failure
//! A write or fdatasync error poisons the log: every waiting append gets the error and every
//! later call fails with [`LogError::Poisoned`]. Retrying an fdatasync after a failure proves
//! nothing on Linux (the kernel may have dropped the dirty state), so the log never pretends;
//! reopening runs recovery, which reads what is really on disk. A full file system is
//! different: it shows when a new segment cannot be prepared, nothing has been written, and
//! the append fails with [`LogError::NoSpace`] while the log stays usable. Spares are prepared
//! ahead of need, so the lack of space is usually known a whole segment before an append needs
//! one: [`Log::space_for`] tells a caller that must not accept what it could not write (the
//! consensus driver) to refuse instead, and the log tries again to prepare a segment while
//! refusing, so appends resume by themselves once space is freed.
//!
//! # Recovery
//! Opening scans every segment and verifies every frame. A torn frame at the tail (a crash mid
//! write) is cut off and the blocks after it are zeroed. A bad frame followed by a valid frame
//! of a later index, further than [`LogConfig::torn_window_bytes`] (the most a crash can leave
//! of writes that were in flight) is corruption of entries that may have been acknowledged:
//! open fails with [`LogError::Corruption`], naming the file, offset and index range. Within
//! that window the two cannot be told apart from the bytes alone, and the log treats it as a
//! torn tail.

pub mod config;
pub mod error;
pub mod hardstate;
mod io;
pub mod segment;

use std::cell::RefCell;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::rt::WriteSync;
use crate::rt::fs::{DmaBuffer, DmaFile, ReadResult};
use hdrhistogram::Histogram;

pub use config::{BLOCK, IoEngine, LogConfig, SyncMethod};
pub use error::{LogError, LogResult};
pub use hardstate::{HardState, HardStateFile};
pub use io::{direct_io_effective, faults, filesystem_type};

use crate::frame::{EncodeError, EntryRef, Frame, FrameEncoder};
use segment::{FileKind, FrameLoc, ScanCursor, Stop};

/// Spares a log keeps whatever it filled between its recent trims (when `spare_segments_max`
/// allows): a small, steady log then never deletes and zero-fills segments as its rate wobbles
/// from one trim to the next. Each deletion is a 64 MiB discard on a file system mounted with
/// `discard`, which stalled the writes beside it by 16-29 ms on the test VM.
const SPARES_KEPT_MIN: usize = 8;

/// Spares beyond what a log wants that one trim deletes, at most.
const SPARES_PRUNED_MAX: usize = 2;

/// While the file system is full, how often [`Log::space_for`] tries again to prepare a spare.
pub const SPACE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

const fn align_down(v: u64) -> u64 {
    v & !(BLOCK as u64 - 1)
}

const fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK as u64 - 1)
}

/// Counters and the flush latency histogram of one log.
#[derive(Debug, Clone)]
pub struct LogStats {
    /// Frames appended.
    pub frames_appended: u64,
    /// Entries appended.
    pub entries_appended: u64,
    /// Frame bytes appended.
    pub bytes_appended: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Bytes written by flushes (whole blocks, counting rewritten partial blocks).
    pub bytes_written: u64,
    /// Flushes completed that were one write flagged `RWF_DSYNC` (with
    /// [`SyncMethod::Adaptive`]; the others were a write and an fdatasync).
    pub dsync_flushes: u64,
    /// Segments put in use.
    pub segments_activated: u64,
    /// Segments prepared by zero-filling.
    pub segments_zero_filled: u64,
    /// Segments recycled after a trim.
    pub segments_recycled: u64,
    /// Spare segments deleted because the log consumed fewer between trims than were kept.
    pub spares_deleted: u64,
    /// Most flushes that were in flight at once.
    pub peak_flushes_in_flight: u64,
    /// Flushes in flight integrated over time, in flush-nanoseconds: its growth over an
    /// interval divided by the interval's nanoseconds is the mean number in flight (how well
    /// the pipeline kept the device busy), up to the last change of that number.
    pub flushes_in_flight_ns: u64,
    /// Appends that waited for room in the open buffer (backpressure: every flush slot busy
    /// and the buffer full, or a roll), and their time waiting, summed, in nanoseconds.
    pub space_waits: u64,
    /// See `space_waits`.
    pub space_wait_ns: u64,
    /// Frames that reads took from disk (the rest came from memory).
    pub frames_read_from_disk: u64,
    /// Reads that found a frame neither in memory nor durable and waited for its flush
    /// (expected to stay 0: a buffer in flight stays in memory until its write completes).
    pub reads_waited_for_flush: u64,
    /// Time of each flush (write, plus fdatasync where used), nanoseconds.
    pub flush_latency_ns: Histogram<u64>,
    /// Bytes written by each flush (whole blocks).
    pub flush_bytes: Histogram<u64>,
}

impl LogStats {
    fn new() -> Self {
        LogStats {
            frames_appended: 0,
            entries_appended: 0,
            bytes_appended: 0,
            flushes: 0,
            bytes_written: 0,
            dsync_flushes: 0,
            segments_activated: 0,
            segments_zero_filled: 0,
            peak_flushes_in_flight: 0,
            flushes_in_flight_ns: 0,
            space_waits: 0,
            space_wait_ns: 0,
            frames_read_from_disk: 0,
            reads_waited_for_flush: 0,
            segments_recycled: 0,
            spares_deleted: 0,
            flush_latency_ns: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            flush_bytes: Histogram::new_with_bounds(BLOCK as u64, 1 << 40, 2)
                .expect("valid histogram bounds"),
        }
    }
}

/// What [`Log::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Frames verified.
    pub frames: u64,
    /// Bytes of a torn tail that were cut off (0 when the log ended cleanly).
    pub torn_bytes_cut: u64,
    /// Why the scan of the last segment stopped.
    pub tail: String,
}

/// A range of log indexes, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRange {
    /// First index.
    pub first: u64,
    /// Last index.
    pub last: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
    file: Rc<DmaFile>,
    /// Highest index any frame ever written into this file carries (for recycling).
    max_index: u64,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    max_index: u64,
}

/// The buffer where appends gather for the active segment.
#[derive(Debug)]
struct OpenBuf {
    segment: u64,
    /// File offset of `buf[0]`; block aligned.
    base: u64,
    buf: DmaBuffer,
    /// Bytes of `buf` holding frames (from `base`).
    len: usize,
    /// Bytes of `buf` already covered by a flush (the carried partial block).
    flushed_len: usize,
}

#[derive(Debug)]
struct Flush {
    id: u64,
    /// Segment file offset where this flush's bytes end.
    end: u64,
    /// Bytes of frames it carries (new ones, not the rewritten start of its first block).
    fresh: usize,
    /// Last index of the frames this flush completes (0: none).
    last_index: u64,
    done: bool,
    /// When its write was handed to the kernel (set at completion).
    submitted: Option<Instant>,
    /// Made durable by one `RWF_DSYNC` write (see [`SyncMethod::Adaptive`]).
    dsync: bool,
}

/// When the flush that made an index durable was submitted and completed (for the latency
/// profile, see [`Log::flush_times`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTimes {
    /// The flush's write was handed to the kernel.
    pub submitted: Instant,
    /// The durable index moved past the flush's frames (its write and fdatasync completed,
    /// and every flush before it).
    pub durable: Instant,
}

/// Flushes whose times [`Log::flush_times`] remembers (the most recent ones).
const FLUSH_TIMES_KEPT: usize = 64;

/// A flushed (or in-flight) buffer kept to serve reads of recent frames from memory.
#[derive(Debug)]
struct CachedBuf {
    segment: u64,
    base: u64,
    data: CacheData,
}

/// A large flush keeps its DMA buffer; a small one is copied out at completion so that the
/// cache does not pin a whole `flush_bytes_max` allocation for a few blocks of data.
#[derive(Debug, Clone)]
enum CacheData {
    Dma(Rc<DmaBuffer>),
    Heap(Rc<[u8]>),
}

impl CacheData {
    fn bytes(&self) -> &[u8] {
        match self {
            CacheData::Dma(b) => b.as_bytes(),
            CacheData::Heap(v) => v,
        }
    }
}

impl CachedBuf {
    /// Memory this entry holds: a DMA buffer's whole allocation (`cap`), or the copy's length.
    fn charge(&self, cap: usize) -> usize {
        match &self.data {
            CacheData::Dma(_) => cap,
            CacheData::Heap(v) => v.len(),
        }
    }
}

/// A frame's bytes in memory (see [`State::in_memory`]).
enum InMemory<'a> {
    /// In the open buffer (the slice is the frame).
    Open(&'a [u8]),
    /// In a buffer in flight or recently flushed, from this offset.
    Cached(&'a CachedBuf, usize),
}

struct Waiter {
    index: u64,
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// Reversed, so the `BinaryHeap` pops the lowest index first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.index.cmp(&self.index)
    }
}

struct State {
    cfg: LogConfig,
    dir: PathBuf,
    /// Segments in `seq` order; the last is the active one. Each one's entries end where the
    /// next one's `first_index` begins.
    segments: VecDeque<Segment>,
    /// Every frame of the log, in index order (one record per frame, not per entry).
    frames: VecDeque<FrameLoc>,
    /// First index of the log. `first_index <= last_index + 1`; equal when the log is empty.
    first_index: u64,
    /// Last index appended.
    last_index: u64,
    /// Term of `last_index` (or of the entry before `first_index` when empty, if known).
    last_term: u64,
    /// Highest index known durable. Invariant: `durable_index <= last_index`, and every index
    /// up to it was covered by a completed flush, each made durable by its own sync (its
    /// fdatasync, its `RWF_DSYNC` write, or the segment's `O_DSYNC`): none relies on a later
    /// flush's sync to cover it (a FUA write makes only its own range durable).
    durable_index: u64,
    next_seq: u64,
    spares: Vec<Spare>,
    spare_counter: u64,
    preparing_spare: bool,
    /// `stats.segments_activated` at the last trim that freed segments, and the segments
    /// activated in the two intervals between such trims before it (newest first): what the
    /// log consumes between trims, which is how many spares are worth keeping.
    activated_at_trim: u64,
    used_between_trims: [u64; 2],
    open: Option<OpenBuf>,
    /// Ends (segment offset) and last indexes of frames appended but not yet in any flush.
    unflushed: VecDeque<(u64, u64)>,
    inflight: VecDeque<Flush>,
    /// When `inflight.len()` last changed (for [`LogStats::flushes_in_flight_ns`]).
    inflight_since: Instant,
    next_flush_id: u64,
    /// The flush path of linked write + fdatasync, when `cfg.io_engine` is `Uring` and it
    /// could be set up.
    side: Option<crate::rt::fs::FlushRing>,
    flush_scheduled: bool,
    /// A segment roll, truncation or reset is under way: appends wait.
    exclusive: bool,
    /// A trim is under way: truncations and resets wait.
    trimming: bool,
    /// Queue of appenders waiting for space: tickets `space_head..space_tail` are waiting,
    /// `space_head` goes next. Tickets given up while not at the head are in `space_abandoned`.
    space_head: u64,
    space_tail: u64,
    space_abandoned: Vec<u64>,
    /// The ticket holders asleep, by ticket: the bytes each wants and its waker. Only those
    /// that can go are woken (see [`State::wake_space`]), never the whole queue.
    space_waiters: BTreeMap<u64, (usize, Waker)>,
    poisoned: Option<LogError>,
    /// The last attempt to prepare a segment failed for lack of space (when, and the error),
    /// and none has succeeded since: [`Log::space_for`] refuses appends that would need a new
    /// segment while no spare is ready.
    no_space: Option<(Instant, LogError)>,
    /// The last preparation of a segment failed for another reason than a lack of space (an
    /// I/O error): [`Log::space_ready`] then lets the write find it out, and the group stop.
    preparation_failed: bool,
    closed: bool,
    durable_waiters: BinaryHeap<Waiter>,
    /// Tasks waiting for any change (a flush, a roll finishing, a preparation) other than
    /// appenders waiting for space, which wait in `space_waiters`.
    change_waiters: Vec<Waker>,
    epoch: u64,
    /// Oldest first, in file order (segment, then base): flushes are cut in that order.
    recent: VecDeque<CachedBuf>,
    recent_bytes: usize,
    /// Whole copies of frames that a pipelined flush cut in two (see [`State::assemble`]),
    /// oldest first, each keyed by its own offset.
    split: VecDeque<CachedBuf>,
    split_bytes: usize,
    stats: LogStats,
    /// `(last_index, times)` of the latest flushes that advanced the durable index, oldest
    /// first; at most [`FLUSH_TIMES_KEPT`].
    flush_times: VecDeque<(u64, FlushTimes)>,
}

/// Free space, in segments, below which [`Log::space_tight`] says a preparation may fail
/// (room for the one under way and a few more, as other logs may share the file system).
const SPACE_TIGHT_SEGMENTS: u64 = 4;

impl State {
    /// Spares worth keeping: as many segments as the log put in use between its last two
    /// trims that freed segments (the larger), plus the `spare_segments` kept ready ahead of
    /// need, so that the next interval recycles instead of zero-filling; at least
    /// [`SPARES_KEPT_MIN`], at most `spare_segments_max`.
    fn spares_wanted(&self) -> usize {
        let used = self.used_between_trims[0].max(self.used_between_trims[1]) as usize;
        let max = self.cfg.spare_segments_max.max(self.cfg.spare_segments);
        (used + self.cfg.spare_segments).max(SPARES_KEPT_MIN).min(max)
    }

    fn check_usable(&self) -> LogResult<()> {
        if let Some(e) = &self.poisoned {
            return Err(LogError::Poisoned(Box::new(e.clone())));
        }
        if self.closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Spares the next segment can be made of (their stale frames all lie before the next
    /// index, as [`Log::activate_segment`] requires).
    fn usable_spares(&self) -> usize {
        self.spares.iter().filter(|s| s.max_index <= self.last_index).count()
    }

    /// Whether `len` more bytes of frames fit the open segment or the spares ready for the
    /// next ones (see [`Log::space_ready`]).
    fn fits_prepared(&self, len: usize) -> bool {
        let end = self.open.as_ref().map_or(u64::MAX, |o| o.base + o.len as u64);
        if end.saturating_add(len as u64) <= self.cfg.segment_bytes {
            return true;
        }
        // Spares the next segments can be made of. What does not fit the open segment goes to
        // the next one, so one spare takes up to a segment; beyond that, a frame never spans
        // two segments, so each may leave up to a frame's worth unused at its end.
        let usable = self.usable_spares() as u64;
        let per_spare = self.cfg.segment_bytes.saturating_sub(self.cfg.frame_bytes_max() as u64);
        let len = len as u64;
        usable >= 1 && (len <= self.cfg.segment_bytes || len <= usable * per_spare)
    }

    /// Remembers whether preparing a segment last failed for lack of space.
    fn note_preparation(&mut self, r: &LogResult<()>) {
        self.preparation_failed = matches!(r, Err(e) if !e.is_no_space());
        match r {
            Ok(()) => self.no_space = None,
            Err(e) if e.is_no_space() => self.no_space = Some((Instant::now(), e.clone())),
            Err(_) => {}
        }
    }

    /// The head's holder got its space or gave up its turn: the next holder's turn. Only that
    /// holder is woken (if asleep): waking every waiter at each step made the queue cost
    /// O(waiters) per append, and at 4,096 appends in flight the log spent more CPU on wakes
    /// than on appends.
    fn advance_space_head(&mut self) {
        self.space_head += 1;
        while let Some(pos) = self.space_abandoned.iter().position(|&t| t == self.space_head) {
            self.space_abandoned.swap_remove(pos);
            self.space_head += 1;
        }
        if let Some((_, w)) = self.space_waiters.remove(&self.space_head) {
            w.wake();
        }
    }

    /// Wakes, in ticket order, the holders whose bytes fit in the open buffer's room (at
    /// least the head's, which may also need to start a flush or roll the segment), so that
    /// the ones that can go run in one pass of the run queue instead of one hand-off each.
    fn wake_space(&mut self) {
        let mut room = match &self.open {
            Some(o) => (self.cfg.flush_bytes_max + BLOCK).saturating_sub(o.len),
            None => 0,
        };
        let mut first = true;
        while let Some(entry) = self.space_waiters.first_entry() {
            let len = entry.get().0;
            if !first && len > room {
                break;
            }
            room = room.saturating_sub(len);
            first = false;
            entry.remove().1.wake();
        }
    }

    /// Wakes every appender waiting for space (the log failed or closed: each must see it).
    fn wake_all_space(&mut self) {
        for (_, (_, w)) in std::mem::take(&mut self.space_waiters) {
            w.wake();
        }
    }

    /// Adds the time since the last change of the flushes in flight to their integral; call
    /// before changing their number.
    fn count_inflight(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.inflight_since).as_nanos() as u64;
        self.stats.flushes_in_flight_ns += ns * self.inflight.len() as u64;
        self.inflight_since = now;
    }

    /// A roll, truncation or reset is over: appends may go on.
    fn end_exclusive(&mut self) {
        self.exclusive = false;
        self.changed();
    }

    fn changed(&mut self) {
        self.epoch += 1;
        for w in self.change_waiters.drain(..) {
            w.wake();
        }
        self.wake_space();
    }

    fn wake_durable(&mut self) {
        while let Some(w) = self.durable_waiters.peek() {
            if w.index > self.durable_index && self.poisoned.is_none() && !self.closed {
                break;
            }
            let w = self.durable_waiters.pop().expect("peeked");
            w.waker.wake();
        }
    }

    fn segment(&self, seq: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.seq == seq)
    }

    /// Position of the frame holding `index`.
    fn frame_pos(&self, index: u64) -> Option<usize> {
        if index < self.first_index || index > self.last_index {
            return None;
        }
        let pos = self.frames.partition_point(|f| f.last_index() < index);
        (pos < self.frames.len()).then_some(pos)
    }

    /// Where the bytes of the frame at `loc` are in memory, if they are.
    fn in_memory(&self, loc: &FrameLoc) -> Option<InMemory<'_>> {
        let end = loc.offset + u64::from(loc.len);
        if let Some(open) =
            self.open.as_ref().filter(|o| o.segment == loc.segment && loc.offset >= o.base)
        {
            let start = (loc.offset - open.base) as usize;
            return Some(InMemory::Open(&open.buf.as_bytes()[start..start + loc.len as usize]));
        }
        let c = self
            .cached_at(loc.segment, loc.offset)
            .filter(|c| end <= c.base + c.data.bytes().len() as u64)
            .or_else(|| {
                self.split.iter().rev().find(|c| c.segment == loc.segment && c.base == loc.offset)
            })?;
        Some(InMemory::Cached(c, (loc.offset - c.base) as usize))
    }

    /// The newest cached buffer that holds the byte at `offset` of `segment`.
    fn cached_at(&self, segment: u64, offset: u64) -> Option<&CachedBuf> {
        // Buffers are cached in file order, so the candidates are the last ones that begin at
        // or before `offset`; a few may begin at the same block (light load rewrites it).
        let end = self.recent.partition_point(|c| (c.segment, c.base) <= (segment, offset));
        self.recent
            .range(..end)
            .rev()
            .take(8)
            .find(|c| c.segment == segment && offset < c.base + c.data.bytes().len() as u64)
    }

    /// A copy of the frame at `loc` gathered from the buffers that hold its pieces: a flush cut
    /// at a block boundary to pipeline leaves the frame across the cut split between the
    /// buffer in flight and the next one. `None` when a piece is no longer in memory.
    fn assemble(&self, loc: &FrameLoc) -> Option<Rc<[u8]>> {
        let end = loc.offset + u64::from(loc.len);
        // Every piece must be in memory; checked before anything is allocated, since a read
        // asks this of each frame it then finds on disk only.
        let mut at = loc.offset;
        while at < end {
            let (base, bytes) = self.piece_at(loc.segment, at)?;
            at = base + bytes.len() as u64;
        }
        // Allocated once, at its final size (an `Rc` from a `Vec` would copy the frame again).
        let mut copy: Rc<[u8]> = std::iter::repeat_n(0u8, loc.len as usize).collect();
        let out = Rc::get_mut(&mut copy).expect("just made");
        let mut at = loc.offset;
        while at < end {
            let (base, bytes) = self.piece_at(loc.segment, at).expect("checked above");
            let from = (at - base) as usize;
            let to = ((end - base) as usize).min(bytes.len());
            let into = (at - loc.offset) as usize;
            out[into..into + to - from].copy_from_slice(&bytes[from..to]);
            at = base + to as u64;
        }
        Some(copy)
    }

    /// The bytes in memory that hold the byte at `at` of `segment`, and the offset where they
    /// begin: the open buffer's filled part, or the newest cached buffer that holds it.
    fn piece_at(&self, segment: u64, at: u64) -> Option<(u64, &[u8])> {
        self.open
            .as_ref()
            .filter(|o| o.segment == segment)
            .map(|o| (o.base, &o.buf.as_bytes()[..o.len]))
            .filter(|(base, b)| *base <= at && at < base + b.len() as u64)
            .or_else(|| self.cached_at(segment, at).map(|c| (c.base, c.data.bytes())))
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        self.frame_pos(index).map(|p| self.frames[p].term)
    }

    fn poison(&mut self, e: LogError) {
        if self.poisoned.is_none() {
            tracing::error!(group = self.cfg.group, error = %e, "log poisoned");
            self.poisoned = Some(e);
        }
        let waiters: Vec<Waiter> = self.durable_waiters.drain().collect();
        for w in waiters {
            w.waker.wake();
        }
        self.wake_all_space();
        self.changed();
    }

    fn cache(&mut self, segment: u64, base: u64, buf: Rc<DmaBuffer>) {
        let entry = CachedBuf { segment, base, data: CacheData::Dma(buf) };
        self.recent_bytes += entry.charge(self.buf_cap());
        self.recent.push_back(entry);
        self.evict();
    }

    /// Capacity of one open buffer.
    fn buf_cap(&self) -> usize {
        self.cfg.flush_bytes_max + BLOCK
    }

    /// Keeps the whole copy of a frame that a flush cut in two, within a quarter of the
    /// recent cache's budget (the oldest copies go first).
    fn keep_split(&mut self, loc: &FrameLoc, copy: Rc<[u8]>) {
        self.split_bytes += copy.len();
        self.split.push_back(CachedBuf {
            segment: loc.segment,
            base: loc.offset,
            data: CacheData::Heap(copy),
        });
        while self.split_bytes > self.cfg.recent_cache_bytes / 4 && self.split.len() > 1 {
            let old = self.split.pop_front().expect("non-empty");
            self.split_bytes -= old.data.bytes().len();
        }
    }

    /// Drops the oldest cached buffers beyond the budget, but never the buffer of a flush in
    /// flight: until its write completes, memory is the only place its frames are (the newest
    /// `inflight.len()` entries are those buffers; they are bounded by `flushes_in_flight_max`,
    /// outside this budget).
    fn evict(&mut self) {
        let cap = self.buf_cap();
        while self.recent_bytes > self.cfg.recent_cache_bytes
            && self.recent.len() > self.inflight.len()
        {
            let old = self.recent.pop_front().expect("non-empty");
            self.recent_bytes -= old.charge(cap);
        }
    }

    /// After a flush completes: a small flush's cached buffer becomes a right-sized copy, and
    /// its DMA buffer goes back to the executor's arena.
    fn shrink_cached(&mut self, segment: u64, base: u64) {
        let cap = self.buf_cap();
        let end = self.recent.partition_point(|c| (c.segment, c.base) <= (segment, base));
        if let Some(c) = self
            .recent
            .range_mut(..end)
            .rev()
            .take(8)
            .find(|c| c.segment == segment && c.base == base)
            && let CacheData::Dma(b) = &c.data
            && b.len() * 2 < cap
        {
            let copy: Rc<[u8]> = Rc::from(b.as_bytes());
            c.data = CacheData::Heap(copy);
            self.recent_bytes = self.recent_bytes - cap + c.charge(cap);
        }
    }
}

struct Shared {
    st: RefCell<State>,
}

/// The durable log of one group. Cheap to clone (a handle); lives on one executor.
#[derive(Clone)]
pub struct Log {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.st.borrow();
        f.debug_struct("Log")
            .field("dir", &st.dir)
            .field("first_index", &st.first_index)
            .field("last_index", &st.last_index)
            .field("durable_index", &st.durable_index)
            .finish()
    }
}

/// Frames read from the log, with the range of their entries that was asked for.
#[derive(Debug)]
pub struct ReadFrame {
    bytes: FrameBytes,
    /// First index wanted from this frame.
    pub lo: u64,
    /// Last index wanted from this frame.
    pub hi: u64,
}

#[derive(Debug)]
enum FrameBytes {
    Cached(CacheData, usize, usize),
    Disk(ReadResult),
    Owned(Vec<u8>),
}

impl ReadFrame {
    /// The frame's bytes, exactly as written.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            FrameBytes::Cached(b, start, len) => &b.bytes()[*start..*start + *len],
            FrameBytes::Disk(r) => r,
            FrameBytes::Owned(v) => v,
        }
    }

    /// The decoded frame. Its checksum was verified when it was read from disk, or it never
    /// left memory: it is not verified again (a checksum pass per call would double the cost
    /// of a read).
    pub fn frame(&self) -> Frame<'_> {
        Frame::already_verified(self.bytes())
    }

    /// The wanted entries of this frame.
    pub fn entries(&self) -> impl Iterator<Item = crate::frame::DecodedEntry<'_>> + '_ {
        let (lo, hi) = (self.lo, self.hi);
        self.frame().entries().filter(move |e| e.index >= lo && e.index <= hi)
    }
}

impl Log {
    /// Opens (creating if needed) the log of `cfg.group` in `dir`, and recovers it.
    pub async fn open(dir: impl AsRef<Path>, cfg: LogConfig) -> LogResult<(Log, RecoveryReport)> {
        cfg.validate().map_err(LogError::Config)?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LogError::io("creating directory", &dir, 0, e))?;
        io::prime_device(&dir).await?;
        let mut segs: Vec<(u64, u64, PathBuf)> = Vec::new();
        let mut spares = Vec::new();
        let mut spare_counter = 0;
        for path in io::list_dir(&dir)? {
            match segment::classify(&path) {
                FileKind::Segment { seq, first_index } => segs.push((seq, first_index, path)),
                FileKind::Spare { max_index, n } => {
                    spare_counter = spare_counter.max(n + 1);
                    spares.push(Spare { path, max_index });
                }
                FileKind::Temporary => {
                    if let Err(e) = io::remove(&path).await {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover temporary file");
                    }
                }
                FileKind::HardState => {}
                FileKind::Unknown => {
                    if path.extension().is_some_and(|e| e == "seg") {
                        return Err(LogError::Inconsistent {
                            dir: dir.clone(),
                            detail: format!("unrecognised segment file {}", path.display()),
                        });
                    }
                }
            }
        }
        segs.sort();
        let side = match cfg.io_engine {
            IoEngine::Runtime => None,
            IoEngine::Uring => match crate::rt::fs::FlushRing::new() {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %dir.display(), "the log's own io_uring could not be set up; flushing through the runtime's ring");
                    None
                }
            },
        };
        let mut st = State {
            cfg: cfg.clone(),
            dir: dir.clone(),
            segments: VecDeque::new(),
            frames: VecDeque::new(),
            first_index: 1,
            last_index: 0,
            last_term: 0,
            durable_index: 0,
            next_seq: segs.last().map_or(1, |s| s.0 + 1),
            spares,
            spare_counter,
            preparing_spare: false,
            activated_at_trim: 0,
            used_between_trims: [0; 2],
            open: None,
            unflushed: VecDeque::new(),
            inflight: VecDeque::new(),
            inflight_since: Instant::now(),
            next_flush_id: 0,
            side,
            flush_scheduled: false,
            exclusive: false,
            trimming: false,
            space_head: 0,
            space_tail: 0,
            space_abandoned: Vec::new(),
            space_waiters: BTreeMap::new(),
            poisoned: None,
            no_space: None,
            preparation_failed: false,
            closed: false,
            durable_waiters: BinaryHeap::new(),
            change_waiters: Vec::new(),
            epoch: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            split: VecDeque::new(),
            split_bytes: 0,
            stats: LogStats::new(),
            flush_times: VecDeque::new(),
        };
        let report = recover(&mut st, segs).await?;
        let log = Log { shared: Rc::new(Shared { st: RefCell::new(st) }) };
        if log.shared.st.borrow().segments.is_empty() {
            // A new log: put the first segment in use.
            log.activate_segment(1).await?;
            let mut st = log.shared.st.borrow_mut();
            st.first_index = 1;
        }
        log.ensure_spares();
        Ok((log, report))
    }

    /// The group.
    pub fn group(&self) -> u64 {
        self.shared.st.borrow().cfg.group
    }

    /// First index of the log (entries before it were trimmed).
    pub fn first_index(&self) -> u64 {
        self.shared.st.borrow().first_index
    }

    /// Last index appended (durable or not).
    pub fn last_index(&self) -> u64 {
        self.shared.st.borrow().last_index
    }

    /// Term of the last entry (0 for an empty log).
    pub fn last_term(&self) -> u64 {
        self.shared.st.borrow().last_term
    }

    /// Highest index known durable.
    pub fn durable_index(&self) -> u64 {
        self.shared.st.borrow().durable_index
    }

    /// Term of the entry at `index`, if it is in the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.shared.st.borrow().term_of(index)
    }

    /// A copy of the counters and the flush latency histogram.
    pub fn stats(&self) -> LogStats {
        self.shared.st.borrow().stats.clone()
    }

    /// The ring that submits this log's flushes (`Runtime` when `Uring` was asked for but could
    /// not be set up).
    pub fn io_engine(&self) -> IoEngine {
        if self.shared.st.borrow().side.is_some() { IoEngine::Uring } else { IoEngine::Runtime }
    }

    /// The log's directory.
    pub fn dir(&self) -> PathBuf {
        self.shared.st.borrow().dir.clone()
    }

    /// Appends a verified frame (built by this node as leader, or received and verified from a
    /// leader). Its first index must be `last_index + 1`, its group this log's, and its term not
    /// below the last entry's. Returns the frame's index range once its bytes are in the open
    /// buffer; await [`Log::wait_durable`] for durability. Waits when the buffer is full
    /// (backpressure).
    pub async fn append(&self, frame: Frame<'_>) -> LogResult<IndexRange> {
        let bytes = frame.as_bytes();
        let len = bytes.len();
        {
            let st = self.shared.st.borrow();
            st.check_usable()?;
            if frame.group() != st.cfg.group {
                return Err(LogError::Rejected(format!(
                    "frame of group {} appended to the log of group {}",
                    frame.group(),
                    st.cfg.group
                )));
            }
            if len > st.cfg.frame_bytes_max() {
                return Err(LogError::Rejected(format!(
                    "frame of {len} bytes exceeds the maximum of {}",
                    st.cfg.frame_bytes_max()
                )));
            }
        }
        self.reserve(len).await?;
        let mut st = self.shared.st.borrow_mut();
        if frame.first_index() != st.last_index + 1 {
            return Err(LogError::Rejected(format!(
                "frame starts at index {}, the log continues at {}",
                frame.first_index(),
                st.last_index + 1
            )));
        }
        if frame.term() < st.last_term {
            return Err(LogError::Rejected(format!(
                "frame term {} is below the last term {}",
                frame.term(),
                st.last_term
            )));
        }
        let open = st.open.as_mut().expect("reserve leaves an open buffer");
        open.buf.as_bytes_mut()[open.len..open.len + len].copy_from_slice(bytes);
        let range = IndexRange { first: frame.first_index(), last: frame.last_index() };
        self.commit_append(&mut st, len, range, frame.term(), frame.entry_count());
        drop(st);
        self.schedule_flush();
        Ok(range)
    }

    /// Builds a frame of `entries` directly in the open buffer (the leader's path: the frame is
    /// built once, where it will be written from) and appends it at `last_index + 1` with
    /// `term`. Returns its index range.
    pub async fn append_entries(
        &self,
        term: u64,
        entries: &[EntryRef<'_>],
    ) -> LogResult<IndexRange> {
        let len = crate::frame::frame_len_for(entries.iter().map(|e| e.data.len()));
        {
            let st = self.shared.st.borrow();
            st.check_usable()?;
            if entries.is_empty() || len > st.cfg.frame_bytes_max() {
                return Err(LogError::Rejected(format!(
                    "a batch of {} entries and {len} bytes does not fit one frame (max {} bytes)",
                    entries.len(),
                    st.cfg.frame_bytes_max()
                )));
            }
        }
        self.reserve(len).await?;
        let mut st = self.shared.st.borrow_mut();
        if term < st.last_term {
            return Err(LogError::Rejected(format!(
                "term {term} is below the last term {}",
                st.last_term
            )));
        }
        let first = st.last_index + 1;
        let group = st.cfg.group;
        let limits = st.cfg.frame_limits;
        let open = st.open.as_mut().expect("reserve leaves an open buffer");
        let at = open.len;
        let dst = &mut open.buf.as_bytes_mut()[at..at + len];
        let mut enc = FrameEncoder::new(dst, group, term, first, limits).expect("room reserved");
        for e in entries {
            enc.push(*e).map_err(|err| match err {
                EncodeError::TooLarge { len } | EncodeError::Full { len } => {
                    LogError::Rejected(format!("entry of {len} bytes exceeds the frame limits"))
                }
            })?;
        }
        let written = enc.finish();
        debug_assert_eq!(written, len);
        let range = IndexRange { first, last: first + entries.len() as u64 - 1 };
        self.commit_append(&mut st, len, range, term, entries.len() as u32);
        drop(st);
        self.schedule_flush();
        Ok(range)
    }

    fn commit_append(&self, st: &mut State, len: usize, range: IndexRange, term: u64, count: u32) {
        let open = st.open.as_mut().expect("open buffer");
        let offset = open.base + open.len as u64;
        open.len += len;
        let segment = open.segment;
        st.frames.push_back(FrameLoc {
            first_index: range.first,
            count,
            term,
            segment,
            offset,
            len: len as u32,
        });
        st.unflushed.push_back((offset + len as u64, range.last));
        st.last_index = range.last;
        st.last_term = term;
        if let Some(seg) = st.segments.back_mut() {
            seg.max_index = seg.max_index.max(range.last);
        }
        st.stats.frames_appended += 1;
        st.stats.entries_appended += u64::from(count);
        st.stats.bytes_appended += len as u64;
    }

    /// Waits until `len` bytes fit in the open buffer of a segment with room for them, rolling
    /// to a new segment or waiting for flushes as needed.
    ///
    /// Waiting appenders are served first come, first served: an appender that finds others
    /// waiting takes a ticket and waits for its turn, so under heavy load no appender can be
    /// overtaken indefinitely by newer ones (without this, some appends waited seconds at 512
    /// appenders). A ticket whose future is dropped is skipped.
    async fn reserve(&self, len: usize) -> LogResult<()> {
        enum Next {
            Ready,
            Roll,
            TryFlush,
            Wait,
        }
        let mut ticket = Ticket { log: self, number: None };
        let mut waited: Option<Instant> = None;
        loop {
            let next = {
                let mut st = self.shared.st.borrow_mut();
                st.check_usable()?;
                let my_turn = match ticket.number {
                    Some(t) => t == st.space_head,
                    None => st.space_head == st.space_tail,
                };
                if st.exclusive || !my_turn {
                    if ticket.number.is_none() {
                        ticket.number = Some(st.space_tail);
                        st.space_tail += 1;
                    }
                    Next::Wait
                } else {
                    let open = st.open.as_ref().expect("open buffer");
                    let end = open.base + open.len as u64;
                    if end + len as u64 > st.cfg.segment_bytes {
                        // Rolling takes a while: hold the turn meanwhile, so that appenders
                        // arriving during the roll queue behind this one.
                        if ticket.number.is_none() {
                            ticket.number = Some(st.space_tail);
                            st.space_tail += 1;
                        }
                        Next::Roll
                    } else if open.len + len <= st.cfg.flush_bytes_max + BLOCK {
                        Next::Ready
                    } else {
                        if ticket.number.is_none() {
                            ticket.number = Some(st.space_tail);
                            st.space_tail += 1;
                        }
                        Next::TryFlush
                    }
                }
            };
            match next {
                Next::Ready => {
                    ticket.consume();
                    if let Some(t) = waited {
                        let mut st = self.shared.st.borrow_mut();
                        st.stats.space_waits += 1;
                        st.stats.space_wait_ns += t.elapsed().as_nanos() as u64;
                    }
                    return Ok(());
                }
                Next::Roll => {
                    waited.get_or_insert_with(Instant::now);
                    self.shared.st.borrow_mut().exclusive = true;
                    let log = self.clone();
                    detached(async move {
                        let r = log.roll().await;
                        log.shared.st.borrow_mut().end_exclusive();
                        r
                    })
                    .await?;
                }
                Next::TryFlush => {
                    // Full: start a flush that frees the buffer if the rules allow, else wait
                    // for one to start or complete.
                    self.start_flushes_for(len);
                    let fits = {
                        let st = self.shared.st.borrow();
                        st.open
                            .as_ref()
                            .is_some_and(|o| o.len + len <= st.cfg.flush_bytes_max + BLOCK)
                    };
                    if !fits {
                        waited.get_or_insert_with(Instant::now);
                        self.space_wait(ticket.number.expect("a ticket was taken"), len).await;
                    }
                }
                Next::Wait => {
                    waited.get_or_insert_with(Instant::now);
                    self.space_wait(ticket.number.expect("a ticket was taken"), len).await
                }
            }
        }
    }

    /// Sleeps as space waiter `ticket` (wanting `len` bytes) until [`State::wake_space`],
    /// [`State::advance_space_head`] or a failure wakes it.
    fn space_wait(&self, ticket: u64, len: usize) -> impl Future<Output = ()> + '_ {
        let mut registered = false;
        std::future::poll_fn(move |cx| {
            let mut st = self.shared.st.borrow_mut();
            if !registered {
                registered = true;
                st.space_waiters.insert(ticket, (len, cx.waker().clone()));
                return Poll::Pending;
            }
            match st.space_waiters.get_mut(&ticket) {
                // Woken by someone else's waker (a spurious poll): still asleep.
                Some((_, w)) => {
                    w.clone_from(cx.waker());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            }
        })
    }

    fn changed_since(&self, epoch: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut st = self.shared.st.borrow_mut();
            if st.epoch != epoch {
                Poll::Ready(())
            } else {
                st.change_waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// When the flush that made `index` durable was submitted and when it completed, if it is
    /// among the latest flushes (the log remembers a few dozen). A hook for the latency
    /// profile: the caller asks right after [`Log::wait_durable`] resolves.
    pub fn flush_times(&self, index: u64) -> Option<FlushTimes> {
        let st = self.shared.st.borrow();
        let pos = st.flush_times.partition_point(|(last, _)| *last < index);
        st.flush_times.get(pos).map(|(_, t)| *t)
    }

    /// Resolves when every index up to `index` is durable; fails if the log fails first or the
    /// index was truncated away before it became durable.
    pub fn wait_durable(&self, index: u64) -> DurableWait {
        DurableWait { shared: self.shared.clone(), index }
    }

    /// Flushes everything appended and waits until it is durable.
    pub async fn sync(&self) -> LogResult<()> {
        let last = self.last_index();
        self.schedule_flush();
        self.wait_durable(last).await
    }

    fn schedule_flush(&self) {
        let mut st = self.shared.st.borrow_mut();
        if st.flush_scheduled {
            return;
        }
        st.flush_scheduled = true;
        drop(st);
        let log = self.clone();
        crate::rt::spawn_next(async move {
            log.shared.st.borrow_mut().flush_scheduled = false;
            log.start_flushes();
        })
        .detach();
    }

    /// Starts as many flushes as the rules allow (see the module docs).
    fn start_flushes(&self) {
        self.start_flushes_for(0)
    }

    /// [`Log::start_flushes`] for an appender at the head of the space queue that needs room
    /// for `need` bytes: if they do not fit beside what has gathered, a flush joining others
    /// in flight starts however little it carries (the half-of-the-latest rule would wait for
    /// appends that queue behind this one).
    fn start_flushes_for(&self, need: usize) {
        loop {
            let mut st = self.shared.st.borrow_mut();
            if st.poisoned.is_some() || st.inflight.len() >= st.cfg.flushes_in_flight_max {
                return;
            }
            let flush_max = st.cfg.flush_bytes_max;
            let Some(open) = st.open.as_ref() else { return };
            if open.len == open.flushed_len {
                return;
            }
            let fresh = open.len - open.flushed_len;
            let pipeline = st.cfg.flushes_in_flight_max > 1 && fresh >= st.cfg.pipeline_bytes;
            // A flush joining others in flight carries at least half of what the latest one
            // did: it becomes durable only after them anyway, so a small one buys no latency
            // and costs a whole fdatasync. Without this, a slot freed while the open buffer was
            // nearly empty went to a flush of `pipeline_bytes`, and at 2,048 appends in flight
            // half the flushes carried 64 KiB and half 1 MiB.
            let blocked = open.len + need > st.cfg.flush_bytes_max + BLOCK;
            let worth_joining = pipeline
                && (blocked || st.inflight.back().is_none_or(|last| fresh >= last.fresh / 2));
            let cut = match st.inflight.back() {
                // Nothing in flight: take everything (the latency of light load), unless enough
                // has gathered to pipeline: then cut at the last block boundary, so the next
                // flush may start while this one is in flight. The tail (less than a block)
                // waits at most until this flush completes.
                None if pipeline && align_down(open.len as u64) as usize > open.flushed_len => {
                    align_down(open.len as u64) as usize
                }
                None => open.len,
                Some(last) => {
                    // A concurrent flush starts at the block where the one in flight ended, so
                    // that one must have ended on a block boundary (two writes never race on
                    // one block), and enough must have gathered to be worth an fdatasync.
                    if last.end % BLOCK as u64 != 0 || !worth_joining {
                        return;
                    }
                    align_down(open.len as u64) as usize
                }
            };
            if cut <= open.flushed_len {
                return;
            }
            let carries = cut - open.flushed_len;
            let how = match st.cfg.sync {
                SyncMethod::Dsync => WriteSync::None,
                SyncMethod::Fdatasync => WriteSync::Fdatasync,
                // Light load (nothing in flight, too little gathered to pipeline: this flush
                // takes everything): someone waits for just this flush, and one operation
                // answers sooner than two. A flush cut so that others may join it keeps write
                // + fdatasync, whose bandwidth is the better under load.
                SyncMethod::Adaptive
                    if st.inflight.is_empty()
                        && fresh < st.cfg.pipeline_bytes
                        && st.side.is_some() =>
                {
                    WriteSync::Dsync
                }
                SyncMethod::Adaptive => WriteSync::Fdatasync,
            };
            // Take the buffer: the carried tail (from the last full block) moves to a fresh one.
            let open = st.open.take().expect("checked");
            let segment = open.segment;
            let base = open.base;
            let file = st.segment(segment).expect("active segment").file.clone();
            let path = st.segment(segment).expect("active segment").path.clone();
            let carry_from = align_down(cut as u64) as usize;
            let mut next = io::alloc(&file, flush_max + BLOCK);
            let carried = open.len - carry_from;
            let mut old = open.buf;
            next.as_bytes_mut()[..carried].copy_from_slice(&old.as_bytes()[carry_from..open.len]);
            let padded = align_up(cut as u64) as usize;
            old.as_bytes_mut()[cut..padded].fill(0);
            old.trim_to_size(padded);
            st.open = Some(OpenBuf {
                segment,
                base: base + carry_from as u64,
                buf: next,
                len: carried,
                flushed_len: cut - carry_from,
            });
            let end = base + cut as u64;
            let mut last_index = 0;
            while let Some(&(frame_end, idx)) = st.unflushed.front() {
                if frame_end > end {
                    break;
                }
                last_index = idx;
                st.unflushed.pop_front();
            }
            let id = st.next_flush_id;
            st.next_flush_id += 1;
            st.count_inflight(Instant::now());
            st.inflight.push_back(Flush {
                id,
                end,
                fresh: carries,
                last_index,
                done: false,
                submitted: None,
                dsync: how == WriteSync::Dsync,
            });
            st.stats.peak_flushes_in_flight =
                st.stats.peak_flushes_in_flight.max(st.inflight.len() as u64);
            let buf = Rc::new(old);
            st.cache(segment, base, buf.clone());
            let side = st.side.clone();
            // Room was freed: appenders waiting for space may go on.
            st.changed();
            drop(st);
            let log = self.clone();
            crate::rt::spawn(async move {
                let started = Instant::now();
                let bytes = buf.len() as u64;
                let r = match side {
                    Some(ring) => io::write_then_sync(&ring, &file, &path, buf, base, how).await,
                    None => {
                        let mut r = io::write_all_at(&file, &path, buf, base).await;
                        if r.is_ok() && how != WriteSync::None {
                            r = io::fdatasync(&file, &path).await;
                        }
                        r
                    }
                };
                log.complete_flush(id, r, started, bytes, (segment, base));
            })
            .detach();
        }
    }

    fn complete_flush(
        &self,
        id: u64,
        result: LogResult<()>,
        started: Instant,
        bytes: u64,
        at: (u64, u64),
    ) {
        {
            let mut st = self.shared.st.borrow_mut();
            match result {
                Err(e) => {
                    st.poison(e);
                    return;
                }
                Ok(()) => {
                    let now = Instant::now();
                    st.stats.flushes += 1;
                    st.stats.bytes_written += bytes;
                    st.stats.flush_bytes.saturating_record(bytes);
                    st.shrink_cached(at.0, at.1);
                    let ns = (now.duration_since(started).as_nanos() as u64)
                        .clamp(1_000, 60_000_000_000);
                    st.stats.flush_latency_ns.saturating_record(ns);
                    let mut dsync = false;
                    if let Some(f) = st.inflight.iter_mut().find(|f| f.id == id) {
                        f.done = true;
                        f.submitted = Some(started);
                        dsync = f.dsync;
                    }
                    st.stats.dsync_flushes += u64::from(dsync);
                    st.count_inflight(now);
                    while st.inflight.front().is_some_and(|f| f.done) {
                        let f = st.inflight.pop_front().expect("non-empty");
                        if f.last_index > st.durable_index {
                            debug_assert!(f.last_index <= st.last_index);
                            st.durable_index = f.last_index;
                            let submitted = f.submitted.unwrap_or(started);
                            if st.flush_times.len() == FLUSH_TIMES_KEPT {
                                st.flush_times.pop_front();
                            }
                            st.flush_times
                                .push_back((f.last_index, FlushTimes { submitted, durable: now }));
                        }
                    }
                    st.wake_durable();
                    st.changed();
                }
            }
        }
        self.start_flushes();
    }

    /// Waits until nothing is in flight and everything appended is durable.
    async fn drain(&self) -> LogResult<()> {
        let last = self.last_index();
        self.schedule_flush();
        self.wait_durable(last).await?;
        loop {
            let epoch = {
                let st = self.shared.st.borrow();
                st.check_usable()?;
                if st.inflight.is_empty() {
                    return Ok(());
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        }
    }

    /// Seals the active segment (after draining it) and puts a new one in use, starting at the
    /// next index.
    async fn roll(&self) -> LogResult<()> {
        self.drain().await?;
        let next = self.last_index() + 1;
        self.activate_segment(next).await
    }

    /// Puts a new segment in use for entries from `first_index`: a spare whose stale frames are
    /// all below `first_index`, or a freshly zero-filled file. Durable (renamed and the
    /// directory synced) before it returns, so a new segment also durably supersedes older
    /// segments' entries from `first_index` on.
    async fn activate_segment(&self, first_index: u64) -> LogResult<()> {
        let spare = loop {
            let epoch = {
                let mut st = self.shared.st.borrow_mut();
                if let Some(pos) = st.spares.iter().position(|s| s.max_index < first_index) {
                    break Some(st.spares.swap_remove(pos));
                }
                if !st.preparing_spare {
                    break None;
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        };
        let (dir, seq, size, sync) = {
            let mut st = self.shared.st.borrow_mut();
            let seq = st.next_seq;
            st.next_seq += 1;
            (st.dir.clone(), seq, st.cfg.segment_bytes, st.cfg.sync)
        };
        let path = dir.join(segment::segment_name(seq, first_index));
        let recycled = spare.is_some();
        match spare {
            Some(s) => {
                io::rename(&s.path, &path).await?;
                io::sync_dir(&dir).await?;
            }
            None => {
                let tmp = dir.join(format!("{}.tmp", segment::segment_name(seq, first_index)));
                let r = io::prepare_zeroed(&dir, &tmp, &path, size).await;
                self.shared.st.borrow_mut().note_preparation(&r);
                r?;
            }
        }
        let file = io::open_rw(&path, sync).await?;
        let cap = self.shared.st.borrow().cfg.flush_bytes_max + BLOCK;
        let buf = io::alloc(&file, cap);
        let mut st = self.shared.st.borrow_mut();
        st.segments.push_back(Segment {
            seq,
            first_index,
            path,
            file: Rc::new(file),
            max_index: first_index - 1,
        });
        st.open = Some(OpenBuf { segment: seq, base: 0, buf, len: 0, flushed_len: 0 });
        st.stats.segments_activated += 1;
        if !recycled {
            st.stats.segments_zero_filled += 1;
        }
        drop(st);
        self.ensure_spares();
        Ok(())
    }

    /// Keeps `spare_segments` prepared in the background.
    fn ensure_spares(&self) {
        self.prepare_spares(false)
    }

    /// Prepares spares in the background until `spare_segments` are ready; with `force`, at
    /// least one more whatever the count (a retry while the file system is full).
    fn prepare_spares(&self, force: bool) {
        let mut st = self.shared.st.borrow_mut();
        if st.preparing_spare || (!force && st.spares.len() >= st.cfg.spare_segments) || st.closed {
            return;
        }
        st.preparing_spare = true;
        let n = st.spare_counter;
        st.spare_counter += 1;
        let dir = st.dir.clone();
        let size = st.cfg.segment_bytes;
        drop(st);
        let log = self.clone();
        crate::rt::spawn(async move {
            let path = dir.join(segment::spare_name(0, n));
            let tmp = dir.join(format!("{}.tmp", segment::spare_name(0, n)));
            let r = io::prepare_zeroed(&dir, &tmp, &path, size).await;
            let again = {
                let mut st = log.shared.st.borrow_mut();
                st.preparing_spare = false;
                st.note_preparation(&r);
                match r {
                    Ok(()) => {
                        st.spares.push(Spare { path, max_index: 0 });
                        st.stats.segments_zero_filled += 1;
                    }
                    Err(ref e) => tracing::warn!(group = st.cfg.group, error = %e, "could not prepare a spare segment"),
                }
                st.changed();
                r.is_ok()
            };
            if again {
                log.ensure_spares();
            }
        })
        .detach();
    }

    /// Reads the entries `lo..=hi`, at most about `max_bytes` of frames (at least one frame).
    /// Recent frames come from memory, older ones from disk (verified again on the way in).
    pub async fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> LogResult<Vec<ReadFrame>> {
        enum Plan {
            Memory(ReadFrame),
            Wait(u64),
            Disk(Rc<DmaFile>, PathBuf, Vec<FrameLoc>, usize),
        }
        let mut out = Vec::new();
        let mut next = lo;
        let mut bytes = 0usize;
        while next <= hi && (out.is_empty() || bytes < max_bytes) {
            // Find what to read without holding the borrow across I/O.
            let plan = {
                let st = self.shared.st.borrow();
                st.check_usable()?;
                let Some(pos) = st.frame_pos(next) else {
                    return Err(LogError::OutOfRange {
                        index: next,
                        first: st.first_index,
                        last: st.last_index,
                    });
                };
                let loc = st.frames[pos];
                let want_hi = hi.min(loc.last_index());
                // 1. Memory: the open buffer, or a buffer in flight or recently flushed, or
                //    the pieces of a frame that a pipelined flush cut in two.
                if let Some(mem) = st.in_memory(&loc) {
                    let bytes = match mem {
                        InMemory::Open(b) => FrameBytes::Owned(b.to_vec()),
                        InMemory::Cached(c, start) => {
                            FrameBytes::Cached(c.data.clone(), start, loc.len as usize)
                        }
                    };
                    Plan::Memory(ReadFrame { bytes, lo: next, hi: want_hi })
                } else if let Some(copy) = st.assemble(&loc) {
                    let bytes = FrameBytes::Cached(CacheData::Heap(copy), 0, loc.len as usize);
                    Plan::Memory(ReadFrame { bytes, lo: next, hi: want_hi })
                } else if loc.last_index() > st.durable_index {
                    // Not in memory and perhaps not yet written: never read the disk there
                    // (it holds zeros or a recycled segment's old frames). Buffers in flight
                    // are never evicted, so this is not expected; wait rather than misread.
                    debug_assert!(false, "frame {loc:?} neither in memory nor durable");
                    Plan::Wait(loc.last_index())
                } else {
                    // 2. Disk: read this frame and the contiguous durable frames after it in
                    //    one go (frames past the durable index may not be written yet).
                    let seg = st.segment(loc.segment).expect("frame's segment");
                    let mut span: Vec<FrameLoc> = vec![loc];
                    let mut span_bytes = loc.len as usize;
                    for f in st.frames.range(pos + 1..) {
                        let prev = span.last().expect("non-empty");
                        if f.segment != loc.segment
                            || f.first_index > hi
                            || f.last_index() > st.durable_index
                            || f.offset != prev.offset + u64::from(prev.len)
                            || bytes + span_bytes + f.len as usize > max_bytes.max(loc.len as usize)
                            || span_bytes >= 1 << 20
                        {
                            break;
                        }
                        span_bytes += f.len as usize;
                        span.push(*f);
                    }
                    Plan::Disk(seg.file.clone(), seg.path.clone(), span, span_bytes)
                }
            };
            match plan {
                Plan::Memory(frame) => {
                    bytes += frame.bytes().len();
                    next = frame.hi + 1;
                    out.push(frame);
                }
                Plan::Wait(index) => {
                    self.shared.st.borrow_mut().stats.reads_waited_for_flush += 1;
                    self.wait_durable(index).await?
                }
                Plan::Disk(file, path, span, span_bytes) => {
                    let limits = {
                        let mut st = self.shared.st.borrow_mut();
                        st.stats.frames_read_from_disk += span.len() as u64;
                        st.cfg.frame_limits
                    };
                    let first = span[0];
                    let data = io::read_at(&file, &path, first.offset, span_bytes).await?;
                    if data.len() < span_bytes {
                        return Err(LogError::io(
                            "reading",
                            &path,
                            first.offset,
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "segment shorter than its frames",
                            ),
                        ));
                    }
                    for f in span {
                        let start = (f.offset - first.offset) as usize;
                        let slice = ReadResult::slice(&data, start, f.len as usize)
                            .expect("within the read");
                        if let Err(e) = Frame::decode(&slice, &limits) {
                            return Err(LogError::Corruption {
                                path: path.clone(),
                                offset: f.offset,
                                first_index: f.first_index,
                                last_index: f.last_index(),
                                detail: format!("on read: {e}"),
                            });
                        }
                        let frame = ReadFrame {
                            bytes: FrameBytes::Disk(slice),
                            lo: next,
                            hi: hi.min(f.last_index()),
                        };
                        bytes += f.len as usize;
                        next = frame.hi + 1;
                        out.push(frame);
                        if next > hi {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Calls `f` with the longest run of whole frames within the entries `lo..=hi` whose bytes
    /// are still in memory (the open buffer, a flush in flight or a recent one), starting at
    /// the first frame that begins at or after `lo`: `f(first, last, frames)`, where the frames
    /// hold exactly the entries `first..=last`. A leader sends these frames to followers as
    /// they are, with no re-encoding, and frames only the entries around them anew. `None`
    /// (and `f` is not called) when no whole frame in memory lies within the range. A frame
    /// that a truncation cut ends the run.
    pub fn with_frames<R>(
        &self,
        lo: u64,
        hi: u64,
        f: impl FnOnce(u64, u64, &[&[u8]]) -> R,
    ) -> Option<R> {
        let pos = {
            let mut st = self.shared.st.borrow_mut();
            st.check_usable().ok()?;
            let mut pos = st.frame_pos(lo)?;
            if st.frames[pos].first_index < lo {
                pos += 1;
            }
            // A frame split across two buffers (a pipelined flush was cut inside it) is
            // copied whole into the cache first (once: the followers that ask later find the copy).
            let mut i = pos;
            while let Some(loc) = st.frames.get(i).copied().filter(|l| l.last_index() <= hi) {
                if st.in_memory(&loc).is_none() {
                    let Some(copy) = st.assemble(&loc) else { break };
                    st.keep_split(&loc, copy);
                }
                i += 1;
            }
            pos
        };
        let st = self.shared.st.borrow();
        if pos >= st.frames.len() {
            return None;
        }
        let mut out: Vec<&[u8]> = Vec::new();
        let (mut first, mut last) = (0, 0);
        for loc in st.frames.range(pos..) {
            if loc.last_index() > hi {
                break;
            }
            let Some(mem) = st.in_memory(loc) else { break };
            let bytes = match mem {
                InMemory::Open(b) => b,
                InMemory::Cached(c, start) => &c.data.bytes()[start..start + loc.len as usize],
            };
            // A frame that a truncation cut holds more entries than the log still has.
            use zerocopy::FromBytes as _;
            match crate::frame::FrameHeader::ref_from_prefix(bytes) {
                Ok((h, _)) if h.entry_count.get() == loc.count => {}
                _ => break,
            }
            if out.is_empty() {
                first = loc.first_index;
            }
            last = loc.last_index();
            out.push(bytes);
        }
        (!out.is_empty()).then(|| f(first, last, &out))
    }

    /// Removes the entries after `index` (a new leader overwrote them). Durable when it returns:
    /// a new segment starting at `index + 1` supersedes the old entries, so recovery never brings
    /// them back. Entries up to `index` stay.
    pub async fn truncate_after(&self, index: u64) -> LogResult<()> {
        {
            let st = self.shared.st.borrow();
            st.check_usable()?;
            if index >= st.last_index {
                return Ok(());
            }
            if index + 1 < st.first_index {
                return Err(LogError::OutOfRange {
                    index,
                    first: st.first_index,
                    last: st.last_index,
                });
            }
        }
        self.exclusive(|log| async move {
            log.drain().await?;
            log.activate_segment(index + 1).await?;
            let removed = {
                let mut st = log.shared.st.borrow_mut();
                while st.frames.back().is_some_and(|f| f.first_index > index) {
                    st.frames.pop_back();
                }
                if let Some(f) = st.frames.back_mut()
                    && f.last_index() > index
                {
                    f.count = (index + 1 - f.first_index) as u32;
                }
                st.last_index = index;
                st.last_term = st.frames.back().map_or(0, |f| f.term);
                st.durable_index = st.durable_index.min(index);
                // Older segments whose entries all lie after `index` are superseded.
                let active = st.segments.pop_back().expect("just activated");
                let mut gone = Vec::new();
                while st.segments.back().is_some_and(|s| s.first_index > index) {
                    gone.push(st.segments.pop_back().expect("checked"));
                }
                st.segments.push_back(active);
                gone
            };
            log.retire(removed).await
        })
        .await
    }

    /// Discards every entry and restarts the log at `next_index` (a snapshot was installed):
    /// old segments are removed first, newest first, then a new segment starts at `next_index`.
    pub async fn reset(&self, next_index: u64) -> LogResult<()> {
        assert!(next_index > 0, "log indexes start at 1");
        self.shared.st.borrow().check_usable()?;
        self.exclusive(|log| async move {
            log.drain().await?;
            let old: Vec<Segment> = {
                let mut st = log.shared.st.borrow_mut();
                st.open = None;
                st.frames.clear();
                st.recent.clear();
                st.recent_bytes = 0;
                st.split.clear();
                st.split_bytes = 0;
                st.segments.drain(..).rev().collect()
            };
            // From here the old segments are gone: failing to start the new one leaves no log to
            // append to, so the log refuses further work until reopened. Those holding indexes
            // from `next_index` on cannot be the new segment (a spare must hold only lower
            // indexes, or its frames could pass for the new ones' continuation): deleted, not
            // kept as spares, so that the space they free is there for a zero-fill when no
            // other spare can be the new segment (a full disk).
            let started = match log.retire_below(old, next_index).await {
                Ok(()) => log.activate_segment(next_index).await,
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                log.shared.st.borrow_mut().poison(e.clone());
                return Err(e);
            }
            let mut st = log.shared.st.borrow_mut();
            st.first_index = next_index;
            st.last_index = next_index - 1;
            st.durable_index = next_index - 1;
            st.last_term = 0;
            Ok(())
        })
        .await
    }

    /// Whether `len` more bytes of frames fit where they need no segment still to prepare: the
    /// open segment, or spares ready. A caller that may decline rather than wait (a follower
    /// drops an append as if it was lost; the leader sends it again) asks this besides
    /// [`Log::space_for`], which answers `Ok` while a preparation is under way: that
    /// preparation can still fail for lack of space, and an append that needed its segment
    /// then fails. Starts preparing spares when it answers `false`.
    pub fn space_ready(&self, len: usize) -> bool {
        if self.is_space_ready(len) {
            return true;
        }
        self.prepare_declined();
        false
    }

    /// [`Log::space_ready`]'s answer, without starting a preparation when it is `false`.
    pub fn is_space_ready(&self, len: usize) -> bool {
        let st = self.shared.st.borrow();
        // A preparation that failed otherwise than for space: not a reason to decline
        // forever; the write will meet the error and report it.
        st.fits_prepared(len) || st.preparation_failed
    }

    /// Whether `truncate_after(index)` would find the segment it starts without preparing
    /// one: nothing to cut, or a spare ready that holds no index above `index` (the entries
    /// after a cut go to a new segment, and a recycled segment holding higher indexes could
    /// pass for their continuation). Else starts preparing one and answers `false`, as
    /// [`Log::space_ready`] does: a follower that must overwrite a conflicting suffix drops
    /// the append meanwhile (the leader sends it again) rather than fail the truncation for
    /// lack of space, which would stop its group.
    pub fn truncation_ready(&self, index: u64) -> bool {
        {
            let st = self.shared.st.borrow();
            // Nothing to cut, or a cut that fails anyway (before the first index), or a
            // preparation failing otherwise than for space (the truncation reports it).
            if index >= st.last_index
                || index + 1 < st.first_index
                || st.preparation_failed
                || st.spares.iter().any(|s| s.max_index <= index)
            {
                return true;
            }
        }
        self.prepare_declined();
        false
    }

    /// Whether the last preparation of a segment failed for lack of space (and no other has
    /// succeeded since).
    pub fn lacks_space(&self) -> bool {
        self.shared.st.borrow().no_space.is_some()
    }

    /// Whether the file system under the log has room for fewer than
    /// [`SPACE_TIGHT_SEGMENTS`] more segments (or cannot say): a preparation under way may
    /// then fail for lack of space. Asks the file system (`statfs`): for a caller near a
    /// roll, not per append.
    pub fn space_tight(&self) -> bool {
        let (dir, segment) = {
            let st = self.shared.st.borrow();
            (st.dir.clone(), st.cfg.segment_bytes)
        };
        io::free_bytes(&dir).is_none_or(|free| free < segment.saturating_mul(SPACE_TIGHT_SEGMENTS))
    }

    /// Resolves once no segment is being prepared (at once if none is).
    pub async fn preparation_ended(&self) {
        loop {
            let epoch = {
                let st = self.shared.st.borrow();
                if !st.preparing_spare || st.closed {
                    return;
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        }
    }

    /// After [`Log::space_ready`] or [`Log::truncation_ready`] declined: a spare is prepared,
    /// at once, or after a lack of space at most every [`SPACE_RETRY`].
    fn prepare_declined(&self) {
        let retry = {
            let mut st = self.shared.st.borrow_mut();
            match &st.no_space {
                Some((tried, e)) => {
                    let retry = !st.preparing_spare && tried.elapsed() >= SPACE_RETRY;
                    if retry {
                        st.no_space = Some((Instant::now(), e.clone()));
                    }
                    retry
                }
                None => true,
            }
        };
        // Whatever `spare_segments` says (0 keeps none ahead) and whatever spares there are
        // (a recycled one may hold higher indexes): one more.
        if retry {
            self.prepare_spares(true);
        }
    }

    /// Whether `len` more bytes of frames can be appended now: `Err(NoSpace)` when they would
    /// need a new segment, none is ready, and the last attempt to prepare one failed for lack
    /// of space; `Ok` otherwise (they fit the open segment, a spare is ready, or no lack of
    /// space is known). A caller that must not accept what it could not write (the consensus
    /// driver: an entry in the consensus core's log must reach this log) asks before it
    /// accepts, and refuses instead. While refusing, the log tries again to prepare a spare at
    /// most every [`SPACE_RETRY`], so appends resume by themselves once space is freed (a trim
    /// recycles segments into spares at once).
    pub fn space_for(&self, len: usize) -> LogResult<()> {
        let st = self.shared.st.borrow();
        st.check_usable()?;
        let Some((_, e)) = &st.no_space else { return Ok(()) };
        if st.fits_prepared(len) {
            return Ok(());
        }
        let e = e.clone();
        drop(st);
        self.prepare_declined();
        Err(e)
    }

    /// The last lack of space met preparing a segment, while no spare is ready: the log
    /// cannot have another segment, and [`Log::space_for`] refuses what does not fit the open
    /// one (for status reports).
    pub fn no_space(&self) -> Option<LogError> {
        let st = self.shared.st.borrow();
        let (_, e) = st.no_space.as_ref()?;
        (st.usable_spares() == 0).then(|| e.clone())
    }

    /// True if `trim_before(index + 1)` would drop at least one segment.
    pub fn trim_frees_segment(&self, index: u64) -> bool {
        let st = self.shared.st.borrow();
        st.segments.len() > 1 && st.segments[1].first_index <= index + 1
    }

    /// Removes whole segments whose entries all lie before `index` (the database checkpointed
    /// up to there). They are recycled as spares while spares are wanted, else deleted. The log's
    /// first index becomes the first entry of the oldest remaining segment (at most `index`).
    pub async fn trim_before(&self, index: u64) -> LogResult<()> {
        // A truncation or reset rearranges segments at the back while it awaits I/O; a trim
        // rearranges them at the front. They take turns.
        loop {
            let epoch = {
                let mut st = self.shared.st.borrow_mut();
                st.check_usable()?;
                if !st.exclusive && !st.trimming {
                    st.trimming = true;
                    break;
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        }
        let r = self.trim_locked(index).await;
        let mut st = self.shared.st.borrow_mut();
        st.trimming = false;
        st.changed();
        r
    }

    async fn trim_locked(&self, index: u64) -> LogResult<()> {
        let removed = {
            let mut st = self.shared.st.borrow_mut();
            st.check_usable()?;
            let mut removed = Vec::new();
            while st.segments.len() > 1 && st.segments[1].first_index <= index {
                let seg = st.segments.pop_front().expect("len > 1");
                while st.frames.front().is_some_and(|f| f.segment == seg.seq) {
                    st.frames.pop_front();
                }
                st.recent.retain(|c| c.segment != seg.seq);
                let cap = st.buf_cap();
                st.recent_bytes = st.recent.iter().map(|c| c.charge(cap)).sum();
                st.split.retain(|c| c.segment != seg.seq);
                st.split_bytes = st.split.iter().map(|c| c.data.bytes().len()).sum();
                removed.push(seg);
            }
            if let Some(first) = st.segments.front().map(|s| s.first_index) {
                st.first_index = st.first_index.max(first);
            }
            if !removed.is_empty() {
                let now = st.stats.segments_activated;
                st.used_between_trims = [now - st.activated_at_trim, st.used_between_trims[0]];
                st.activated_at_trim = now;
            }
            removed
        };
        let freed = !removed.is_empty();
        self.retire(removed).await?;
        if freed {
            self.prune_spares().await?;
        }
        Ok(())
    }

    /// Recycles (as spares, up to [`State::spares_wanted`]) or deletes retired segments, then
    /// syncs the directory.
    async fn retire(&self, segments: Vec<Segment>) -> LogResult<()> {
        self.retire_below(segments, u64::MAX).await
    }

    /// [`Log::retire`], keeping as spares only segments whose indexes are all below `below`.
    async fn retire_below(&self, segments: Vec<Segment>, below: u64) -> LogResult<()> {
        if segments.is_empty() {
            return Ok(());
        }
        let dir = self.dir();
        for seg in segments {
            let (want_spare, n) = {
                let mut st = self.shared.st.borrow_mut();
                // A recycled segment saves a zero-fill later (and the zero-filling preparer only
                // runs below `spare_segments`).
                let want = st.spares.len() < st.spares_wanted() && seg.max_index < below;
                let n = st.spare_counter;
                if want {
                    st.spare_counter += 1;
                }
                (want, n)
            };
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                io::close(file, &seg.path).await?;
            }
            if want_spare {
                let path = dir.join(segment::spare_name(seg.max_index, n));
                io::rename(&seg.path, &path).await?;
                let mut st = self.shared.st.borrow_mut();
                st.spares.push(Spare { path, max_index: seg.max_index });
                st.stats.segments_recycled += 1;
            } else {
                io::remove(&seg.path).await?;
            }
        }
        io::sync_dir(&dir).await?;
        self.shared.st.borrow_mut().changed();
        Ok(())
    }

    /// After a trim (which holds no lock that appends wait on): deletes up to
    /// [`SPARES_PRUNED_MAX`] spares beyond [`State::spares_wanted`], so spares kept for a
    /// busier interval do not hold disk space for nothing, and a log never stalls on a burst of
    /// deletions (each may be a 64 MiB discard). The zero-filled spares (which fit any index)
    /// are kept first.
    async fn prune_spares(&self) -> LogResult<()> {
        let extra: Vec<Spare> = {
            let mut st = self.shared.st.borrow_mut();
            let keep = st.spares_wanted();
            st.spares.sort_by_key(|s| s.max_index);
            let n = st.spares.len().saturating_sub(keep).min(SPARES_PRUNED_MAX);
            let at = st.spares.len() - n;
            st.spares.drain(at..).collect()
        };
        let mut deleted = false;
        for s in extra {
            // Only cleanup: a spare that cannot be deleted is kept (and tried again later).
            match io::remove(&s.path).await {
                Ok(()) => {
                    self.shared.st.borrow_mut().stats.spares_deleted += 1;
                    deleted = true;
                }
                Err(e) => {
                    let mut st = self.shared.st.borrow_mut();
                    tracing::warn!(group = st.cfg.group, error = %e, "could not delete a spare segment");
                    st.spares.push(s);
                }
            }
        }
        if deleted {
            io::sync_dir(&self.dir()).await?;
        }
        Ok(())
    }

    async fn exclusive<F, Fut>(&self, f: F) -> LogResult<()>
    where
        F: FnOnce(Log) -> Fut,
        Fut: Future<Output = LogResult<()>> + 'static,
    {
        loop {
            let epoch = {
                let mut st = self.shared.st.borrow_mut();
                st.check_usable()?;
                if !st.exclusive && !st.trimming {
                    st.exclusive = true;
                    break;
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        }
        let log = self.clone();
        let work = f(self.clone());
        detached(async move {
            let r = work.await;
            log.shared.st.borrow_mut().end_exclusive();
            r
        })
        .await
    }

    /// Flushes everything, waits for it to be durable, lets a spare preparation finish, and
    /// closes the files.
    pub async fn close(self) -> LogResult<()> {
        let drained =
            if self.shared.st.borrow().poisoned.is_none() { self.drain().await } else { Ok(()) };
        self.shared.st.borrow_mut().closed = true;
        loop {
            let epoch = {
                let st = self.shared.st.borrow();
                if !st.preparing_spare {
                    break;
                }
                st.epoch
            };
            self.changed_since(epoch).await;
        }
        let segments: Vec<Segment> = {
            let mut st = self.shared.st.borrow_mut();
            st.closed = true;
            st.open = None;
            st.recent.clear();
            st.split.clear();
            st.wake_durable();
            st.wake_all_space();
            st.changed();
            st.segments.drain(..).collect()
        };
        for seg in segments {
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                io::close(file, &seg.path).await?;
            }
        }
        drained
    }
}

/// Runs `work` in a task of its own and resolves to its result. A caller dropped while it waits
/// does not cancel the work halfway: a roll, truncation or reset cut short could leave a spare
/// renamed but not in use, or the log marked busy for good.
fn detached<T: 'static>(work: impl Future<Output = T> + 'static) -> impl Future<Output = T> {
    type Slot<T> = Rc<RefCell<(Option<T>, Option<Waker>)>>;
    let slot: Slot<T> = Rc::new(RefCell::new((None, None)));
    let s = slot.clone();
    crate::rt::spawn(async move {
        let v = work.await;
        let mut s = s.borrow_mut();
        s.0 = Some(v);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    })
    .detach();
    std::future::poll_fn(move |cx| {
        let mut s = slot.borrow_mut();
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
}

/// A place in the queue of appenders waiting for buffer space (see `Log::reserve`).
struct Ticket<'a> {
    log: &'a Log,
    number: Option<u64>,
}

impl Ticket<'_> {
    /// The holder got its space: the next ticket's turn.
    fn consume(&mut self) {
        if let Some(t) = self.number.take() {
            let mut st = self.log.shared.st.borrow_mut();
            debug_assert_eq!(t, st.space_head);
            st.advance_space_head();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Dropped while waiting (the append failed or its future was dropped): give up the turn.
        if let Some(t) = self.number.take() {
            let mut st = self.log.shared.st.borrow_mut();
            st.space_waiters.remove(&t);
            if t == st.space_head {
                st.advance_space_head();
            } else {
                st.space_abandoned.push(t);
            }
        }
    }
}

/// Future of [`Log::wait_durable`].
pub struct DurableWait {
    shared: Rc<Shared>,
    index: u64,
}

impl Future for DurableWait {
    type Output = LogResult<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.st.borrow_mut();
        if st.durable_index >= self.index {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = st.check_usable() {
            return Poll::Ready(Err(e));
        }
        if self.index > st.last_index {
            return Poll::Ready(Err(LogError::Truncated { from: st.last_index + 1 }));
        }
        st.durable_waiters.push(Waiter { index: self.index, waker: cx.waker().clone() });
        Poll::Pending
    }
}

/// Rebuilds the in-memory state from the segments on disk (see the module docs).
async fn recover(st: &mut State, segs: Vec<(u64, u64, PathBuf)>) -> LogResult<RecoveryReport> {
    let mut report = RecoveryReport { segments: segs.len(), ..Default::default() };
    let window = 4usize << 20;
    let frame_max = st.cfg.frame_bytes_max();
    let limits = st.cfg.frame_limits;
    let group = st.cfg.group;
    let seg_bytes = st.cfg.segment_bytes;
    let count = segs.len();
    let mut superseded: Vec<Segment> = Vec::new();
    let mut tail_end = 0u64;
    for (k, (seq, first_index, path)) in segs.into_iter().enumerate() {
        let is_last = k + 1 == count;
        // Supersede or continue what came before.
        if let Some(back) = st.frames.back() {
            let end = back.last_index();
            if first_index > end + 1 {
                return Err(LogError::Inconsistent {
                    dir: st.dir.clone(),
                    detail: format!(
                        "entries {}..={} are missing: {} starts at {first_index} but the log before it ends at {end}",
                        end + 1,
                        first_index - 1,
                        path.display()
                    ),
                });
            }
            while st.frames.back().is_some_and(|f| f.first_index >= first_index) {
                st.frames.pop_back();
            }
            if let Some(f) = st.frames.back_mut()
                && f.last_index() >= first_index
            {
                f.count = (first_index - f.first_index) as u32;
            }
            while st.segments.back().is_some_and(|s| s.first_index >= first_index) {
                superseded.push(st.segments.pop_back().expect("checked"));
            }
        } else {
            st.first_index = first_index;
            // Segments wholly superseded before any frame survived.
            superseded.extend(st.segments.drain(..));
        }
        let last_term_before = st.frames.back().map_or(0, |f| f.term);
        let file = io::open_rw(&path, st.cfg.sync).await?;
        let mut cursor = ScanCursor { expected: first_index, last_term: last_term_before };
        let mut frames = Vec::new();
        let mut pos = 0u64;
        let stop = loop {
            if pos >= seg_bytes {
                break Stop::Zeros;
            }
            let want = (window + frame_max).min((seg_bytes - pos) as usize);
            let data = io::read_at(&file, &path, pos, want).await?;
            let consume = if pos + (data.len() as u64) >= seg_bytes { data.len() } else { window };
            let (used, stop) = segment::scan_window(
                &data,
                pos,
                consume,
                seq,
                group,
                &limits,
                &mut cursor,
                &mut frames,
            );
            pos += used as u64;
            if stop != Stop::Window {
                break stop;
            }
            if data.len() < want {
                break Stop::Zeros;
            }
        };
        report.frames += frames.len() as u64;
        let max_index = frames.last().map_or(first_index - 1, |f| f.last_index());
        st.frames.extend(frames);
        st.segments.push_back(Segment {
            seq,
            first_index,
            path: path.clone(),
            file: Rc::new(file),
            max_index,
        });
        if !is_last {
            continue;
        }
        // The tail: look past the stop for evidence that the log went on.
        tail_end = pos;
        report.tail = format!("{stop:?} at offset {pos}");
        let torn_window = st.cfg.torn_window_bytes();
        let file = st.segments.back().expect("pushed").file.clone();
        let search = |from: u64, to: u64| {
            let (file, path) = (file.clone(), path.clone());
            async move {
                let mut at = from;
                while at < to {
                    let want = (window + frame_max).min((seg_bytes - at) as usize);
                    let limit = window.min((to - at) as usize);
                    let data = io::read_at(&file, &path, at, want).await?;
                    if let Some(found) =
                        segment::find_later_frame(&data, at, limit, group, cursor.expected, &limits)
                    {
                        return Ok::<_, LogError>(Some(found));
                    }
                    if data.len() < want {
                        break;
                    }
                    at += limit as u64;
                }
                Ok(None)
            }
        };
        // Beyond the window of writes that may have been in flight, a valid later frame proves
        // that entries which may have been acknowledged are damaged.
        let window_end = (pos + torn_window).min(seg_bytes);
        if let Some((offset, found_first, _)) = search(window_end + 1, seg_bytes).await? {
            return Err(LogError::Corruption {
                path,
                offset: pos,
                first_index: cursor.expected,
                last_index: found_first.saturating_sub(1).max(cursor.expected),
                detail: format!(
                    "{stop:?}, yet a valid frame of index {found_first} follows at offset {offset}, beyond the {torn_window}-byte window of writes that may have been in flight"
                ),
            });
        }
        // Within the window, later frames are what remains of writes torn by a crash.
        let evidence = search(pos + 1, window_end + 1).await?;
        if matches!(stop, Stop::Bad(_)) || evidence.is_some() {
            // A torn tail: zero what a crash may have left after the valid end, durably, so a
            // later crash cannot mistake it for evidence of corruption.
            let zero_from = align_down(pos);
            let zero_to = (pos + torn_window + BLOCK as u64).min(seg_bytes);
            let zero_to = align_up(zero_to).min(seg_bytes);
            let keep = (pos - zero_from) as usize;
            let head = if keep > 0 {
                Some(io::read_at(&file, &path, zero_from, keep).await?)
            } else {
                None
            };
            let mut buf = io::alloc(&file, (zero_to - zero_from) as usize);
            buf.as_bytes_mut().fill(0);
            if let Some(h) = head {
                buf.as_bytes_mut()[..keep].copy_from_slice(&h[..keep]);
            }
            io::write_all_at(&file, &path, Rc::new(buf), zero_from).await?;
            report.torn_bytes_cut = evidence.map_or(BLOCK as u64, |(o, _, _)| o - pos + 1);
            tracing::warn!(group, path = %path.display(), offset = pos, "cut a torn tail");
        }
        // What recovery read may still sit in a volatile device cache after a process crash:
        // make it durable before calling it durable.
        io::fdatasync(&file, &path).await?;
    }
    for seg in superseded {
        if let Ok(file) = Rc::try_unwrap(seg.file) {
            io::close(file, &seg.path).await?;
        }
        io::remove(&seg.path).await?;
    }
    if !st.segments.is_empty() {
        io::sync_dir(&st.dir.clone()).await?;
    }
    st.last_index = st.frames.back().map_or(st.first_index - 1, |f| f.last_index());
    st.last_term = st.frames.back().map_or(0, |f| f.term);
    st.durable_index = st.last_index;
    if let Some(seg) = st.segments.back() {
        // Reopen the open buffer on the partial last block.
        let base = align_down(tail_end);
        let keep = (tail_end - base) as usize;
        let mut buf = io::alloc(&seg.file, st.cfg.flush_bytes_max + BLOCK);
        if keep > 0 {
            let head = io::read_at(&seg.file, &seg.path, base, keep).await?;
            buf.as_bytes_mut()[..keep].copy_from_slice(&head[..keep]);
        }
        st.open = Some(OpenBuf { segment: seg.seq, base, buf, len: keep, flushed_len: keep });
    }
    Ok(report)
}
