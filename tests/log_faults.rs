//! File-level fault injection on closed logs: each damage has its expected outcome.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use corelog::frame::{Frame, FrameLimits};
use corelog::log::{HardState, HardStateFile, Log, LogConfig, LogError};

/// Writes a log of `frames` frames of 2 entries of 500 bytes (term 1) and closes it.
fn make_log(dir: &Path, frames: usize) {
    let path = dir.to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        append_n(&log, 1, frames, 2, 500).await;
        log.close().await.unwrap();
    });
}

/// Offsets and index ranges of the frames of a segment file.
fn frames_of(path: &Path) -> Vec<(usize, usize, u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while let Ok(f) = Frame::decode(&bytes[off..], &FrameLimits::default()) {
        out.push((off, f.len(), f.first_index(), f.last_index()));
        off += f.len();
    }
    out
}

fn reopen(dir: &Path) -> Result<(u64, u64, u64), LogError> {
    let path = dir.to_path_buf();
    run(move || async move {
        let (log, report) = Log::open(&path, small_config()).await?;
        let last = log.last_index();
        if last > 0 {
            check_range(&log, log.first_index(), last, 500).await;
        }
        let out = (log.first_index(), last, report.torn_bytes_cut);
        log.close().await?;
        Ok(out)
    })
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_torn_tail_is_cut_at_every_offset_of_the_last_frame() {
    let base = tempfile::tempdir().unwrap();
    make_log(&base.path().join("orig"), 40);
    let seg_name = last_segment(&base.path().join("orig")).file_name().unwrap().to_owned();
    let frames = frames_of(&base.path().join("orig").join(&seg_name));
    let (last_off, last_len, last_first, _) = *frames.last().unwrap();
    // Inside the header, at the header's end, inside the payload, one byte short.
    for cut in [1, 20, 47, 48, 49, last_len / 2, last_len - 1] {
        for how in ["zero", "truncate"] {
            let dir = base.path().join(format!("c{cut}-{how}"));
            copy_dir(&base.path().join("orig"), &dir);
            let seg = dir.join(&seg_name);
            damage(&seg, |b| {
                if how == "zero" {
                    b[last_off + cut..].fill(0);
                } else {
                    b.truncate(last_off + cut);
                }
            });
            let (first, last, cut_bytes) =
                reopen(&dir).unwrap_or_else(|e| panic!("cut {cut} {how}: {e}"));
            assert_eq!((first, last), (1, last_first - 1), "cut {cut} {how}");
            assert!(
                cut_bytes > 0 || how == "truncate" || cut < 48,
                "cut {cut} {how}: torn bytes reported"
            );
            // Reopening again is stable, and the log takes new appends where it was cut.
            let path = dir.clone();
            run(move || async move {
                let (log, report) = Log::open(&path, small_config()).await.unwrap();
                assert_eq!(report.torn_bytes_cut, 0, "the cut was made durable");
                assert_eq!(log.last_index(), last_first - 1);
                append_n(&log, 1, 3, 2, 500).await;
                log.sync().await.unwrap();
                log.close().await.unwrap();
            });
            assert_eq!(reopen(&dir).unwrap().1, last_first + 5);
        }
    }
}

#[test]
fn a_flipped_bit_in_the_tail_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40);
    let seg = last_segment(dir.path());
    let frames = frames_of(&seg);
    let (off, _, first, _) = *frames.last().unwrap();
    damage(&seg, |b| b[off + 10] ^= 0x04); // in the header
    let (_, last, cut) = reopen(dir.path()).unwrap();
    assert_eq!(last, first - 1);
    assert!(cut > 0);
}

#[test]
fn damage_before_valid_frames_is_corruption_naming_file_offset_and_range() {
    // ~900 KiB in the (1 MiB) last segment: damage near its start is far more than the torn
    // window (2 flushes of 64 KiB) before the end.
    for (what, at_header) in [("payload bit", false), ("header bit", true), ("zeroed block", false)]
    {
        let dir = tempfile::tempdir().unwrap();
        make_log(dir.path(), 800);
        let seg = last_segment(dir.path());
        let frames = frames_of(&seg);
        assert!(frames.len() > 300, "{} frames", frames.len());
        let (off, _, first, last) = frames[20];
        damage(&seg, |b| match what {
            "zeroed block" => {
                let block = (off / 4096 + 1) * 4096;
                b[block..block + 4096].fill(0);
            }
            _ => b[off + if at_header { 30 } else { 100 }] ^= 0x80,
        });
        let err = reopen(dir.path()).expect_err(what);
        match &err {
            LogError::Corruption { path, offset, first_index, last_index, .. } => {
                assert_eq!(path, &seg, "{what}");
                assert!(
                    *offset >= off as u64 && *offset < off as u64 + 8192,
                    "{what}: offset {offset} vs {off}"
                );
                assert!(*first_index >= first && *first_index <= last + 10, "{what}: {err}");
                assert!(last_index >= first_index, "{what}: {err}");
            }
            other => panic!("{what}: expected corruption, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(seg.file_name().unwrap().to_str().unwrap()), "{msg}");
    }
}

#[test]
fn damage_in_a_sealed_segment_or_a_missing_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 2500); // several 1 MiB segments
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    // A flipped bit in the middle segment: the next segment starts after a hole.
    let copy = dir.path().join("copy");
    copy_dir(dir.path(), &copy);
    let mid = copy.join(segs[1].file_name().unwrap());
    let frames = frames_of(&mid);
    damage(&mid, |b| b[frames[frames.len() / 2].0 + 70] ^= 1);
    let err = reopen(&copy).expect_err("hole in a sealed segment");
    assert!(matches!(err, LogError::Inconsistent { .. } | LogError::Corruption { .. }), "{err}");
    assert!(err.to_string().contains("missing") || err.to_string().contains("corruption"), "{err}");
    // A missing middle segment.
    std::fs::remove_file(dir.path().join(segs[1].file_name().unwrap())).unwrap();
    let err = reopen(dir.path()).expect_err("missing segment");
    assert!(matches!(err, LogError::Inconsistent { .. }), "{err}");
}

