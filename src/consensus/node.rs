//! `Node`: one member of a consensus group, as a deterministic state machine.
//!
//! See the module docs of [`crate::consensus`] for the contract with the runtime.

use std::collections::{HashMap, VecDeque};

use super::session::{SessionHasherBuilder, SessionMap};

use bytes::Bytes;

use super::config::Config;
use super::error::{Bound, Error};
use super::log::Log;
use super::membership::{ConfChange, Membership};
use super::message::{Body, Message, Reply, Snapshot};
use super::progress::{Progress, ProgressState};
use super::rand::SplitMix64;
use super::session::{Lookup, SessionTable};
use super::types::{Entry, EntryKind, HardState, Index, NodeId, Term};

/// Structural checks on a message before it may touch the log.
fn well_formed(m: &Message) -> bool {
    match &m.body {
        Body::Append { prev_index, prev_term, entries, .. } => {
            let mut term = *prev_term;
            entries.iter().enumerate().all(|(k, e)| {
                let ok =
                    e.index == prev_index + 1 + k as Index && e.term >= term && e.term <= m.term;
                term = e.term;
                ok
            })
        }
        Body::InstallSnapshot { snapshot } => snapshot.term <= m.term,
        _ => true,
    }
}

/// A priority-0 voter (logger) campaigns after this many election timeouts without a leader.
pub const LOGGER_LAST_RESORT_TIMEOUTS: u32 = 3;

/// The role a node plays in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win, without bumping its term (PreVote).
    PreCandidate,
    /// Campaigning in its current term.
    Candidate,
    /// Leads its current term.
    Leader,
}

/// Entries to write to the log: first drop every entry `>= first_index`, then append
/// `entries` (which start at `first_index`). One `LogWrite` is one batch, i.e. one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWrite {
    /// Index of the first entry; the log is truncated from here first.
    pub first_index: Index,
    /// The entries, contiguous, non-empty.
    pub entries: Vec<Entry>,
}

impl LogWrite {
    /// Index of the last entry.
    pub fn last_index(&self) -> Index {
        self.first_index + self.entries.len() as Index - 1
    }
}

/// A request to read entries `lo..=hi` (at most `max_bytes`, at least one entry) from the
/// durable log, because they were evicted from the core's cache and a follower needs them.
/// Answer with [`Node::on_fetched`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// First index wanted.
    pub lo: Index,
    /// Last index wanted.
    pub hi: Index,
    /// Byte budget for the answer.
    pub max_bytes: u64,
}

/// Work for the runtime, collected since the last [`Node::take_ready`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Replace the whole log by this snapshot (before writing `entries`). When durable,
    /// report `on_entries_durable(snapshot.index, snapshot.term)` unless `entries` follows.
    pub snapshot: Option<Snapshot>,
    /// Write these entries (after the snapshot, if any). When durable, report
    /// `on_entries_durable(last.index, last.term)`.
    pub entries: Option<LogWrite>,
    /// Persist the term and vote. When durable, report `on_hard_state_durable`.
    pub hard_state: Option<HardState>,
    /// Send these now, in order, best effort. The core has already held back any message
    /// that depends on state not yet durable.
    pub messages: Vec<Message>,
    /// The commit index advanced to this: entries up to it may be applied.
    pub commit_index: Option<Index>,
    /// Answers for clients.
    pub replies: Vec<Reply>,
    /// Read these ranges from the durable log and hand them to `on_fetched`.
    pub fetches: Vec<Fetch>,
    /// Follower: the leader trimmed its log up to at least this index, and this node has
    /// committed that far. The runtime may call [`Node::trim`] with it (and an application
    /// blob) and drop the prefix as for a local trim, or let it pass (for example until a
    /// whole segment would be freed): it is offered again when it advances.
    pub trim: Option<Index>,
}

impl Ready {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_none()
            && self.hard_state.is_none()
            && self.messages.is_empty()
            && self.commit_index.is_none()
            && self.replies.is_empty()
            && self.fetches.is_empty()
            && self.trim.is_none()
    }
}

/// What became of an accepted proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposed {
    /// Appended at `(index, term)`; a `Reply::Committed` follows when it commits.
    Appended { index: Index, term: Term },
    /// A retry of a proposal already in the log, uncommitted, at `index`; its
    /// `Reply::Committed` follows when it commits.
    Pending { index: Index },
    /// A retry of a proposal already committed at `(index, term)`: that is the answer.
    Duplicate { index: Index, term: Term },
}

/// A follower's replication state as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index it reported durable and matching.
    pub match_index: Index,
    /// Next index the leader will send.
    pub next_index: Index,
    /// Probe, Replicate or Snapshot.
    pub state: ProgressState,
    /// Append messages in flight.
    pub inflight_msgs: usize,
    /// Entry bytes in flight.
    pub inflight_bytes: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
}

/// What `corelog status` shows for one group on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: Index,
    /// Last index in the log.
    pub last_index: Index,
    /// Highest durable index.
    pub durable_index: Index,
    /// Last trimmed index.
    pub snapshot_index: Index,
    /// Membership in force.
    pub membership: Membership,
    /// Leader only: each follower's progress.
    pub followers: Vec<FollowerStatus>,
    /// Leader only: bytes appended but not committed.
    pub uncommitted_bytes: u64,
    /// Leader only: true while a lease read would be served.
    pub lease_valid: bool,
}

/// What a restarting node recovered from its stable storage.
#[derive(Debug, Clone, Default)]
pub struct RestartState {
    /// The durable term and vote.
    pub hard_state: HardState,
    /// The snapshot the log restarts from, if the prefix was trimmed.
    pub snapshot: Option<Snapshot>,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    id: u64,
    index: Index,
    round: u64,
}

/// A write handed to the runtime and not yet reported durable.
#[derive(Debug, Clone, Copy)]
struct Unstable {
    first_index: Index,
    last_index: Index,
    last_term: Term,
    snapshot: bool,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    to: NodeId,
    deadline_tick: u64,
}

