//! A full disk: a log on a small loop-mounted ext4 file system fills up; appends fail with a
//! clear error and everything acknowledged before stays readable after reopen. Needs root
//! (mount); skipped with a printed reason otherwise.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use corelog::frame::{EntryKind, EntryRef};
use corelog::log::Log;

struct Mounted {
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A file still open (a test that failed with a node running) makes `umount` fail
        // with EBUSY: detach lazily then, so that no loop mount outlives the test.
        let ok = Command::new("umount").arg(&self.mountpoint).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

/// Start of the name of the directory that holds a test's file system, followed by the
/// test process's id.
const MOUNT_PREFIX: &str = "corelog-full-disk-";

/// Unmounts the file systems of test runs that were killed (SIGKILL runs no `Drop`): those
/// whose process is gone. Mounts of live runs (tests of this binary run in parallel) stay.
fn unmount_left_by_dead_runs() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    for mountpoint in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let Some(rest) = mountpoint.split(MOUNT_PREFIX).nth(1) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
            if let Some(dir) = std::path::Path::new(mountpoint).parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn mount_small_ext4(mib: u64) -> Result<Mounted, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: cannot mount a loop file system".into());
    }
    unmount_left_by_dead_runs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{MOUNT_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| e.to_string())?;
    let image = dir.path().join("fs.img");
    let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    f.set_len(mib << 20).map_err(|e| e.to_string())?;
    drop(f);
    let ok = |c: &mut Command| {
        c.output().map_err(|e| e.to_string()).and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        })
    };
    ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
        .map_err(|e| format!("mkfs.ext4: {e}"))?;
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
    ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mountpoint))
        .map_err(|e| format!("mount: {e}"))?;
    Ok(Mounted { mountpoint, _dir: dir })
}

/// A small file system for `test`, or `None` (with the reason printed) when it cannot be
/// mounted here.
fn small_ext4_or_skip(mib: u64, test: &str) -> Option<Mounted> {
    mount_small_ext4(mib).map_err(|why| println!("SKIPPED {test}: {why}")).ok()
}

#[test]
fn a_full_disk_fails_appends_clearly_and_keeps_what_was_acknowledged() {
    let Some(m) = small_ext4_or_skip(12, "full-disk test") else { return };
    let dir: PathBuf = m.mountpoint.join("log");
    let d = dir.clone();
    let acked = run(move || async move {
        let (log, _) = Log::open(&d, small_config()).await.unwrap();
        let (acked, e) = fill(&log).await;
        assert!(e.to_string().contains("no space"), "{e}");
        assert!(acked > 1000, "only {acked} appends before the disk was full");
        // The log knows: it refuses in advance what would need a new segment.
        let refused = log.space_for(3100).expect_err("no room for another frame");
        assert!(refused.is_no_space(), "{refused}");
        // The log stays usable for reads, and appends keep failing cleanly.
        check_range(&log, 1, acked, 3000).await;
        let data = payload(acked + 1, 3000);
        let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: acked + 1, data: &data }];
        let again = match log.append_entries(1, &e).await {
            Ok(r) => log.wait_durable(r.last).await.map(|()| r.last),
            Err(e) => Err(e),
        };
        match again {
            Err(e) => assert!(e.is_no_space(), "{e}"),
            Ok(last) => {
                assert_eq!(last, acked + 1, "an append that succeeds must continue the log")
            }
        }
        let _ = log.close().await;
        acked
    });
    println!("full disk after {acked} acknowledged appends");
    let d = dir.clone();
    run(move || async move {
        let (log, _) = Log::open(&d, small_config()).await.expect("reopen after a full disk");
        assert!(log.last_index() >= acked);
        check_range(&log, 1, acked, 3000).await;
        // Freeing space (a trim) makes appends work again.
        log.trim_before(acked).await.unwrap();
        let r = append_n(&log, 1, 5, 1, 3000).await;
        log.wait_durable(r).await.unwrap();
        log.close().await.unwrap();
    });
    drop(m);
}

