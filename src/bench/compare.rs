//! `corelog bench --compare`: this machine's own limits, measured in the same run, so the
//! cluster's figures can be read as fractions of them.
//!
//! - The disk: sequential O_DIRECT writes, each followed by an fdatasync, through io_uring
//!   (the `io-uring` crate directly, no runtime; `corelog disk-check`'s probe), into a file
//!   preallocated and written once (as corelog's segments are, so an fdatasync does not also
//!   commit extent metadata). Measured at the flush sizes given: bandwidth, and the fdatasync latency.
//!   For a local cluster, also after the run under the replicas' own pattern: one writer per
//!   replica, each at the replicas' mean flush size of the saturation phase. When the cluster
//!   gets far less than that, the disk is not what holds it back.
//! - The network: the round trip of a 64-byte message over loopback TCP (`TCP_NODELAY`), the
//!   least a replicated commit pays once, and the client's request pays once more. For a local
//!   cluster, also the bandwidth loopback TCP carries in the replicas' pattern: one stream per
//!   replica at once (the client's to the leader, the leader's to each follower), plain threads
//!   writing and reading 128 KiB at a time. Every appended byte crosses loopback that many
//!   times, and on a machine with few cores these copies, not the disk, can be what bounds
//!   the cluster's bandwidth.
//!
//! Each probe runs for a short, fixed time and prints figures; nothing asserts a speed.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::latency_histogram;
use crate::tools::disk_check::Probe;

/// The disk at one write size.
#[derive(Debug, Clone, Serialize)]
pub struct DiskPoint {
    pub write_bytes: usize,
    /// Writers at once, each sequential in its own file (the figures are their sum; latencies
    /// are of every writer's writes).
    pub writers: usize,
    pub writes_per_sec: f64,
    pub mib_per_sec: f64,
    /// Write + fdatasync, µs.
    pub p50_us: u64,
    pub p99_us: u64,
    /// The fdatasync alone, µs.
    pub fdatasync_p50_us: u64,
}

/// The machine's limits.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub disk: Vec<DiskPoint>,
    /// The disk under corelog's own write pattern of the run, measured after it: one writer
    /// per replica, each writing the replicas' mean flush size of the saturation phase.
    pub same_pattern: Option<DiskPoint>,
    pub loopback_rtt_p50_us: u64,
    pub loopback_rtt_p99_us: u64,
    /// Loopback TCP in the replicas' pattern (local cluster only).
    pub loopback_streams: Option<StreamPoint>,
}

/// Loopback TCP bandwidth with several streams at once.
#[derive(Debug, Clone, Serialize)]
pub struct StreamPoint {
    /// Streams at once, each with its own sending and receiving thread.
    pub streams: usize,
    /// Bytes per write and per read.
    pub write_bytes: usize,
    /// Bytes received, all streams together.
    pub bytes: u64,
    /// All streams together.
    pub mib_per_sec: f64,
}

impl Limits {
    /// The disk point with the highest bandwidth.
    pub fn best_disk(&self) -> Option<&DiskPoint> {
        self.disk.iter().max_by(|a, b| a.mib_per_sec.total_cmp(&b.mib_per_sec))
    }
}

/// Sequential O_DIRECT writes of `write_bytes` (at most 4 MiB), each followed by an fdatasync,
/// for `time`, in a file of about `file_bytes` under `dir` (removed afterwards): the probe of
/// `corelog disk-check`.
pub fn disk_probe(
    dir: &Path,
    write_bytes: usize,
    file_bytes: usize,
    time: Duration,
) -> Result<DiskPoint, String> {
    let write_bytes = write_bytes.next_multiple_of(4096);
    probe_writers(dir, write_bytes, file_bytes.max(write_bytes), 1, time)
}

/// [`disk_probe`] with `writers` threads at once, each in its own file: how the disk serves
/// several logs flushing side by side (the replicas of a local cluster share one disk).
pub fn disk_probe_concurrent(
    dir: &Path,
    write_bytes: usize,
    writers: usize,
    time: Duration,
) -> Result<DiskPoint, String> {
    let write_bytes = write_bytes.next_multiple_of(4096);
    probe_writers(dir, write_bytes, (64 << 20).max(write_bytes * 8), writers.max(1), time)
}

