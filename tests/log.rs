//! The durable log: appends, group commit, reads, truncation, trim, reset and recovery.

mod common;

use common::*;
use corelog::frame::{EntryKind, EntryRef, Frame, FrameLimits, encode_frame};
use corelog::log::{IoEngine, Log, LogConfig, LogError, SyncMethod};
use std::cell::Cell;
use std::rc::Rc;

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.frames, 0);
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        let last = append_n(&log, 1, 50, 3, 100).await;
        assert_eq!(last, 150);
        log.wait_durable(last).await.unwrap();
        assert_eq!(log.durable_index(), 150);
        check_range(&log, 1, 150, 100).await;
        check_range(&log, 37, 41, 100).await;
        assert_eq!(log.term(10), Some(1));
        // 50 appends of 300 bytes never fill a buffer: nothing waited for room.
        assert_eq!((log.stats().space_waits, log.stats().space_wait_ns), (0, 0));
        log.close().await.unwrap();

        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.frames, 50);
        assert_eq!(report.torn_bytes_cut, 0);
        assert_eq!((log.first_index(), log.last_index(), log.durable_index()), (1, 150, 150));
        check_range(&log, 1, 150, 100).await;
        // It continues where it left off, in the partial last block.
        let last = append_n(&log, 2, 10, 1, 100).await;
        log.wait_durable(last).await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        check_range(&log, 1, 160, 100).await;
        assert_eq!(log.last_term(), 2);
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_gathers_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, LogConfig::new(1)).await.unwrap();
        let mut tasks = Vec::new();
        // 64 appenders, 20 appends each, each waiting for durability before the next.
        let data = vec![5u8; 1000];
        for _ in 0..64 {
            let log = log.clone();
            let data = data.clone();
            tasks.push(corelog::rt::spawn(async move {
                for _ in 0..20 {
                    let e = [EntryRef { kind: EntryKind::Normal, session: 0, seq: 0, data: &data }];
                    let r = log.append_entries(1, &e).await.unwrap();
                    log.wait_durable(r.last).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = log.stats();
        assert_eq!(stats.entries_appended, 64 * 20);
        // Every append waited for durability, yet flushes were shared.
        assert!(
            stats.flushes * 4 < stats.entries_appended,
            "{} flushes for {} appends",
            stats.flushes,
            stats.entries_appended
        );
        assert_eq!(log.durable_index(), 1280);
        log.close().await.unwrap();
    });
}

/// Many appenders with entry sizes that never end on a block boundary, small pipelining
/// threshold and many flushes in flight: flushes are cut at block boundaries and overlap, the
/// partial tail moves to the next flush, and every entry is intact after reopening — through
/// the log's own ring and through the runtime's.
#[test]
fn pipelined_flushes_overlap_and_lose_nothing() {
    for engine in [IoEngine::Uring, IoEngine::Runtime] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let cfg = LogConfig {
            segment_bytes: 1 << 20,
            flush_bytes_max: 64 << 10,
            flushes_in_flight_max: 8,
            pipeline_bytes: 4096,
            io_engine: engine,
            ..LogConfig::new(1)
        };
        run(move || async move {
            let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
            assert_eq!(log.io_engine(), engine);
            let mut tasks = Vec::new();
            for t in 0..48u64 {
                let log = log.clone();
                tasks.push(corelog::rt::spawn(async move {
                    for k in 0..40u64 {
                        // 100..=1,300 bytes: frames end anywhere within a block.
                        let len = 100 + ((t * 7 + k * 13) % 13) as usize * 100;
                        let data = vec![(t ^ k) as u8; len];
                        let e =
                            [EntryRef { kind: EntryKind::Normal, session: t, seq: k, data: &data }];
                        let r = log.append_entries(1, &e).await.unwrap();
                        log.wait_durable(r.last).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let stats = log.stats();
            assert_eq!(stats.entries_appended, 48 * 40);
            assert!(
                stats.peak_flushes_in_flight >= 2,
                "{engine}: flushes never overlapped (peak {})",
                stats.peak_flushes_in_flight
            );
            assert!(stats.peak_flushes_in_flight <= 8);
            assert_eq!(log.durable_index(), 48 * 40);
            log.close().await.unwrap();

            let (log, report) = Log::open(&path, cfg).await.unwrap();
            assert_eq!(report.torn_bytes_cut, 0, "{engine}");
            assert_eq!(log.last_index(), 48 * 40);
            let mut seen = std::collections::HashSet::new();
            let mut next = 1;
            while next <= 48 * 40 {
                for f in log.read(next, 48 * 40, 1 << 20).await.unwrap() {
                    for e in f.entries() {
                        assert_eq!(e.index, next);
                        let (t, k) = (e.session, e.seq);
                        assert_eq!(e.data.len(), 100 + ((t * 7 + k * 13) % 13) as usize * 100);
                        assert!(e.data.iter().all(|&b| b == (t ^ k) as u8), "entry {next}");
                        assert!(seen.insert((t, k)), "entry ({t}, {k}) twice");
                        next += 1;
                    }
                }
            }
            log.close().await.unwrap();
        });
    }
}

#[test]
fn segments_roll_and_frames_are_appended_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        // ~3.5 MiB through 1 MiB segments.
        let mut bytes = Vec::new();
        for i in 0..900u64 {
            bytes.clear();
            let d = payload(i + 1, 4000);
            let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: i + 1, data: &d }];
            encode_frame(&mut bytes, 1, 3, i + 1, &e, FrameLimits::default()).unwrap();
            let frame = Frame::decode(&bytes, &FrameLimits::default()).unwrap();
            log.append(frame).await.unwrap();
        }
        log.sync().await.unwrap();
        assert!(segment_files(&path).len() >= 4, "{:?}", segment_files(&path));
        check_range(&log, 1, 900, 4000).await;
        // Reads of old entries come from disk, byte for byte what was appended.
        let old = log.read(5, 5, 1).await.unwrap();
        let d = payload(5, 4000);
        bytes.clear();
        encode_frame(
            &mut bytes,
            1,
            3,
            5,
            &[EntryRef { kind: EntryKind::Normal, session: 1, seq: 5, data: &d }],
            FrameLimits::default(),
        )
        .unwrap();
        assert_eq!(old[0].bytes(), &bytes[..]);
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.frames, 900);
        check_range(&log, 1, 900, 4000).await;
        log.close().await.unwrap();
    });
}

