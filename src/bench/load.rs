//! The load generator of `corelog bench cluster`: a few connections, many appends in flight on
//! each (the [`PipelinedClient`]), every append's latency recorded.
//!
//! Two kinds of phase:
//!
//! - **Closed loop** (saturation): `concurrency` appends are kept in flight, spread over the
//!   connections; each completion submits the next append from the completing thread (no
//!   hand-off). Its throughput is what the cluster sustains; its latency is the latency *at*
//!   saturation, which is mostly queueing.
//! - **Open loop**: appends are due at a fixed rate (uniformly spaced per connection), whatever
//!   happened to the earlier ones; a pacer thread per connection submits each when due. The
//!   latency of an append is measured from when it was *due*, not from when the pacer got to
//!   send it, so a stall of the cluster (or of the generator) shows in the figures instead of
//!   silently delaying the next sends (coordinated omission, as wrk2 corrects it). The lag
//!   between due and sent is recorded too: it is the generator's own share of the latency.
//!
//! Latencies are recorded for appends *submitted* (closed loop) or *due* (open loop) in the
//! measured window; rates count appends *completed* in it. Per-second rows (count, p99) are
//! taken from the same recorders once a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::latency_histogram;
use crate::client::ClientError;
use crate::client_pipelined::{PipelinedClient, PipelinedConfig};
use crate::consensus::rand::SplitMix64;

/// The shortest sleep of an open-loop pacer: a wake-up per append would cost more CPU than
/// the appends (tens of thousands a second on two cores). At high rates a pacer sleeps long
/// enough for about [`PACER_APPENDS_PER_WAKE`] appends to fall due, up to
/// [`PACER_SLEEP_MAX`]; the appends due meanwhile go out together, and the wait counts in
/// their latency (it is measured from each one's due time).
const PACER_SLEEP_MIN: Duration = Duration::from_micros(100);
/// See [`PACER_SLEEP_MIN`].
const PACER_APPENDS_PER_WAKE: u32 = 8;
/// See [`PACER_SLEEP_MIN`].
const PACER_SLEEP_MAX: Duration = Duration::from_micros(500);
/// Name of the open loop's pacer threads.
const PACER_THREAD: &str = "corelog-bench-p";

/// Sizes of the entries appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySize {
    /// Every entry has this many bytes.
    Fixed(usize),
    /// Uniformly distributed in `lo..=hi` bytes.
    Uniform(usize, usize),
}

impl EntrySize {
    /// Parses `1KiB`, `4096` or `uniform:128..4096` (sizes with units allowed).
    pub fn parse(s: &str) -> Result<EntrySize, String> {
        match s.trim().strip_prefix("uniform:") {
            Some(range) => {
                let (lo, hi) = range
                    .split_once("..")
                    .ok_or_else(|| format!("bad distribution {s:?} (use uniform:LO..HI)"))?;
                let (lo, hi) =
                    (super::parse_bytes(lo)?, super::parse_bytes(hi.trim_start_matches('=')));
                let hi = hi?;
                if lo == 0 || lo > hi {
                    return Err(format!("bad range in {s:?}: need 0 < LO <= HI"));
                }
                Ok(EntrySize::Uniform(lo, hi))
            }
            None => match super::parse_bytes(s)? {
                0 => Err("entry size must be at least 1 byte".into()),
                n => Ok(EntrySize::Fixed(n)),
            },
        }
    }

    /// The largest entry.
    pub fn max(&self) -> usize {
        match *self {
            EntrySize::Fixed(n) => n,
            EntrySize::Uniform(_, hi) => hi,
        }
    }

    /// The mean entry size.
    pub fn mean(&self) -> f64 {
        match *self {
            EntrySize::Fixed(n) => n as f64,
            EntrySize::Uniform(lo, hi) => (lo + hi) as f64 / 2.0,
        }
    }

    fn draw(&self, rng: &mut SplitMix64) -> usize {
        match *self {
            EntrySize::Fixed(n) => n,
            EntrySize::Uniform(lo, hi) => rng.range_inclusive(lo as u64, hi as u64) as usize,
        }
    }
}

impl std::fmt::Display for EntrySize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntrySize::Fixed(n) => write!(f, "{n} B"),
            EntrySize::Uniform(lo, hi) => write!(f, "uniform {lo}..{hi} B"),
        }
    }
}