/// `writers` threads, each writing `write_bytes` + fdatasync in a loop for `time` in a scratch
/// file of `file_bytes` of its own; their rates summed, their latencies merged.
fn probe_writers(
    dir: &Path,
    write_bytes: usize,
    file_bytes: usize,
    writers: usize,
    time: Duration,
) -> Result<DiskPoint, String> {
    // Per writer: writes, seconds, write + fdatasync latencies, fdatasync latencies.
    type Writer = (u64, f64, Histogram<u64>, Histogram<u64>);
    let one = move || -> Result<Writer, String> {
        let mut probe = Probe::open(dir, file_bytes)?;
        let (mut both, mut fsync) = (latency_histogram(), latency_histogram());
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < time {
            let (pair, sync) = probe.write_then_fdatasync(write_bytes)?;
            both.saturating_record(pair.as_micros() as u64);
            fsync.saturating_record(sync.as_micros() as u64);
            n += 1;
        }
        Ok((n, start.elapsed().as_secs_f64(), both, fsync))
    };
    let results: Vec<Result<Writer, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers).map(|_| s.spawn(one)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a disk probe thread panicked".into())))
            .collect()
    });
    let (mut rate, mut both, mut fsync) = (0.0, latency_histogram(), latency_histogram());
    for r in results {
        let (n, secs, b, f) = r?;
        rate += n as f64 / secs;
        both.add(&b).map_err(|e| e.to_string())?;
        fsync.add(&f).map_err(|e| e.to_string())?;
    }
    Ok(DiskPoint {
        write_bytes,
        writers,
        writes_per_sec: rate,
        mib_per_sec: rate * write_bytes as f64 / (1 << 20) as f64,
        p50_us: both.value_at_quantile(0.5),
        p99_us: both.value_at_quantile(0.99),
        fdatasync_p50_us: fsync.value_at_quantile(0.5),
    })
}

/// Round trips of a 64-byte message over loopback TCP for `time`.
pub fn loopback_probe(time: Duration) -> Result<Histogram<u64>, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("loopback bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 64];
        loop {
            if s.read_exact(&mut b).is_err() {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    });
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("loopback connect: {e}"))?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut h = latency_histogram();
    let mut b = [7u8; 64];
    let start = Instant::now();
    while start.elapsed() < time {
        let t0 = Instant::now();
        c.write_all(&b).map_err(|e| e.to_string())?;
        c.read_exact(&mut b).map_err(|e| e.to_string())?;
        h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    drop(c);
    let _ = echo.join();
    Ok(h)
}

