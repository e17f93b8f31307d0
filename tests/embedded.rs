//! A node embedded in the test's own process ([`corelog::embed::EmbeddedNode`]), used from
//! plain threads (no glommio runtime on them): append, read, tail, trim and status go through
//! in-process pipes, not sockets. A single-node cluster, so the embedded node leads and every
//! request stays in-process; then it restarts from its data directory and still holds what
//! was acknowledged.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use corelog::embed::EmbeddedNode;
use corelog::frame::EntryKind;
use corelog::node::{NodeConfig, PeerConfig};

use common::free_port;

#[test]
fn an_embedded_node_appends_reads_tails_and_trims_without_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        node_id: 1,
        data_dir: dir.path().join("n1"),
        members: vec![PeerConfig {
            id: 1,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }],
        segment_bytes: 1 << 20,
        ..NodeConfig::default()
    };
    let mut node = EmbeddedNode::start(cfg.clone()).expect("start");
    // A tail from the start, on another plain thread, before anything is appended.
    let tail = node.tail(0, 1);
    let reader = std::thread::spawn(move || {
        let mut tail = tail;
        let mut got = Vec::new();
        while got.len() < 300 {
            let e = tail.next_entry().expect("tail");
            if e.kind == EntryKind::Normal {
                got.push((e.index, e.data));
            }
        }
        got
    });
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let mut data = format!("e{i}-").into_bytes();
        data.resize(8000, b'.');
        let p = node.append(0, &data).expect("append");
        acked.push((p.index, data));
    }
    // Another thread with its own client (its own session) appends too.
    let mut other = node.client().unwrap();
    let more = std::thread::spawn(move || {
        let items: Vec<Vec<u8>> = (0..100).map(|i| format!("batch-{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = items.iter().map(|v| &v[..]).collect();
        let ps = other.append_many(0, &refs).expect("append_many");
        ps.into_iter().map(|p| p.index).zip(items).collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    acked.extend(more);
    let got = reader.join().unwrap();
    assert_eq!(got, acked, "the tail yields every append, in order, once");

    // Reads from the node's own log.
    let last = acked.last().unwrap().0;
    let (commit, entries) = node.read(0, acked[0].0, last, 64 << 20).expect("read");
    assert!(commit >= last);
    let ours: Vec<(u64, Vec<u8>)> = entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::Normal)
        .map(|e| (e.index, e.data))
        .collect();
    assert_eq!(ours, acked);

    // Trim, and the status shows it.
    node.trim(0, last - 50).expect("trim");
    let s: serde_json::Value = serde_json::from_str(&node.status(0).unwrap()).unwrap();
    assert_eq!(s["role"], "Leader", "{s}");
    assert!(s["first_index"].as_u64().unwrap() > 1, "trimmed: {s}");
    node.shutdown().unwrap();

    // Restart: what was acknowledged after the trim point is still there.
    let mut node = EmbeddedNode::start(cfg).expect("restart");
    let mut tail = node.tail(0, last - 50);
    let e = tail.next_within(Duration::from_secs(10)).unwrap().expect("an entry");
    assert_eq!(e.index, last - 50);
    // Once re-elected, the node commits its log again (with its new term's no-op).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s: serde_json::Value = serde_json::from_str(&node.status(0).unwrap()).unwrap();
        if s["commit_index"].as_u64().unwrap() > last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no commit after restart: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, entries) = node.read(0, last - 10, last, 1 << 20).expect("read after restart");
    let ours: Vec<(u64, Vec<u8>)> = entries.into_iter().map(|e| (e.index, e.data)).collect();
    assert_eq!(ours, acked[acked.len() - 11..].to_vec());
    node.shutdown().unwrap();
}