/// What one connection's completions record.
pub(crate) struct Recorder {
    /// Latency of the appends measured in this phase (µs).
    pub latency: Histogram<u64>,
    /// Open loop: due → submitted (µs), the generator's own lag.
    pub send_lag: Histogram<u64>,
    /// Closed loop and open loop: submitted → acknowledged (µs).
    pub service: Histogram<u64>,
    /// Latency of this second (taken by the reporter).
    pub second: Histogram<u64>,
    /// Appends completed (successfully) in the window, and their bytes.
    pub completed: u64,
    pub bytes: u64,
    /// Errors in the window, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            latency: latency_histogram(),
            send_lag: latency_histogram(),
            service: latency_histogram(),
            second: latency_histogram(),
            completed: 0,
            bytes: 0,
            errors: BTreeMap::new(),
        }
    }
}

/// The kind of an error, for counting.
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Timeout(..) => "timeout".into(),
        ClientError::Refused { status, .. } => format!("refused:{status:?}"),
        ClientError::Protocol(_) => "protocol".into(),
    }
}

/// The error kind of the appends an open loop's pacer gave up unsent (see `open_loop`).
pub const UNSENT: &str = "unsent (the generator gave up its backlog)";

/// One row of the per-second series.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecondRow {
    pub phase: String,
    pub second: u64,
    pub appends: u64,
    pub mib: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// The slowest flush (write + fdatasync) that any replica's log completed in this second,
    /// µs (a local cluster only): a disk stall shows here.
    pub flush_max_us: Option<u64>,
}

/// Where an open loop's pacers spent the measured window, summed over pacers: what tells a
/// due-to-sent lag caused by the generator (late wake-ups: no CPU for it) from one caused by
/// the cluster (sends blocked while it does not read: its backpressure; a connection's window
/// full of appends in flight: its backlog).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacerTimes {
    /// The pacers' time in the measured window, summed (pacers x window).
    pub total: Duration,
    /// In send calls: encoding appends and writing them to the connection, blocked there
    /// while the node does not read (and any wait for a CPU meanwhile).
    pub sending: Duration,
    /// Waiting for room in a connection's window, appends due.
    pub window_full: Duration,
    /// Waking later than asked (the thread waited for a CPU, or its timer slack).
    pub late_wakes: Duration,
}

impl PacerTimes {
    fn add(&mut self, o: &PacerTimes) {
        self.total += o.total;
        self.sending += o.sending;
        self.window_full += o.window_full;
        self.late_wakes += o.late_wakes;
    }

    /// A part's share of the pacers' time.
    pub fn share(&self, part: Duration) -> f64 {
        part.as_secs_f64() / self.total.as_secs_f64().max(1e-9)
    }
}

/// What the machine did during a phase's measured window.
pub struct Window {
    /// CPU time of the whole process, and of the generator's threads.
    pub process_cpu: Duration,
    pub generator_cpu: Duration,
    /// Open loop: where the pacers spent it.
    pub pacers: Option<PacerTimes>,
    /// What the data directory's block device did (a local cluster on a block device).
    pub disk: Option<super::DiskCounters>,
    /// What each local replica's logs did in the window (see [`ReplicaProbe`]).
    pub replicas: Option<Vec<ReplicaCounts>>,
}

/// The outcome of one phase.
pub struct PhaseResult {
    pub name: String,
    /// Open-loop rate asked for (None: closed loop).
    pub offered_per_sec: Option<f64>,
    pub duration: Duration,
    pub latency: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    pub service: Histogram<u64>,
    pub completed: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: Vec<SecondRow>,
    /// CPU time of the whole process in the window, and of the generator's threads.
    pub process_cpu: Duration,
    pub generator_cpu: Duration,
    /// Open loop: where the pacers spent the window.
    pub pacers: Option<PacerTimes>,
    /// What the data directory's block device did in the window, when known.
    pub disk: Option<super::DiskCounters>,
    /// What each local replica's logs did in the window, when known.
    pub replicas: Option<Vec<ReplicaCounts>>,
}

impl PhaseResult {
    pub fn appends_per_sec(&self) -> f64 {
        self.completed as f64 / self.duration.as_secs_f64()
    }
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.duration.as_secs_f64() / (1 << 20) as f64
    }
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The generator: its connections (one pipelined client each) and the data appended.
pub struct Generator {
    clients: Vec<Arc<PipelinedClient>>,
    recorders: Vec<Arc<Mutex<Recorder>>>,
    groups: u64,
    size: EntrySize,
    /// Random bytes to slice entries from.
    data: Arc<Vec<u8>>,
    seed: u64,
    /// The local cluster's disk, whose writes each phase reports.
    disk: Option<super::BlockDevice>,
    /// Called after each second's row: the slowest flush of that second (see
    /// [`SecondRow::flush_max_us`]).
    flush_probe: Mutex<Option<FlushProbe>>,
    /// Read at the start and the end of each phase's window (see [`Window::replicas`]).
    replica_probe: Mutex<Option<ReplicaProbe>>,
}

