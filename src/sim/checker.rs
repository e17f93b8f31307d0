//! The safety checker: global knowledge the nodes cannot have, checked after every step.
//!
//! It sees every entry any node writes, every commit any node reports, every reply and every
//! read, and keeps just enough to check each invariant incrementally (no full-log scans on
//! the hot path; only a new leader's log is scanned, once per election).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::consensus::{Entry, EntryKind, Index, Node, NodeId, Role, Term};

/// The invariant that broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// Two leaders in one term.
    ElectionSafety,
    /// Same index and term but different entries or different prefixes.
    LogMatching,
    /// A leader lacks an entry committed in an earlier term.
    LeaderCompleteness,
    /// Two nodes committed different entries at one index.
    StateMachineSafety,
    /// An acknowledged proposal is not what a node later committed at its index.
    Durability,
    /// A proposal committed twice, or acknowledged at two positions.
    ExactlyOnce,
    /// A lease read while another node led a later term.
    LeaseOverlap,
    /// A read returned a commit point older than one already committed when it started.
    StaleRead,
    /// After faults stopped, no leader or pending proposals did not commit in time.
    Liveness,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::ElectionSafety => "election-safety",
            Self::LogMatching => "log-matching",
            Self::LeaderCompleteness => "leader-completeness",
            Self::StateMachineSafety => "state-machine-safety",
            Self::Durability => "durability",
            Self::ExactlyOnce => "exactly-once",
            Self::LeaseOverlap => "lease-overlap",
            Self::StaleRead => "stale-read",
            Self::Liveness => "liveness",
        };
        f.write_str(s)
    }
}

/// One violation, with the step where it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub kind: ViolationKind,
    /// Step number (1-based) at which it was detected.
    pub step: u64,
    /// What exactly.
    pub detail: String,
}

/// Identity of an entry, for comparing copies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryId {
    term: Term,
    kind: EntryKind,
    session: u64,
    sequence: u64,
    data: Bytes,
}

