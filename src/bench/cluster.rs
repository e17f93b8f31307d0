//! `corelog bench` / `corelog bench cluster`: a replicated cluster under load.
//!
//! By default it starts a local cluster of `--replicas` nodes in this process (each node its
//! own executor threads, real TCP on loopback, real files under a new directory in /var/tmp);
//! with `--addresses` it loads an existing cluster instead. The load comes from a few
//! connections with many appends in flight on each ([`super::load`]). Phases:
//!
//! 0. settling (a local cluster, trimmed, with a warm-up): load at the largest level, not
//!    measured, until the logs recycle trimmed segments instead of zero-filling new ones (a
//!    fresh directory's transient: every new segment written twice; 4-6 s on the 2-core dev
//!    VM, 10 s at most, [`Generator::settle`]);
//! 1. the sweep (when `--concurrency` lists several levels, as by default: 512 to 4096): a
//!    short closed loop at each level, stopping when one gains less than 5% over the best
//!    before it. A closed loop with too few appends in flight measures the latency of the
//!    replication pipeline, not the cluster's throughput: on the 2-core dev VM 512 in flight
//!    left a third of the CPU idle and gave 100-135k appends/s where 2048 gave 155-185k
//!    (`docs/measurements/2026-11-27-sweep.md`). etcd's peak, which corelog is compared with,
//!    was found the same way (the best of a sweep of client counts);
//! 2. warm-up, then saturation, closed loop at the best level: the sustained throughput;
//! 3. open loop at `--load-fraction` of that throughput (or at `--rate`, which skips 1 and 2):
//!    the latency, measured from each append's due time (no coordinated omission).
//!
//! It prints a header (build, host, data directory, O_DIRECT) and loud warnings when the
//! figures cannot be trusted, one progress line per second on stderr, the figures of each
//! phase on stdout with a grep-able `SUMMARY` line, and writes `summary.json`, `latency.hgrm`,
//! `timeseries.csv` and `report.html` into the output directory. `--compare` measures the
//! machine's own limits first ([`super::compare`]) and states corelog's figures as fractions
//! of them.
//!
//! While it runs, the local cluster's log is trimmed once a second behind its commit index
//! (`--checkpoint-every`, [`Checkpointer`]), as by a database that checkpoints: what a WAL tier
//! does in steady state, where trimmed segments are recycled and no new segment is
//! zero-filled. `--checkpoint-every 0s` lets the log grow instead (every segment is then
//! zero-filled before use, which about doubles what the disk writes). An existing cluster is
//! never trimmed unless asked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::{EntrySize, Generator, PhaseResult, ReplicaCounts, SettleEnd, Settled};
use super::progress::{Progress, human_us};
use super::{compare, parse_duration, peak_rss_bytes, report};
use crate::node::{self, NodeConfig, PeerConfig};

/// Arguments of `corelog bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Measured duration of each phase (saturation, open loop).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each phase is measured (excluded): the closed loop at its concurrency,
    /// the open loop at its rate. A local cluster's first closed loop also waits for its
    /// logs to recycle segments (up to 10 s; `0s` skips that too).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes per entry: a size (`1KiB`) or a distribution (`uniform:128..4096`).
    #[arg(long, default_value = "1KiB", value_parser = EntrySize::parse)]
    pub entry_size: EntrySize,
    /// Appends in flight in the closed loop (all connections together). A list sweeps to find
    /// the peak: a short closed loop at each level in turn (stopping at the first that gains
    /// less than 5% over the best before it), then the saturation phase at the best level.
    /// The open loop allows four times the saturation phase's level in flight (with `--rate`,
    /// four times the largest level).
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096")]
    pub concurrency: Vec<usize>,
    /// Open-loop rate in appends/s. Given, the saturation phase is skipped.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop rate as a fraction of the saturation throughput.
    #[arg(long, default_value_t = 0.8)]
    pub load_fraction: f64,
    /// Client connections (each with many appends in flight).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Consensus groups (logs) of the local cluster; appends are spread over them.
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// Replicas of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// Seed of the entry sizes, contents and group choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory for summary.json, latency.hgrm, timeseries.csv and report.html
    /// (default: a new directory under ./corelog-bench/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run against an existing cluster (client addresses, comma separated) instead.
    #[arg(long, value_delimiter = ',')]
    pub addresses: Vec<SocketAddr>,
    /// With `--addresses`: the nodes' metrics endpoints (their `metrics_addr` settings, comma
    /// separated), from which the bench takes the stage breakdown (GET /stages) and, with
    /// `--trace`, the sampled appends (GET /trace).
    #[arg(long, value_delimiter = ',', requires = "addresses")]
    pub metrics: Vec<SocketAddr>,
    /// Directory for the local cluster's data (default: a new directory under /var/tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write summary.json to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure this machine's limits first (disk with io_uring, loopback TCP) and state the
    /// figures as fractions of them.
    #[arg(long)]
    pub compare: bool,
    /// Write sampled appends (every stage, on every node; one append in the nodes'
    /// `trace_sample_every`) as Chrome trace-event JSON to this file: open it in Perfetto
    /// (ui.perfetto.dev) or chrome://tracing. The local cluster, or an existing one with
    /// `--metrics`.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Trim every group's log this often behind its commit index (each trim up to the commit
    /// index seen at the previous one), as a database's checkpoints would; `0s`: never.
    /// Default: 1s for the local cluster, never for an existing one (`--addresses`).
    #[arg(long, value_parser = parse_duration)]
    pub checkpoint_every: Option<Duration>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl ClusterArgs {
    /// The checkpoint interval in effect (zero: never).
    pub fn checkpoint_interval(&self) -> Duration {
        let default =
            if self.addresses.is_empty() { Duration::from_secs(1) } else { Duration::ZERO };
        self.checkpoint_every.unwrap_or(default)
    }
}

/// Trims the log of every group once per interval, up to the commit index the previous round
/// saw (so about one interval of log stays), from a thread of its own with a blocking client.
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<CheckpointStats>,
}

/// What the checkpointer did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStats {
    /// Trims answered OK (one per group and round).
    pub trims: u64,
    /// Rounds in which a status or trim failed (the next round tries again).
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl Checkpointer {
    /// Starts trimming `groups` of the cluster at `nodes` every `every`.
    pub fn start(
        nodes: &[SocketAddr],
        groups: u64,
        every: Duration,
    ) -> Result<Checkpointer, String> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut cfg = crate::client::ClientConfig::new(nodes.to_vec());
        cfg.deadline = Duration::from_secs(2);
        let mut client = crate::client::Client::new(cfg).map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-checkpoint".into())
            .spawn(move || {
                let mut stats = CheckpointStats::default();
                let mut seen = vec![0u64; groups as usize];
                let mut next = std::time::Instant::now() + every;
                while !stopped.load(Ordering::Relaxed) {
                    if std::time::Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    next += every;
                    for (g, seen) in seen.iter_mut().enumerate() {
                        let mut round = || -> Result<u64, String> {
                            let text = client.status(g as u64).map_err(|e| e.to_string())?;
                            let v: serde_json::Value =
                                serde_json::from_str(&text).map_err(|e| e.to_string())?;
                            let commit = v["commit_index"].as_u64().ok_or("no commit_index")?;
                            if *seen > 0 {
                                client.trim(g as u64, *seen).map_err(|e| e.to_string())?;
                            }
                            Ok(commit)
                        };
                        match round() {
                            Ok(commit) => {
                                stats.trims += u64::from(*seen > 0);
                                *seen = commit;
                            }
                            Err(e) => {
                                stats.errors += 1;
                                stats.last_error = Some(format!("group {g}: {e}"));
                            }
                        }
                    }
                }
                stats
            })
            .map_err(|e| format!("starting the checkpoint thread: {e}"))?;
        Ok(Checkpointer { stop, thread })
    }

    /// Stops and says what it did.
    pub fn finish(self) -> CheckpointStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Appends in flight allowed in the open loop, as a multiple of `--concurrency`.