#[test]
fn rejects_frames_that_do_not_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        append_n(&log, 2, 1, 2, 10).await;
        let mut bytes = Vec::new();
        let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: 1, data: b"x" }];
        for (group, term, first) in [(1, 2, 5), (1, 1, 3), (9, 2, 3)] {
            bytes.clear();
            encode_frame(&mut bytes, group, term, first, &e, FrameLimits::default()).unwrap();
            let f = Frame::decode(&bytes, &FrameLimits::default()).unwrap();
            assert!(
                matches!(log.append(f).await, Err(LogError::Rejected(_))),
                "{group} {term} {first}"
            );
        }
        assert_eq!(log.last_index(), 2);
        let huge = vec![0u8; 70 << 10];
        let e = [EntryRef { kind: EntryKind::Normal, session: 1, seq: 1, data: &huge }];
        assert!(matches!(log.append_entries(2, &e).await, Err(LogError::Rejected(_))));
        assert!(matches!(log.read(3, 3, 100).await, Err(LogError::OutOfRange { .. })));
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_is_durable_and_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        append_n(&log, 1, 100, 1, 300).await;
        log.sync().await.unwrap();
        log.truncate_after(60).await.unwrap();
        assert_eq!((log.last_index(), log.last_term()), (60, 1));
        assert!(matches!(log.read(61, 61, 1).await, Err(LogError::OutOfRange { .. })));
        // The new leader's entries, same sizes, so old frames would line up if not superseded.
        append_n(&log, 2, 10, 1, 300).await;
        log.sync().await.unwrap();
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), 70, "old entries 71..100 must not come back");
        assert_eq!(log.term(60), Some(1));
        assert_eq!(log.term(61), Some(2));
        check_range(&log, 1, 70, 300).await;
        // Truncate inside a multi-entry frame, and into an older segment.
        append_n(&log, 2, 5, 4, 300).await;
        log.truncate_after(72).await.unwrap();
        assert_eq!(log.last_index(), 72);
        log.truncate_after(30).await.unwrap();
        append_n(&log, 3, 3, 1, 300).await;
        log.sync().await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), 33);
        assert_eq!(log.term(30), Some(1));
        assert_eq!(log.term(31), Some(3));
        check_range(&log, 1, 33, 300).await;
        log.close().await.unwrap();
    });
}

