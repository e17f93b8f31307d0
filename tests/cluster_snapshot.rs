//! A follower stopped (SIGSTOP) while the leader's log prefix is trimmed past it: on SIGCONT
//! the leader cannot send it the entries it lacks, so it sends a snapshot, then the log. The
//! follower's status counts the snapshot it installed; its log then starts after the snapshot
//! and matches the leader's entry for entry.

mod common;

use std::time::{Duration, Instant};

use common::{ProcCluster, Writer, check_acked};

/// Three running nodes with small segments (a trim drops whole segments), and the leader.
fn small_segment_cluster() -> (ProcCluster, u64) {
    let mut c = ProcCluster::new(3, 3, |cfg| cfg.segment_bytes = 1 << 20);
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.leader(&[1, 2, 3], Duration::from_secs(10));
    (c, leader)
}

/// Four writers until `n` appends are acknowledged: what was acknowledged, (index, payload).
fn write_until(c: &ProcCluster, n: usize) -> Vec<(u64, Vec<u8>)> {
    let writers: Vec<Writer> =
        (0..4).map(|w| Writer::start(c.addrs(&[1, 2, 3]), &format!("s{w}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while writers.iter().map(|w| w.count()).sum::<usize>() < n {
        assert!(Instant::now() < deadline, "the writers are too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    writers.into_iter().flat_map(|w| w.finish()).collect()
}

#[test]
fn a_follower_behind_a_trim_is_caught_up_by_a_snapshot_then_the_log() {
    let (c, leader) = small_segment_cluster();
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let before = c.status(follower).unwrap();
    assert_eq!(before["snapshots_installed"], 0);
    c.signal(follower, libc::SIGSTOP);

    // Enough entries for several segments (about 200 B each), then a trim of all of them.
    let n: usize = std::env::var("CORELOG_SNAPSHOT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let mut acked = write_until(&c, n);
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

/// The application trims through the leader; the followers follow it (once their segments
/// are wholly below the trim point and committed), without a snapshot, so their disks do not
/// keep what the group no longer needs. A follower restarted after its trim recovers the
/// trimmed log and serves the same entries as the leader.
#[test]
fn followers_trim_where_the_leader_trimmed_and_recover_from_it() {
    use common::segment_files;
    let (mut c, leader) = small_segment_cluster();
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let group_dir = |c: &ProcCluster, id: u64| c.cfgs[id as usize - 1].data_dir.join("group-0");

    let acked = write_until(&c, 12_000);
    let last = acked.iter().map(|(i, _)| *i).max().unwrap();
    let before: Vec<usize> =
        followers.iter().map(|&f| segment_files(&group_dir(&c, f)).len()).collect();
    assert!(before.iter().all(|&n| n >= 3), "too few segments to trim: {before:?}");

    let trim_at = last - 100;
    c.probe(&[leader]).trim(0, trim_at).expect("trim");
    let first = c.status(leader).unwrap()["first_index"].as_u64().unwrap();
    assert!(first > 1 && first <= trim_at + 1, "the leader's log is trimmed: {first}");

    for (k, &f) in followers.iter().enumerate() {
        // The status shows the trim at once; the files are recycled just after.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (s, after) = loop {
            let s = c.status(f).filter(|s| s["first_index"].as_u64().unwrap() > 1);
            let after = segment_files(&group_dir(&c, f)).len();
            if let Some(s) = s.filter(|_| after < before[k]) {
                break (s, after);
            }
            assert!(
                Instant::now() < deadline,
                "follower {f} does not trim: {} -> {after} segments",
                before[k]
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let f_first = s["first_index"].as_u64().unwrap();
        assert!(f_first <= trim_at + 1, "follower {f} trimmed past the trim point: {s}");
        assert_eq!(s["snapshots_installed"], 0, "follower {f} trimmed by a snapshot: {s}");
        println!("follower {f}: first index {f_first}, segments {} -> {after}", before[k]);
    }

    // A restart after the trim: the follower recovers the trimmed log, rejoins, and serves
    // the leader's entries (acknowledged ones intact) from its first index on.
    let f = followers[0];
    let f_first = c.status(f).unwrap()["first_index"].as_u64().unwrap();
    c.kill9(f);
    c.spawn(f);
    let w = Writer::start(c.addrs(&[1, 2, 3]), "after");
    w.wait_more(100, Duration::from_secs(20));
    let mut acked = acked;
    acked.extend(w.finish());
    let last = acked.iter().map(|(i, _)| *i).max().unwrap();
    let theirs = c.log_of(f, f_first, last);
    let s = c.status(f).unwrap();
    assert_eq!(s["first_index"].as_u64().unwrap(), f_first, "first index after restart: {s}");
    assert_eq!(s["snapshots_installed"], 0, "restart needed a snapshot: {s}");
    let from = f_first.max(first);
    let ours = c.log_of(leader, from, last);
    assert_eq!(&theirs[(from - f_first) as usize..], &ours[..], "the follower's log differs");
    let tail: Vec<(u64, Vec<u8>)> = acked.into_iter().filter(|(i, _)| *i >= f_first).collect();
    check_acked(&theirs, &tail);
}

/// A trim is the group's, whichever node the client reaches: a follower sends it to the
/// leader (which trims, and the followers follow) instead of trimming only itself. Before,
/// a follower trimmed its own log and answered Ok, and the leader's log kept growing.
#[test]
fn a_trim_sent_to_a_follower_trims_the_leader() {
    let (c, leader) = small_segment_cluster();
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let acked = write_until(&c, 12_000);
    let last = acked.iter().map(|(i, _)| *i).max().unwrap();
    let trim_at = last - 100;
    // A client that knows only the follower's address.
    c.probe(&[follower]).trim(0, trim_at).expect("trim through a follower");
    let first = c.status(leader).unwrap()["first_index"].as_u64().unwrap();
    assert!(first > 1 && first <= trim_at + 1, "the leader's log is not trimmed: {first}");
    // The follower follows the leader's trim point.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f_first = c.status(follower).unwrap()["first_index"].as_u64().unwrap();
        if f_first > 1 {
            assert!(f_first <= trim_at + 1, "follower trimmed past the trim point: {f_first}");
            break;
        }
        assert!(Instant::now() < deadline, "the follower does not follow the leader's trim");
        std::thread::sleep(Duration::from_millis(50));
    }
}
