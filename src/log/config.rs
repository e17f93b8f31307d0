//! Settings of one group's log, with their defaults and why.

use crate::frame::FrameLimits;

/// The block size every write is aligned to. O_DIRECT on this project's hosts needs 512 bytes;
/// 4 KiB matches the physical block of NVMe drives and of the page size, so a write never makes
/// the device read-modify-write a block.
pub const BLOCK: usize = 4096;

/// How a flush is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// Write, then `fdatasync` the segment. Works everywhere; two operations per flush.
    Fdatasync,
    /// Open segments with `O_DSYNC`: each write returns once durable. On a device with FUA and a
    /// pure overwrite of written blocks (our zero-filled or recycled segments) this is a single
    /// FUA write and no metadata commit; without FUA the kernel emulates it with a cache flush,
    /// and it costs about what write + fdatasync costs. Measure both with `corelog bench wal`.
    Dsync,
    /// A flush that starts with no other in flight and takes everything gathered, less than
    /// [`LogConfig::pipeline_bytes`] (light load: someone waits for just this flush), is one
    /// write flagged `RWF_DSYNC`; every other flush is a write then an fdatasync. One operation
    /// instead of two where latency is what counts (on this project's test VM one appender's
    /// p50 98 -> 89 µs), the bandwidth of write + fdatasync where flushes pipeline. With the
    /// `runtime` I/O engine (no per-write flags) every flush is write + fdatasync.
    Adaptive,
}

impl std::str::FromStr for SyncMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fdatasync" => Ok(SyncMethod::Fdatasync),
            "dsync" | "o_dsync" => Ok(SyncMethod::Dsync),
            "adaptive" => Ok(SyncMethod::Adaptive),
            other => Err(format!("unknown sync method {other:?} (fdatasync, dsync or adaptive)")),
        }
    }
}

impl std::fmt::Display for SyncMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMethod::Fdatasync => "fdatasync",
            SyncMethod::Dsync => "dsync",
            SyncMethod::Adaptive => "adaptive",
        })
    }
}

/// Which io_uring submits the log's flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// A flush is one write linked to its fdatasync, submitted together (`rt::fs::FlushRing`:
    /// on the executor's own ring, or on glommio a side ring of the log's). Falls back to
    /// `Runtime` when that cannot be set up.
    Uring,
    /// The runtime's plain file API: write, then fdatasync, as two operations.
    Runtime,
}

impl std::str::FromStr for IoEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" => Ok(IoEngine::Uring),
            "runtime" | "glommio" => Ok(IoEngine::Runtime),
            other => Err(format!("unknown I/O engine {other:?} (uring or runtime)")),
        }
    }
}

impl std::fmt::Display for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoEngine::Uring => "uring",
            IoEngine::Runtime => "runtime",
        })
    }
}