const OPEN_LOOP_WINDOW_FACTOR: usize = 4;

/// Most bytes per log flush on the nodes of a local cluster, whose replicas share one disk:
/// fewer, larger flushes give the shared disk more bandwidth. On this project's 2-core test VM
/// against a node's default of 1 MiB: 16 KiB entries +9% appends/s (8 of 9 pairs; the leader
/// waited for room in its log 30-34% of the time instead of 45-48%), 4 KiB +2-5% (3 of 3),
/// 1 KiB the same (7 pairs, means within 1%); `docs/measurements/2026-11-28-flush-size-and-rolls.md`.
const SHARED_DISK_FLUSH_BYTES_MAX: usize = 2 << 20;

/// The write sizes `--compare` measures the disk at (with a local cluster, also at its nodes'
/// largest flush).
const COMPARE_WRITE_SIZES: [usize; 3] = [4096, 256 << 10, 1 << 20];

/// Share of the open loop's pacer time spent waiting for a full window beyond which the
/// phase is reported as fallen behind (see `print_phase`).
const OPEN_LOOP_BEHIND_WINDOW_SHARE: f64 = 0.25;

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub mode: String,
    pub offered_per_sec: Option<f64>,
    pub duration_s: f64,
    pub appends: u64,
    pub appends_per_sec: f64,
    pub mib_per_sec: f64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub errors: BTreeMap<String, u64>,
    /// CPU per append of the whole process (all local replicas and the generator).
    pub cpu_us_per_append: f64,
    /// The generator's CPU: cores used, share of the process, µs per append.
    pub generator_cores: f64,
    pub generator_cpu_share: f64,
    pub generator_cpu_us_per_append: f64,
    /// Open loop: due → sent lag of the generator, µs.
    pub send_lag_p50_us: u64,
    pub send_lag_p99_us: u64,
    /// Open loop: shares of the pacers' time in send calls (blocked there while the cluster
    /// does not read: its backpressure), waiting for room in a full window (its backlog), and
    /// lost to late wake-ups (the generator's own: no CPU for it). See `load::PacerTimes`.
    pub pacer_sending_share: Option<f64>,
    pub pacer_window_full_share: Option<f64>,
    pub pacer_late_wake_share: Option<f64>,
    /// A local cluster on a block device: what the device wrote in the window, MiB/s, and
    /// that as a multiple of the payload all replicas appended (above 1: frame headers,
    /// padding to blocks, segment preparation, file-system metadata, other writers).
    pub disk_write_mib_per_sec: Option<f64>,
    pub disk_write_per_replicated_byte: Option<f64>,
    /// The device's side: its reads, and its own mean time per write and per cache flush
    /// (beside the flushes' latency, the rest is queueing above the device).
    pub device: Option<super::DeviceSummary>,
    /// A local cluster: the slowest flush (a write made durable) of any replica in the phase, µs,
    /// and the second it completed in (1-based); the other seconds' are in timeseries.csv.
    pub slowest_flush_us: Option<u64>,
    pub slowest_flush_second: Option<u64>,
    /// A local cluster: what each replica's logs wrote in the window, MiB/s, in node order
    /// (a replica well below the others fell behind), and the frames the replicas read back
    /// from disk (a leader feeding a follower that fell behind its entry cache).
    pub replica_write_mib_per_sec: Option<Vec<f64>>,
    pub frames_read_back: Option<u64>,
    /// A local cluster: segments the replicas' logs zero-filled before use in the window
    /// (each written twice; none where trimmed segments are recycled).
    pub segments_zero_filled: Option<u64>,
    /// Per replica (node order): the share of the phase its group drivers stood waiting for
    /// room in their logs (their time waiting, summed over groups, over the phase's length and
    /// the group count).
    pub replica_log_wait_share: Option<Vec<f64>>,
    /// Per replica (node order): mean flushes in flight per group.
    pub replica_flushes_in_flight: Option<Vec<f64>>,
}

/// One level of the concurrency sweep: a short closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStep {
    pub concurrency: usize,
    pub appends_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

/// A sweep step is kept only if it gains at least this much over the best level before it;
/// the first that does not ends the sweep (the run-to-run noise of a short closed loop here
/// is about as large, so a smaller gain is no evidence of a higher peak).
const SWEEP_MIN_GAIN: f64 = 1.05;

/// The sweep's choice so far: the best level, and whether the next level is worth trying.
#[derive(Debug, Default)]
struct SweepChoice {
    best_rate: f64,
    best: Option<usize>,
}