#[test]
fn trim_recycles_segments_and_reset_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { spare_segments: 2, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        let last = append_n(&log, 1, 1000, 1, 4000).await;
        log.sync().await.unwrap();
        let before = segment_files(&path).len();
        log.trim_before(600).await.unwrap();
        assert!(log.first_index() > 1 && log.first_index() <= 600, "first {}", log.first_index());
        assert!(segment_files(&path).len() < before);
        assert!(matches!(log.read(1, 1, 1).await, Err(LogError::OutOfRange { .. })));
        // Appending on reuses the recycled files, whose stale frames must never be read back.
        let last2 = append_n(&log, 1, 1000, 1, 4000).await;
        assert_eq!(last2, last + 1000);
        log.sync().await.unwrap();
        assert!(log.stats().segments_recycled > 0);
        let first = log.first_index();
        check_range(&log, first, last2, 4000).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        assert_eq!((log.first_index(), log.last_index()), (first, last2));
        check_range(&log, first, last2, 4000).await;

        log.reset(5000).await.unwrap();
        assert_eq!((log.first_index(), log.last_index()), (5000, 4999));
        append_n(&log, 4, 3, 1, 10).await;
        log.sync().await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, cfg).await.unwrap();
        assert_eq!((log.first_index(), log.last_index()), (5000, 5002));
        check_range(&log, 5000, 5002, 10).await;
        log.close().await.unwrap();
    });
}

/// Spare segment files in a log's directory.
fn spare_files(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("spare-"))
        .count()
}

/// `rounds` times: appends `frames` frames of one 4000-byte entry, then trims all but the last
/// 50 entries (as a database that checkpoints behind its writes), and checks that at most
/// `spares_max` spare files are left. With `warmup`, also checks that no segment was
/// zero-filled after that round ended (the steady state recycles every segment).
async fn append_and_trim(
    log: &Log,
    path: &std::path::Path,
    rounds: usize,
    frames: usize,
    warmup: Option<usize>,
    spares_max: usize,
) {
    let mut zero_filled = 0;
    for round in 0..rounds {
        let last = append_n(log, 1, frames, 1, 4000).await;
        log.sync().await.unwrap();
        log.trim_before(last - 50).await.unwrap();
        let n = spare_files(path);
        assert!(n <= spares_max, "round {round}: {n} spares kept");
        if Some(round) == warmup {
            zero_filled = log.stats().segments_zero_filled;
        }
    }
    if warmup.is_some() {
        let st = log.stats();
        assert_eq!(
            st.segments_zero_filled, zero_filled,
            "segments zero-filled in steady state (recycled {})",
            st.segments_recycled
        );
    }
}

/// Checks every entry of `log`, closes and reopens it, and checks them again.
async fn check_reopened(log: Log, path: &std::path::Path, cfg: LogConfig) {
    let (first, last) = (log.first_index(), log.last_index());
    check_range(&log, first, last, 4000).await;
    log.close().await.unwrap();
    let (log, _) = Log::open(path, cfg).await.unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first, last));
    check_range(&log, first, last, 4000).await;
    log.close().await.unwrap();
}

#[test]
fn a_log_trimmed_as_it_grows_recycles_and_zero_fills_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { spare_segments: 1, spare_segments_max: 4, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        // Each round appends about 1.5 segments.
        append_and_trim(&log, &path, 14, 400, Some(3), 4).await;
        let st = log.stats();
        assert!(st.segments_recycled >= 10, "recycled {}", st.segments_recycled);
        check_reopened(log, &path, cfg).await;
    });
}

/// The spares a log keeps follow what it fills between trims: a log that fills about 12
/// segments between trims recycles all of them in steady state (the old fixed bound of 8
/// would zero-fill 4 each time; the busy phase alone would pass with a fixed 16), and once it
/// goes quiet the spares beyond 8 are deleted, two per trim (a fixed bound keeps them all).
#[test]
fn spares_follow_what_the_log_fills_between_trims() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { spare_segments: 1, spare_segments_max: 16, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        // Busy: about 12 segments (1 MiB each) between trims.
        append_and_trim(&log, &path, 8, 3000, Some(2), 16).await;
        let st = log.stats();
        assert!(spare_files(&path) >= 10, "{} spares kept while busy", spare_files(&path));
        assert_eq!(st.spares_deleted, 0);
        // Quiet: about one segment between trims. The spares shrink to the 8 a log keeps anyway.
        append_and_trim(&log, &path, 4, 300, None, 16).await;
        let kept = spare_files(&path);
        assert!((6..=8).contains(&kept), "{kept} spares kept while quiet");
        assert!(log.stats().spares_deleted >= 2, "{:?}", log.stats().spares_deleted);
        check_reopened(log, &path, cfg).await;
    });
}

