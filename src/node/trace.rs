//! Sampled appends, every stage on every node, as Chrome trace-event JSON (Perfetto and
//! `chrome://tracing` open it), so one slow append can be followed across the cluster.
//!
//! Sampling needs no coordination: an append is sampled when its index range holds a
//! multiple of `trace_sample_every` (a node setting; 0 turns tracing off), and every node
//! applies the same rule to what it sees: the leader to each client append it answers, a
//! follower to each append message it acks. The multiple (the sample's `key`) ties the
//! leader's record to the followers' ones. Each core keeps its samples in a bounded ring
//! (`trace_samples_max`, the oldest go first); they are copied out when read.
//!
//! Times are wall-clock nanoseconds, converted from the monotonic clock through one anchor per
//! process: on one host every node's times are comparable to within microseconds; across
//! hosts the picture is as good as the hosts' clock sync (the stage *durations* in the
//! metrics do not depend on it, see [`super::stages`]).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::stages::{POINTS, STAGES};

/// Which side of the replication a sample was taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The leader's record of a client append: the points of [`POINTS`].
    Leader,
    /// A follower's record of an append message: `received`, `write_submitted`, `durable`,
    /// `ack_sent` (the last one always, the middle ones when known).
    Follower,
}

/// One sampled append on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSample {
    /// The node that recorded it.
    pub node: u64,
    /// Its group.
    pub group: u64,
    /// First index of the append (leader: the client's request; follower: the message).
    pub first_index: u64,
    /// Last index.
    pub last_index: u64,
    /// The sampled index (a multiple of the sampling period) in `first..=last`.
    pub key: u64,
    /// Leader or follower.
    pub role: Role,
    /// `(point name, wall-clock nanoseconds)`, in time order.
    pub points: Vec<(String, u64)>,
}

/// The sampled index of `first..=last` when sampling one in `every` (0: none).
pub fn sample_key(every: u64, first: u64, last: u64) -> Option<u64> {
    if every == 0 || first > last {
        return None;
    }
    let k = first.div_ceil(every).checked_mul(every)?;
    (k <= last).then_some(k)
}

/// Wall-clock nanoseconds of a monotonic instant (one anchor per process).
pub fn unix_ns(t: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (i0, ns0) = *ANCHOR.get_or_init(|| {
        let ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), ns)
    });
    if t >= i0 {
        ns0 + t.duration_since(i0).as_nanos() as u64
    } else {
        ns0.saturating_sub(i0.duration_since(t).as_nanos() as u64)
    }
}

/// A bounded ring of samples (one per core).
#[derive(Debug, Default)]
pub(crate) struct TraceRing {
    samples: VecDeque<TraceSample>,
    cap: usize,
}

impl TraceRing {
    pub fn new(cap: usize) -> TraceRing {
        TraceRing { samples: VecDeque::new(), cap }
    }

    pub fn push(&mut self, s: TraceSample) {
        if self.cap == 0 {
            return;
        }
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn copy(&self) -> Vec<TraceSample> {
        self.samples.iter().cloned().collect()
    }
}

/// Name of the span that ends at a follower's point.
fn follower_stage(end: &str) -> String {
    match end {
        "write_submitted" => "follower_write_wait".into(),
        "durable" => "follower_local_flush".into(),
        "ack_sent" => "follower_ack_send".into(),
        other => format!("follower_{other}"),
    }
}

/// Name of the span of a leader's sample from point `a` to point `b`.
fn leader_stage(a: &str, b: &str) -> String {
    let ia = POINTS.iter().position(|p| *p == a);
    let ib = POINTS.iter().position(|p| *p == b);
    match (ia, ib) {
        (Some(i), Some(j)) if j == i + 1 => STAGES[i].0.to_string(),
        _ => format!("{a}->{b}"),
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// The Chrome trace events of `samples` (of all nodes): per node a process, per sampled
/// append a track (`group g #key`) holding one span for the whole append and one per stage,
/// and a flow arrow from the leader's send to each follower's receipt.
pub fn chrome_trace(samples: &[TraceSample]) -> Value {
    let mut events = Vec::new();
    let mut nodes: Vec<u64> = samples.iter().map(|s| s.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for n in &nodes {
        events.push(json!({"name": "process_name", "ph": "M", "pid": n, "tid": 0,
            "args": {"name": format!("node {n}")}}));
    }
    let tid = |s: &TraceSample| (s.group << 32) | (s.key & 0xffff_ffff);
    let mut named = std::collections::HashSet::new();
    // (group, key) -> the leader's sample.
    let mut leaders: HashMap<(u64, u64), &TraceSample> = HashMap::new();
    for s in samples.iter().filter(|s| s.role == Role::Leader) {
        leaders.insert((s.group, s.key), s);
    }
    let mut flow_id = 0u64;
    for s in samples {
        let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else { continue };
        let t = tid(s);
        if named.insert((s.node, t)) {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": s.node, "tid": t,
                "args": {"name": format!("group {} #{}", s.group, s.key)}}));
        }
        let role = match s.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
        };
        let args = json!({"group": s.group, "first_index": s.first_index,
            "last_index": s.last_index, "key": s.key});
        events.push(json!({"name": format!("append {}..{} ({role})", s.first_index, s.last_index),
            "cat": role, "ph": "X", "pid": s.node, "tid": t, "ts": us(first.1),
            "dur": us(last.1.saturating_sub(first.1)), "args": args}));
        for w in s.points.windows(2) {
            let name = match s.role {
                Role::Leader => leader_stage(&w[0].0, &w[1].0),
                Role::Follower => follower_stage(&w[1].0),
            };
            events.push(json!({"name": name, "cat": role, "ph": "X", "pid": s.node, "tid": t,
                "ts": us(w[0].1), "dur": us(w[1].1.saturating_sub(w[0].1)), "args": args}));
        }
        if s.role == Role::Follower
            && let Some(l) = leaders.get(&(s.group, s.key))
            && let Some(sent) = l.points.iter().find(|p| p.0 == "sent")
        {
            flow_id += 1;
            events.push(json!({"name": "replicate", "cat": "flow", "ph": "s", "id": flow_id,
                "pid": l.node, "tid": tid(l), "ts": us(sent.1)}));
            events.push(json!({"name": "replicate", "cat": "flow", "ph": "f", "bp": "e",
                "id": flow_id, "pid": s.node, "tid": t, "ts": us(first.1)}));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

/// Writes the Chrome trace-event JSON of `samples` (of all nodes) to `w`.
pub fn write_chrome_trace(w: &mut impl Write, samples: &[TraceSample]) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, &chrome_trace(samples))?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_picks_the_multiple_in_range() {
        assert_eq!(sample_key(0, 1, 100), None);
        assert_eq!(sample_key(10, 1, 9), None);
        assert_eq!(sample_key(10, 1, 10), Some(10));
        assert_eq!(sample_key(10, 10, 10), Some(10));
        assert_eq!(sample_key(10, 11, 35), Some(20));
        assert_eq!(sample_key(1, 7, 7), Some(7));
    }

    #[test]
    fn unix_time_is_monotone_with_the_instant() {
        let a = Instant::now();
        let b = a + std::time::Duration::from_micros(250);
        assert_eq!(unix_ns(b) - unix_ns(a), 250_000);
    }
}
