//! The runtime contract of the consensus core, checked message by message with durability
//! under the test's control (no simulator).

use bytes::Bytes;
use corelog::consensus::{
    Body, Bound, Config, Entry, Error, Fetch, Membership, Message, Node, Proposed, Ready, Reply,
    Role,
};

/// Three nodes wired by hand. Durability is reported only when a test says so.
struct Cluster {
    nodes: Vec<Node>,
    /// Per node: writes handed out and not yet reported durable.
    unflushed: Vec<Vec<Ready>>,
    net: Vec<Message>,
    replies: Vec<Reply>,
    /// Per node: trim points offered in `Ready::trim`.
    trims: Vec<Vec<u64>>,
    /// Per node: the entries reported durable (its disk), and reads of it asked for.
    disk: Vec<Vec<Entry>>,
    fetches: Vec<Vec<Fetch>>,
}

impl Cluster {
    fn new(cfg: Config) -> Self {
        let m = Membership::with_voters(&[(1, 1), (2, 1), (3, 1)]);
        Self {
            nodes: (1..=3).map(|id| Node::new(id, cfg.clone(), m.clone(), 7)).collect(),
            unflushed: vec![Vec::new(), Vec::new(), Vec::new()],
            net: Vec::new(),
            replies: Vec::new(),
            trims: vec![Vec::new(), Vec::new(), Vec::new()],
            disk: vec![Vec::new(), Vec::new(), Vec::new()],
            fetches: vec![Vec::new(), Vec::new(), Vec::new()],
        }
    }

    fn n(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Collects every node's Ready: messages onto the network, writes into `unflushed`.
    fn collect(&mut self) {
        for i in 0..3 {
            let mut rd = self.nodes[i].take_ready();
            self.net.append(&mut rd.messages);
            self.replies.append(&mut rd.replies);
            self.trims[i].extend(rd.trim.take());
            self.fetches[i].append(&mut rd.fetches);
            if rd.entries.is_some() || rd.hard_state.is_some() || rd.snapshot.is_some() {
                self.unflushed[i].push(rd);
            }
        }
    }

    /// Reports every pending write of node `id` durable.
    fn flush(&mut self, id: u64) {
        self.collect();
        let i = id as usize - 1;
        for rd in std::mem::take(&mut self.unflushed[i]) {
            if let Some(hs) = rd.hard_state {
                self.nodes[i].on_hard_state_durable(hs);
            }
            if let Some(w) = &rd.entries {
                let disk = &mut self.disk[i];
                disk.retain(|e| e.index < w.first_index);
                disk.extend(w.entries.iter().cloned());
                let last = w.entries.last().unwrap();
                self.nodes[i].on_entries_durable(last.index, last.term);
            }
        }
        self.collect();
    }

    /// Answers node `id`'s reads of its log from its disk; returns how many there were.
    fn answer_fetches(&mut self, id: u64) -> usize {
        let i = id as usize - 1;
        let fetches = std::mem::take(&mut self.fetches[i]);
        for f in &fetches {
            let mut bytes = 0;
            let entries: Vec<Entry> = self.disk[i]
                .iter()
                .filter(|e| e.index >= f.lo && e.index <= f.hi)
                .take_while(|e| {
                    bytes += e.size_bytes();
                    bytes <= f.max_bytes
                })
                .cloned()
                .collect();
            self.nodes[i].on_fetched(f.lo, entries);
        }
        fetches.len()
    }

    /// Delivers every message in flight (and what they cause), flushing every disk at once,
    /// until quiet.
    fn settle(&mut self) {
        self.settle_dropping(|_| false);
    }

    /// `settle`, with the messages `lost` picks lost.
    fn settle_dropping(&mut self, lost: impl Fn(&Message) -> bool) {
        for _ in 0..100 {
            self.collect();
            for id in 1..=3 {
                self.flush(id);
            }
            self.net.retain(|m| !lost(m));
            if self.net.is_empty() {
                return;
            }
            for m in std::mem::take(&mut self.net) {
                let to = m.to;
                self.n(to).step(m);
            }
        }
        panic!("did not settle");
    }

    /// One heartbeat round from node 1 (the leader), delivered.
    fn heartbeat_1(&mut self) {
        for _ in 0..self.n(1).config().heartbeat_tick {
            self.n(1).tick();
        }
        self.settle();
    }

    fn elect_1(&mut self) {
        self.n(1).campaign();
        self.settle();
        assert_eq!(self.n(1).role(), Role::Leader);
    }
}

fn quiet_cfg() -> Config {
    Config { election_tick: 1_000, ..Config::default() }
}

#[test]
fn messages_wait_for_the_hard_state_they_depend_on() {
    let mut c = Cluster::new(Config { pre_vote: false, ..quiet_cfg() });
    c.n(1).campaign();
    let rd = c.n(1).take_ready();
    let hs = rd.hard_state.expect("term and vote to persist");
    assert_eq!((hs.term, hs.vote), (1, Some(1)));
    assert!(rd.messages.is_empty(), "RequestVote sent before the vote was durable");
    c.n(1).on_hard_state_durable(hs);
    let rd = c.n(1).take_ready();
    assert_eq!(rd.messages.len(), 2);
    assert!(rd.messages.iter().all(|m| matches!(m.body, Body::RequestVote { .. })));
    // A voter does not answer before its own vote is durable either.
    let req = rd.messages[0].clone();
    c.n(2).step(req);
    let rd = c.n(2).take_ready();
    assert!(rd.hard_state.is_some_and(|h| h.vote == Some(1)));
    assert!(rd.messages.is_empty(), "vote granted before it was durable");
    c.n(2).on_hard_state_durable(rd.hard_state.unwrap());
    let rd = c.n(2).take_ready();
    assert!(matches!(rd.messages[0].body, Body::VoteResponse { granted: true, .. }));
}

#[test]
fn a_follower_acknowledges_only_durable_entries() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    let Proposed::Appended { index, .. } = c.n(1).propose(9, 1, Bytes::from_static(b"x")).unwrap()
    else {
        panic!("not appended")
    };
    c.collect();
    let appends = std::mem::take(&mut c.net);
    for m in appends.into_iter().filter(|m| m.to == 2) {
        c.n(2).step(m);
    }
    c.collect();
    assert!(
        !c.net.iter().any(|m| m.from == 2
            && matches!(m.body, Body::AppendResponse { success: true, match_index, .. } if match_index >= index)),
        "acknowledged before durable"
    );
    c.flush(2);
    assert!(c.net.iter().any(|m| m.from == 2
        && matches!(m.body, Body::AppendResponse { success: true, match_index, .. } if match_index == index)));
}

