//! The driver of one consensus group on its core: it owns the pure core, the log and the hard
//! state, takes every input from one [`Inbox`], and executes the core's outputs in order:
//! writes (snapshot, truncation, entries, hard state), then messages, then replies.
//!
//! Inputs that arrive together (a burst of client appends, several peer messages) are handed to
//! the core before one `take_ready`, so they become one batch: one frame for the log, one append
//! per follower. The log's group commit and the transport's batching do the rest.
//!
//! Whatever the core accepts must reach the log, so a lack of disk space is checked before:
//! the leader answers an append the log has no room for `NoSpace` instead of proposing it, and
//! a follower drops an append it has no room for, as if it was lost ([`Log::space_for`]); a
//! follower also drops one that needs a segment not yet prepared ([`Log::space_ready`]), or
//! one that overwrites its suffix while no spare can start the cut
//! ([`Log::truncation_ready`]): a preparation under it could still fail. A write that fails
//! anyway (the space vanished between the check and the write, or another error) stops the
//! group: the core and the log no longer agree, and reopening runs recovery. A snapshot's
//! reset deletes the old segments that could not start the new log, so a zero-fill after it
//! has their space. A leader with little room left on its disk holds client appends that
//! need a segment still being prepared until the preparation ends (then proposes them, or
//! refuses them `NoSpace`); with room to spare it proposes them at once (a healthy busy disk
//! prepares spares all the time). A membership change is not held: on a disk that fills
//! just then it can still meet a failing preparation and stop the group.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::config::NodeConfig;
use super::inbox::Inbox;
use super::metrics::{CoreMetrics, GroupGauges};
use super::peer::Peers;
use super::proto::{ResponseMeta, Status};
use super::server::ClientConn;
use super::stages::Timeline;
use crate::consensus::session::SessionHasherBuilder;
use crate::consensus::{
    self, Entry, EntryKind as CoreKind, Membership, Message, Node, Proposed, Ready, Reply,
    RestartState, Role, SessionRecord, Snapshot,
};
use crate::frame::{EntryRef, VerifiedFrame};
use crate::log::{FlushTimes, HardState, HardStateFile, Log, LogError};

/// Where a client response goes.
#[derive(Clone)]
pub(crate) struct ReplyTo {
    pub conn: Rc<ClientConn>,
    pub id: u64,
}

impl ReplyTo {
    pub fn send(&self, group: u64, meta: ResponseMeta, payload: &[u8]) {
        if meta.status != Status::Ok as u8 {
            super::metrics::count_error(error_kind(meta.status));
        }
        self.conn.respond(group, self.id, meta, payload);
    }
}

/// Answers a request to a group that has stopped (internal inputs are dropped).
fn refuse(group: u64, input: Input, why: &str) {
    let reply = match input {
        Input::Append { reply, .. }
        | Input::Status { reply }
        | Input::Read { reply, .. }
        | Input::Trim { reply, .. }
        | Input::Member { reply, .. } => reply,
        _ => return,
    };
    let why = format!("the group stopped after a log failure: {why}");
    reply.send(group, ResponseMeta::new(Status::Failed, 0, 0, 0), why.as_bytes());
}

/// The `corelog_errors_total` kind of a response status other than OK.
fn error_kind(status: u8) -> &'static str {
    match Status::from_code(status) {
        Some(Status::NotLeader) => "not_leader",
        Some(Status::Busy) => "busy",
        Some(Status::UnknownGroup) => "unknown_group",
        Some(Status::WrongCore) => "wrong_core",
        Some(Status::TooLarge) => "too_large",
        Some(Status::Failed) => "failed",
        Some(Status::StaleSequence) => "stale_sequence",
        Some(Status::Retry) => "retry",
        Some(Status::Trimmed) => "trimmed",
        Some(Status::NoSpace) => "no_space",
        Some(Status::BadRequest) | Some(Status::Ok) | None => "bad_request",
    }
}

/// When a peer message was read off its connection, and the follower's local time an ack
/// carries (see [`super::codec`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerStamp {
    pub received: Instant,
    pub ack_local_ns: Option<u64>,
}

impl PeerStamp {
    pub fn of(msg: &crate::wire::Message<'_>) -> PeerStamp {
        PeerStamp { received: Instant::now(), ack_local_ns: super::codec::ack_local_ns(msg) }
    }
}

/// The node's clock of ticks: tick `k` is due `k` tick lengths after `start`. The consensus
/// core measures time in ticks (elections, the leader's lease), so a process that was frozen
/// (SIGSTOP, a stalled VM) or starved of CPU must count every tick it missed when it runs
/// again, before anything that arrived meanwhile: a leader's lease would otherwise look as
/// fresh as when it froze, while the others may have elected a new leader and committed past
/// it; and a follower would count the missed ticks after the leader's queued heartbeats, so it
/// would help elect another leader while that leader's lease still holds. The driver counts
/// them at the start of each batch of inputs ([`GroupDriver::count_ticks`]), and a lease read
/// is refused while more than one is due beyond those counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TickClock {
    pub start: Instant,
    pub tick: std::time::Duration,
}

impl TickClock {
    /// When tick `k` is due.
    pub fn at(&self, k: u64) -> Instant {
        let nanos = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX);
        self.start + std::time::Duration::from_nanos(nanos.saturating_mul(k))
    }

    /// Ticks due by `now`.
    pub fn due(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos / self.tick.as_nanos().max(1)) as u64
    }
}

/// Ticks the consensus core is given at once after a pause, at most: an election timeout's
/// worth, which ends a lease (shorter) and lets a follower campaign or vote, but crosses at
/// most one of a leader's check-quorum points, so a leader that was only stalled (its
/// followers' acks waiting in its socket) is not made to step down by the count alone.
fn ticks_applied_max(election_ticks: u32) -> u64 {
    u64::from(election_ticks)
}

/// Inputs of a group driver.
pub(crate) enum Input {
    /// A consensus message; for an append, also its frames as received (verified).
    Peer(Message, PeerStamp, Vec<VerifiedFrame>),
    /// A tick of the node's [`TickClock`] is due: the driver counts every tick due by the
    /// clock, however many were missed, when it next takes a batch of inputs.
    Tick,
    /// Entries up to `index` are durable; `flush`: when the flush that did it was submitted
    /// and completed, when the log still knew.
    Durable {
        index: u64,
        term: u64,
        flush: Option<FlushTimes>,
    },
    Failed(LogError),
    Fetched {
        lo: u64,
        entries: Vec<Entry>,
    },
    /// A client append, read off its connection at `received`, holding its room in the
    /// group's admission bound until it is answered.
    Append {
        entries: Vec<(u64, u64, Bytes)>,
        reply: ReplyTo,
        received: Instant,
        admitted: crate::rt::sync::StaticPermit,
    },
    Status {
        reply: ReplyTo,
    },
    Read {
        lo: u64,
        hi: u64,
        max_bytes: usize,
        /// This node's own view ([`super::proto::READ_LOCAL`]), not only at the leader.
        local: bool,
        reply: ReplyTo,
    },
    Trim {
        index: u64,
        reply: ReplyTo,
    },
    Member {
        change: consensus::ConfChange,
        reply: ReplyTo,
    },
}

/// A client append waiting for its entries to commit.
struct PendingAppend {
    reply: ReplyTo,
    positions: RefCell<Vec<(u64, u64)>>,
    remaining: Cell<usize>,
    /// Read off the client's connection.
    received: Instant,
    /// Handed to the consensus core.
    proposed: Instant,
    /// Its room in the admission bound, given back when the last entry is answered (or the
    /// append is dropped: a retry replaced it, the group stopped).
    _admitted: crate::rt::sync::StaticPermit,
}

