//! raft-engine-bench: synced appends to TiKV's raft-engine with the workload of
//! `corelog bench wal`, as the peer baseline for corelog's local log.
//!
//! N writer threads run a closed loop. Writer `t` owns raft group (region) `t + 1` and
//! appends one entry of `--entry-size` payload bytes per `LogBatch`, written with
//! `sync = true`. raft-engine's write barrier makes concurrent writers one write group: the
//! group's leader appends every member's batch to the current log file with a buffered
//! `pwrite` and calls `fdatasync` once for the group. That is its group commit, the
//! counterpart of corelog's.
//!
//! Engine settings: raft-engine's defaults (format V2, log recycling on, 128 MiB files),
//! except compression off (`batch_compression_threshold = 0`; corelog does not compress and
//! the payload is random anyway) and `purge_threshold` lowered to 1 GiB so that purging and
//! file recycling happen inside a short run and disk use stays bounded. Each writer compacts
//! its region every 1024 entries (keeping the last 256), a purge thread calls
//! `purge_expired_files` every 500 ms, so the in-memory index stays small.
//!
//! One append's latency covers encoding the batch (`add_entries`) and `Engine::write`, i.e.
//! from the call to the durable acknowledgement. Flush counts come from raft-engine's own
//! prometheus counters: `raft_engine_sync_log_duration_seconds` (one sample per fdatasync),
//! `raft_engine_write_size` (one sample per written batch, encoded bytes).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::well_known_types::BytesValue;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};
use walbench_common::{
    merge, parse_args, parse_bytes, run_window, FlushStats, Report, Window, WriterStats,
};

const USAGE: &str = "\
raft-engine-bench: synced appends to raft-engine (TiKV) with N closed-loop writers

USAGE: raft-engine-bench --dir PATH [--duration 10s] [--warmup 1s] [--entry-size 4096]
                         [--concurrency 1] [--json FILE] [--keep]
                         [--purge-threshold 1GiB] [--target-file-size 128MiB]

Each writer appends one entry per LogBatch to its own region with sync=true; raft-engine's
write group merges concurrent writers into one write + fdatasync. The engine's files go to
a fresh directory under --dir, removed afterwards unless --keep.";

/// Compact a region every this many entries ...
const COMPACT_EVERY: u64 = 1024;
/// ... keeping this many of its newest entries.
const COMPACT_KEEP: u64 = 256;
const PURGE_INTERVAL: Duration = Duration::from_millis(500);

/// The entry type: a protobuf `BytesValue` whose first 8 bytes carry the entry's index
/// (little endian). TiKV stores `eraftpb::Entry`; the difference is a few bytes of fields.
#[derive(Clone)]
struct BenchEntry;

impl MessageExt for BenchEntry {
    type Entry = BytesValue;

    fn index(e: &BytesValue) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&e.get_value()[..8]);
        u64::from_le_bytes(b)
    }
}

/// raft-engine's counters, read from prometheus' default registry.
fn engine_counters() -> FlushStats {
    let mut s = FlushStats::default();
    for mf in prometheus::gather() {
        let Some(m) = mf.get_metric().first() else {
            continue;
        };
        match mf.get_name() {
            "raft_engine_sync_log_duration_seconds" => {
                s.flushes = m.get_histogram().get_sample_count();
            }
            "raft_engine_write_size" => {
                s.entries = m.get_histogram().get_sample_count();
                s.bytes = m.get_histogram().get_sample_sum() as u64;
            }
            _ => {}
        }
    }
    s
}

fn fill_random(buf: &mut [u8], mut seed: u64) {
    for b in buf.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
}