#[test]
fn dsync_mode_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { sync: SyncMethod::Dsync, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        let last = append_n(&log, 1, 20, 2, 500).await;
        log.wait_durable(last).await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, cfg).await.unwrap();
        check_range(&log, 1, 40, 500).await;
        log.close().await.unwrap();
    });
}

/// `SyncMethod::Adaptive`: a flush that goes out alone under light load is one `RWF_DSYNC`
/// write, flushes that pipeline are write + fdatasync; either way every entry is durable and
/// intact after reopening. With the runtime's file API (no per-write flags) every flush is
/// write + fdatasync.
#[test]
fn adaptive_sync_writes_lone_flushes_with_rwf_dsync() {
    for engine in [IoEngine::Uring, IoEngine::Runtime] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let cfg = LogConfig {
            sync: SyncMethod::Adaptive,
            io_engine: engine,
            ..pipelining_config(1 << 20)
        };
        run(move || async move {
            let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
            // One appender waiting for each append: every flush goes out alone.
            let mut last = 0;
            for _ in 0..20 {
                last = append_n(&log, 1, 1, 1, 300).await;
                log.wait_durable(last).await.unwrap();
            }
            let one = log.stats();
            assert_eq!(one.flushes, 20);
            let lone = if engine == IoEngine::Uring { one.flushes } else { 0 };
            assert_eq!(one.dsync_flushes, lone, "{engine}: one appender");
            // Many appenders of frames far above `pipeline_bytes`: flushes pipeline, and those
            // use fdatasync.
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let log = log.clone();
                tasks.push(corelog::rt::spawn(async move {
                    for _ in 0..10 {
                        let data = vec![t as u8; 6000];
                        let e =
                            [EntryRef { kind: EntryKind::Normal, session: t, seq: 0, data: &data }];
                        let r = log.append_entries(1, &e).await.unwrap();
                        log.wait_durable(r.last).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let all = log.stats();
            assert!(all.peak_flushes_in_flight >= 2, "{engine}: flushes never overlapped");
            assert!(
                all.flushes - one.flushes > all.dsync_flushes - one.dsync_flushes,
                "{engine}: {} of {} flushes under load were RWF_DSYNC writes",
                all.dsync_flushes - one.dsync_flushes,
                all.flushes - one.flushes
            );
            assert_eq!(log.durable_index(), last + 160);
            log.close().await.unwrap();
            let (log, report) = Log::open(&path, cfg).await.unwrap();
            assert_eq!(report.torn_bytes_cut, 0, "{engine}");
            assert_eq!(log.last_index(), last + 160);
            check_range(&log, 1, last, 300).await;
            log.close().await.unwrap();
        });
    }
}

/// A flush that pipelines is cut at the last block boundary, which usually lies inside a
/// frame: its first part goes out with that flush, the rest stays in the next buffer. Such a
/// frame is still handed out whole (a copy assembled from both buffers), so a leader sends it
/// as it is rather than framing its entries anew.
#[test]
fn with_frames_gives_a_frame_that_a_pipelined_flush_cut_in_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = pipelining_config(1 << 20);
        let (log, _) = Log::open(&path, cfg).await.unwrap();
        // One frame of 4 entries of 3000 bytes (about 12 KB): the first flush is cut at
        // 8192 bytes, inside it.
        let last = append_n(&log, 1, 1, 4, 3000).await;
        assert_eq!(last, 4);
        log.wait_durable(last).await.unwrap();
        // One append of one frame in two flushes: the first was cut inside the frame.
        assert!(log.stats().flushes >= 2, "the frame went to disk in two flushes");
        // Read first: not yet whole in memory, so this comes from the disk.
        let read = log.read(1, 4, usize::MAX).await.unwrap();
        let frames = log
            .with_frames(1, 4, |first, last, frames| {
                assert_eq!((first, last), (1, 4));
                frames.iter().map(|b| b.to_vec()).collect::<Vec<_>>()
            })
            .expect("the frame that a flush cut in two, whole");
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_slice(), read[0].bytes(), "the bytes on disk");
        let f = Frame::decode(&frames[0], &FrameLimits::default()).expect("checksum holds");
        assert_eq!((f.first_index(), f.last_index(), f.len()), (1, 4, frames[0].len()));
        // Asked again (the second follower), the same bytes.
        let again = log.with_frames(1, 4, |_, _, f| f[0].to_vec()).expect("cached");
        assert_eq!(again, frames[0]);
        // Frames after it are whole too (cut or not), up to the newest in the open buffer.
        let last = append_n(&log, 1, 3, 4, 3000).await;
        log.wait_durable(last - 4).await.unwrap();
        let (first, last_, frames) = log
            .with_frames(1, last, |f, l, frames| {
                (f, l, frames.iter().map(|b| b.to_vec()).collect::<Vec<_>>())
            })
            .expect("all in memory");
        assert_eq!((first, last_, frames.len()), (1, last, 4));
        let limits = FrameLimits::default();
        let mut next = 1;
        for b in &frames {
            let f = Frame::decode(b, &limits).expect("every frame whole, checksum holds");
            assert_eq!((f.first_index(), f.len()), (next, b.len()));
            next = f.last_index() + 1;
        }
        log.close().await.unwrap();
    });
}