/// One member of a consensus group (see the module docs).
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    cfg: Config,
    rng: SplitMix64,

    // Durable state (mirrors what the runtime persisted or is persisting).
    term: Term,
    vote: Option<NodeId>,
    /// The latest (term, vote) was handed out and is not yet reported durable. While true,
    /// every outgoing message waits in `held`.
    hs_pending: bool,
    held: VecDeque<Message>,

    log: Log,
    /// Writes handed out, oldest first; used to tell which in-memory entries are durable.
    unstable: VecDeque<Unstable>,
    /// Invariant: `log.base_index <= commit <= log.last_index()` (except transiently while a
    /// snapshot is installed, when both equal the snapshot index).
    commit: Index,

    role: Role,
    leader: Option<NodeId>,
    /// Ticks since the last message from the leader (follower) or since the last CheckQuorum
    /// round (leader).
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_timeout: u32,
    /// Local tick counter (starts at 1 on every start); the lease is measured in it.
    now_tick: u64,
    /// Refuse to vote before this tick: after a restart we do not remember whether a leader
    /// whose lease we back was heard from recently, so we assume it was.
    vote_guard_until_tick: u64,
    /// Votes received in the current (pre-)campaign.
    votes: Vec<(NodeId, bool)>,

    /// Follower: every entry `<= matched` is known to match the current leader's log.
    /// Reset when the term changes.
    matched: Index,
    /// Follower: highest `match_index` reported to the current leader.
    acked: Index,

    /// Membership in force (latest config entry in the log, or the snapshot's).
    membership: Membership,
    /// Membership as of `log.base_index`.
    base_membership: Membership,
    /// Config entries in the log after the base: `(index, membership)`, increasing index.
    config_log: Vec<(Index, Membership)>,
    /// The snapshot the log restarts from (index 0: none yet).
    snapshot: Snapshot,
    sessions: SessionTable,
    /// The highest trim point a leader announced (its own trimmed prefix).
    leader_trimmed: Index,
    /// The last trim point offered to the runtime in `Ready::trim`.
    trim_offered: Index,

    // Leader state. Empty / zero when not leader.
    progress: Vec<Progress>,
    /// Bytes of entries in `(commit, last]`.
    uncommitted_bytes: u64,
    /// Normal entries in `(commit, last]`.
    pending_proposals: usize,
    /// Uncommitted proposals in the log: session -> (sequence, index).
    pending_sessions: SessionMap<(u64, Index)>,
    reads: VecDeque<PendingRead>,
    /// Heartbeat round counter (ReadIndex).
    hb_round: u64,
    /// Tick at which this node became leader (lease acknowledgements must be newer).
    leader_since_tick: u64,
    /// No lease reads for the rest of the term (a transfer was started).
    lease_revoked: bool,
    transfer: Option<Transfer>,
    transfer_cooldown_until_tick: u64,
    need_broadcast: bool,
    need_heartbeat: bool,
    scratch: Vec<Index>,
    /// Commit index handed out by the previous `take_ready`: entries up to it were seen
    /// committed by the runtime and may be evicted from the cache.
    ready_commit: Index,

    ready: Ready,
}

impl Node {
    /// A member of a freshly bootstrapped group: empty log, `initial` membership (an empty
    /// membership for a node that will be added to an existing group later).
    pub fn new(id: NodeId, cfg: Config, initial: Membership, seed: u64) -> Self {
        let mut n = Self::restart(id, cfg, initial, seed, RestartState::default());
        n.vote_guard_until_tick = 0;
        n
    }

