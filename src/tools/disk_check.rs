//! `corelog disk-check`: measures the device under a directory the way the log uses it, and
//! writes a profile that `corelog serve` reads (`disk_profile` in the node configuration).
//!
//! Everything goes through one io_uring ring (the `io-uring` crate, no runtime) on a file
//! opened with O_DIRECT that is first written whole with zeros, as the log's segments are:
//! writes into unwritten extents would make every fdatasync commit file-system metadata too,
//! and the figures would be those of a log that corelog does not write. It measures:
//!
//! - sequential write bandwidth by block size (4 KiB..1 MiB) and queue depth (1..32), with a
//!   final fdatasync inside the timed span so a volatile write cache cannot flatter it;
//! - at queue depth 1, 4 KiB: write then fdatasync, a write with `RWF_DSYNC` (what `sync =
//!   "adaptive"` does for a flush that goes out alone, and what an `O_DSYNC` segment of `sync =
//!   "dsync"` does for every write), fdatasync alone with nothing new to write (the cost of
//!   the device's cache flush), and optionally a write linked to an fdatasync (`IOSQE_IO_LINK`:
//!   one submission, no wake-up between the two; how the log makes its other flushes);
//! - flushes as the log makes them (a write of the chosen flush size, then its sync) with 1, 2,
//!   4 and 8 in flight.
//!
//! Latency percentiles come from an HdrHistogram in nanoseconds. The process waits for each
//! completion in `io_uring_enter` (no polling), so on a busy host a wake-up may add a
//! scheduler tick; run it on an idle host.
//!
//! The profile: `sync` is `dsync` when an RWF_DSYNC write is clearly cheaper than write +
//! fdatasync (p50 at most 90 % and p99 at most 110 % of it; a device with FUA), `adaptive` when
//! it is no dearer (p50 at most 100 %, the same tail bound), else `fdatasync`. `flush_bytes_max` is the smaller of 256 KiB and 1 MiB whose bandwidth reaches
//! 90 % of the best measured (not below 256 KiB, since a flush also bounds the largest frame).
//! `flushes_in_flight_max` is the fewest flushes in flight that reach 90 % of the best flush
//! throughput.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{IoUring, opcode, squeue, types};
use serde::{Deserialize, Serialize};

use crate::log::{LogConfig, SyncMethod};
use crate::tools::doctor::{self, AlignedBuf, Verdict};

/// Arguments of `corelog disk-check`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiskCheckArgs {
    /// A directory on the device to measure (the data directory). A scratch file is created
    /// in it and removed at the end.
    #[arg(long)]
    pub dir: PathBuf,
    /// A short run (~3 s): fewer block sizes and queue depths, 0.5 s per latency figure.
    #[arg(long)]
    pub quick: bool,
    /// Time of each latency measurement (a bandwidth cell gets a fifth of it). Default 1.5 s,
    /// 0.5 s with --quick; a default run takes about 15 s.
    #[arg(long, value_parser = crate::bench::parse_duration)]
    pub duration: Option<Duration>,
    /// Size of the scratch file (written whole with zeros first; writes wrap around in it).
    #[arg(long, value_parser = crate::bench::parse_bytes, default_value = "64MiB")]
    pub file_bytes: usize,
    /// Also measure a 4 KiB write linked to an fdatasync (IOSQE_IO_LINK).
    #[arg(long)]
    pub linked: bool,
    /// Write the profile (TOML) that `corelog serve` reads through `disk_profile`.
    #[arg(long)]
    pub profile: Option<PathBuf>,
}

/// The log settings a profile sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileLog {
    /// How a flush is made durable.
    pub sync: SyncMethod,
    /// Most bytes per flush.
    pub flush_bytes_max: usize,
    /// Flushes in flight at once.
    pub flushes_in_flight_max: usize,
}

