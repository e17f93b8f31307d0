//! A 3-node cluster in one process (each node its own executor thread, real TCP on loopback,
//! real files): appends are acknowledged and readable from every node in the same order.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig};
use corelog::node;

#[test]
fn three_nodes_replicate_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = common::local_configs(dir.path(), 3, 4 << 20, |_| {});
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let nodes: Vec<_> = cfgs.iter().cloned().map(|c| node::start(c).expect("start node")).collect();
    let mut client = Client::new(ClientConfig::new(addrs.clone())).unwrap();
    let mut last = 0;
    let mut expected = Vec::new();
    for i in 0..100u64 {
        let data = format!("entry-{i}");
        let p = client.append(0, data.as_bytes()).expect("append");
        assert!(p.index > last, "positions increase");
        last = p.index;
        expected.push((p.index, data.into_bytes()));
    }
    let batch: Vec<Vec<u8>> = (0..50).map(|i| format!("batch-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
    let ps = client.append_many(0, &refs).expect("append_many");
    for (p, d) in ps.iter().zip(&batch) {
        assert!(p.index > last);
        last = p.index;
        expected.push((p.index, d.clone()));
    }
    // Every node: commit reaches `last`, and reads give the same entries at the same indexes.
    for addr in &addrs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (commit, entries) = client.read_from(*addr, 0, 1, last, 16 << 20).expect("read");
            if commit >= last {
                let ours: Vec<(u64, Vec<u8>)> = entries
                    .into_iter()
                    .filter(|e| e.session == client.session())
                    .map(|e| (e.index, e.data))
                    .collect();
                assert_eq!(ours, expected, "node {addr} holds the acknowledged entries in order");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {addr} never caught up (commit {commit} < {last})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = client.status(0).unwrap();
    assert!(status.contains("\"role\":\"Leader\""), "{status}");
    for n in nodes {
        n.shutdown().unwrap();
    }
}