#[test]
fn the_leader_counts_its_own_flush_towards_the_quorum() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    let before = c.n(1).commit_index();
    c.n(1).propose(9, 1, Bytes::from_static(b"x")).unwrap();
    c.collect();
    // Only node 2 receives and flushes; node 3 is cut off; the leader has not flushed.
    for m in std::mem::take(&mut c.net).into_iter().filter(|m| m.to == 2) {
        c.n(2).step(m);
    }
    c.flush(2);
    for m in std::mem::take(&mut c.net).into_iter().filter(|m| m.to == 1) {
        c.n(1).step(m);
    }
    c.collect();
    assert_eq!(c.n(1).commit_index(), before, "committed without the leader's flush");
    c.flush(1);
    assert_eq!(c.n(1).commit_index(), before + 1);
    assert!(
        c.replies.iter().any(|r| matches!(r, Reply::Committed { session: 9, sequence: 1, .. }))
    );
}

#[test]
fn a_retried_proposal_is_appended_once() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    assert!(c.n(1).is_new_proposal(5, 1));
    let first = c.n(1).propose(5, 1, Bytes::from_static(b"a")).unwrap();
    let Proposed::Appended { index, term } = first else { panic!("{first:?}") };
    // A retry adds nothing (the node's full-disk check asks before it needs room).
    assert!(!c.n(1).is_new_proposal(5, 1));
    assert!(c.n(1).is_new_proposal(5, 2) && c.n(1).is_new_proposal(0, 1));
    assert_eq!(
        c.n(1).propose(5, 1, Bytes::from_static(b"a")).unwrap(),
        Proposed::Pending { index }
    );
    c.settle();
    assert!(!c.n(1).is_new_proposal(5, 1));
    assert_eq!(
        c.n(1).propose(5, 1, Bytes::from_static(b"a")).unwrap(),
        Proposed::Duplicate { index, term }
    );
    assert!(matches!(
        c.n(1).propose(5, 0, Bytes::from_static(b"a")),
        Err(Error::StaleSequence { latest: 1, .. })
    ));
    // Every replica's session table agrees.
    for id in 2..=3 {
        assert_eq!(
            c.n(id).sessions().lookup(5, 1),
            corelog::consensus::session::Lookup::Committed { index, term }
        );
    }
    // And a new leader (by transfer: node 2 would not win against a live leader's lease)
    // answers the retry from the same table.
    c.n(1).transfer_leader(2).unwrap();
    c.settle();
    assert_eq!(c.n(2).role(), Role::Leader);
    assert_eq!(
        c.n(2).propose(5, 1, Bytes::from_static(b"a")).unwrap(),
        Proposed::Duplicate { index, term }
    );
}

