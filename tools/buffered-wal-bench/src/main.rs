//! buffered-wal-bench: the naive WAL baseline for `corelog bench wal`.
//!
//! A plain buffered `pwrite` + `fdatasync` loop on a preallocated file, with the same
//! batching as corelog: N closed-loop writer threads append entries to a shared,
//! mutex-protected buffer; when no flush is in flight, one of them becomes the leader, takes
//! everything gathered, writes it with one buffered `pwrite`, calls `fdatasync` and wakes the
//! waiters. Appends that arrive while a flush is in flight gather for the next one; that is
//! all of group commit (no timer, one flush in flight).
//!
//! Same bytes on disk as corelog: each flush writes a 48-byte frame header followed by, per
//! entry, a 24-byte entry header and the payload. No checksums, no O_DIRECT, no alignment.
//!
//! The file (`--file-size`, default 1 GiB) is fallocated and then written once with zeros
//! and synced before the run, so every measured write is an overwrite of written blocks
//! (no extent conversion, no size change: `fdatasync` flushes data only). Writes wrap
//! around to offset 0 when they reach the end.
//!
//! `--sync dsync` opens the file with O_DSYNC instead and skips the `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use walbench_common::{
    merge, parse_args, parse_bytes, run_window, FlushStats, Report, Window, WriterStats,
};

const USAGE: &str = "\
buffered-wal-bench: buffered pwrite + fdatasync with group commit on a preallocated file

USAGE: buffered-wal-bench --dir PATH [--duration 10s] [--warmup 1s] [--entry-size 4096]
                          [--concurrency 1] [--json FILE] [--keep]
                          [--file-size 1GiB] [--flush-bytes-max 1MiB]
                          [--sync fdatasync|dsync]

N closed-loop writers; one flush (pwrite of everything gathered, then fdatasync) at a
time. The file is created under --dir, preallocated and zero-filled before the run, and
removed afterwards unless --keep.";

/// Bytes of the header written before each flushed batch (corelog's frame header).
const FRAME_HEADER_BYTES: usize = 48;
/// Bytes of the header written before each entry's payload (corelog's entry header).
const ENTRY_HEADER_BYTES: usize = 24;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SyncMode {
    Fdatasync,
    Dsync,
}

/// The group-commit state, behind one mutex.
struct State {
    /// The batch being gathered: frame header space, then entries. Empty when no entry
    /// is waiting.
    gathering: Vec<u8>,
    gathering_entries: u64,
    /// A cleared buffer to swap in when a leader takes `gathering`.
    spare: Vec<u8>,
    /// Sequence number of the newest appended entry (the first is 1).
    appended_seq: u64,
    /// Every entry with a sequence number up to this one is durable.
    durable_seq: u64,
    /// A leader is writing and syncing; invariant: at most one.
    flushing: bool,
    /// File offset of the next flush.
    next_offset: u64,
    /// Sequence number of the flushed frames.
    frame_seq: u64,
}

struct Log {
    file: File,
    file_size: u64,
    sync: SyncMode,
    flush_bytes_max: usize,
    state: Mutex<State>,
    changed: Condvar,
    flushes: AtomicU64,
    flushed_entries: AtomicU64,
    flushed_bytes: AtomicU64,
}

impl Log {
    /// Appends one entry and returns when it is durable.
    fn append(&self, writer: u32, payload: &[u8]) {
        let entry_bytes = ENTRY_HEADER_BYTES + payload.len();
        let mut s = self.state.lock().unwrap();
        // Backpressure: a full batch waits for the flush in flight to take it.
        while !s.gathering.is_empty() && s.gathering.len() + entry_bytes > self.flush_bytes_max {
            s = self.changed.wait(s).unwrap();
        }
        if s.gathering.is_empty() {
            s.gathering.resize(FRAME_HEADER_BYTES, 0);
        }
        s.appended_seq += 1;
        let my_seq = s.appended_seq;
        // Entry header: sequence, payload length, writer, padding.
        s.gathering.extend_from_slice(&my_seq.to_le_bytes());
        s.gathering
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        s.gathering.extend_from_slice(&writer.to_le_bytes());
        s.gathering
            .extend_from_slice(&[0u8; ENTRY_HEADER_BYTES - 16]);
        s.gathering.extend_from_slice(payload);
        s.gathering_entries += 1;

        while s.durable_seq < my_seq {
            if s.flushing {
                s = self.changed.wait(s).unwrap();
                continue;
            }
            // Lead: take everything gathered (our own entry included).
            let spare = std::mem::take(&mut s.spare);
            let mut batch = std::mem::replace(&mut s.gathering, spare);
            let entries = std::mem::take(&mut s.gathering_entries);
            let last_seq = s.appended_seq;
            let len = batch.len() as u64;
            let mut offset = s.next_offset;
            if offset + len > self.file_size {
                offset = 0;
            }
            s.next_offset = offset + len;
            s.frame_seq += 1;
            let frame_seq = s.frame_seq;
            s.flushing = true;
            drop(s);

            // Frame header: frame sequence, first and last entry, entry count, length.
            let first_seq = last_seq + 1 - entries;
            batch[0..8].copy_from_slice(&frame_seq.to_le_bytes());
            batch[8..16].copy_from_slice(&first_seq.to_le_bytes());
            batch[16..24].copy_from_slice(&last_seq.to_le_bytes());
            batch[24..32].copy_from_slice(&entries.to_le_bytes());
            batch[32..40].copy_from_slice(&len.to_le_bytes());
            self.file
                .write_all_at(&batch, offset)
                .unwrap_or_else(|e| panic!("pwrite of {len} bytes at offset {offset}: {e}"));
            if self.sync == SyncMode::Fdatasync {
                // SAFETY: the descriptor belongs to self.file and is open.
                if unsafe { libc::fdatasync(self.file.as_raw_fd()) } != 0 {
                    panic!("fdatasync: {}", std::io::Error::last_os_error());
                }
            }
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.flushed_entries.fetch_add(entries, Ordering::Relaxed);
            self.flushed_bytes.fetch_add(len, Ordering::Relaxed);

            batch.clear();
            s = self.state.lock().unwrap();
            s.spare = batch;
            s.durable_seq = last_seq;
            s.flushing = false;
            self.changed.notify_all();
        }
    }