/// A node whose disk fills refuses further appends at once with `NoSpace` (nothing of them
/// accepted, the group alive: reads, status and trims still work), and takes appends again by
/// itself once a trim makes room. Every acknowledged entry stays readable, also after a
/// restart.
#[test]
fn a_node_on_a_full_disk_refuses_appends_until_a_trim_makes_room() {
    use corelog::client::{Client, ClientConfig, ClientError};
    use corelog::node::proto::Status;
    use std::time::{Duration, Instant};
    let Some(m) = small_ext4_or_skip(16, "node full-disk test") else { return };
    let cfgs = local_configs(&m.mountpoint.join("cluster"), 1, 4 << 20, |_| {});
    let node = corelog::node::start(cfgs[0].clone()).expect("start");
    let mut cfg = ClientConfig::new(vec![cfgs[0].members[0].client_addr]);
    cfg.deadline = Duration::from_secs(3);
    cfg.attempt_timeout = Duration::from_secs(1);
    let mut client = Client::new(cfg.clone()).unwrap();
    let entry = |k: u64| {
        let mut d = vec![(k % 251) as u8; 64 << 10];
        d[..8].copy_from_slice(&k.to_le_bytes());
        d
    };
    // Acknowledged entries: index -> the k its bytes were made from.
    let mut acked = Vec::new();
    let mut k = 0;
    let first = loop {
        k += 1;
        match client.append(0, &entry(k)) {
            Ok(p) => acked.push((p.index, k)),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "a 16 MiB file system must fill up");
    };
    println!("first error after {} acknowledged appends: {first}", acked.len());
    let no_space = |e: &ClientError| {
        matches!(e, ClientError::Refused { status: Status::NoSpace, message }
            if message.contains("no space"))
    };
    assert!(no_space(&first), "the full disk is named at once: {first:?}");
    assert!(acked.len() >= 8, "only {} appends before the disk was full", acked.len());
    let t = Instant::now();
    let again = client.append(0, &entry(k)).expect_err("the disk is still full");
    assert!(no_space(&again), "{again:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once, not at a deadline");
    // A retry of the last entry committed (same session and sequence) is answered with its
    // position, not refused: NoSpace means nothing of the request was added.
    let (last_index, last_k) = *acked.last().unwrap();
    let addr = cfgs[0].members[0].client_addr;
    let retry = raw_append(addr, client.session(), last_k, &entry(last_k));
    assert_eq!(retry, (Status::Ok, last_index), "a retry on a full disk");

    // The group is alive: status, reads of what was acknowledged, a trim.
    let status = client.status(0).expect("status of a group on a full disk");
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["role"], "Leader", "{s}");
    assert!(s["no_space"].as_str().is_some_and(|e| e.contains("no space")), "says why: {s}");
    let check = |client: &mut Client, acked: &[(u64, u64)]| {
        for &(index, k) in acked {
            let (_, got) = client.read(0, index, index, 1 << 20).expect("read");
            assert_eq!(got.len(), 1, "entry {index}");
            assert_eq!(got[0].data, entry(k), "entry {index}");
        }
    };
    check(&mut client, &acked);
    let (cut, _) = acked[acked.len() / 2];
    client.trim(0, cut).expect("a trim on a full disk");
    let kept: Vec<(u64, u64)> = acked.iter().copied().filter(|&(i, _)| i > cut).collect();

    // Appends resume by themselves: the trim made room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        k += 1;
        match client.append(0, &entry(k)) {
            Ok(p) => break (p.index, k),
            Err(e) if no_space(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("appends did not resume after the trim: {e}"),
        }
    };
    assert!(resumed.0 > acked.last().unwrap().0, "{resumed:?}");
    let mut kept = kept;
    kept.push(resumed);
    check(&mut client, &kept);
    node.shutdown().unwrap();

    // After a restart: everything acknowledged after the trim point is there.
    let node = corelog::node::start(cfgs[0].clone()).expect("restart");
    let mut client = Client::new(cfg).unwrap();
    check(&mut client, &kept);
    node.shutdown().unwrap();
    drop(m);
}