/// `streams` loopback TCP connections carrying bytes at once for `time`, each with a thread
/// writing `write_bytes` at a time and one reading them: the bandwidth of all streams summed.
pub fn loopback_streams_probe(
    streams: usize,
    write_bytes: usize,
    time: Duration,
) -> Result<StreamPoint, String> {
    let streams = streams.max(1);
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("loopback bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut senders = Vec::with_capacity(streams);
    let mut receivers = Vec::with_capacity(streams);
    for _ in 0..streams {
        senders.push(
            std::net::TcpStream::connect(addr).map_err(|e| format!("loopback connect: {e}"))?,
        );
        receivers.push(listener.accept().map_err(|e| format!("loopback accept: {e}"))?.0);
    }
    let (bytes, secs) = std::thread::scope(|s| -> Result<(u64, f64), String> {
        let readers: Vec<_> = receivers
            .into_iter()
            .map(|mut r| {
                s.spawn(move || {
                    let mut buf = vec![0u8; write_bytes];
                    let mut n = 0u64;
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) => return n,
                            Ok(k) => n += k as u64,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => return n,
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let writers: Vec<_> = senders
            .into_iter()
            .map(|mut w| {
                s.spawn(move || -> std::io::Result<()> {
                    let buf = vec![0x5au8; write_bytes];
                    while start.elapsed() < time {
                        w.write_all(&buf)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join()
                .map_err(|_| "a loopback sender panicked".to_string())?
                .map_err(|e| format!("loopback send: {e}"))?;
        }
        let mut got = 0;
        for r in readers {
            got += r.join().map_err(|_| "a loopback receiver panicked".to_string())?;
        }
        // The readers finish when the writers close, a little after `time`.
        Ok((got, start.elapsed().as_secs_f64()))
    })?;
    let mib_per_sec = bytes as f64 / secs / (1 << 20) as f64;
    Ok(StreamPoint { streams, write_bytes, bytes, mib_per_sec })
}

/// Runs the probes: the disk under `dir` at each of `write_sizes`, then loopback TCP.
pub fn measure(dir: &Path, write_sizes: &[usize], time_each: Duration) -> Result<Limits, String> {
    let mut disk = Vec::new();
    for &w in write_sizes {
        disk.push(disk_probe(dir, w, (64 << 20).max(w * 8), time_each)?);
    }
    let rtt = loopback_probe(time_each)?;
    Ok(Limits {
        disk,
        same_pattern: None,
        loopback_rtt_p50_us: rtt.value_at_quantile(0.5),
        loopback_rtt_p99_us: rtt.value_at_quantile(0.99),
        loopback_streams: None,
    })
}

/// The limits as lines for stdout.
pub fn describe(l: &Limits) -> Vec<String> {
    let mut v = Vec::new();
    for d in l.disk.iter().chain(&l.same_pattern) {
        v.push(format!(
            "disk      O_DIRECT write + fdatasync of {:>7} B{}: {:>8.0} /s {:>8.1} MiB/s, p50 {} (fdatasync alone {}), p99 {}",
            d.write_bytes,
            if d.writers > 1 { format!(" x {} writers", d.writers) } else { String::new() },
            d.writes_per_sec,
            d.mib_per_sec,
            super::progress::human_us(d.p50_us),
            super::progress::human_us(d.fdatasync_p50_us),
            super::progress::human_us(d.p99_us),
        ));
    }
    v.push(format!(
        "network   loopback TCP round trip (64 B): p50 {}, p99 {}",
        super::progress::human_us(l.loopback_rtt_p50_us),
        super::progress::human_us(l.loopback_rtt_p99_us)
    ));
    if let Some(n) = &l.loopback_streams {
        v.push(format!(
            "network   loopback TCP, {} streams at once ({} KiB writes): {:.1} MiB/s in all",
            n.streams,
            n.write_bytes >> 10,
            n.mib_per_sec
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_something() {
        let dir = tempfile::tempdir_in(".").unwrap();
        if !crate::log::direct_io_effective(dir.path()) {
            eprintln!("skipping: O_DIRECT is not in effect here");
            return;
        }
        let d = disk_probe(dir.path(), 4096, 1 << 20, Duration::from_millis(100)).unwrap();
        assert!(d.writes_per_sec > 0.0 && d.p50_us > 0, "{d:?}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "probe file removed");
        assert_eq!(d.writers, 1);
        let c = disk_probe_concurrent(dir.path(), 8192, 3, Duration::from_millis(100)).unwrap();
        assert_eq!((c.writers, c.write_bytes), (3, 8192));
        assert!(c.writes_per_sec > 0.0 && c.p50_us > 0, "{c:?}");
        let want = c.writes_per_sec * 8192.0 / (1 << 20) as f64;
        assert!((c.mib_per_sec - want).abs() < 1e-6, "{c:?}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "probe files removed");
        let h = loopback_probe(Duration::from_millis(50)).unwrap();
        assert!(!h.is_empty());
        let n = loopback_streams_probe(3, 64 << 10, Duration::from_millis(100)).unwrap();
        assert_eq!((n.streams, n.write_bytes), (3, 64 << 10));
        // At least a full write per stream arrived (a probe that reads nothing reports 0).
        assert!(n.bytes >= 3 * (64 << 10) && n.mib_per_sec > 0.0, "{n:?}");
    }
}