/// The handle other tasks of the core use to reach a group.
pub(crate) struct GroupHandle {
    pub inbox: Inbox<Input>,
    /// The commit index, for tails to wait on.
    pub commit: super::server::CommitWatch,
    /// The group's log, for tails to read (set once open).
    pub log: RefCell<Option<Log>>,
    /// Bytes of client appends taken in and not yet answered (`uncommitted_bytes_max`): a
    /// connection whose append does not fit waits here, unread (see `server`).
    pub admission: Rc<crate::rt::sync::Semaphore>,
    /// The node's clock of ticks (the same for every group of the node; set when the tick
    /// loop starts, after every group has opened).
    pub clock: Cell<TickClock>,
}

impl GroupHandle {
    /// A group's handle before its driver opens: an empty inbox, no log yet, the admission
    /// bound of `uncommitted_bytes_max`, and the node's `clock`.
    pub fn new(uncommitted_bytes_max: u64, clock: TickClock) -> GroupHandle {
        GroupHandle {
            inbox: Default::default(),
            commit: Default::default(),
            log: RefCell::new(None),
            admission: Rc::new(crate::rt::sync::Semaphore::new(uncommitted_bytes_max)),
            clock: Cell::new(clock),
        }
    }
}

pub(crate) struct GroupDriver {
    group: u64,
    cfg: Rc<NodeConfig>,
    node: Node,
    log: Log,
    hs_file: HardStateFile,
    /// The group's directory (log, hard state, snapshot session table).
    dir: PathBuf,
    /// The snapshot the log restarts from (persisted in the hard-state blob).
    snapshot_meta: Option<(u64, u64, Membership)>,
    handle: Rc<GroupHandle>,
    peers: Rc<Peers>,
    /// Appends waiting for their commit, by (session, sequence): keyed by ids that clients
    /// choose, so with a keyed hasher (SipHash cost a few per cent of the leader's CPU).
    pending: HashMap<(u64, u64), (Rc<PendingAppend>, usize), SessionHasherBuilder>,
    /// The answer to an append, built here and copied into the connection's queue (reused,
    /// so answering allocates nothing).
    answer: Vec<u8>,
    commit: u64,
    /// Ticks of `handle.clock` counted so far (given to the core, or skipped past
    /// [`ticks_applied_max`]).
    ticks_seen: u64,
    metrics: Rc<CoreMetrics>,
    gauges: Rc<GroupGauges>,
    /// Stage timing of appends (see [`super::stages`]).
    timeline: Timeline,
    /// Role and leader as last observed, to count elections and leader changes.
    seen: (Role, Option<u64>),
    /// Snapshots received from a leader and installed (status: `snapshots_installed`).
    snapshots_installed: u64,
    /// Frames of appends received and not yet written, in arrival order: a follower writes
    /// them to its log as they are (see [`GroupDriver::write_entries`]).
    received: VecDeque<VerifiedFrame>,
    /// Why the group stopped (its log failed): from then on every request is answered
    /// `Failed` with this reason, none is left without an answer.
    stopped: Option<String>,
    /// Bytes of frames the core accepted since its last `take_ready` (an upper bound): what
    /// the log must still find room for ([`Log::space_for`]).
    unwritten_bytes: usize,
    /// When a refusal for lack of space was last logged (one warning per
    /// [`NO_SPACE_WARN_EVERY`]).
    no_space_warned: Option<Instant>,
    /// Client appends (`Input::Append`) a leader holds, in arrival order, while the log
    /// segment their entries need is being prepared (see [`GroupDriver::must_hold`]).
    held: VecDeque<Input>,
    /// A task waits for the log's preparation to end and then wakes the driver.
    hold_wake: Rc<Cell<bool>>,
}

/// How often a group whose disk is full says so in the log.
const NO_SPACE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// An upper bound of the bytes `entries` take in the log (each as a frame of its own).
fn frame_bytes<'a>(entries: impl Iterator<Item = &'a [u8]>) -> usize {
    entries.map(|d| crate::frame::frame_len_for(std::iter::once(d.len()))).sum()
}

/// Room that client appends, membership changes and followers' appends leave unused on a full
/// disk, for the entries the core makes itself (a new leader's first entry): they are not
/// checked, and a write that finds no room stops the group.
const SPACE_HEADROOM: usize = crate::log::BLOCK;

/// Whether `data` lies within `frame` (an entry decoded from that frame's bytes).
fn same_bytes(frame: &[u8], data: &[u8]) -> bool {
    let f = frame.as_ptr() as usize;
    let d = data.as_ptr() as usize;
    d >= f && d + data.len() <= f + frame.len()
}

/// Received frames kept for writing at most (a bound on top of keeping only those the core
/// took); older ones are dropped (their entries are then framed anew, which costs a copy and a
/// checksum, never correctness).
const RECEIVED_FRAMES_MAX: usize = 4096;

fn encode_snapshot_meta(index: u64, term: u64, m: &Membership) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(&term.to_le_bytes());
    v.extend_from_slice(&m.encode());
    v
}

fn decode_snapshot_meta(b: &[u8]) -> Option<(u64, u64, Membership)> {
    let index = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let term = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((index, term, Membership::decode(b.get(16..)?)?))
}

/// The session table of the latest snapshot. It is too large for the hard-state blob (up to
/// `max_sessions` records), so it has its own file, written (tmp, fsync, rename, fsync of the
/// directory) before the hard state that records the snapshot: a file at or after the hard
/// state's snapshot index is consistent with the log (entries up to its `sessions_applied` are
/// skipped when the log is replayed into the table).
const SESSIONS_FILE: &str = "snapshot-sessions";
const SESSIONS_MAGIC: &[u8; 8] = b"CLSESS01";

