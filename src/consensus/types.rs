//! Log entries, hard state and the small vocabulary shared by the whole core.

use bytes::Bytes;

/// Identifies a replica of the group. `0` is reserved (it means "nobody").
pub type NodeId = u64;
/// Position of an entry in the log. The first entry has index 1; index 0 is the empty prefix.
pub type Index = u64;
/// A Raft term (a ballot / epoch). Term 0 is the term of the empty prefix.
pub type Term = u64;

/// Accounting overhead charged per entry on top of its payload when a bound is counted in
/// bytes: the fixed fields (index, term, kind, session, sequence) as they appear in a frame.
pub const ENTRY_OVERHEAD_BYTES: u64 = 33;

/// What an entry is. The codes are the per-entry kind byte of the on-disk/wire frame.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client proposal; `data` is opaque to the core.
    Normal = 0,
    /// Appended by a new leader so that an entry of its own term can be committed by counting.
    Noop = 1,
    /// A membership change; `data` is an encoded [`crate::consensus::Membership`].
    Config = 2,
}

impl EntryKind {
    /// Decodes the frame's kind byte; `None` for an unknown code (corruption or a newer peer).
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Normal),
            1 => Some(Self::Noop),
            2 => Some(Self::Config),
            _ => None,
        }
    }

    /// The frame's kind byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// One log entry. Cloning is cheap: `data` is a refcounted slice, typically of the frame
/// buffer the entry arrived in, so the payload is never copied by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log.
    pub index: Index,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Normal, Noop or Config.
    pub kind: EntryKind,
    /// Client session for exactly-once (0: no session, never deduplicated).
    pub session: u64,
    /// Sequence number of the proposal within its session (starts at 1).
    pub sequence: u64,
    /// The payload.
    pub data: Bytes,
}

impl Entry {
    /// Bytes charged to the byte bounds (payload plus fixed overhead).
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// The state that must be on stable storage before any message that depends on it is sent:
/// the current term and the vote cast in it. (The commit index is not persisted: it is
/// recovered from the leader; the trimmed prefix is committed by definition.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// The candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
}
