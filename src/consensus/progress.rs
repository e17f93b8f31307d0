//! The leader's view of one follower: how far its durable log matches, what to send next,
//! and the window of messages in flight (after raft-rs's `tracker`, reimplemented).
//!
//! States: `Probe` sends one message at a time until the follower's match point is found;
//! `Replicate` streams entries optimistically, bounded by the in-flight window (messages and
//! bytes); `Snapshot` waits for a snapshot to be installed. Invariant:
//! `match_index < next_index`, and in `Replicate` every in-flight entry is in
//! `(match_index, next_index)`.

use std::collections::VecDeque;

use super::types::{Index, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    /// Waiting for the snapshot at this index to be acknowledged.
    Snapshot(Index),
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub id: NodeId,
    /// Highest index the follower reported durable and matching (0: unknown).
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// In `Probe`: a probe is out and unanswered; wait for an answer or a heartbeat reply.
    pub probe_sent: bool,
    /// `(last index, bytes)` of each Append in flight, oldest first.
    pub inflights: VecDeque<(Index, u64)>,
    pub inflight_bytes: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Ticks with messages in flight and no progress (for resending after loss).
    pub stall_ticks: u32,
    /// Highest heartbeat round acknowledged in this term (ReadIndex).
    pub acked_round: u64,
    /// Leader tick at which the latest acknowledged heartbeat was sent (lease).
    pub acked_sent_tick: u64,
    pub is_voter: bool,
    /// A read of evicted entries from disk is outstanding for this follower.
    pub fetching: bool,
    /// Highest commit index sent to the follower (so a commit advance is announced once).
    pub commit_sent: Index,
}

impl Progress {
    pub fn new(id: NodeId, next_index: Index, is_voter: bool) -> Self {
        Self {
            id,
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            stall_ticks: 0,
            acked_round: 0,
            acked_sent_tick: 0,
            is_voter,
            commit_sent: 0,
            fetching: false,
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.fetching = false;
        self.probe_sent = false;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.inflights.clear();
        self.inflight_bytes = 0;
        self.stall_ticks = 0;
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.fetching = false;
        self.probe_sent = false;
        self.next_index = self.match_index + 1;
        self.inflights.clear();
        self.inflight_bytes = 0;
        self.stall_ticks = 0;
    }

    /// The window is full: no more Appends until acknowledgements free it.
    pub fn window_full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.inflights.len() >= max_msgs || self.inflight_bytes >= max_bytes
    }

    /// Frees the window up to `index` (acknowledged durable).
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.inflights.front() {
            if last > index {
                break;
            }
            self.inflight_bytes -= bytes;
            self.inflights.pop_front();
        }
    }

    /// Records an acknowledgement of `index`; true if it was news.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.stall_ticks = 0;
            self.free_to(index);
        }
        self.next_index = self.next_index.max(index + 1);
        news
    }
}
