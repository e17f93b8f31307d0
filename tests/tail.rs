//! Tail: a stream of committed entries from a position. A 3-node cluster in one process (real
//! TCP on loopback, real files): a tail started before the appends sees every one of them, in
//! order, exactly once, also when the node it reads from stops half way (it moves to another
//! replica, and a new leader is elected if that node led). A position before the log's start
//! is refused with `Trimmed`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig, ClientError};
use corelog::frame::EntryKind;
use corelog::node;
use corelog::node::proto::Status;

#[test]
fn tail_sees_later_appends_in_order_exactly_once_across_a_node_stop() {
    let n: u64 =
        std::env::var("CORELOG_TAIL_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so that a trim drops whole segments of this test's log.
    let cfgs = common::local_configs(dir.path(), 3, 1 << 20, |_| {});
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let mut nodes: Vec<_> =
        cfgs.iter().cloned().map(|c| Some(node::start(c).expect("start node"))).collect();
    let mut cfg = ClientConfig::new(addrs.clone());
    cfg.attempt_timeout = Duration::from_millis(1000);
    let mut client = Client::new(cfg.clone()).unwrap();
    // The tail starts first, at node 1 (its first address), before anything is appended.
    let tail_client = Client::new(cfg).unwrap();
    let mut tail = tail_client.tail(0, 1);
    // A leader's no-op may be committed already; client data cannot be.
    let early = tail.next_within(Duration::from_millis(300)).unwrap();
    assert!(early.as_ref().is_none_or(|e| e.kind != EntryKind::Normal), "{early:?}");
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut last_index = early.map_or(0, |e| e.index);
        while got.len() < n as usize {
            let e = tail.next_entry().expect("tail");
            assert!(e.index > last_index, "indexes increase: {} after {last_index}", e.index);
            assert_eq!(e.index, last_index + 1, "no gap");
            last_index = e.index;
            if e.kind == EntryKind::Normal {
                got.push((e.index, e.data));
            }
        }
        got
    });
    let mut acked = Vec::new();
    for i in 0..n {
        if i == n / 2 {
            // Stop the node the tail reads from (it may be the leader).
            nodes[0].take().unwrap().shutdown().unwrap();
        }
        let mut data = format!("entry-{i}-").into_bytes();
        data.resize(4000, b'.');
        let p = client.append(0, &data).expect("append");
        acked.push((p.index, data));
    }
    let got = reader.join().expect("tail thread");
    assert_eq!(got, acked, "the tail yields exactly the acknowledged appends, in order");
    let unique: HashSet<_> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(unique.len(), got.len());

    // A trimmed position is refused, with the first index the node holds.
    let last = acked.last().unwrap().0;
    client.trim(0, last - 10).expect("trim");
    let leader = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s: serde_json::Value = serde_json::from_str(&client.status(0).unwrap()).unwrap();
            if s["role"] == "Leader" && s["first_index"].as_u64().unwrap() > 1 {
                break addrs[s["node"].as_u64().unwrap() as usize - 1];
            }
            assert!(Instant::now() < deadline, "no trimmed leader: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut at_leader = Client::new(ClientConfig::new(vec![leader])).unwrap().tail(0, 1);
    match at_leader.next_entry() {
        Err(ClientError::Refused { status: Status::Trimmed, message }) => {
            assert!(message.contains("trimmed"), "{message}")
        }
        other => panic!("expected Trimmed, got {other:?}"),
    }
    // From a position that is still there, the same tail protocol works.
    let mut t = Client::new(ClientConfig::new(vec![leader])).unwrap().tail(0, last - 5);
    assert_eq!(t.next_entry().unwrap().index, last - 5);
    for n in nodes.into_iter().flatten() {
        n.shutdown().unwrap();
    }
}
