//! Benchmarks behind `corelog bench`. They print figures; nothing here asserts a speed.

pub mod cluster;
pub mod compare;
pub mod load;
pub mod progress;
pub mod report;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Parses a duration such as `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte size such as `4096`, `4k`, `4KiB`, `1m`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t.as_str(), ""),
    };
    let v: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mul = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    v.checked_mul(mul).ok_or_else(|| format!("size {s:?} too large"))
}

/// A latency histogram in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

/// One line per fact about the build and the host that decides what the figures mean: build
/// profile, git revision, kernel, CPU, cores, and the file system under `dir` with whether
/// O_DIRECT is in effect there.
pub fn host_header(dir: &std::path::Path) -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).ok();
    let kernel = read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let cpu = read("/proc/cpuinfo")
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        .unwrap_or_else(|| "n/a".into());
    let fs = match crate::log::filesystem_type(dir) {
        Some(0xEF53) => "ext4".to_string(),
        Some(0x5846_5342) => "xfs".to_string(),
        Some(0x0102_1994) => "tmpfs".to_string(),
        Some(0x9123_683E) => "btrfs".to_string(),
        Some(t) => format!("{t:#x}"),
        None => "unknown".to_string(),
    };
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    vec![
        format!(
            "build     {profile}, corelog {}{}, runtime {}",
            env!("CARGO_PKG_VERSION"),
            option_env!("CORELOG_GIT_REV").map(|r| format!(" ({r})")).unwrap_or_default(),
            crate::rt::RUNTIME
        ),
        format!("host      kernel {kernel}, {cores} cores, {cpu}, governor {governor}"),
        format!(
            "data dir  {} on {fs}, O_DIRECT {}",
            dir.display(),
            if crate::log::direct_io_effective(dir) { "in effect" } else { "NOT in effect" }
        ),
    ]
}

/// The block device under a directory (its sysfs `stat`): what it wrote, to set the disk's
/// traffic beside the appends' (segment preparation, padding and file-system metadata show as
/// the difference), and how long the device itself took per request, to set beside the
/// flushes' latency (the rest is queueing above the device).
pub struct BlockDevice {
    /// `sys/class/block/{device}/stat` of the device (`vda1`, `nvme0n1p2`, `dm-0`).
    stat: PathBuf,
    /// For a partition, its disk's `stat`: the kernel counts cache flushes on the whole disk
    /// only (a partition's flush fields stay 0).
    disk_stat: Option<PathBuf>,
}

impl BlockDevice {
    /// The block device under `dir`, when it is on one (not on tmpfs or overlay without one).
    pub fn of_dir(dir: &Path) -> Option<BlockDevice> {
        let sys = crate::tools::doctor::Sys::host();
        let dev = crate::tools::doctor::block_device_of_dir(&sys, dir).ok()?;
        let dev_dir = sys.path(&format!("sys/class/block/{}", dev.name));
        let stat = dev_dir.join("stat");
        // A partition's directory sits in its disk's.
        let disk_stat = dev_dir
            .join("partition")
            .exists()
            .then(|| std::fs::canonicalize(&dev_dir).ok()?.parent().map(|d| d.join("stat")))
            .flatten();
        let w = BlockDevice { stat, disk_stat };
        w.counters().map(|_| w)
    }

    /// The device's counters since boot (a partition's, with its disk's cache flushes).
    pub fn counters(&self) -> Option<DiskCounters> {
        let mut c = DiskCounters::parse(&std::fs::read_to_string(&self.stat).ok()?)?;
        if let Some(disk) = &self.disk_stat {
            let d = std::fs::read_to_string(disk).ok().and_then(|t| DiskCounters::parse(&t));
            (c.flushes, c.flush_ms) = d.map_or((None, None), |d| (d.flushes, d.flush_ms));
        }
        Some(c)
    }

    /// Counters since [`Self::counters`] returned `before` (`None` if either read failed).
    pub fn since(&self, before: Option<DiskCounters>) -> Option<DiskCounters> {
        Some(self.counters()?.since(&before?))
    }
}

/// A block device's counters (Documentation/block/stat.rst): requests completed, bytes, and
/// the milliseconds those requests took, summed (so the mean per request is the device's
/// own service time plus its queue, below the file system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskCounters {
    pub reads: u64,
    pub read_bytes: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub write_ms: u64,
    /// Cache flush requests (fdatasync, a write's FUA emulation); `None` on kernels before 5.5
    /// (their `stat` has no such fields).
    pub flushes: Option<u64>,
    pub flush_ms: Option<u64>,
}

impl DiskCounters {
    /// From a `stat` line: fields 1, 3, 4 (reads, sectors, ms), 5, 7, 8 (writes, sectors,
    /// ms) and, where present, 16-17 (flushes, ms). Sectors are 512 bytes whatever the
    /// device's block size.
    fn parse(stat: &str) -> Option<DiskCounters> {
        let f: Vec<u64> = stat.split_whitespace().map_while(|x| x.parse().ok()).collect();
        if f.len() < 8 {
            return None;
        }
        Some(DiskCounters {
            reads: f[0],
            read_bytes: f[2] * 512,
            read_ms: f[3],
            writes: f[4],
            write_bytes: f[6] * 512,
            write_ms: f[7],
            flushes: f.get(15).copied(),
            flush_ms: f.get(16).copied(),
        })
    }

    fn since(&self, b: &DiskCounters) -> DiskCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        // The kernel prints the milliseconds as 32-bit values: they wrap (every 49.7 days).
        let ms = |a: u64, b: u64| a.wrapping_sub(b) & 0xFFFF_FFFF;
        DiskCounters {
            reads: d(self.reads, b.reads),
            read_bytes: d(self.read_bytes, b.read_bytes),
            read_ms: ms(self.read_ms, b.read_ms),
            writes: d(self.writes, b.writes),
            write_bytes: d(self.write_bytes, b.write_bytes),
            write_ms: ms(self.write_ms, b.write_ms),
            flushes: self.flushes.zip(b.flushes).map(|(a, b)| d(a, b)),
            flush_ms: self.flush_ms.zip(b.flush_ms).map(|(a, b)| ms(a, b)),
        }
    }

    /// What the device did over `secs` seconds, for a report.
    pub fn summary(&self, secs: f64) -> DeviceSummary {
        let mean_ms = |ms: u64, n: u64| (n > 0).then(|| ms as f64 / n as f64);
        let secs = secs.max(1e-9);
        DeviceSummary {
            read_mib_per_sec: self.read_bytes as f64 / secs / (1 << 20) as f64,
            write_request_kib: (self.writes > 0)
                .then(|| self.write_bytes as f64 / self.writes as f64 / 1024.0),
            write_request_ms: mean_ms(self.write_ms, self.writes),
            flushes_per_sec: self.flushes.map(|n| n as f64 / secs),
            flush_ms: self.flush_ms.zip(self.flushes).and_then(|(ms, n)| mean_ms(ms, n)),
        }
    }
}

/// The block device's side of a measured window (see [`DiskCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DeviceSummary {
    /// What it read, MiB/s (a leader reading back frames for a follower that fell behind).
    pub read_mib_per_sec: f64,
    /// Mean size of its write requests, KiB, and their mean time in the device (with the
    /// device's own queue), ms.
    pub write_request_kib: Option<f64>,
    pub write_request_ms: Option<f64>,
    /// Its cache flushes per second, and their mean time, ms.
    pub flushes_per_sec: Option<f64>,
    pub flush_ms: Option<f64>,
}

