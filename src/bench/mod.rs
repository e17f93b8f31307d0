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

/// Bytes written by the block device under a directory (its sysfs `stat`), to set the disk's
/// traffic beside the appends': segment preparation, padding and file-system metadata show
/// as the difference.
pub struct DiskWrites {
    /// `sys/class/block/{device}/stat` of the device (`vda1`, `nvme0n1p2`, `dm-0`).
    stat: PathBuf,
}

impl DiskWrites {
    /// The block device under `dir`, when it is on one (not on tmpfs or overlay without one).
    pub fn of_dir(dir: &Path) -> Option<DiskWrites> {
        let sys = crate::tools::doctor::Sys::host();
        let dev = crate::tools::doctor::block_device_of_dir(&sys, dir).ok()?;
        let stat = sys.path(&format!("sys/class/block/{}/stat", dev.name));
        let w = DiskWrites { stat };
        w.bytes().map(|_| w)
    }

    /// Bytes written since boot.
    pub fn bytes(&self) -> Option<u64> {
        sectors_written(&std::fs::read_to_string(&self.stat).ok()?).map(|s| s * 512)
    }

    /// Bytes written since [`Self::bytes`] returned `before` (`None` if either read failed).
    pub fn since(&self, before: Option<u64>) -> Option<u64> {
        Some(self.bytes()?.saturating_sub(before?))
    }
}

/// Sectors (512 bytes, whatever the device's block size) written, from a block device's
/// `stat` line: the seventh field (Documentation/block/stat.rst).
fn sectors_written(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(6)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sectors_written_from_a_stat_line() {
        let line = "  123456     7890  9876543   45678   345678    12345 87654321   234567        0  \
                    456789  280245        0        0        0        0     1234     5678";
        assert_eq!(sectors_written(line), Some(87_654_321));
        assert_eq!(sectors_written("1 2 3"), None);
        assert_eq!(sectors_written("1 2 3 4 5 6 x"), None);
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