/// `with_frames` hands out the longest run of the log's own whole frames within a range, in
/// memory (what a leader sends to followers as is, framing only the entries around it), and
/// nothing when no whole frame in memory lies within the range: frames cut by a truncation, or
/// evicted to disk only.
#[test]
fn with_frames_gives_the_whole_frames_in_memory_within_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        // Frames of 4 entries: 1-4, 5-8, 9-12, 13-16.
        let last = append_n(&log, 1, 4, 4, 100).await;
        assert_eq!(last, 16);
        let got = |lo: u64, hi: u64| {
            log.with_frames(lo, hi, |first, last, frames| {
                (first, last, frames.iter().map(|b| b.to_vec()).collect::<Vec<Vec<u8>>>())
            })
        };
        // In the open buffer, before any flush.
        let (first, last_, frames) = got(5, 12).expect("whole frames 5-12");
        assert_eq!((first, last_, frames.len()), (5, 12, 2));
        let limits = FrameLimits::default();
        let decoded: Vec<(u64, u64)> = frames
            .iter()
            .map(|b| {
                let f = Frame::decode(b, &limits).expect("a frame as written");
                assert_eq!(f.len(), b.len());
                (f.first_index(), f.last_index())
            })
            .collect();
        assert_eq!(decoded, vec![(5, 8), (9, 12)]);
        // A range that starts or ends inside a frame: the whole frames within it.
        for (lo, hi, want) in
            [(6, 12, (9, 12)), (5, 11, (5, 8)), (3, 14, (5, 12)), (1, 40, (1, 16))]
        {
            let (first, last_, _) = got(lo, hi).expect("some whole frames");
            assert_eq!((first, last_), want, "{lo}-{hi}");
        }
        for (lo, hi) in [(5, 5), (6, 11), (17, 20)] {
            assert!(got(lo, hi).is_none(), "no whole frame within {lo}-{hi}");
        }
        // The same bytes as a read returns, also once durable (a flushed buffer).
        log.wait_durable(16).await.unwrap();
        let (_, _, frames) = got(1, 16).expect("whole frames 1-16 after the flush");
        let read = log.read(1, 16, usize::MAX).await.unwrap();
        assert_eq!(frames.len(), read.len());
        for (f, r) in frames.iter().zip(&read) {
            assert_eq!(f.as_slice(), r.bytes());
        }
        // A truncation that cuts 9-12 after 10: that frame now holds more than the log.
        log.truncate_after(10).await.unwrap();
        assert!(got(9, 10).is_none(), "a cut frame is not sent as is");
        assert_eq!(got(1, 10).map(|(f, l, _)| (f, l)), Some((1, 8)));
        // Push the early frames out of the recent cache: only on disk, so no frames.
        let last = append_n(&log, 2, 40, 4, 8000).await;
        log.wait_durable(last).await.unwrap();
        assert!(got(5, 8).is_none(), "frames only on disk are read, not handed out");
        assert_eq!(got(last - 3, last).map(|(f, l, _)| (f, l)), Some((last - 3, last)));
        log.close().await.unwrap();
    });
}

