//! The in-memory view of the replicated log held by the core.
//!
//! Choice: the core keeps every entry after the trimmed prefix in memory (a `VecDeque` of
//! entries whose payloads are refcounted `Bytes`, so memory is the frame buffers themselves,
//! not copies). Memory is therefore bounded by how often the runtime trims (`Node::trim`),
//! not by a cache size: the fetch-from-disk path for lagging followers (an output asking the
//! runtime for a range, answered later) is not built yet. A follower that needs entries
//! behind the trim point gets a snapshot instead.
//!
//! Invariants (checked by `debug_assert!` in `check`):
//! - `entries[i].index == base_index + 1 + i` (contiguous, no holes);
//! - terms never decrease along the log;
//! - `base_index <= durable <= last_index()`.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

#[derive(Debug, Clone)]
pub(crate) struct Log {
    /// Every entry `<= base_index` is trimmed (committed, folded into the snapshot).
    pub base_index: Index,
    /// Term of the entry at `base_index` (0 for the empty prefix).
    pub base_term: Term,
    /// The entries after `base_index`.
    pub entries: VecDeque<Entry>,
    /// Entries `<= durable` are on stable storage *and* are the ones in `entries` (a stale
    /// durable copy that was since truncated in memory does not count).
    pub durable: Index,
}

impl Log {
    pub fn new(base_index: Index, base_term: Term) -> Self {
        Self {
            base_index,
            base_term,
            entries: VecDeque::new(),
            durable: base_index,
        }
    }

    #[inline]
    pub fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    #[inline]
    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.base_term, |e| e.term)
    }

    /// Term of the entry at `index`: `None` if trimmed (below the base) or beyond the end.
    #[inline]
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index || index > self.last_index() {
            None
        } else {
            Some(self.entries[(index - self.base_index - 1) as usize].term)
        }
    }

    #[inline]
    pub fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.base_index || index > self.last_index() {
            None
        } else {
            Some(&self.entries[(index - self.base_index - 1) as usize])
        }
    }

    /// Entries `lo..=hi`, at most `max_bytes` (at least one entry). `lo` must be in the log.
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Vec<Entry> {
        debug_assert!(lo > self.base_index && hi <= self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = (lo - self.base_index - 1) as usize;
        for e in self.entries.range(start..(hi - self.base_index) as usize) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    pub fn append(&mut self, e: Entry) {
        debug_assert_eq!(e.index, self.last_index() + 1, "log hole");
        debug_assert!(e.term >= self.last_term(), "term went down in the log");
        self.entries.push_back(e);
    }

    /// Drops every entry `>= index`.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(index > self.base_index, "truncating the trimmed prefix");
        self.entries
            .truncate((index - self.base_index - 1) as usize);
        self.durable = self.durable.min(index - 1);
    }

    /// Drops every entry `<= index` (which must be in the log).
    pub fn trim_to(&mut self, index: Index) {
        let term = self.term(index).expect("trim point must be in the log");
        let n = (index - self.base_index) as usize;
        self.entries.drain(..n);
        self.base_index = index;
        self.base_term = term;
        self.durable = self.durable.max(index);
    }

    /// Replaces the whole log by a snapshot base.
    pub fn reset(&mut self, index: Index, term: Term) {
        self.entries.clear();
        self.base_index = index;
        self.base_term = term;
        self.durable = index;
    }

    /// Last index with term `term` at or below `from`, if any.
    pub fn last_index_of_term(&self, term: Term, from: Index) -> Option<Index> {
        let mut i = from.min(self.last_index());
        while i > self.base_index {
            let t = self.term(i)?;
            if t == term {
                return Some(i);
            }
            if t < term {
                return None;
            }
            i -= 1;
        }
        (self.base_term == term && i == self.base_index).then_some(i)
    }

    /// First index of the run of entries with the same term as `index`, not below `floor`.
    pub fn first_index_of_term_at(&self, index: Index, floor: Index) -> Index {
        let t = self.term(index);
        let mut i = index;
        while i > floor.max(self.base_index + 1) && self.term(i - 1) == t {
            i -= 1;
        }
        i
    }

    #[cfg(debug_assertions)]
    pub fn check(&self) {
        assert!(self.base_index <= self.durable && self.durable <= self.last_index());
        let mut prev = self.base_term;
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(e.index, self.base_index + 1 + i as Index);
            assert!(e.term >= prev);
            prev = e.term;
        }
    }
}
