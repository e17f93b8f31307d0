//! The in-memory view of the replicated log held by the core: term runs for every entry, and
//! a bounded cache of the entries themselves.
//!
//! Choice: the core needs the *term* of any entry after the trimmed prefix (to check
//! `prev_term`, to find conflicts, to back off fast), but the *entries* only while they are
//! uncommitted or recent. So it keeps:
//! - `terms`: runs of `(first index, term)` covering `(base_index, last_index]`: one pair per
//!   leader change, not one per entry;
//! - `entries`: the suffix of the log from `cache_start`, refcounted `Bytes` payloads (the
//!   frame buffers themselves, not copies). Committed entries that the runtime has seen
//!   committed are evicted from the front once the cache holds more than
//!   `max_cache_bytes`; uncommitted entries are never evicted (they are bounded by
//!   `max_uncommitted_bytes` at the leader).
//!
//! A follower that needs evicted entries is served through the fetch path: the core asks the
//! runtime to read a range from disk (`Ready::fetches`) and sends what comes back
//! (`Node::on_fetched`). A follower that needs trimmed entries gets a snapshot.
//!
//! Invariants (checked by `check` in debug builds):
//! - `terms` is non-empty iff the log has entries after the base, starts at `base_index + 1`,
//!   and is strictly increasing in both index and term;
//! - `entries[i].index == cache_start + i`, and the cache is a suffix:
//!   `base_index < cache_start <= last_index + 1`;
//! - `base_index <= durable <= last_index`.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

#[derive(Debug, Clone)]
pub(crate) struct Log {
    /// Every entry `<= base_index` is trimmed (committed, folded into the snapshot).
    pub base_index: Index,
    /// Term of the entry at `base_index` (0 for the empty prefix).
    pub base_term: Term,
    /// `(first index, term)` runs for `(base_index, last]`.
    terms: Vec<(Index, Term)>,
    /// Cached entries `cache_start ..= last`.
    entries: VecDeque<Entry>,
    cache_start: Index,
    cache_bytes: u64,
    last: Index,
    /// Entries `<= durable` are on stable storage *and* are the ones in this log (a stale
    /// durable copy that was since truncated in memory does not count).
    pub durable: Index,
}

impl Log {
    pub fn new(base_index: Index, base_term: Term) -> Self {
        Self {
            base_index,
            base_term,
            terms: Vec::new(),
            entries: VecDeque::new(),
            cache_start: base_index + 1,
            cache_bytes: 0,
            last: base_index,
            durable: base_index,
        }
    }

    #[inline]
    pub fn last_index(&self) -> Index {
        self.last
    }

    #[inline]
    pub fn last_term(&self) -> Term {
        self.terms.last().map_or(self.base_term, |r| r.1)
    }

    /// First index still cached.
    #[inline]
    pub fn cache_start(&self) -> Index {
        self.cache_start
    }

    /// Position in `terms` of the run holding `index` (which must be in the log).
    fn run_of(&self, index: Index) -> usize {
        debug_assert!(index > self.base_index && index <= self.last);
        self.terms.partition_point(|r| r.0 <= index) - 1
    }