/// A read never takes from the disk what is not yet written there. After a reopen the oldest
/// frames are on disk only, and the newest (appended since, flush not yet done) only in
/// memory: a read across both must serve each from where it really is. (A read that extended
/// its disk read over the contiguous frames after the first one read zeros where the newest
/// frames were still in flight: a restarted follower reported "corruption" of an entry it had
/// just received.)
#[test]
fn a_read_across_disk_and_unwritten_frames_takes_each_from_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let last = append_n(&log, 1, 30, 1, 300).await;
        log.wait_durable(last).await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for round in 0..20 {
            let last = append_n(&log, 1, 3, 1, 300).await;
            if round % 2 == 1 {
                // Let the flush start, so that the newest frames are in flight.
                futures_lite::future::yield_now().await;
            }
            assert!(log.durable_index() < last, "round {round}: the read races the flush");
            check_range(&log, 1, last, 300).await;
            log.wait_durable(last).await.unwrap();
        }
        let stats = log.stats();
        assert!(stats.frames_read_from_disk >= 20 * 30, "the old frames came from disk");
        assert_eq!(stats.reads_waited_for_flush, 0);
        log.close().await.unwrap();
    });
}

/// A frame that a pipelined flush cut in two is read whole before either flush completes,
/// without the leader's `with_frames` having assembled it first (a follower reads this way).
#[test]
fn a_frame_cut_in_two_by_a_flush_in_flight_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = pipelining_config(1 << 20);
        let (log, _) = Log::open(&path, cfg).await.unwrap();
        for round in 0..10u64 {
            // A frame of 4 entries of 3000 bytes: the flush is cut at a block boundary inside it.
            let last = append_n(&log, 1, 1, 4, 3000).await;
            futures_lite::future::yield_now().await;
            assert!(log.durable_index() < last, "round {round}: the read races the flush");
            check_range(&log, last - 3, last, 3000).await;
            log.wait_durable(last).await.unwrap();
        }
        let stats = log.stats();
        assert!(stats.flushes >= 20, "each frame went to disk in two flushes");
        assert_eq!(stats.reads_waited_for_flush, 0, "read from its pieces in memory");
        assert_eq!(stats.frames_read_from_disk, 0);
        log.close().await.unwrap();
    });
}

/// A recent cache far smaller than the flushes in flight never drops a buffer whose write
/// has not completed: reads of the newest frames still see them whole.
#[test]
fn a_tiny_recent_cache_keeps_the_buffers_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = pipelining_config(4096);
        let (log, _) = Log::open(&path, cfg).await.unwrap();
        for _ in 0..10 {
            let first = log.last_index() + 1;
            let mut last = 0;
            for _ in 0..8 {
                last = append_n(&log, 1, 1, 1, 6000).await;
                futures_lite::future::yield_now().await;
            }
            check_range(&log, first, last, 6000).await;
            log.wait_durable(last).await.unwrap();
        }
        let stats = log.stats();
        assert!(stats.peak_flushes_in_flight >= 2, "flushes overlapped");
        assert_eq!(stats.reads_waited_for_flush, 0, "every buffer in flight stayed in memory");
        assert_eq!(stats.frames_read_from_disk, 0, "the frames in flight came from memory");
        log.close().await.unwrap();
    });
}

/// Flushes cut at every block boundary past 4 KiB gathered, up to 4 in flight, with a recent
/// cache of `recent_cache_bytes`.
fn pipelining_config(recent_cache_bytes: usize) -> LogConfig {
    LogConfig {
        pipeline_bytes: 4096,
        flushes_in_flight_max: 4,
        recent_cache_bytes,
        ..small_config()
    }
}