#[test]
fn bounds_turn_into_busy_errors() {
    let mut c = Cluster::new(Config { max_pending_proposals: 2, ..quiet_cfg() });
    c.elect_1();
    c.n(1).propose(0, 0, Bytes::from_static(b"a")).unwrap();
    c.n(1).propose(0, 0, Bytes::from_static(b"b")).unwrap();
    assert_eq!(
        c.n(1).propose(0, 0, Bytes::from_static(b"c")),
        Err(Error::Busy { bound: Bound::PendingProposals })
    );
    c.settle();
    c.n(1).propose(0, 0, Bytes::from_static(b"c")).unwrap();

    let mut c = Cluster::new(Config {
        max_uncommitted_bytes: 4_200_000,
        max_entry_bytes: 4_000_000,
        ..quiet_cfg()
    });
    c.elect_1();
    let big = Bytes::from(vec![0u8; 3_000_000]);
    c.n(1).propose(0, 0, big.clone()).unwrap();
    assert_eq!(
        c.n(1).propose(0, 0, big.clone()),
        Err(Error::Busy { bound: Bound::UncommittedBytes })
    );
    assert!(matches!(
        c.n(1).propose(0, 0, Bytes::from(vec![0u8; 4_000_001])),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn followers_redirect_to_the_leader() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    assert_eq!(
        c.n(2).propose(0, 0, Bytes::from_static(b"a")),
        Err(Error::NotLeader { leader_hint: Some(1) })
    );
    assert!(matches!(c.n(3).read_index(1), Err(Error::NotLeader { leader_hint: Some(1) })));
}

#[test]
fn proposals_between_two_readies_form_one_batch() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    c.settle();
    for i in 0..100u64 {
        c.n(1).propose(0, 0, Bytes::copy_from_slice(&i.to_le_bytes())).unwrap();
    }
    let rd = c.n(1).take_ready();
    let w = rd.entries.expect("one log write");
    assert_eq!(w.entries.len(), 100);
    let appends: Vec<_> = rd
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            Body::Append { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![100, 100], "one message per follower");
    let st = c.n(1).status();
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.last_index, st.commit_index + 100);
    assert_eq!(st.followers.len(), 2);
    assert!(st.followers.iter().all(|f| f.inflight_msgs == 1));
}

#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut c = Cluster::new(Config { lease_read: false, ..quiet_cfg() });
    c.elect_1();
    c.settle();
    let commit = c.n(1).commit_index();
    c.n(1).read_index(42).unwrap();
    c.collect();
    assert!(
        !c.replies.iter().any(|r| matches!(r, Reply::ReadReady { id: 42, .. })),
        "read served before a quorum confirmed leadership"
    );
    c.settle();
    assert!(c.replies.contains(&Reply::ReadReady { id: 42, index: commit }));
    assert_eq!(c.n(1).lease_read(), Err(Error::NoLease));
}

#[test]
fn malformed_appends_never_touch_the_log() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    c.settle();
    let last = c.n(2).last_index();
    let e = |index, term| corelog::consensus::Entry {
        index,
        term,
        kind: corelog::consensus::EntryKind::Normal,
        session: 0,
        sequence: 0,
        data: Bytes::from_static(b"x"),
    };
    let bad = [
        vec![e(last + 2, 1)],                 // a hole
        vec![e(last + 1, 1), e(last + 1, 1)], // not contiguous
        vec![e(last + 1, 9)],                 // a term above the message's
    ];
    for entries in bad {
        c.n(2).step(Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::Append { prev_index: last, prev_term: 1, entries, commit: 0 },
        });
        assert_eq!(c.n(2).last_index(), last);
        assert!(c.n(2).take_ready().entries.is_none());
    }
}

