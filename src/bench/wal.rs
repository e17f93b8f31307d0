//! `corelog bench wal`: the local log alone, no network.
//!
//! One log per group, one group per executor (pinned to a core unless `--no-pin`). Each group
//! runs `--concurrency` closed-loop appenders: append one entry, wait until it is durable,
//! record the latency, repeat. Group commit decides how many appends share a flush. A trimmer
//! per group trims the log behind the durable index, as a database that checkpoints does, so
//! segments are recycled and the run measures the steady state rather than first-time
//! zero-filling of files. The warm-up is excluded from every figure.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{latency_histogram, parse_bytes, parse_duration, peak_rss_bytes, process_cpu_time};
use crate::frame::{EntryKind, EntryRef};
use crate::log::{IoEngine, Log, LogConfig, SyncMethod, direct_io_effective};

/// Arguments of `corelog bench wal`.
#[derive(Debug, Clone, clap::Args)]
pub struct WalArgs {
    /// Directory for the logs (one subdirectory per group). Default: a new directory under
    /// /var/tmp, removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring (excluded from the figures).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes of data per entry.
    #[arg(long, default_value = "4096", value_parser = parse_bytes)]
    pub entry_size: usize,
    /// Appends in flight per group (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Groups (logs), one per executor. Default: one per available core.
    #[arg(long)]
    pub groups: Option<usize>,
    /// How a flush is made durable: fdatasync, dsync (O_DSYNC) or adaptive (RWF_DSYNC for a
    /// flush that goes out alone, write + fdatasync for the others).
    #[arg(long, default_value = "adaptive")]
    pub sync: SyncMethod,
    /// How a flush is submitted: `uring` (a write linked to its fdatasync, one submission) or
    /// `runtime` (the runtime's plain file API: write, then fdatasync, two operations).
    #[arg(long, default_value = "uring")]
    pub io_engine: IoEngine,
    /// Most bytes per flush.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub flush_bytes_max: usize,
    /// Flushes in flight at once per log.
    #[arg(long, default_value_t = 4)]
    pub flushes_in_flight: usize,
    /// Bytes gathered before flushes are cut to pipeline (see `LogConfig::pipeline_bytes`).
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
    pub pipeline_bytes: usize,
    /// Segment size.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub segment_bytes: usize,
    /// Do not pin executors to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Let each executor poll (busy-wait) this long before it sleeps, e.g. `200us`: trades a
    /// core's idle time for the latency of waking up. Off by default (nothing spins).
    #[arg(long, value_parser = parse_duration)]
    pub spin_before_park: Option<Duration>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct WalReport {
    pub groups: usize,
    pub concurrency: usize,
    pub entry_size: usize,
    pub sync: String,
    pub io_engine: String,
    pub flush_bytes_max: usize,
    pub flushes_in_flight: usize,
    pub duration_s: f64,
    pub direct_io: bool,
    pub appends: u64,
    pub appends_per_sec: f64,
    pub mib_per_sec: f64,
    pub flushes_per_sec: f64,
    /// Share of the flushes made as one `RWF_DSYNC` write (`--sync adaptive`: those that went
    /// out alone under light load).
    pub dsync_flush_share: f64,
    pub entries_per_flush: f64,
    pub bytes_per_flush: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub flush_p50_us: u64,
    pub flush_p99_us: u64,
    /// Mean flushes in flight per group (of `flushes_in_flight` at most).
    pub flushes_in_flight_mean: f64,
    /// Bytes written per flush, percentiles (the mean hides a mix of small and large ones).
    pub flush_bytes_p10: u64,
    pub flush_bytes_p50: u64,
    pub flush_bytes_p90: u64,
    pub cpu_us_per_append: f64,
    pub segments_zero_filled: u64,
    /// What the directory's block device wrote while the appends ran (the logs' flushes,
    /// segment preparation, metadata, other writers), when it is on one.
    pub disk_write_mib_per_sec: Option<f64>,
    /// The device's side: its reads, and its own mean time per write and per cache flush
    /// (beside the flush latency, the rest is queueing above the device).
    pub device: Option<super::DeviceSummary>,
    pub segments_recycled: u64,
    pub peak_rss_mib: f64,
    pub errors: u64,
}

struct GroupResult {
    hist: Histogram<u64>,
    flush_hist: Histogram<u64>,
    /// Bytes written by each flush of the measured interval.
    flush_bytes: Histogram<u64>,
    appends: u64,
    flushes: u64,
    dsync_flushes: u64,
    bytes_written: u64,
    /// Growth of `LogStats::flushes_in_flight_ns` over the measured interval, and its length.
    flushes_in_flight_ns: u64,
    measured_ns: u64,
    zero_filled: u64,
    recycled: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &WalArgs) -> Result<WalReport, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let groups = args.groups.unwrap_or(cores.len().max(1));
    let (dir, _cleanup) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("corelog-bench-wal-")
                .tempdir_in("/var/tmp")
                .map_err(|e| format!("creating a directory under /var/tmp: {e}"))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let direct_io = direct_io_effective(&dir);
    eprintln!(
        "corelog bench wal: {groups} group(s), {} appenders each, {} B entries, sync {} via {}, flush max {} B, {} in flight, {} + {:?} warm-up, dir {}",
        args.concurrency,
        args.entry_size,
        args.sync,
        args.io_engine,
        args.flush_bytes_max,
        args.flushes_in_flight,
        humanize(args.duration),
        args.warmup,
        dir.display()
    );
    for line in super::host_header(&dir) {
        eprintln!("{line}");
    }
    if cfg!(debug_assertions) {
        eprintln!("WARNING: debug build; the figures mean nothing. Use --release.");
    }
    if !direct_io {
        eprintln!(
            "WARNING: O_DIRECT is not in effect on {} (tmpfs?); the figures are not a disk's.",
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for g in 0..groups {
        let core = (!args.no_pin && !cores.is_empty()).then(|| cores[g % cores.len()].id);
        let a = args.clone();
        let gdir = dir.join(format!("g{g}"));
        // The executor keeps this much memory for the log's buffers (open, in flight, recent
        // cache); when it runs out, buffers come from fresh heap memory per flush, and page
        // faults then cost more CPU than the appends themselves.
        let io_memory = log_config(0, args).dma_memory_bytes();
        let h = crate::rt::Executor::new(format!("wal-bench-{g}"))
            .pin(core)
            .io_memory(io_memory)
            .spin_before_park(args.spin_before_park)
            .spawn(move || async move { run_group(g as u64, gdir, a).await })
            .map_err(|e| format!("starting executor {g}: {e}"))?;
        handles.push(h);
    }
    // CPU time is taken over the measured window only (not the opening or the warm-up).
    std::thread::sleep(
        (started + args.warmup).saturating_duration_since(std::time::Instant::now()),
    );
    let cpu0 = process_cpu_time();
    let disk = super::BlockDevice::of_dir(&dir);
    let disk0 = disk.as_ref().and_then(|d| d.counters());
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|e| format!("executor failed: {e}"))??);
    }
    let cpu = process_cpu_time().saturating_sub(cpu0);
    let disk_window = disk.as_ref().and_then(|d| d.since(disk0));
    let mut hist = latency_histogram();
    let mut flush_hist = latency_histogram();
    let mut flush_bytes: Option<Histogram<u64>> = None;
    let (mut appends, mut flushes, mut bytes_written, mut zero_filled, mut recycled, mut errors) =
        (0, 0, 0, 0, 0, 0);
    let mut dsync_flushes = 0;
    let mut first_error = None;
    let n_groups = results.len().max(1) as f64;
    let mut inflight_mean = 0.0;
    for r in results {
        inflight_mean += r.flushes_in_flight_ns as f64 / r.measured_ns.max(1) as f64 / n_groups;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        flush_hist.add(&r.flush_hist).map_err(|e| e.to_string())?;
        match &mut flush_bytes {
            None => flush_bytes = Some(r.flush_bytes.clone()),
            Some(h) => h.add(&r.flush_bytes).map_err(|e| e.to_string())?,
        }
        appends += r.appends;
        flushes += r.flushes;
        dsync_flushes += r.dsync_flushes;
        bytes_written += r.bytes_written;
        zero_filled += r.zero_filled;
        recycled += r.recycled;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    if let Some(e) = &first_error {
        eprintln!("errors: {errors}; first: {e}");
    }
    let secs = args.duration.as_secs_f64();
    let report = WalReport {
        groups,
        concurrency: args.concurrency,
        entry_size: args.entry_size,
        sync: args.sync.to_string(),
        io_engine: args.io_engine.to_string(),
        flush_bytes_max: args.flush_bytes_max,
        flushes_in_flight: args.flushes_in_flight,
        duration_s: secs,
        direct_io,
        appends,
        appends_per_sec: appends as f64 / secs,
        mib_per_sec: appends as f64 * args.entry_size as f64 / secs / (1 << 20) as f64,
        flushes_per_sec: flushes as f64 / secs,
        dsync_flush_share: if flushes > 0 { dsync_flushes as f64 / flushes as f64 } else { 0.0 },
        entries_per_flush: if flushes > 0 { appends as f64 / flushes as f64 } else { 0.0 },
        bytes_per_flush: if flushes > 0 { bytes_written as f64 / flushes as f64 } else { 0.0 },
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        mean_us: hist.mean(),
        flush_p50_us: flush_hist.value_at_quantile(0.5),
        flush_p99_us: flush_hist.value_at_quantile(0.99),
        flushes_in_flight_mean: inflight_mean,
        flush_bytes_p10: flush_bytes.as_ref().map_or(0, |h| h.value_at_quantile(0.1)),
        flush_bytes_p50: flush_bytes.as_ref().map_or(0, |h| h.value_at_quantile(0.5)),
        flush_bytes_p90: flush_bytes.as_ref().map_or(0, |h| h.value_at_quantile(0.9)),
        cpu_us_per_append: if appends > 0 { cpu.as_secs_f64() * 1e6 / appends as f64 } else { 0.0 },
        segments_zero_filled: zero_filled,
        segments_recycled: recycled,
        disk_write_mib_per_sec: disk_window.map(|d| d.write_bytes as f64 / secs / (1 << 20) as f64),
        device: disk_window.map(|d| d.summary(secs)),
        peak_rss_mib: peak_rss_bytes() as f64 / (1 << 20) as f64,
        errors,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(report)
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn print_report(r: &WalReport) {
    println!("appends/s          {:>12.0}", r.appends_per_sec);
    println!("MiB/s              {:>12.1}", r.mib_per_sec);
    let dsync = if r.dsync_flush_share > 0.0 {
        format!(" ({:.0}% as one RWF_DSYNC write)", r.dsync_flush_share * 100.0)
    } else {
        String::new()
    };
    println!("flushes/s          {:>12.0}{dsync}", r.flushes_per_sec);
    println!("entries per flush  {:>12.1}", r.entries_per_flush);
    println!(
        "bytes per flush    {:>12.0} (p10 {} p50 {} p90 {})",
        r.bytes_per_flush, r.flush_bytes_p10, r.flush_bytes_p50, r.flush_bytes_p90
    );
    println!(
        "durable latency us p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})",
        r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us, r.mean_us
    );
    println!("flush latency us   p50 {} p99 {}", r.flush_p50_us, r.flush_p99_us);
    println!(
        "flushes in flight  {:>12.2} mean per group (at most {})",
        r.flushes_in_flight_mean, r.flushes_in_flight
    );
    println!("cpu per append us  {:>12.2}", r.cpu_us_per_append);
    if let Some(d) = r.disk_write_mib_per_sec {
        println!("disk wrote MiB/s   {d:>12.1} (flushes, segment preparation, metadata)");
    }
    if let Some(line) = r.device.as_ref().and_then(super::DeviceSummary::line) {
        println!("device             {line}");
    }
    println!(
        "segments           {} zero-filled, {} recycled; peak RSS {:.0} MiB; errors {}",
        r.segments_zero_filled, r.segments_recycled, r.peak_rss_mib, r.errors
    );
    println!(
        "SUMMARY wal appends_per_sec={:.0} mib_per_sec={:.1} p50_us={} p99_us={} p999_us={} max_us={} entry_size={} concurrency={} groups={} sync={} io_engine={}",
        r.appends_per_sec,
        r.mib_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.entry_size,
        r.concurrency,
        r.groups,
        r.sync,
        r.io_engine
    );
}

fn log_config(group: u64, args: &WalArgs) -> LogConfig {
    LogConfig {
        segment_bytes: args.segment_bytes as u64,
        flush_bytes_max: args.flush_bytes_max,
        flushes_in_flight_max: args.flushes_in_flight,
        sync: args.sync,
        io_engine: args.io_engine,
        pipeline_bytes: args.pipeline_bytes,
        spare_segments: 2,
        ..LogConfig::new(group)
    }
}

async fn run_group(group: u64, dir: PathBuf, args: WalArgs) -> Result<GroupResult, String> {
    let cfg = log_config(group, &args);
    let (log, _) = Log::open(&dir, cfg)
        .await
        .map_err(|e| format!("opening the log in {}: {e}", dir.display()))?;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let stop_at = measure_from + args.duration;
    let hist = Rc::new(RefCell::new(latency_histogram()));
    let appends = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let first_error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let data = Rc::new(vec![0xA5u8; args.entry_size]);
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let (log, hist, appends, errors, first_error, data) = (
            log.clone(),
            hist.clone(),
            appends.clone(),
            errors.clone(),
            first_error.clone(),
            data.clone(),
        );
        tasks.push(crate::rt::spawn(async move {
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= stop_at {
                    break;
                }
                seq += 1;
                let e = [EntryRef {
                    kind: EntryKind::Normal,
                    session: worker as u64 + 1,
                    seq,
                    data: &data,
                }];
                let r = match log.append_entries(1, &e).await {
                    Ok(r) => log.wait_durable(r.last).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) if t0 >= measure_from => {
                        let us = t0.elapsed().as_micros() as u64;
                        hist.borrow_mut().saturating_record(us.max(1));
                        appends.set(appends.get() + 1);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        errors.set(errors.get() + 1);
                        first_error.borrow_mut().get_or_insert_with(|| e.to_string());
                        if errors.get() > 100 {
                            break;
                        }
                    }
                }
            }
        }));
    }
    // The trimmer: keep about one segment of entries behind the durable index.
    let keep = (args.segment_bytes / (args.entry_size + 24)).max(1) as u64;
    let trimmer = {
        let log = log.clone();
        crate::rt::spawn(async move {
            while Instant::now() < stop_at {
                crate::rt::sleep(Duration::from_millis(50)).await;
                let upto = log.durable_index().saturating_sub(keep);
                if upto > log.first_index()
                    && let Err(e) = log.trim_before(upto).await
                {
                    eprintln!("trim failed: {e}");
                    break;
                }
            }
        })
    };
    // Snapshot the counters when the warm-up ends.
    crate::rt::sleep(measure_from.saturating_duration_since(Instant::now())).await;
    let s0 = log.stats();
    let measured = Instant::now();
    for t in tasks {
        t.await;
    }
    // Before the trimmer's last pass, which may run after the appends stopped.
    let s1 = log.stats();
    let measured_ns = measured.elapsed().as_nanos() as u64;
    trimmer.await;
    let mut flush_bytes = s1.flush_bytes.clone();
    flush_bytes.subtract(&s0.flush_bytes).map_err(|e| e.to_string())?;
    let mut flush_hist = latency_histogram();
    for v in s1.flush_latency_ns.iter_recorded() {
        flush_hist.saturating_record_n((v.value_iterated_to() / 1000).max(1), v.count_at_value());
    }
    log.close().await.map_err(|e| format!("closing the log: {e}"))?;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
    let hist = hist.borrow().clone();
    let first_error = first_error.borrow().clone();
    Ok(GroupResult {
        hist,
        flush_hist,
        flush_bytes,
        appends: appends.get(),
        flushes: s1.flushes - s0.flushes,
        dsync_flushes: s1.dsync_flushes - s0.dsync_flushes,
        bytes_written: s1.bytes_written - s0.bytes_written,
        flushes_in_flight_ns: s1.flushes_in_flight_ns - s0.flushes_in_flight_ns,
        measured_ns,
        zero_filled: s1.segments_zero_filled,
        recycled: s1.segments_recycled,
        errors: errors.get(),
        first_error,
    })
}
