//! Where the latency of an append goes: the stages of its life, timed on the leader.
//!
//! # The points and the stages
//! Each client append is stamped at nine points, all read from the *leader's* clock:
//!
//! | point | when |
//! |---|---|
//! | received | the request was read off the client's socket |
//! | proposed | the group's driver handed it to the consensus core (it joined a batch) |
//! | sent | its batch was framed into the log's buffer and queued to every follower |
//! | write submitted | the leader's flush holding it was handed to the kernel |
//! | leader durable | that flush (write + fdatasync) completed |
//! | follower durable | the slowest follower of the majority had it durable (estimated, below) |
//! | follower ack | that follower's ack arrived |
//! | committed | the commit index passed it |
//! | replied | the reply was queued to the client |
//!
//! Stage *i* ([`STAGES`]) is the time from point *i* to point *i + 1*. The leader's flush and
//! the replication to the followers run in parallel, so the points are not always in this
//! order; each point is taken as the latest of itself and the points before it (the chain is
//! made monotone). A stage then measures how much *later* its point came than everything
//! before it: the stages sum exactly to the total (received to replied), and a stage's share
//! says how much of the critical path it held. For example "follower_flush" is the time the
//! majority's follower needed beyond the leader's own flush: zero when the followers are
//! faster than the leader's disk.
//!
//! # Followers' times without shared clocks
//! A follower reports, in each ack, how long after it received the append it sent the ack
//! (its inbox, write and fdatasync; see [`super::codec`]). The leader knows when it queued
//! the append and when the ack arrived; the rest of the round trip is the network (both
//! ways, with the link queues), split evenly between the two directions. So "follower
//! durable" = ack arrival − half of (round trip − follower's local time). No clock is
//! compared across hosts; only durations cross the wire.
//!
//! "Slowest of the majority": with `n` voters a commit needs `n / 2` followers besides the
//! leader; the `n / 2`-th ack to arrive for a batch is the one that decided. When the
//! followers are faster than the leader's own disk, `n / 2 + 1` of them can commit an append
//! before the leader's flush completes: the leader's flush was then off the critical path,
//! its two points are left out (not counted as incomplete), and "follower_flush" runs from
//! the send to the durability of the `n / 2 + 1`-th follower.
//!
//! # Cost
//! Two `Instant`s per client request, a few per batch (one batch per `take_ready`, shared by
//! all of its entries), and one histogram record per stage per request, all on the core that
//! owns the group: no lock, no atomic, no cross-core traffic. The histograms of each core are
//! copied out and merged only when read (a scrape, [`crate::node::NodeHandle::stages`]).
//! `stage_timing = false` in the node's settings turns the recording off.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::metrics::CoreMetrics;
use super::trace::{self, Role, TraceSample};

/// The stages of an append, in order: (name, what it measures). Names are stable: they are
/// the `stage` label of `corelog_append_stage_duration_seconds` and the keys of the bench's
/// breakdown.
pub const STAGES: [(&str, &str); 8] = [
    ("queue", "received by the leader -> taken by the group's driver (inbox queueing)"),
    ("propose", "proposed -> in the log's buffer and queued to the followers (consensus, framing)"),
    (
        "flush_wait",
        "-> the leader's write submitted (group commit: waiting for the flush in flight)",
    ),
    ("leader_flush", "-> durable on the leader (O_DIRECT write, with RWF_DSYNC or then fdatasync)"),
    (
        "follower_flush",
        "-> durable on the slowest follower of the majority, beyond the leader's flush \
         (network out, follower's queue, its durable write)",
    ),
    ("follower_ack", "-> that follower's ack received by the leader (network back)"),
    ("commit", "-> the commit index passed the append"),
    ("reply", "-> the reply queued to the client"),
];

/// Number of stages.
pub const STAGE_COUNT: usize = STAGES.len();

/// Number of points (one more than stages).
pub const POINT_COUNT: usize = STAGE_COUNT + 1;