fn main() {
    let mut purge_threshold = 1u64 << 30;
    let mut target_file_size = 128u64 << 20;
    let args = parse_args(USAGE, |flag, value| {
        match flag {
            "--purge-threshold" => purge_threshold = parse_bytes(value)?,
            "--target-file-size" => target_file_size = parse_bytes(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    });
    if args.entry_size < 8 {
        eprintln!("error: --entry-size must be at least 8 (the entry's index lives in it)");
        std::process::exit(2);
    }
    if purge_threshold < target_file_size {
        eprintln!("error: --purge-threshold must be at least --target-file-size");
        std::process::exit(2);
    }

    let data_dir: PathBuf = args
        .dir
        .join(format!("raft-engine-bench.{}", std::process::id()));
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).expect("remove stale data dir");
    }
    let cfg = Config {
        dir: data_dir.display().to_string(),
        batch_compression_threshold: ReadableSize(0),
        purge_threshold: ReadableSize(purge_threshold),
        target_file_size: ReadableSize(target_file_size),
        ..Default::default()
    };
    eprintln!(
        "raft-engine-bench: dir {} entry_size {} concurrency {} warmup {:?} duration {:?} \
         purge_threshold {} target_file_size {} compression off",
        data_dir.display(),
        args.entry_size,
        args.concurrency,
        args.warmup,
        args.duration,
        purge_threshold,
        target_file_size
    );
    let engine = Arc::new(Engine::open(cfg).unwrap_or_else(|e| {
        eprintln!("error: opening raft-engine in {}: {e}", data_dir.display());
        std::process::exit(1);
    }));
    let window = Arc::new(Window::new());

    let purger = {
        let (engine, window) = (engine.clone(), window.clone());
        std::thread::Builder::new()
            .name("purge".into())
            .spawn(move || {
                while !window.stopped() {
                    std::thread::sleep(PURGE_INTERVAL);
                    match engine.purge_expired_files() {
                        Ok(regions) => {
                            // Regions holding back purging: compact them to their tail.
                            for r in regions {
                                if let Some(last) = engine.last_index(r) {
                                    engine.compact_to(r, last);
                                }
                            }
                        }
                        Err(e) => eprintln!("warning: purge_expired_files: {e}"),
                    }
                }
            })
            .expect("spawn purge thread")
    };

    let writers: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let (engine, window) = (engine.clone(), window.clone());
            let entry_size = args.entry_size;
            std::thread::Builder::new()
                .name(format!("writer-{t}"))
                .spawn(move || {
                    let region = t as u64 + 1;
                    let mut payload = vec![0u8; entry_size];
                    fill_random(&mut payload, 0x9e37_79b9_7f4a_7c15 ^ region);
                    let mut entry = BytesValue::new();
                    entry.set_value(payload);
                    let mut batch = LogBatch::with_capacity(1);
                    let mut stats = WriterStats::new();
                    let mut index = 0u64;
                    while !window.stopped() {
                        index += 1;
                        entry.mut_value()[..8].copy_from_slice(&index.to_le_bytes());
                        stats.time(&window, || {
                            batch
                                .add_entries::<BenchEntry>(region, std::slice::from_ref(&entry))
                                .expect("add_entries");
                            engine.write(&mut batch, true).expect("raft-engine write")
                        });
                        if index.is_multiple_of(COMPACT_EVERY) {
                            engine.compact_to(region, index - COMPACT_KEEP);
                        }
                    }
                    stats
                })
                .expect("spawn writer")
        })
        .collect();

    let mut before = FlushStats::default();
    let mut after = FlushStats::default();
    let elapsed = run_window(
        &window,
        &args,
        || before = engine_counters(),
        || after = engine_counters(),
    );
    let stats: Vec<WriterStats> = writers
        .into_iter()
        .map(|w| w.join().expect("writer panicked"))
        .collect();
    purger.join().expect("purge thread panicked");

    let flush = FlushStats {
        flushes: after.flushes - before.flushes,
        entries: after.entries - before.entries,
        bytes: after.bytes - before.bytes,
    };
    let report = Report {
        tool: "raft-engine-bench",
        args: &args,
        elapsed,
        latency_ns: merge(stats),
        flush: Some(flush),
        extra: vec![
            ("engine".into(), "\"raft-engine 0.4.2\"".into()),
            ("sync".into(), "\"fdatasync\"".into()),
        ],
    };
    report.emit();

    drop(engine);
    if !args.keep {
        if let Err(e) = std::fs::remove_dir_all(&data_dir) {
            eprintln!("warning: removing {}: {e}", data_dir.display());
        }
    }
}
