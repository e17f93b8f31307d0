//! The deterministic simulator: 3 or 5 replicas of the real consensus core in one thread,
//! driven from a seed, with a simulated network, simulated disks, crashes, clock skew and
//! clients, and the safety checker ([`checker`]) run after every step.
//!
//! # Model
//!
//! - **Time** is a `u64` of simulated microseconds. An event queue orders everything by
//!   (time, insertion order), so one seed is one execution, bit for bit.
//! - **Ticks**: each node ticks at its own period, 10 ms ± 5 % (skew, redrawn at restart).
//! - **Network**: each message gets a delay (0.1-3 ms, sometimes 10x, which reorders), may be
//!   dropped or duplicated, and is lost if its link is cut when it is sent or delivered.
//!   Faults cut links both ways (partitions, isolation, splits) or one way.
//! - **Disk**: each node has a FIFO of flushes (one per `Ready` with writes), each durable
//!   after 0.05-2 ms (sometimes 20 ms). Only then does the node hear "durable". A crash loses
//!   every flush not yet durable, except that a random prefix of them may have landed and the
//!   next one may be torn (a prefix of its entries written): exactly what a real disk may do
//!   with unacknowledged writes.
//! - **Clients** propose with a session and sequence, retry the same sequence on timeouts,
//!   redirects and abandoned proposals, and read (lease or ReadIndex). Requests and answers
//!   cross a client network with the same delays and loss rate as the replicas' network.
//! - **Faults** come every 10-160 ms (2x or 4x as often in half the seeds): crashes and
//!   restarts, isolation, random splits, one-way cuts, heals, loss and duplication rates,
//!   slow-disk episodes, leader transfers, membership changes (add a learner, promote,
//!   remove, change a priority; a third of the seeds have a spare node for this). Two
//!   adversarial ones aim at the classic windows: a leader crashes right after it advanced
//!   its commit index (0.3, 3 or 30 % of the time, per seed), and a just-elected leader is
//!   cut off before its no-op spreads (5 %). Nodes also trim their logs now and then.
//! - **Protocol settings vary per seed** so that the simulator covers them all: small batches
//!   (down to one entry per message) and windows, a tiny entry cache (lagging followers are
//!   then served by disk fetches, which the simulated disk answers), PreVote or CheckQuorum
//!   off, election priorities with a logger.
//! - **Steps**: one step is one event (a delivery, a tick, a flush, a fetch, a client action,
//!   a fault).
//!
//! After `steps` steps of faults the network heals, crashed nodes restart and faults stop;
//! then a leader must emerge and every client must complete new proposals within
//! `liveness_bound_us` of simulated time.

pub mod checker;
pub mod cli;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use bytes::Bytes;

use crate::consensus::rand::SplitMix64;
use crate::consensus::{
    ConfChange, Config, Entry, Error, HardState, Index, LogWrite, Membership, Message, Node,
    NodeId, Proposed, ProtocolBugs, Reply, RestartState, Role, Snapshot, Term,
};
pub use checker::{Checker, Violation, ViolationKind};

/// Nominal tick period.
pub const TICK_US: u64 = 10_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The seed: everything follows from it.
    pub seed: u64,
    /// Number of replicas (3 or 5 are the interesting ones).
    pub replicas: usize,
    /// Steps of the fault phase.
    pub steps: u64,
    /// Deliberate protocol bugs.
    pub bugs: ProtocolBugs,
    /// Keep a readable trace of the last steps (for replays).
    pub trace: bool,
    /// Inject random faults (off for scripted scenarios).
    pub random_faults: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// After faults stop, the simulated time within which liveness must be reached.
    pub liveness_bound_us: u64,
    /// Protocol settings instead of the per-seed variation (bugs still come from `bugs`).
    pub config: Option<Config>,
    /// Extra nodes that start outside the group (to be added as learners or voters).
    pub spares: usize,
}

impl SimOptions {
    /// Defaults for one seed.
    pub fn new(seed: u64, replicas: usize, steps: u64) -> Self {
        Self {
            seed,
            replicas,
            steps,
            bugs: ProtocolBugs::default(),
            trace: false,
            random_faults: true,
            clients: 3,
            liveness_bound_us: 5_000_000,
            config: None,
            // A third of the seeds get a spare node and membership changes.
            spares: usize::from(seed.is_multiple_of(3)),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Its seed.
    pub seed: u64,
    /// Steps taken (fault phase and liveness phase).
    pub steps: u64,
    /// Simulated time at the end.
    pub sim_time_us: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Violations (the run stops at the first step that finds any).
    pub violations: Vec<Violation>,
    /// Checker statistics.
    pub stats: checker::CheckerStats,
    /// Messages delivered.
    pub messages: u64,
    /// Highest committed index.
    pub committed: Index,
    /// Snapshots installed by followers.
    pub snapshots_installed: u64,
    /// Trims a follower made because its leader had trimmed.
    pub followed_trims: u64,
    /// Reads of evicted entries from disk.
    pub fetches: u64,
    /// Simulated time from the end of faults until a leader led and every client had
    /// completed two new operations (0 if the run stopped before).
    pub liveness_us: u64,
    /// The last steps, if tracing.
    pub trace: Vec<String>,
}

#[derive(Debug)]
enum EventKind {
    Deliver(Message),
    Tick {
        node: usize,
        epoch: u64,
    },
    DiskDone {
        node: usize,
        epoch: u64,
    },
    Client(usize),
    Fault,
    Restart(usize),
    Trim(usize),
    /// A client's request reaches a node.
    ClientRequest {
        client: usize,
        node: usize,
        key: OpKey,
    },
    /// A node's answer reaches a client.
    ClientAnswer {
        client: usize,
        key: OpKey,
        answer: Answer,
    },
    /// A read of evicted entries from node's durable log completes.
    Fetch {
        node: usize,
        epoch: u64,
        fetch: crate::consensus::Fetch,
    },
}

#[derive(Debug)]
struct Event {
    at_us: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event is the greatest.
        (o.at_us, o.seq).cmp(&(self.at_us, self.seq))
    }
}

#[derive(Debug)]
struct Flush {
    snapshot: Option<Snapshot>,
    write: Option<LogWrite>,
    hard_state: Option<HardState>,
}

/// What survives a crash.
#[derive(Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot.
    entries: Vec<Entry>,
    pending: VecDeque<Flush>,
    last_done_us: u64,
}

