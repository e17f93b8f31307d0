//! Fault tests of a real 3-node cluster: each node is its own `corelog serve` process with its
//! own TOML configuration and data directory, on loopback ports picked by the OS.
//!
//! The promise under test: an acknowledged append survives the crash (SIGKILL) or the stop
//! (SIGTERM) of any minority and the restart of the whole cluster; every node ends up with the
//! same entries at the same indexes; and a client's retries never commit an entry twice.
//!
//! Every test owns its ports and its temporary directory, and its `ProcCluster` (from
//! `tests/common`) kills and reaps its processes when dropped (also when the test panics). The tests of this file run one at a
//! time (a lock): their timing bounds should not depend on how many clusters share the cores.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{Acked, Options, ProcCluster, Writers, check_exactly_once};
use corelog::client::Client;
use corelog::frame::{EntryKind, EntryRef, FrameLimits, encode_frame};
use corelog::node::proto::{Op, RequestMeta, ResponseMeta, Status};
use corelog::wire::{self, Kind};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn payload(writer: usize, n: u64) -> Vec<u8> {
    // Unique and recognisable, with some bulk so that frames carry a few KiB.
    let mut p = format!("w{writer}-n{n}-").into_bytes();
    p.resize(200, b'.');
    p
}

#[test]
fn sigkill_leader_under_load_loses_and_duplicates_nothing() {
    let _serial = serial();
    let mut cluster = ProcCluster::start(Options::default());
    let (leader, term0) = cluster.leader(Duration::from_secs(10));
    println!("leader: node {leader} in term {term0}");

    const WRITERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut client = cluster.client();
        threads.push(std::thread::spawn(move || {
            let mut failed = 0u64;
            let mut last_index = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let data = payload(w, n);
                match client.append(0, &data) {
                    Ok(pos) => {
                        assert!(pos.index > last_index, "a session's positions increase");
                        last_index = pos.index;
                        acked.lock().unwrap().push(Acked { pos, data, at: Instant::now() });
                    }
                    // Unknown outcome: the payload may be in the log once, or not at all. The
                    // next append uses a new payload, so that a duplicate stays detectable.
                    Err(e) => {
                        failed += 1;
                        eprintln!("writer {w}: append {n} failed: {e}");
                    }
                }
            }
            failed
        }));
    }
    let count = |acked: &Arc<Mutex<Vec<Acked>>>| acked.lock().unwrap().len();

    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = count(&acked);
    assert!(before_kill > 0, "no append acknowledged before the kill");
    let killed_at = Instant::now();
    cluster.kill9(leader);
    println!("killed node {leader} (SIGKILL) after {before_kill} acknowledged appends");

    // A new leader must take over and appends must be acknowledged again, in a later term.
    let bound = Duration::from_secs(5);
    let first_new = loop {
        let first = acked.lock().unwrap().iter().find(|a| a.pos.term > term0).map(|a| a.at);
        if let Some(at) = first {
            break at;
        }
        assert!(
            killed_at.elapsed() < bound,
            "no append acknowledged in a new term within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let recovery = first_new.duration_since(killed_at);
    let (new_leader, term1) = cluster.leader(Duration::from_secs(5));
    assert_ne!(new_leader, leader);
    println!(
        "new leader: node {new_leader} in term {term1}; first append acknowledged in the new \
         term {recovery:?} after the kill"
    );

    std::thread::sleep(Duration::from_millis(1500));
    cluster.spawn(leader);
    println!("restarted node {leader}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let failed: u64 = threads.into_iter().map(|t| t.join().expect("writer panicked")).sum();

    let acked = acked.lock().unwrap().clone();
    let last = acked.iter().map(|a| a.pos.index).max().unwrap();
    let log = cluster.same_log_everywhere(0, last);
    let normal = check_exactly_once(&log, &acked);
    println!(
        "appends acknowledged: {} ({before_kill} before the kill), failed (unknown outcome): \
         {failed}; log 1..={last}: {} entries, {normal} of clients, identical on {} nodes",
        acked.len(),
        log.len(),
        cluster.running().len()
    );
    assert_eq!(cluster.running().len(), 3);
    assert!(recovery < bound);
}

#[test]
fn stopped_follower_recovers_from_disk_and_catches_up() {
    let _serial = serial();
    let mut cluster = ProcCluster::start(Options::default());
    let (leader, _) = cluster.leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut client = cluster.client();
    let mut acked = Vec::new();
    let mut append = |client: &mut Client, n: u64| {
        let data = payload(0, n);
        let pos = client.append(0, &data).expect("append");
        acked.push(Acked { pos, data, at: Instant::now() });
        pos.index
    };
    let mut last = 0;
    for n in 1..=100 {
        last = append(&mut client, n);
    }
    // The follower holds the first 100 before it stops.
    cluster.committed_log(follower, 0, last, Duration::from_secs(10));
    let before_stop = last;
    cluster.stop(follower);
    println!("stopped follower {follower} (SIGTERM) at index {before_stop}");
    for n in 101..=300 {
        last = append(&mut client, n);
    }
    cluster.spawn(follower);
    // What it recovered from its own disk: at least everything it held before it stopped.
    let mut probe = cluster.probe();
    let s = cluster.status(&mut probe, follower, 0).expect("status of the restarted follower");
    println!("restarted follower {follower}: {s}");
    assert!(
        s["last_index"].as_u64().unwrap() >= before_stop,
        "the follower lost entries it held before the stop: {s}"
    );
    let t0 = Instant::now();
    let log = cluster.same_log_everywhere(0, last);
    println!("follower {follower} caught up to {last} in {:?}", t0.elapsed());
    let normal = check_exactly_once(&log, &acked);
    assert_eq!(normal, 300);
    // Its commit index and last index agree with the leader's.
    let (leader, _) = cluster.leader(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = cluster.status(&mut probe, leader, 0).unwrap();
        let f = cluster.status(&mut probe, follower, 0).unwrap();
        if l["commit_index"] == f["commit_index"] && l["last_index"] == f["last_index"] {
            break;
        }
        assert!(Instant::now() < deadline, "follower does not match the leader:\n{l}\n{f}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_cluster_restart_keeps_the_log_and_continues() {
    let _serial = serial();
    let mut cluster = ProcCluster::start(Options::default());
    cluster.leader(Duration::from_secs(10));
    let mut client = cluster.client();
    let mut acked = Vec::new();
    for n in 1..=100 {
        let data = payload(0, n);
        let pos = client.append(0, &data).expect("append");
        acked.push(Acked { pos, data, at: Instant::now() });
    }
    let batch: Vec<Vec<u8>> = (101..=150).map(|n| payload(0, n)).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
    for (pos, data) in client.append_many(0, &refs).expect("append_many").into_iter().zip(&batch) {
        acked.push(Acked { pos, data: data.clone(), at: Instant::now() });
    }
    let last = acked.last().unwrap().pos.index;
    let before = cluster.same_log_everywhere(0, last);

    for id in 1..=3 {
        cluster.stop(id);
    }
    println!("stopped all three nodes (SIGTERM) at index {last}");
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let t0 = Instant::now();
    let (leader, term) = cluster.leader(Duration::from_secs(10));
    println!("after the restart: leader node {leader} in term {term} after {:?}", t0.elapsed());

    // The same client (same session, next sequences) and a new one both continue the log.
    let data = payload(0, 151);
    let pos = client.append(0, &data).expect("append after the restart");
    acked.push(Acked { pos, data, at: Instant::now() });
    let mut other = cluster.client();
    let data = payload(1, 1);
    let pos2 = other.append(0, &data).expect("append of a new client after the restart");
    acked.push(Acked { pos: pos2, data, at: Instant::now() });
    println!("first appends after the restart at {} and {}", pos.index, pos2.index);
    assert!(pos.index > last && pos2.index > pos.index);

    let after = cluster.same_log_everywhere(0, pos2.index);
    assert_eq!(&after[..before.len()], &before[..], "the log before the restart changed");
    // Between the old end and the new appends there is only what new leaders append.
    for e in &after[before.len()..] {
        if e.index != pos.index && e.index != pos2.index {
            assert_ne!(e.kind, EntryKind::Normal, "unexpected client entry at {}", e.index);
        }
    }
    let normal = check_exactly_once(&after, &acked);
    assert_eq!(normal, 152);
}

#[test]
fn repeated_crashes_under_load_lose_nothing() {
    let _serial = serial();
    let mut cluster = ProcCluster::start(Options::default());
    let (leader, _) = cluster.leader(Duration::from_secs(10));
    let writers = Writers::start(&cluster, 3, 10, payload);
    writers.wait_for(500, Duration::from_secs(5));

    // A follower crashes in the middle of its writes and comes back.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    cluster.kill9(follower);
    writers.wait_for(300, Duration::from_secs(5));
    cluster.spawn(follower);
    writers.wait_for(300, Duration::from_secs(5));
    println!("SIGKILL and restart of follower {follower}: {} acknowledged", writers.count());

    // Each node in turn crashes while leading and comes back.
    for round in 0..2 {
        let (leader, _) = cluster.leader(Duration::from_secs(5));
        cluster.kill9(leader);
        let t = writers.wait_for(100, Duration::from_secs(5));
        cluster.spawn(leader);
        writers.wait_for(300, Duration::from_secs(5));
        println!(
            "round {round}: SIGKILL of leader {leader}, appends resumed after {t:?}; {} \
             acknowledged",
            writers.count()
        );
    }

    // The whole cluster crashes at once; the writers retry across the restart.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    let acked_at_crash = writers.count();
    std::thread::sleep(Duration::from_millis(300));
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let t = writers.wait_for(300, Duration::from_secs(10));
    println!("SIGKILL of all nodes at {acked_at_crash} acknowledged; appends resumed after {t:?}");

    let (acked, failed) = writers.finish();
    let last = acked.iter().map(|a| a.pos.index).max().unwrap();
    let log = cluster.same_log_everywhere(0, last);
    let normal = check_exactly_once(&log, &acked);
    println!(
        "appends acknowledged: {}, failed (unknown outcome): {failed}; log 1..={last}: {} \
         entries, {normal} of clients, identical on 3 nodes",
        acked.len(),
        log.len()
    );
}

/// Sends one append of `(session, seq)` to `addr` (the leader's client port) with a raw
/// request, as a client that retries an old request would; returns the status and payload.
fn raw_append(addr: SocketAddr, session: u64, seq: u64, data: &[u8]) -> (Status, Vec<u8>) {
    use std::io::{Read, Write};
    use zerocopy::{FromBytes, IntoBytes};
    let entry = EntryRef { kind: EntryKind::Normal, session, seq, data };
    let mut frame = Vec::new();
    encode_frame(&mut frame, 0, 0, 1, &[entry], FrameLimits::default()).unwrap();
    let meta = RequestMeta::new(Op::Append, session, seq, 0);
    let mut out = Vec::new();
    wire::encode(&mut out, Kind::Request, 0, 1, meta.as_bytes(), frame.len());
    out.extend_from_slice(&frame);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&out).unwrap();
    let mut env = [0u8; wire::ENVELOPE_LEN];
    s.read_exact(&mut env).unwrap();
    let e = wire::check_envelope(&env, 1 << 30).unwrap();
    let mut buf = vec![0u8; wire::message_len(e)];
    buf[..wire::ENVELOPE_LEN].copy_from_slice(&env);
    s.read_exact(&mut buf[wire::ENVELOPE_LEN..]).unwrap();
    let m = wire::verify(&buf, 1 << 30).unwrap();
    let rm = ResponseMeta::read_from_bytes(m.meta).unwrap();
    (Status::from_code(rm.status).unwrap(), m.frames.to_vec())
}

fn position_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

impl ProcCluster {
    /// Restarts whoever else leads until node `id` does.
    fn make_leader(&mut self, id: u64) {
        for round in 0.. {
            let (l, _) = self.leader(Duration::from_secs(10));
            if l == id {
                return;
            }
            assert!(round < 20, "node {id} never became the leader");
            self.stop(l);
            self.leader(Duration::from_secs(10));
            self.spawn(l);
        }
    }
}

/// Both ways a node comes to hold a snapshot: it trims its own log (the leader, on a client's
/// trim), or a leader whose log no longer holds what it needs sends it one. Either way, after
/// a restart of the whole cluster, that node as the leader must still know every session: a
/// retry of an append committed before the snapshot gets its original position, an older
/// sequence is refused.
#[test]
fn retries_are_deduplicated_after_a_trim_and_a_restart() {
    let _serial = serial();
    let mut cluster = ProcCluster::start(Options::default());
    let (leader, _) = cluster.leader(Duration::from_secs(10));
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    let mut client = cluster.client();
    let session = client.session();
    let mut positions = Vec::new();
    for n in 1..=30 {
        if n == 21 {
            cluster.stop(lagging);
        }
        positions.push(client.append(0, &payload(0, n)).expect("append").index);
    }
    // A retry of the last request gets the original position back; an older one is refused.
    let (st, p) = raw_append(cluster.addr(leader), session, 30, &payload(0, 30));
    assert_eq!(st, Status::Ok);
    assert_eq!(position_of(&p), positions[29], "a retry got a new position");
    let (st, _) = raw_append(cluster.addr(leader), session, 5, &payload(0, 5));
    assert_eq!(st, Status::StaleSequence);

    // The database checkpoints: the leader's prefix goes. The lagging follower comes back and
    // needs entries that are gone: it gets a snapshot.
    let last = positions[29];
    client.trim(0, last).expect("trim");
    cluster.spawn(lagging);
    let mut probe = cluster.probe();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = cluster.status(&mut probe, lagging, 0);
        if s.as_ref().is_some_and(|s| s["commit_index"].as_u64() >= Some(last)) {
            println!("node {lagging} after catching up: {}", s.unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "node {lagging} did not catch up: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The whole cluster restarts; each of the two leads in turn.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    for (id, how) in [(leader, "trimmed its log"), (lagging, "installed a snapshot")] {
        cluster.make_leader(id);
        let (st, p) = raw_append(cluster.addr(id), session, 30, &payload(0, 30));
        let got = p.get(..8).map(position_of);
        println!("node {id} ({how}) leads: retry of sequence 30: {st:?} at {got:?}");
        assert_eq!(st, Status::Ok);
        assert_eq!(got, Some(last), "node {id} ({how}) appended a retry again");
        let (st, p) = raw_append(cluster.addr(id), session, 5, &payload(0, 5));
        println!("node {id} ({how}) leads: retry of sequence 5: {st:?}");
        assert_eq!(st, Status::StaleSequence, "{}", String::from_utf8_lossy(&p));
    }
    // And the session goes on.
    let pos = client.append(0, &payload(0, 31)).expect("append after the restart");
    assert!(pos.index > last);
}