/// A follower whose disk fills does not stop: it drops the appends it has no room for (as if
/// lost; the leader sends them again), the leader goes on committing with the other follower,
/// and once the leader trims past the full follower's log, that follower takes the snapshot
/// and catches up to the last entry.
#[test]
fn a_follower_on_a_full_disk_keeps_its_group_and_catches_up_after_a_trim() {
    use corelog::client::{Client, ClientConfig};
    use std::time::{Duration, Instant};
    let Some(m) = small_ext4_or_skip(16, "follower full-disk test") else { return };
    let big = tempfile::tempdir().unwrap();
    let small = m.mountpoint.join("n3");
    let cfgs = local_configs(big.path(), 3, 4 << 20, |c| {
        if c.node_id == 3 {
            c.data_dir = small.clone();
        }
    });
    // Nodes 1 and 2 elect a leader among themselves; node 3 (the small disk) joins after.
    let n1 = corelog::node::start(cfgs[0].clone()).expect("start 1");
    let n2 = corelog::node::start(cfgs[1].clone()).expect("start 2");
    let addrs: Vec<_> = cfgs[0].members.iter().map(|p| p.client_addr).collect();
    let mut client = Client::new(ClientConfig::new(addrs[..2].to_vec())).unwrap();
    client.append(0, b"first").expect("a leader among nodes 1 and 2");
    let n3 = corelog::node::start(cfgs[2].clone()).expect("start 3");
    let data = vec![5u8; 64 << 10];
    let mut last = 0;
    for _ in 0..300 {
        last = client.append(0, &data).expect("the majority has room").index;
    }
    // Node 3 holds what fitted (well under the 19 MiB appended) and its group is alive.
    let status = |client: &mut Client| {
        let s = client.status_of(addrs[2], 0).expect("node 3's group answers");
        serde_json::from_str::<serde_json::Value>(&s).unwrap()
    };
    let s = status(&mut client);
    let held = s["last_index"].as_u64().unwrap();
    assert!(held < last - 50, "node 3 cannot hold everything: {s}");
    assert_eq!(s["role"], "Follower", "{s}");

    // The application checkpoints: the leader trims beyond node 3's log, node 3 gets a
    // snapshot, which frees its disk, and then the rest of the log.
    client.trim(0, last - 20).expect("trim");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&mut client);
        if s["durable_index"].as_u64().unwrap() >= last {
            assert!(s["snapshots_installed"].as_u64().unwrap() >= 1, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, got) = client.read_from(addrs[2], 0, last, last, 1 << 20).expect("read node 3");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, data);
    for n in [n3, n2, n1] {
        n.shutdown().unwrap();
    }
    drop(m);
}

/// Sends one append of `data` as `(session, seq)` in the client protocol, by hand (the client
/// library picks its own sessions); returns the answer's status and the first position.
fn raw_append(
    addr: std::net::SocketAddr,
    session: u64,
    seq: u64,
    data: &[u8],
) -> (corelog::node::proto::Status, u64) {
    use corelog::frame::{FrameLimits, encode_frame};
    use corelog::node::proto::{Op, RequestMeta, ResponseMeta, Status};
    use corelog::wire::{self, ENVELOPE_LEN, Kind};
    use std::io::{Read, Write};
    use zerocopy::{FromBytes, IntoBytes};
    let mut frame = Vec::new();
    let e = EntryRef { kind: EntryKind::Normal, session, seq, data };
    encode_frame(&mut frame, 0, 0, 1, &[e], FrameLimits::default()).unwrap();
    let mut req = Vec::new();
    let meta = RequestMeta::new(Op::Append, session, seq, 0);
    wire::encode(&mut req, Kind::Request, 0, 1, meta.as_bytes(), frame.len());
    req.extend_from_slice(&frame);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    s.write_all(&req).unwrap();
    let mut env = [0u8; ENVELOPE_LEN];
    s.read_exact(&mut env).unwrap();
    let e = wire::check_envelope(&env, 64 << 20).unwrap();
    let mut buf = vec![0u8; wire::message_len(e)];
    buf[..ENVELOPE_LEN].copy_from_slice(&env);
    s.read_exact(&mut buf[ENVELOPE_LEN..]).unwrap();
    let m = wire::verify(&buf, 64 << 20).unwrap();
    let r = ResponseMeta::read_from_bytes(m.meta).unwrap();
    let status = Status::from_code(r.status).unwrap();
    let index = m.frames.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    (status, index)
}

