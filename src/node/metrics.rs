//! Metrics of a node: kept by each core without sharing, merged when read, served as
//! Prometheus text exposition over a tiny HTTP/1.1 server.
//!
//! # Kept per core, merged at read time
//! Every core's figures live in one [`CoreMetrics`] of plain `Cell`s and `RefCell`s, reachable
//! from that core's thread only (a thread-local set when the core starts, and an `Rc` held by
//! its group drivers): counting is a load and a store, no atomic, no lock. A reader (the
//! HTTP server's thread, or [`super::NodeHandle::snapshot`]) sends each core a request over a
//! channel; the core answers it from its tick loop (within `tick_ms`) with a copy of its
//! figures ([`CoreSnapshot`]), and the reader merges the copies. The hot path never sees the
//! channel.
//!
//! # The endpoint
//! With `metrics_addr` set, the node serves, from one std thread (scrapes are rare and small;
//! no runtime or framework is needed):
//! - `GET /metrics`: Prometheus text exposition (format 0.0.4). Base units (seconds, bytes),
//!   `_total` on counters, histograms with `_bucket{le=...}`, `_sum`, `_count`.
//! - `GET /stages`: the merged stage histograms as JSON, for `corelog bench` (see
//!   [`fetch_stages`]).
//! - `GET /trace`: the sampled appends of every core as JSON (see [`fetch_trace`] and
//!   [`super::trace`]).
//!
//! Requests are served one at a time, each with a 2 s read timeout; anything else gets 404
//! or 405.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::config::NodeConfig;
use super::stages::{STAGES, StageRecorder, new_histogram};
use super::trace::{TraceRing, TraceSample};
use crate::log::{Log, LogStats};

/// Errors counted by kind (`corelog_errors_total{kind=...}`). `segment_not_ready`: a
/// follower dropped an append (the leader sends it again) that needed a log segment still
/// being prepared, on a disk not known to be full (`no_space` when it is).
pub(crate) const ERROR_KINDS: [&str; 15] = [
    "not_leader",
    "busy",
    "no_space",
    "segment_not_ready",
    "trimmed",
    "too_large",
    "stale_sequence",
    "bad_request",
    "unknown_group",
    "wrong_core",
    "failed",
    "retry",
    "client_protocol",
    "peer_protocol",
    "log_io",
];

/// The figures of one core. Touched only by the core's own thread.
pub(crate) struct CoreMetrics {
    pub core: usize,
    /// Record stage timings (the `stage_timing` setting).
    pub stage_timing: bool,
    /// Trace one append in this many (0: off).
    pub trace_every: u64,
    pub stages: RefCell<StageRecorder>,
    trace: RefCell<TraceRing>,
    /// Client append requests taken by a leader.
    pub append_requests: Cell<u64>,
    /// Client appends that waited for room in their group's admission bound.
    pub admission_waits: Cell<u64>,
    /// Entries proposed by a leader.
    pub entries_proposed: Cell<u64>,
    /// Entries this node saw committed (commit index advances).
    pub entries_committed: Cell<u64>,
    pub elections: Cell<u64>,
    pub leader_changes: Cell<u64>,
    /// Entries a leader sent to followers inside its own log frames / framed anew.
    pub entries_sent_as_is: Cell<u64>,
    pub entries_sent_encoded: Cell<u64>,
    /// Entries a follower wrote to its log in the frames it received / framed anew.
    pub entries_written_as_received: Cell<u64>,
    pub entries_written_encoded: Cell<u64>,
    /// Entries a leader read back from its log for a follower behind the entry cache.
    pub entries_fetched: Cell<u64>,
    errors: [Cell<u64>; ERROR_KINDS.len()],
    groups: RefCell<Vec<Rc<GroupGauges>>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<CoreMetrics>>> = const { RefCell::new(None) };
}