#[test]
fn hard_state_survives_one_damaged_slot_and_reports_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let (mut hs, state) = HardStateFile::open(&p, 3).await.unwrap();
        assert_eq!(state, None);
        for term in 1..=5 {
            hs.save(&HardState {
                term,
                vote: term % 3,
                commit: term * 10,
                blob: vec![term as u8; 7],
            })
            .await
            .unwrap();
        }
        hs.close().await.unwrap();
    });
    let file = path.join("hardstate");
    let load =
        |p: PathBuf| run(move || async move { HardStateFile::open(&p, 3).await.map(|(_, s)| s) });
    assert_eq!(load(path.clone()).unwrap().unwrap().term, 5);
    // Generation 5 sits in slot 1; damage it (a torn last save): the previous state remains.
    damage(&file, |b| b[4096 + 40] ^= 0xFF);
    let s = load(path.clone()).unwrap().unwrap();
    assert_eq!((s.term, s.vote, s.commit), (4, 1, 40));
    // Both damaged: the vote is lost, and that is an error, not a fresh start.
    damage(&file, |b| b[40] ^= 0xFF);
    assert!(matches!(load(path.clone()), Err(LogError::Corruption { .. })));
    // A missing file is a new node.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(load(path).unwrap(), None);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// An EIO on a write or a failed fdatasync: every waiting append gets the error, the durable
/// index does not move past what was durable before, and the log refuses further work until it
/// is reopened; reopening recovers what is really on disk.
#[test]
fn io_errors_fail_every_waiter_and_poison_the_log() {
    use corelog::frame::{EntryKind, EntryRef};
    use corelog::log::{SyncMethod, faults};
    // Adaptive: the failing flush goes out alone, as one RWF_DSYNC write.
    let cases = [
        (false, SyncMethod::Fdatasync),
        (true, SyncMethod::Fdatasync),
        (false, SyncMethod::Adaptive),
        (true, SyncMethod::Adaptive),
    ];
    for (fail_sync, sync) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let p = path.clone();
        let durable_before = run(move || async move {
            let (log, _) = Log::open(&p, LogConfig { sync, ..small_config() }).await.unwrap();
            let last = append_n(&log, 1, 10, 1, 500).await;
            log.wait_durable(last).await.unwrap();
            // Light load: adaptive writes these (and so the failing flush) with RWF_DSYNC.
            assert_eq!(log.stats().dsync_flushes > 0, sync == SyncMethod::Adaptive);
            if fail_sync {
                faults::fail_fdatasync_after(0);
            } else {
                faults::fail_write_after(0);
            }
            let mut waits = Vec::new();
            for _ in 0..8 {
                let log = log.clone();
                waits.push(corelog::rt::spawn(async move {
                    let data = payload(log.last_index() + 1, 500);
                    let e = [EntryRef {
                        kind: EntryKind::Normal,
                        session: 1,
                        seq: log.last_index() + 1,
                        data: &data,
                    }];
                    let r = log.append_entries(1, &e).await?;
                    log.wait_durable(r.last).await
                }));
            }
            for w in waits {
                let err = w.await.expect_err("a failed flush fails its waiters");
                assert!(
                    err.to_string().contains("Input/output error")
                        || matches!(err, LogError::Poisoned(_)),
                    "{err}"
                );
            }
            faults::clear();
            assert_eq!(log.durable_index(), last, "nothing became durable through a failed flush");
            let data = [1u8; 3];
            let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: 99, data: &data }];
            assert!(matches!(log.append_entries(1, &e).await, Err(LogError::Poisoned(_))));
            assert!(matches!(log.read(1, 1, 10).await, Err(LogError::Poisoned(_))));
            let _ = log.close().await;
            last
        });
        // Reopen: at least what was durable, every entry intact.
        let (first, last, _) = reopen(&path).unwrap();
        assert_eq!(first, 1);
        assert!(last >= durable_before, "{sync}, sync {fail_sync}: {last} < {durable_before}");
    }
}