/// Appends frames of one 3000-byte entry, each waited for until durable, until the disk is
/// full (an append fails for lack of space; at most 100,000, more than a test's file system
/// holds); returns the last index acknowledged (durable) and the error.
async fn fill(log: &Log) -> (u64, corelog::log::LogError) {
    let mut acked = log.last_index();
    for _ in 0..100_000 {
        let i = acked + 1;
        let data = payload(i, 3000);
        let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: i, data: &data }];
        let r = match log.append_entries(1, &e).await {
            Ok(r) => log.wait_durable(r.last).await.map(|()| r.last),
            Err(e) => Err(e),
        };
        match r {
            Ok(last) => acked = last,
            Err(e) => {
                assert!(e.is_no_space(), "expected a no-space error, got {e}");
                return (acked, e);
            }
        }
    }
    panic!("the file system did not fill up after {acked} appends");
}

/// On a full disk, a cut of the log's suffix (what a follower does when a new leader
/// overwrites it) would need a segment that cannot be prepared: `truncation_ready` says so
/// beforehand (a follower then drops the append instead of failing the cut and stopping its
/// group), the cut itself fails cleanly, and once a trim makes room both work.
#[test]
fn on_a_full_disk_a_cut_waits_until_a_trim_makes_room() {
    let Some(m) = small_ext4_or_skip(12, "full-disk truncation test") else { return };
    let dir: PathBuf = m.mountpoint.join("log");
    run(move || async move {
        let (log, _) = Log::open(&dir, small_config()).await.unwrap();
        let (last, _) = fill(&log).await;
        assert!(last > 1000, "only {last} appends before the disk was full");
        let cut = last - 10;
        assert!(!log.truncation_ready(cut), "no spare can start the cut on a full disk");
        let e = log.truncate_after(cut).await.expect_err("the cut needs a new segment");
        assert!(e.is_no_space(), "{e}");
        // Nothing was lost, and the log is still usable.
        assert_eq!(log.last_index(), last);
        check_range(&log, 1, last, 3000).await;
        assert!(!log.truncation_ready(cut));
        // A trim recycles the segments it frees into spares, which hold indexes below any cut
        // above the trim point.
        log.trim_before(cut / 2).await.unwrap();
        assert!(log.truncation_ready(cut), "a recycled segment can start the cut");
        log.truncate_after(cut).await.unwrap();
        let data = payload(cut + 1, 3000);
        let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: cut + 1, data: &data }];
        let r = log.append_entries(2, &e).await.unwrap();
        log.wait_durable(r.last).await.unwrap();
        assert_eq!((r.last, log.term(cut + 1)), (cut + 1, Some(2)));
        check_range(&log, cut / 2, cut + 1, 3000).await;
        log.close().await.unwrap();
    });
    drop(m);
}

