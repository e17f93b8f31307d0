//! Crash test with real processes: a child appends entries of known contents and prints each
//! durable index; the parent SIGKILLs it at random moments, reopens the log, and checks that
//! every index reported durable is present, intact and in order, and that nothing after the
//! cut is garbage. Rounds: 12 by default, `CORELOG_CRASH_ROUNDS` for more. The rounds take the
//! sync methods in turn on the same log: write + fdatasync, `O_DSYNC` segments (`sync =
//! "dsync"`, which `corelog disk-check` may choose), and `adaptive` (lone flushes as one
//! `RWF_DSYNC` write, the others write + fdatasync): every way of making a flush durable is
//! killed mid-flight, and each reopens what the others wrote.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::run;

use corelog::log::Log;
use corelog::tools::crash_writer::{CrashWriterArgs, config, entry_len, payload};

fn args(dir: &std::path::Path) -> CrashWriterArgs {
    CrashWriterArgs {
        dir: dir.to_path_buf(),
        entry_size_max: 3000,
        concurrency: 8,
        segment_bytes: 1 << 20,
        flush_bytes_max: 64 << 10,
        sync: corelog::log::SyncMethod::Fdatasync,
        until: 0,
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_reported_durable() {
    let rounds: u64 =
        std::env::var("CORELOG_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let seed = std::env::var("CORELOG_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    println!(
        "crash test: seed {seed}, {rounds} rounds (CORELOG_CRASH_SEED={seed} replays the kill times)"
    );
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path());
    let mut max_durable_ever = 0u64;
    for round in 0..rounds {
        let sync = ["fdatasync", "dsync", "adaptive"][round as usize % 3];
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["crash-writer", "--dir"])
            .arg(dir.path())
            .args([
                "--entry-size-max",
                "3000",
                "--concurrency",
                "8",
                "--segment-bytes",
                "1048576",
                "--flush-bytes-max",
                "65536",
                "--sync",
                sync,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start crash-writer");
        let stdout = child.stdout.take().unwrap();
        let reported = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicU64::new(0));
        let (r2, s2) = (reported.clone(), started.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(v) = line.strip_prefix("durable ") {
                    let v: u64 = v.parse().expect("index");
                    r2.fetch_max(v, Ordering::SeqCst);
                } else if line.starts_with("ready") {
                    s2.store(1, Ordering::SeqCst);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while started.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "crash-writer did not start");
            assert!(child.try_wait().unwrap().is_none(), "crash-writer exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        let modes = common::segments_open_dsync(child.id(), dir.path());
        assert!(
            !modes.is_empty() && modes.iter().all(|&d| d == (sync == "dsync")),
            "round {round}: segments open with O_DSYNC {modes:?}, expected all {}",
            sync == "dsync"
        );
        let wait_ms = 20 + next() % 400;
        std::thread::sleep(Duration::from_millis(wait_ms));
        // SIGKILL: no chance to flush or close anything.
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let durable = reported.load(Ordering::SeqCst);
        max_durable_ever = max_durable_ever.max(durable);
        let must_have = max_durable_ever;
        let cfg = config(&a);
        let path = dir.path().to_path_buf();
        let (last, torn) = run(move || async move {
            let (log, report) = Log::open(&path, cfg)
                .await
                .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
            let last = log.last_index();
            assert!(
                last >= must_have,
                "round {round}: index {must_have} was reported durable but the log ends at {last}"
            );
            let mut next = log.first_index();
            while next <= last {
                for f in log.read(next, last, 1 << 20).await.unwrap() {
                    for e in f.entries() {
                        assert_eq!(e.index, next, "round {round}: out of order");
                        assert_eq!(e.seq, next, "round {round}: entry {next} seq");
                        assert_eq!(
                            e.data,
                            &payload(next, entry_len(next, 3000))[..],
                            "round {round}: entry {next} garbage"
                        );
                        next += 1;
                    }
                }
            }
            log.close().await.unwrap();
            (last, report.torn_bytes_cut)
        });
        println!(
            "round {round}: killed after {wait_ms} ms; reported durable {durable}; log ends at {last}; torn bytes cut {torn}"
        );
    }
    assert!(max_durable_ever > 0, "the writer never reported anything durable");
}
