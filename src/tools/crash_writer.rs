//! `corelog crash-writer`: appends entries of known contents to a log and prints every index
//! the moment it is durable, so a parent process can SIGKILL it at any time and then check
//! that each index it was told about survived, intact and in order.
//!
//! Entry `i` holds [`payload`]`(i, len(i))` with session 1 and sequence `i`, so any reader can
//! recompute what must be there.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::frame::{EntryKind, EntryRef};
use crate::log::{Log, LogConfig, SyncMethod};

/// Arguments of `corelog crash-writer`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrashWriterArgs {
    /// The log directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Largest entry, in bytes (entry sizes vary from 1 to this).
    #[arg(long, default_value_t = 3000)]
    pub entry_size_max: usize,
    /// Appenders in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Segment size in bytes (small, so segments roll often).
    #[arg(long, default_value_t = 1 << 20)]
    pub segment_bytes: u64,
    /// Most bytes per flush.
    #[arg(long, default_value_t = 64 << 10)]
    pub flush_bytes_max: usize,
    /// How flushes are made durable.
    #[arg(long, default_value = "adaptive")]
    pub sync: SyncMethod,
    /// Stop after this index (0: run until killed).
    #[arg(long, default_value_t = 0)]
    pub until: u64,
}

/// The configuration the crash writer and its checkers share.
pub fn config(args: &CrashWriterArgs) -> LogConfig {
    LogConfig {
        segment_bytes: args.segment_bytes,
        flush_bytes_max: args.flush_bytes_max,
        sync: args.sync,
        ..LogConfig::new(1)
    }
}

/// The length of entry `index`.
pub fn entry_len(index: u64, max: usize) -> usize {
    1 + (index.wrapping_mul(7919) % max as u64) as usize
}

/// The contents of entry `index`: deterministic, different for every index.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Runs the writer until killed (or `--until`).
pub fn run(args: &CrashWriterArgs) -> ExitCode {
    let args = args.clone();
    let r = crate::rt::Executor::new("crash-writer").run(move || async move { write(args).await });
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn write(args: CrashWriterArgs) -> Result<(), String> {
    let (log, report) = Log::open(&args.dir, config(&args)).await.map_err(|e| e.to_string())?;
    println!("ready last={} torn_cut={}", log.last_index(), report.torn_bytes_cut);
    // Appends are serialised (contents depend on the index they get); durability waits overlap,
    // so group commit still gathers many appends per flush.
    let turn = std::rc::Rc::new(crate::rt::sync::Semaphore::new(1));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let log = log.clone();
        let args = args.clone();
        let turn = turn.clone();
        tasks.push(crate::rt::spawn(async move {
            let mut n = w as u64;
            loop {
                // Frames of 1 to 4 entries; the index is only known once appended, so build the
                // entries for the next index and retry if another appender got there first.
                let per_frame = 1 + (n % 4);
                n += 1;
                let permit = turn.acquire_permit(1).await.map_err(|e| e.to_string())?;
                let first = log.last_index() + 1;
                if args.until > 0 && first > args.until {
                    return Ok::<(), String>(());
                }
                let datas: Vec<Vec<u8>> = (first..first + per_frame)
                    .map(|i| payload(i, entry_len(i, args.entry_size_max)))
                    .collect();
                let entries: Vec<EntryRef<'_>> = datas
                    .iter()
                    .enumerate()
                    .map(|(k, d)| EntryRef {
                        kind: EntryKind::Normal,
                        session: 1,
                        seq: first + k as u64,
                        data: d,
                    })
                    .collect();
                let r = log.append_entries(1, &entries).await.map_err(|e| e.to_string())?;
                drop(permit);
                if r.first != first {
                    return Err(format!("appended at {} but built for {first}", r.first));
                }
                log.wait_durable(r.last).await.map_err(|e| e.to_string())?;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "durable {}", r.last);
                let _ = out.flush();
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    log.close().await.map_err(|e| e.to_string())
}