impl SweepChoice {
    /// Takes one level's throughput; false when the sweep should stop (the level gained less
    /// than [`SWEEP_MIN_GAIN`] over the best, or completed nothing).
    fn offer(&mut self, concurrency: usize, rate: f64) -> bool {
        if rate <= 0.0 || rate < self.best_rate * SWEEP_MIN_GAIN {
            return false;
        }
        (self.best_rate, self.best) = (rate, Some(concurrency));
        true
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub replicas: u64,
    /// Appends in flight in the saturation phase (the best level of the sweep).
    pub concurrency: usize,
    /// The concurrency sweep before the saturation phase (empty with one level or `--rate`).
    pub sweep: Vec<SweepStep>,
    /// The unmeasured load before the sweep and saturation on a local cluster.
    pub settle: Option<Settled>,
    pub connections: usize,
    pub entry_size: String,
    pub phases: Vec<PhaseReport>,
    /// Sustained throughput (saturation phase; the open loop's when there is none).
    pub appends_per_sec: f64,
    pub mib_per_sec: f64,
    /// Latency of the open-loop phase.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub peak_rss_mib: f64,
    pub out_dir: PathBuf,
    pub limits: Option<compare::Limits>,
    /// Trim interval (0: the log was never trimmed) and what the trims did.
    pub checkpoint_every_s: f64,
    pub checkpoints: Option<CheckpointStats>,
}

fn q(h: &Histogram<u64>, p: f64) -> u64 {
    if h.is_empty() { 0 } else { h.value_at_quantile(p) }
}

fn phase_report(p: &PhaseResult, replicas: u64, groups: u64) -> PhaseReport {
    let h = &p.latency;
    let replicated = (p.bytes * replicas) as f64;
    let secs = p.duration.as_secs_f64();
    let n = p.completed.max(1) as f64;
    let slowest = p.seconds.iter().filter_map(|r| Some((r.flush_max_us?, r.second))).max();
    PhaseReport {
        name: p.name.clone(),
        mode: if p.offered_per_sec.is_some() { "open loop" } else { "closed loop" }.into(),
        offered_per_sec: p.offered_per_sec,
        duration_s: secs,
        appends: p.completed,
        appends_per_sec: p.appends_per_sec(),
        mib_per_sec: p.mib_per_sec(),
        min_us: h.min(),
        mean_us: h.mean(),
        p50_us: q(h, 0.5),
        p90_us: q(h, 0.9),
        p99_us: q(h, 0.99),
        p999_us: q(h, 0.999),
        p9999_us: q(h, 0.9999),
        max_us: h.max(),
        errors: p.errors.clone(),
        cpu_us_per_append: p.process_cpu.as_secs_f64() * 1e6 / n,
        generator_cores: p.generator_cpu.as_secs_f64() / secs,
        generator_cpu_share: p.generator_cpu.as_secs_f64() / p.process_cpu.as_secs_f64().max(1e-9),
        generator_cpu_us_per_append: p.generator_cpu.as_secs_f64() * 1e6 / n,
        send_lag_p50_us: q(&p.send_lag, 0.5),
        send_lag_p99_us: q(&p.send_lag, 0.99),
        pacer_sending_share: p.pacers.map(|t| t.share(t.sending)),
        pacer_window_full_share: p.pacers.map(|t| t.share(t.window_full)),
        pacer_late_wake_share: p.pacers.map(|t| t.share(t.late_wakes)),
        disk_write_mib_per_sec: p.disk.map(|d| d.write_bytes as f64 / secs / (1 << 20) as f64),
        disk_write_per_replicated_byte: p
            .disk
            .filter(|_| replicated > 0.0)
            .map(|d| d.write_bytes as f64 / replicated),
        device: p.disk.map(|d| d.summary(secs)),
        slowest_flush_us: slowest.map(|(us, _)| us),
        slowest_flush_second: slowest.map(|(_, second)| second),
        replica_write_mib_per_sec: p
            .replicas
            .as_ref()
            .map(|r| r.iter().map(|c| c.written as f64 / secs / (1 << 20) as f64).collect()),
        frames_read_back: p.replicas.as_ref().map(|r| ReplicaCounts::total(r).frames_read_back),
        segments_zero_filled: p.replicas.as_ref().map(|r| ReplicaCounts::total(r).zero_filled),
        replica_log_wait_share: p.replicas.as_ref().map(|r| {
            r.iter().map(|c| c.space_wait_ns as f64 * 1e-9 / secs / groups as f64).collect()
        }),
        replica_flushes_in_flight: p.replicas.as_ref().map(|r| {
            r.iter().map(|c| c.inflight_ns as f64 * 1e-9 / secs / groups as f64).collect()
        }),
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// `YYYYmmdd-HHMMSS` (UTC) of now.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Whether an open loop offered `offered` appends/s did not sustain it: completions short of
/// the rate, or appends due that waited for room in a full window (four times the closed
/// loop's appends in flight per connection) for more than a quarter of the pacers' time,
/// which a sustained rate never builds up (one run with 96% of its rate completed had waited
/// 58% of the time; its due-to-sent lag reached p50 22 ms, p99 178 ms).
fn fell_behind(offered: f64, achieved: f64, window_full_share: f64) -> bool {
    achieved < offered * 0.95 || window_full_share > OPEN_LOOP_BEHIND_WINDOW_SHARE
}

fn print_phase(p: &PhaseReport) {
    match p.offered_per_sec {
        Some(r) => println!(
            "{} ({}, {:.0}s): offered {:.0}/s, achieved {:.0}/s",
            p.name, p.mode, p.duration_s, r, p.appends_per_sec
        ),
        None => println!(
            "{} ({}, {:.0}s): achieved {:.0}/s",
            p.name, p.mode, p.duration_s, p.appends_per_sec
        ),
    }
    let window_full = p.pacer_window_full_share.unwrap_or(0.0);
    if let Some(r) = p.offered_per_sec
        && fell_behind(r, p.appends_per_sec, window_full)
    {
        println!(
            "  WARNING: the open loop fell behind ({:.0}% of the offered rate completed; appends \
             due waited for a full window {:.0}% of the pacers' time): the cluster did not \
             sustain this rate with the appends in flight allowed (4x --concurrency over the \
             connections), and the latency below is that of a growing backlog. A closed-loop \
             peak can overstate the sustainable rate; try a lower --load-fraction or --rate (or, \
             with few in flight, a higher --concurrency).",
            p.appends_per_sec / r * 100.0,
            window_full * 100.0
        );
    }
    println!("  appends/s  {:>12.0}", p.appends_per_sec);
    println!("  MiB/s      {:>12.1}", p.mib_per_sec);
    println!(
        "  latency    min {}  mean {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        human_us(p.min_us),
        human_us(p.mean_us.round() as u64),
        human_us(p.p50_us),
        human_us(p.p90_us),
        human_us(p.p99_us),
        human_us(p.p999_us),
        human_us(p.p9999_us),
        human_us(p.max_us)
    );
    if p.errors.is_empty() {
        println!("  errors     none");
    } else {
        let e: Vec<String> = p.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  errors     {}", e.join(", "));
    }
    println!(
        "  generator  {:.2} cores ({:.0}% of this process's CPU, {:.1} µs per append){}",
        p.generator_cores,
        p.generator_cpu_share * 100.0,
        p.generator_cpu_us_per_append,
        if p.offered_per_sec.is_some() {
            format!(
                "; due-to-sent lag p50 {} p99 {}",
                human_us(p.send_lag_p50_us),
                human_us(p.send_lag_p99_us)
            )
        } else {
            String::new()
        }
    );
    if let (Some(s), Some(w), Some(l)) =
        (p.pacer_sending_share, p.pacer_window_full_share, p.pacer_late_wake_share)
    {
        println!(
            "  pacers     {:.0}% of their time in sends (blocked there while the cluster does not \
             read: its backpressure), {:.0}% waiting for room in a full window (its backlog), \
             {:.0}% lost to late wake-ups (timer slack, or no CPU for them), the rest asleep as \
             planned",
            s * 100.0,
            w * 100.0,
            l * 100.0
        );
    }
    if let (Some(mib), Some(x)) = (p.disk_write_mib_per_sec, p.disk_write_per_replicated_byte) {
        println!(
            "  disk       wrote {mib:.1} MiB/s = {x:.2} x the replicas' payload (the rest: headers, \
             padding, segment preparation, metadata, other writers)"
        );
    }
    if let Some(line) = p.device.as_ref().and_then(super::DeviceSummary::line) {
        println!("  device     {line}");
    }
    if let (Some(us), Some(second)) = (p.slowest_flush_us, p.slowest_flush_second) {
        println!(
            "  flushes    slowest {} (in second {second}; each second's in timeseries.csv)",
            human_us(us)
        );
    }
    if let (Some(w), Some(back)) = (&p.replica_write_mib_per_sec, p.frames_read_back) {
        let each: Vec<String> = w.iter().map(|x| format!("{x:.1}")).collect();
        let ids: Vec<String> = (1..=w.len()).map(|i| i.to_string()).collect();
        println!(
            "  replicas   logs wrote {} MiB/s (nodes {}); {}",
            each.join(" / "),
            ids.join(" / "),
            if back == 0 {
                "no frames read back from disk (every follower kept within its leader's entry \
                 cache)"
                    .to_string()
            } else {
                format!(
                    "{back} frames read back from disk (a follower fell behind its leader's entry \
                     cache and was fed from the leader's disk)"
                )
            }
        );
    }
    if let Some(n) = p.segments_zero_filled.filter(|&n| n > 0) {
        println!(
            "  segments   {n} zero-filled before use (each written twice, zeros then frames: \
             the logs had no trimmed segment to recycle for them)"
        );
    }
    if let (Some(w), Some(f)) = (&p.replica_log_wait_share, &p.replica_flushes_in_flight) {
        let each: Vec<String> = w.iter().map(|x| format!("{:.0}%", x * 100.0)).collect();
        let flights: Vec<String> = f.iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "  log room   the replicas waited for room in their logs' buffers {} of the time, \
             with {} flushes in flight on average (a group's driver waiting takes in nothing \
             else)",
            each.join(" / "),
            flights.join(" / ")
        );
    }
}

/// Runs the benchmark, prints the figures and writes the output directory.
pub fn run(args: &ClusterArgs) -> Result<ClusterReport, String> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) || args.connections == 0 {
        return Err("--concurrency and --connections must be at least 1".into());
    }
    if !(args.load_fraction > 0.0 && args.load_fraction <= 1.5) {
        return Err("--load-fraction must be in (0, 1.5]".into());
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    if args.duration < Duration::from_secs(1) {
        return Err("--duration must be at least 1s".into());
    }
    let out_dir = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("corelog-bench").join(format!("{}-{}", timestamp(), std::process::id()))
    });
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating the output directory {}: {e}", out_dir.display()))?;
    let mut warnings = Vec::new();
    if cfg!(debug_assertions) {
        warnings.push("WARNING: debug build; the figures mean nothing. Use --release.".into());
    }
    let mut nodes = Vec::new();
    let mut _tmp = None;
    let mut header = Vec::new();
    let mut limits = None;
    // The local nodes' largest flush (`--compare` measures the disk at it too).
    let mut node_flush_max = 1 << 20;
    let local = args.addresses.is_empty();
    if args.trace.is_some() && !local && args.metrics.is_empty() {
        return Err("--trace with --addresses needs --metrics: the samples of a running cluster \
                    are at each node's metrics endpoint, GET /trace (setting metrics_addr)"
            .into());
    }
    let mut data_dir = None;
    let addresses = if local {
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("corelog-bench-")
                    .tempdir_in("/var/tmp")
                    .map_err(|e| format!("creating a directory under /var/tmp: {e}"))?;
                let p = t.path().to_path_buf();
                _tmp = Some(t);
                p
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        header = super::host_header(&dir);
        data_dir = Some(dir.clone());
        if crate::log::filesystem_type(&dir) == Some(libc::TMPFS_MAGIC) {
            warnings.push(format!(
                "WARNING: {} is on tmpfs: nothing is durable and the figures are not a disk's.",
                dir.display()
            ));
        } else if !crate::log::direct_io_effective(&dir) {
            warnings.push(format!(
                "WARNING: O_DIRECT is not in effect on {}; the figures include the page cache.",
                dir.display()
            ));
        }
        use crate::tools::doctor::{Sys, mount_options_of_dir, online_discard};
        if mount_options_of_dir(&Sys::host(), &dir).is_some_and(|o| online_discard(&o)) {
            warnings.push(format!(
                "note: {} is mounted with `discard`: each segment deleted is discarded at once, \
                 which slows the writes beside it (corelog doctor).",
                dir.display()
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if (args.replicas as usize) > cores {
            warnings.push(format!(
                "note: {} replicas and the load generator share {cores} cores; latencies include \
                 waiting for a CPU (up to a scheduler tick, 4 ms, when all are busy).",
                args.replicas
            ));
        }
        for line in &header {
            eprintln!("{line}");
        }
        for w in &warnings {
            eprintln!("{w}");
        }
        let mut members = Vec::new();
        for id in 1..=args.replicas {
            members.push(PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            });
        }
        let cores = (args.groups as usize).clamp(1, cores);
        // The nodes' other settings: their defaults, or the `CORELOG_*` environment variables
        // that `corelog serve` reads (e.g. CORELOG_FLUSHES_IN_FLIGHT_MAX), to try a setting here.
        let mut base = NodeConfig::resolve(None, &|k| std::env::var(k).ok(), &[])
            .map_err(|e| format!("the local cluster's settings: {e}"))?;
        // The replicas share one disk: larger flushes (unless set otherwise).
        if args.replicas > 1 && std::env::var("CORELOG_FLUSH_BYTES_MAX").is_err() {
            base.flush_bytes_max = SHARED_DISK_FLUSH_BYTES_MAX
                .min(base.segment_bytes as usize)
                .max(base.flush_bytes_max);
            let line = format!(
                "nodes     log flushes of up to {} KiB (the replicas share one disk; a node's \
                 default is {} KiB; CORELOG_FLUSH_BYTES_MAX sets it)",
                base.flush_bytes_max >> 10,
                NodeConfig::default().flush_bytes_max >> 10
            );
            eprintln!("{line}");
            header.push(line);
        }
        if args.compare {
            eprintln!("compare: measuring this machine's limits (disk under {})...", dir.display());
            // The disk at the usual sizes and at the nodes' largest flush (as far as a probe
            // writes at once).
            node_flush_max = base.flush_bytes_max.min(crate::tools::disk_check::WRITE_BYTES_MAX);
            if node_flush_max < base.flush_bytes_max {
                eprintln!(
                    "note: --compare measures the disk with writes of at most {} KiB, not the \
                     nodes' {} KiB flushes",
                    node_flush_max >> 10,
                    base.flush_bytes_max >> 10
                );
            }
            let mut sizes = COMPARE_WRITE_SIZES.to_vec();
            if !sizes.contains(&node_flush_max) {
                sizes.push(node_flush_max);
            }
            let mut l = compare::measure(&dir, &sizes, Duration::from_secs(1))?;
            // Each appended byte crosses loopback once per replica: client to leader, leader
            // to each follower. A probe that fails costs its line, not the run.
            match compare::loopback_streams_probe(
                args.replicas as usize,
                128 << 10,
                Duration::from_secs(1),
            ) {
                Ok(n) => l.loopback_streams = Some(n),
                Err(e) => eprintln!("warning: the loopback bandwidth probe failed: {e}"),
            }
            limits = Some(l);
        }
        let set: Vec<String> = crate::node::config::SETTINGS
            .iter()
            .filter(|s| !["node_id", "data_dir", "members", "groups", "cores"].contains(&s.key))
            .filter_map(|s| std::env::var(s.env_var()).ok().map(|v| format!("{}={v}", s.env_var())))
            .collect();
        if !set.is_empty() {
            let line = format!("note: the nodes' settings from the environment: {}", set.join(" "));
            eprintln!("{line}");
            warnings.push(line);
        }
        for id in 1..=args.replicas {
            let cfg = NodeConfig {
                node_id: id,
                data_dir: dir.join(format!("node{id}")),
                members: members.clone(),
                groups: args.groups,
                cores,
                ..base.clone()
            };
            nodes.push(node::start(cfg)?);
        }
        eprintln!(
            "corelog bench: local cluster of {} replicas on loopback ({} group(s), {cores} core(s) \
             each), data under {}",
            args.replicas,
            args.groups,
            dir.display()
        );
        members.iter().map(|m| m.client_addr).collect()
    } else {
        header.push(format!("cluster   existing, client addresses {:?}", args.addresses));
        warnings.push(
            "note: an existing cluster: its build, disks and O_DIRECT are not checked here.".into(),
        );
        for line in header.iter().chain(&warnings) {
            eprintln!("{line}");
        }
        if args.compare {
            let l = compare::measure(Path::new("."), &COMPARE_WRITE_SIZES, Duration::from_secs(1))?;
            limits = Some(l);
        }
        args.addresses.clone()
    };
    let stages_now = || {
        if local { node_stages(&nodes) } else { remote_stages(&args.metrics) }
    };
    let probe = local.then(|| flush_probe(nodes.iter().map(|n| n.scraper()).collect()));
    let replicas = local.then(|| replica_probe(nodes.iter().map(|n| n.scraper()).collect()));
    let result = run_phases(args, &addresses, data_dir.as_deref(), &stages_now, probe, replicas);
    if let (Some(path), Ok(_)) = (&args.trace, &result) {
        let mut samples = Vec::new();
        for n in &nodes {
            samples.extend(n.snapshot(true)?.trace_samples());
        }
        for a in &args.metrics {
            samples.extend(node::metrics::fetch_trace(*a)?);
        }
        let f =
            std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        crate::node::trace::write_chrome_trace(&mut std::io::BufWriter::new(f), &samples)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("trace     {} sampled appends in {}", samples.len(), path.display());
    }
    for n in nodes {
        n.shutdown()?;
    }
    let Phases { phases, stages, checkpoints, sweep, concurrency, settle } = result?;
    // The local replicas' flushes and the bytes they wrote in the saturation phase.
    let sat_flushes = phases.iter().find(|p| p.offered_per_sec.is_none()).and_then(|p| {
        let r = p.replicas.as_ref()?;
        Some((r.iter().map(|c| c.flushes).sum::<u64>(), r.iter().map(|c| c.written).sum::<u64>()))
    });
    // `--compare` on a local cluster: the disk under the replicas' own pattern of the
    // saturation phase (their mean flush size, one writer per replica), measured now that the
    // load has stopped.
    if let (Some(l), Some(dir), Some((flushes, bytes))) = (&mut limits, &data_dir, sat_flushes)
        && flushes > 0
    {
        let size = ((bytes / flushes) as usize).clamp(4096, node_flush_max.max(4096));
        eprintln!(
            "compare: measuring the disk under the replicas' pattern ({} x {} KiB writes)...",
            args.replicas,
            size.next_multiple_of(4096) >> 10
        );
        l.same_pattern = Some(compare::disk_probe_concurrent(
            dir,
            size,
            args.replicas as usize,
            Duration::from_secs(1),
        )?);
    }
    let replicas = if local { args.replicas } else { args.addresses.len() as u64 };
    let reports: Vec<PhaseReport> =
        phases.iter().map(|p| phase_report(p, replicas, args.groups.max(1))).collect();
    let sat = reports.iter().find(|p| p.offered_per_sec.is_none()).unwrap_or(&reports[0]);
    let open = reports.iter().find(|p| p.offered_per_sec.is_some()).unwrap_or(&reports[0]);
    let r = ClusterReport {
        replicas,
        concurrency,
        sweep,
        settle,
        connections: args.connections,
        entry_size: args.entry_size.to_string(),
        appends_per_sec: sat.appends_per_sec,
        mib_per_sec: sat.mib_per_sec,
        p50_us: open.p50_us,
        p99_us: open.p99_us,
        p999_us: open.p999_us,
        max_us: open.max_us,
        peak_rss_mib: peak_rss_bytes() as f64 / (1 << 20) as f64,
        out_dir: out_dir.clone(),
        limits,
        phases: reports.clone(),
        checkpoint_every_s: args.checkpoint_interval().as_secs_f64(),
        checkpoints,
    };
    // stdout. The header and warnings went to stderr at the start; on a terminal that shows
    // both, once is enough.
    use std::io::IsTerminal;
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        for line in header.iter().chain(&warnings) {
            println!("{line}");
        }
    }
    println!(
        "settings  {} B entries ({}), {} in flight over {} connections, {} replica(s), seed {}",
        args.entry_size.mean().round(),
        args.entry_size,
        r.concurrency,
        args.connections,
        r.replicas,
        args.seed
    );
    if let Some(text) = r.settle.as_ref().map(settle_text) {
        println!("settle    {text}");
    }
    if let Some(text) = sweep_text(args, &r) {
        println!("sweep     {text}");
    }
    match &r.checkpoints {
        Some(c) => println!(
            "trim      every {:?} behind the commit index, as a checkpointing database would: {} \
             trims{}",
            args.checkpoint_interval(),
            c.trims,
            match &c.last_error {
                Some(e) => format!(", {} failed rounds (last: {e})", c.errors),
                None => String::new(),
            }
        ),
        None => {
            println!("trim      never: the log grows (new segments are zero-filled before use)")
        }
    }
    for p in &reports {
        print_phase(p);
    }
    if !stages.is_empty() {
        println!("where the latency goes ({}):", open.name);
        for l in report::stage_breakdown_text(&stages).lines() {
            println!("  {l}");
        }
    }
    if local {
        println!(
            "cpu per append {:.1} µs in the {} phase (all replicas and the generator, one \
             process); peak RSS {:.0} MiB",
            sat.cpu_us_per_append, sat.name, r.peak_rss_mib
        );
    }
    let notes = r.limits.as_ref().map(|l| compare_lines(l, &r, local)).unwrap_or_default();
    for n in &notes {
        println!("{n}");
    }
    println!(
        "SUMMARY cluster appends_per_sec={:.0} mib_per_sec={:.1} p50_us={} p99_us={} p999_us={} max_us={} offered_per_sec={:.0} achieved_per_sec={:.0} errors={} entry_size={} concurrency={} connections={} replicas={}",
        r.appends_per_sec,
        r.mib_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        open.offered_per_sec.unwrap_or(0.0),
        open.appends_per_sec,
        reports.iter().map(|p| p.errors.values().sum::<u64>()).sum::<u64>(),
        args.entry_size.mean().round(),
        r.concurrency,
        r.connections,
        r.replicas
    );
    write_outputs(args, &r, &phases, &stages, &header, &warnings, &notes)?;
    println!("report    {}", out_dir.join("report.html").display());
    Ok(r)
}