/// Settings of one group's log.
///
/// Memory of one open log is bounded by
/// `(flushes_in_flight_max + 1) * (flush_bytes_max + BLOCK) + recent_cache_bytes`
/// plus the in-memory frame index (about 48 bytes per frame on disk), whatever the load:
/// appends beyond the open buffer wait (backpressure) instead of queueing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The consensus group this log belongs to; every frame must carry it.
    pub group: u64,
    /// Size of each segment file. Default 64 MiB; at least 1 MiB and a multiple of [`BLOCK`].
    pub segment_bytes: u64,
    /// Most bytes one flush writes (and the capacity of the buffer where appends gather while
    /// flushes are in flight). Default 1 MiB; a multiple of [`BLOCK`]. Larger flushes get more of
    /// the device's bandwidth per fdatasync; under light load flushes are as small as one block.
    pub flush_bytes_max: usize,
    /// Flushes that may be in flight at once. Default 4 (on this project's test VM, 4 KiB
    /// entries at 64 appends in flight: ~1.3-1.4x the appends/s of 2, with a lower p99; 8 was
    /// worse at 512 in flight). The durable index advances only over the contiguous prefix of
    /// completed flushes. A further flush starts only when the last one ended on a block
    /// boundary (two writes never race on one block).
    pub flushes_in_flight_max: usize,
    /// Bytes that must have gathered before a flush is cut at a block boundary so that a
    /// further flush may start while it is in flight (pipelining; see the log's module docs).
    /// Below this, a flush takes everything gathered and the next waits for it. Default 64 KiB.
    pub pipeline_bytes: usize,
    /// How a flush is made durable. Default [`SyncMethod::Adaptive`] (on this project's test VM,
    /// against write + fdatasync for every flush: one appender's p50 -3 to -9%, 8 appenders
    /// +8-11% appends/s, one client of a 3-replica cluster -13% p50 in 8 of 8 pairs, loaded
    /// runs within noise).
    pub sync: SyncMethod,
    /// Zero-filled or recycled segments kept ready ahead of need. Default 1.
    pub spare_segments: usize,
    /// Trimmed segments kept as spares for reuse (renamed, not deleted), at most. The log
    /// keeps as many as it put in use between its last two trims that freed segments, plus
    /// `spare_segments` (at least 8, at most this), and deletes the rest (two per trim), so a
    /// log that is trimmed as it grows recycles every segment in steady state and writes about
    /// only its frames, while a log that was busy for a while gives the space back when it
    /// calms. A recycled segment needs no
    /// zero-fill: zero-filling each new segment doubles what the disk writes. With a fixed 2,
    /// a log trimmed once a second on this project's test VM deleted and zero-filled segments
    /// at each trim, and its per-second p99 jumped to 52-183 ms there; with a fixed 8, a log
    /// taking 600 MiB/s (10 segments a second) still zero-filled 2 a second. Costs up to this
    /// many segments of disk space after a trim. Default 32.
    pub spare_segments_max: usize,
    /// Bytes of recently flushed buffers kept in memory to serve reads of recent entries
    /// (followers catching up, tails) without touching the disk. Default 4 MiB. The buffer of a
    /// large flush is kept whole and counts its whole capacity; a small one is kept as a copy.
    pub recent_cache_bytes: usize,
    /// Limits every frame must respect. A frame is at most `flush_bytes_max` bytes long.
    pub frame_limits: FrameLimits,
    /// Which ring submits flushes. Default [`IoEngine::Uring`].
    pub io_engine: IoEngine,
}

impl LogConfig {
    /// The defaults for `group`.
    pub fn new(group: u64) -> Self {
        LogConfig {
            group,
            segment_bytes: 64 << 20,
            flush_bytes_max: 1 << 20,
            flushes_in_flight_max: 4,
            pipeline_bytes: 64 << 10,
            sync: SyncMethod::Adaptive,
            spare_segments: 1,
            spare_segments_max: 32,
            recent_cache_bytes: 4 << 20,
            frame_limits: FrameLimits::default(),
            io_engine: IoEngine::Uring,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < (1 << 20) || !self.segment_bytes.is_multiple_of(BLOCK as u64) {
            return Err(format!(
                "segment_bytes {} must be at least 1 MiB and a multiple of {BLOCK}",
                self.segment_bytes
            ));
        }
        if self.flush_bytes_max < BLOCK || !self.flush_bytes_max.is_multiple_of(BLOCK) {
            return Err(format!(
                "flush_bytes_max {} must be a positive multiple of {BLOCK}",
                self.flush_bytes_max
            ));
        }
        if self.flush_bytes_max as u64 > self.segment_bytes {
            return Err("flush_bytes_max must not exceed segment_bytes".into());
        }
        if !(1..=64).contains(&self.flushes_in_flight_max) {
            return Err("flushes_in_flight_max must be within 1..=64".into());
        }
        Ok(())
    }

    /// Bytes of DMA memory the log's buffers may hold at once: the open buffer, the flushes in
    /// flight and the recent cache. Size the executor's `io_memory` to at least this, or
    /// flushes fall back to fresh heap memory (page faults on every flush).
    pub fn dma_memory_bytes(&self) -> usize {
        (self.flushes_in_flight_max + 1) * (self.flush_bytes_max + BLOCK)
            + self.recent_cache_bytes
            + (1 << 20)
    }

    /// The largest frame this log accepts, in bytes.
    pub fn frame_bytes_max(&self) -> usize {
        self.flush_bytes_max
            .min(crate::frame::FRAME_HEADER_LEN + self.frame_limits.payload_bytes_max as usize)
    }

    /// How far past the end of the valid log a crash may have left blocks of writes that were
    /// in flight (and so never acknowledged). A bad frame followed by valid frames further than
    /// this is corruption of acknowledged data, not a torn tail.
    pub fn torn_window_bytes(&self) -> u64 {
        (self.flushes_in_flight_max * (self.flush_bytes_max + BLOCK)) as u64
    }
}