    /// A member restarting from what it recovered from stable storage. `initial` is the
    /// bootstrap membership (used when nothing in the recovered state says otherwise).
    pub fn restart(
        id: NodeId,
        cfg: Config,
        initial: Membership,
        seed: u64,
        state: RestartState,
    ) -> Self {
        assert!(id != 0, "node id 0 is reserved");
        if let Err(e) = cfg.validate() {
            panic!("{e}");
        }
        let snapshot =
            state.snapshot.unwrap_or(Snapshot { membership: initial, ..Snapshot::default() });
        let mut log = Log::new(snapshot.index, snapshot.term);
        let mut config_log = Vec::new();
        for e in state.entries {
            assert_eq!(e.index, log.last_index() + 1, "recovered log has a hole");
            if e.kind == EntryKind::Config {
                let m = Membership::decode(&e.data).expect("corrupt config entry in the log");
                config_log.push((e.index, m));
            }
            log.append(e);
        }
        log.durable = log.last_index();
        let membership =
            config_log.last().map_or_else(|| snapshot.membership.clone(), |(_, m)| m.clone());
        let sessions = SessionTable::restore(
            &snapshot.sessions,
            snapshot.sessions_applied,
            cfg.max_sessions,
            cfg.session_expiry_entries,
        );
        let mut hs = state.hard_state;
        if cfg.bugs.forget_vote_on_restart {
            hs.vote = None;
        }
        let mut rng = SplitMix64::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let key = rng.next_u64();
        let mut n = Self {
            id,
            rng,
            term: hs.term,
            vote: hs.vote,
            hs_pending: false,
            held: VecDeque::new(),
            commit: log.base_index,
            log,
            unstable: VecDeque::new(),
            role: Role::Follower,
            leader: None,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_tick,
            now_tick: 1,
            vote_guard_until_tick: u64::from(cfg.election_tick) + 1,
            votes: Vec::new(),
            matched: 0,
            acked: 0,
            membership,
            base_membership: snapshot.membership.clone(),
            config_log,
            snapshot,
            sessions,
            progress: Vec::new(),
            uncommitted_bytes: 0,
            pending_proposals: 0,
            pending_sessions: HashMap::with_hasher(SessionHasherBuilder::new(key)),
            reads: VecDeque::new(),
            hb_round: 0,
            leader_since_tick: 0,
            lease_revoked: false,
            transfer: None,
            transfer_cooldown_until_tick: 0,
            need_broadcast: false,
            need_heartbeat: false,
            scratch: Vec::new(),
            ready_commit: 0,
            leader_trimmed: 0,
            trim_offered: 0,
            ready: Ready::default(),
            cfg,
        };
        n.reset_election_timer();
        n
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Current term and vote.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote }
    }
    /// The leader this node knows of in its term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Commit index known to this node.
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// Last index in the log.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// Last index of the trimmed prefix.
    pub fn snapshot_index(&self) -> Index {
        self.log.base_index
    }
    /// Highest index known durable locally.
    pub fn durable_index(&self) -> Index {
        self.log.durable
    }
    /// Term of the entry at `index`, if it is in the log (or is the snapshot point).
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if it is in the log.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.get(index)
    }
    /// Membership in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The replicated session table.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }
    /// The snapshot the log restarts from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
    /// Config of this node.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Leader: the match index of each follower (for status pages and tests).
    pub fn progress_match(&self) -> Vec<(NodeId, Index)> {
        self.progress.iter().map(|p| (p.id, p.match_index)).collect()
    }

    /// A snapshot of the node's state for status pages and tests.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.commit,
            last_index: self.log.last_index(),
            durable_index: self.log.durable,
            snapshot_index: self.log.base_index,
            membership: self.membership.clone(),
            followers: self
                .progress
                .iter()
                .map(|p| FollowerStatus {
                    id: p.id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: p.state,
                    inflight_msgs: p.inflights.len(),
                    inflight_bytes: p.inflight_bytes,
                    recent_active: p.recent_active,
                })
                .collect(),
            uncommitted_bytes: self.uncommitted_bytes,
            lease_valid: self.lease_valid(),
        }
    }

    /// True if this leader may serve a read from its lease right now.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || !self.cfg.lease_read
            || !self.cfg.check_quorum
            || self.lease_revoked
            || !self.membership.is_voter(self.id)
        {
            return false;
        }
        // The quorum-th most recent heartbeat send tick acknowledged by the voters (our own
        // "acknowledgement" is now).
        let mut ticks: Vec<u64> = Vec::with_capacity(self.membership.voters.len());
        for v in &self.membership.voters {
            if v.id == self.id {
                ticks.push(self.now_tick);
            } else if let Some(p) = self.progress.iter().find(|p| p.id == v.id) {
                ticks.push(p.acked_sent_tick);
            } else {
                ticks.push(0);
            }
        }
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        let start = ticks[self.membership.quorum() - 1];
        start > self.leader_since_tick && self.now_tick < start + u64::from(self.cfg.lease_ticks())
    }

    // ---------------------------------------------------------------- inputs

    /// Takes the work accumulated since the last call. Appends proposed since then are sent
    /// to followers here, as one batch per follower.
    pub fn take_ready(&mut self) -> Ready {
        self.log.evict(self.ready_commit.min(self.commit), self.cfg.max_cache_bytes);
        self.ready_commit = self.commit;
        if self.need_broadcast {
            self.need_broadcast = false;
            self.bcast_append();
        }
        if self.need_heartbeat {
            self.need_heartbeat = false;
            self.bcast_heartbeat();
        }
        if self.role != Role::Leader {
            let t = self.leader_trimmed.min(self.commit).min(self.log.durable);
            if t > self.log.base_index && t > self.trim_offered {
                self.trim_offered = t;
                self.ready.trim = Some(t);
            }
        }
        if let Some(s) = &self.ready.snapshot {
            self.unstable.push_back(Unstable {
                first_index: s.index + 1,
                last_index: s.index,
                last_term: s.term,
                snapshot: true,
            });
        }
        if let Some(w) = &self.ready.entries {
            let last = w.entries.last().expect("empty log write");
            self.unstable.push_back(Unstable {
                first_index: w.first_index,
                last_index: last.index,
                last_term: last.term,
                snapshot: false,
            });
        }
        std::mem::take(&mut self.ready)
    }

    /// The runtime made the hard state `hs` durable.
    pub fn on_hard_state_durable(&mut self, hs: HardState) {
        if !self.hs_pending || hs != self.hard_state() {
            return; // an older write; a newer one is on its way
        }
        self.hs_pending = false;
        self.ready.messages.extend(self.held.drain(..));
        if self.role == Role::Candidate {
            self.tally_and_act();
        }
    }

    /// The runtime made every write up to the one ending at `(index, term)` durable.
    pub fn on_entries_durable(&mut self, index: Index, term: Term) {
        let Some(pos) =
            self.unstable.iter().position(|w| w.last_index == index && w.last_term == term)
        else {
            return; // not a write we handed out in this incarnation
        };
        self.unstable.drain(..=pos);
        // Writes issued later may truncate below `index`: only the prefix they keep is both
        // durable and in the in-memory log.
        let mut durable = index;
        for w in &self.unstable {
            durable = durable.min(w.first_index - 1);
        }
        if let Some(s) = &self.ready.snapshot {
            durable = durable.min(s.index);
        }
        if let Some(w) = &self.ready.entries {
            durable = durable.min(w.first_index - 1);
        }
        durable = durable.min(self.log.last_index()).max(self.log.base_index);
        if durable > self.log.durable {
            self.log.durable = durable;
        }
        match self.role {
            Role::Leader => self.maybe_commit(),
            _ => self.maybe_send_ack(false),
        }
    }

    /// One tick of the logical clock.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            let timeout = if self.can_campaign() {
                self.randomized_timeout
            } else if self.membership.priority(self.id) == Some(0) {
                // A logger campaigns only as a last resort: when no leader has been heard
                // for three election timeouts, its log may be the only up-to-date one the
                // electable voters could be elected against (it hands over at once).
                LOGGER_LAST_RESORT_TIMEOUTS * self.randomized_timeout
            } else {
                u32::MAX
            };
            if self.election_elapsed >= timeout {
                self.election_elapsed = 0;
                self.start_campaign(self.cfg.pre_vote, false);
            }
        }
    }

    /// Proposes a client entry (leader only).
    pub fn propose(&mut self, session: u64, sequence: u64, data: Bytes) -> Result<Proposed, Error> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if self.transfer.is_some() {
            return Err(Error::Busy { bound: Bound::LeaderTransfer });
        }
        let bytes = data.len() as u64;
        if bytes > self.cfg.max_entry_bytes {
            return Err(Error::TooLarge { bytes, max_bytes: self.cfg.max_entry_bytes });
        }
        if session != 0 && !self.cfg.bugs.skip_session_dedupe {
            if let Some(&(seq, index)) = self.pending_sessions.get(&session) {
                if seq == sequence {
                    return Ok(Proposed::Pending { index });
                }
                if seq > sequence {
                    return Err(Error::StaleSequence { session, sequence, latest: seq });
                }
            }
            match self.sessions.lookup(session, sequence) {
                Lookup::Committed { index, term } => {
                    return Ok(Proposed::Duplicate { index, term });
                }
                Lookup::Stale { latest } => {
                    return Err(Error::StaleSequence { session, sequence, latest });
                }
                Lookup::New => {}
            }
        }
        let size = bytes + super::types::ENTRY_OVERHEAD_BYTES;
        if self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes {
            return Err(Error::Busy { bound: Bound::UncommittedBytes });
        }
        if self.pending_proposals >= self.cfg.max_pending_proposals {
            return Err(Error::Busy { bound: Bound::PendingProposals });
        }
        let index = self.append_local(EntryKind::Normal, session, sequence, data);
        if session != 0 {
            self.pending_sessions.insert(session, (sequence, index));
        }
        Ok(Proposed::Appended { index, term: self.term })
    }

    /// True if a proposal of `(session, sequence)` would add an entry: it is neither waiting
    /// for its commit nor committed (a retry of either is answered from what is known), nor
    /// stale. Session 0 (no deduplication) is always new. Changes nothing.
    pub fn is_new_proposal(&self, session: u64, sequence: u64) -> bool {
        if session == 0 || self.cfg.bugs.skip_session_dedupe {
            return true;
        }
        if let Some(&(seq, _)) = self.pending_sessions.get(&session)
            && seq >= sequence
        {
            return false;
        }
        matches!(self.sessions.lookup(session, sequence), Lookup::New)
    }

    /// Starts a ReadIndex read: `Reply::ReadReady { id, index }` follows once a quorum has
    /// confirmed this node is still the leader.
    pub fn read_index(&mut self, id: u64) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if !self.committed_in_term() {
            return Err(Error::Busy { bound: Bound::LeaderNotReady });
        }
        if self.reads.len() >= self.cfg.max_pending_reads {
            return Err(Error::Busy { bound: Bound::PendingReads });
        }
        self.reads.push_back(PendingRead { id, index: self.commit, round: self.hb_round + 1 });
        self.need_heartbeat = true;
        self.check_reads();
        Ok(())
    }

    /// A lease read: the index a read may be served at, now, without a round trip.
    pub fn lease_read(&self) -> Result<Index, Error> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if !self.committed_in_term() {
            return Err(Error::Busy { bound: Bound::LeaderNotReady });
        }
        if !self.lease_valid() {
            return Err(Error::NoLease);
        }
        Ok(self.commit)
    }

    /// Proposes a membership change (leader only); returns the index of the config entry.
    pub fn change_membership(&mut self, change: ConfChange) -> Result<Index, Error> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if !self.committed_in_term() {
            return Err(Error::Busy { bound: Bound::LeaderNotReady });
        }
        if self.config_log.last().is_some_and(|(i, _)| *i > self.commit) {
            return Err(Error::Busy { bound: Bound::ConfigChangePending });
        }
        let next = self.membership.apply(change)?;
        Ok(self.append_local(EntryKind::Config, 0, 0, next.encode()))
    }

    /// Starts an election now, as if the election timeout had fired (PreVote and leases
    /// still apply). For tests and for operators forcing an election; no-op for a leader and
    /// for a member that may not campaign.
    pub fn campaign(&mut self) {
        if self.role != Role::Leader && self.can_campaign() {
            self.start_campaign(self.cfg.pre_vote, false);
        }
    }

    /// Hands leadership to `to` (leader only): catch it up, then tell it to campaign now.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if to == self.id {
            return Ok(());
        }
        if self.membership.priority(to).is_none_or(|p| p == 0) {
            return Err(Error::BadTransferTarget(to));
        }
        self.transfer =
            Some(Transfer { to, deadline_tick: self.now_tick + u64::from(self.cfg.election_tick) });
        self.lease_revoked = true;
        if let Some(k) = self.progress_pos(to) {
            if self.progress[k].match_index == self.log.last_index() {
                self.send(to, Body::TimeoutNow);
            } else {
                self.send_append(k);
            }
        }
        Ok(())
    }

    /// The application has folded everything up to `index` into `blob`: trim the log prefix.
    /// Clamped to what is committed and durable. Returns the new snapshot, which the runtime
    /// must persist before it drops the log prefix from disk.
    pub fn trim(&mut self, index: Index, blob: Bytes) -> Option<Snapshot> {
        let index = index.min(self.commit).min(self.log.durable);
        if index <= self.log.base_index {
            return None;
        }
        let membership = self.membership_at(index);
        let term = self.log.term(index).expect("trim point in the log");
        self.log.trim_to(index);
        self.config_log.retain(|(i, _)| *i > index);
        self.base_membership = membership.clone();
        self.snapshot = Snapshot {
            index,
            term,
            membership,
            sessions: self.sessions.records(),
            sessions_applied: self.sessions.applied_index(),
            blob,
        };
        Some(self.snapshot.clone())
    }

    /// Handles a message from a peer. A malformed message (misrouted, or an Append whose
    /// entries do not follow `prev_index` contiguously with terms between `prev_term` and the
    /// message's term) is dropped: the transport should never deliver one, and the log must
    /// not be touched by it.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || !well_formed(&m) {
            return;
        }
        if m.term > self.term {
            match &m.body {
                Body::RequestVote { pre_vote, transfer, .. } => {
                    if !transfer && self.in_lease() {
                        return; // a leader we back is alive: ignore (CheckQuorum)
                    }
                    if !pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                Body::VoteResponse { pre_vote: true, granted: true } => {} // a PreVote grant carries the term we would campaign in
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                    // Tell a stale leader about the newer term so that it steps down.
                    self.send(
                        m.from,
                        Body::AppendResponse {
                            success: false,
                            match_index: 0,
                            reject_index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                Body::RequestVote { pre_vote: true, .. } => {
                    self.send(m.from, Body::VoteResponse { pre_vote: true, granted: false });
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        match m.body {
            Body::RequestVote { pre_vote, last_index, last_term, priority, transfer } => self
                .handle_vote_request(
                    from, m.term, pre_vote, last_index, last_term, priority, transfer,
                ),
            Body::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, m.term, pre_vote, granted)
            }
            Body::Append { prev_index, prev_term, entries, commit } => {
                if self.accept_leader(from) {
                    self.handle_append(prev_index, prev_term, entries, commit);
                }
            }
            Body::Heartbeat { commit, round, sent_tick, trimmed } => {
                if self.accept_leader(from) {
                    let c = commit.min(self.matched);
                    if c > self.commit {
                        self.advance_commit(c);
                    }
                    self.leader_trimmed = self.leader_trimmed.max(trimmed);
                    self.send(from, Body::HeartbeatResponse { round, sent_tick });
                }
            }
            Body::InstallSnapshot { snapshot } => {
                if self.accept_leader(from) {
                    self.handle_snapshot(snapshot);
                }
            }
            Body::AppendResponse { success, match_index, reject_index, hint_index, hint_term } => {
                if self.role == Role::Leader {
                    self.handle_append_response(
                        from,
                        success,
                        match_index,
                        reject_index,
                        hint_index,
                        hint_term,
                    );
                }
            }
            Body::HeartbeatResponse { round, sent_tick } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, round, sent_tick);
                }
            }
            Body::TimeoutNow => {
                if self.role != Role::Leader && self.can_campaign() {
                    self.start_campaign(false, true);
                }
            }
        }
    }

    // ---------------------------------------------------------------- roles

    fn not_leader(&self) -> Error {
        Error::NotLeader { leader_hint: self.leader.filter(|&l| l != self.id) }
    }

    fn can_campaign(&self) -> bool {
        self.membership.priority(self.id).is_some_and(|p| p > 0)
    }

    /// A leader we follow was heard from within an election timeout (or we just restarted
    /// and cannot know): refuse to help anyone else win. This is what makes the lease safe.
    fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.now_tick < self.vote_guard_until_tick && !self.cfg.bugs.overlong_lease {
            return true;
        }
        match self.role {
            Role::Leader => true,
            _ => self.leader.is_some() && self.election_elapsed < self.cfg.election_tick,
        }
    }

    /// Just restarted and backing a lease we may have forgotten: no votes yet.
    fn vote_guarded(&self, transfer: bool) -> bool {
        !self.cfg.bugs.overlong_lease
            && self.cfg.check_quorum
            && !transfer
            && self.now_tick < self.vote_guard_until_tick
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let e = u64::from(self.cfg.election_tick);
        self.randomized_timeout = (e + self.rng.below(e)) as u32;
    }

    fn set_hard_state(&mut self, term: Term, vote: Option<NodeId>) {
        debug_assert!(term >= self.term, "term went backwards");
        self.term = term;
        self.vote = vote;
        self.hs_pending = true;
        self.ready.hard_state = Some(self.hard_state());
    }

    /// A same-term leader spoke: follow it. Returns false if we are that term's leader
    /// (impossible unless the protocol is broken; the simulator will say so).
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        true
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            self.abandon_leadership(leader);
        }
        if term > self.term {
            self.set_hard_state(term, None);
            self.matched = 0;
            self.acked = 0;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn abandon_leadership(&mut self, leader_hint: Option<NodeId>) {
        let lo = self.commit.max(self.log.base_index) + 1;
        for i in lo..=self.log.last_index() {
            let e = self.log.get(i).expect("in log");
            if e.kind == EntryKind::Normal && e.session != 0 {
                self.ready.replies.push(Reply::Abandoned {
                    session: e.session,
                    sequence: e.sequence,
                    leader_hint,
                });
            }
        }
        for r in self.reads.drain(..) {
            self.ready
                .replies
                .push(Reply::ReadFailed { id: r.id, error: Error::NotLeader { leader_hint } });
        }
        self.progress.clear();
        self.pending_sessions.clear();
        self.uncommitted_bytes = 0;
        self.pending_proposals = 0;
        self.transfer = None;
        self.need_broadcast = false;
        self.need_heartbeat = false;
    }

    fn start_campaign(&mut self, pre_vote: bool, transfer: bool) {
        let campaign_term = if pre_vote {
            self.role = Role::PreCandidate;
            self.term + 1
        } else {
            self.set_hard_state(self.term + 1, Some(self.id));
            self.role = Role::Candidate;
            self.matched = 0;
            self.acked = 0;
            self.term
        };
        self.leader = None;
        self.reset_election_timer();
        self.votes.clear();
        self.votes.push((self.id, true));
        let body = Body::RequestVote {
            pre_vote,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            priority: self.membership.priority(self.id).unwrap_or(0),
            transfer,
        };
        let voters: Vec<NodeId> =
            self.membership.voters.iter().map(|v| v.id).filter(|&v| v != self.id).collect();
        for v in voters {
            self.send_with_term(v, campaign_term, body.clone());
        }
        self.tally_and_act();
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
        priority: u8,
        transfer: bool,
    ) {
        let mine = (self.log.last_term(), self.log.last_index());
        let theirs = (last_term, last_index);
        let up_to_date = self.cfg.bugs.vote_without_log_check || theirs >= mine;
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        // Among equally up-to-date logs the higher priority wins: a voter of higher priority
        // that could campaign itself declines (unless this is a leader transfer).
        let my_priority = self.membership.priority(self.id).unwrap_or(0);
        let yields_priority = transfer || theirs != mine || priority >= my_priority;
        let granted = can_vote
            && up_to_date
            && yields_priority
            && !self.membership.is_learner(self.id)
            && !self.vote_guarded(transfer);
        if granted && !pre_vote {
            self.set_hard_state(self.term, Some(from));
            self.election_elapsed = 0;
        }
        let reply_term = if pre_vote && granted { term } else { self.term };
        self.send_with_term(from, reply_term, Body::VoteResponse { pre_vote, granted });
    }

    fn handle_vote_response(&mut self, from: NodeId, term: Term, pre_vote: bool, granted: bool) {
        let expected = match self.role {
            Role::PreCandidate if pre_vote => {
                if granted {
                    self.term + 1
                } else {
                    self.term
                }
            }
            Role::Candidate if !pre_vote => self.term,
            _ => return,
        };
        if term != expected || !self.membership.is_voter(from) {
            return;
        }
        if self.votes.iter().all(|(v, _)| *v != from) {
            self.votes.push((from, granted));
        }
        self.tally_and_act();
    }

    fn tally_and_act(&mut self) {
        let mut granted = 0;
        let mut rejected = 0;
        for v in &self.membership.voters {
            match self.votes.iter().find(|(id, _)| *id == v.id) {
                // Our own vote counts only once it is durable.
                Some((id, true)) if *id != self.id || self.role == Role::PreCandidate => {
                    granted += 1
                }
                Some((id, true)) if *id == self.id && !self.hs_pending => granted += 1,
                Some((_, false)) => rejected += 1,
                _ => {}
            }
        }
        let q = self.membership.quorum();
        if granted >= q {
            match self.role {
                Role::PreCandidate => self.start_campaign(false, false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if rejected >= q {
            self.become_follower(self.term, None);
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reset_election_timer();
        self.transfer = None;
        self.lease_revoked = false;
        self.leader_since_tick = self.now_tick;
        self.reads.clear();
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership
            .members()
            .filter(|&m| m != self.id)
            .map(|m| Progress::new(m, next, self.membership.is_voter(m)))
            .collect();
        // Account for the uncommitted tail inherited from earlier terms.
        self.uncommitted_bytes = 0;
        self.pending_proposals = 0;
        self.pending_sessions.clear();
        let lo = self.commit.max(self.log.base_index) + 1;
        let applied = self.sessions.applied_index();
        for i in lo..=self.log.last_index() {
            let e = self.log.get(i).expect("in log");
            self.uncommitted_bytes += e.size_bytes();
            if e.kind == EntryKind::Normal {
                self.pending_proposals += 1;
                if e.session != 0 && i > applied {
                    self.pending_sessions.insert(e.session, (e.sequence, i));
                }
            }
        }
        // Raft's rule: entries of earlier terms commit only under an entry of this term.
        self.append_local(EntryKind::Noop, 0, 0, Bytes::new());
        self.bcast_heartbeat();
    }

    // ---------------------------------------------------------------- log

    fn membership_at(&self, index: Index) -> Membership {
        self.config_log
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    fn set_membership(&mut self, m: Membership) {
        self.membership = m;
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let members: Vec<NodeId> = self.membership.members().collect();
            self.progress.retain(|p| members.contains(&p.id));
            for id in members {
                if id == self.id {
                    continue;
                }
                let voter = self.membership.is_voter(id);
                match self.progress.iter_mut().find(|p| p.id == id) {
                    Some(p) => p.is_voter = voter,
                    None => self.progress.push(Progress::new(id, next, voter)),
                }
            }
        }
    }

    /// Adds `entries` (already in the in-memory log) to the pending log write.
    fn push_write(&mut self, first_index: Index, entries: &[Entry]) {
        match &mut self.ready.entries {
            Some(w) if first_index >= w.first_index => {
                w.entries.truncate((first_index - w.first_index) as usize);
                w.entries.extend_from_slice(entries);
            }
            slot => {
                *slot = Some(LogWrite { first_index, entries: entries.to_vec() });
            }
        }
    }

    fn append_local(&mut self, kind: EntryKind, session: u64, sequence: u64, data: Bytes) -> Index {
        debug_assert_eq!(self.role, Role::Leader);
        let e = Entry {
            index: self.log.last_index() + 1,
            term: self.term,
            kind,
            session,
            sequence,
            data,
        };
        let index = e.index;
        self.uncommitted_bytes += e.size_bytes();
        if kind == EntryKind::Normal {
            self.pending_proposals += 1;
        }
        if kind == EntryKind::Config {
            let m = Membership::decode(&e.data).expect("we encoded it");
            self.config_log.push((index, m.clone()));
            self.set_membership(m);
        }
        // One entry at a time: extend the open batch in place (no new Vec per entry).
        match &mut self.ready.entries {
            Some(w) if w.first_index + w.entries.len() as Index == index => {
                w.entries.push(e.clone())
            }
            _ => self.push_write(index, std::slice::from_ref(&e)),
        }
        self.log.append(e);
        self.need_broadcast = true;
        index
    }

    fn handle_append(
        &mut self,
        mut prev_index: Index,
        mut prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        let msg_last = prev_index + entries.len() as Index;
        let mut skip = 0usize;
        if prev_index < self.log.base_index {
            // The trimmed prefix is committed: it matches every leader.
            skip = ((self.log.base_index - prev_index) as usize).min(entries.len());
            prev_index = self.log.base_index;
            prev_term = self.log.base_term;
            if msg_last <= self.log.base_index {
                self.matched = self.matched.max(msg_last);
                self.maybe_send_ack(true);
                return;
            }
        }
        if self.log.term(prev_index) != Some(prev_term) {
            let (hint_index, hint_term) = if prev_index > self.log.last_index() {
                (self.log.last_index() + 1, 0)
            } else {
                let t = self.log.term(prev_index).expect("in log");
                (self.log.first_index_of_term_at(prev_index, self.commit + 1), t)
            };
            let leader = self.leader.expect("set by accept_leader");
            self.send(
                leader,
                Body::AppendResponse {
                    success: false,
                    match_index: 0,
                    reject_index: prev_index,
                    hint_index,
                    hint_term,
                },
            );
            return;
        }
        let entries = &entries[skip..];
        let mut first_new = None;
        for (k, e) in entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    assert!(
                        e.index > self.commit || self.cfg.bugs.any(),
                        "node {}: leader overwrites committed index {} (commit {})",
                        self.id,
                        e.index,
                        self.commit
                    );
                    self.commit = self.commit.min(e.index - 1);
                    self.log.truncate_from(e.index);
                    self.config_log.retain(|(i, _)| *i < e.index);
                    let m = self.membership_at(e.index - 1);
                    self.set_membership(m);
                    first_new = Some(k);
                    break;
                }
                None => {
                    first_new = Some(k);
                    break;
                }
            }
        }
        if let Some(k) = first_new {
            let new = &entries[k..];
            for e in new {
                if e.kind == EntryKind::Config {
                    let m = Membership::decode(&e.data).expect("corrupt config entry from leader");
                    self.config_log.push((e.index, m.clone()));
                    self.set_membership(m);
                }
                self.log.append(e.clone());
            }
            self.push_write(new[0].index, new);
        }
        self.matched = self.matched.max(msg_last);
        let c = commit.min(self.matched);
        if c > self.commit {
            self.advance_commit(c);
        }
        let force = self.ack_limit() >= msg_last;
        self.maybe_send_ack(force);
        #[cfg(debug_assertions)]
        self.log.check();
    }

    fn snapshot_pending(&self) -> bool {
        self.ready.snapshot.is_some() || self.unstable.iter().any(|w| w.snapshot)
    }

    /// Highest index this follower may acknowledge: durable and known to match the leader.
    fn ack_limit(&self) -> Index {
        if self.snapshot_pending() {
            return 0;
        }
        let have =
            if self.cfg.bugs.ack_before_durable { self.log.last_index() } else { self.log.durable };
        have.min(self.matched)
    }

    fn maybe_send_ack(&mut self, force: bool) {
        if self.role != Role::Follower {
            return;
        }
        let Some(leader) = self.leader else { return };
        let a = self.ack_limit();
        if a > self.acked || (force && a > 0) {
            self.acked = self.acked.max(a);
            self.send(
                leader,
                Body::AppendResponse {
                    success: true,
                    match_index: a,
                    reject_index: 0,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
        }
    }

    fn handle_snapshot(&mut self, s: Snapshot) {
        if s.index <= self.commit || self.log.term(s.index) == Some(s.term) {
            // We already hold that prefix.
            self.matched = self.matched.max(s.index);
            if s.index > self.commit {
                self.advance_commit(s.index);
            }
            self.maybe_send_ack(true);
            return;
        }
        self.log.reset(s.index, s.term);
        self.commit = s.index;
        self.ready.commit_index = Some(s.index);
        self.sessions.reset(&s.sessions, s.sessions_applied);
        self.base_membership = s.membership.clone();
        self.config_log.clear();
        self.set_membership(s.membership.clone());
        self.matched = s.index;
        self.ready.entries = None;
        self.ready.snapshot = Some(s.clone());
        self.snapshot = s;
        // The acknowledgement goes out when the runtime reports the snapshot durable.
    }

    // ---------------------------------------------------------------- commit

    /// True if the commit index is at an entry of this node's current term. Until a new
    /// leader commits an entry of its own term, its commit index may be behind what an earlier
    /// leader committed (and acknowledged), so it must not answer reads from it.
    pub fn committed_in_term(&self) -> bool {
        self.log.term(self.commit) == Some(self.term)
    }

    fn maybe_commit(&mut self) {
        debug_assert_eq!(self.role, Role::Leader);
        self.scratch.clear();
        for v in &self.membership.voters {
            let m = if v.id == self.id {
                self.log.durable
            } else {
                self.progress.iter().find(|p| p.id == v.id).map_or(0, |p| p.match_index)
            };
            self.scratch.push(m);
        }
        if self.scratch.is_empty() {
            return;
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let q = self.scratch[self.membership.quorum() - 1];
        if q > self.commit
            && (self.cfg.bugs.commit_old_term_by_counting || self.log.term(q) == Some(self.term))
        {
            self.advance_commit(q);
        }
    }

    fn advance_commit(&mut self, c: Index) {
        debug_assert!(c > self.commit && c <= self.log.last_index());
        let lo = self.commit.max(self.log.base_index) + 1;
        self.commit = c;
        self.ready.commit_index = Some(c);
        let leader = self.role == Role::Leader;
        let mut config_committed = false;
        for i in lo..=c {
            let e = self.log.get(i).expect("committed entry in log");
            self.sessions.apply(e);
            if e.kind == EntryKind::Config {
                config_committed = true;
            }
            if leader {
                self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(e.size_bytes());
                if e.kind == EntryKind::Normal {
                    self.pending_proposals = self.pending_proposals.saturating_sub(1);
                    if e.session != 0 {
                        self.ready.replies.push(Reply::Committed {
                            session: e.session,
                            sequence: e.sequence,
                            index: e.index,
                            term: e.term,
                        });
                        if self.pending_sessions.get(&e.session) == Some(&(e.sequence, e.index)) {
                            self.pending_sessions.remove(&e.session);
                        }
                    }
                }
            }
        }
        if leader {
            // Followers learn the new commit index now rather than at the next heartbeat.
            self.need_broadcast = true;
            if config_committed && !self.membership.is_voter(self.id) {
                // Removed from the group: the change is committed, hand over.
                self.become_follower(self.term, None);
            }
        }
    }

    // ---------------------------------------------------------------- leader

    fn progress_pos(&self, id: NodeId) -> Option<usize> {
        self.progress.iter().position(|p| p.id == id)
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let mut active = usize::from(self.membership.is_voter(self.id));
                for p in &mut self.progress {
                    if p.is_voter && p.recent_active {
                        active += 1;
                    }
                    p.recent_active = false;
                }
                if active < self.membership.quorum() {
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        if let Some(t) = self.transfer
            && self.now_tick >= t.deadline_tick
        {
            self.transfer = None;
            self.transfer_cooldown_until_tick =
                self.now_tick + 2 * u64::from(self.cfg.election_tick);
        }
        for k in 0..self.progress.len() {
            let p = &mut self.progress[k];
            let stalled = p.fetching
                || match p.state {
                    ProgressState::Replicate => !p.inflights.is_empty(),
                    ProgressState::Probe => p.probe_sent,
                    ProgressState::Snapshot(_) => true,
                };
            if stalled {
                p.stall_ticks += 1;
                let limit = match p.state {
                    ProgressState::Snapshot(_) => 4 * self.cfg.resend_after_ticks,
                    _ => self.cfg.resend_after_ticks,
                };
                if p.stall_ticks >= limit {
                    p.become_probe();
                    self.send_append(k);
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
            self.maybe_transfer_to_priority();
        }
    }

    fn maybe_transfer_to_priority(&mut self) {
        let mine = self.membership.priority(self.id).unwrap_or(0);
        if !(self.cfg.transfer_to_higher_priority || mine == 0)
            || self.transfer.is_some()
            || self.now_tick < self.transfer_cooldown_until_tick
            || !self.committed_in_term()
        {
            return;
        }
        let last = self.log.last_index();
        let best = self
            .membership
            .voters
            .iter()
            .filter(|v| v.priority > mine)
            .filter(|v| {
                self.progress
                    .iter()
                    .any(|p| p.id == v.id && p.match_index == last && p.recent_active)
            })
            .max_by_key(|v| (v.priority, std::cmp::Reverse(v.id)))
            .map(|v| v.id);
        if let Some(to) = best {
            let _ = self.transfer_leader(to);
        }
    }

    /// Sends new entries to every follower; a follower that gets none but can learn a
    /// higher commit index gets a heartbeat carrying it (so followers apply promptly).
    fn bcast_append(&mut self) {
        for k in 0..self.progress.len() {
            self.send_append(k);
            let p = &self.progress[k];
            let commit = self.commit.min(p.match_index);
            if commit > p.commit_sent {
                let to = p.id;
                self.progress[k].commit_sent = commit;
                let (round, sent_tick, trimmed) = (self.hb_round, self.now_tick, self.trim_point());
                self.send(to, Body::Heartbeat { commit, round, sent_tick, trimmed });
            }
        }
    }

    /// The trim point a leader announces: its own trimmed prefix, or a higher point it learned
    /// as a follower and has not reached yet.
    fn trim_point(&self) -> Index {
        self.log.base_index.max(self.leader_trimmed)
    }

    fn bcast_heartbeat(&mut self) {
        self.hb_round += 1;
        let round = self.hb_round;
        for k in 0..self.progress.len() {
            let (to, commit) = {
                let p = &mut self.progress[k];
                let commit = self.commit.min(p.match_index);
                p.commit_sent = p.commit_sent.max(commit);
                (p.id, commit)
            };
            let trimmed = self.trim_point();
            self.send(to, Body::Heartbeat { commit, round, sent_tick: self.now_tick, trimmed });
        }
        self.check_reads();
    }

    /// Sends what follower `k` needs, as far as its state and window allow.
    fn send_append(&mut self, k: usize) {
        loop {
            let last = self.log.last_index();
            let p = &self.progress[k];
            if p.fetching {
                return; // waiting for entries from disk
            }
            match p.state {
                ProgressState::Snapshot(_) => return,
                ProgressState::Probe if p.probe_sent => return,
                ProgressState::Replicate
                    if p.window_full(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes) =>
                {
                    return;
                }
                _ => {}
            }
            let next = p.next_index;
            let to = p.id;
            if next <= self.log.base_index {
                let snapshot = self.snapshot.clone();
                debug_assert_eq!(snapshot.index, self.log.base_index);
                let p = &mut self.progress[k];
                p.state = ProgressState::Snapshot(snapshot.index);
                p.stall_ticks = 0;
                self.send(to, Body::InstallSnapshot { snapshot });
                return;
            }
            let probing = p.state == ProgressState::Probe;
            if next > last && (!probing || p.match_index >= last) {
                return;
            }
            if next < self.log.cache_start() {
                // Evicted: ask the runtime to read them from disk; `on_fetched` resumes.
                // A probe sends one batch; a follower in Replicate takes several per read.
                let max_bytes = if p.state == ProgressState::Replicate {
                    self.fetch_bytes()
                } else {
                    self.cfg.max_batch_bytes
                };
                let p = &mut self.progress[k];
                p.fetching = true;
                p.stall_ticks = 0;
                self.ready.fetches.push(Fetch {
                    lo: next,
                    hi: self.log.cache_start() - 1,
                    max_bytes,
                });
                return;
            }
            let entries = if next <= last {
                self.log.slice(next, last, self.cfg.max_batch_bytes)
            } else {
                Vec::new()
            };
            if !self.emit_append(k, next - 1, entries) {
                return;
            }
        }
    }

    /// Bytes of entries one read from disk asks for: a few batches, within half a follower's
    /// window, so that the appends made of it can be in flight while the next read runs.
    fn fetch_bytes(&self) -> u64 {
        let batch = self.cfg.max_batch_bytes;
        (4 * batch).min(self.cfg.max_inflight_bytes / 2).max(batch)
    }

    /// Sends `entries` after `prev_index` to follower `k` and records it in its progress.
    /// Returns true if more may be sent right away (pipelining in Replicate).
    fn emit_append(&mut self, k: usize, prev_index: Index, entries: Vec<Entry>) -> bool {
        let prev_term = self.log.term(prev_index).expect("prev in log");
        let n = entries.len() as Index;
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let commit = self.commit;
        let p = &mut self.progress[k];
        let probing = p.state == ProgressState::Probe;
        if probing {
            p.probe_sent = true;
            p.stall_ticks = 0;
        } else {
            p.next_index = prev_index + n + 1;
            p.inflights.push_back((prev_index + n, bytes));
            p.inflight_bytes += bytes;
        }
        p.commit_sent = p.commit_sent.max(commit.min(prev_index + n));
        let to = p.id;
        self.send(to, Body::Append { prev_index, prev_term, entries, commit });
        !probing
    }

    /// The runtime read entries starting at `lo` from its durable log, answering a
    /// [`Fetch`]. Entries that no longer match the log (trimmed, or a stale answer) are
    /// ignored; an empty answer makes the leader retry (or send a snapshot if trimmed).
    pub fn on_fetched(&mut self, lo: Index, entries: Vec<Entry>) {
        if self.role != Role::Leader {
            return;
        }
        // Keep the valid prefix: contiguous from `lo`, matching our terms.
        let mut valid = 0;
        for (i, e) in entries.iter().enumerate() {
            if e.index != lo + i as Index
                || e.index <= self.log.base_index
                || self.log.term(e.index) != Some(e.term)
            {
                break;
            }
            valid = i + 1;
        }
        let end = lo + valid as Index; // exclusive
        for k in 0..self.progress.len() {
            let p = &self.progress[k];
            if !p.fetching {
                continue;
            }
            let next = p.next_index;
            if next < lo || next > end {
                continue;
            }
            self.progress[k].fetching = false;
            // As many appends of what was read as the follower's window takes (a fetch reads
            // several batches, so a follower fed from disk is not held to one batch per read).
            let mut from = (next - lo) as usize;
            let mut open = true;
            while open && from < valid {
                let p = &self.progress[k];
                if p.state == ProgressState::Replicate
                    && p.window_full(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
                {
                    break;
                }
                let batch =
                    super::log::take_bytes(entries[from..valid].iter(), self.cfg.max_batch_bytes);
                let n = batch.len();
                let prev = lo + from as Index - 1;
                open = self.emit_append(k, prev, batch);
                from += n;
            }
            if !open {
                continue;
            }
            self.send_append(k);
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: Index,
        reject_index: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        let Some(k) = self.progress_pos(from) else {
            return;
        };
        self.progress[k].recent_active = true;
        if success {
            let news = self.progress[k].maybe_update(match_index);
            let p = &mut self.progress[k];
            match p.state {
                ProgressState::Probe => p.become_replicate(),
                ProgressState::Snapshot(i) if p.match_index >= i => p.become_replicate(),
                _ => {}
            }
            if news {
                self.maybe_commit();
                if self.role != Role::Leader {
                    return;
                }
                if self.transfer.is_some_and(|t| t.to == from)
                    && self.progress[k].match_index == self.log.last_index()
                {
                    self.send(from, Body::TimeoutNow);
                }
            }
            self.send_append(k);
        } else {
            if reject_index == 0 {
                return;
            }
            let p = &self.progress[k];
            let stale = match p.state {
                ProgressState::Replicate => reject_index <= p.match_index,
                ProgressState::Probe => reject_index + 1 != p.next_index,
                ProgressState::Snapshot(_) => true,
            };
            if stale {
                return;
            }
            let next = if hint_term > 0 {
                match self.log.last_index_of_term(hint_term, reject_index) {
                    Some(j) => j + 1,
                    None => hint_index,
                }
            } else {
                hint_index
            };
            let p = &mut self.progress[k];
            p.next_index = next.min(reject_index).max(p.match_index + 1);
            p.become_probe();
            self.send_append(k);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, round: u64, sent_tick: u64) {
        let Some(k) = self.progress_pos(from) else {
            return;
        };
        let last = self.log.last_index();
        let p = &mut self.progress[k];
        p.recent_active = true;
        p.acked_round = p.acked_round.max(round);
        p.acked_sent_tick = p.acked_sent_tick.max(sent_tick);
        if p.match_index < last {
            p.probe_sent = false;
            self.send_append(k);
        }
        self.check_reads();
    }

    fn check_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        self.scratch.clear();
        for v in &self.membership.voters {
            let r = if v.id == self.id {
                self.hb_round
            } else {
                self.progress.iter().find(|p| p.id == v.id).map_or(0, |p| p.acked_round)
            };
            self.scratch.push(r);
        }
        if self.scratch.is_empty() {
            return;
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = self.scratch[self.membership.quorum() - 1];
        while let Some(r) = self.reads.front() {
            if r.round > confirmed {
                break;
            }
            self.ready.replies.push(Reply::ReadReady { id: r.id, index: r.index });
            self.reads.pop_front();
        }
    }

    // ---------------------------------------------------------------- output

    fn send(&mut self, to: NodeId, body: Body) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: Body) {
        let m = Message { from: self.id, to, term, body };
        if self.hs_pending {
            if self.held.len() >= self.cfg.max_held_messages {
                self.held.pop_front();
            }
            self.held.push_back(m);
        } else {
            self.ready.messages.push(m);
        }
    }
}
