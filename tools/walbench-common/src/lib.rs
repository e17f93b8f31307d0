//! What the WAL baseline benchmarks share, so that their figures mean the same thing as
//! `corelog bench wal`'s:
//!
//! - the flags (`--dir --duration --entry-size --concurrency --json`, plus `--warmup`);
//! - the measurement window: N closed-loop writers run for `--warmup`, then for
//!   `--duration`; an append counts if it started and finished inside the window;
//! - the latency of one append (call to durable acknowledgement), recorded in an
//!   HdrHistogram in nanoseconds. The loop is closed (a writer issues its next append when
//!   the previous one returns), so there is no intended send time and no coordinated-omission
//!   correction to apply: the figures are service times under N outstanding appends;
//! - the JSON report with the keys of `corelog bench wal`.
//!
//! `mib_per_sec` counts payload bytes only (entries × entry size), as corelog does;
//! `bytes_per_flush` counts what was written to the file per flush, headers included.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms track: 60 s, in nanoseconds.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// The flags every baseline takes. Tool-specific flags are handed to `extra`.
#[derive(Debug, Clone)]
pub struct CommonArgs {
    pub dir: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub entry_size: usize,
    pub concurrency: usize,
    pub json: Option<PathBuf>,
    /// Keep the data files after the run (default: remove them).
    pub keep: bool,
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use s, ms, us or m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte size: `4096`, `4k`, `4KiB`, `1m`, `1MiB`, `1g`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t.as_str(), ""),
    };
    let v: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    v.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parses the process arguments. `extra(flag, value)` gets every flag this function does
/// not know and returns `Ok(true)` if it took it. `usage` is printed on `--help` and errors.
pub fn parse_args(
    usage: &str,
    mut extra: impl FnMut(&str, &str) -> Result<bool, String>,
) -> CommonArgs {
    match try_parse_args(std::env::args().skip(1), &mut extra) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{usage}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{usage}");
            std::process::exit(2);
        }
    }
}

