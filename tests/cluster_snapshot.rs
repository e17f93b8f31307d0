//! A follower stopped (SIGSTOP) while the leader's log prefix is trimmed past it: on SIGCONT
//! the leader cannot send it the entries it lacks, so it sends a snapshot, then the log. The
//! follower's status counts the snapshot it installed; its log then starts after the snapshot
//! and matches the leader's entry for entry.

mod common;

use std::time::{Duration, Instant};

use common::{ProcCluster, Writer, check_acked};

#[test]
fn a_follower_behind_a_trim_is_caught_up_by_a_snapshot_then_the_log() {
    // Small segments: the trim drops whole segments.
    let mut c = ProcCluster::new(3, 3, |cfg| cfg.segment_bytes = 1 << 20);
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.leader(&[1, 2, 3], Duration::from_secs(10));
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let before = c.status(follower).unwrap();
    assert_eq!(before["snapshots_installed"], 0);
    c.signal(follower, libc::SIGSTOP);

    // Enough entries for several segments (about 200 B each), then a trim of all of them.
    let n: usize = std::env::var("CORELOG_SNAPSHOT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let writers: Vec<Writer> =
        (0..4).map(|w| Writer::start(c.addrs(&[1, 2, 3]), &format!("s{w}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while writers.iter().map(|w| w.count()).sum::<usize>() < n {
        assert!(Instant::now() < deadline, "the writers are too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut acked: Vec<(u64, Vec<u8>)> = writers.into_iter().flat_map(|w| w.finish()).collect();
    let last = acked.iter().map(|(i, _)| *i).max().unwrap();
    // A trim applies to the node that receives it: the leader here.
    let mut admin = c.probe(&[leader]);
    admin.trim(0, last).expect("trim");
    let s = c.status(leader).unwrap();
    let first = s["first_index"].as_u64().unwrap();
    assert!(first > 1, "the leader's log is trimmed: {s}");

    c.signal(follower, libc::SIGCONT);
    // A few more appends after the resume: the follower gets these through the log.
    let w = Writer::start(c.addrs(&[1, 2, 3]), "after");
    w.wait_more(100, Duration::from_secs(20));
    acked.extend(w.finish());
    let last = acked.iter().map(|(i, _)| *i).max().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = c.status(follower);
        if let Some(s) = s.filter(|s| s["commit_index"].as_u64().unwrap() >= last) {
            break s;
        }
        assert!(Instant::now() < deadline, "the follower does not catch up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(s["snapshots_installed"].as_u64().unwrap() >= 1, "no snapshot installed: {s}");
    let f_first = s["first_index"].as_u64().unwrap();
    assert!(f_first > 1, "the follower's log starts after the snapshot: {s}");
    // The follower's log, after its snapshot, is the leader's.
    let from = f_first.max(first);
    let theirs = c.log_of(follower, from, last);
    let ours = c.log_of(leader, from, last);
    assert_eq!(theirs, ours, "the follower's log differs from the leader's");
    let tail: Vec<(u64, Vec<u8>)> = acked.into_iter().filter(|(i, _)| *i >= from).collect();
    check_acked(&theirs, &tail);
    println!(
        "leader trimmed to {first}; follower restarted its log at {f_first}; {} entries compared",
        theirs.len()
    );
}