impl Disk {
    fn base(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    fn apply(&mut self, f: &Flush, torn_keep: Option<usize>) {
        if let Some(s) = &f.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear();
        }
        if let Some(w) = &f.write {
            let base = self.base();
            assert!(w.first_index > base, "write into the snapshot");
            let keep = (w.first_index - base - 1) as usize;
            assert!(self.entries.len() >= keep, "disk write leaves a hole at {}", w.first_index);
            self.entries.truncate(keep);
            let n = torn_keep.unwrap_or(w.entries.len()).min(w.entries.len());
            self.entries.extend_from_slice(&w.entries[..n]);
        }
        if torn_keep.is_none()
            && let Some(hs) = f.hard_state
        {
            self.hard_state = hs;
        }
    }
}

struct SimNode {
    id: NodeId,
    /// Membership the node was bootstrapped with.
    initial: Membership,
    core: Option<Node>,
    epoch: u64,
    tick_us: u64,
    disk: Disk,
    checked_commit: Index,
    /// The last hard state this node handed out (or recovered), across restarts.
    last_hard_state: HardState,
    seen: (Role, Term),
    slow_disk_until_us: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Propose { seq: u64, data: Bytes },
    Read { id: u64, floor: Index },
}

/// Which operation a request or an answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKey {
    Propose(u64),
    Read(u64),
}

impl Op {
    fn key(&self) -> OpKey {
        match self {
            Op::Propose { seq, .. } => OpKey::Propose(*seq),
            Op::Read { id, .. } => OpKey::Read(*id),
        }
    }
}

/// What a node tells a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The operation completed (the checker has already checked it).
    Done,
    /// Try another node (the leader it names, if any).
    Redirect(Option<NodeId>),
}

struct Client {
    session: u64,
    next_seq: u64,
    next_read_id: u64,
    op: Option<Op>,
    target: usize,
    sent_at_us: u64,
    started_at_us: u64,
    done_after_quiet: u32,
}

/// The simulated cluster.
pub struct Sim {
    opts: SimOptions,
    cfg: Config,
    rng: SplitMix64,
    now_us: u64,
    seq: u64,
    events: BinaryHeap<Event>,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    /// link_up[from][to]
    link_up: Vec<Vec<bool>>,
    drop_ppm: u32,
    dup_ppm: u32,
    /// Fault frequency multiplier for this seed (1 = a fault every 10-160 ms).
    fault_rate: u64,
    /// Chance that a leader crashes right after it advanced its commit index.
    crash_after_commit_ppm: u32,
    /// The checker.
    pub checker: Checker,
    steps: u64,
    quiet_since_us: Option<u64>,
    faults: BTreeMap<&'static str, u64>,
    messages: u64,
    snapshots_installed: u64,
    followed_trims: u64,
    fetches: u64,
    liveness_us: u64,
    trace: Option<VecDeque<String>>,
}

const TRACE_LINES: usize = 300;