/// Gives the slowest flush completed since its previous call, µs.
pub type FlushProbe = Box<dyn FnMut() -> Option<u64> + Send>;

/// What one replica's logs have done so far (counters since it started), or in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaCounts {
    /// Flushes its logs completed.
    pub flushes: u64,
    /// Bytes its flushes wrote (whole blocks).
    pub written: u64,
    /// Frames its reads took from disk instead of memory: on a leader, mostly entries for a
    /// follower that fell behind what the leader keeps in memory.
    pub frames_read_back: u64,
    /// Time appends to its logs waited for room in the log's buffer, summed, ns.
    pub space_wait_ns: u64,
    /// Its logs' flushes in flight integrated over time (`LogStats::flushes_in_flight_ns`).
    pub inflight_ns: u64,
    /// Segments its logs prepared by writing zeros (a trimmed segment recycled needs none).
    pub zero_filled: u64,
    /// Segments its logs began to write (zero-filled or recycled before).
    pub activated: u64,
    /// Trimmed segments its logs kept as spares for reuse.
    pub recycled: u64,
}

impl ReplicaCounts {
    /// The counts of several replicas summed.
    pub fn total(replicas: &[ReplicaCounts]) -> ReplicaCounts {
        replicas.iter().fold(ReplicaCounts::default(), |t, c| ReplicaCounts {
            flushes: t.flushes + c.flushes,
            written: t.written + c.written,
            frames_read_back: t.frames_read_back + c.frames_read_back,
            space_wait_ns: t.space_wait_ns + c.space_wait_ns,
            inflight_ns: t.inflight_ns + c.inflight_ns,
            zero_filled: t.zero_filled + c.zero_filled,
            activated: t.activated + c.activated,
            recycled: t.recycled + c.recycled,
        })
    }

    fn since(self, before: ReplicaCounts) -> ReplicaCounts {
        ReplicaCounts {
            flushes: self.flushes.saturating_sub(before.flushes),
            written: self.written.saturating_sub(before.written),
            frames_read_back: self.frames_read_back.saturating_sub(before.frames_read_back),
            space_wait_ns: self.space_wait_ns.saturating_sub(before.space_wait_ns),
            inflight_ns: self.inflight_ns.saturating_sub(before.inflight_ns),
            zero_filled: self.zero_filled.saturating_sub(before.zero_filled),
            activated: self.activated.saturating_sub(before.activated),
            recycled: self.recycled.saturating_sub(before.recycled),
        }
    }
}

/// What [`Generator::settle`] found.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Settled {
    /// Seconds of load.
    pub seconds: f64,
    /// Appends in flight.
    pub concurrency: usize,
    pub appends_per_sec: f64,
    pub mib_per_sec: f64,
    /// Segments the local replicas' logs zero-filled meanwhile.
    pub segments_zero_filled: u64,
    /// How it ended ([`settle_verdict`]; `cap`: the cap passed first).
    pub end: SettleEnd,
}

/// How a settling load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleEnd {
    /// The logs recycle the segments they begin.
    Recycling,
    /// No log began a segment in the first seconds (a light load): nothing to settle.
    Idle,
    /// The cap passed first.
    Cap,
    /// A replica's counters could not be read.
    ProbeFailed,
}

/// Seconds without a segment begun after which a settling load is found idle.
const SETTLE_IDLE_SECONDS: u64 = 2;

/// Whether a settling load may end after `seconds` whole seconds, from its segment counts in
/// the last second and since it began: once the trims have given the logs segments to recycle
/// and at most a tenth of the segments begun in the last second were zero-filled (a log
/// trimmed once a second may still zero-fill one now and then); or when no log has begun a
/// segment for [`SETTLE_IDLE_SECONDS`] (too light a load to matter; spares the logs zero-fill
/// ahead of need meanwhile do not count).
pub fn settle_verdict(
    last: ReplicaCounts,
    total: ReplicaCounts,
    seconds: u64,
) -> Option<SettleEnd> {
    if total.recycled > 0 && last.zero_filled * 10 <= last.activated {
        Some(SettleEnd::Recycling)
    } else if seconds >= SETTLE_IDLE_SECONDS && total.activated == 0 {
        Some(SettleEnd::Idle)
    } else {
        None
    }
}

/// Gives every local replica's counters so far, in node order.
pub type ReplicaProbe = Box<dyn FnMut() -> Option<Vec<ReplicaCounts>> + Send>;