/// The settling load in one line.
fn settle_text(s: &Settled) -> String {
    let what = format!(
        "{:.0} s of load at {} in flight ({:.0} appends/s, {:.1} MiB/s) before measuring, not \
         counted",
        s.seconds, s.concurrency, s.appends_per_sec, s.mib_per_sec
    );
    let n = s.segments_zero_filled;
    match s.end {
        SettleEnd::Recycling if n == 0 => format!("{what}: the logs zero-filled no segment"),
        SettleEnd::Recycling => format!(
            "{what}: the logs zero-filled {n} new segments (a fresh directory) until the trims \
             gave them segments to recycle"
        ),
        SettleEnd::Idle => format!("{what}: no log began a new segment (a light load)"),
        SettleEnd::Cap => format!(
            "{what}: the logs still zero-filled new segments at the end ({n} in all); the \
             figures below include that (each new segment written twice)"
        ),
        SettleEnd::ProbeFailed => format!(
            "{what}: the replicas' counters could not be read ({n} segments zero-filled until \
             then)"
        ),
    }
}

/// The sweep in one line: each level's figures, then the level chosen.
fn sweep_text(args: &ClusterArgs, r: &ClusterReport) -> Option<String> {
    if r.sweep.is_empty() {
        return None;
    }
    let steps: Vec<String> = r
        .sweep
        .iter()
        .map(|s| {
            format!("{} -> {:.0}/s (p50 {})", s.concurrency, s.appends_per_sec, human_us(s.p50_us))
        })
        .collect();
    let (warm, measure) = sweep_step_duration(args);
    Some(format!(
        "in flight -> appends/s ({warm:?} warm-up + {measure:?} each): {}; saturation at {} in \
         flight",
        steps.join(", "),
        r.concurrency
    ))
}