impl DeviceSummary {
    /// One line for a report, or `None` when the device did nothing measurable.
    pub fn line(&self) -> Option<String> {
        let (Some(kib), Some(ms)) = (self.write_request_kib, self.write_request_ms) else {
            return None;
        };
        let mut s = format!("writes of {kib:.0} KiB taking {ms:.2} ms each on average");
        if let (Some(n), Some(fms)) = (self.flushes_per_sec, self.flush_ms) {
            s += &format!(", {n:.0} cache flushes/s taking {fms:.2} ms");
        }
        s += &format!(", reads {:.1} MiB/s", self.read_mib_per_sec);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_block_device_stat_line() {
        let line = "  123456     7890  9876543   45678   345678    12345 87654321   234567        0  \
                    456789  280245        0        0        0        0     1234     5678";
        let c = DiskCounters::parse(line).unwrap();
        assert_eq!((c.reads, c.read_bytes, c.read_ms), (123_456, 9_876_543 * 512, 45_678));
        assert_eq!((c.writes, c.write_bytes, c.write_ms), (345_678, 87_654_321 * 512, 234_567));
        assert_eq!((c.flushes, c.flush_ms), (Some(1234), Some(5678)));
        // A kernel before 5.5: no flush fields.
        let old = DiskCounters::parse("1 2 3 4 5 6 7 8 0 9 10").unwrap();
        assert_eq!((old.writes, old.write_bytes, old.flushes), (5, 7 * 512, None));
        assert_eq!(DiskCounters::parse("1 2 3"), None);
        assert_eq!(DiskCounters::parse("1 2 3 4 5 6 x 8"), None);
    }

    #[test]
    fn a_device_window_gives_sizes_and_mean_times_per_request() {
        let a = DiskCounters::parse("10 0 2048 5 100 0 204800 300 0 0 0 0 0 0 0 40 8").unwrap();
        let b = DiskCounters::parse("30 0 6144 25 300 0 614400 900 0 0 0 0 0 0 0 90 18").unwrap();
        let d = b.since(&a).summary(2.0);
        assert_eq!(d.write_request_kib, Some(1024.0), "200 writes of 409600 sectors");
        assert_eq!(d.write_request_ms, Some(3.0), "600 ms over 200 writes");
        assert_eq!(d.flushes_per_sec, Some(25.0));
        assert_eq!(d.flush_ms, Some(0.2));
        assert_eq!(d.read_mib_per_sec, 1.0, "4096 sectors in 2 s");
        let line = d.line().unwrap();
        assert!(line.contains("writes of 1024 KiB taking 3.00 ms"), "{line}");
        assert!(line.contains("25 cache flushes/s taking 0.20 ms"), "{line}");
        // Nothing written: no line.
        assert_eq!(a.since(&a).summary(1.0).line(), None);
        // The milliseconds wrap at 2^32.
        let c = DiskCounters::parse("0 0 0 4294967290 1 0 8 4294967295 0 0 0 0 0 0 0 1 4294967295")
            .unwrap();
        let e = DiskCounters::parse("0 0 0 4 2 0 16 9 0 0 0 0 0 0 0 2 3").unwrap();
        let w = e.since(&c);
        assert_eq!((w.read_ms, w.write_ms, w.flush_ms), (10, 10, Some(4)));
    }

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_bytes("4k").unwrap(), 4096);
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert!(parse_bytes("12q").is_err());
    }
}
