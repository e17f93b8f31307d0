//! Fault tests of a real 3-node cluster: each node is its own `corelog serve` process with its
//! own TOML configuration and data directory, on loopback ports picked by the OS.
//!
//! The promise under test: an acknowledged append survives the crash (SIGKILL) or the stop
//! (SIGTERM) of any minority and the restart of the whole cluster; every node ends up with the
//! same entries at the same indexes; and a client's retries never commit an entry twice.
//!
//! Every test owns its ports and its temporary directory, and its [`Cluster`] kills and reaps
//! its processes when dropped (also when the test panics). The tests of this file run one at a
//! time (a lock): their timing bounds should not depend on how many clusters share the cores.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig, Position, ReadEntry};
use corelog::frame::{EntryKind, EntryRef, FrameLimits, encode_frame};
use corelog::node::proto::{Op, RequestMeta, ResponseMeta, Status};
use corelog::node::{NodeConfig, PeerConfig};
use corelog::wire::{self, Kind};

const BIN: &str = env!("CARGO_BIN_EXE_corelog");

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc {
    id: u64,
    config: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
}

/// A cluster of `corelog serve` processes; dropping it kills and reaps them all.
struct Cluster {
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
    /// Client addresses, in node order (node `id` at `id - 1`).
    addrs: Vec<SocketAddr>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Keep what the nodes said: it is the first thing to read when a test fails.
            for p in &self.procs {
                if let Ok(text) = std::fs::read_to_string(&p.stderr) {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- node {} stderr (last lines) ---", p.id);
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

impl Cluster {
    /// Writes the configurations of `n` nodes and starts them.
    fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<PeerConfig> = (1..=n)
            .map(|id| PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            })
            .collect();
        let mut procs = Vec::new();
        for id in 1..=n {
            let cfg = NodeConfig {
                cluster_id: 7,
                node_id: id,
                data_dir: dir.path().join(format!("n{id}")),
                members: members.clone(),
                segment_bytes: 4 << 20,
                ..NodeConfig::default()
            };
            let config = dir.path().join(format!("n{id}.toml"));
            std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
            let stderr = dir.path().join(format!("n{id}.stderr"));
            procs.push(Proc { id, config, stderr, child: None });
        }
        let addrs = members.iter().map(|m| m.client_addr).collect();
        let mut c = Cluster { _dir: dir, procs, addrs };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// Starts node `id` (again), with its configuration and data directory, and waits until
    /// it accepts clients.
    fn spawn(&mut self, id: u64) {
        let p = &mut self.procs[id as usize - 1];
        assert!(p.child.is_none(), "node {id} is running");
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&p.stderr).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&p.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn corelog serve");
        p.child = Some(child);
        let addr = self.addrs[id as usize - 1];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let p = &mut self.procs[id as usize - 1];
            if let Some(s) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node {id} exited at start: {s}");
            }
            assert!(Instant::now() < deadline, "node {id} does not accept clients after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the node dies at once, in the middle of whatever it was doing.
    fn kill9(&mut self, id: u64) {
        let mut c = self.procs[id as usize - 1].child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM: the node stops gracefully; it must exit successfully within 10 s.
    fn stop(&mut self, id: u64) {
        let mut c = self.procs[id as usize - 1].child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                assert!(s.success(), "node {id} exited with {s} after SIGTERM");
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {id} did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&self) -> Vec<u64> {
        self.procs.iter().filter(|p| p.child.is_some()).map(|p| p.id).collect()
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.addrs[id as usize - 1]
    }

    fn client(&self) -> Client {
        let mut cfg = ClientConfig::new(self.addrs.clone());
        cfg.attempt_timeout = Duration::from_millis(1000);
        Client::new(cfg).unwrap()
    }

    /// A client for status and reads of one node at a time: it gives up fast.
    fn probe(&self) -> Client {
        let mut cfg = ClientConfig::new(self.addrs.clone());
        cfg.deadline = Duration::from_millis(500);
        cfg.attempt_timeout = Duration::from_millis(300);
        Client::new(cfg).unwrap()
    }

    /// Status of group 0 as node `id` sees it.
    fn status(&self, probe: &mut Client, id: u64) -> Option<serde_json::Value> {
        let text = probe.status_of(self.addr(id), 0).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits for a running node that says it leads, in the highest term any running node
    /// reports; returns (leader id, term).
    fn leader(&self, within: Duration) -> (u64, u64) {
        let mut probe = self.probe();
        let deadline = Instant::now() + within;
        loop {
            let mut best: Option<(u64, u64)> = None;
            let mut max_term = 0;
            for id in self.running() {
                if let Some(s) = self.status(&mut probe, id) {
                    let term = s["term"].as_u64().unwrap_or(0);
                    max_term = max_term.max(term);
                    if s["role"] == "Leader" && best.is_none_or(|(_, t)| term > t) {
                        best = Some((id, term));
                    }
                }
            }
            if let Some((id, term)) = best
                && term == max_term
            {
                return (id, term);
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `id` knows entries up to `last` committed, then reads its log `1..=last`.
    fn committed_log(&self, id: u64, last: u64, within: Duration) -> Vec<ReadEntry> {
        let mut probe = self.probe();
        let addr = self.addr(id);
        let deadline = Instant::now() + within;
        loop {
            match probe.read_from(addr, 0, 1, 0, 1) {
                Ok((commit, _)) if commit >= last => break,
                Ok((commit, _)) => assert!(
                    Instant::now() < deadline,
                    "node {id}: commit {commit} did not reach {last} within {within:?}"
                ),
                Err(e) => assert!(Instant::now() < deadline, "node {id}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out: Vec<ReadEntry> = Vec::new();
        let mut lo = 1;
        while lo <= last {
            let (_, entries) = probe
                .read_from(addr, 0, lo, last, 1 << 20)
                .unwrap_or_else(|e| panic!("node {id}: read from {lo}: {e}"));
            assert!(!entries.is_empty(), "node {id}: nothing read at {lo} (commit >= {last})");
            for e in entries {
                assert_eq!(e.index, lo, "node {id}: the log has a gap or is out of order");
                lo += 1;
                out.push(e);
            }
        }
        out
    }

    /// Reads `1..=last` from every running node, checks that they hold the same entries at the
    /// same indexes, and returns that log.
    fn same_log_everywhere(&self, last: u64) -> Vec<ReadEntry> {
        let mut reference: Option<(u64, Vec<ReadEntry>)> = None;
        for id in self.running() {
            let log = self.committed_log(id, last, Duration::from_secs(10));
            match &reference {
                None => reference = Some((id, log)),
                Some((rid, r)) => {
                    assert_eq!(r.len(), log.len());
                    for (a, b) in r.iter().zip(&log) {
                        assert_eq!(a, b, "nodes {rid} and {id} differ at index {}", a.index);
                    }
                }
            }
        }
        reference.expect("a running node").1
    }
}

/// One acknowledged append of a writer.
#[derive(Clone)]
struct Acked {
    pos: Position,
    data: Vec<u8>,
    at: Instant,
}

fn payload(writer: usize, n: u64) -> Vec<u8> {
    // Unique and recognisable, with some bulk so that frames carry a few KiB.
    let mut p = format!("w{writer}-n{n}-").into_bytes();
    p.resize(200, b'.');
    p
}

/// Checks that every acknowledged append is in `log` exactly once, at its acknowledged index,
/// and that no payload (acknowledged or not) appears twice; returns the number of client
/// entries in the log.
fn check_exactly_once(log: &[ReadEntry], acked: &[Acked]) -> usize {
    let by_index: HashMap<u64, &ReadEntry> = log.iter().map(|e| (e.index, e)).collect();
    let mut seen_data: HashSet<&[u8]> = HashSet::new();
    let mut seen_seq: HashSet<(u64, u64)> = HashSet::new();
    let mut dup_data = 0;
    let mut dup_seq = 0;
    let mut normal = 0;
    for e in log.iter().filter(|e| e.kind == EntryKind::Normal) {
        normal += 1;
        if !seen_data.insert(&e.data) {
            dup_data += 1;
            eprintln!("duplicate payload at {}: {}", e.index, String::from_utf8_lossy(&e.data));
        }
        if !seen_seq.insert((e.session, e.seq)) {
            dup_seq += 1;
            eprintln!("duplicate (session {}, seq {}) at {}", e.session, e.seq, e.index);
        }
    }
    println!("duplicates: {dup_data} payloads, {dup_seq} (session, sequence) pairs");
    assert_eq!(dup_data, 0, "a payload was committed more than once");
    assert_eq!(dup_seq, 0, "a (session, sequence) was committed more than once");
    for a in acked {
        let e = by_index.get(&a.pos.index).unwrap_or_else(|| {
            panic!("acknowledged index {} is missing", a.pos.index);
        });
        assert_eq!(e.kind, EntryKind::Normal, "acknowledged index {} is not client data", e.index);
        assert_eq!(
            e.data, a.data,
            "index {} holds another payload than the one acknowledged there",
            e.index
        );
    }
    normal
}

#[test]
fn sigkill_leader_under_load_loses_and_duplicates_nothing() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
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
    let log = cluster.same_log_everywhere(last);
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
    let mut cluster = Cluster::start(3);
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
    cluster.committed_log(follower, last, Duration::from_secs(10));
    let before_stop = last;
    cluster.stop(follower);
    println!("stopped follower {follower} (SIGTERM) at index {before_stop}");
    for n in 101..=300 {
        last = append(&mut client, n);
    }
    cluster.spawn(follower);
    // What it recovered from its own disk: at least everything it held before it stopped.
    let mut probe = cluster.probe();
    let s = cluster.status(&mut probe, follower).expect("status of the restarted follower");
    println!("restarted follower {follower}: {s}");
    assert!(
        s["last_index"].as_u64().unwrap() >= before_stop,
        "the follower lost entries it held before the stop: {s}"
    );
    let t0 = Instant::now();
    let log = cluster.same_log_everywhere(last);
    println!("follower {follower} caught up to {last} in {:?}", t0.elapsed());
    let normal = check_exactly_once(&log, &acked);
    assert_eq!(normal, 300);
    // Its commit index and last index agree with the leader's.
    let (leader, _) = cluster.leader(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = cluster.status(&mut probe, leader).unwrap();
        let f = cluster.status(&mut probe, follower).unwrap();
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
    let mut cluster = Cluster::start(3);
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
    let before = cluster.same_log_everywhere(last);

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

    let after = cluster.same_log_everywhere(pos2.index);
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

/// Writer threads, each with its own client (its own session), appending unique payloads
/// until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Writers {
    fn start(cluster: &Cluster, n: usize, first_writer: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let threads = (first_writer..first_writer + n)
            .map(|w| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let mut client = cluster.client();
                std::thread::spawn(move || {
                    let (mut failed, mut last_index, mut n) = (0u64, 0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let data = payload(w, n);
                        match client.append(0, &data) {
                            Ok(pos) => {
                                assert!(pos.index > last_index, "a session's positions increase");
                                last_index = pos.index;
                                acked.lock().unwrap().push(Acked { pos, data, at: Instant::now() });
                            }
                            Err(e) => {
                                failed += 1;
                                eprintln!("writer {w}: append {n} failed: {e}");
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        Writers { stop, acked, threads }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` appends beyond the current count are acknowledged.
    fn wait_for(&self, more: usize, within: Duration) -> Duration {
        let t0 = Instant::now();
        let target = self.count() + more;
        while self.count() < target {
            assert!(t0.elapsed() < within, "fewer than {more} appends acknowledged in {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    }

    fn finish(self) -> (Vec<Acked>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.threads.into_iter().map(|t| t.join().expect("writer panicked")).sum();
        let acked = self.acked.lock().unwrap().clone();
        (acked, failed)
    }
}

#[test]
fn repeated_crashes_under_load_lose_nothing() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.leader(Duration::from_secs(10));
    let writers = Writers::start(&cluster, 3, 10);
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
    let log = cluster.same_log_everywhere(last);
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

impl Cluster {
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
    let mut cluster = Cluster::start(3);
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
        let s = cluster.status(&mut probe, lagging);
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