    /// Term of the entry at `index`: `None` if trimmed (below the base) or beyond the end.
    #[inline]
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index || index > self.last {
            None
        } else if index >= self.cache_start {
            Some(self.entries[(index - self.cache_start) as usize].term)
        } else {
            Some(self.terms[self.run_of(index)].1)
        }
    }

    /// The entry at `index` if it is cached.
    #[inline]
    pub fn get(&self, index: Index) -> Option<&Entry> {
        if index < self.cache_start || index > self.last {
            None
        } else {
            Some(&self.entries[(index - self.cache_start) as usize])
        }
    }

    /// Cached entries `lo..=hi`, at most `max_bytes` (at least one entry).
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Vec<Entry> {
        debug_assert!(lo >= self.cache_start && hi <= self.last && lo <= hi);
        let start = (lo - self.cache_start) as usize;
        let end = (hi - self.cache_start) as usize + 1;
        take_bytes(self.entries.range(start..end), max_bytes)
    }

    pub fn append(&mut self, e: Entry) {
        debug_assert_eq!(e.index, self.last + 1, "log hole");
        debug_assert!(e.term >= self.last_term(), "term went down in the log");
        if self.terms.last().is_none_or(|r| r.1 != e.term) {
            self.terms.push((e.index, e.term));
        }
        self.last = e.index;
        self.cache_bytes += e.size_bytes();
        self.entries.push_back(e);
    }

    /// Drops every entry `>= index`.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(index > self.base_index, "truncating the trimmed prefix");
        if index > self.last {
            return;
        }
        let keep_runs = self.terms.partition_point(|r| r.0 < index);
        self.terms.truncate(keep_runs);
        if index >= self.cache_start {
            for e in self.entries.drain((index - self.cache_start) as usize..) {
                self.cache_bytes -= e.size_bytes();
            }
        } else {
            self.entries.clear();
            self.cache_bytes = 0;
            self.cache_start = index;
        }
        self.last = index - 1;
        self.durable = self.durable.min(index - 1);
    }

    /// Drops every entry `<= index` (which must be in the log).
    pub fn trim_to(&mut self, index: Index) {
        let term = self.term(index).expect("trim point must be in the log");
        // Runs that end at or before `index` go; the run holding `index + 1` starts there.
        let drop = self.terms.partition_point(|r| r.0 <= index + 1);
        let tail_term =
            if index < self.last { Some(self.terms[self.run_of(index + 1)].1) } else { None };
        self.terms.drain(..drop);
        if let Some(t) = tail_term {
            self.terms.insert(0, (index + 1, t));
        }
        while self.entries.front().is_some_and(|e| e.index <= index) {
            let e = self.entries.pop_front().expect("front");
            self.cache_bytes -= e.size_bytes();
        }
        self.cache_start = self.cache_start.max(index + 1);
        self.base_index = index;
        self.base_term = term;
        self.durable = self.durable.max(index);
    }

    /// Evicts cached entries `<= up_to` from the front while the cache exceeds `max_bytes`.
    pub fn evict(&mut self, up_to: Index, max_bytes: u64) {
        while self.cache_bytes > max_bytes {
            match self.entries.front() {
                Some(e) if e.index <= up_to => {
                    self.cache_bytes -= e.size_bytes();
                    self.entries.pop_front();
                    self.cache_start += 1;
                }
                _ => break,
            }
        }
    }

    /// Replaces the whole log by a snapshot base.
    pub fn reset(&mut self, index: Index, term: Term) {
        *self = Self::new(index, term);
    }

    /// Last index with term `term` at or below `from`, if any.
    pub fn last_index_of_term(&self, term: Term, from: Index) -> Option<Index> {
        let from = from.min(self.last);
        if from <= self.base_index {
            return (self.base_term == term && from == self.base_index).then_some(from);
        }
        let k = self.run_of(from);
        for j in (0..=k).rev() {
            let (first, t) = self.terms[j];
            if t == term {
                let end = self.terms.get(j + 1).map_or(self.last, |r| r.0 - 1);
                return Some(end.min(from));
            }
            if t < term {
                return None;
            }
            debug_assert!(first > self.base_index);
        }
        (self.base_term == term).then_some(self.base_index)
    }

    /// First index of the run of entries with the same term as `index`, not below `floor`.
    pub fn first_index_of_term_at(&self, index: Index, floor: Index) -> Index {
        if index <= self.base_index {
            return index;
        }
        self.terms[self.run_of(index)].0.max(floor).max(self.base_index + 1).min(index)
    }

    /// Asserts the invariants (O(cached entries); called in debug builds and tests).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn check(&self) {
        assert!(self.base_index <= self.durable && self.durable <= self.last);
        assert!(self.base_index < self.cache_start && self.cache_start <= self.last + 1);
        assert_eq!(self.terms.is_empty(), self.last == self.base_index);
        if let Some(r) = self.terms.first() {
            assert_eq!(r.0, self.base_index + 1);
            assert!(r.1 >= self.base_term);
        }
        for w in self.terms.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1, "term runs {:?}", self.terms);
        }
        let mut bytes = 0;
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(e.index, self.cache_start + i as Index);
            assert_eq!(Some(e.term), self.terms.get(self.run_of(e.index)).map(|r| r.1));
            bytes += e.size_bytes();
        }
        assert_eq!(bytes, self.cache_bytes);
        assert_eq!(self.cache_start + self.entries.len() as Index, self.last + 1);
    }
}

/// Clones entries from `iter` up to `max_bytes` (at least one).
pub(crate) fn take_bytes<'a>(iter: impl Iterator<Item = &'a Entry>, max_bytes: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in iter {
        bytes += e.size_bytes();
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        out.push(e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::EntryKind;
    use bytes::Bytes;

    fn e(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            session: 0,
            sequence: 0,
            data: Bytes::from_static(b"0123456789"),
        }
    }

    #[test]
    fn terms_survive_eviction_trim_and_truncation() {
        let mut l = Log::new(0, 0);
        for (i, t) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 4), (7, 4)] {
            l.append(e(i, t));
        }
        l.durable = 7;
        l.check();
        l.evict(5, 0);
        l.check();
        assert_eq!(l.cache_start(), 6);
        assert_eq!(l.get(5), None);
        assert_eq!(l.term(4), Some(2));
        assert_eq!(l.term(1), Some(1));
        assert_eq!(l.last_index_of_term(2, 7), Some(5));
        assert_eq!(l.last_index_of_term(3, 7), None);
        assert_eq!(l.first_index_of_term_at(5, 0), 3);
        l.trim_to(3);
        l.check();
        assert_eq!((l.base_index, l.base_term), (3, 2));
        assert_eq!(l.term(4), Some(2));
        assert_eq!(l.first_index_of_term_at(5, 0), 4);
        l.truncate_from(5);
        l.check();
        assert_eq!(l.last_index(), 4);
        assert_eq!(l.durable, 4);
        l.append(e(5, 5));
        l.check();
        assert_eq!(l.term(5), Some(5));
        assert_eq!(l.slice(5, 5, 0).len(), 1);
    }
}