/// Names of the points, for traces.
pub const POINTS: [&str; POINT_COUNT] = [
    "received",
    "proposed",
    "sent",
    "write_submitted",
    "leader_durable",
    "follower_durable",
    "follower_ack",
    "committed",
    "replied",
];

/// A new latency histogram: nanoseconds, 1 ns to 60 s, two significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// The monotone chain of `points` (see the module docs): each known point is the latest of
/// itself and those before it; an unknown point takes the previous one's time (its stage is
/// zero and the next stage absorbs it). `None` if the first or last point is unknown.
pub fn chain(points: &[Option<Instant>; POINT_COUNT]) -> Option<[Instant; POINT_COUNT]> {
    let first = points[0]?;
    points[POINT_COUNT - 1]?;
    let mut out = [first; POINT_COUNT];
    let mut prev = first;
    for (i, p) in points.iter().enumerate() {
        if let Some(t) = p {
            prev = prev.max(*t);
        }
        out[i] = prev;
    }
    Some(out)
}

/// Stage durations of a chain, nanoseconds.
pub fn durations(chain: &[Instant; POINT_COUNT]) -> [u64; STAGE_COUNT] {
    std::array::from_fn(|i| chain[i + 1].duration_since(chain[i]).as_nanos() as u64)
}

/// The stage histograms of one core.
#[derive(Debug, Clone)]
pub struct StageRecorder {
    /// One per stage, nanoseconds.
    pub stages: [Histogram<u64>; STAGE_COUNT],
    /// Received to replied, nanoseconds.
    pub total: Histogram<u64>,
    /// Appends recorded with a point unknown (its stage counted as zero).
    pub incomplete: u64,
    /// Per point of [`POINTS`]: appends recorded without it.
    pub missing: [u64; POINT_COUNT],
}

impl Default for StageRecorder {
    fn default() -> Self {
        StageRecorder {
            stages: std::array::from_fn(|_| new_histogram()),
            total: new_histogram(),
            incomplete: 0,
            missing: [0; POINT_COUNT],
        }
    }
}

impl StageRecorder {
    /// Records one append; returns its chain (or `None` when the ends are unknown). A point
    /// unknown where `expected` says it should be known counts the append as incomplete.
    pub fn record(
        &mut self,
        points: &[Option<Instant>; POINT_COUNT],
        expected: &[bool; POINT_COUNT],
    ) -> Option<[Instant; POINT_COUNT]> {
        let c = chain(points)?;
        for (h, d) in self.stages.iter_mut().zip(durations(&c)) {
            h.saturating_record(d);
        }
        self.total.saturating_record(c[POINT_COUNT - 1].duration_since(c[0]).as_nanos() as u64);
        if points.iter().zip(expected).any(|(p, e)| p.is_none() && *e) {
            self.incomplete += 1;
            for ((m, p), e) in self.missing.iter_mut().zip(points).zip(expected) {
                *m += u64::from(p.is_none() && *e);
            }
        }
        Some(c)
    }

    /// Adds another core's figures.
    pub fn merge(&mut self, other: &StageRecorder) {
        for (a, b) in self.stages.iter_mut().zip(&other.stages) {
            a.add(b).expect("same bounds");
        }
        self.total.add(&other.total).expect("same bounds");
        self.incomplete += other.incomplete;
        for (a, b) in self.missing.iter_mut().zip(other.missing) {
            *a += b;
        }
    }

    /// The stages as `(name, histogram)` pairs, in order.
    pub fn named(&self) -> Vec<(String, Histogram<u64>)> {
        STAGES.iter().zip(&self.stages).map(|((n, _), h)| (n.to_string(), h.clone())).collect()
    }
}

