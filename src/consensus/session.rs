//! The replicated session table: exactly-once proposals.
//!
//! Every `Normal` entry carries `(session, sequence)`. The table maps a session to the last
//! sequence committed for it and the position of that entry. It is a pure function of the
//! committed log (every replica applies the same entries in the same order with the same
//! rules), so every replica agrees on it and a new leader can answer a retry without asking
//! anyone. A leader consults it (plus the uncommitted tail of its own log) before appending:
//! a retry of a proposal that is already in the log gets the original position back instead of
//! a second copy.
//!
//! Expiry is by log position, not by time (there is no clock in the core): a session that has
//! not committed an entry in the last `expiry_entries` log positions is dropped, checked every
//! [`EXPIRY_SWEEP_EVERY`] indexes; when the table is full, the session least recently active (by
//! index, ties broken by id) is evicted. Both rules depend only on the log, so all replicas
//! expire the same sessions at the same index. A client that retries after its session
//! expired is no longer deduplicated; clients must keep sessions active or register anew.
//!
//! The session is applied at most once per index (`applied_index` makes re-application after
//! a restart from a snapshot idempotent).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::types::{Entry, EntryKind, Index, Term};

/// Hasher for the `u64` session ids: one multiply and a fold, keyed by a per-node random
/// multiplier so that ids chosen by clients cannot be aimed at one bucket without knowing it.
/// SipHash (the std default) cost about a third of the per-proposal CPU of the core.
#[derive(Debug, Clone, Copy)]
pub struct SessionHasherBuilder {
    key: u64,
}

impl SessionHasherBuilder {
    /// A hasher keyed by `key` (made odd).
    pub fn new(key: u64) -> Self {
        Self { key: key | 1 }
    }

    /// A hasher keyed by a random key (from the standard library's per-process randomness),
    /// for maps keyed by ids that clients choose (sessions, request ids) outside the
    /// deterministic core.
    pub fn random() -> Self {
        use std::hash::BuildHasher as _;
        Self::new(std::collections::hash_map::RandomState::new().hash_one(0x5E55_u64))
    }
}

impl BuildHasher for SessionHasherBuilder {
    type Hasher = SessionHasher;
    fn build_hasher(&self) -> SessionHasher {
        SessionHasher { key: self.key, state: 0 }
    }
}

/// See [`SessionHasherBuilder`].
#[derive(Debug, Clone, Copy)]
pub struct SessionHasher {
    key: u64,
    state: u64,
}

impl Hasher for SessionHasher {
    fn finish(&self) -> u64 {
        self.state ^ (self.state >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.state = (self.state ^ x).wrapping_mul(self.key).rotate_left(31);
    }
}

/// A map keyed by session id.
pub type SessionMap<V> = HashMap<u64, V, SessionHasherBuilder>;

/// The table is swept for expired sessions when the applied index is a multiple of this.
pub const EXPIRY_SWEEP_EVERY: Index = 256;

/// The last committed proposal of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session.
    pub session: u64,
    /// Highest sequence committed for the session.
    pub sequence: u64,
    /// Where that proposal was committed.
    pub index: Index,
    /// Its term.
    pub term: Term,
}

/// What the table knows about a `(session, sequence)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not seen: append it.
    New,
    /// Already committed at this position: answer with it.
    Committed { index: Index, term: Term },
    /// Older than the session's latest committed sequence: the client has moved on.
    Stale { latest: u64 },
}

/// The session table (see the module docs). Bounded by `max_sessions`.
#[derive(Debug, Clone)]
pub struct SessionTable {
    records: SessionMap<SessionRecord>,
    /// Every committed entry with index `<= applied_index` has been applied.
    applied_index: Index,
    max_sessions: usize,
    expiry_entries: u64,
}

impl SessionTable {
    /// An empty table.
    pub fn new(max_sessions: usize, expiry_entries: u64) -> Self {
        assert!(max_sessions > 0, "max_sessions must be positive");
        Self {
            records: HashMap::with_capacity_and_hasher(
                max_sessions.min(4096),
                SessionHasherBuilder::new(0x9E37_79B9_7F4A_7C15),
            ),
            applied_index: 0,
            max_sessions,
            expiry_entries,
        }
    }