impl CoreMetrics {
    fn new(cfg: &NodeConfig, core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            stage_timing: cfg.stage_timing,
            trace_every: if cfg.stage_timing { cfg.trace_sample_every } else { 0 },
            stages: RefCell::new(StageRecorder::default()),
            trace: RefCell::new(TraceRing::new(cfg.trace_samples_max)),
            append_requests: Cell::new(0),
            admission_waits: Cell::new(0),
            entries_proposed: Cell::new(0),
            entries_committed: Cell::new(0),
            elections: Cell::new(0),
            leader_changes: Cell::new(0),
            entries_sent_as_is: Cell::new(0),
            entries_sent_encoded: Cell::new(0),
            entries_written_as_received: Cell::new(0),
            entries_written_encoded: Cell::new(0),
            entries_fetched: Cell::new(0),
            errors: std::array::from_fn(|_| Cell::new(0)),
            groups: RefCell::new(Vec::new()),
        }
    }

    /// The figures of the core this thread runs, created (and made current) on first use.
    pub fn for_this_core(cfg: &NodeConfig, core: usize) -> Rc<CoreMetrics> {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            match &*c {
                Some(m) if m.core == core => m.clone(),
                _ => {
                    let m = Rc::new(CoreMetrics::new(cfg, core));
                    *c = Some(m.clone());
                    m
                }
            }
        })
    }

    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }

    pub fn error(&self, kind: &'static str) {
        match ERROR_KINDS.iter().position(|k| *k == kind) {
            Some(i) => Self::add(&self.errors[i], 1),
            None => debug_assert!(false, "unknown error kind {kind}"),
        }
    }

    pub fn trace(&self, s: TraceSample) {
        self.trace.borrow_mut().push(s);
    }

    pub fn register(&self, g: Rc<GroupGauges>) {
        self.groups.borrow_mut().push(g);
    }

    fn snapshot(&self, extra: CoreExtra, want_trace: bool) -> CoreSnapshot {
        CoreSnapshot {
            core: self.core,
            append_requests: self.append_requests.get(),
            admission_waits: self.admission_waits.get(),
            entries_proposed: self.entries_proposed.get(),
            entries_committed: self.entries_committed.get(),
            elections: self.elections.get(),
            leader_changes: self.leader_changes.get(),
            entries_sent_as_is: self.entries_sent_as_is.get(),
            entries_sent_encoded: self.entries_sent_encoded.get(),
            entries_written_as_received: self.entries_written_as_received.get(),
            entries_written_encoded: self.entries_written_encoded.get(),
            entries_fetched: self.entries_fetched.get(),
            errors: ERROR_KINDS.iter().zip(&self.errors).map(|(k, c)| (*k, c.get())).collect(),
            stages: self.stages.borrow().clone(),
            groups: self.groups.borrow().iter().map(|g| g.snapshot()).collect(),
            client_connections: extra.client_connections,
            peers: extra.peers,
            trace: if want_trace { self.trace.borrow().copy() } else { Vec::new() },
        }
    }
}

/// Runs `f` on the figures of this thread's core (nothing outside a core).
fn on_this_core(f: impl FnOnce(&CoreMetrics)) {
    CURRENT.with(|c| {
        if let Some(m) = &*c.borrow() {
            f(m);
        }
    });
}

/// Counts an append that waits for admission, on this thread's core.
pub(crate) fn count_admission_wait() {
    on_this_core(|m| CoreMetrics::add(&m.admission_waits, 1));
}

/// Counts an error of `kind` on this thread's core.
pub(crate) fn count_error(kind: &'static str) {
    on_this_core(|m| m.error(kind));
}

/// The gauges of one group, updated by its driver.
pub(crate) struct GroupGauges {
    pub group: u64,
    pub term: Cell<u64>,
    pub commit_index: Cell<u64>,
    pub last_index: Cell<u64>,
    /// Leader's id (0: none known).
    pub leader: Cell<u64>,
    pub is_leader: Cell<bool>,
    /// Leader only: (follower, entries behind the leader's last index).
    pub follower_lag: RefCell<Vec<(u64, u64)>>,
    pub log: Log,
    /// The group's admission bound and its size (what is taken of it: the bytes of client
    /// appends admitted and not yet answered).
    admission: (Rc<crate::rt::sync::Semaphore>, u64),
}

impl GroupGauges {
    pub fn new(
        group: u64,
        log: Log,
        admission: (Rc<crate::rt::sync::Semaphore>, u64),
    ) -> GroupGauges {
        GroupGauges {
            admission,
            group,
            term: Cell::new(0),
            commit_index: Cell::new(0),
            last_index: Cell::new(0),
            leader: Cell::new(0),
            is_leader: Cell::new(false),
            follower_lag: RefCell::new(Vec::new()),
            log,
        }
    }

    fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            group: self.group,
            term: self.term.get(),
            commit_index: self.commit_index.get(),
            last_index: self.last_index.get(),
            durable_index: self.log.durable_index(),
            first_index: self.log.first_index(),
            is_leader: self.is_leader.get(),
            leader: self.leader.get(),
            follower_lag: self.follower_lag.borrow().clone(),
            log: self.log.stats(),
            admitted_bytes: self.admission.1.saturating_sub(self.admission.0.available()),
        }
    }
}

/// What a core knows outside [`CoreMetrics`] (its connection count and peer links).
pub(crate) struct CoreExtra {
    pub client_connections: u64,
    pub peers: Vec<super::peer::LinkState>,
}

/// One figure of a peer link, summed over the cores for the exposition.
type PeerFigure = fn(&super::peer::LinkState) -> u64;

/// A copy of one group's figures.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub group: u64,
    pub term: u64,
    pub commit_index: u64,
    pub last_index: u64,
    pub durable_index: u64,
    /// First index the local log holds (the prefix before it was trimmed).
    pub first_index: u64,
    pub is_leader: bool,
    /// The leader's id (0: none known).
    pub leader: u64,
    /// Leader only: (follower, entries behind).
    pub follower_lag: Vec<(u64, u64)>,
    pub log: LogStats,
    /// Bytes of client appends admitted (`uncommitted_bytes_max`) and not yet answered.
    pub admitted_bytes: u64,
}

/// A copy of one core's figures.
#[derive(Debug, Clone)]
pub struct CoreSnapshot {
    pub core: usize,
    pub append_requests: u64,
    /// Client appends that waited for room in their group's admission bound.
    pub admission_waits: u64,
    pub entries_proposed: u64,
    pub entries_committed: u64,
    pub elections: u64,
    pub leader_changes: u64,
    /// Entries a leader sent inside its own log frames, as they are.
    pub entries_sent_as_is: u64,
    /// Entries a leader sent framed anew (around a run of whole frames, or frames no longer
    /// in memory).
    pub entries_sent_encoded: u64,
    /// Entries a follower wrote to its log inside the frames it received.
    pub entries_written_as_received: u64,
    /// Entries a follower framed anew (a range that starts inside a received frame).
    pub entries_written_encoded: u64,
    /// Entries a leader read back from its log for a follower behind the entry cache.
    pub entries_fetched: u64,
    pub errors: Vec<(&'static str, u64)>,
    pub stages: StageRecorder,
    pub groups: Vec<GroupSnapshot>,
    pub client_connections: u64,
    pub peers: Vec<super::peer::LinkState>,
    /// Sampled appends (only when asked for).
    pub trace: Vec<TraceSample>,
}

/// The figures of every core of a node.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub node: u64,
    pub cores: Vec<CoreSnapshot>,
}

/// A request to a core for a copy of its figures.
pub(crate) struct Ask {
    want_trace: bool,
    reply: Sender<CoreSnapshot>,
}

/// Answers the requests waiting for this core (called from its tick loop).
pub(crate) fn answer(asks: &Receiver<Ask>, m: &CoreMetrics, extra: impl Fn() -> CoreExtra) {
    while let Ok(ask) = asks.try_recv() {
        let _ = ask.reply.send(m.snapshot(extra(), ask.want_trace));
    }
}

/// Reaches every core of a node from any thread.
pub(crate) struct Scraper {
    node: u64,
    cores: Vec<Sender<Ask>>,
}

impl Scraper {
    /// A scraper and, per core, the receiving end its tick loop answers.
    pub fn new(node: u64, cores: usize) -> (Scraper, Vec<Receiver<Ask>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..cores).map(|_| std::sync::mpsc::channel()).unzip();
        (Scraper { node, cores: tx }, rx)
    }

    /// Copies every core's figures (each core answers within a tick).
    pub fn snapshot(&self, want_trace: bool) -> Result<NodeSnapshot, String> {
        let mut pending = Vec::new();
        for (i, c) in self.cores.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            c.send(Ask { want_trace, reply: tx }).map_err(|_| format!("core {i} has stopped"))?;
            pending.push(rx);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut cores = Vec::new();
        for (i, rx) in pending.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            cores.push(rx.recv_timeout(left).map_err(|_| format!("core {i} did not answer"))?);
        }
        Ok(NodeSnapshot { node: self.node, cores })
    }
}

