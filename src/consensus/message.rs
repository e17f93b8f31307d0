//! Messages between replicas, inputs' replies to clients, and the snapshot.
//!
//! Every message carries the sender's term; a message from a higher term moves the receiver
//! to that term first (see `Node::step`).

use bytes::Bytes;

use super::error::Error;
use super::membership::Membership;
use super::session::SessionRecord;
use super::types::{Entry, Index, NodeId, Term};

/// A message between two replicas of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's term (for a PreVote request: the term it would campaign in).
    pub term: Term,
    /// What it says.
    pub body: Body,
}

/// The kinds of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A (pre-)vote request.
    RequestVote {
        /// PreVote round: the receiver answers without changing its term or vote.
        pre_vote: bool,
        /// The candidate's last log index.
        last_index: Index,
        /// The term of that entry.
        last_term: Term,
        /// The candidate's election priority.
        priority: u8,
        /// Sent because of a leader transfer: receivers ignore their leader lease.
        transfer: bool,
    },
    /// Answer to `RequestVote`.
    VoteResponse { pre_vote: bool, granted: bool },
    /// Entries after `(prev_index, prev_term)`, and the leader's commit index.
    Append { prev_index: Index, prev_term: Term, entries: Vec<Entry>, commit: Index },
    /// Answer to `Append` (or `InstallSnapshot`). On success, `match_index` is the highest
    /// index the follower holds *durably* and knows to match the leader's log. On rejection,
    /// `reject_index` is the rejected `prev_index` and `(hint_index, hint_term)` let the leader
    /// skip a whole term of conflicting entries at once (`hint_term` 0: the follower's log is
    /// shorter and ends at `hint_index - 1`).
    AppendResponse {
        success: bool,
        match_index: Index,
        reject_index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// Leader liveness, commit index and a round number for ReadIndex and the lease;
    /// `trimmed` is the leader's trim point (the application checkpointed up to it): a
    /// follower trims its own prefix up to it once it has committed that far.
    Heartbeat { commit: Index, round: u64, sent_tick: u64, trimmed: Index },
    /// Echo of a heartbeat's round and send tick.
    HeartbeatResponse { round: u64, sent_tick: u64 },
    /// The leader's log restarts after this snapshot.
    InstallSnapshot { snapshot: Snapshot },
    /// Leader transfer: campaign now, ignoring election timeouts and leases.
    TimeoutNow,
}

/// The state a log restarts from after its prefix was trimmed: the position, the
/// membership and the session table at that point, and an opaque application blob provided by
/// the runtime when it trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Last index covered.
    pub index: Index,
    /// Its term.
    pub term: Term,
    /// Membership as of `index`.
    pub membership: Membership,
    /// Session records (as of `sessions_applied`, which is `>= index`).
    pub sessions: Vec<SessionRecord>,
    /// Index the session table had applied when the snapshot was taken.
    pub sessions_applied: Index,
    /// Application state, opaque to the core.
    pub blob: Bytes,
}

/// An answer for a client, produced when the outcome is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The proposal `(session, sequence)` is committed at `(index, term)`. Emitted by the
    /// leader for every normal entry it commits (also ones appended by earlier leaders), so
    /// a client that retried to the new leader is answered; the runtime drops replies that
    /// no connected client waits for.
    Committed { session: u64, sequence: u64, index: Index, term: Term },
    /// The leader lost leadership with this proposal uncommitted: the outcome is unknown and
    /// the client should retry with the same session and sequence at `leader_hint`.
    Abandoned { session: u64, sequence: u64, leader_hint: Option<NodeId> },
    /// Read `id` may be served once the state has applied up to `index` (linearizable).
    ReadReady { id: u64, index: Index },
    /// Read `id` failed (leadership lost before its quorum round completed).
    ReadFailed { id: u64, error: Error },
}