/// A snapshot installed on a full disk below the log's last index (a follower holding a
/// stale suffix): the old segments that could not start the new log are deleted rather than
/// kept as spares, so the new segment gets their space (keeping them left no room, failed the
/// zero-fill and poisoned the log).
#[test]
fn a_reset_on_a_full_disk_gets_the_space_of_the_segments_it_deletes() {
    let Some(m) = small_ext4_or_skip(12, "full-disk reset test") else { return };
    let dir: PathBuf = m.mountpoint.join("log");
    let cfg = corelog::log::LogConfig { segment_bytes: 2 << 20, ..small_config() };
    let d = dir.clone();
    let c = cfg.clone();
    run(move || async move {
        let (log, _) = Log::open(&d, c).await.unwrap();
        let (last, _) = fill(&log).await;
        assert!(last > 1000, "only {last} appends before the disk was full");
        log.reset(2).await.expect("a reset on a full disk");
        assert_eq!((log.first_index(), log.last_index()), (2, 1));
        let r = append_n(&log, 3, 20, 1, 3000).await;
        log.wait_durable(r).await.unwrap();
        log.close().await.unwrap();
    });
    run(move || async move {
        let (log, _) = Log::open(&dir, cfg).await.expect("reopen after the reset");
        assert_eq!((log.first_index(), log.last_index()), (2, 21));
        assert_eq!(log.term(21), Some(3));
        log.close().await.unwrap();
    });
    drop(m);
}

/// A leader whose disk fills while many clients append at once keeps its group: appends that
/// need a segment still being prepared are held until the preparation ends, then proposed or
/// refused `NoSpace` (proposed at once, a preparation failing for lack of space under them
/// failed their write and stopped the group: 6 of 6 runs without spares kept ahead). Every
/// error is `NoSpace`, the node still leads and serves, and what was acknowledged reads back.
#[test]
fn a_leader_filling_its_disk_under_concurrent_appends_refuses_and_keeps_its_group() {
    use corelog::client::{Client, ClientConfig, ClientError};
    use corelog::node::proto::Status;
    use std::time::Duration;
    let Some(m) = small_ext4_or_skip(16, "leader full-disk race test") else { return };
    // No spare kept ahead: every roll needs a segment prepared when it comes, so the last
    // preparation fails under appends that need it.
    let cfgs = local_configs(&m.mountpoint.join("cluster"), 1, 1 << 20, |c| c.spare_segments = 0);
    let node = corelog::node::start(cfgs[0].clone()).expect("start");
    let mut cfg = ClientConfig::new(vec![cfgs[0].members[0].client_addr]);
    cfg.deadline = Duration::from_secs(5);
    cfg.attempt_timeout = Duration::from_secs(2);
    let entry = |k: u64| {
        let mut d = vec![(k % 251) as u8; 48 << 10];
        d[..8].copy_from_slice(&k.to_le_bytes());
        d
    };
    // Eight clients append until each is refused.
    let results: Vec<(Vec<(u64, u64)>, ClientError)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u64)
            .map(|t| {
                let cfg = cfg.clone();
                s.spawn(move || {
                    let mut client = Client::new(cfg).unwrap();
                    let mut acked = Vec::new();
                    for n in 0.. {
                        let k = t << 32 | n;
                        match client.append(0, &entry(k)) {
                            Ok(p) => acked.push((p.index, k)),
                            Err(e) => return (acked, e),
                        }
                        assert!(acked.len() < 1000, "a 16 MiB file system must fill up");
                    }
                    unreachable!()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (_, e) in &results {
        assert!(
            matches!(e, ClientError::Refused { status: Status::NoSpace, .. }),
            "every client is refused for lack of space, none by a stopped group: {e:?}"
        );
    }
    let mut client = Client::new(cfg).unwrap();
    let status = client.status(0).expect("status");
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["role"], "Leader", "{s}");
    for (acked, _) in &results {
        for &(index, k) in acked {
            let (_, got) = client.read(0, index, index, 1 << 20).expect("read");
            assert_eq!(got[0].data, entry(k), "entry {index}");
        }
    }
    node.shutdown().unwrap();
    drop(m);
}