impl Sim {
    /// A cluster of `opts.replicas` fresh nodes.
    pub fn new(opts: SimOptions) -> Self {
        let mut rng = SplitMix64::new(opts.seed);
        let n = opts.replicas;
        assert!((1..=9).contains(&n), "1 to 9 replicas");
        // Some seeds get election priorities, and a logger (priority 0) among 5.
        let with_priority = rng.chance_ppm(300_000);
        let voters: Vec<(NodeId, u8)> = (1..=n as NodeId)
            .map(|id| {
                let p = if with_priority {
                    if n >= 5 && id == n as NodeId { 0 } else { 1 + rng.below(3) as u8 }
                } else {
                    1
                };
                (id, p)
            })
            .collect();
        let initial = Membership::with_voters(&voters);
        // Vary the protocol settings across seeds: small batches and windows open the
        // windows the classic bugs need; PreVote and CheckQuorum off exercise the plain
        // protocol.
        let mut cfg = Config { bugs: opts.bugs, ..Config::default() };
        if rng.chance_ppm(300_000) {
            cfg.max_batch_bytes = [40, 128][rng.below(2) as usize];
            cfg.max_inflight_msgs = 1 + rng.below(4) as usize;
        }
        if rng.chance_ppm(200_000) {
            cfg.pre_vote = false;
        }
        if rng.chance_ppm(300_000) {
            // A tiny entry cache: lagging followers are served through disk reads.
            cfg.max_cache_bytes = 2_048;
        }
        if rng.chance_ppm(200_000) {
            cfg.check_quorum = false;
            cfg.lease_read = false;
        }
        if let Some(c) = &opts.config {
            cfg = Config { bugs: opts.bugs, ..c.clone() };
        }
        let mut sim = Self {
            cfg: cfg.clone(),
            now_us: 0,
            seq: 0,
            events: BinaryHeap::new(),
            nodes: Vec::new(),
            clients: Vec::new(),
            link_up: vec![vec![true; n + opts.spares]; n + opts.spares],
            drop_ppm: 0,
            dup_ppm: 0,
            fault_rate: 1,
            crash_after_commit_ppm: 0,
            checker: Checker::default(),
            steps: 0,
            quiet_since_us: None,
            faults: BTreeMap::new(),
            messages: 0,
            snapshots_installed: 0,
            followed_trims: 0,
            fetches: 0,
            liveness_us: 0,
            trace: opts.trace.then(VecDeque::new),
            rng,
            opts,
        };
        sim.fault_rate = [1, 1, 2, 4][sim.rng.below(4) as usize];
        sim.crash_after_commit_ppm = [3_000, 30_000, 300_000][sim.rng.below(3) as usize];
        for i in 0..n + sim.opts.spares {
            let id = i as NodeId + 1;
            let tick_us = sim.skewed_tick();
            let seed = sim.rng.next_u64();
            let start = if i < n { initial.clone() } else { Membership::default() };
            sim.nodes.push(SimNode {
                id,
                core: Some(Node::new(id, cfg.clone(), start.clone(), seed)),
                initial: start,
                epoch: 0,
                tick_us,
                disk: Disk::default(),
                checked_commit: 0,
                last_hard_state: HardState::default(),
                seen: (Role::Follower, 0),
                slow_disk_until_us: 0,
            });
            let first = sim.rng.below(tick_us);
            sim.schedule(first, EventKind::Tick { node: i, epoch: 0 });
        }
        for c in 0..sim.opts.clients {
            let target = sim.rng.below(n as u64) as usize;
            sim.clients.push(Client {
                session: 1000 + c as u64,
                next_seq: 1,
                next_read_id: 1,
                op: None,
                target,
                sent_at_us: 0,
                started_at_us: 0,
                done_after_quiet: 0,
            });
            let d = 20_000 + sim.rng.below(20_000);
            sim.schedule(d, EventKind::Client(c));
        }
        if sim.opts.random_faults {
            let d = sim.fault_gap();
            sim.schedule(d, EventKind::Fault);
            for i in 0..n {
                let d = 100_000 + sim.rng.below(400_000);
                sim.schedule(d, EventKind::Trim(i));
            }
        }
        sim
    }

    fn skewed_tick(&mut self) -> u64 {
        // 10 ms +- 5 %.
        TICK_US - TICK_US / 20 + self.rng.below(TICK_US / 10 + 1)
    }

    fn fault_gap(&mut self) -> u64 {
        (10_000 + self.rng.below(150_000)) / self.fault_rate
    }