/// Appenders that find the buffer full wait in a queue and get their space in the order they
/// came, even when many wait at once, more keep coming (appenders whose last append just
/// became durable, woken before the queue) and some give up (their append dropped) while
/// waiting: the indexes follow the order of the calls, no waiter is forgotten (the test would
/// hang), and everything appended is durable and reads back after reopening.
#[test]
fn appenders_waiting_for_space_go_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let cfg = LogConfig {
        flush_bytes_max: 16 << 10,
        flushes_in_flight_max: 2,
        pipeline_bytes: 4096,
        ..small_config()
    };
    const TASKS: u64 = 300;
    const ROUNDS: u64 = 4;
    let len = |id: u64| 2500 + (id % 7) as usize * 200;
    run(move || async move {
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        // (index, call number, id) of every append that got its space.
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let calls = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (log, got, calls) = (log.clone(), got.clone(), calls.clone());
                Some(corelog::rt::spawn(async move {
                    for k in 0..ROUNDS {
                        // 2,500..=3,700 bytes: a few fit in the buffer, the rest wait.
                        let id = t * ROUNDS + k;
                        let data = vec![id as u8; len(id)];
                        let e = [EntryRef {
                            kind: EntryKind::Normal,
                            session: id,
                            seq: 0,
                            data: &data,
                        }];
                        let call = calls.replace(calls.get() + 1);
                        let r = log.append_entries(1, &e).await.unwrap();
                        got.borrow_mut().push((r.first, call, id));
                        log.wait_durable(r.last).await.unwrap();
                    }
                }))
            })
            .collect();
        // Let every appender reach the queue, then drop some of those still waiting.
        futures_lite::future::yield_now().await;
        let waiting = TASKS as usize - got.borrow().len();
        assert!(waiting > 200, "only {waiting} appenders waited");
        for t in tasks.iter_mut().skip(150).step_by(10).take(10) {
            drop(t.take());
        }
        for t in tasks.into_iter().flatten() {
            t.await;
        }
        let got = got.borrow().clone();
        assert!(got.len() >= ((TASKS - 10) * ROUNDS) as usize, "{} appends", got.len());
        for w in got.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1, "out of call order: {w:?}");
        }
        let last = log.last_index();
        assert_eq!(last, got.len() as u64);
        assert_eq!(log.durable_index(), last);
        // The waits are counted: at least those that were waiting at the first look, but for
        // the ten dropped.
        let st = log.stats();
        assert!(st.space_waits >= waiting as u64 - 10, "{} waits", st.space_waits);
        assert!(st.space_wait_ns >= st.space_waits, "{} ns", st.space_wait_ns);
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, cfg).await.unwrap();
        let mut next = 1;
        for f in log.read(1, last, 1 << 30).await.unwrap() {
            for e in f.entries() {
                let id = got[(next - 1) as usize].2;
                assert_eq!((e.index, e.session), (next, id));
                assert_eq!(e.data.len(), len(id));
                assert!(e.data.iter().all(|&b| b == id as u8));
                next += 1;
            }
        }
        assert_eq!(next, last + 1);
        log.close().await.unwrap();
    });
}

/// An append dropped while it rolls the log to a new segment (its caller gave up) neither
/// cancels the roll halfway nor leaves the log busy for good: the roll finishes on its own,
/// later appends go on, and everything reads back after reopening.
#[test]
fn an_append_dropped_while_rolling_the_segment_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = small_config();
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        let mut dropped = 0;
        while dropped < 3 {
            // One append at a time, each durable before the next: an append that has run
            // but not taken its place is rolling the segment (draining the flushes in flight,
            // renaming a spare); drop it then.
            let before = log.last_index();
            let activated = log.stats().segments_activated;
            let l2 = log.clone();
            let started = Rc::new(Cell::new(false));
            let s2 = started.clone();
            let a = corelog::rt::spawn(async move {
                s2.set(true);
                append_n(&l2, 1, 1, 1, 4000).await
            });
            while !started.get() {
                futures_lite::future::yield_now().await;
            }
            if log.last_index() != before {
                let last = a.await;
                log.wait_durable(last).await.unwrap();
                continue;
            }
            drop(a);
            dropped += 1;
            // The roll goes on without it.
            let t0 = std::time::Instant::now();
            while log.stats().segments_activated == activated {
                assert!(t0.elapsed().as_secs() < 10, "the dropped append's roll never finished");
                corelog::rt::sleep(std::time::Duration::from_millis(1)).await;
            }
            let last = append_n(&log, 1, 3, 1, 4000).await;
            log.wait_durable(last).await.unwrap();
        }
        let last = log.last_index();
        log.sync().await.unwrap();
        check_range(&log, 1, last, 4000).await;
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, cfg).await.unwrap();
        assert_eq!(log.last_index(), last, "{report:?}");
        check_range(&log, 1, last, 4000).await;
        log.close().await.unwrap();
    });
}

