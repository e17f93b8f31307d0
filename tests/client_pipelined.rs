//! The pipelined client against a running 3-node cluster (in this process, real TCP and
//! files): many appends in flight on one connection, each acknowledged at the position where
//! the log holds its bytes, exactly once, also across a leader change.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::LocalCluster;
use corelog::client::{ClientError, Position};
use corelog::client_pipelined::{PipelinedClient, PipelinedConfig};

fn data(k: u64) -> Vec<u8> {
    let mut d = format!("pipelined-{k}-").into_bytes();
    d.resize(100 + (k % 300) as usize, (k % 251) as u8);
    d
}

type Acks = Arc<Mutex<HashMap<u64, Result<Position, String>>>>;

/// Submits appends `0..n` through `client` with callbacks; returns the outcomes by `k`.
fn append_all(client: &PipelinedClient, n: u64, during: impl FnOnce(u64)) -> Acks {
    let acks: Acks = Arc::new(Mutex::new(HashMap::new()));
    let mut during = Some(during);
    for k in 0..n {
        let a = acks.clone();
        client
            .append_with(0, &data(k), move |r: Result<Position, ClientError>| {
                a.lock().unwrap().insert(k, r.map_err(|e| e.to_string()));
            })
            .expect("submit");
        if k == n / 3
            && let Some(f) = during.take()
        {
            f(k);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acks.lock().unwrap().len() < n as usize {
        assert!(std::time::Instant::now() < deadline, "appends never completed");
        std::thread::sleep(Duration::from_millis(10));
    }
    acks
}

/// Every acknowledged append is in the log exactly once, at its acknowledged position, with
/// its bytes; nothing else of this client's sessions is there.
fn check_log(log: &[corelog::client::ReadEntry], acks: &Acks, sessions: &[u64]) {
    let acks = acks.lock().unwrap();
    let by_index: HashMap<u64, &corelog::client::ReadEntry> =
        log.iter().map(|e| (e.index, e)).collect();
    let mut seen = HashMap::new();
    for e in log.iter().filter(|e| sessions.contains(&e.session)) {
        assert!(
            seen.insert((e.session, e.seq), e.index).is_none(),
            "session {} sequence {} is in the log twice",
            e.session,
            e.seq
        );
    }
    let mut positions = std::collections::HashSet::new();
    for (k, r) in acks.iter() {
        let p = r.as_ref().unwrap_or_else(|e| panic!("append {k} failed: {e}"));
        assert!(positions.insert(p.index), "two appends acknowledged at index {}", p.index);
        let e = by_index.get(&p.index).unwrap_or_else(|| panic!("index {} not in log", p.index));
        assert_eq!(e.data, data(*k), "append {k} at index {}", p.index);
    }
    assert_eq!(seen.len(), acks.len(), "the log holds exactly the acknowledged appends");
}

#[test]
fn many_appends_in_flight_on_one_connection_are_acknowledged_where_they_landed() {
    let cluster = LocalCluster::start(3);
    let mut cfg = PipelinedConfig::new(cluster.addrs());
    cfg.max_in_flight = 64;
    let client = PipelinedClient::new(cfg).unwrap();
    let n = 3000;
    let acks = append_all(&client, n, |_| {});
    let last = acks.lock().unwrap().values().map(|r| r.as_ref().unwrap().index).max().unwrap();
    let sessions = client.sessions();
    assert_eq!(sessions.len(), 64);
    for id in 1..=3 {
        let log = cluster.committed(id, last, Duration::from_secs(10));
        check_log(&log, &acks, &sessions);
    }
    // The future interface resolves too, on any executor (here futures-lite's block_on).
    let p = client.append(0, b"awaited").unwrap();
    let pos = futures_lite::future::block_on(p).expect("awaited append");
    assert!(pos.index > last);
    assert_eq!(client.append(0, b"waited").unwrap().wait().unwrap().index, pos.index + 1);
    // An oversized entry is refused for good, and the client carries on.
    let big = vec![0u8; 8 << 20];
    let r = client.append(0, &big).and_then(|p| p.wait());
    assert!(r.is_err(), "an 8 MiB entry must be refused");
    assert!(client.append(0, b"after").unwrap().wait().is_ok());
    assert_eq!(client.in_flight(), 0);
    client.close();
    cluster.shutdown();
}

#[test]
fn appends_in_flight_across_a_leader_change_commit_exactly_once() {
    let mut cluster = LocalCluster::start(3);
    let old = cluster.leader(Duration::from_secs(10));
    let mut cfg = PipelinedConfig::new(cluster.addrs());
    cfg.max_in_flight = 128;
    cfg.attempt_timeout = Duration::from_millis(500);
    cfg.deadline = Duration::from_secs(30);
    let client = PipelinedClient::new(cfg).unwrap();
    let n = 4000;
    let cluster_ref = &mut cluster;
    let acks = append_all(&client, n, |_| cluster_ref.stop(old));
    let new = cluster.leader(Duration::from_secs(10));
    assert_ne!(new, old);
    let last = acks.lock().unwrap().values().map(|r| r.as_ref().unwrap().index).max().unwrap();
    let sessions = client.sessions();
    for id in (1..=3).filter(|&id| id != old) {
        let log = cluster.committed(id, last, Duration::from_secs(10));
        check_log(&log, &acks, &sessions);
    }
    client.close();
    cluster.shutdown();
}