impl EntryId {
    fn of(e: &Entry) -> Self {
        Self {
            term: e.term,
            kind: e.kind,
            session: e.session,
            sequence: e.sequence,
            data: e.data.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Committed {
    id: EntryId,
    /// An upper bound on the term in which the entry was committed.
    commit_term: Term,
    acked: bool,
}

/// Global state of the checker.
#[derive(Debug, Default)]
pub struct Checker {
    /// (index, term) -> (term of the previous entry, the entry). Log matching by induction.
    created: HashMap<(Index, Term), (Term, EntryId)>,
    /// index - 1 -> the committed entry.
    committed: Vec<Option<Committed>>,
    /// Highest index known committed anywhere.
    pub max_committed: Index,
    /// term -> leader.
    leaders: HashMap<Term, NodeId>,
    /// (session, sequence) -> index where committed.
    committed_sessions: HashMap<(u64, u64), Index>,
    /// (session, sequence) -> index acknowledged to the client.
    acks: HashMap<(u64, u64), Index>,
    /// Violations found.
    pub violations: Vec<Violation>,
    /// The current step (set by the simulator).
    pub step: u64,
    /// Counters for the report.
    pub stats: CheckerStats,
}

/// What the checker saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckerStats {
    /// Leaders elected.
    pub elections: u64,
    /// Client proposals acknowledged.
    pub acks: u64,
    /// Reads served (ReadIndex and lease).
    pub reads: u64,
    /// Of which lease reads.
    pub lease_reads: u64,
}

impl Checker {
    fn violate(&mut self, kind: ViolationKind, detail: String) {
        self.violations.push(Violation { kind, step: self.step, detail });
    }

    /// A node wrote `entries` to its log; `prev_term` is the term of the entry before the
    /// first one.
    pub fn on_write(&mut self, node: NodeId, mut prev_term: Term, entries: &[Entry]) {
        for e in entries {
            let id = EntryId::of(e);
            match self.created.get(&(e.index, e.term)) {
                None => {
                    self.created.insert((e.index, e.term), (prev_term, id));
                }
                Some((p, known)) => {
                    if *p != prev_term || *known != id {
                        let detail = format!(
                            "node {node} holds ({}, term {}) = {:?} after term {prev_term}, but it was \
                             created as {:?} after term {p}",
                            e.index, e.term, id, known
                        );
                        self.violate(ViolationKind::LogMatching, detail);
                    }
                }
            }
            prev_term = e.term;
        }
    }

    /// Node `node` (in term `term`) reports `e` committed.
    pub fn on_commit(&mut self, node: NodeId, term: Term, e: &Entry) {
        let i = e.index as usize;
        if self.committed.len() < i {
            self.committed.resize(i, None);
        }
        let id = EntryId::of(e);
        match &self.committed[i - 1] {
            None => {
                self.committed[i - 1] = Some(Committed { id, commit_term: term, acked: false });
                self.max_committed = self.max_committed.max(e.index);
                if e.kind == EntryKind::Normal
                    && e.session != 0
                    && let Some(j) =
                        self.committed_sessions.insert((e.session, e.sequence), e.index)
                    && j != e.index
                {
                    let detail = format!(
                        "proposal (session {}, seq {}) committed at {j} and at {}",
                        e.session, e.sequence, e.index
                    );
                    self.violate(ViolationKind::ExactlyOnce, detail);
                }
            }
            Some(c) if c.id != id => {
                let kind = if c.acked {
                    ViolationKind::Durability
                } else {
                    ViolationKind::StateMachineSafety
                };
                let detail = format!(
                    "node {node} commits {:?} at index {}, but {:?} was committed there{}",
                    id,
                    e.index,
                    c.id,
                    if c.acked { " and acknowledged to its client" } else { "" }
                );
                self.violate(kind, detail);
            }
            Some(_) => {}
        }
    }

    /// A reply told a client that `(session, sequence)` is committed at `index`.
    pub fn on_ack(&mut self, session: u64, sequence: u64, index: Index, term: Term) {
        self.stats.acks += 1;
        let ok = self.committed.get(index as usize - 1).and_then(|c| c.as_ref()).is_some_and(|c| {
            c.id.session == session && c.id.sequence == sequence && c.id.term == term
        });
        if !ok {
            let detail = format!(
                "(session {session}, seq {sequence}) acknowledged at ({index}, term {term}) \
                 which is not what is committed there"
            );
            self.violate(ViolationKind::Durability, detail);
            return;
        }
        if let Some(Some(c)) = self.committed.get_mut(index as usize - 1) {
            c.acked = true;
        }
        if let Some(j) = self.acks.insert((session, sequence), index)
            && j != index
        {
            let detail =
                format!("(session {session}, seq {sequence}) acknowledged at {j} and at {index}");
            self.violate(ViolationKind::ExactlyOnce, detail);
        }
    }

    /// Node `node` changed role or term; `node` is its core.
    pub fn on_role(&mut self, core: &Node) {
        if core.role() != Role::Leader {
            return;
        }
        let (id, term) = (core.id(), core.term());
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                let detail = format!("nodes {other} and {id} both lead term {term}");
                self.violate(ViolationKind::ElectionSafety, detail);
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
                self.stats.elections += 1;
                // Leader completeness: everything committed in an earlier term is here.
                for i in (core.snapshot_index() + 1)..=self.max_committed {
                    let Some(c) = &self.committed[i as usize - 1] else {
                        continue;
                    };
                    if c.commit_term >= term {
                        continue;
                    }
                    if core.log_term(i) != Some(c.id.term) {
                        let detail = format!(
                            "node {id} leads term {term} without entry {i} (term {}) committed \
                             by term {}",
                            c.id.term, c.commit_term
                        );
                        self.violate(ViolationKind::LeaderCompleteness, detail);
                        break;
                    }
                }
            }
        }
    }

    /// A read was served at `index`; when it started, `floor` was committed somewhere.
    pub fn on_read(&mut self, node: NodeId, index: Index, floor: Index, lease: bool) {
        self.stats.reads += 1;
        if lease {
            self.stats.lease_reads += 1;
        }
        if index < floor {
            let detail = format!(
                "node {node} served a {} read at commit {index}, but {floor} was committed when \
                 the read started",
                if lease { "lease" } else { "ReadIndex" }
            );
            self.violate(ViolationKind::StaleRead, detail);
        }
    }

    /// Node `reader` used its lease in `term` while `other` leads `other_term`.
    pub fn lease_overlap(&mut self, reader: NodeId, term: Term, other: NodeId, other_term: Term) {
        let detail = format!(
            "node {reader} served a lease read in term {term} while node {other} leads term \
             {other_term}"
        );
        self.violate(ViolationKind::LeaseOverlap, detail);
    }

    /// Records a liveness failure.
    pub fn liveness(&mut self, detail: String) {
        self.violate(ViolationKind::Liveness, detail);
    }
}