    fn counters(&self) -> FlushStats {
        FlushStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: self.flushed_entries.load(Ordering::Relaxed),
            bytes: self.flushed_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Creates the file, allocates `size` bytes, writes them once with zeros and syncs, so
/// that later writes are overwrites of written blocks.
fn prepare_file(path: &Path, size: u64, sync: SyncMode) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if sync == SyncMode::Dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    opts.open(path)
}

fn main() {
    let mut file_size = 1u64 << 30;
    let mut flush_bytes_max = 1usize << 20;
    let mut sync = SyncMode::Fdatasync;
    let args = parse_args(USAGE, |flag, value| {
        match flag {
            "--file-size" => file_size = parse_bytes(value)?,
            "--flush-bytes-max" => flush_bytes_max = parse_bytes(value)? as usize,
            "--sync" => {
                sync = match value {
                    "fdatasync" => SyncMode::Fdatasync,
                    "dsync" => SyncMode::Dsync,
                    _ => return Err(format!("--sync must be fdatasync or dsync, not {value:?}")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    });
    let max_batch = FRAME_HEADER_BYTES + ENTRY_HEADER_BYTES + args.entry_size;
    if flush_bytes_max < max_batch {
        flush_bytes_max = max_batch;
    }
    if file_size < 2 * flush_bytes_max as u64 {
        eprintln!("error: --file-size must hold at least two full flushes");
        std::process::exit(2);
    }

    let path: PathBuf = args
        .dir
        .join(format!("buffered-wal-bench.{}.dat", std::process::id()));
    eprintln!(
        "buffered-wal-bench: file {} ({} bytes, preallocated and zero-filled) entry_size {} \
         concurrency {} warmup {:?} duration {:?} flush_bytes_max {} sync {:?}",
        path.display(),
        file_size,
        args.entry_size,
        args.concurrency,
        args.warmup,
        args.duration,
        flush_bytes_max,
        sync
    );
    let file = prepare_file(&path, file_size, sync).unwrap_or_else(|e| {
        eprintln!("error: preparing {}: {e}", path.display());
        std::process::exit(1);
    });
    let log = Arc::new(Log {
        file,
        file_size,
        sync,
        flush_bytes_max,
        state: Mutex::new(State {
            gathering: Vec::with_capacity(flush_bytes_max),
            gathering_entries: 0,
            spare: Vec::with_capacity(flush_bytes_max),
            appended_seq: 0,
            durable_seq: 0,
            flushing: false,
            next_offset: 0,
            frame_seq: 0,
        }),
        changed: Condvar::new(),
        flushes: AtomicU64::new(0),
        flushed_entries: AtomicU64::new(0),
        flushed_bytes: AtomicU64::new(0),
    });
    let window = Arc::new(Window::new());

    let writers: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let (log, window) = (log.clone(), window.clone());
            let entry_size = args.entry_size;
            std::thread::Builder::new()
                .name(format!("writer-{t}"))
                .spawn(move || {
                    let payload: Vec<u8> = (0..entry_size)
                        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(t as u32) as u8)
                        .collect();
                    let mut stats = WriterStats::new();
                    while !window.stopped() {
                        stats.time(&window, || log.append(t as u32, &payload));
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
        || before = log.counters(),
        || after = log.counters(),
    );
    let stats: Vec<WriterStats> = writers
        .into_iter()
        .map(|w| w.join().expect("writer panicked"))
        .collect();

    let flush = FlushStats {
        flushes: after.flushes - before.flushes,
        entries: after.entries - before.entries,
        bytes: after.bytes - before.bytes,
    };
    let report = Report {
        tool: "buffered-wal-bench",
        args: &args,
        elapsed,
        latency_ns: merge(stats),
        flush: Some(flush),
        extra: vec![
            (
                "sync".into(),
                format!(
                    "\"{}\"",
                    if sync == SyncMode::Dsync {
                        "dsync"
                    } else {
                        "fdatasync"
                    }
                ),
            ),
            ("file_size".into(), file_size.to_string()),
            ("flush_bytes_max".into(), flush_bytes_max.to_string()),
        ],
    };
    report.emit();

    if !args.keep {
        if let Err(e) = std::fs::remove_file(&path) {
            eprintln!("warning: removing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &Path, file_size: u64, flush_bytes_max: usize) -> (Log, PathBuf) {
        let path = dir.join(format!("test-{}-{file_size}.dat", std::process::id()));
        let file = prepare_file(&path, file_size, SyncMode::Fdatasync).unwrap();
        let log = Log {
            file,
            file_size,
            sync: SyncMode::Fdatasync,
            flush_bytes_max,
            state: Mutex::new(State {
                gathering: Vec::new(),
                gathering_entries: 0,
                spare: Vec::new(),
                appended_seq: 0,
                durable_seq: 0,
                flushing: false,
                next_offset: 0,
                frame_seq: 0,
            }),
            changed: Condvar::new(),
            flushes: AtomicU64::new(0),
            flushed_entries: AtomicU64::new(0),
            flushed_bytes: AtomicU64::new(0),
        };
        (log, path)
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Concurrent writers: every entry lands in exactly one frame, frames are contiguous
    /// and self-consistent, and the counters match what is on disk.
    #[test]
    fn group_commit_writes_every_entry_once() {
        const WRITERS: u32 = 8;
        const PER_WRITER: u64 = 300;
        const PAYLOAD: usize = 100;
        let (log, path) = log_in(&std::env::temp_dir(), 4 << 20, 2048);
        let log = Arc::new(log);
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..PER_WRITER {
                        log.append(w, &[w as u8; PAYLOAD]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = WRITERS as u64 * PER_WRITER;
        {
            let s = log.state.lock().unwrap();
            assert_eq!(s.durable_seq, total);
            assert!(!s.flushing && s.gathering.is_empty());
        }

        let data = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (mut off, mut frames, mut next_seq) = (0usize, 0u64, 1u64);
        let mut per_writer = vec![0u64; WRITERS as usize];
        while next_seq <= total {
            let h = &data[off..off + FRAME_HEADER_BYTES];
            let (frame, first, last, entries, len) = (
                u64_at(h, 0),
                u64_at(h, 8),
                u64_at(h, 16),
                u64_at(h, 24),
                u64_at(h, 32),
            );
            frames += 1;
            assert_eq!(frame, frames, "frames are numbered in order");
            assert_eq!(first, next_seq, "frames continue the previous one");
            assert_eq!(last - first + 1, entries);
            assert!(
                len as usize <= log.flush_bytes_max,
                "a flush stays under the cap"
            );
            let mut at = off + FRAME_HEADER_BYTES;
            for seq in first..=last {
                assert_eq!(u64_at(&data, at), seq);
                let n = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
                let w = u32::from_le_bytes(data[at + 12..at + 16].try_into().unwrap());
                assert_eq!(n, PAYLOAD);
                let payload = &data[at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + n];
                assert!(
                    payload.iter().all(|&b| b == w as u8),
                    "payload belongs to its writer"
                );
                per_writer[w as usize] += 1;
                at += ENTRY_HEADER_BYTES + n;
            }
            assert_eq!(at - off, len as usize);
            off = at;
            next_seq = last + 1;
        }
        assert!(per_writer.iter().all(|&n| n == PER_WRITER));
        let c = log.counters();
        assert_eq!((c.flushes, c.entries, c.bytes), (frames, total, off as u64));
        assert!(
            frames < total,
            "concurrent appends were batched ({frames} flushes)"
        );
    }

    /// A flush that does not fit before the end of the file goes to offset 0.
    #[test]
    fn writes_wrap_around() {
        let (log, path) = log_in(&std::env::temp_dir(), 8192, 4096);
        for i in 0..10u32 {
            log.append(0, &[i as u8; 1000]);
        }
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(data.len(), 8192, "the file never grows");
        // One entry per flush: 48 + 24 + 1000 = 1072 bytes; 7 fit in 8192, the 8th wraps.
        assert_eq!(u64_at(&data, 0), 8, "frame 8 was written at offset 0");
        assert_eq!(log.state.lock().unwrap().next_offset, 3 * 1072);
    }
}