/// Settings shared by the callbacks of one closed-loop phase.
struct ClosedCtx {
    client: Arc<PipelinedClient>,
    rec: Arc<Mutex<Recorder>>,
    rng: Mutex<SplitMix64>,
    data: Arc<Vec<u8>>,
    size: EntrySize,
    groups: u64,
    measure_from: Instant,
    stop_at: Instant,
    stop: AtomicBool,
}

fn record_done(
    rec: &Mutex<Recorder>,
    r: Result<crate::client::Position, ClientError>,
    bytes: usize,
    intended: Instant,
    sent: Instant,
    window: (Instant, Instant),
) {
    let now = Instant::now();
    let mut rec = rec.lock().unwrap_or_else(|e| e.into_inner());
    let completed_in = now >= window.0 && now < window.1;
    match r {
        Ok(_) => {
            if intended >= window.0 && intended < window.1 {
                let us = (now.duration_since(intended).as_micros() as u64).max(1);
                rec.latency.saturating_record(us);
                rec.second.saturating_record(us);
                rec.service.saturating_record((now.duration_since(sent).as_micros() as u64).max(1));
                if sent > intended {
                    rec.send_lag
                        .saturating_record(sent.duration_since(intended).as_micros() as u64);
                } else {
                    rec.send_lag.saturating_record(0);
                }
            }
            if completed_in {
                rec.completed += 1;
                rec.bytes += bytes as u64;
            }
        }
        Err(e) => {
            if completed_in || (intended >= window.0 && intended < window.1) {
                *rec.errors.entry(error_kind(&e)).or_default() += 1;
            }
        }
    }
}

fn closed_next(ctx: &Arc<ClosedCtx>) {
    let now = Instant::now();
    if ctx.stop.load(Ordering::Relaxed) || now >= ctx.stop_at {
        return;
    }
    let (len, off, group) = {
        let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
        let len = ctx.size.draw(&mut rng);
        let off = rng.below((ctx.data.len() - len + 1) as u64) as usize;
        (len, off, rng.below(ctx.groups))
    };
    let c = ctx.clone();
    let r = ctx.client.try_append_with(group, &ctx.data[off..off + len], move |r| {
        record_done(&c.rec, r, len, now, now, (c.measure_from, c.stop_at));
        closed_next(&c);
    });
    if let Err(e) = r {
        tracing::debug!(error = %e, "bench: submit failed");
    }
}