/// Each stage's share of the total time (sum of its durations over the sum of all stages'),
/// in order; the shares add up to 1 (all 0 when nothing was recorded).
pub fn shares(stages: &[(String, Histogram<u64>)]) -> Vec<(String, f64)> {
    let sums: Vec<f64> = stages.iter().map(|(_, h)| h.mean() * h.len() as f64).collect();
    let total: f64 = sums.iter().sum();
    stages
        .iter()
        .zip(sums)
        .map(|((n, _), s)| (n.clone(), if total > 0.0 { s / total } else { 0.0 }))
        .collect()
}

/// A one-line summary such as "45% leader_flush, 30% follower_flush, 10% queue, ..." (stages
/// of at least 1%, largest first).
pub fn summary(stages: &[(String, Histogram<u64>)]) -> String {
    let mut s = shares(stages);
    s.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.iter()
        .filter(|(_, f)| *f >= 0.01)
        .map(|(n, f)| format!("{:.0}% {n}", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A batch as the leader wrote and sent it: one `take_ready` write.
#[derive(Debug)]
struct LeaderBatch {
    first: u64,
    last: u64,
    sent: Instant,
    submitted: Option<Instant>,
    durable: Option<Instant>,
    /// Followers that acked the whole batch.
    acks: usize,
    /// (follower durable, ack received) of the ack that made the majority with the leader.
    quorum: Option<(Instant, Instant)>,
    /// The same for the ack that made a majority of followers alone.
    quorum_without_leader: Option<(Instant, Instant)>,
    committed: Option<Instant>,
}

/// An append message as a follower received it.
#[derive(Debug)]
struct FollowerBatch {
    first: u64,
    last: u64,
    received: Instant,
    submitted: Option<Instant>,
    durable: Option<Instant>,
}

/// Batches remembered per group before the oldest are forgotten (their appends then go
/// unrecorded; under normal operation a batch is forgotten soon after it commits).
const BATCHES_KEPT: usize = 4096;

/// The timeline of one group on one core: what the driver tells it, turned into stage
/// durations (recorded in the core's [`CoreMetrics`]) and trace samples.
pub(crate) struct Timeline {
    metrics: Rc<CoreMetrics>,
    group: u64,
    node: u64,
    /// Follower acks a batch needs besides the leader (voters / 2).
    quorum: usize,
    batches: VecDeque<LeaderBatch>,
    /// Per follower: `(last index, when queued)` of appends sent and not yet acked.
    sends: HashMap<u64, VecDeque<(u64, Instant)>>,
    /// Per follower: highest index acked and counted.
    acked: HashMap<u64, u64>,
    received: VecDeque<FollowerBatch>,
}

impl Timeline {
    pub fn new(metrics: Rc<CoreMetrics>, node: u64, group: u64, voters: usize) -> Timeline {
        Timeline {
            metrics,
            group,
            node,
            quorum: voters / 2,
            batches: VecDeque::new(),
            sends: HashMap::new(),
            acked: HashMap::new(),
            received: VecDeque::new(),
        }
    }

    /// Whether stage timing is on (off: every other method is not called).
    pub fn enabled(&self) -> bool {
        self.metrics.stage_timing
    }

    /// Leadership changed: what was in flight is no longer ours to time.
    pub fn reset(&mut self) {
        self.batches.clear();
        self.sends.clear();
        self.acked.clear();
        self.received.clear();
    }

    /// Leader: entries `first..=last` were written to the log's buffer and sent at `now`.
    pub fn leader_wrote(&mut self, first: u64, last: u64, now: Instant) {
        while self.batches.back().is_some_and(|b| b.last >= first) {
            self.batches.pop_back();
        }
        if self.batches.len() == BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(LeaderBatch {
            first,
            last,
            sent: now,
            submitted: None,
            durable: None,
            acks: 0,
            quorum: None,
            quorum_without_leader: None,
            committed: None,
        });
    }

    /// Leader: an append ending at `last` was queued to follower `to`.
    pub fn sent(&mut self, to: u64, last: u64, now: Instant) {
        let q = self.sends.entry(to).or_default();
        while q.back().is_some_and(|(l, _)| *l >= last) {
            q.pop_back();
        }
        if q.len() == BATCHES_KEPT {
            q.pop_front();
        }
        q.push_back((last, now));
    }

    /// Leader: follower `from` acked everything up to `index` (durable there); its ack says
    /// it spent `local_ns` between receiving the append and sending the ack.
    pub fn acked(&mut self, from: u64, index: u64, local_ns: Option<u64>, now: Instant) {
        // When the append holding `index` was sent, for the network estimate.
        let sent = self.sends.get_mut(&from).and_then(|q| {
            let pos = q.partition_point(|(l, _)| *l < index);
            let sent = q.get(pos).map(|(_, t)| *t);
            let done = q.partition_point(|(l, _)| *l <= index);
            q.drain(..done);
            sent
        });
        let durable_est = match (sent, local_ns) {
            (Some(sent), Some(local)) => {
                let round_trip = now.saturating_duration_since(sent).as_nanos() as u64;
                let back = round_trip.saturating_sub(local) / 2;
                now.checked_sub(std::time::Duration::from_nanos(back)).unwrap_or(now)
            }
            _ => now,
        };
        let from_index = self.acked.get(&from).copied().unwrap_or(0);
        if index <= from_index {
            return;
        }
        self.acked.insert(from, index);
        let start = self.batches.partition_point(|b| b.last <= from_index);
        for b in self.batches.range_mut(start..) {
            if b.last > index {
                break;
            }
            b.acks += 1;
            if b.acks == self.quorum {
                b.quorum = Some((durable_est, now));
            }
            if b.acks == self.quorum + 1 {
                b.quorum_without_leader = Some((durable_est, now));
            }
        }
    }

    /// Either role: entries up to `index` are durable, by a flush submitted and completed at
    /// these times.
    pub fn durable(&mut self, index: u64, submitted: Instant, durable: Instant) {
        for b in self.batches.iter_mut().rev() {
            if b.last <= index && b.durable.is_some() {
                break;
            }
            if b.last <= index {
                b.submitted = Some(submitted);
                b.durable = Some(durable);
            }
        }
        for b in self.received.iter_mut().rev() {
            if b.last <= index && b.durable.is_some() {
                break;
            }
            if b.last <= index {
                b.submitted = Some(submitted);
                b.durable = Some(durable);
            }
        }
    }

    /// Leader: the commit index moved to `index`.
    pub fn committed(&mut self, index: u64, now: Instant) {
        // Batches replied in earlier rounds go.
        while self.batches.front().is_some_and(|b| b.committed.is_some()) {
            self.batches.pop_front();
        }
        for b in self.batches.iter_mut() {
            if b.last > index {
                break;
            }
            b.committed = Some(now);
        }
    }

    /// Leader: the append of entries `first..=last` received and proposed at these times was
    /// answered at `now`: its stages are recorded (and traced if sampled).
    pub fn replied(&mut self, received: Instant, proposed: Instant, first: u64, last: u64) {
        let pos = self.batches.partition_point(|b| b.last < last);
        let Some(b) = self.batches.get(pos).filter(|b| b.first <= last) else { return };
        let now = Instant::now();
        // Committed before the leader's own flush completed: a majority of followers decided,
        // and the leader's flush was not on the critical path (its points stay unknown, and
        // the follower stage covers the time from the send).
        let (quorum, leader_decided) = match (b.durable, self.quorum) {
            (Some(d), 0) => (Some((d, d)), true),
            (Some(_), _) => (b.quorum, true),
            (None, _) => (b.quorum_without_leader, false),
        };
        let points = [
            Some(received),
            Some(proposed),
            Some(b.sent),
            b.submitted,
            b.durable,
            quorum.map(|q| q.0),
            quorum.map(|q| q.1),
            b.committed,
            Some(now),
        ];
        let mut expected = [true; POINT_COUNT];
        if !leader_decided {
            expected[3] = false;
            expected[4] = false;
        }
        let m = &self.metrics;
        let Some(c) = m.stages.borrow_mut().record(&points, &expected) else { return };
        if let Some(key) = trace::sample_key(m.trace_every, first, last) {
            m.trace(TraceSample {
                node: self.node,
                group: self.group,
                first_index: first,
                last_index: last,
                key,
                role: Role::Leader,
                points: POINTS
                    .iter()
                    .zip(c)
                    .map(|(n, t)| (n.to_string(), trace::unix_ns(t)))
                    .collect(),
            });
        }
    }

    /// Follower: an append of entries `first..=last` arrived at `received`.
    pub fn follower_received(&mut self, first: u64, last: u64, received: Instant) {
        while self.received.back().is_some_and(|b| b.last >= first) {
            self.received.pop_back();
        }
        if self.received.len() == BATCHES_KEPT {
            self.received.pop_front();
        }
        self.received.push_back(FollowerBatch {
            first,
            last,
            received,
            submitted: None,
            durable: None,
        });
    }

    /// Follower: an ack of everything up to `index` is being sent now. Returns how long ago
    /// the append holding `index` was received (nanoseconds), for the ack.
    pub fn follower_acking(&mut self, index: u64) -> Option<u64> {
        let now = Instant::now();
        let mut local = None;
        while let Some(b) = self.received.front() {
            if b.first > index {
                break;
            }
            let b = self.received.pop_front().expect("non-empty");
            // The newest append the ack covers is the one it answers.
            local = Some(now.saturating_duration_since(b.received).as_nanos() as u64);
            let m = &self.metrics;
            if b.last > index {
                // Acked in part: keep the rest for the next ack.
                self.received.push_front(FollowerBatch { first: index + 1, ..b });
                break;
            }
            if let Some(key) = trace::sample_key(m.trace_every, b.first, b.last) {
                let mut points = vec![("received".to_string(), trace::unix_ns(b.received))];
                let mut prev = b.received;
                for (name, t) in [("write_submitted", b.submitted), ("durable", b.durable)] {
                    if let Some(t) = t {
                        prev = prev.max(t);
                        points.push((name.to_string(), trace::unix_ns(prev)));
                    }
                }
                points.push(("ack_sent".to_string(), trace::unix_ns(now.max(prev))));
                m.trace(TraceSample {
                    node: self.node,
                    group: self.group,
                    first_index: b.first,
                    last_index: b.last,
                    key,
                    role: Role::Follower,
                    points,
                });
            }
        }
        local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_chain_is_monotone_and_stages_sum_to_the_total() {
        let t0 = Instant::now();
        let at = |us: u64| Some(t0 + Duration::from_micros(us));
        // The follower was durable before the leader: its stage is zero, and the unknown
        // point takes the previous one's time.
        let points = [at(0), at(5), at(20), at(30), at(130), at(100), at(150), None, at(160)];
        let c = chain(&points).unwrap();
        let d = durations(&c);
        assert_eq!(d, [5_000, 15_000, 10_000, 100_000, 0, 20_000, 0, 10_000]);
        assert_eq!(d.iter().sum::<u64>(), 160_000);
        let mut r = StageRecorder::default();
        r.record(&points, &[true; POINT_COUNT]);
        assert_eq!(r.incomplete, 1);
        assert_eq!(r.total.max(), r.total.highest_equivalent(160_000));
        let named = r.named();
        assert_eq!(named.len(), STAGE_COUNT);
        let s = shares(&named);
        assert!((s.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-9);
        let leader = s.iter().find(|(n, _)| n == "leader_flush").unwrap().1;
        assert!((leader - 100.0 / 160.0).abs() < 0.02, "{leader}");
        assert!(summary(&named).starts_with("62% leader_flush"), "{}", summary(&named));
        assert!(chain(&[None, at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8)]).is_none());
    }
}