/// What [`run_phases`] measured.
struct Phases {
    /// Saturation (unless `--rate`), then the open loop.
    phases: Vec<PhaseResult>,
    /// The stage breakdown of the open loop.
    stages: Vec<(String, Histogram<u64>)>,
    checkpoints: Option<CheckpointStats>,
    sweep: Vec<SweepStep>,
    /// The saturation phase's appends in flight.
    concurrency: usize,
    settle: Option<Settled>,
}

/// The longest a fresh data directory's transient may keep the first closed loop waiting
/// (see [`Generator::settle`]). On the 2-core dev VM it ended after 4-6 s of load.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Warm-up and measured time of one sweep step: short, since the saturation phase measures
/// the chosen level again in full.
fn sweep_step_duration(args: &ClusterArgs) -> (Duration, Duration) {
    (args.warmup.min(Duration::from_secs(1)), args.duration.min(Duration::from_secs(2)))
}

/// The phases: the concurrency sweep and saturation (unless `--rate`), then the open loop,
/// with the checkpointer trimming behind them.
fn run_phases(
    args: &ClusterArgs,
    addresses: &[SocketAddr],
    data_dir: Option<&std::path::Path>,
    node_stages: &dyn Fn() -> Option<Vec<(String, Histogram<u64>)>>,
    flush_probe: Option<super::load::FlushProbe>,
    replica_probe: Option<super::load::ReplicaProbe>,
) -> Result<Phases, String> {
    // The closed loop keeps `concurrency` in flight by itself; the open loop is bounded by a
    // window with room for a backlog (four times the saturation phase's level, so that the
    // pacers are not held back while the cluster keeps up), within the clients' bound.
    let most = args.concurrency.iter().copied().max().unwrap_or(1);
    let per_conn = most.div_ceil(args.connections) * OPEN_LOOP_WINDOW_FACTOR;
    let mut gen_ = Generator::new(
        addresses,
        args.connections,
        per_conn,
        args.groups,
        args.entry_size,
        args.seed,
    )?;
    if let Some(dir) = data_dir {
        gen_.measure_disk_of(dir);
    }
    if let Some(p) = flush_probe {
        gen_.probe_flushes(p);
    }
    if let Some(p) = replica_probe {
        gen_.probe_replicas(p);
    }
    gen_.wait_ready(Duration::from_secs(10))
        .map_err(|e| format!("the cluster does not accept appends: {e}"))?;
    let every = args.checkpoint_interval();
    if every.is_zero() {
        eprintln!(
            "note: the cluster's logs are not trimmed during this run (--checkpoint-every 1s \
             trims them as a checkpointing database would): each node keeps every byte appended, \
             at saturation hundreds of MiB a second, until the cluster is trimmed or removed"
        );
    }
    let checkpointer = if every.is_zero() {
        None
    } else {
        Some(Checkpointer::start(addresses, args.groups, every)?)
    };
    let mut progress = Progress::new(args.quiet);
    let mut phases = Vec::new();
    let mut sweep = Vec::new();
    let mut concurrency = most;
    let mut settle = None;
    let rate = match args.rate {
        // The open loop warms up at its own rate (below).
        Some(r) => r,
        None => {
            // A fresh directory's logs zero-fill every new segment until the trims give them
            // segments to recycle (none without trims: then zero-filling is the steady state).
            // The closed loops are to find the sustained rate: they start after it.
            if !args.warmup.is_zero() && !every.is_zero() {
                settle = gen_.settle(most, SETTLE_MAX, &mut progress);
            } else if data_dir.is_some() && !every.is_zero() {
                eprintln!(
                    "note: no settling load (--warmup 0s): a fresh directory's logs zero-fill \
                     every new segment until the first trims, within the figures below"
                );
            }
            // With several levels: find the peak as a closed-loop peak is found for any
            // system (etcd's in docs/measurements was the best of a sweep of client counts):
            // a fixed number in flight that cannot fill the pipeline measures the latency of
            // the pipeline, not the cluster's throughput.
            if args.concurrency.len() > 1 {
                let (warm, measure) = sweep_step_duration(args);
                let mut choice = SweepChoice::default();
                for &c in &args.concurrency {
                    let step =
                        gen_.closed_loop(&format!("sweep {c}"), c, warm, measure, &mut progress);
                    let rate = step.appends_per_sec();
                    sweep.push(SweepStep {
                        concurrency: c,
                        appends_per_sec: rate,
                        p50_us: q(&step.latency, 0.5),
                        p99_us: q(&step.latency, 0.99),
                        errors: step.errors.values().sum(),
                    });
                    if !choice.offer(c, rate) {
                        break;
                    }
                }
                concurrency = choice.best.unwrap_or(args.concurrency[0]);
            } else {
                concurrency = args.concurrency[0];
            }
            let sat = gen_.closed_loop(
                "saturation",
                concurrency,
                args.warmup,
                args.duration,
                &mut progress,
            );
            let r = sat.appends_per_sec() * args.load_fraction;
            phases.push(sat);
            if r < 1.0 {
                gen_.close();
                checkpointer.map(Checkpointer::finish);
                return Err("the saturation phase completed no appends".into());
            }
            r
        }
    };
    let name = match args.rate {
        Some(_) => "open loop".to_string(),
        None => format!("open loop {:.0}%", args.load_fraction * 100.0),
    };
    // The open loop warms up at its rate before it measures: the switch from a saturated
    // closed loop (full queues, a backlog of flushes and trims) is not the steady state at
    // this rate. Of 97 open-loop seconds with a p99 above 50 ms in one day's runs without
    // this warm-up, 52 were the phase's first two seconds.
    let mut before = None;
    let window = concurrency.div_ceil(args.connections) * OPEN_LOOP_WINDOW_FACTOR;
    let open =
        gen_.open_loop(&name, rate, window, args.warmup, args.duration, &mut progress, &mut || {
            before = node_stages()
        });
    let after = node_stages();
    gen_.close();
    let checkpoints = checkpointer.map(Checkpointer::finish);
    let mut stages = vec![("generator: due → sent".to_string(), open.send_lag.clone())];
    // A local cluster: the leaders' own stages of the open loop's appends (the counts since
    // start, less those before the open loop). The network and the client's side are what
    // the cluster's total below adds to them.
    if let (Some(before), Some(after)) = (before, after) {
        for ((name, b), (_, mut a)) in before.into_iter().zip(after) {
            let _ = a.subtract(&b);
            stages.push((format!("leader: {name}"), ns_to_us(&a)));
        }
    }
    // Nodes that time nothing (`stage_timing` off) would show every stage at zero: the
    // cluster as one stage instead.
    if stages[1..].iter().all(|(_, h)| h.is_empty()) {
        stages.truncate(1);
        stages.push(("cluster: sent → acknowledged".to_string(), open.service.clone()));
    }
    phases.push(open);
    Ok(Phases { phases, stages, checkpoints, sweep, concurrency, settle })
}