fn encode_sessions(group: u64, s: &Snapshot) -> Vec<u8> {
    let mut v = Vec::with_capacity(44 + 32 * s.sessions.len());
    v.extend_from_slice(SESSIONS_MAGIC);
    for x in [group, s.index, s.sessions_applied, s.sessions.len() as u64] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for r in &s.sessions {
        for x in [r.session, r.sequence, r.index, r.term] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// (snapshot index, sessions applied, records), if `b` is a whole file of this group.
fn decode_sessions(group: u64, b: &[u8]) -> Option<(u64, u64, Vec<SessionRecord>)> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?)
        || body.get(..8)? != SESSIONS_MAGIC
    {
        return None;
    }
    let words: Vec<u64> = body[8..]
        .chunks(8)
        .map(|c| c.try_into().map(u64::from_le_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    let (&[g, index, applied, n], rest) = words.split_first_chunk::<4>()?;
    if g != group || rest.len() as u64 != n.checked_mul(4)? {
        return None;
    }
    let records = rest
        .chunks_exact(4)
        .map(|r| SessionRecord { session: r[0], sequence: r[1], index: r[2], term: r[3] })
        .collect();
    Some((index, applied, records))
}

/// Makes the snapshot's session table durable. The file is written, synced and renamed into
/// place on a thread outside the executor (`rt::spawn_blocking`): an fsync under a busy disk
/// takes tens of milliseconds, which would stall every group of the core.
async fn save_sessions(dir: &Path, group: u64, s: &Snapshot) -> Result<(), LogError> {
    let bytes = encode_sessions(group, s);
    let dir = dir.to_path_buf();
    crate::rt::spawn_blocking(move || write_sessions_file(&dir, &bytes)).await
}

fn write_sessions_file(dir: &Path, bytes: &[u8]) -> Result<(), LogError> {
    use std::io::Write;
    let path = dir.join(SESSIONS_FILE);
    let tmp = dir.join(format!("{SESSIONS_FILE}.tmp"));
    let io = |op: &'static str, path: &Path, e: std::io::Error| LogError::Io {
        op,
        path: path.to_path_buf(),
        offset: 0,
        source: Arc::new(e),
    };
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync", dir, e))
}

impl GroupDriver {
    /// Opens the group's log and hard state, recovers, and builds the core.
    pub async fn open(
        group: u64,
        cfg: Rc<NodeConfig>,
        handle: Rc<GroupHandle>,
        peers: Rc<Peers>,
    ) -> Result<GroupDriver, String> {
        let dir = cfg.data_dir.join(format!("group-{group}"));
        let log_cfg = cfg.log_config(group);
        let (log, _) = Log::open(&dir, log_cfg).await.map_err(|e| format!("group {group}: {e}"))?;
        let (hs_file, hs) =
            HardStateFile::open(&dir, group).await.map_err(|e| format!("group {group}: {e}"))?;
        let initial = Membership::with_voters(
            &cfg.initial_voters().iter().map(|&id| (id, 1u8)).collect::<Vec<_>>(),
        );
        let backstop = cfg.uncommitted_bytes_max + cfg.uncommitted_bytes_max / 4;
        let core_cfg = consensus::Config {
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            max_cache_bytes: cfg.entry_cache_bytes_max,
            // Backstops a quarter above the admission bound of the client connections (see
            // `GroupHandle::admission`), which holds the leader's client appends below them;
            // they catch entries that come in otherwise (a new leader's predecessors').
            max_uncommitted_bytes: backstop,
            // No entry is larger than the message that carries it.
            max_entry_bytes: consensus::Config::default()
                .max_entry_bytes
                .min(u64::from(cfg.message_bytes_max)),
            max_pending_proposals: usize::try_from(
                backstop / super::config::ADMISSION_ENTRY_MIN_BYTES,
            )
            .unwrap_or(usize::MAX)
            .max(consensus::Config::default().max_pending_proposals),
            // A lease read is served with up to one tick of the clock not yet counted (see
            // `leader_read_refused`): one tick more of margin than the core's default.
            lease_margin_ticks: (consensus::Config::default().lease_margin_ticks + 1)
                .min(cfg.election_ticks.saturating_sub(1)),
            ..consensus::Config::default()
        };
        let mut snapshot_meta = None;
        let mut restart = RestartState::default();
        if let Some(hs) = &hs {
            restart.hard_state =
                consensus::HardState { term: hs.term, vote: (hs.vote != 0).then_some(hs.vote) };
            if !hs.blob.is_empty() {
                let (index, term, membership) =
                    decode_snapshot_meta(&hs.blob).ok_or_else(|| {
                        format!("group {group}: unreadable snapshot metadata in the hard state")
                    })?;
                let saved = std::fs::read(dir.join(SESSIONS_FILE))
                    .ok()
                    .and_then(|b| decode_sessions(group, &b))
                    .filter(|(i, applied, _)| *i >= index && *applied >= *i);
                let (sessions_applied, sessions) = match saved {
                    Some((_, applied, records)) => (applied, records),
                    None => {
                        tracing::warn!(
                            group,
                            index,
                            "no session table for the snapshot: retries of requests committed \
                             before it are not deduplicated"
                        );
                        (index, Vec::new())
                    }
                };
                restart.snapshot = Some(Snapshot {
                    index,
                    term,
                    membership: membership.clone(),
                    sessions,
                    sessions_applied,
                    ..Snapshot::default()
                });
                snapshot_meta = Some((index, term, membership));
            }
        }
        // The durable entries after the snapshot, as the core's entries (data copied out of
        // the read buffers once, at start).
        let from = snapshot_meta.as_ref().map_or(1, |s| s.0 + 1).max(log.first_index());
        let mut next = from;
        while next <= log.last_index() {
            let frames = log
                .read(next, log.last_index(), 4 << 20)
                .await
                .map_err(|e| format!("group {group}: {e}"))?;
            for f in &frames {
                let term = f.frame().term();
                for e in f.entries() {
                    restart.entries.push(Entry {
                        index: e.index,
                        term,
                        kind: CoreKind::from_u8(e.kind as u8).expect("valid kind"),
                        session: e.session,
                        sequence: e.seq,
                        data: Bytes::copy_from_slice(e.data),
                    });
                    next = e.index + 1;
                }
            }
        }
        let seed =
            cfg.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group ^ std::process::id() as u64;
        let node = if hs.is_none() && restart.entries.is_empty() {
            Node::new(cfg.node_id, core_cfg, initial, seed)
        } else {
            Node::restart(cfg.node_id, core_cfg, initial, seed, restart)
        };
        let commit = node.commit_index();
        let metrics = CoreMetrics::for_this_core(&cfg, (group % cfg.cores as u64) as usize);
        let gauges = Rc::new(GroupGauges::new(
            group,
            log.clone(),
            (handle.admission.clone(), cfg.uncommitted_bytes_max),
        ));
        metrics.register(gauges.clone());
        let timeline = Timeline::new(metrics.clone(), cfg.node_id, group, cfg.members.len());
        let seen = (node.role(), node.leader());
        *handle.log.borrow_mut() = Some(log.clone());
        handle.commit.set(commit);
        Ok(GroupDriver {
            group,
            cfg,
            node,
            log,
            hs_file,
            dir,
            snapshot_meta,
            handle,
            peers,
            pending: HashMap::with_hasher(SessionHasherBuilder::random()),
            answer: Vec::new(),
            commit,
            ticks_seen: 0,
            metrics,
            gauges,
            timeline,
            seen,
            snapshots_installed: 0,
            received: VecDeque::new(),
            stopped: None,
            unwritten_bytes: 0,
            no_space_warned: None,
            held: VecDeque::new(),
            hold_wake: Rc::new(Cell::new(false)),
        })
    }

    /// Runs until the inbox is closed, then closes the log. A group whose log failed stops:
    /// it closes its log at once and answers every request after that `Failed` until the
    /// inbox closes (a client connection serves all the groups of a core, so an unanswered
    /// request would wait for its deadline behind the other groups' answers).
    pub async fn run(mut self) {
        let mut batch = Vec::new();
        while self.handle.inbox.drain_into(&mut batch).await {
            if self.stopped.is_none() {
                self.count_ticks();
            }
            for input in batch.drain(..) {
                match &self.stopped {
                    Some(why) => refuse(self.group, input, why),
                    None => self.handle_input(input).await,
                }
            }
            if self.stopped.is_none() {
                self.release_held();
            }
            while self.stopped.is_none() {
                let ready = self.node.take_ready();
                self.unwritten_bytes = 0;
                if ready.is_empty() {
                    break;
                }
                if let Err(e) = self.execute(ready).await {
                    tracing::error!(group = self.group, error = %e, "log write failed; the group stops");
                    self.metrics.error("log_io");
                    self.stop(e.to_string()).await;
                }
            }
            if self.stopped.is_none() {
                self.observe();
            }
        }
        if self.stopped.is_none() {
            let _ = self.log.clone().close().await;
        }
    }

    /// Stops the group after a log failure: every pending append fails, the log closes.
    async fn stop(&mut self, why: String) {
        for input in self.held.drain(..) {
            refuse(self.group, input, &why);
        }
        self.fail_all(&why);
        self.stopped = Some(why);
        let _ = self.log.clone().close().await;
    }

    /// Updates the gauges; counts elections and leader changes; a change of role ends the
    /// stage timing of what was in flight.
    fn observe(&mut self) {
        let (role, leader) = (self.node.role(), self.node.leader());
        if role != self.seen.0 {
            // Rare and telling (an election stalls the group's appends): always logged.
            tracing::info!(
                node = self.cfg.node_id,
                group = self.group,
                term = self.node.term(),
                "{:?} -> {:?}",
                self.seen.0,
                role
            );
            if role == Role::Candidate {
                CoreMetrics::add(&self.metrics.elections, 1);
            }
            if role == Role::Leader || self.seen.0 == Role::Leader {
                self.timeline.reset();
            }
        }
        if leader.is_some() && leader != self.seen.1 {
            CoreMetrics::add(&self.metrics.leader_changes, 1);
        }
        if leader.is_some() || role != Role::Follower {
            self.seen = (role, leader);
        } else {
            self.seen.0 = role;
        }
        let g = &self.gauges;
        g.term.set(self.node.term());
        g.commit_index.set(self.commit);
        g.last_index.set(self.node.last_index());
        g.leader.set(leader.unwrap_or(0));
        g.is_leader.set(role == Role::Leader);
    }

    fn leader_hint(&self) -> u64 {
        self.node.leader().unwrap_or(0)
    }

    fn not_leader(&self, reply: &ReplyTo) {
        let leader = self.leader_hint();
        let addr = self
            .cfg
            .members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.client_addr.to_string())
            .unwrap_or_default();
        reply.send(self.group, ResponseMeta::new(Status::NotLeader, leader, 0, 0), addr.as_bytes());
    }

    async fn handle_input(&mut self, input: Input) {
        match input {
            Input::Peer(m, stamp, frames) => {
                if m.to == self.cfg.node_id {
                    if let consensus::Body::Append { entries, prev_index, prev_term, .. } = &m.body
                        && !entries.is_empty()
                    {
                        // Entries that conflict with the log's suffix are not taken while
                        // the segment the cut must start is not ready: its preparation may fail
                        // for lack of space, and a truncation that fails stops the group.
                        // (Asked first: `room_for` counts what it lets through. An append
                        // whose previous entry does not match is rejected by the core, with a
                        // hint for the leader, and writes nothing: not held back.)
                        let last = self.log.last_index();
                        if entries[0].index <= last
                            && self.log.term(*prev_index).is_none_or(|t| t == *prev_term)
                            && let Some(c) = entries
                                .iter()
                                .take_while(|e| e.index <= last)
                                .find(|e| self.log.term(e.index).is_some_and(|t| t != e.term))
                            && !self.log.truncation_ready(c.index - 1)
                        {
                            self.count_not_ready();
                            return;
                        }
                        // Entries the log has no room for are not taken: the append is dropped
                        // like a lost message (the leader sends it again), rather than
                        // accepted by the core and then not written. Nor are entries that
                        // need a segment still being prepared: that preparation may yet fail
                        // for lack of space, and a write that then fails stops the group.
                        let need = frame_bytes(entries.iter().map(|e| &e.data[..]));
                        let ready =
                            self.log.space_ready(self.unwritten_bytes + need + SPACE_HEADROOM);
                        if !ready {
                            self.count_not_ready();
                            return;
                        }
                        if self.room_for(need).is_err() {
                            self.metrics.error("no_space");
                            return;
                        }
                    }
                    self.received.extend(frames);
                    while self.received.len() > RECEIVED_FRAMES_MAX {
                        self.received.pop_front();
                    }
                    if self.timeline.enabled() {
                        match &m.body {
                            consensus::Body::Append { entries, .. } if !entries.is_empty() => {
                                let (first, last) =
                                    (entries[0].index, entries[entries.len() - 1].index);
                                self.timeline.follower_received(first, last, stamp.received);
                            }
                            consensus::Body::AppendResponse {
                                success: true, match_index, ..
                            } if self.node.role() == Role::Leader && m.term == self.node.term() => {
                                self.timeline.acked(
                                    m.from,
                                    *match_index,
                                    stamp.ack_local_ns,
                                    stamp.received,
                                );
                            }
                            _ => {}
                        }
                    }
                    self.node.step(m);
                    // Keep only frames the core took (a rejected append's frames will never be
                    // written): the rest of what is kept the core's entries share anyway.
                    let taken = self.node.last_index();
                    self.received.retain(|f| f.frame().first_index() <= taken);
                }
            }
            // Counted by the clock at the start of the batch (`count_ticks`).
            Input::Tick => {}
            Input::Durable { index, term, flush } => {
                if let Some(f) = flush
                    && self.timeline.enabled()
                {
                    self.timeline.durable(index, f.submitted, f.durable);
                }
                self.node.on_entries_durable(index, term)
            }
            Input::Failed(e) => {
                tracing::error!(group = self.group, error = %e, "a log flush failed; the group stops");
                self.metrics.error("log_io");
                self.stop(e.to_string()).await;
            }
            Input::Fetched { lo, entries } => self.node.on_fetched(lo, entries),
            Input::Member { change, reply } => {
                // A membership entry is small; a block is a bound for it.
                if self.node.role() == Role::Leader
                    && let Err(e) = self.room_for(crate::log::BLOCK)
                {
                    self.refuse_no_space(&reply, "the change", &e);
                    return;
                }
                let status = match self.node.change_membership(change) {
                    Ok(index) => {
                        let term = self.node.term();
                        let meta = ResponseMeta::new(Status::Ok, self.cfg.node_id, index, term);
                        reply.send(self.group, meta, &[]);
                        return;
                    }
                    Err(consensus::Error::NotLeader { .. }) => {
                        self.not_leader(&reply);
                        return;
                    }
                    Err(e @ consensus::Error::Busy { .. }) => (Status::Busy, e.to_string()),
                    Err(e) => (Status::BadRequest, e.to_string()),
                };
                let meta = ResponseMeta::new(status.0, self.leader_hint(), 0, 0);
                reply.send(self.group, meta, status.1.as_bytes());
            }
            Input::Append { entries, reply, received, admitted } => {
                // Behind appends held, in order (a session's sequence numbers must reach the
                // core in the order they were sent).
                if !self.held.is_empty() {
                    self.held.push_back(Input::Append { entries, reply, received, admitted });
                    return;
                }
                let all = frame_bytes(entries.iter().map(|(_, _, d)| &d[..]));
                if self.must_hold(all) {
                    self.held.push_back(Input::Append { entries, reply, received, admitted });
                    self.wake_when_prepared();
                    return;
                }
                self.propose(entries, all, reply, received, admitted)
            }
            Input::Status { reply } => {
                let text = self.status_json();
                reply.send(
                    self.group,
                    ResponseMeta::new(
                        Status::Ok,
                        self.leader_hint(),
                        self.node.term(),
                        self.commit,
                    ),
                    text.as_bytes(),
                );
            }
            Input::Read { lo, hi, max_bytes, local, reply } => {
                // Unless asked for this node's own view, a read is the leader's.
                if !local && self.node.role() != Role::Leader {
                    self.not_leader(&reply);
                    return;
                }
                if !local && let Some(why) = self.leader_read_refused() {
                    let meta = ResponseMeta::new(Status::Busy, self.cfg.node_id, 0, 0);
                    reply.send(self.group, meta, why.as_bytes());
                    return;
                }
                let hi = hi.min(self.commit);
                let log = self.log.clone();
                let group = self.group;
                let (leader, commit) = (self.leader_hint(), self.commit);
                crate::rt::spawn(async move {
                    if lo > hi {
                        reply.send(group, ResponseMeta::new(Status::Ok, leader, commit, 0), &[]);
                        return;
                    }
                    match log.read(lo, hi, max_bytes).await {
                        Ok(frames) => {
                            let mut payload = Vec::new();
                            for f in &frames {
                                payload.extend_from_slice(f.bytes());
                            }
                            reply.send(
                                group,
                                ResponseMeta::new(Status::Ok, leader, commit, frames.len() as u64),
                                &payload,
                            );
                        }
                        Err(e) => reply.send(
                            group,
                            ResponseMeta::new(Status::BadRequest, leader, commit, 0),
                            e.to_string().as_bytes(),
                        ),
                    }
                })
                .detach();
            }
            Input::Trim { index, reply } => {
                // A trim is the group's (the application checkpointed): the leader trims and
                // the followers follow the trim point it sends them. A follower that trimmed
                // only itself would leave the leader's log growing while the client believed
                // the log trimmed; it sends the client to the leader instead.
                if self.node.role() != Role::Leader {
                    self.not_leader(&reply);
                    return;
                }
                let group = self.group;
                let leader = self.leader_hint();
                match self.trim_prefix(index.min(self.commit)).await {
                    Some((index, done)) => {
                        let log = self.log.clone();
                        crate::rt::spawn(async move {
                            match done.await {
                                Ok(()) => reply.send(
                                    group,
                                    ResponseMeta::new(Status::Ok, leader, index, log.first_index()),
                                    &[],
                                ),
                                Err(e) => reply.send(
                                    group,
                                    ResponseMeta::new(Status::Failed, leader, 0, 0),
                                    e.to_string().as_bytes(),
                                ),
                            }
                        })
                        .detach();
                    }
                    None => reply.send(
                        group,
                        ResponseMeta::new(Status::Ok, leader, index, self.log.first_index()),
                        &[],
                    ),
                }
            }
        }
    }

    /// Trims the log's prefix up to `index` (clamped to what is committed and durable). The
    /// snapshot that replaces the prefix (its session table, then its metadata) is made
    /// durable here, before anything goes; the returned future drops the prefix from the log.
    /// `None`: nothing to trim.
    async fn trim_prefix(
        &mut self,
        index: u64,
    ) -> Option<(u64, impl Future<Output = Result<(), LogError>> + 'static)> {
        let s = self.node.trim(index, Bytes::new())?;
        self.snapshot_meta = Some((s.index, s.term, s.membership.clone()));
        let saved = match save_sessions(&self.dir, self.group, &s).await {
            Ok(()) => self.save_hard_state(self.node.hard_state()).await,
            Err(e) => Err(e),
        };
        let log = self.log.clone();
        let index = s.index;
        Some((index, async move {
            saved?;
            log.trim_before(index + 1).await
        }))
    }

    /// Proposes a client append of `entries` (`all`: their frames' bytes, [`frame_bytes`]).
    fn propose(
        &mut self,
        entries: Vec<(u64, u64, Bytes)>,
        all: usize,
        reply: ReplyTo,
        received: Instant,
        admitted: crate::rt::sync::StaticPermit,
    ) {
        if self.node.role() != Role::Leader {
            self.not_leader(&reply);
            return;
        }
        // Only entries that are new need room: a retry of entries already accepted (waiting
        // for their commit, or committed) must not be refused as if nothing was accepted.
        // Which are new is asked only when the room for all of them is short (not per entry
        // on every append).
        let room = self.room_for(all).or_else(|e| {
            let new = frame_bytes(
                entries
                    .iter()
                    .filter(|(session, seq, _)| self.node.is_new_proposal(*session, *seq))
                    .map(|(_, _, d)| &d[..]),
            );
            if new < all { self.room_for(new) } else { Err(e) }
        });
        if let Err(e) = room {
            self.refuse_no_space(&reply, "these entries", &e);
            return;
        }
        let n = entries.len();
        CoreMetrics::add(&self.metrics.append_requests, 1);
        CoreMetrics::add(&self.metrics.entries_proposed, n as u64);
        let proposed = if self.timeline.enabled() { Instant::now() } else { received };
        let pa = Rc::new(PendingAppend {
            reply,
            // Not `vec![(0, 0); n]`: a zeroed allocation is a `calloc`, which skips glibc's
            // per-thread cache; this is one allocation per append request.
            positions: RefCell::new((0..n).map(|_| (0, 0)).collect()),
            remaining: Cell::new(n),
            received,
            proposed,
            _admitted: admitted,
        });
        for (k, (session, seq, data)) in entries.into_iter().enumerate() {
            match self.node.propose(session, seq, data) {
                Ok(Proposed::Appended { .. }) | Ok(Proposed::Pending { .. }) => {
                    if let Some((old, _)) = self.pending.insert((session, seq), (pa.clone(), k))
                        && !Rc::ptr_eq(&old, &pa)
                    {
                        self.displaced(old);
                    }
                }
                Ok(Proposed::Duplicate { index, term }) => self.resolve(&pa, k, index, term),
                Err(e) => {
                    // Entries before this one are proposed and will commit; the client retries
                    // the whole request with the same sessions and sequences, which dedupes them.
                    let (status, leader) = match &e {
                        consensus::Error::NotLeader { leader_hint } => {
                            (Status::NotLeader, leader_hint.unwrap_or(0))
                        }
                        consensus::Error::Busy { .. } => (Status::Busy, self.leader_hint()),
                        consensus::Error::TooLarge { .. } => (Status::TooLarge, self.leader_hint()),
                        consensus::Error::StaleSequence { .. } => {
                            (Status::StaleSequence, self.leader_hint())
                        }
                        _ => (Status::BadRequest, self.leader_hint()),
                    };
                    self.pending.retain(|_, (p, _)| !Rc::ptr_eq(p, &pa));
                    pa.remaining.set(0);
                    pa.reply.send(
                        self.group,
                        ResponseMeta::new(status, leader, 0, 0),
                        e.to_string().as_bytes(),
                    );
                    return;
                }
            }
        }
    }

    /// Why this leader cannot answer a read now (the client retries `Busy`), if it cannot. A
    /// new leader (a restarted one, say) knows its commit index only once it has committed an
    /// entry of its own term; before that it may be behind what was acknowledged, and a read
    /// would hide acknowledged entries from the very client that wrote them. And a leader cut
    /// off from its quorum may have been replaced without knowing it: it answers only while
    /// its lease holds. The commit index checked is the driver's, which the reply is cut at.
    fn leader_read_refused(&self) -> Option<&'static str> {
        if self.node.log_term(self.commit) != Some(self.node.term()) {
            Some(
                "a new leader has not yet committed an entry of its term, so its commit index \
                 may be behind: retry",
            )
        } else if self.node.config().lease_read && self.ticks_behind() > 1 {
            // One tick may be on its way; more means the process was frozen or starved, and
            // the lease, counted in ticks, is older than the core knows.
            Some(
                "this node's ticks are behind the clock (it was frozen or starved of CPU), so \
                 its lease cannot be trusted yet: retry",
            )
        } else if self.node.config().lease_read && !self.node.lease_valid() {
            Some(
                "the leader has not heard from a quorum within its lease (it may have been \
                 replaced): retry",
            )
        } else {
            None
        }
    }

    /// Gives the core every tick of the node's clock due since the last count (at most
    /// [`ticks_applied_max`] at once), before the batch's inputs: see [`TickClock`].
    fn count_ticks(&mut self) {
        let due = self.handle.clock.get().due(Instant::now());
        if due <= self.ticks_seen {
            return;
        }
        let n = due - self.ticks_seen;
        self.ticks_seen = due;
        for _ in 0..n.min(ticks_applied_max(self.cfg.election_ticks)) {
            self.node.tick();
        }
        let mut lag = self.gauges.follower_lag.borrow_mut();
        lag.clear();
        if self.node.role() == Role::Leader {
            let last = self.node.last_index();
            lag.extend(
                self.node
                    .progress_match()
                    .into_iter()
                    .filter(|(id, _)| *id != self.cfg.node_id)
                    .map(|(id, m)| (id, last.saturating_sub(m))),
            );
        }
    }

    /// Ticks of the node's clock due but not yet counted by this driver.
    fn ticks_behind(&self) -> u64 {
        self.handle.clock.get().due(Instant::now()).saturating_sub(self.ticks_seen)
    }

    /// Whether a leader holds a client append (`need`: its frames' bytes) instead of
    /// proposing it now: its frames need a log segment not prepared yet, on a disk not known
    /// to be full but with little room left ([`Log::space_tight`]). Proposed, they would make
    /// the write wait for that preparation, and a preparation that then fails for lack of
    /// space would fail the write and stop the group; held, they wait for it without the
    /// driver (acknowledgements and commits go on), and are proposed, or refused `NoSpace`,
    /// when it ends. With room to spare nothing is held: the write waits for the preparation
    /// as it always did (holding cost 9-11% of the appends/s at 1 KiB on the dev VM, where
    /// every roll of a fresh directory waits for a zero-fill).
    fn must_hold(&self, need: usize) -> bool {
        let len = self.unwritten_bytes + need + SPACE_HEADROOM;
        // The file system is asked only near a roll; a preparation is started (`space_ready`)
        // only for an append that is held.
        self.node.role() == Role::Leader
            && !self.log.is_space_ready(len)
            && !self.log.lacks_space()
            && self.log.space_tight()
            && !self.log.space_ready(len)
    }

    /// Proposes the appends held, in order, as far as the log is ready for them (or refuses
    /// them, or answers that this node no longer leads).
    fn release_held(&mut self) {
        while let Some(Input::Append { entries, .. }) = self.held.front() {
            let all = frame_bytes(entries.iter().map(|(_, _, d)| &d[..]));
            if self.must_hold(all) {
                self.wake_when_prepared();
                return;
            }
            let Some(Input::Append { entries, reply, received, admitted }) = self.held.pop_front()
            else {
                unreachable!("only appends are held")
            };
            self.propose(entries, all, reply, received, admitted);
        }
    }

    /// Wakes the driver (an empty input) when the log's segment preparation ends, once.
    fn wake_when_prepared(&self) {
        if self.hold_wake.replace(true) {
            return;
        }
        let (log, handle, pending) =
            (self.log.clone(), self.handle.clone(), self.hold_wake.clone());
        crate::rt::spawn(async move {
            log.preparation_ended().await;
            pending.set(false);
            handle.inbox.push(Input::Tick);
        })
        .detach();
    }

    /// Counts an append a follower dropped because the segment it needs is not ready: for
    /// lack of space when the disk is known to be full, else a preparation under way.
    fn count_not_ready(&self) {
        let full = self.log.no_space().is_some();
        self.metrics.error(if full { "no_space" } else { "segment_not_ready" });
    }

    /// Answers a request the leader's log has no room for (`what`: its entries, in words).
    fn refuse_no_space(&self, reply: &ReplyTo, what: &str, e: &LogError) {
        let why = format!("the leader's log has no room for {what}: {e}");
        let meta = ResponseMeta::new(Status::NoSpace, self.leader_hint(), 0, 0);
        reply.send(self.group, meta, why.as_bytes());
    }

    /// Whether the log has room for `need` more bytes of entries beside those accepted since
    /// the last write: counts them in if so; `Err(NoSpace)` (logged now and then) if not.
    fn room_for(&mut self, need: usize) -> Result<(), LogError> {
        if need == 0 {
            return Ok(());
        }
        match self.log.space_for(self.unwritten_bytes + need + SPACE_HEADROOM) {
            Err(e) if e.is_no_space() => {
                if self.no_space_warned.is_none_or(|t| t.elapsed() >= NO_SPACE_WARN_EVERY) {
                    self.no_space_warned = Some(Instant::now());
                    tracing::warn!(group = self.group, error = %e, "the log's disk is full: entries are refused until a trim or freed space makes room");
                }
                Err(e)
            }
            // Any other failure of the log shows (and stops the group) when it is written to.
            _ => {
                self.unwritten_bytes += need;
                Ok(())
            }
        }
    }

    /// Another attempt of an append still waiting for its commit took its place (a client
    /// retried on another connection, and the old attempt was read later, or the other way
    /// round): the one displaced is answered `Retry` rather than never, since it may be the
    /// one its client still waits for; a retry finds the entries committed or waiting.
    fn displaced(&mut self, old: Rc<PendingAppend>) {
        if old.remaining.get() == 0 {
            return;
        }
        old.remaining.set(0);
        self.pending.retain(|_, (p, _)| !Rc::ptr_eq(p, &old));
        old.reply.send(
            self.group,
            ResponseMeta::new(Status::Retry, self.cfg.node_id, 0, 0),
            b"another attempt of this append is waiting for the same commit; retry",
        );
    }

    fn resolve(&mut self, pa: &Rc<PendingAppend>, k: usize, index: u64, term: u64) {
        if pa.remaining.get() == 0 {
            return;
        }
        pa.positions.borrow_mut()[k] = (index, term);
        pa.remaining.set(pa.remaining.get() - 1);
        if pa.remaining.get() == 0 {
            let positions = pa.positions.borrow();
            self.answer.clear();
            for (i, t) in positions.iter() {
                self.answer.extend_from_slice(&i.to_le_bytes());
                self.answer.extend_from_slice(&t.to_le_bytes());
            }
            pa.reply.send(
                self.group,
                ResponseMeta::new(
                    Status::Ok,
                    self.cfg.node_id,
                    self.commit,
                    positions.len() as u64,
                ),
                &self.answer,
            );
            if self.timeline.enabled() {
                let first = positions.iter().map(|p| p.0).min().unwrap_or(0);
                let last = positions.iter().map(|p| p.0).max().unwrap_or(0);
                self.timeline.replied(pa.received, pa.proposed, first, last);
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        for (_, (pa, _)) in self.pending.drain() {
            if pa.remaining.get() > 0 {
                pa.remaining.set(0);
                pa.reply.send(
                    self.group,
                    ResponseMeta::new(Status::Failed, 0, 0, 0),
                    why.as_bytes(),
                );
            }
        }
    }

    async fn execute(&mut self, ready: Ready) -> Result<(), LogError> {
        let Ready { snapshot, entries, hard_state, messages, commit_index, replies, fetches, trim } =
            ready;
        if let Some(s) = &snapshot {
            save_sessions(&self.dir, self.group, s).await?;
            self.log.reset(s.index + 1).await?;
            self.snapshots_installed += 1;
            self.snapshot_meta = Some((s.index, s.term, s.membership.clone()));
            let hs = self.node.hard_state();
            self.save_hard_state(hs).await?;
            if entries.is_none() {
                self.node.on_entries_durable(s.index, s.term);
            }
        }
        let mut wrote = None;
        if let Some(w) = entries {
            if w.first_index <= self.log.last_index() {
                self.log.truncate_after(w.first_index - 1).await?;
            }
            self.write_entries(&w.entries).await?;
            let last = w.entries.last().expect("non-empty write");
            let (index, term) = (last.index, last.term);
            wrote = Some((w.first_index, index));
            let log = self.log.clone();
            let handle = self.handle.clone();
            crate::rt::spawn(async move {
                match log.wait_durable(index).await {
                    Ok(()) => {
                        let flush = log.flush_times(index);
                        handle.inbox.push(Input::Durable { index, term, flush })
                    }
                    Err(LogError::Truncated { .. }) => {}
                    Err(e) => handle.inbox.push(Input::Failed(e)),
                }
            })
            .detach();
        }
        if let Some(hs) = hard_state {
            self.save_hard_state(hs).await?;
            self.node.on_hard_state_durable(hs);
        }
        let timing = self.timeline.enabled();
        for m in &messages {
            let mut ack_local_ns = None;
            if timing {
                match &m.body {
                    consensus::Body::AppendResponse { success: true, match_index, .. } => {
                        ack_local_ns = self.timeline.follower_acking(*match_index);
                    }
                    consensus::Body::Append { entries, .. } if !entries.is_empty() => {
                        let last = entries[entries.len() - 1].index;
                        self.timeline.sent(m.to, last, Instant::now());
                    }
                    _ => {}
                }
            }
            self.send(m, ack_local_ns);
        }
        // Frames at or below the last index were written or superseded.
        let last = self.log.last_index();
        while self.received.front().is_some_and(|f| f.frame().first_index() <= last) {
            self.received.pop_front();
        }
        if timing
            && let Some((first, last)) = wrote
            && self.node.role() == Role::Leader
        {
            self.timeline.leader_wrote(first, last, Instant::now());
        }
        if let Some(c) = commit_index {
            CoreMetrics::add(&self.metrics.entries_committed, c.saturating_sub(self.commit));
            self.commit = c;
            if timing && self.node.role() == Role::Leader {
                self.timeline.committed(c, Instant::now());
            }
            self.handle.commit.set(c);
        }
        for r in replies {
            match r {
                Reply::Committed { session, sequence, index, term } => {
                    if let Some((pa, k)) = self.pending.remove(&(session, sequence)) {
                        self.resolve(&pa, k, index, term);
                    }
                }
                Reply::Abandoned { session, sequence, leader_hint } => {
                    if let Some((pa, _)) = self.pending.remove(&(session, sequence))
                        && pa.remaining.get() > 0
                    {
                        pa.remaining.set(0);
                        self.pending.retain(|_, (p, _)| !Rc::ptr_eq(p, &pa));
                        pa.reply.send(
                            self.group,
                            ResponseMeta::new(Status::Retry, leader_hint.unwrap_or(0), 0, 0),
                            b"leadership changed before the append committed; retry",
                        );
                    }
                }
                Reply::ReadReady { .. } | Reply::ReadFailed { .. } => {}
            }
        }
        for f in fetches {
            let log = self.log.clone();
            let handle = self.handle.clone();
            let metrics = self.metrics.clone();
            crate::rt::spawn(async move {
                let mut entries = Vec::new();
                if let Ok(frames) = log.read(f.lo, f.hi, f.max_bytes as usize).await {
                    for fr in &frames {
                        let term = fr.frame().term();
                        for e in fr.entries() {
                            entries.push(Entry {
                                index: e.index,
                                term,
                                kind: CoreKind::from_u8(e.kind as u8).expect("valid kind"),
                                session: e.session,
                                sequence: e.seq,
                                data: Bytes::copy_from_slice(e.data),
                            });
                        }
                    }
                }
                CoreMetrics::add(&metrics.entries_fetched, entries.len() as u64);
                handle.inbox.push(Input::Fetched { lo: f.lo, entries });
            })
            .detach();
        }
        // The leader trimmed (its application checkpointed): follow, so that a follower's disk
        // does not keep what the group no longer needs.
        // Only when a segment would go: each trim writes the session table and hard state.
        if let Some(index) = trim
            && self.log.trim_frees_segment(index)
            && let Some((index, done)) = self.trim_prefix(index).await
        {
            let (group, metrics) = (self.group, self.metrics.clone());
            crate::rt::spawn(async move {
                if let Err(e) = done.await {
                    tracing::error!(group, index, error = %e, "trimming the log after the leader failed");
                    metrics.error("log_io");
                }
            })
            .detach();
        }
        Ok(())
    }

    /// Writes `entries` (consecutive, from the log's next index) to the log. A run of entries
    /// that is exactly a frame received from the leader is written as those very bytes (no
    /// framing, no checksum: they were verified on receipt); anything else (the leader's own
    /// proposals, a range that starts inside a received frame) is framed here, in the log's
    /// buffer, in runs of one term.
    async fn write_entries(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let mut start = 0;
        let max_frame = self.log_frame_budget();
        while start < entries.len() {
            let first = &entries[start];
            while self.received.front().is_some_and(|f| f.frame().first_index() < first.index) {
                self.received.pop_front();
            }
            let whole = self.received.front().map(VerifiedFrame::frame).filter(|f| {
                let n = f.entry_count() as usize;
                f.first_index() == first.index
                    && f.term() == first.term
                    && start + n <= entries.len()
                    && same_bytes(f.as_bytes(), &first.data)
                    && same_bytes(f.as_bytes(), &entries[start + n - 1].data)
            });
            if let Some(f) = whole {
                // The core's entries are slices of this very frame: write it as received.
                let n = f.entry_count() as usize;
                let r = self.log.append(f).await?;
                assert_eq!(r.first, first.index, "the log and the core disagree on the next index");
                CoreMetrics::add(&self.metrics.entries_written_as_received, n as u64);
                self.received.pop_front();
                start += n;
                continue;
            }
            // Frame a run here, ending where the next received frame begins.
            let stop =
                self.received.iter().map(|f| f.frame().first_index()).find(|&i| i > first.index);
            let term = first.term;
            let mut end = start + 1;
            let mut bytes = first.data.len() + 24;
            while end < entries.len()
                && entries[end].term == term
                && stop.is_none_or(|s| entries[end].index < s)
                && bytes + entries[end].data.len() + 24 + 48 <= max_frame
            {
                bytes += entries[end].data.len() + 24;
                end += 1;
            }
            let refs: Vec<EntryRef<'_>> =
                entries[start..end].iter().map(super::codec::frame_entry).collect();
            let r = self.log.append_entries(term, &refs).await?;
            assert_eq!(r.first, first.index, "the log and the core disagree on the next index");
            if self.node.role() != Role::Leader {
                CoreMetrics::add(&self.metrics.entries_written_encoded, (end - start) as u64);
            }
            start = end;
        }
        Ok(())
    }

    /// Sends `m`. The entries of an append that are whole frames of the log still in memory
    /// go out as those frames (the usual case: a leader replicates what it just appended);
    /// only the entries around them (an append that starts or ends inside a frame) are framed
    /// anew.
    fn send(&self, m: &Message, ack_local_ns: Option<u64>) {
        if let consensus::Body::Append { entries, .. } = &m.body
            && let (Some(lo), Some(hi)) = (entries.first(), entries.last())
        {
            let lo = lo.index;
            let sent = self.log.with_frames(lo, hi.index, |first, last, frames| {
                let (a, b) = ((first - lo) as usize, (last - lo) as usize);
                debug_assert_eq!(entries[a].index, first);
                let (head, tail) = (&entries[..a], &entries[b + 1..]);
                self.peers.send_frames(self.group, m, head, frames, tail);
                (b + 1 - a) as u64
            });
            let as_is = sent.unwrap_or(0);
            CoreMetrics::add(&self.metrics.entries_sent_as_is, as_is);
            CoreMetrics::add(&self.metrics.entries_sent_encoded, entries.len() as u64 - as_is);
            if sent.is_some() {
                return;
            }
        }
        self.peers.send(self.group, m, ack_local_ns);
    }

    /// Most bytes of one frame this node builds: an eighth of an append message (the core's
    /// `max_batch_bytes`), and no more than a flush. The core cuts appends by its own count,
    /// not at frame boundaries, so an append that lags behind the newest entries starts and
    /// ends inside frames; with frames this small it still carries mostly whole frames,
    /// which go out as they are (see [`Self::send`]). One frame per message would leave most
    /// of a lagging follower's appends to be framed anew.
    fn log_frame_budget(&self) -> usize {
        let message = self.node.config().max_batch_bytes as usize;
        (message / 8).min(self.cfg.flush_bytes_max)
    }

    async fn save_hard_state(&mut self, hs: consensus::HardState) -> Result<(), LogError> {
        let blob = self
            .snapshot_meta
            .as_ref()
            .map_or_else(Vec::new, |(i, t, m)| encode_snapshot_meta(*i, *t, m));
        self.hs_file
            .save(&HardState {
                term: hs.term,
                vote: hs.vote.unwrap_or(0),
                commit: self.commit,
                blob,
            })
            .await
    }

    fn status_json(&self) -> String {
        let members: Vec<u64> = self.node.membership().members().collect();
        let progress: Vec<serde_json::Value> = self
            .node
            .progress_match()
            .into_iter()
            .map(|(id, m)| serde_json::json!({"node": id, "match_index": m, "lag": self.node.last_index().saturating_sub(m)}))
            .collect();
        serde_json::json!({
            "group": self.group,
            "node": self.cfg.node_id,
            "role": format!("{:?}", self.node.role()),
            "term": self.node.term(),
            "leader": self.node.leader(),
            "commit_index": self.commit,
            "last_index": self.node.last_index(),
            "durable_index": self.log.durable_index(),
            "first_index": self.log.first_index(),
            "members": members,
            "voters": self.node.membership().voters.iter().map(|v| v.id).collect::<Vec<_>>(),
            "learners": self.node.membership().learners,
            "snapshots_installed": self.snapshots_installed,
            // The log cannot have another segment (its file system is full), and why: new
            // entries are refused once the open segment is full (null: it can).
            "no_space": self.log.no_space().map(|e| e.to_string()),
            "progress": progress,
            "cores": self.cfg.cores,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Body;
    use crate::node::config::PeerConfig;

    /// A tick of the test's clock: long enough that real time adds none while a test runs; the
    /// test sets how many are due by moving the clock's start back.
    const TICK: std::time::Duration = std::time::Duration::from_secs(60);

    fn set_due(handle: &GroupHandle, ticks: u64) {
        let back = TICK * u32::try_from(ticks).unwrap() + std::time::Duration::from_secs(1);
        let start = Instant::now().checked_sub(back).expect("uptime covers the test's clock");
        handle.clock.set(TickClock { start, tick: TICK });
    }

    fn deliver(handle: &GroupHandle, msgs: Vec<Message>) {
        for m in msgs {
            let stamp = PeerStamp { received: Instant::now(), ack_local_ns: None };
            handle.inbox.push(Input::Peer(m, stamp, Vec::new()));
        }
    }

    fn heartbeat(term: u64) -> Message {
        Message {
            from: 1,
            to: 2,
            term,
            body: Body::Heartbeat { commit: 0, round: term, sent_tick: 0, trimmed: 0 },
        }
    }

    /// Waits (a bounded while) until the driver has sent something to `peer`; returns it all.
    async fn sent_to(peers: &Peers, peer: u64) -> Vec<Message> {
        for _ in 0..2_000 {
            let sent = peers.take_sent(peer);
            if !sent.is_empty() {
                return sent;
            }
            crate::rt::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("nothing was sent to node {peer}");
    }

    /// A follower frozen for longer than an election timeout wakes with the leader's
    /// heartbeats waiting in its socket. It must count the ticks it missed before it handles
    /// them: its answer to the heartbeat renews the leader's lease, so for an election timeout
    /// after that answer it must not help another node win. Had it counted them after the
    /// heartbeat, its election timer would already have run out and it would grant the vote
    /// below while the leader still serves reads on its lease.
    #[test]
    fn a_woken_follower_counts_its_missed_ticks_before_the_heartbeats_that_waited() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        crate::rt::Executor::new("group-test")
            .run(move || async move {
                let local = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
                let cfg = NodeConfig {
                    node_id: 2,
                    data_dir,
                    members: (1..=3)
                        .map(|id| PeerConfig { id, peer_addr: local(9), client_addr: local(9) })
                        .collect(),
                    election_ticks: 10,
                    heartbeat_ticks: 1,
                    ..NodeConfig::default()
                };
                cfg.validate().unwrap();
                let election = u64::from(cfg.election_ticks);
                let handle = Rc::new(GroupHandle::new(
                    cfg.uncommitted_bytes_max,
                    TickClock { start: Instant::now(), tick: TICK },
                ));
                set_due(&handle, 0);
                let peers = Peers::for_test(&[1, 3]);
                let driver = GroupDriver::open(0, Rc::new(cfg), handle.clone(), peers.clone())
                    .await
                    .unwrap();
                let run = crate::rt::spawn(driver.run());
                // Past the vote guard of a restarted node (whatever it campaigned for meanwhile
                // is of no interest), then a follower of node 1 in term 1.
                let mut due = 0;
                for _ in 0..3 {
                    due += election;
                    set_due(&handle, due);
                    handle.inbox.push(Input::Tick);
                }
                deliver(&handle, vec![heartbeat(1)]);
                let _ = sent_to(&peers, 1).await;
                let _ = peers.take_sent(3);

                // Frozen for two election timeouts; the leader's heartbeat waited meanwhile.
                due += 2 * election;
                set_due(&handle, due);
                deliver(&handle, vec![heartbeat(1)]);
                let answered = sent_to(&peers, 1).await;
                assert!(
                    answered
                        .iter()
                        .any(|m| m.term == 1 && matches!(m.body, Body::HeartbeatResponse { .. })),
                    "{answered:?}"
                );
                let _ = peers.take_sent(3);

                // Node 3 asks for a vote right after; no tick has passed since the answer. A
                // heartbeat behind it shows when the driver has handled both.
                let vote = Message {
                    from: 3,
                    to: 2,
                    term: 2,
                    body: Body::RequestVote {
                        pre_vote: false,
                        last_index: 0,
                        last_term: 0,
                        priority: 1,
                        transfer: false,
                    },
                };
                deliver(&handle, vec![vote.clone(), heartbeat(1)]);
                let to_leader = sent_to(&peers, 1).await;
                let to_candidate = peers.take_sent(3);
                assert!(
                    !to_candidate
                        .iter()
                        .any(|m| matches!(m.body, Body::VoteResponse { granted: true, .. })),
                    "voted for node 3 inside the lease it had just renewed: {to_candidate:?}"
                );
                assert!(
                    to_leader.iter().all(|m| m.term == 1),
                    "left term 1 for node 3's election: {to_leader:?}"
                );

                // The same request after an election timeout without the leader is granted:
                // the check above can see a vote.
                due += election;
                set_due(&handle, due);
                deliver(&handle, vec![vote]);
                let granted = sent_to(&peers, 3).await;
                assert!(
                    granted
                        .iter()
                        .any(|m| matches!(m.body, Body::VoteResponse { granted: true, .. })),
                    "{granted:?}"
                );
                handle.inbox.close();
                run.await;
            })
            .unwrap();
    }

    #[test]
    fn session_file_round_trip_and_rejects_damage() {
        let s = Snapshot {
            index: 40,
            term: 3,
            sessions: vec![
                SessionRecord { session: 7, sequence: 20, index: 21, term: 1 },
                SessionRecord { session: 9, sequence: 2, index: 39, term: 3 },
            ],
            sessions_applied: 42,
            ..Snapshot::default()
        };
        let b = encode_sessions(5, &s);
        assert_eq!(decode_sessions(5, &b), Some((40, 42, s.sessions.clone())));
        assert_eq!(decode_sessions(6, &b), None, "another group's file");
        for cut in [0, 3, b.len() - 1] {
            assert_eq!(decode_sessions(5, &b[..cut]), None, "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert_eq!(decode_sessions(5, &bad), None, "damaged");
    }
}