/// What the profile was derived from (informational; `serve` ignores it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Measured {
    /// The directory measured.
    pub dir: String,
    /// File system and block device.
    pub device: String,
    /// 4 KiB write + fdatasync, p50 and p99, µs.
    pub write_fdatasync_p50_us: f64,
    /// See above.
    pub write_fdatasync_p99_us: f64,
    /// 4 KiB RWF_DSYNC write, p50 and p99, µs.
    pub dsync_p50_us: f64,
    /// See above.
    pub dsync_p99_us: f64,
    /// fdatasync with nothing to write, p99, µs.
    pub fdatasync_p99_us: f64,
    /// Best sequential bandwidth, MB/s.
    pub bandwidth_best_mb_s: f64,
    /// Flush throughput with the chosen settings, MB/s.
    pub flush_mb_s: f64,
}

/// A disk profile: what `corelog disk-check --profile` writes and `serve` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskProfile {
    /// The settings applied to every log of the node.
    pub log: ProfileLog,
    /// The figures behind them.
    #[serde(default)]
    pub measured: Measured,
}

impl DiskProfile {
    /// Checks the settings with the log's own rules.
    pub fn validate(&self) -> Result<(), String> {
        LogConfig {
            flush_bytes_max: self.log.flush_bytes_max,
            flushes_in_flight_max: self.log.flushes_in_flight_max,
            sync: self.log.sync,
            ..LogConfig::new(0)
        }
        .validate()
    }

    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<DiskProfile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading disk profile {}: {e}", path.display()))?;
        let p: DiskProfile =
            toml::from_str(&text).map_err(|e| format!("disk profile {}: {e}", path.display()))?;
        p.validate().map_err(|e| format!("disk profile {}: {e}", path.display()))?;
        Ok(p)
    }

    /// The profile as TOML, with a comment saying where it came from.
    pub fn to_toml(&self) -> String {
        format!(
            "# corelog disk profile, written by `corelog disk-check`. A node reads it through\n\
             # `disk_profile = \"<this file>\"`; only [log] is applied.\n\n{}",
            toml::to_string_pretty(self).expect("serializable")
        )
    }

    /// Writes the profile to `path`.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, self.to_toml()).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Latency percentiles of one measurement, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Operations per second.
    pub ops_s: f64,
    /// Percentiles, µs.
    pub p50_us: f64,
    /// See above.
    pub p99_us: f64,
    /// See above.
    pub p999_us: f64,
    /// See above.
    pub max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>, elapsed: Duration) -> Latency {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            ops_s: h.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(block bytes, queue depth, MB/s)`.
    pub bandwidth: Vec<(usize, usize, f64)>,
    /// 4 KiB write + fdatasync.
    pub write_fdatasync: Latency,
    /// 4 KiB write with RWF_DSYNC.
    pub dsync: Latency,
    /// fdatasync with nothing to write.
    pub fdatasync: Latency,
    /// 4 KiB write linked to fdatasync, when measured.
    pub linked: Option<Latency>,
    /// `(flushes in flight, MB/s)` at the chosen flush size and sync method.
    pub flushes: Vec<(usize, f64)>,
}

impl Report {
    /// The 4 KiB write + fdatasync the log would otherwise make: linked, when that was
    /// measured (`--linked`), as the log submits it; else write, then fdatasync.
    pub fn write_then_sync(&self) -> &Latency {
        self.linked.as_ref().unwrap_or(&self.write_fdatasync)
    }
}

/// The sync method a report argues for: `dsync` for every flush when an RWF_DSYNC write is
/// clearly cheaper than write + fdatasync (a device with FUA), `adaptive` (RWF_DSYNC for the
/// flushes that go out alone) when it is no dearer, else `fdatasync`. In each case its tail
/// may be at most 10 % worse.
pub fn choose_sync(write_fdatasync: &Latency, dsync: &Latency) -> SyncMethod {
    let tail_ok = dsync.p99_us <= 1.1 * write_fdatasync.p99_us;
    if tail_ok && dsync.p50_us <= 0.9 * write_fdatasync.p50_us {
        SyncMethod::Dsync
    } else if tail_ok && dsync.p50_us <= write_fdatasync.p50_us {
        SyncMethod::Adaptive
    } else {
        SyncMethod::Fdatasync
    }
}

/// The flush size a bandwidth table argues for (256 KiB or 1 MiB).
pub fn choose_flush_bytes(bandwidth: &[(usize, usize, f64)]) -> usize {
    let best = bandwidth.iter().map(|b| b.2).fold(0.0, f64::max);
    let best_at =
        |bs: usize| bandwidth.iter().filter(|b| b.0 == bs).map(|b| b.2).fold(f64::NAN, f64::max);
    let small = best_at(256 << 10);
    if small >= 0.9 * best { 256 << 10 } else { 1 << 20 }
}

/// The flushes in flight a flush-throughput table argues for.
pub fn choose_in_flight(flushes: &[(usize, f64)]) -> usize {
    let best = flushes.iter().map(|f| f.1).fold(0.0, f64::max);
    flushes.iter().filter(|f| f.1 >= 0.9 * best).map(|f| f.0).min().unwrap_or(2).clamp(1, 64)
}

/// The verdicts of a report, as `(check, threshold, found, verdict)`.
pub fn verdicts(r: &Report) -> Vec<(String, String, String, Verdict)> {
    let lat = |name: &str, l: &Latency| {
        let v = if l.p99_us < 2_000.0 {
            Verdict::Pass
        } else if l.p99_us < 10_000.0 {
            Verdict::Warn
        } else {
            Verdict::Fail
        };
        (
            format!("{name} p99"),
            "PASS < 2 ms, WARN < 10 ms (etcd: fsync p99 < 10 ms)".to_string(),
            format!("{:.0} µs", l.p99_us),
            v,
        )
    };
    let mut out = vec![
        lat("4 KiB write + fdatasync", &r.write_fdatasync),
        lat("4 KiB RWF_DSYNC write", &r.dsync),
        lat("fdatasync alone", &r.fdatasync),
    ];
    let best = r.bandwidth.iter().filter(|b| b.0 == 1 << 20).map(|b| b.2).fold(0.0, f64::max);
    out.push((
        "1 MiB sequential bandwidth".into(),
        "PASS >= 200 MB/s, else WARN".into(),
        format!("{best:.0} MB/s"),
        if best >= 200.0 { Verdict::Pass } else { Verdict::Warn },
    ));
    out
}

/// The scratch file and the ring (also `corelog bench --compare`'s disk probe).
pub(crate) struct Probe {
    file: std::fs::File,
    path: PathBuf,
    ring: IoUring,
    buf: AlignedBuf,
    file_bytes: u64,
    next: u64,
}

/// The writes that fill a probe's file (whose size is a multiple of it).
const FILL_BYTES: usize = 1 << 20;

/// The largest write a probe makes: the largest flush of a local bench cluster's nodes (2
/// MiB) fits, with room for a larger setting.
pub(crate) const WRITE_BYTES_MAX: usize = 4 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    DsyncWrite,
    Fdatasync,
}

impl Probe {
    /// A zero-filled O_DIRECT scratch file of about `file_bytes` under `dir` (removed on drop),
    /// written whole once and synced, so later writes are overwrites, as in the log.
    pub(crate) fn open(dir: &Path, file_bytes: usize) -> Result<Probe, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file_bytes = (file_bytes.max(FILL_BYTES) / FILL_BYTES * FILL_BYTES) as u64;
        // Unique per probe: several may run at once in one process.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".corelog-disk-check-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("opening {} with O_DIRECT: {e}", path.display()))?;
        let ring = IoUring::new(64).map_err(|e| format!("io_uring_setup: {e}"))?;
        let mut p = Probe {
            file,
            path,
            ring,
            buf: AlignedBuf::new(WRITE_BYTES_MAX, 0xa5),
            file_bytes,
            next: 0,
        };
        // Written whole once, then synced: later writes are overwrites, as in the log.
        p.seq_write(FILL_BYTES, 8, None)?;
        Ok(p)
    }

    fn next_offset(&mut self, len: usize) -> u64 {
        if self.next + len as u64 > self.file_bytes {
            self.next = 0;
        }
        let off = self.next;
        self.next += len as u64;
        off
    }

    fn push(&mut self, op: Op, len: usize, link: bool, user_data: u64) -> Result<(), String> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut e = match op {
            Op::Write | Op::DsyncWrite => {
                let off = self.next_offset(len);
                opcode::Write::new(fd, self.buf.as_ptr(), len as u32)
                    .offset(off)
                    .rw_flags(if op == Op::DsyncWrite { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            Op::Fdatasync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        };
        if link {
            e = e.flags(squeue::Flags::IO_LINK);
        }
        e = e.user_data(user_data | (len as u64) << 32);
        // SAFETY: the buffer lives in `self` for as long as the ring, and every submission is
        // waited for before `self` is dropped (see `wait` and `Drop`).
        unsafe { self.ring.submission().push(&e) }
            .map_err(|_| "io_uring submission queue full".to_string())
    }

    /// Submits, waits for at least `n` completions and returns all that are ready as
    /// `(user_data low bits, len)`; an error or a short write is an error.
    fn wait(&mut self, n: usize) -> Result<Vec<(u32, u32)>, String> {
        self.ring.submit_and_wait(n).map_err(|e| format!("io_uring_enter: {e}"))?;
        let mut out = Vec::new();
        for c in self.ring.completion() {
            let (tag, len) = (c.user_data() as u32, (c.user_data() >> 32) as u32);
            let want = if tag & 1 == 1 { 0 } else { len as i32 };
            if c.result() < 0 {
                return Err(format!(
                    "{} failed: {}",
                    if tag & 1 == 1 { "fdatasync" } else { "write" },
                    std::io::Error::from_raw_os_error(-c.result())
                ));
            }
            if c.result() != want {
                return Err(format!("short write: {} of {len} bytes", c.result()));
            }
            out.push((tag, len));
        }
        Ok(out)
    }

    /// Sequential writes of `bs` with `qd` in flight, for `dur` (or once over the whole file),
    /// then an fdatasync; bytes per second over the whole span.
    fn seq_write(&mut self, bs: usize, qd: usize, dur: Option<Duration>) -> Result<f64, String> {
        let start = Instant::now();
        let total = self.file_bytes;
        self.next = 0;
        let (mut inflight, mut issued, mut bytes) = (0usize, 0u64, 0u64);
        loop {
            while inflight < qd
                && match dur {
                    Some(d) => start.elapsed() < d,
                    None => issued < total,
                }
            {
                self.push(Op::Write, bs, false, 0)?;
                inflight += 1;
                issued += bs as u64;
            }
            if inflight == 0 {
                break;
            }
            for _ in self.wait(1)? {
                inflight -= 1;
                bytes += bs as u64;
            }
        }
        self.push(Op::Fdatasync, 0, false, 1)?;
        self.wait(1)?;
        Ok(bytes as f64 / start.elapsed().as_secs_f64().max(1e-9))
    }

    /// A write of `bs` (at most [`WRITE_BYTES_MAX`], and at most the file's size) at the next offset, then an fdatasync, at queue
    /// depth 1: how long the pair took, and the fdatasync alone.
    pub(crate) fn write_then_fdatasync(
        &mut self,
        bs: usize,
    ) -> Result<(Duration, Duration), String> {
        if bs > WRITE_BYTES_MAX || bs as u64 > self.file_bytes {
            return Err(format!(
                "a probe writes at most {} bytes at once, not {bs}",
                WRITE_BYTES_MAX.min(self.file_bytes as usize)
            ));
        }
        let t0 = Instant::now();
        self.push(Op::Write, bs, false, 0)?;
        self.wait(1)?;
        let t1 = Instant::now();
        self.push(Op::Fdatasync, 0, false, 1)?;
        self.wait(1)?;
        Ok((t0.elapsed(), t1.elapsed()))
    }

    /// Queue depth 1, 4 KiB: one of the durable-write patterns, for `dur`.
    fn latency(&mut self, pattern: Pattern, dur: Duration) -> Result<Latency, String> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let start = Instant::now();
        while start.elapsed() < dur || h.len() < 5 {
            let t = Instant::now();
            match pattern {
                Pattern::WriteThenFdatasync => {
                    self.write_then_fdatasync(4096)?;
                }
                Pattern::Dsync => {
                    self.push(Op::DsyncWrite, 4096, false, 0)?;
                    self.wait(1)?;
                }
                Pattern::FdatasyncAlone => {
                    self.push(Op::Fdatasync, 0, false, 1)?;
                    self.wait(1)?;
                }
                Pattern::Linked => {
                    self.push(Op::Write, 4096, true, 0)?;
                    self.push(Op::Fdatasync, 0, false, 1)?;
                    let mut got = self.wait(2)?.len();
                    while got < 2 {
                        got += self.wait(1)?.len();
                    }
                }
            }
            h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
            if start.elapsed() > dur * 20 {
                break;
            }
        }
        Ok(Latency::of(&h, start.elapsed()))
    }

    /// Flushes as the log makes them: `n` streams, each writing `bs` then making it durable
    /// with `sync`, for `dur`; bytes made durable per second.
    fn flushes(
        &mut self,
        bs: usize,
        n: usize,
        sync: SyncMethod,
        dur: Duration,
    ) -> Result<f64, String> {
        let write = if sync == SyncMethod::Dsync { Op::DsyncWrite } else { Op::Write };
        let start = Instant::now();
        let (mut inflight, mut bytes) = (0usize, 0u64);
        for s in 0..n {
            self.push(write, bs, false, (s as u64) << 1)?;
            inflight += 1;
        }
        while inflight > 0 {
            for (tag, _) in self.wait(1)? {
                let slot = (tag >> 1) as u64;
                let durable = tag & 1 == 1 || sync == SyncMethod::Dsync;
                inflight -= 1;
                if durable {
                    bytes += bs as u64;
                    if start.elapsed() < dur {
                        self.push(write, bs, false, slot << 1)?;
                        inflight += 1;
                    }
                } else {
                    self.push(Op::Fdatasync, bs, false, slot << 1 | 1)?;
                    inflight += 1;
                }
            }
        }
        Ok(bytes as f64 / start.elapsed().as_secs_f64().max(1e-9))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Nothing is in flight here: every measurement waits for all it submitted.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Clone, Copy)]
enum Pattern {
    WriteThenFdatasync,
    Dsync,
    FdatasyncAlone,
    Linked,
}

/// The block sizes and queue depths of the bandwidth table.
pub fn grid(quick: bool) -> (Vec<usize>, Vec<usize>) {
    if quick {
        (vec![4 << 10, 64 << 10, 256 << 10, 1 << 20], vec![1, 8, 32])
    } else {
        (vec![4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20], vec![1, 4, 8, 16, 32])
    }
}

/// Runs every measurement.
pub fn measure(
    dir: &Path,
    quick: bool,
    dur: Duration,
    file_bytes: usize,
    linked: bool,
) -> Result<Report, String> {
    let mut p = Probe::open(dir, file_bytes)?;
    let mut r = Report::default();
    let (sizes, depths) = grid(quick);
    let cell = (dur / 5).max(Duration::from_millis(50));
    for &bs in &sizes {
        for &qd in &depths {
            let bps = p.seq_write(bs, qd, Some(cell))?;
            r.bandwidth.push((bs, qd, bps / 1e6));
        }
    }
    r.write_fdatasync = p.latency(Pattern::WriteThenFdatasync, dur)?;
    r.dsync = p.latency(Pattern::Dsync, dur)?;
    r.fdatasync = p.latency(Pattern::FdatasyncAlone, dur)?;
    if linked {
        r.linked = Some(p.latency(Pattern::Linked, dur)?);
    }
    let sync = choose_sync(r.write_then_sync(), &r.dsync);
    let flush = choose_flush_bytes(&r.bandwidth);
    let fcell = (dur / 3).max(Duration::from_millis(50));
    for n in [1, 2, 4, 8] {
        let bps = p.flushes(flush, n, sync, fcell)?;
        r.flushes.push((n, bps / 1e6));
    }
    Ok(r)
}

/// The profile a report argues for.
pub fn profile_of(r: &Report, dir: &Path, device: &str) -> DiskProfile {
    let sync = choose_sync(r.write_then_sync(), &r.dsync);
    let n = choose_in_flight(&r.flushes);
    DiskProfile {
        log: ProfileLog {
            sync,
            flush_bytes_max: choose_flush_bytes(&r.bandwidth),
            flushes_in_flight_max: n,
        },
        measured: Measured {
            dir: dir.display().to_string(),
            device: device.to_string(),
            write_fdatasync_p50_us: r.write_fdatasync.p50_us,
            write_fdatasync_p99_us: r.write_fdatasync.p99_us,
            dsync_p50_us: r.dsync.p50_us,
            dsync_p99_us: r.dsync.p99_us,
            fdatasync_p99_us: r.fdatasync.p99_us,
            bandwidth_best_mb_s: r.bandwidth.iter().map(|b| b.2).fold(0.0, f64::max),
            flush_mb_s: r.flushes.iter().find(|f| f.0 == n).map_or(0.0, |f| f.1),
        },
    }
}

fn size_label(b: usize) -> String {
    if b >= 1 << 20 { format!("{} MiB", b >> 20) } else { format!("{} KiB", b >> 10) }
}

/// The device line: file system, device, scheduler, write cache.
fn describe_device(dir: &Path) -> String {
    let fs = crate::log::filesystem_type(dir).map_or("unknown".to_string(), doctor::fs_name);
    match doctor::block_device_of_dir(&doctor::Sys::host(), dir) {
        Ok(d) => {
            let (sched, wc, fua) = (d.queue("scheduler"), d.queue("write_cache"), d.queue("fua"));
            let unknown = || "?".to_string();
            let disks: Vec<String> = (0..d.disks.len())
                .map(|i| {
                    let sched = sched[i].1.as_deref().map(|s| doctor::selected(s).unwrap_or(s));
                    format!(
                        "{}: scheduler {}, write cache {}, fua {}",
                        d.disks[i],
                        sched.unwrap_or("?"),
                        wc[i].1.clone().unwrap_or_else(unknown),
                        fua[i].1.clone().unwrap_or_else(unknown)
                    )
                })
                .collect();
            format!("{fs} on /dev/{} ({})", d.name, disks.join("; "))
        }
        Err(e) => format!("{fs} ({e})"),
    }
}

/// Runs `corelog disk-check`.
pub fn run(args: &DiskCheckArgs) -> ExitCode {
    let dur = args.duration.unwrap_or(if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(1500)
    });
    if !args.dir.is_dir() {
        eprintln!("corelog disk-check: {} is not a directory", args.dir.display());
        return ExitCode::FAILURE;
    }
    if !crate::log::direct_io_effective(&args.dir) {
        eprintln!(
            "corelog disk-check: O_DIRECT is not in effect on {} (tmpfs?): nothing to measure",
            args.dir.display()
        );
        return ExitCode::FAILURE;
    }
    let device = describe_device(&args.dir);
    println!("corelog disk-check");
    for l in crate::bench::host_header(&args.dir) {
        println!("{l}");
    }
    println!("device    {device}");
    if let Some(w) = load_warning() {
        println!("{w}");
    }
    println!(
        "settings  {} per latency figure, {} per bandwidth cell, scratch file {}",
        fmt_dur(dur),
        fmt_dur((dur / 5).max(Duration::from_millis(50))),
        size_label(args.file_bytes)
    );
    let r = match measure(&args.dir, args.quick, dur, args.file_bytes, args.linked) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corelog disk-check: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", render(&r));
    let p = profile_of(&r, &args.dir, &device);
    println!(
        "\nprofile: sync {}, flush_bytes_max {}, flushes_in_flight_max {}",
        p.log.sync,
        size_label(p.log.flush_bytes_max),
        p.log.flushes_in_flight_max
    );
    if let Some(path) = &args.profile {
        if let Err(e) = p.save(path) {
            eprintln!("corelog disk-check: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "written to {} (set disk_profile = {:?} in the node config)",
            path.display(),
            path
        );
    }
    if verdicts(&r).iter().any(|v| v.3 == Verdict::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A warning when the host is busy: the process waits in `io_uring_enter`, and with more
/// runnable threads than cores each wake-up may wait for a scheduler tick, which then shows in
/// every latency figure.
fn load_warning() -> Option<String> {
    let load: f64 =
        std::fs::read_to_string("/proc/loadavg").ok()?.split(' ').next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (load > cores as f64 * 0.75).then(|| {
        format!(
            "WARNING   load average {load:.1} on {cores} cores: latency figures include waits for \
             the CPU (a scheduler tick is 1-4 ms); measure on an idle host"
        )
    })
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The tables of a report.
pub fn render(r: &Report) -> String {
    let mut s = String::from(
        "\nsequential O_DIRECT writes, MB/s (final fdatasync included); rows: block size, \
         columns: queue depth\n",
    );
    let mut depths: Vec<usize> = r.bandwidth.iter().map(|b| b.1).collect();
    depths.sort_unstable();
    depths.dedup();
    let mut sizes: Vec<usize> = r.bandwidth.iter().map(|b| b.0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    s += &format!("{:>8}", "block");
    for d in &depths {
        s += &format!("{:>9}", format!("qd{d}"));
    }
    s += "\n";
    for bs in &sizes {
        s += &format!("{:>8}", size_label(*bs));
        for d in &depths {
            let v = r.bandwidth.iter().find(|b| b.0 == *bs && b.1 == *d).map_or(0.0, |b| b.2);
            s += &format!("{v:>9.1}");
        }
        s += "\n";
    }
    s += &format!(
        "\ndurable 4 KiB writes, queue depth 1   {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let mut row = |name: &str, l: &Latency| {
        s += &format!(
            "{name:<37} {:>8.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}\n",
            l.ops_s, l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    };
    row("write, then fdatasync", &r.write_fdatasync);
    row("write with RWF_DSYNC", &r.dsync);
    row("fdatasync alone (nothing to write)", &r.fdatasync);
    if let Some(l) = &r.linked {
        row("write linked to fdatasync (IO_LINK)", l);
    }
    let sync = choose_sync(r.write_then_sync(), &r.dsync);
    s += &format!(
        "\nflushes of {} ({sync}), MB/s made durable by flushes in flight:",
        size_label(choose_flush_bytes(&r.bandwidth))
    );
    for (n, mb) in &r.flushes {
        s += &format!("  {n}: {mb:.1}");
    }
    s += "\n\n";
    let v = verdicts(r);
    let wc = v.iter().map(|x| x.0.len()).max().unwrap_or(5);
    let wt = v.iter().map(|x| x.1.chars().count()).max().unwrap_or(9);
    s += &format!("{:wc$}  {:wt$}  {:>10}  verdict\n", "check", "threshold", "found");
    for (c, t, f, verdict) in &v {
        s += &format!("{c:wc$}  {t:wt$}  {f:>10}  {verdict}\n");
    }
    s
}
