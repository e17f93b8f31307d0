//! The client protocol: requests and responses in the wire envelope ([`crate::wire`]).
//!
//! A request's envelope carries the group and a request id chosen by the client; its meta is a
//! [`RequestMeta`]. The response carries the same id (responses may come in any order; many
//! requests may be in flight on one connection) and a [`ResponseMeta`].
//!
//! | op | request | response payload |
//! |---|---|---|
//! | `Append` | one frame of entries (each with its session and sequence; the frame's own checksum covers them end to end) | `(index u64, term u64)` per entry |
//! | `Read` | `a` = first index, `b` = last index, `c` = byte budget; flag [`READ_LOCAL`] | committed frames; `a` = commit index |
//! | `Status` | - | JSON text |
//! | `Trim` | `a` = index | - |
//! | `Tail` | `a` = first index, `c` = byte budget per response | a stream of responses (see below) |
//! | `Member` | `a` = [`MemberChange`] code, `b` = node id, `c` = priority | `a` = index, `b` = term of the config entry |
//!
//! `Tail` is answered by many responses with the request's id, until the connection closes:
//! each carries committed frames (`a` = the node's commit index, `b` = the last index the
//! response covers; entries outside `first..=b` in its frames are to be skipped), or none when
//! the tail is idle (a keepalive, every half second). It ends with [`Status::Trimmed`] (`a` =
//! the first index the node holds) if the position is before the node's log. Any replica
//! serves a tail with what it knows committed.
//!
//! `Member` proposes a membership change at the leader and is answered once the change is in
//! the leader's log, with its index; it takes effect when that index commits (see the client's
//! `change_membership`, which waits for that).
//! A request at a node that is not the leader gets [`Status::NotLeader`] with the leader's id
//! and its client address (text payload) when known.
//!
//! A `Read` is answered by the leader, and only once it has committed an entry of its own term
//! (before that a new leader's commit index may be behind what was acknowledged) and while its
//! lease holds (else it may have been replaced without knowing); otherwise [`Status::Busy`].
//! What a client reads then includes every entry acknowledged before it asked. With
//! [`READ_LOCAL`] any replica answers from what it holds and knows committed.

use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Request operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Append entries.
    Append = 1,
    /// Read committed entries.
    Read = 2,
    /// The group's status.
    Status = 3,
    /// Trim the prefix.
    Trim = 4,
    /// Stream committed entries from a position.
    Tail = 5,
    /// Change the membership.
    Member = 6,
}

impl Op {
    /// The op for a code.
    pub fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            1 => Op::Append,
            2 => Op::Read,
            3 => Op::Status,
            4 => Op::Trim,
            5 => Op::Tail,
            6 => Op::Member,
            _ => return None,
        })
    }
}

/// Outcome codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Ask the leader (`leader` in the meta, its client address in the payload).
    NotLeader = 1,
    /// A bound was reached; retry later.
    Busy = 2,
    /// The request is malformed (the payload says why).
    BadRequest = 3,
    /// No such group.
    UnknownGroup = 4,
    /// The group lives on another core: connect to the port in `a`.
    WrongCore = 5,
    /// Larger than allowed.
    TooLarge = 6,
    /// The node failed (I/O); the payload says why.
    Failed = 7,
    /// The session already committed a later sequence.
    StaleSequence = 8,
    /// The outcome is unknown (leadership changed before commit): retry with the same
    /// session and sequence.
    Retry = 9,
    /// The position asked for is before the node's log (trimmed): `a` is its first index.
    Trimmed = 10,
    /// The leader's disk has no room for the entries (the payload says why): this attempt
    /// added none of them (any that an earlier attempt with the same session and sequence
    /// added still commit, and a request made only of such is never refused). Trimming the
    /// log (a checkpoint) or freeing space ends it: the node takes appends again by itself.
    NoSpace = 11,
}

impl Status {
    /// The status for a code.
    pub fn from_code(c: u8) -> Option<Status> {
        Some(match c {
            0 => Status::Ok,
            1 => Status::NotLeader,
            2 => Status::Busy,
            3 => Status::BadRequest,
            4 => Status::UnknownGroup,
            5 => Status::WrongCore,
            6 => Status::TooLarge,
            7 => Status::Failed,
            8 => Status::StaleSequence,
            9 => Status::Retry,
            10 => Status::Trimmed,
            11 => Status::NoSpace,
            _ => return None,
        })
    }
}

/// `Read` flag: answer from this node's own log and commit index (a follower's view may be
/// behind), instead of only at a leader that knows the commit index.
pub const READ_LOCAL: u8 = 1;

/// Meta of a request.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RequestMeta {
    /// [`Op`] code.
    pub op: u8,
    /// Flags of the op ([`READ_LOCAL`]); zero for ops that have none.
    pub flags: u8,
    /// Reserved.
    pub reserved: [u8; 6],
    /// Operands (see the module docs).
    pub a: U64,
    /// Operands.
    pub b: U64,
    /// Operands.
    pub c: U64,
}

impl RequestMeta {
    /// A request meta.
    pub fn new(op: Op, a: u64, b: u64, c: u64) -> Self {
        RequestMeta {
            op: op as u8,
            flags: 0,
            reserved: [0; 6],
            a: U64::new(a),
            b: U64::new(b),
            c: U64::new(c),
        }
    }
}

/// Meta of a response.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ResponseMeta {
    /// [`Status`] code.
    pub status: u8,
    /// Reserved.
    pub reserved: [u8; 7],
    /// The leader this node knows of (0: none).
    pub leader: U64,
    /// Results (see the module docs).
    pub a: U64,
    /// Results.
    pub b: U64,
}

impl ResponseMeta {
    /// A response meta.
    pub fn new(status: Status, leader: u64, a: u64, b: u64) -> Self {
        ResponseMeta {
            status: status as u8,
            reserved: [0; 7],
            leader: U64::new(leader),
            a: U64::new(a),
            b: U64::new(b),
        }
    }
}

/// The membership changes of [`Op::Member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberChange {
    /// Add a learner (receives the log, does not vote).
    AddLearner = 1,
    /// Turn a learner into a voter.
    Promote = 2,
    /// Remove a voter or a learner.
    Remove = 3,
    /// Add a voter directly.
    AddVoter = 4,
}

impl MemberChange {
    /// The change for a code.
    pub fn from_code(c: u64) -> Option<MemberChange> {
        Some(match c {
            1 => MemberChange::AddLearner,
            2 => MemberChange::Promote,
            3 => MemberChange::Remove,
            4 => MemberChange::AddVoter,
            _ => return None,
        })
    }
}