impl Generator {
    /// A generator with `connections` pipelined clients of `nodes`, each allowing
    /// `in_flight_per_connection` appends in flight.
    pub fn new(
        nodes: &[std::net::SocketAddr],
        connections: usize,
        in_flight_per_connection: usize,
        groups: u64,
        size: EntrySize,
        seed: u64,
    ) -> Result<Generator, String> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let mut cfg = PipelinedConfig::new(nodes.to_vec());
            cfg.max_in_flight = in_flight_per_connection.max(1);
            clients.push(Arc::new(PipelinedClient::new(cfg).map_err(|e| e.to_string())?));
        }
        let mut rng = SplitMix64::new(seed);
        let data_len = (size.max() * 4).max(64 << 10);
        let data: Vec<u8> = (0..data_len).map(|_| rng.next_u64() as u8).collect();
        Ok(Generator {
            recorders: (0..connections).map(|_| Arc::new(Mutex::new(Recorder::new()))).collect(),
            clients,
            groups: groups.max(1),
            size,
            data: Arc::new(data),
            seed,
            disk: None,
            flush_probe: Mutex::new(None),
            replica_probe: Mutex::new(None),
        })
    }

    /// Reports, for each phase, what the block device under `dir` wrote (the local cluster's
    /// data directory); nothing when `dir` is not on a block device.
    pub fn measure_disk_of(&mut self, dir: &std::path::Path) {
        self.disk = super::BlockDevice::of_dir(dir);
    }

    /// Reports each second's slowest flush from `probe` (see [`SecondRow::flush_max_us`]).
    pub fn probe_flushes(&mut self, probe: FlushProbe) {
        self.flush_probe = Mutex::new(Some(probe));
    }

    /// Reports, for each phase, what each replica's logs wrote and read back from `probe`.
    pub fn probe_replicas(&mut self, probe: ReplicaProbe) {
        self.replica_probe = Mutex::new(Some(probe));
    }

    fn replicas_now(&self) -> Option<Vec<ReplicaCounts>> {
        self.replica_probe.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(|p| p())
    }

    /// Waits until every group takes an append (a leader everywhere), up to `within`.
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        for g in 0..self.groups {
            let p =
                self.clients[0].append(g, b"corelog bench: probe").map_err(|e| e.to_string())?;
            let deadline = Instant::now() + within;
            match p.wait() {
                Ok(_) => {}
                Err(e) if Instant::now() < deadline => {
                    return Err(format!("group {g} does not accept appends: {e}"));
                }
                Err(e) => return Err(format!("group {g}: no leader within {within:?}: {e}")),
            }
        }
        Ok(())
    }

    fn reset(&self) {
        for r in &self.recorders {
            *r.lock().unwrap_or_else(|e| e.into_inner()) = Recorder::new();
        }
    }

    /// Takes the per-second figures of all connections.
    fn take_second(&self, phase: &str, second: u64, prev: &mut (u64, u64, u64)) -> SecondRow {
        let mut h = latency_histogram();
        let (mut done, mut bytes, mut errors) = (0, 0, 0);
        for r in &self.recorders {
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.add(&r.second);
            r.second.reset();
            done += r.completed;
            bytes += r.bytes;
            errors += r.errors.values().sum::<u64>();
        }
        let row = SecondRow {
            phase: phase.to_string(),
            second,
            appends: done - prev.0,
            mib: (bytes - prev.1) as f64 / (1 << 20) as f64,
            p50_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.5) },
            p99_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.99) },
            max_us: h.max(),
            errors: errors - prev.2,
            flush_max_us: None,
        };
        *prev = (done, bytes, errors);
        row
    }

    fn collect(
        &self,
        name: &str,
        offered: Option<f64>,
        duration: Duration,
        seconds: Vec<SecondRow>,
        window: Window,
    ) -> PhaseResult {
        let mut res = PhaseResult {
            name: name.to_string(),
            offered_per_sec: offered,
            duration,
            latency: latency_histogram(),
            send_lag: latency_histogram(),
            service: latency_histogram(),
            completed: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            seconds,
            process_cpu: window.process_cpu,
            generator_cpu: window.generator_cpu,
            pacers: window.pacers,
            disk: window.disk,
            replicas: window.replicas,
        };
        for r in &self.recorders {
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            let _ = res.latency.add(&r.latency);
            let _ = res.send_lag.add(&r.send_lag);
            let _ = res.service.add(&r.service);
            res.completed += r.completed;
            res.bytes += r.bytes;
            for (k, v) in &r.errors {
                *res.errors.entry(k.clone()).or_default() += v;
            }
        }
        res
    }

    /// Reports once a second until `stop_at`, measuring from `measure_from`, or until `done`
    /// (given each second's row) says to stop.
    fn tick_until(
        &self,
        phase: &str,
        measure_from: Instant,
        stop_at: Instant,
        progress: &mut super::progress::Progress,
        done: &mut dyn FnMut(&SecondRow) -> bool,
    ) -> (Vec<SecondRow>, Window) {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let mut prev = (0, 0, 0);
        let mut rows = Vec::new();
        let cpu0 = (super::process_cpu_time(), generator_cpu_time());
        let disk0 = self.disk.as_ref().and_then(|d| d.counters());
        let replicas0 = self.replicas_now();
        if let Some(p) = self.flush_probe.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = p(); // The baseline: the first second starts now.
        }
        let mut next = measure_from + Duration::from_secs(1);
        let (mut second, mut stopped) = (0, false);
        while next <= stop_at + Duration::from_millis(1) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            second += 1;
            let mut row = self.take_second(phase, second, &mut prev);
            // After the row's boundary, so its counts stay exact: the probe asks the nodes
            // (each answers within a tick), so its second ends a few ms later.
            if let Some(p) = self.flush_probe.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                row.flush_max_us = p();
            }
            progress.second(&row);
            next += Duration::from_secs(1);
            let stop = done(&row);
            rows.push(row);
            if stop {
                stopped = true;
                break;
            }
        }
        if !stopped {
            std::thread::sleep(stop_at.saturating_duration_since(Instant::now()));
        }
        let window = Window {
            process_cpu: super::process_cpu_time().saturating_sub(cpu0.0),
            generator_cpu: generator_cpu_time().saturating_sub(cpu0.1),
            pacers: None,
            disk: self.disk.as_ref().and_then(|d| d.since(disk0)),
            replicas: replicas0.zip(self.replicas_now()).and_then(|(before, after)| {
                (before.len() == after.len())
                    .then(|| after.iter().zip(&before).map(|(a, b)| a.since(*b)).collect())
            }),
        };
        (rows, window)
    }

    /// Waits until nothing is in flight (up to the clients' deadline).
    fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.clients.iter().any(|c| c.in_flight() > 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A closed-loop phase: `concurrency` appends in flight for `warmup + duration`, figures
    /// from the last `duration`.
    pub fn closed_loop(
        &self,
        name: &str,
        concurrency: usize,
        warmup: Duration,
        duration: Duration,
        progress: &mut super::progress::Progress,
    ) -> PhaseResult {
        self.reset();
        let measure_from = Instant::now() + warmup;
        let stop_at = measure_from + duration;
        let ctxs = self.start_closed(concurrency, measure_from, stop_at);
        progress.phase(name, warmup, duration);
        let (rows, window) = self.tick_until(name, measure_from, stop_at, progress, &mut |_| false);
        self.stop_closed(&ctxs);
        progress.end_phase();
        self.collect(name, None, duration, rows, window)
    }

    /// Starts `concurrency` appends in flight, each completion sending the next until
    /// `stop_at` (or [`Generator::stop_closed`]), recording those completed from
    /// `measure_from`.
    fn start_closed(
        &self,
        concurrency: usize,
        measure_from: Instant,
        stop_at: Instant,
    ) -> Vec<Arc<ClosedCtx>> {
        let n = self.clients.len();
        let mut ctxs = Vec::new();
        for (k, (c, r)) in self.clients.iter().zip(&self.recorders).enumerate() {
            let ctx = Arc::new(ClosedCtx {
                client: c.clone(),
                rec: r.clone(),
                rng: Mutex::new(SplitMix64::new(self.seed ^ ((k as u64 + 1) * 0x9E37))),
                data: self.data.clone(),
                size: self.size,
                groups: self.groups,
                measure_from,
                stop_at,
                stop: AtomicBool::new(false),
            });
            let share = concurrency / n + usize::from(k < concurrency % n);
            for _ in 0..share {
                closed_next(&ctx);
            }
            ctxs.push(ctx);
        }
        ctxs
    }

    /// Stops a closed loop and waits for what it has in flight.
    fn stop_closed(&self, ctxs: &[Arc<ClosedCtx>]) {
        for c in ctxs {
            c.stop.store(true, Ordering::Relaxed);
        }
        self.drain();
    }

    /// Runs a closed loop at `concurrency`, not measured, until the local replicas' logs
    /// recycle the segments they begin (see [`settle_verdict`]), or for `cap` at most. A fresh
    /// data directory has no trimmed segments to recycle, so its logs first write every new
    /// segment twice (zeros, then frames): a transient of the directory, not the log's
    /// sustained rate, which a saturation phase is meant to find. `None` without local
    /// replicas to ask.
    pub fn settle(
        &self,
        concurrency: usize,
        cap: Duration,
        progress: &mut super::progress::Progress,
    ) -> Option<Settled> {
        let total = |v: Vec<ReplicaCounts>| ReplicaCounts::total(&v);
        let first = total(self.replicas_now()?);
        self.reset();
        let start = Instant::now();
        let stop_at = start + cap;
        let ctxs = self.start_closed(concurrency, start, stop_at);
        progress.phase_up_to("settle", cap);
        let (mut prev, mut end) = (first, SettleEnd::Cap);
        let (rows, _) = self.tick_until("settle", start, stop_at, progress, &mut |row| {
            let Some(now) = self.replicas_now().map(total) else {
                end = SettleEnd::ProbeFailed;
                return true;
            };
            let verdict = settle_verdict(now.since(prev), now.since(first), row.second);
            prev = now;
            verdict.inspect(|&v| end = v).is_some()
        });
        let took = start.elapsed();
        self.stop_closed(&ctxs);
        progress.end_phase();
        let secs = took.as_secs_f64().max(1e-9);
        Some(Settled {
            seconds: took.as_secs_f64(),
            concurrency,
            appends_per_sec: rows.iter().map(|r| r.appends).sum::<u64>() as f64 / secs,
            mib_per_sec: rows.iter().map(|r| r.mib).sum::<f64>() / secs,
            segments_zero_filled: prev.since(first).zero_filled,
            end,
        })
    }

    /// An open-loop phase at `rate` appends/s for `warmup + duration`, figures from the last
    /// `duration` (appends due in the warm-up are not counted, whenever they complete).
    /// `on_measure` is called when the warm-up ends. At most `window` appends are in flight per
    /// connection (and at most the clients' `max_in_flight`): an append due when its
    /// connection's window is full waits, and the wait counts in its latency.
    #[allow(clippy::too_many_arguments)]
    pub fn open_loop(
        &self,
        name: &str,
        rate: f64,
        window: usize,
        warmup: Duration,
        duration: Duration,
        progress: &mut super::progress::Progress,
        on_measure: &mut dyn FnMut(),
    ) -> PhaseResult {
        self.reset();
        let n = self.clients.len();
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + warmup;
        let stop_at = measure_from + duration;
        // A pacer far behind gives up its backlog here, so that a rate far beyond the
        // cluster's does not run on for minutes after the phase (the phase is reported as
        // fallen behind, and the appends given up as errors).
        let give_up_at = stop_at + duration.max(Duration::from_secs(1));
        let interval = Duration::from_secs_f64(n as f64 / rate.max(1e-3));
        let sleep_min = (interval * PACER_APPENDS_PER_WAKE).clamp(PACER_SLEEP_MIN, PACER_SLEEP_MAX);
        let mut pacers = Vec::new();
        for (k, (c, r)) in self.clients.iter().zip(&self.recorders).enumerate() {
            let (c, r, data, size, groups) =
                (c.clone(), r.clone(), self.data.clone(), self.size, self.groups);
            let seed = self.seed ^ ((k as u64 + 101) * 0x9E37);
            // Connections start staggered within one interval.
            let first = start + interval.mul_f64(k as f64 / n as f64);
            let h = std::thread::Builder::new()
                .name(PACER_THREAD.into())
                .spawn(move || {
                    if interval >= PACER_SLEEP_MAX {
                        precise_sleeps();
                    }
                    // CPU and time counted from the end of the warm-up (read when first past
                    // it).
                    let mut cpu0 = None;
                    let mut times = PacerTimes::default();
                    let mut rng = SplitMix64::new(seed);
                    let mut due = first;
                    let mut i: u32 = 0;
                    while due < stop_at {
                        let now = Instant::now();
                        if now >= give_up_at {
                            break;
                        }
                        let measuring = now >= measure_from;
                        if cpu0.is_none() && measuring {
                            cpu0 = Some(thread_cpu_time());
                        }
                        // Sleep at least `sleep_min`: the appends due meanwhile go out
                        // together, in one write (their lag is measured, and counts in their
                        // latency).
                        if due > now {
                            let asked = (due - now).max(sleep_min);
                            std::thread::sleep(asked);
                            if measuring {
                                times.late_wakes += now.elapsed().saturating_sub(asked);
                            }
                        }
                        let now = Instant::now();
                        // Room in the window, taken once per wake (completions meanwhile only
                        // add to it): no lock of the client's state per append.
                        let mut room = window.saturating_sub(c.in_flight());
                        let ok = c.corked(|| {
                            while due <= now && due < stop_at && room > 0 {
                                room -= 1;
                                let len = size.draw(&mut rng);
                                let off = rng.below((data.len() - len + 1) as u64) as usize;
                                let group = rng.below(groups);
                                let intended = due;
                                let rec = r.clone();
                                let sent = Instant::now();
                                let res = c.append_with(group, &data[off..off + len], move |res| {
                                    let window = (measure_from, stop_at);
                                    record_done(&rec, res, len, intended, sent, window);
                                });
                                if let Err(e) = res {
                                    tracing::debug!(error = %e, "bench: submit failed");
                                    return false;
                                }
                                i += 1;
                                due = first + interval * i;
                            }
                            true
                        });
                        if measuring {
                            times.sending += now.elapsed();
                        }
                        if !ok {
                            break;
                        }
                        // The window filled with appends still due: wait for completions.
                        if room == 0 && due <= now && due < stop_at {
                            let t = Instant::now();
                            std::thread::sleep(PACER_SLEEP_MIN);
                            if measuring {
                                // Oversleeping is the generator's, not the window's.
                                let slept = t.elapsed();
                                times.window_full += slept.min(PACER_SLEEP_MIN);
                                times.late_wakes += slept.saturating_sub(PACER_SLEEP_MIN);
                            }
                        }
                    }
                    // Up to now, not to `stop_at`: the last send may end after it, and the
                    // parts are stretches of this time.
                    times.total = Instant::now().saturating_duration_since(measure_from);
                    // Appends due in the measured window and never sent (given up): the
                    // `k` from `i` on with `first + k * interval` in it.
                    let index_at = |t: Instant| {
                        let ns = t.saturating_duration_since(first).as_nanos() as f64;
                        (ns / interval.as_nanos().max(1) as f64).ceil() as u64
                    };
                    let unsent =
                        index_at(stop_at).saturating_sub(index_at(measure_from).max(u64::from(i)));
                    if due < stop_at && unsent > 0 {
                        let mut rec = r.lock().unwrap_or_else(|e| e.into_inner());
                        *rec.errors.entry(UNSENT.into()).or_default() += unsent;
                    }
                    (thread_cpu_time().saturating_sub(cpu0.unwrap_or_else(thread_cpu_time)), times)
                })
                .expect("spawn a pacer thread");
            pacers.push(h);
        }
        progress.phase(name, warmup, duration);
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        on_measure();
        let (rows, mut window) =
            self.tick_until(name, measure_from, stop_at, progress, &mut |_| false);
        let mut times = PacerTimes::default();
        for p in pacers {
            let (cpu, t) = p.join().unwrap_or_default();
            window.generator_cpu += cpu;
            times.add(&t);
        }
        window.pacers = Some(times);
        self.drain();
        progress.end_phase();
        self.collect(name, Some(rate), duration, rows, window)
    }

    /// Closes the connections.
    pub fn close(&self) {
        for c in &self.clients {
            c.close();
        }
    }
}