impl NodeSnapshot {
    /// The stage histograms of all cores, merged.
    pub fn stages(&self) -> StageRecorder {
        let mut r = StageRecorder::default();
        for c in &self.cores {
            r.merge(&c.stages);
        }
        r
    }

    /// The log figures of every group on every core.
    pub fn logs(&self) -> impl Iterator<Item = &LogStats> {
        self.cores.iter().flat_map(|c| &c.groups).map(|g| &g.log)
    }

    /// The sampled appends of all cores.
    pub fn trace_samples(&self) -> Vec<TraceSample> {
        self.cores.iter().flat_map(|c| c.trace.iter().cloned()).collect()
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let sum = |f: fn(&CoreSnapshot) -> u64| self.cores.iter().map(f).sum::<u64>();
        let stages = self.stages();
        for (i, (name, help)) in STAGES.iter().enumerate() {
            if i == 0 {
                header(
                    &mut out,
                    "corelog_append_stage_duration_seconds",
                    "histogram",
                    "Time of each stage of a client append on the leader (see the stage label).",
                );
            }
            let _ = writeln!(out, "# stage {name}: {help}");
            histogram(
                &mut out,
                "corelog_append_stage_duration_seconds",
                &format!("stage=\"{name}\""),
                &stages.stages[i],
                1e-9,
                &SECONDS_BUCKETS,
            );
        }
        header(
            &mut out,
            "corelog_append_duration_seconds",
            "histogram",
            "Time of a client append on the leader, received to replied.",
        );
        histogram(
            &mut out,
            "corelog_append_duration_seconds",
            "",
            &stages.total,
            1e-9,
            &SECONDS_BUCKETS,
        );
        counter(
            &mut out,
            "corelog_append_stage_incomplete_total",
            "Appends timed with a stage point unknown (counted as zero).",
            &[("", stages.incomplete)],
        );
        counter(
            &mut out,
            "corelog_append_requests_total",
            "Client append requests taken by a leader.",
            &[("", sum(|c| c.append_requests))],
        );
        counter(
            &mut out,
            "corelog_append_admission_waits_total",
            "Client appends whose connection waited, unread, for room in the group's \
             uncommitted_bytes_max (backpressure instead of Busy).",
            &[("", sum(|c| c.admission_waits))],
        );
        counter(
            &mut out,
            "corelog_appends_total",
            "Entries proposed by a leader.",
            &[("", sum(|c| c.entries_proposed))],
        );
        counter(
            &mut out,
            "corelog_commits_total",
            "Entries this node saw committed.",
            &[("", sum(|c| c.entries_committed))],
        );
        counter(
            &mut out,
            "corelog_elections_total",
            "Elections this node started (campaigns, after a successful pre-vote).",
            &[("", sum(|c| c.elections))],
        );
        counter(
            &mut out,
            "corelog_peer_entries_sent_total",
            "Entries a leader sent to followers: inside its own log frames, as they are (as_is), \
             or framed anew (encoded).",
            &[
                ("frames=\"as_is\"", sum(|c| c.entries_sent_as_is)),
                ("frames=\"encoded\"", sum(|c| c.entries_sent_encoded)),
            ],
        );
        counter(
            &mut out,
            "corelog_follower_entries_written_total",
            "Entries a follower wrote to its log: inside the frames it received (as_received), \
             or framed anew (encoded).",
            &[
                ("frames=\"as_received\"", sum(|c| c.entries_written_as_received)),
                ("frames=\"encoded\"", sum(|c| c.entries_written_encoded)),
            ],
        );
        counter(
            &mut out,
            "corelog_leader_entries_fetched_total",
            "Entries a leader read back from its log for a follower that lagged behind the \
             entry cache (`max_cache_bytes`).",
            &[("", sum(|c| c.entries_fetched))],
        );
        counter(
            &mut out,
            "corelog_leader_changes_total",
            "Times a group on this node learned of a new leader.",
            &[("", sum(|c| c.leader_changes))],
        );
        let errors: Vec<(String, u64)> = ERROR_KINDS
            .iter()
            .map(|k| {
                let n = self
                    .cores
                    .iter()
                    .flat_map(|c| &c.errors)
                    .filter(|(e, _)| e == k)
                    .map(|(_, n)| n)
                    .sum();
                (format!("kind=\"{k}\""), n)
            })
            .collect();
        counter(
            &mut out,
            "corelog_errors_total",
            "Errors by kind: client responses other than OK, protocol violations, log I/O.",
            &errors.iter().map(|(l, n)| (l.as_str(), *n)).collect::<Vec<_>>(),
        );
        gauge(
            &mut out,
            "corelog_client_connections",
            "Open client connections.",
            &[("", sum(|c| c.client_connections))],
        );
        let peers: Vec<super::peer::LinkState> =
            self.cores.iter().flat_map(|c| c.peers.clone()).collect();
        let mut ids: Vec<u64> = peers.iter().map(|p| p.peer).collect();
        ids.sort_unstable();
        ids.dedup();
        let per_peer = |f: PeerFigure| -> Vec<(String, u64)> {
            ids.iter()
                .map(|id| {
                    let n = peers.iter().filter(|p| p.peer == *id).map(f).sum();
                    (format!("peer=\"{id}\""), n)
                })
                .collect()
        };
        let up = per_peer(|p| u64::from(p.up));
        gauge(
            &mut out,
            "corelog_peer_links_up",
            "Outbound peer links connected (one per core and peer).",
            &up.iter().map(|(l, n)| (l.as_str(), *n)).collect::<Vec<_>>(),
        );
        let peer_counters: [(&str, &str, PeerFigure); 3] = [
            (
                "corelog_peer_messages_dropped_total",
                "Consensus messages dropped because the link was down or its queue full.",
                |p| p.dropped,
            ),
            (
                "corelog_peer_direct_sends_total",
                "Appends with large frames sent straight from the leader's log in one vectored \
                 send (no copy into the link's queue).",
                |p| p.direct_sends,
            ),
            (
                "corelog_peer_direct_sends_partial_total",
                "Direct sends the socket took only in part (the rest went through the link's \
                 queue).",
                |p| p.direct_partial,
            ),
        ];
        for (name, help, f) in peer_counters {
            let values = per_peer(f);
            counter(
                &mut out,
                name,
                help,
                &values.iter().map(|(l, n)| (l.as_str(), *n)).collect::<Vec<_>>(),
            );
        }
        let groups: Vec<&GroupSnapshot> = self.cores.iter().flat_map(|c| &c.groups).collect();
        let per_group = |f: &dyn Fn(&GroupSnapshot) -> u64| -> Vec<(String, u64)> {
            groups.iter().map(|g| (format!("group=\"{}\"", g.group), f(g))).collect()
        };
        type GroupFigure<'a> = (&'a str, &'a str, &'a str, Box<dyn Fn(&GroupSnapshot) -> u64>);
        let figures: Vec<GroupFigure<'_>> = vec![
            ("corelog_term", "gauge", "Current term.", Box::new(|g| g.term)),
            ("corelog_commit_index", "gauge", "Commit index.", Box::new(|g| g.commit_index)),
            ("corelog_last_index", "gauge", "Last index in the log.", Box::new(|g| g.last_index)),
            (
                "corelog_durable_index",
                "gauge",
                "Highest index durable in the local log.",
                Box::new(|g| g.durable_index),
            ),
            (
                "corelog_first_index",
                "gauge",
                "First index in the local log (everything before it was trimmed).",
                Box::new(|g| g.first_index),
            ),
            (
                "corelog_is_leader",
                "gauge",
                "1 when this node leads the group.",
                Box::new(|g| u64::from(g.is_leader)),
            ),
            ("corelog_leader_id", "gauge", "The leader's id (0: none).", Box::new(|g| g.leader)),
            (
                "corelog_admitted_bytes",
                "gauge",
                "Bytes of client appends taken in and not yet answered (bounded by \
                 uncommitted_bytes_max).",
                Box::new(|g| g.admitted_bytes),
            ),
            (
                "corelog_log_flushes_total",
                "counter",
                "Log flushes completed.",
                Box::new(|g| g.log.flushes),
            ),
            (
                "corelog_log_dsync_flushes_total",
                "counter",
                "Log flushes made durable by one RWF_DSYNC write (sync = adaptive: those that \
                 went out alone); the others were a write and an fdatasync.",
                Box::new(|g| g.log.dsync_flushes),
            ),
            (
                "corelog_log_written_bytes_total",
                "counter",
                "Bytes written by log flushes (whole blocks).",
                Box::new(|g| g.log.bytes_written),
            ),
            (
                "corelog_log_appended_bytes_total",
                "counter",
                "Frame bytes appended to the log.",
                Box::new(|g| g.log.bytes_appended),
            ),
            (
                "corelog_log_entries_appended_total",
                "counter",
                "Entries appended to the log.",
                Box::new(|g| g.log.entries_appended),
            ),
            (
                "corelog_log_segments_zero_filled_total",
                "counter",
                "Segments written with zeros before use (none once trimmed segments are reused).",
                Box::new(|g| g.log.segments_zero_filled),
            ),
            (
                "corelog_log_segments_recycled_total",
                "counter",
                "Trimmed segments kept for reuse instead of being deleted.",
                Box::new(|g| g.log.segments_recycled),
            ),
            (
                "corelog_log_spares_deleted_total",
                "counter",
                "Spare segments deleted because the log filled fewer between trims than it kept.",
                Box::new(|g| g.log.spares_deleted),
            ),
            (
                "corelog_log_space_waits_total",
                "counter",
                "Appends that waited for room in the log's buffer.",
                Box::new(|g| g.log.space_waits),
            ),
            (
                "corelog_log_frames_read_from_disk_total",
                "counter",
                "Frames that reads (followers catching up, tails, clients) took from disk, not memory.",
                Box::new(|g| g.log.frames_read_from_disk),
            ),
        ];
        for (name, kind, help, f) in &figures {
            let values = per_group(f.as_ref());
            let values: Vec<(&str, u64)> = values.iter().map(|(l, n)| (l.as_str(), *n)).collect();
            match *kind {
                "counter" => counter(&mut out, name, help, &values),
                _ => gauge(&mut out, name, help, &values),
            }
        }
        let lag: Vec<(String, u64)> = groups
            .iter()
            .flat_map(|g| {
                g.follower_lag
                    .iter()
                    .map(|(p, l)| (format!("group=\"{}\",peer=\"{p}\"", g.group), *l))
            })
            .collect();
        gauge(
            &mut out,
            "corelog_follower_lag_entries",
            "Leader only: entries a follower is behind the leader's last index.",
            &lag.iter().map(|(l, n)| (l.as_str(), *n)).collect::<Vec<_>>(),
        );
        header(
            &mut out,
            "corelog_log_flush_size_bytes",
            "histogram",
            "Bytes written by each log flush.",
        );
        for g in &groups {
            histogram(
                &mut out,
                "corelog_log_flush_size_bytes",
                &format!("group=\"{}\"", g.group),
                &g.log.flush_bytes,
                1.0,
                &BYTES_BUCKETS,
            );
        }
        header(
            &mut out,
            "corelog_log_space_wait_seconds_total",
            "counter",
            "Time appends waited for room in the log's buffer (every flush slot busy and the \
             buffer full, or a segment roll), summed over appends: on a group, the time its \
             driver stood still behind its disk.",
        );
        for g in &groups {
            sample(
                &mut out,
                "corelog_log_space_wait_seconds_total",
                &format!("group=\"{}\"", g.group),
                g.log.space_wait_ns as f64 * 1e-9,
            );
        }
        header(
            &mut out,
            "corelog_log_flush_duration_seconds",
            "histogram",
            "Time of each log flush (write plus fdatasync).",
        );
        for g in &groups {
            histogram(
                &mut out,
                "corelog_log_flush_duration_seconds",
                &format!("group=\"{}\"", g.group),
                &g.log.flush_latency_ns,
                1e-9,
                &SECONDS_BUCKETS,
            );
        }
        out
    }

    /// The merged stage histograms as JSON (`GET /stages`).
    pub fn stages_json(&self) -> serde_json::Value {
        let s = self.stages();
        let enc = |h: &Histogram<u64>| -> Vec<[u64; 2]> {
            h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect()
        };
        json!({
            "node": self.node,
            "unit": "ns",
            "stages": STAGES.iter().zip(&s.stages)
                .map(|((n, _), h)| json!({"name": n, "counts": enc(h)})).collect::<Vec<_>>(),
            "total": enc(&s.total),
            "incomplete": s.incomplete,
        })
    }
}