/// For each second of a phase, the slowest flush any local replica's log completed in it, µs
/// (from the logs' flush-latency histograms, which count since start: each call subtracts
/// the previous one's).
fn flush_probe(scrapers: Vec<std::sync::Arc<node::metrics::Scraper>>) -> super::load::FlushProbe {
    let mut prev: Vec<Option<Histogram<u64>>> = vec![None; scrapers.len()];
    Box::new(move || {
        let mut max_ns = None;
        for (s, prev) in scrapers.iter().zip(prev.iter_mut()) {
            let snapshot = s.snapshot(false).ok()?;
            let mut logs = snapshot.logs();
            let mut all = logs.next()?.flush_latency_ns.clone();
            for log in logs {
                all.add(&log.flush_latency_ns).ok()?;
            }
            let mut since = all.clone();
            if let Some(p) = prev.as_ref() {
                since.subtract(p).ok()?;
            }
            *prev = Some(all);
            if !since.is_empty() {
                max_ns = max_ns.max(Some(since.max()));
            }
        }
        Some(max_ns.map_or(0, |ns| ns / 1000))
    })
}

/// Every local replica's log counters so far (all its groups), in node order.
fn replica_probe(
    scrapers: Vec<std::sync::Arc<node::metrics::Scraper>>,
) -> super::load::ReplicaProbe {
    Box::new(move || {
        scrapers
            .iter()
            .map(|s| {
                let snapshot = s.snapshot(false).ok()?;
                let mut c = super::load::ReplicaCounts::default();
                for log in snapshot.logs() {
                    c.flushes += log.flushes;
                    c.written += log.bytes_written;
                    c.frames_read_back += log.frames_read_from_disk;
                    c.space_wait_ns += log.space_wait_ns;
                    c.inflight_ns += log.flushes_in_flight_ns;
                    c.zero_filled += log.segments_zero_filled;
                    c.activated += log.segments_activated;
                    c.recycled += log.segments_recycled;
                }
                Some(c)
            })
            .collect()
    })
}