fn try_parse_args(
    args: impl Iterator<Item = String>,
    extra: &mut impl FnMut(&str, &str) -> Result<bool, String>,
) -> Result<Option<CommonArgs>, String> {
    let mut a = CommonArgs {
        dir: std::env::temp_dir(),
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        entry_size: 4096,
        concurrency: 1,
        json: None,
        keep: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--keep" {
            a.keep = true;
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg, v)
            }
        };
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--duration" => a.duration = parse_duration(&value)?,
            "--warmup" => a.warmup = parse_duration(&value)?,
            "--entry-size" => a.entry_size = parse_bytes(&value)? as usize,
            "--concurrency" => {
                a.concurrency = value
                    .parse()
                    .map_err(|_| format!("bad --concurrency {value:?}"))?
            }
            "--json" => a.json = Some(PathBuf::from(value)),
            _ => {
                if !extra(&flag, &value)? {
                    return Err(format!("unknown flag {flag}"));
                }
            }
        }
    }
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if a.entry_size == 0 {
        return Err("--entry-size must be at least 1".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    Ok(Some(a))
}

/// The phases of a run, shared by the writers and the main thread.
pub struct Window {
    phase: AtomicU8,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    pub fn new() -> Self {
        Window {
            phase: AtomicU8::new(WARMUP),
        }
    }
    /// True while the measured window is open.
    pub fn measuring(&self) -> bool {
        self.phase.load(Ordering::Acquire) == MEASURE
    }
    pub fn stopped(&self) -> bool {
        self.phase.load(Ordering::Acquire) == STOP
    }
    pub fn open(&self) {
        self.phase.store(MEASURE, Ordering::Release);
    }
    pub fn close(&self) {
        self.phase.store(STOP, Ordering::Release);
    }
}

/// One writer's record of its appends inside the window.
pub struct WriterStats {
    pub latency_ns: Histogram<u64>,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WriterStats {
    pub fn new() -> Self {
        WriterStats {
            latency_ns: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .expect("histogram bounds are valid"),
        }
    }

    /// Runs one append and records it if it started and ended inside the window.
    #[inline]
    pub fn time<T>(&mut self, window: &Window, append: impl FnOnce() -> T) -> T {
        let counted = window.measuring();
        let start = Instant::now();
        let out = append();
        let ns = start.elapsed().as_nanos() as u64;
        if counted && window.measuring() {
            self.latency_ns
                .saturating_record(ns.clamp(1, LATENCY_MAX_NS));
        }
        out
    }
}

/// Flush counters over the window, if the tool can observe them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    pub flushes: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// Everything the report needs.
pub struct Report<'a> {
    pub tool: &'a str,
    pub args: &'a CommonArgs,
    /// The window's real length.
    pub elapsed: Duration,
    pub latency_ns: Histogram<u64>,
    pub flush: Option<FlushStats>,
    /// Extra `"key": value` pairs (values already JSON).
    pub extra: Vec<(String, String)>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Peak resident set size of this process in KiB (`VmHWM`), if /proc has it.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Report<'_> {
    /// The JSON document, with the keys of `corelog bench wal`.
    pub fn to_json(&self) -> String {
        let h = &self.latency_ns;
        let secs = self.elapsed.as_secs_f64();
        let appends = h.len();
        let appends_per_sec = appends as f64 / secs;
        let mib_per_sec = appends as f64 * self.args.entry_size as f64 / secs / (1u64 << 20) as f64;
        let mut o = String::from("{\n");
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(o, "  \"{k}\": {v},");
        };
        kv("tool", format!("\"{}\"", self.tool));
        kv(
            "dir",
            format!("\"{}\"", json_escape(&self.args.dir.display().to_string())),
        );
        kv("entry_size", self.args.entry_size.to_string());
        kv("concurrency", self.args.concurrency.to_string());
        kv("warmup_s", format!("{:.3}", self.args.warmup.as_secs_f64()));
        kv("duration_s", format!("{secs:.3}"));
        kv("appends", appends.to_string());
        kv("appends_per_sec", format!("{appends_per_sec:.1}"));
        kv("mib_per_sec", format!("{mib_per_sec:.3}"));
        if let Some(f) = self.flush {
            kv("flushes", f.flushes.to_string());
            kv("flushes_per_sec", format!("{:.1}", f.flushes as f64 / secs));
            if f.flushes > 0 {
                kv(
                    "entries_per_flush",
                    format!("{:.2}", f.entries as f64 / f.flushes as f64),
                );
                kv(
                    "bytes_per_flush",
                    format!("{:.0}", f.bytes as f64 / f.flushes as f64),
                );
            }
        }
        if appends > 0 {
            kv("mean_us", format!("{:.1}", h.mean() / 1e3));
            kv("p50_us", format!("{:.1}", us(h.value_at_quantile(0.50))));
            kv("p90_us", format!("{:.1}", us(h.value_at_quantile(0.90))));
            kv("p99_us", format!("{:.1}", us(h.value_at_quantile(0.99))));
            kv("p999_us", format!("{:.1}", us(h.value_at_quantile(0.999))));
            kv("max_us", format!("{:.1}", us(h.max())));
        }
        if let Some(rss) = peak_rss_kib() {
            kv("peak_rss_kib", rss.to_string());
        }
        for (k, v) in &self.extra {
            kv(k, v.clone());
        }
        // Drop the last comma.
        if o.ends_with(",\n") {
            o.truncate(o.len() - 2);
            o.push('\n');
        }
        o.push_str("}\n");
        o
    }

    /// Prints the report and writes it to `--json` if given.
    pub fn emit(&self) {
        let json = self.to_json();
        print!("{json}");
        if let Some(path) = &self.args.json {
            if let Err(e) = std::fs::write(path, &json) {
                eprintln!("error: writing {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Merges the writers' histograms.
pub fn merge(stats: impl IntoIterator<Item = WriterStats>) -> Histogram<u64> {
    let mut all = WriterStats::new().latency_ns;
    for s in stats {
        all.add(&s.latency_ns).expect("histograms share bounds");
    }
    all
}

/// Runs the warm-up and the measured window on the calling thread: sleeps `warmup`,
/// calls `at_open` (to snapshot counters), opens the window, sleeps `duration`, closes it
/// and calls `at_close`. Returns the window's real length.
pub fn run_window(
    window: &Window,
    args: &CommonArgs,
    at_open: impl FnOnce(),
    at_close: impl FnOnce(),
) -> Duration {
    std::thread::sleep(args.warmup);
    at_open();
    let t0 = Instant::now();
    window.open();
    std::thread::sleep(args.duration);
    window.close();
    let elapsed = t0.elapsed();
    at_close();
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Option<CommonArgs>, String> {
        try_parse_args(v.iter().map(|s| s.to_string()), &mut |_, _| Ok(false))
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("4k").unwrap(), 4096);
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert!(parse_bytes("1x").is_err());
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--dir",
            "/x",
            "--duration=2s",
            "--entry-size",
            "1k",
            "--concurrency",
            "8",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.dir, PathBuf::from("/x"));
        assert_eq!(a.duration, Duration::from_secs(2));
        assert_eq!(a.entry_size, 1024);
        assert_eq!(a.concurrency, 8);
        assert!(parse(&["--bogus", "1"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn report_has_the_keys() {
        let args = parse(&["--entry-size", "4096"]).unwrap().unwrap();
        let mut h = WriterStats::new().latency_ns;
        for v in [100_000u64, 200_000, 300_000] {
            h.record(v).unwrap();
        }
        let r = Report {
            tool: "t",
            args: &args,
            elapsed: Duration::from_secs(1),
            latency_ns: h,
            flush: Some(FlushStats {
                flushes: 3,
                entries: 3,
                bytes: 3 * 4168,
            }),
            extra: vec![],
        };
        let j = r.to_json();
        for k in [
            "appends_per_sec",
            "mib_per_sec",
            "flushes_per_sec",
            "entries_per_flush",
            "bytes_per_flush",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(j.contains(&format!("\"{k}\":")), "{k} missing in {j}");
        }
        assert!(j.contains("\"appends_per_sec\": 3.0,"));
        assert!(j.trim_end().ends_with('}') && !j.contains(",\n}"));
    }
}