const SECONDS_BUCKETS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

const BYTES_BUCKETS: [f64; 13] = [
    4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 2097152.0,
    4194304.0, 8388608.0, 16777216.0,
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(out, name, "counter", help);
    for (labels, v) in values {
        sample(out, name, labels, v);
    }
}

fn gauge(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(out, name, "gauge", help);
    for (labels, v) in values {
        sample(out, name, labels, v);
    }
}

/// A histogram recorded in units of `scale` base units, with buckets in base units.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Histogram<u64>,
    scale: f64,
    buckets: &[f64],
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for b in buckets {
        let upto = (b / scale).round() as u64;
        let n = if h.is_empty() { 0 } else { h.count_between(0, upto) };
        sample(out, &format!("{name}_bucket"), &format!("{labels}{sep}le=\"{b}\""), n);
    }
    sample(out, &format!("{name}_bucket"), &format!("{labels}{sep}le=\"+Inf\""), h.len());
    sample(out, &format!("{name}_sum"), labels, h.mean() * h.len() as f64 * scale);
    sample(out, &format!("{name}_count"), labels, h.len());
}

/// Serves the endpoint on `listener` until `stop` is set (polls `stop` every 50 ms while
/// idle; no spinning).
pub(crate) fn serve(listener: TcpListener, scraper: Arc<Scraper>, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "metrics endpoint unusable");
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer_http(stream, &scraper) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn answer_http(mut stream: TcpStream, scraper: &Scraper) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"");
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET only\n");
    }
    let path = path.split('?').next().unwrap_or("");
    if !matches!(path, "/metrics" | "/stages" | "/trace") {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"try /metrics, /stages or /trace\n",
        );
    }
    let snap = match scraper.snapshot(path == "/trace") {
        Ok(s) => s,
        Err(e) => {
            return respond(&mut stream, "503 Service Unavailable", "text/plain", e.as_bytes());
        }
    };
    match path {
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            snap.prometheus().as_bytes(),
        ),
        "/stages" => respond(
            &mut stream,
            "200 OK",
            "application/json",
            snap.stages_json().to_string().as_bytes(),
        ),
        _ => respond(
            &mut stream,
            "200 OK",
            "application/json",
            &serde_json::to_vec(&snap.trace_samples()).unwrap_or_default(),
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// `GET path` from a node's metrics endpoint; the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8(resp).map_err(|_| format!("{addr}: not UTF-8"))?;
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: malformed HTTP response"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}{path}: {status}: {body}"));
    }
    Ok(body.to_string())
}

/// The merged stage histograms of the node whose metrics endpoint is `addr` (for `corelog
/// bench` against processes): `(stage, histogram of nanoseconds)` in [`STAGES`] order.
pub fn fetch_stages(addr: SocketAddr) -> Result<Vec<(String, Histogram<u64>)>, String> {
    let body = http_get(addr, "/stages")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{addr}/stages: {e}"))?;
    let bad = || format!("{addr}/stages: unexpected JSON");
    let mut out = Vec::new();
    for s in v["stages"].as_array().ok_or_else(bad)? {
        let name = s["name"].as_str().ok_or_else(bad)?.to_string();
        let mut h = new_histogram();
        for pair in s["counts"].as_array().ok_or_else(bad)? {
            let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                return Err(bad());
            };
            h.saturating_record_n(value, count);
        }
        out.push((name, h));
    }
    Ok(out)
}

/// The sampled appends of the node whose metrics endpoint is `addr`.
pub fn fetch_trace(addr: SocketAddr) -> Result<Vec<TraceSample>, String> {
    let body = http_get(addr, "/trace")?;
    serde_json::from_str(&body).map_err(|e| format!("{addr}/trace: {e}"))
}