    /// A table restored from a snapshot.
    pub fn restore(
        records: &[SessionRecord],
        applied_index: Index,
        max_sessions: usize,
        expiry_entries: u64,
    ) -> Self {
        let mut t = Self::new(max_sessions, expiry_entries);
        t.applied_index = applied_index;
        for r in records {
            t.records.insert(r.session, *r);
        }
        t
    }

    /// Highest index applied.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// The records, sorted by session (for snapshots; deterministic order).
    pub fn records(&self) -> Vec<SessionRecord> {
        let mut v: Vec<SessionRecord> = self.records.values().copied().collect();
        v.sort_unstable_by_key(|r| r.session);
        v
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if no session is live.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// What is known about `(session, sequence)` in the committed log.
    pub fn lookup(&self, session: u64, sequence: u64) -> Lookup {
        match self.records.get(&session) {
            Some(r) if r.sequence == sequence => Lookup::Committed { index: r.index, term: r.term },
            Some(r) if r.sequence > sequence => Lookup::Stale { latest: r.sequence },
            _ => Lookup::New,
        }
    }

    /// Applies one committed entry (in index order). Returns false if the entry is a
    /// duplicate of an already committed proposal (the leader's check should prevent that; the
    /// apply layer treats such an entry as a no-op).
    pub fn apply(&mut self, e: &Entry) -> bool {
        if e.index <= self.applied_index {
            return true;
        }
        debug_assert_eq!(e.index, self.applied_index + 1, "session table skipped an index");
        self.applied_index = e.index;
        let mut fresh = true;
        if e.kind == EntryKind::Normal && e.session != 0 {
            match self.records.get_mut(&e.session) {
                Some(r) if r.sequence >= e.sequence => fresh = false,
                Some(r) => {
                    r.sequence = e.sequence;
                    r.index = e.index;
                    r.term = e.term;
                }
                None => {
                    if self.records.len() >= self.max_sessions {
                        self.evict_least_recent();
                    }
                    self.records.insert(
                        e.session,
                        SessionRecord {
                            session: e.session,
                            sequence: e.sequence,
                            index: e.index,
                            term: e.term,
                        },
                    );
                }
            }
        }
        if e.index.is_multiple_of(EXPIRY_SWEEP_EVERY) {
            let horizon = e.index.saturating_sub(self.expiry_entries);
            self.records.retain(|_, r| r.index > horizon);
        }
        fresh
    }

    /// Jumps to a snapshot's table.
    pub fn reset(&mut self, records: &[SessionRecord], applied_index: Index) {
        self.records.clear();
        for r in records {
            self.records.insert(r.session, *r);
        }
        self.applied_index = applied_index;
    }

    fn evict_least_recent(&mut self) {
        let victim = self.records.values().min_by_key(|r| (r.index, r.session)).map(|r| r.session);
        if let Some(s) = victim {
            self.records.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: Index, session: u64, sequence: u64) -> Entry {
        Entry { index, term: 1, kind: EntryKind::Normal, session, sequence, data: Bytes::new() }
    }

    #[test]
    fn dedupes_and_expires_identically() {
        let mut t = SessionTable::new(2, 300);
        assert!(t.apply(&e(1, 7, 1)));
        assert_eq!(t.lookup(7, 1), Lookup::Committed { index: 1, term: 1 });
        assert_eq!(t.lookup(7, 2), Lookup::New);
        assert!(t.apply(&e(2, 7, 2)));
        assert_eq!(t.lookup(7, 1), Lookup::Stale { latest: 2 });
        assert!(!t.apply(&e(3, 7, 2)), "duplicate must be reported");
        assert!(t.apply(&e(4, 8, 1)));
        assert!(t.apply(&e(5, 9, 1)), "full table evicts the least recent");
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(7, 2), Lookup::New, "session 7 was evicted");
        for i in 6..=512 {
            t.apply(&e(i, 0, 0));
        }
        assert!(t.is_empty(), "sessions idle for 300 entries expire at the sweep");
    }
}