/// `space_ready` answers only for room that needs no segment still to prepare (what a
/// follower asks before it takes an append: a preparation under way may yet fail for lack of
/// space). With no spare kept ahead, an append beyond the open segment is not ready until one
/// is prepared, which the question starts, while `space_for` (room not known to be lacking)
/// says yes at once.
#[test]
fn space_ready_waits_for_a_prepared_segment() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { spare_segments: 0, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        append_n(&log, 1, 1, 1, 100).await;
        let beyond = cfg.segment_bytes as usize; // more than the open segment has left
        assert!(log.space_ready(4096), "fits the open segment");
        assert!(log.space_for(beyond).is_ok(), "no lack of space known");
        assert!(!log.space_ready(beyond), "no spare kept ahead: a segment is still to prepare");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.space_ready(beyond) {
            assert!(Instant::now() < deadline, "the question started no preparation");
            corelog::rt::sleep(Duration::from_millis(5)).await;
        }
        // Ready: the append that rolls takes the prepared spare (the first segment and the
        // spare were zero-filled; a roll without it would have zero-filled a third).
        append_n(&log, 1, 20, 1, 60_000).await;
        let st = log.stats();
        assert_eq!((st.segments_activated, st.segments_zero_filled), (2, 2), "{st:?}");
        log.close().await.unwrap();
    });
}

/// `truncation_ready` answers yes only when the segment a cut starts is ready: a spare that
/// holds no index above the cut (what a follower asks before it takes an append that would
/// overwrite its suffix, so that no preparation can fail under the truncation).
#[test]
fn truncation_ready_waits_for_a_spare_that_fits_the_cut() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig { spare_segments: 0, ..small_config() };
        let (log, _) = Log::open(&path, cfg.clone()).await.unwrap();
        // Three segments of 1 MiB: 60 entries of 40 KB.
        let last = append_n(&log, 1, 60, 1, 40_000).await;
        let zero_filled = log.stats().segments_zero_filled;
        assert!(log.truncation_ready(last), "nothing to cut");
        assert!(log.truncation_ready(last + 5), "nothing to cut");
        assert!(!log.truncation_ready(50), "no spare kept ahead: one is still to prepare");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.truncation_ready(50) {
            assert!(Instant::now() < deadline, "the question started no preparation");
            corelog::rt::sleep(Duration::from_millis(5)).await;
        }
        // The cut takes the prepared spare: one zero-fill in all, the one asked for.
        log.truncate_after(50).await.unwrap();
        let st = log.stats();
        assert_eq!(st.segments_zero_filled, zero_filled + 1, "{st:?}");
        // The segments after the cut that were whole (entries 51..) are spares now, but they
        // hold indexes above any earlier cut: not ready for one at 10.
        assert!(!log.truncation_ready(10), "only spares holding higher indexes");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.truncation_ready(10) {
            assert!(Instant::now() < deadline, "the question started no preparation");
            corelog::rt::sleep(Duration::from_millis(5)).await;
        }
        log.truncate_after(10).await.unwrap();
        assert_eq!(log.stats().segments_zero_filled, zero_filled + 2);
        append_n(&log, 2, 3, 1, 1000).await;
        assert_eq!(log.last_index(), 13);
        log.close().await.unwrap();
    });
}

/// A snapshot that restarts the log below its last index (a follower whose suffix the
/// snapshot supersedes): the old segments holding indexes from the new start on are deleted,
/// not kept as spares (no activation at the new start could take them, and on a full disk
/// the new segment needs their space: `log_full_disk.rs`).
#[test]
fn a_reset_below_the_last_index_keeps_no_spare_holding_indexes_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let last = append_n(&log, 1, 60, 1, 40_000).await;
        assert_eq!(last, 60);
        log.reset(30).await.unwrap();
        assert_eq!((log.first_index(), log.last_index()), (30, 29));
        let spares: Vec<u64> = std::fs::read_dir(&path)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let hex = name.strip_prefix("spare-")?.split('-').next()?.to_string();
                Some(u64::from_str_radix(&hex, 16).unwrap())
            })
            .collect();
        assert!(
            spares.iter().all(|&max| max < 30),
            "spares holding indexes from 30 on: {spares:?}"
        );
        let last = append_n(&log, 2, 3, 1, 1000).await;
        assert_eq!(last, 32);
        log.close().await.unwrap();
        // Reopened: the log starts at 30, and no stale frame continues it.
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!((log.first_index(), log.last_index()), (30, 32));
        assert_eq!(log.term(31), Some(2));
        log.close().await.unwrap();
    });
}
