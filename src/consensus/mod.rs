//! The pure consensus core: Raft, with the engineering of the database Paxos libraries.
//!
//! A [`Node`] is a deterministic state machine. It has no clock (the runtime calls
//! [`Node::tick`]), does no I/O (it asks for writes and sends through [`Ready`]), spawns no
//! threads and draws randomness only from the seed it was built with. The same code runs
//! under the real runtime (an executor per core) and under the simulator
//! ([`crate::sim`]), which is why every source of nondeterminism is an input.
//!
//! # Inputs
//!
//! | call | when |
//! |---|---|
//! | [`Node::step`] | a message from a peer arrived |
//! | [`Node::tick`] | the runtime's timer fired (fixed period; all timeouts are in ticks) |
//! | [`Node::propose`] | a client append; returns the position or a typed [`Error`] |
//! | [`Node::read_index`], [`Node::lease_read`] | a linearizable read of the commit point |
//! | [`Node::on_entries_durable`] | a log write ending at `(index, term)` is on stable storage |
//! | [`Node::on_hard_state_durable`] | the term and vote handed out are on stable storage |
//! | [`Node::on_fetched`] | entries read from disk in answer to a [`Fetch`] |
//! | [`Node::change_membership`], [`Node::transfer_leader`], [`Node::trim`] | admin |
//! | [`Node::status`] | leader, term, commit, members, per-follower progress |
//!
//! # Outputs and the order the runtime must respect
//!
//! After any input (or a batch of inputs: many proposals between two calls form one batch),
//! the runtime calls [`Node::take_ready`] and executes the [`Ready`]:
//!
//! 1. **Writes**, issued in this order and made durable in this order: `snapshot` (replace the
//!    log), then `entries` (truncate from `first_index`, then append: one batch frame), then
//!    `hard_state`. They may be in flight while other inputs are processed, and the entries
//!    write goes to disk *in parallel* with the messages that replicate it. When a write is
//!    durable, report it: `on_entries_durable(last.index, last.term)` (or the snapshot's
//!    index and term), `on_hard_state_durable(hs)`. Reporting a later write implies the
//!    earlier ones (a group commit may report only its last write).
//! 2. **Messages**: send them now, best effort, in order per peer. The core has already held
//!    back every message that depends on a term or vote not yet durable (they are released
//!    by `on_hard_state_durable`), and a follower acknowledges only entries that are durable,
//!    so the runtime needs no ordering of its own between writes and sends.
//! 3. **Commit index and replies**: entries up to `commit_index` may be applied (read them
//!    from the log, or from [`Node::entry`] until the next `take_ready`); replies go to the
//!    clients waiting on them.
//! 4. **Fetches**: read each range from the durable log (asynchronously) and hand the entries
//!    to [`Node::on_fetched`]; they go to a follower that lags behind the entry cache.
//! 5. **Trim** (followers): the leader's log is trimmed up to `trim` (its heartbeats carry its
//!    trim point) and this node has committed that far. Trimming is the application's call
//!    on the leader; a follower follows it so its disk does not keep what the group no longer
//!    needs. The runtime may call [`Node::trim`] at that point and drop the prefix as for a
//!    local trim, or let it pass (the node runtime waits until a whole segment would go); a
//!    higher point is offered again.
//!
//! # The runtime loop, in miniature
//!
//! A one-member group, with "persisting" reduced to reporting the write durable at once:
//!
//! ```
//! use bytes::Bytes;
//! use corelog::consensus::{Config, Membership, Node, Reply, Role};
//!
//! let mut node = Node::new(1, Config::default(), Membership::with_voters(&[(1, 1)]), 42);
//! node.campaign();
//! let mut replies = Vec::new();
//! for round in 0..4 {
//!     if round == 2 {
//!         assert_eq!(node.role(), Role::Leader);
//!         node.propose(7, 1, Bytes::from_static(b"hello")).unwrap();
//!     }
//!     let rd = node.take_ready();
//!     // 1. writes: snapshot, entries, hard state, in this order; report them when durable.
//!     if let Some(hs) = rd.hard_state {
//!         node.on_hard_state_durable(hs);
//!     }
//!     if let Some(w) = &rd.entries {
//!         let last = w.entries.last().unwrap();
//!         node.on_entries_durable(last.index, last.term);
//!     }
//!     // 2. messages: send `rd.messages` to their peers (none here).
//!     // 3. apply up to `rd.commit_index`, answer `rd.replies`; 4. serve `rd.fetches`.
//!     replies.extend(rd.replies);
//! }
//! assert!(replies.contains(&Reply::Committed { session: 7, sequence: 1, index: 2, term: 1 }));
//! ```
//!
//! # What the protocol guarantees, and how
//!
//! - Election: randomized timeouts in `[election_tick, 2 * election_tick)`; PreVote;
//!   CheckQuorum (a leader steps down when a majority has been silent for an election
//!   timeout; a follower that heard from its leader within one ignores vote requests);
//!   priority among equally up-to-date candidates; leader transfer by `TimeoutNow`, also
//!   automatic towards a caught-up voter of higher priority. Learners never campaign and
//!   never vote; priority 0 voters (loggers) vote and campaign only as a last resort, after
//!   three election timeouts without a leader, and then hand over at once.
//! - Replication: per-follower progress (probe, replicate, snapshot); pipelined appends
//!   bounded by `max_inflight_msgs` and `max_inflight_bytes`; proposals batched per
//!   `take_ready`; fast back-off with `(hint_index, hint_term)`; heartbeats carry the commit.
//! - Durability: the commit index is the quorum-th highest *durable* index among voters, the
//!   leader's own durable index included the moment its flush completes. Only an entry of the
//!   leader's term is committed by counting; earlier ones commit under it (Raft §5.4.2).
//! - Reads: ReadIndex (a heartbeat round confirms leadership) and lease reads. The lease
//!   lasts `election_tick - lease_margin_ticks` ticks from the send tick of the heartbeat a
//!   quorum acknowledged; it is sound because followers refuse votes for `election_tick`
//!   ticks after hearing from the leader (and for `election_tick` ticks after a restart),
//!   and it is revoked for the rest of the term once a transfer starts.
//! - Membership: one change at a time, effective on append, only after the leader committed
//!   an entry of its term (see [`membership`]).
//! - Exactly once: see [`session`].
//! - Bounds: uncommitted bytes, pending proposals and reads, in-flight window, held
//!   messages; a bound that is hit is an [`Error::Busy`] naming it, or a paused follower.
//!
//! # Memory
//!
//! Everything the core holds is bounded by configuration: term runs for the whole log (one
//! pair per leader change), a cache of recent entries (`max_cache_bytes`, plus the
//! uncommitted tail, itself bounded by `max_uncommitted_bytes` at the leader), the in-flight
//! window per follower, the pending reads and proposals, the held messages and the session
//! table (`max_sessions`). Entries evicted from the cache are read back through
//! [`Ready::fetches`] when a lagging follower needs them; entries trimmed away
//! ([`Node::trim`]) are replaced by a snapshot. Two exceptions, documented where they live:
//! at restart the runtime hands the whole recovered tail (`RestartState::entries`) to the
//! core, which caches it until it is committed again; and `Ready` grows until the runtime
//! takes it.

mod config;
mod error;
mod log;
pub mod membership;
mod message;
mod node;
mod progress;
pub mod rand;
pub mod session;
mod types;

pub use config::{Config, ConfigError, ProtocolBugs};
pub use error::{Bound, Error};
pub use membership::{ConfChange, Membership, MembershipError, Voter};
pub use message::{Body, Message, Reply, Snapshot};
pub use node::{
    Fetch, FollowerStatus, LogWrite, Node, Proposed, Ready, RestartState, Role, Status,
};
pub use progress::ProgressState;
pub use session::{SessionRecord, SessionTable};
pub use types::{ENTRY_OVERHEAD_BYTES, Entry, EntryKind, HardState, Index, NodeId, Term};