    fn schedule(&mut self, after_us: u64, kind: EventKind) {
        self.seq += 1;
        self.events.push(Event { at_us: self.now_us + after_us, seq: self.seq, kind });
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_insert(0) += 1;
        self.log(|| format!("FAULT {kind}"));
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            if t.len() >= TRACE_LINES {
                t.pop_front();
            }
            let l = line();
            t.push_back(format!(
                "[step {:>7} t={:>9.3}ms] {l}",
                self.steps,
                self.now_us as f64 / 1000.0
            ));
        }
    }

    /// Runs the fault phase, then the liveness phase; stops at the first violation.
    pub fn run(mut self) -> SimReport {
        while self.checker.violations.is_empty() {
            if self.quiet_since_us.is_none() && self.steps >= self.opts.steps {
                self.quiesce();
            }
            if let Some(q) = self.quiet_since_us {
                if self.live() {
                    self.liveness_us = self.now_us - q;
                    break;
                }
                if self.now_us > q + self.opts.liveness_bound_us {
                    let detail = self.liveness_detail();
                    self.checker.liveness(detail);
                    break;
                }
            }
            if !self.step() {
                break;
            }
        }
        self.report()
    }

    fn report(self) -> SimReport {
        SimReport {
            seed: self.opts.seed,
            steps: self.steps,
            sim_time_us: self.now_us,
            faults: self.faults,
            violations: self.checker.violations.clone(),
            stats: self.checker.stats,
            messages: self.messages,
            committed: self.checker.max_committed,
            snapshots_installed: self.snapshots_installed,
            followed_trims: self.followed_trims,
            fetches: self.fetches,
            liveness_us: self.liveness_us,
            trace: self.trace.map(Vec::from).unwrap_or_default(),
        }
    }

    /// Stops faults: heal every link, restart crashed nodes, no more loss or duplication.
    pub fn quiesce(&mut self) {
        self.quiet_since_us = Some(self.now_us);
        self.log(|| "QUIESCE: faults stop, links heal, crashed nodes restart".to_string());
        self.heal();
        self.drop_ppm = 0;
        self.dup_ppm = 0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.restart(i);
            }
            self.nodes[i].slow_disk_until_us = 0;
        }
    }

    fn live(&self) -> bool {
        let leader =
            self.nodes.iter().filter_map(|n| n.core.as_ref()).any(|c| c.role() == Role::Leader);
        leader && self.clients.iter().all(|c| c.done_after_quiet >= 2)
    }

    fn liveness_detail(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => format!(
                    "n{}:{:?}/t{}/commit{}/last{}(t{})/voters{:?}/learners{:?}",
                    n.id,
                    c.role(),
                    c.term(),
                    c.commit_index(),
                    c.last_index(),
                    c.log_term(c.last_index()).unwrap_or(0),
                    c.membership().voters.iter().map(|v| (v.id, v.priority)).collect::<Vec<_>>(),
                    c.membership().learners
                ),
                None => format!("n{}:down", n.id),
            })
            .collect();
        let clients: Vec<String> =
            self.clients.iter().map(|c| format!("s{}:{:?}", c.session, c.op)).collect();
        format!(
            "no progress {} ms after faults stopped; nodes {}; clients {}",
            self.opts.liveness_bound_us / 1000,
            nodes.join(" "),
            clients.join(" ")
        )
    }

    /// Processes one event. False when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(ev) = self.events.pop() else {
            return false;
        };
        debug_assert!(ev.at_us >= self.now_us);
        self.now_us = ev.at_us;
        self.steps += 1;
        self.checker.step = self.steps;
        match ev.kind {
            EventKind::Deliver(m) => self.deliver(m),
            EventKind::Tick { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].core.is_some() {
                    self.nodes[node].core.as_mut().expect("up").tick();
                    self.drain(node);
                    let period = self.nodes[node].tick_us;
                    self.schedule(period, EventKind::Tick { node, epoch });
                }
            }
            EventKind::DiskDone { node, epoch } => self.disk_done(node, epoch),
            EventKind::Client(c) => self.client_event(c),
            EventKind::ClientRequest { client, node, key } => {
                self.client_request(client, node, key)
            }
            EventKind::ClientAnswer { client, key, answer } => self.on_answer(client, key, answer),
            EventKind::Fault => {
                if self.quiet_since_us.is_none() {
                    self.random_fault();
                    let d = self.fault_gap();
                    self.schedule(d, EventKind::Fault);
                }
            }
            EventKind::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.restart(i);
                }
            }
            EventKind::Fetch { node, epoch, fetch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].core.is_some() {
                    let disk = &self.nodes[node].disk;
                    let base = disk.base();
                    let mut out = Vec::new();
                    let mut bytes = 0;
                    if fetch.lo > base {
                        for e in disk.entries.iter().skip((fetch.lo - base - 1) as usize) {
                            bytes += e.size_bytes();
                            if e.index > fetch.hi || (!out.is_empty() && bytes > fetch.max_bytes) {
                                break;
                            }
                            out.push(e.clone());
                        }
                    }
                    self.fetches += 1;
                    self.log(|| {
                        format!(
                            "fetch at node {}: {}..={} -> {} entries",
                            node + 1,
                            fetch.lo,
                            fetch.hi,
                            out.len()
                        )
                    });
                    self.nodes[node].core.as_mut().expect("up").on_fetched(fetch.lo, out);
                    self.drain(node);
                }
            }
            EventKind::Trim(i) => {
                self.trim(i);
                let d = 100_000 + self.rng.below(400_000);
                self.schedule(d, EventKind::Trim(i));
            }
        }
        true
    }

    // ------------------------------------------------------------ nodes

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from as usize - 1, m.to as usize - 1);
        if to >= self.nodes.len() || !self.link_up[from][to] || self.nodes[to].core.is_none() {
            return;
        }
        self.messages += 1;
        self.log(|| format!("deliver {} -> {} t{} {}", m.from, m.to, m.term, body_str(&m)));
        self.nodes[to].core.as_mut().expect("up").step(m);
        self.drain(to);
    }

    fn send(&mut self, m: Message) {
        let (from, to) = (m.from as usize - 1, m.to as usize - 1);
        if to >= self.nodes.len() || !self.link_up[from][to] {
            return;
        }
        if self.drop_ppm > 0 && self.rng.chance_ppm(self.drop_ppm) {
            return;
        }
        let mut delay = 100 + self.rng.below(2_900);
        if self.rng.chance_ppm(20_000) {
            delay *= 10;
        }
        if self.dup_ppm > 0 && self.rng.chance_ppm(self.dup_ppm) {
            let d2 = 100 + self.rng.below(5_000);
            self.schedule(d2, EventKind::Deliver(m.clone()));
        }
        self.schedule(delay, EventKind::Deliver(m));
    }

    /// Executes the node's `Ready` and checks what it reveals.
    fn drain(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let rd = core.take_ready();
        let offered_trim = rd.trim;
        let checker = &mut self.checker;
        if let Some(hs) = rd.hard_state {
            checker.on_hard_state(id, node.last_hard_state, hs);
            node.last_hard_state = hs;
        }
        if let Some(w) = &rd.entries {
            let prev = core.log_term(w.first_index - 1).unwrap_or(0);
            checker.on_write(id, prev, &w.entries);
        }
        // Commits.
        let commit = core.commit_index();
        let from = node.checked_commit.min(commit).max(core.snapshot_index());
        if commit > from {
            let term = core.term();
            for idx in (from + 1)..=commit {
                let e = core.entry(idx).expect("committed entry in log");
                checker.on_commit(id, term, e);
            }
        }
        let leader_committed = commit > node.checked_commit && core.role() == Role::Leader;
        node.checked_commit = commit;
        // Role changes.
        let seen = (core.role(), core.term());
        let mut new_leader = false;
        if seen != node.seen {
            node.seen = seen;
            checker.on_role(core);
            new_leader = seen.0 == Role::Leader;
            self.log(|| format!("node {id} is {:?} in term {}", seen.0, seen.1));
        }
        if rd.snapshot.is_some() {
            self.snapshots_installed += 1;
        }
        // Writes.
        if rd.snapshot.is_some() || rd.entries.is_some() || rd.hard_state.is_some() {
            let mut lat = 50 + self.rng.below(1_950);
            if self.rng.chance_ppm(10_000) || self.nodes[i].slow_disk_until_us > self.now_us {
                lat += 20_000;
            }
            let disk = &mut self.nodes[i].disk;
            let done = disk.last_done_us.max(self.now_us + lat);
            disk.last_done_us = done;
            disk.pending.push_back(Flush {
                snapshot: rd.snapshot,
                write: rd.entries,
                hard_state: rd.hard_state,
            });
            let epoch = self.nodes[i].epoch;
            self.seq += 1;
            self.events.push(Event {
                at_us: done,
                seq: self.seq,
                kind: EventKind::DiskDone { node: i, epoch },
            });
        }
        for m in rd.messages {
            self.send(m);
        }
        for r in rd.replies {
            self.on_reply(i, r);
        }
        // A leader whose network fails the moment it is elected: its no-op and first
        // entries stay on it alone (the uncommitted tails Figure 8 is made of).
        if new_leader
            && self.opts.random_faults
            && self.quiet_since_us.is_none()
            && self.rng.chance_ppm(50_000)
        {
            self.isolate_index(i);
            self.fault("isolate-new-leader");
        }
        // A follower follows its leader's trim, or lets it pass (a real runtime waits until a
        // whole segment would go); it is offered again when it advances.
        if let Some(t) = offered_trim
            && self.rng.chance_ppm(500_000)
        {
            self.followed_trims += 1;
            self.trim_to(i, t);
        }
        for fetch in rd.fetches {
            let epoch = self.nodes[i].epoch;
            let d = 100 + self.rng.below(2_000);
            self.schedule(d, EventKind::Fetch { node: i, epoch, fetch });
        }
        // The worst moment to crash: a leader just advanced its commit index, its next
        // flush (say, the entries of its own term) is still in flight.
        if leader_committed
            && self.opts.random_faults
            && self.quiet_since_us.is_none()
            && self.rng.chance_ppm(self.crash_after_commit_ppm)
        {
            self.crash(i);
            self.fault("crash-after-commit");
            let d = 20_000 + self.rng.below(300_000);
            self.schedule(d, EventKind::Restart(i));
        }
    }

    fn disk_done(&mut self, i: usize, epoch: u64) {
        if self.nodes[i].epoch != epoch || self.nodes[i].core.is_none() {
            return;
        }
        let f = self.nodes[i].disk.pending.pop_front().expect("flush completion without a flush");
        self.nodes[i].disk.apply(&f, None);
        let core = self.nodes[i].core.as_mut().expect("up");
        if let Some(hs) = f.hard_state {
            core.on_hard_state_durable(hs);
        }
        if let Some(w) = &f.write {
            let last = w.entries.last().expect("non-empty write");
            core.on_entries_durable(last.index, last.term);
        } else if let Some(s) = &f.snapshot {
            core.on_entries_durable(s.index, s.term);
        }
        self.drain(i);
    }

    /// Crashes node `i`: everything not durable is lost, except a random prefix of the
    /// pending flushes and possibly a torn part of the next one.
    pub fn crash(&mut self, i: usize) {
        self.crash_with(i, false);
    }

    /// Crashes node `i`; with `lose_unflushed`, none of its pending flushes lands.
    fn crash_with(&mut self, i: usize, lose_unflushed: bool) {
        if self.nodes[i].core.is_none() {
            return;
        }
        self.nodes[i].core = None;
        self.nodes[i].epoch += 1;
        let pending = std::mem::take(&mut self.nodes[i].disk.pending);
        let landed =
            if lose_unflushed { 0 } else { self.rng.below(pending.len() as u64 + 1) as usize };
        for f in pending.iter().take(landed) {
            self.nodes[i].disk.apply(f, None);
        }
        if let Some(f) = pending.get(landed).filter(|_| !lose_unflushed)
            && let Some(w) = &f.write
            && self.rng.chance_ppm(500_000)
        {
            let keep = self.rng.below(w.entries.len() as u64) as usize;
            // A torn write: its truncation and a prefix of its entries landed.
            if f.snapshot.is_none() {
                self.nodes[i].disk.apply(
                    &Flush { snapshot: None, write: Some(w.clone()), hard_state: None },
                    Some(keep),
                );
                self.fault("torn-write");
            }
        }
        self.nodes[i].disk.last_done_us = 0;
        let id = self.nodes[i].id;
        self.log(|| {
            format!("CRASH node {id} ({landed} of {} pending flushes landed)", pending.len())
        });
    }

    /// Restarts node `i` from its disk.
    pub fn restart(&mut self, i: usize) {
        let disk = &self.nodes[i].disk;
        let state = RestartState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
        };
        let id = self.nodes[i].id;
        let seed = self.rng.next_u64();
        let initial = self.nodes[i].initial.clone();
        let core = Node::restart(id, self.cfg.clone(), initial, seed, state);
        self.nodes[i].checked_commit = core.commit_index();
        self.nodes[i].last_hard_state = self.nodes[i].disk.hard_state;
        self.nodes[i].seen = (core.role(), core.term());
        self.nodes[i].core = Some(core);
        self.nodes[i].tick_us = self.skewed_tick();
        let epoch = self.nodes[i].epoch;
        let first = self.rng.below(self.nodes[i].tick_us);
        self.schedule(first, EventKind::Tick { node: i, epoch });
        self.log(|| format!("RESTART node {id}"));
    }

    fn trim(&mut self, i: usize) {
        let back = self.rng.below(40);
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let to = core.commit_index().saturating_sub(back);
        self.trim_to(i, to);
    }

    /// Trims node `i`'s log up to `to` (clamped by the core), as its runtime would.
    fn trim_to(&mut self, i: usize, to: Index) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let blob = Bytes::from(format!("app-state@{to}"));
        if let Some(s) = core.trim(to, blob) {
            let disk = &mut self.nodes[i].disk;
            let base = disk.base();
            if s.index > base {
                let drop = ((s.index - base) as usize).min(disk.entries.len());
                disk.entries.drain(..drop);
                disk.snapshot = Some(s);
            }
        }
    }

    fn isolate_index(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.link_up[i][j] = false;
                self.link_up[j][i] = false;
            }
        }
    }

    fn heal(&mut self) {
        for row in &mut self.link_up {
            row.iter_mut().for_each(|l| *l = true);
        }
    }

    fn random_fault(&mut self) {
        let n = self.nodes.len();
        let roll = self.rng.below(100);
        match roll {
            0..=19 => {
                // Crash one node (at most a minority down at once keeps runs interesting;
                // majorities crash too, rarely).
                let down = self.nodes.iter().filter(|n| n.core.is_none()).count();
                let i = self.rng.below(n as u64) as usize;
                if self.nodes[i].core.is_some() && (down < n / 2 || self.rng.chance_ppm(100_000)) {
                    self.crash(i);
                    self.fault("crash");
                    let d = 20_000 + self.rng.below(500_000);
                    self.schedule(d, EventKind::Restart(i));
                }
            }
            20..=34 => {
                let i = self.rng.below(n as u64) as usize;
                for j in 0..n {
                    if j != i {
                        self.link_up[i][j] = false;
                        self.link_up[j][i] = false;
                    }
                }
                self.fault("isolate");
            }
            35..=44 => {
                let mask = self.rng.next_u64();
                for a in 0..n {
                    for b in 0..n {
                        if (mask >> a) & 1 != (mask >> b) & 1 {
                            self.link_up[a][b] = false;
                        }
                    }
                }
                self.fault("partition");
            }
            45..=54 => {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                if a != b {
                    self.link_up[a][b] = false;
                    self.fault("one-way-cut");
                }
            }
            55..=74 => {
                self.heal();
                self.fault("heal");
            }
            75..=82 => {
                self.drop_ppm = [0, 10_000, 100_000, 300_000][self.rng.below(4) as usize];
                self.fault("loss-rate");
            }
            83..=88 => {
                self.dup_ppm = [0, 20_000, 200_000][self.rng.below(3) as usize];
                self.fault("duplicate-rate");
            }
            89..=93 => {
                let i = self.rng.below(n as u64) as usize;
                self.nodes[i].slow_disk_until_us = self.now_us + 50_000 + self.rng.below(300_000);
                self.fault("slow-disk");
            }
            89..=96 if self.opts.spares > 0 => self.random_membership_change(),
            _ => {
                let i = self.rng.below(n as u64) as usize;
                if let Some(c) = self.nodes[i].core.as_mut()
                    && c.role() == Role::Leader
                {
                    let to = 1 + self.rng.below(n as u64);
                    let _ = c.transfer_leader(to);
                    self.drain(i);
                    self.fault("leader-transfer");
                }
            }
        }
    }

    /// At the leader: add a learner, promote it, remove a voter or change a priority.
    fn random_membership_change(&mut self) {
        let Some(l) = self.leader() else { return };
        let total = self.nodes.len() as u64;
        let target = 1 + self.rng.below(total);
        let priority = self.rng.below(3) as u8 + u8::from(self.rng.chance_ppm(800_000));
        let remove = self.rng.chance_ppm(700_000);
        let core = self.nodes[l as usize - 1].core.as_mut().expect("leader is up");
        let m = core.membership();
        let change = if m.is_learner(target) {
            ConfChange::Promote { id: target, priority }
        } else if m.is_voter(target) {
            if m.voters.len() > 3 && remove {
                ConfChange::Remove { id: target }
            } else {
                ConfChange::SetPriority { id: target, priority }
            }
        } else {
            ConfChange::AddLearner { id: target }
        };
        let r = core.change_membership(change);
        self.log(|| format!("membership change at leader {l}: {change:?}: {r:?}"));
        if r.is_ok() {
            self.fault("membership-change");
        }
        self.drain(l as usize - 1);
    }

    // ------------------------------------------------------------ clients

    fn client_event(&mut self, c: usize) {
        let retry_us = 150_000;
        match &self.clients[c].op {
            None => {
                let op = if self.rng.chance_ppm(700_000) {
                    let cl = &mut self.clients[c];
                    let seq = cl.next_seq;
                    cl.next_seq += 1;
                    let len = 8 + self.rng.below(56) as usize;
                    let mut v = Vec::with_capacity(len);
                    v.extend_from_slice(&cl.session.to_le_bytes());
                    v.extend_from_slice(&seq.to_le_bytes());
                    v.resize(len, (seq % 251) as u8);
                    Op::Propose { seq, data: Bytes::from(v) }
                } else {
                    let cl = &mut self.clients[c];
                    let id = cl.session << 32 | cl.next_read_id;
                    cl.next_read_id += 1;
                    Op::Read { id, floor: self.checker.max_committed }
                };
                self.clients[c].op = Some(op);
                self.clients[c].started_at_us = self.now_us;
                self.client_send(c);
            }
            Some(_) => {
                if self.now_us >= self.clients[c].sent_at_us + retry_us {
                    self.client_send(c);
                }
            }
        }
        let d = 1_000 + self.rng.below(9_000);
        self.schedule(d, EventKind::Client(c));
    }

    fn redirect(&mut self, c: usize, hint: Option<NodeId>) {
        self.clients[c].target = match hint {
            Some(h) if (h as usize) <= self.nodes.len() => h as usize - 1,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        self.clients[c].sent_at_us = 0; // resend at the next client event
    }

    /// Sends the client's current operation to its target over the (lossy) client network.
    fn client_send(&mut self, c: usize) {
        self.clients[c].sent_at_us = self.now_us;
        let Some(key) = self.clients[c].op.as_ref().map(Op::key) else {
            return;
        };
        if self.drop_ppm > 0 && self.rng.chance_ppm(self.drop_ppm) {
            return; // lost: the client retries after its timeout
        }
        let node = self.clients[c].target;
        let d = 100 + self.rng.below(2_900);
        self.schedule(d, EventKind::ClientRequest { client: c, node, key });
    }

    /// Sends an answer back to a client.
    fn client_answer(&mut self, c: usize, key: OpKey, answer: Answer) {
        let d = 100 + self.rng.below(2_900);
        self.schedule(d, EventKind::ClientAnswer { client: c, key, answer });
    }

    /// A client's request arrives at node `t`.
    fn client_request(&mut self, c: usize, t: usize, key: OpKey) {
        let Some(op) = self.clients[c].op.clone().filter(|op| op.key() == key) else {
            return; // a late copy of a request whose operation is over
        };
        if self.nodes[t].core.is_none() {
            self.client_answer(c, key, Answer::Redirect(None));
            return;
        }
        let session = self.clients[c].session;
        match op {
            Op::Propose { seq, data } => {
                let r = self.nodes[t].core.as_mut().expect("up").propose(session, seq, data);
                self.log(|| {
                    format!("client s{session} propose seq {seq} at node {}: {r:?}", t + 1)
                });
                match r {
                    Ok(Proposed::Duplicate { index, term }) => {
                        self.checker.on_ack(session, seq, index, term);
                        self.client_answer(c, key, Answer::Done);
                    }
                    Ok(_) => {}
                    Err(Error::NotLeader { leader_hint }) => {
                        self.client_answer(c, key, Answer::Redirect(leader_hint))
                    }
                    Err(_) => {}
                }
            }
            Op::Read { id, floor } => {
                let lease = self.rng.chance_ppm(500_000);
                let core = self.nodes[t].core.as_mut().expect("up");
                if lease && let Ok(index) = core.lease_read() {
                    let (reader, term) = (core.id(), core.term());
                    self.log(|| format!("client s{session} lease read at node {reader}: {index}"));
                    for n in &self.nodes {
                        if let Some(o) = &n.core
                            && o.role() == Role::Leader
                            && o.term() > term
                        {
                            self.checker.lease_overlap(reader, term, o.id(), o.term());
                        }
                    }
                    self.checker.on_read(reader, index, floor, true);
                    self.client_answer(c, key, Answer::Done);
                    return;
                }
                let core = self.nodes[t].core.as_mut().expect("up");
                match core.read_index(id) {
                    Ok(()) => {}
                    Err(Error::NotLeader { leader_hint }) => {
                        self.client_answer(c, key, Answer::Redirect(leader_hint))
                    }
                    Err(_) => {}
                }
            }
        }
        self.drain(t);
    }

    fn client_done(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        cl.op = None;
        if self.quiet_since_us.is_some_and(|q| cl.started_at_us >= q) {
            cl.done_after_quiet += 1;
        }
    }

    fn client_of_session(&self, session: u64) -> Option<usize> {
        self.clients.iter().position(|c| c.session == session)
    }

    fn on_reply(&mut self, node: usize, r: Reply) {
        match r {
            Reply::Committed { session, sequence, index, term } => {
                self.checker.on_ack(session, sequence, index, term);
                if let Some(c) = self.client_of_session(session) {
                    self.client_answer(c, OpKey::Propose(sequence), Answer::Done);
                }
            }
            Reply::Abandoned { session, sequence, leader_hint } => {
                if let Some(c) = self.client_of_session(session) {
                    self.client_answer(c, OpKey::Propose(sequence), Answer::Redirect(leader_hint));
                }
            }
            Reply::ReadReady { id, index } => {
                if let Some(c) = self.client_of_session(id >> 32)
                    && let Some(Op::Read { id: rid, floor }) = self.clients[c].op
                    && rid == id
                {
                    self.checker.on_read(self.nodes[node].id, index, floor, false);
                    self.client_answer(c, OpKey::Read(id), Answer::Done);
                }
            }
            Reply::ReadFailed { .. } => {}
        }
    }

    fn on_answer(&mut self, c: usize, key: OpKey, answer: Answer) {
        if self.clients[c].op.as_ref().map(Op::key) != Some(key) {
            return; // about an operation that is already over
        }
        match answer {
            Answer::Done => self.client_done(c),
            Answer::Redirect(hint) => self.redirect(c, hint),
        }
    }

    // ------------------------------------------------------------ scripted control

    /// Simulated time.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// The core of node `id` (1-based), if it is up.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes[id as usize - 1].core.as_ref()
    }
    /// Mutable access to node `id`'s core; call [`Sim::flush_node`] after acting on it.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes[id as usize - 1].core.as_mut()
    }
    /// Executes what node `id` produced after a direct call.
    pub fn flush_node(&mut self, id: NodeId) {
        self.drain(id as usize - 1);
    }
    /// Cuts or restores the link `from -> to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, up: bool) {
        self.link_up[from as usize - 1][to as usize - 1] = up;
    }
    /// Cuts every link between `group` and the rest.
    pub fn isolate(&mut self, group: &[NodeId]) {
        let n = self.nodes.len() as NodeId;
        for a in 1..=n {
            for b in 1..=n {
                if group.contains(&a) != group.contains(&b) {
                    self.set_link(a, b, false);
                }
            }
        }
    }
    /// Restores every link.
    pub fn heal_all(&mut self) {
        self.heal();
    }
    /// Crashes node `id`.
    pub fn crash_node(&mut self, id: NodeId) {
        self.crash(id as usize - 1);
    }
    /// Crashes node `id`, losing every write it had not made durable.
    pub fn crash_node_losing_unflushed(&mut self, id: NodeId) {
        self.crash_with(id as usize - 1, true);
    }
    /// Makes node `id`'s flushes 20 ms slower for `us` of simulated time.
    pub fn slow_disk(&mut self, id: NodeId, us: u64) {
        self.nodes[id as usize - 1].slow_disk_until_us = self.now_us + us;
    }
    /// Restarts node `id`.
    pub fn restart_node(&mut self, id: NodeId) {
        self.restart(id as usize - 1);
    }
    /// Runs until `pred` holds or `max_us` of simulated time passes; true if it held.
    pub fn run_until(&mut self, max_us: u64, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now_us + max_us;
        while self.now_us <= deadline {
            if pred(self) {
                return true;
            }
            if !self.checker.violations.is_empty() || !self.step() {
                return false;
            }
        }
        pred(self)
    }
    /// Runs for `us` of simulated time.
    pub fn run_for(&mut self, us: u64) {
        let deadline = self.now_us + us;
        while self.now_us < deadline && self.checker.violations.is_empty() && self.step() {}
    }
    /// The leader of the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.role() == Role::Leader)
            .max_by_key(|c| c.term())
            .map(|c| c.id())
    }
    /// Number of nodes (replicas and spares).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
    /// A lease read at node `id`, checked like a client's (no other leader of a later term
    /// may exist while it is served).
    pub fn lease_read(&mut self, id: NodeId) -> Result<Index, Error> {
        let core = self.nodes[id as usize - 1]
            .core
            .as_ref()
            .ok_or(Error::NotLeader { leader_hint: None })?;
        let index = core.lease_read()?;
        let term = core.term();
        for n in &self.nodes {
            if let Some(o) = &n.core
                && o.role() == Role::Leader
                && o.term() > term
            {
                self.checker.lease_overlap(id, term, o.id(), o.term());
            }
        }
        let floor = self.checker.max_committed;
        self.checker.on_read(id, index, floor, true);
        Ok(index)
    }
    /// The trace so far (when tracing).
    pub fn trace(&self) -> Vec<String> {
        self.trace.iter().flatten().cloned().collect()
    }
}

fn body_str(m: &Message) -> String {
    use crate::consensus::Body;
    match &m.body {
        Body::Append { prev_index, prev_term, entries, commit } => format!(
            "Append prev=({prev_index},t{prev_term}) entries={} commit={commit}",
            match (entries.first(), entries.last()) {
                (Some(a), Some(b)) =>
                    format!("{}..={} (t{}..t{})", a.index, b.index, a.term, b.term),
                _ => "[]".to_string(),
            }
        ),
        Body::InstallSnapshot { snapshot } => {
            format!("InstallSnapshot ({}, t{})", snapshot.index, snapshot.term)
        }
        other => format!("{other:?}"),
    }
}

/// Runs one seed with default options.
pub fn run_seed(seed: u64, replicas: usize, steps: u64, bugs: ProtocolBugs) -> SimReport {
    let mut o = SimOptions::new(seed, replicas, steps);
    o.bugs = bugs;
    Sim::new(o).run()
}