#[test]
fn followers_follow_the_leaders_trim_once_committed() {
    let mut c = Cluster::new(quiet_cfg());
    c.elect_1();
    for i in 0..10u64 {
        c.n(1).propose(0, 0, Bytes::copy_from_slice(&i.to_le_bytes())).unwrap();
    }
    c.settle();
    c.heartbeat_1();
    let commit = c.n(1).commit_index();
    assert!(commit >= 10);
    assert!(c.trims.iter().all(Vec::is_empty), "trim offered before any trim: {:?}", c.trims);

    // The application checkpointed on the leader.
    let at = commit - 3;
    assert!(c.n(1).trim(at, Bytes::new()).is_some());
    c.heartbeat_1();
    assert_eq!(c.trims[0], Vec::<u64>::new(), "a leader follows no one");
    for id in [2u64, 3] {
        let i = id as usize - 1;
        assert_eq!(c.trims[i], vec![at], "node {id}");
        assert!(c.n(id).commit_index() >= at);
        // Offered once: a follower may let it pass, and is not asked again until it moves.
        assert_eq!(c.n(id).snapshot_index(), 0);
    }
    c.heartbeat_1();
    assert_eq!(c.trims[1], vec![at], "offered again without moving");
    let s = c.n(2).trim(at, Bytes::new()).expect("a follower trims where the leader did");
    assert_eq!((s.index, c.n(2).snapshot_index()), (at, at));

    // A follower that holds the trim point durably but has not learned it is committed (its
    // acknowledgements are lost) is offered only what it knows committed.
    c.n(1).propose(0, 0, Bytes::from_static(b"x")).unwrap();
    c.settle_dropping(|m| m.from == 3);
    let new_commit = c.n(1).commit_index();
    assert_eq!(new_commit, commit + 1);
    assert_eq!((c.n(3).durable_index(), c.n(3).commit_index()), (new_commit, commit));
    c.n(1).trim(new_commit, Bytes::new()).unwrap();
    for _ in 0..c.n(1).config().heartbeat_tick {
        c.n(1).tick();
    }
    c.settle_dropping(|m| m.from == 3);
    assert_eq!(c.n(3).commit_index(), commit);
    assert_eq!(c.trims[2], vec![at, commit], "node 3 was offered what it has not committed");
}

/// A follower behind the leader's entry cache is fed from the leader's disk; one read brings
/// several batches, and each goes out as its own append while the follower's window has room
/// (one append per read held a follower fed from disk to a fraction of the write rate).
#[test]
fn a_follower_fed_from_disk_gets_several_appends_per_read() {
    let cfg = Config {
        max_cache_bytes: 2 << 10,
        max_batch_bytes: 1 << 10,
        max_inflight_bytes: 1 << 20,
        ..quiet_cfg()
    };
    let mut c = Cluster::new(cfg);
    c.elect_1();
    // Node 3 hears nothing while 200 entries of 100 bytes commit on nodes 1 and 2.
    for i in 0..200u64 {
        c.n(1).propose(0, 0, Bytes::from(vec![i as u8; 100])).unwrap();
        c.settle_dropping(|m| m.to == 3 || m.from == 3);
    }
    let last = c.n(1).last_index();
    assert!(c.n(1).commit_index() == last && c.n(3).last_index() < 10);
    // Back: the leader probes node 3, then serves it from disk until it has everything.
    let (mut reads, mut big_reads) = (0, 0);
    let mut appends_to_3 = 0;
    for _ in 0..200 {
        c.heartbeat_1();
        loop {
            c.collect();
            for f in &c.fetches[0] {
                // A probe reads one batch; a follower in Replicate, four.
                assert!([1 << 10, 4 << 10].contains(&f.max_bytes), "{}", f.max_bytes);
                big_reads += usize::from(f.max_bytes == 4 << 10);
            }
            let n = c.answer_fetches(1);
            if n == 0 {
                break;
            }
            reads += n;
            c.collect();
            appends_to_3 += c
                .net
                .iter()
                .filter(|m| {
                    m.to == 3
                        && matches!(&m.body, Body::Append { entries, .. } if !entries.is_empty())
                })
                .count();
            c.settle();
        }
        if c.n(3).durable_index() == last {
            break;
        }
    }
    assert_eq!(c.n(3).durable_index(), last, "node 3 caught up");
    // About 200 x 124 bytes = 24 KiB: 24 appends of a batch, from 6-7 reads of four.
    assert!(big_reads > 0, "no read of four batches in {reads}");
    assert!(appends_to_3 >= 2 * reads, "{reads} reads gave {appends_to_3} appends");
}