/// The stage histograms of the local nodes (nanoseconds), summed over the nodes (only a
/// group's leader records its appends). `None` without local nodes or when one cannot answer.
fn node_stages(nodes: &[node::NodeHandle]) -> Option<Vec<(String, Histogram<u64>)>> {
    let all: Option<Vec<_>> = nodes.iter().map(|n| n.stages().ok()).collect();
    sum_stages(all?)
}

/// The stage histograms of a running cluster's nodes, from their metrics endpoints, summed as
/// [`node_stages`] sums the local ones. `None` without endpoints; a node that cannot answer is
/// reported on stderr and makes the breakdown fall back to the cluster's total.
fn remote_stages(endpoints: &[SocketAddr]) -> Option<Vec<(String, Histogram<u64>)>> {
    let all: Result<Vec<_>, String> =
        endpoints.iter().map(|a| node::metrics::fetch_stages(*a)).collect();
    match all {
        Ok(all) => sum_stages(all),
        Err(e) => {
            eprintln!("warning: no stage breakdown: {e}");
            None
        }
    }
}

/// The sum, stage by stage, of the nodes' stage histograms; `None` for no nodes or nodes that
/// disagree on the stages.
fn sum_stages(all: Vec<Vec<(String, Histogram<u64>)>>) -> Option<Vec<(String, Histogram<u64>)>> {
    let mut all = all.into_iter();
    let mut sum = all.next()?;
    for st in all {
        if st.len() != sum.len() || st.iter().zip(&sum).any(|((a, _), (b, _))| a != b) {
            eprintln!("warning: no stage breakdown: the nodes report different stages");
            return None;
        }
        for ((_, a), (_, h)) in sum.iter_mut().zip(&st) {
            a.add(h).ok()?;
        }
    }
    Some(sum)
}

/// A histogram of nanoseconds as one of microseconds (the bench's unit).
fn ns_to_us(h: &Histogram<u64>) -> Histogram<u64> {
    let mut out = super::latency_histogram();
    for v in h.iter_recorded() {
        out.saturating_record_n((v.value_iterated_to() / 1000).max(1), v.count_at_value());
    }
    out
}

fn compare_lines(l: &compare::Limits, r: &ClusterReport, local: bool) -> Vec<String> {
    let mut v = compare::describe(l);
    if let Some(best) = l.best_disk() {
        if local {
            let written = r.mib_per_sec * r.replicas as f64;
            v.push(format!(
                "corelog   {:.1} MiB/s of appends, written by {} replicas to this one disk = {:.1} MiB/s \
                 = {:.0}% of this disk's durable write bandwidth ({:.1} MiB/s with {} KiB writes); \
                 per replica {:.0}% of 1/{} of it",
                r.mib_per_sec,
                r.replicas,
                written,
                written / best.mib_per_sec * 100.0,
                best.mib_per_sec,
                best.write_bytes >> 10,
                r.mib_per_sec / (best.mib_per_sec / r.replicas as f64) * 100.0,
                r.replicas
            ));
        } else {
            v.push(format!(
                "corelog   {:.1} MiB/s of appends = {:.0}% of this machine's disk bandwidth ({:.1} MiB/s)",
                r.mib_per_sec,
                r.mib_per_sec / best.mib_per_sec * 100.0,
                best.mib_per_sec
            ));
        }
    }
    if let (Some(same), true) = (&l.same_pattern, local) {
        let written = r.mib_per_sec * r.replicas as f64;
        v.push(format!(
            "corelog   appends x {} replicas = {:.1} MiB/s = {:.0}% of what this disk does under the \
             replicas' pattern of the saturation phase ({} writers x {} KiB write + fdatasync, one after \
             another: {:.1} MiB/s)",
            r.replicas,
            written,
            written / same.mib_per_sec * 100.0,
            same.writers,
            same.write_bytes >> 10,
            same.mib_per_sec
        ));
    }
    if let (Some(n), true) = (&l.loopback_streams, local) {
        let crossings = r.replicas as f64;
        v.push(format!(
            "corelog   {:.1} MiB/s of appends cross loopback {} times (client to leader, leader to \
             each follower) = {:.1} MiB/s = {:.0}% of what loopback TCP alone carries on these cores \
             in {} streams ({:.1} MiB/s, no disk, no checksums)",
            r.mib_per_sec,
            r.replicas,
            r.mib_per_sec * crossings,
            r.mib_per_sec * crossings / n.mib_per_sec * 100.0,
            n.streams,
            n.mib_per_sec
        ));
    }
    if let Some(small) = l.disk.iter().find(|d| d.write_bytes == 4096) {
        let floor = small.p50_us + l.loopback_rtt_p50_us;
        v.push(format!(
            "corelog   open-loop commit p50 {} = {:.2}x (one durable 4 KiB write {} + one loopback round trip {})",
            human_us(r.p50_us),
            r.p50_us as f64 / floor.max(1) as f64,
            human_us(small.p50_us),
            human_us(l.loopback_rtt_p50_us)
        ));
    }
    v
}

