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
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

fn mount_small_ext4(mib: u64) -> Result<Mounted, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: cannot mount a loop file system".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
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
        let mut acked = 0u64;
        let mut failure = None;
        for i in 0..100_000u64 {
            let data = payload(i + 1, 3000);
            let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: i + 1, data: &data }];
            let r = match log.append_entries(1, &e).await {
                Ok(r) => log.wait_durable(r.last).await.map(|()| r.last),
                Err(e) => Err(e),
            };
            match r {
                Ok(last) => acked = last,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let e = failure.expect("a 12 MiB file system must fill up");
        assert!(e.is_no_space(), "expected a no-space error, got {e}");
        assert!(e.to_string().contains("no space"), "{e}");
        assert!(acked > 1000, "only {acked} appends before the disk was full");
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

/// A node whose log fills its disk stops its group, and from then on answers every append
/// with the reason at once: a later append's error names the full disk (it is answered, not
/// left to wait for its deadline behind the connection's other traffic).
#[test]
fn a_node_on_a_full_disk_answers_later_appends_with_the_reason() {
    use corelog::client::{Client, ClientConfig, ClientError};
    use std::time::Duration;
    let Some(m) = small_ext4_or_skip(16, "node full-disk test") else { return };
    let cfgs = local_configs(&m.mountpoint.join("cluster"), 1, 4 << 20, |_| {});
    let node = corelog::node::start(cfgs[0].clone()).expect("start");
    let mut cfg = ClientConfig::new(vec![cfgs[0].members[0].client_addr]);
    cfg.deadline = Duration::from_secs(3);
    cfg.attempt_timeout = Duration::from_secs(1);
    let mut client = Client::new(cfg).unwrap();
    let data = vec![7u8; 64 << 10];
    let mut acked = 0u64;
    let first = loop {
        match client.append(0, &data) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1000, "a 16 MiB file system must fill up");
    };
    println!("first error after {acked} acknowledged appends: {first}");
    let later = client.append(0, &data).expect_err("the disk is full");
    let text = match &later {
        ClientError::Timeout(_, last) | ClientError::Refused { message: last, .. } => last.clone(),
        other => panic!("unexpected error {other:?}"),
    };
    assert!(text.contains("the group stopped after a log failure"), "{later}");
    assert!(text.contains("no space"), "{later}");
    node.shutdown().unwrap();
    drop(m);
}
