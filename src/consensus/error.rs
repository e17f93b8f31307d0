//! Operational errors returned to the caller. Broken invariants are not errors: they panic.

use super::membership::MembershipError;
use super::types::NodeId;

/// Which bound turned a request away (backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `max_uncommitted_bytes`.
    UncommittedBytes,
    /// `max_pending_proposals`.
    PendingProposals,
    /// `max_pending_reads`.
    PendingReads,
    /// A leader transfer is in progress; proposals wait for the new leader.
    LeaderTransfer,
    /// An earlier membership change is not committed yet.
    ConfigChangePending,
    /// The leader has not yet committed an entry of its term (reads and membership changes
    /// must wait for that, see Raft §6.4 and §4.1).
    LeaderNotReady,
}

/// Why a proposal, read or membership change was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader accepts this; `leader_hint` is the leader this node knows of.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// A bound is reached; retry later.
    #[error("busy: {bound:?}")]
    Busy { bound: Bound },
    /// The session already committed a later sequence.
    #[error("stale sequence {sequence} for session {session} (latest {latest})")]
    StaleSequence { session: u64, sequence: u64, latest: u64 },
    /// The payload exceeds `max_entry_bytes`.
    #[error("entry of {bytes} bytes exceeds the maximum of {max_bytes}")]
    TooLarge { bytes: u64, max_bytes: u64 },
    /// The membership change is invalid.
    #[error("membership change rejected: {0}")]
    Membership(#[from] MembershipError),
    /// A lease read was asked for but the lease is not valid now; use ReadIndex.
    #[error("no valid leader lease")]
    NoLease,
    /// The leader transfer target is not a voter.
    #[error("cannot transfer leadership to {0}")]
    BadTransferTarget(NodeId),
}