fn write_outputs(
    args: &ClusterArgs,
    r: &ClusterReport,
    phases: &[PhaseResult],
    stages: &[(String, Histogram<u64>)],
    header: &[String],
    warnings: &[String],
    notes: &[String],
) -> Result<(), String> {
    let dir = &r.out_dir;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    let settings = serde_json::json!({
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "entry_size": args.entry_size.to_string(),
        "entry_size_mean": args.entry_size.mean(),
        "concurrency": r.concurrency,
        "concurrency_levels": args.concurrency,
        "rate": args.rate,
        "load_fraction": args.load_fraction,
        "connections": args.connections,
        "groups": args.groups,
        "replicas": r.replicas,
        "seed": args.seed,
        "addresses": args.addresses,
        "compare": args.compare,
        "checkpoint_every_s": r.checkpoint_every_s,
    });
    let open = phases.iter().rev().find(|p| p.offered_per_sec.is_some());
    let summary = serde_json::json!({
        "appends_per_sec": r.appends_per_sec,
        "mib_per_sec": r.mib_per_sec,
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "p999_us": r.p999_us,
        "max_us": r.max_us,
        "throughput_from": "saturation phase (closed loop)",
        "latency_from": "open-loop phase, from each append's due time",
        "offered_per_sec": open.and_then(|p| p.offered_per_sec),
        "achieved_per_sec": open.map(|p| p.appends_per_sec()),
        "peak_rss_mib": r.peak_rss_mib,
        "settings": settings,
        "host": header,
        "warnings": warnings,
        "phases": r.phases,
        "sweep": r.sweep,
        "settle": r.settle,
        "limits": r.limits,
        "checkpoints": r.checkpoints,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n";
    write("summary.json", &text)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(open) = open {
        write("latency.hgrm", &report::hgrm(&open.latency))?;
    }
    for p in phases.iter().filter(|p| p.offered_per_sec.is_none()) {
        write("latency-saturation.hgrm", &report::hgrm(&p.latency))?;
    }
    let mut csv = String::from(
        "phase,second,appends,appends_per_sec,mib_per_sec,p50_us,p99_us,max_us,errors,flush_max_us\n",
    );
    let rows: Vec<_> = phases.iter().flat_map(|p| p.seconds.iter()).cloned().collect();
    for s in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{:.3},{},{},{},{},{}\n",
            s.phase,
            s.second,
            s.appends,
            s.appends,
            s.mib,
            s.p50_us,
            s.p99_us,
            s.max_us,
            s.errors,
            s.flush_max_us.map(|v| v.to_string()).unwrap_or_default()
        ));
    }
    write("timeseries.csv", &csv)?;
    let mut summary_rows: Vec<(String, String)> = r
        .settle
        .as_ref()
        .map(|s| ("settle".to_string(), settle_text(s)))
        .into_iter()
        .chain(sweep_text(args, r).map(|t| ("sweep".to_string(), t)))
        .collect();
    for p in &r.phases {
        let label = match p.offered_per_sec {
            Some(o) => format!("{} (offered {o:.0}/s)", p.name),
            None => p.name.clone(),
        };
        summary_rows.push((
            label,
            format!(
                "{:.0} appends/s, {:.1} MiB/s; p50 {}, p99 {}, p99.9 {}, max {}; errors {}",
                p.appends_per_sec,
                p.mib_per_sec,
                human_us(p.p50_us),
                human_us(p.p99_us),
                human_us(p.p999_us),
                human_us(p.max_us),
                p.errors.values().sum::<u64>()
            ),
        ));
    }
    let settings_rows: Vec<(String, String)> = settings
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
        .unwrap_or_default();
    let html = report::render_html(&report::HtmlReport {
        title: format!("corelog bench: {} replicas, {} entries", r.replicas, args.entry_size),
        header,
        settings: settings_rows,
        summary: summary_rows,
        warnings,
        percentiles: phases.iter().map(|p| (p.name.clone(), &p.latency)).collect(),
        seconds: &rows,
        stages,
        notes: notes.to_vec(),
    });
    write("report.html", &html)
}

#[cfg(test)]
mod tests {
    use super::{SettleEnd, Settled, SweepChoice, fell_behind, settle_text};

    #[test]
    fn the_settle_line_tells_a_transient_from_a_run_that_never_settled() {
        let s = |end, n| Settled {
            seconds: 4.2,
            concurrency: 2048,
            appends_per_sec: 30_512.4,
            mib_per_sec: 476.8,
            segments_zero_filled: n,
            end,
        };
        let t = settle_text(&s(SettleEnd::Recycling, 41));
        assert!(
            t.starts_with(
                "4 s of load at 2048 in flight (30512 appends/s, 476.8 MiB/s) before measuring, \
                 not counted: the logs zero-filled 41 new segments (a fresh directory)"
            ),
            "{t}"
        );
        assert!(settle_text(&s(SettleEnd::Recycling, 0)).ends_with("zero-filled no segment"));
        assert!(
            settle_text(&s(SettleEnd::Idle, 0))
                .ends_with("no log began a new segment (a light load)")
        );
        let t = settle_text(&s(SettleEnd::Cap, 90));
        assert!(t.contains("still zero-filled new segments at the end (90 in all)"), "{t}");
        assert!(t.contains("the figures below include that"), "{t}");
        let t = settle_text(&s(SettleEnd::ProbeFailed, 3));
        assert!(t.contains("counters could not be read (3 segments"), "{t}");
    }

    #[test]
    fn an_open_loop_fell_behind_when_short_of_its_rate_or_waiting_on_a_full_window() {
        assert!(!fell_behind(300_000.0, 299_900.0, 0.09), "kept up");
        assert!(fell_behind(300_000.0, 270_000.0, 0.0), "completed 90%");
        // Nearly all completed, yet the window was full most of the time: a growing backlog.
        assert!(fell_behind(330_445.0, 317_412.0, 0.58));
        assert!(!fell_behind(330_445.0, 317_412.0, 0.2));
    }

    fn sweep(steps: &[(usize, f64)]) -> (Option<usize>, usize) {
        let mut choice = SweepChoice::default();
        let tried = steps.iter().take_while(|&&(c, rate)| choice.offer(c, rate)).count();
        (choice.best, tried)
    }

    #[test]
    fn the_sweep_keeps_the_best_level_and_stops_when_the_gain_is_small() {
        // Rising, then flat: 2048 gains 3% over 1024, so the sweep stops there at 1024.
        assert_eq!(
            sweep(&[(512, 100e3), (1024, 150e3), (2048, 154e3), (4096, 200e3)]),
            (Some(1024), 2)
        );
        // Rising all the way: the last level.
        assert_eq!(sweep(&[(512, 100e3), (1024, 120e3), (2048, 130e3)]), (Some(2048), 3));
        // Falling: the first.
        assert_eq!(sweep(&[(512, 100e3), (1024, 90e3)]), (Some(512), 1));
        // A level that completed nothing stops the sweep; the earlier best stands.
        assert_eq!(sweep(&[(512, 100e3), (1024, 0.0)]), (Some(512), 1));
        assert_eq!(sweep(&[(512, 0.0)]), (None, 0));
    }
}