/// CPU time of the generator's threads (the pipelined clients' and the pacers'), from
/// /proc/self/task/*/stat (clock ticks).
pub fn generator_cpu_time() -> Duration {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        // The open loop's pacer threads exit with their phase, taking their figures out of
        // /proc: they count their own CPU instead (`thread_cpu_time`, see `open_loop`).
        if !(comm.starts_with("corelog-client") || comm.starts_with("corelog-bench"))
            || comm.starts_with(PACER_THREAD)
        {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the comm: state is field 3; utime and stime are fields 14 and 15.
        let f = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f(14) + f(15);
    }
    Duration::from_secs_f64(ticks as f64 / tick)
}

/// Makes the calling thread's sleeps end on time: Linux lets a normal thread's timed sleep run
/// up to its timer slack late (50 µs by default), which a pacer that wakes for each append
/// (one every [`PACER_SLEEP_MAX`] or more) would add to every latency it measures (from the
/// due time) while the system under test did nothing: one client at 500 appends/s showed a
/// due-to-sent lag of 77 µs p50 with the default slack, 25-28 µs with this. `tools/etcd-load`'s
/// connections do the same, so the two are measured alike. Faster pacers keep the default:
/// they sleep at least 100 µs and send several appends per wake, and there the slack merges
/// wake-ups (with 1 µs at the default bench's 80% load, the pacers took a third more CPU and
/// fell behind: lag p99 15-257 ms against 1.1-1.5 ms).
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes a value in nanoseconds and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_sizes() {
        assert_eq!(EntrySize::parse("1KiB").unwrap(), EntrySize::Fixed(1024));
        assert_eq!(EntrySize::parse("uniform:128..4k").unwrap(), EntrySize::Uniform(128, 4096));
        assert!(EntrySize::parse("uniform:4k..128").is_err());
        assert!(EntrySize::parse("uniform:12").is_err());
        assert!(EntrySize::parse("0").is_err());
        let mut rng = SplitMix64::new(1);
        let u = EntrySize::Uniform(10, 20);
        let draws: Vec<usize> = (0..1000).map(|_| u.draw(&mut rng)).collect();
        assert!(draws.iter().all(|d| (10..=20).contains(d)));
        assert!(draws.contains(&10) && draws.contains(&20));
    }

    #[test]
    fn a_settling_load_ends_once_the_logs_recycle_or_when_nothing_happens() {
        let c = |zero_filled, activated, recycled| ReplicaCounts {
            zero_filled,
            activated,
            recycled,
            ..ReplicaCounts::default()
        };
        // A fresh directory: every segment begun was zero-filled, nothing recycled yet.
        assert_eq!(settle_verdict(c(12, 12, 0), c(12, 13, 0), 1), None);
        // The first trims recycled some, but this second still zero-filled most it began.
        assert_eq!(settle_verdict(c(5, 12, 8), c(40, 45, 8), 3), None);
        // Recycling: one zero-fill among 12 segments begun is within a tenth.
        let end = Some(SettleEnd::Recycling);
        assert_eq!(settle_verdict(c(1, 12, 12), c(41, 57, 20), 4), end);
        assert_eq!(settle_verdict(c(2, 12, 12), c(42, 57, 20), 4), None);
        // A second without a segment begun settles only once recycling has begun.
        assert_eq!(settle_verdict(c(0, 0, 0), c(3, 3, 1), 5), end);
        assert_eq!(settle_verdict(c(0, 0, 0), c(3, 3, 0), 5), None);
        // A load too light to begin a segment: idle after two seconds, not after one.
        assert_eq!(settle_verdict(c(0, 0, 0), c(0, 0, 0), 1), None);
        assert_eq!(settle_verdict(c(0, 0, 0), c(0, 0, 0), 2), Some(SettleEnd::Idle));
        // A spare zero-filled ahead of need is not a segment begun.
        assert_eq!(settle_verdict(c(0, 0, 0), c(1, 0, 0), 2), Some(SettleEnd::Idle));
    }
}
