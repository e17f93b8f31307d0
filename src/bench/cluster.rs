//! `corelog bench` / `corelog bench cluster`: a replicated cluster under load.
//!
//! By default it starts a local cluster of `--replicas` nodes in this process (each node its
//! own executor threads, real TCP on loopback, real files under a new directory in /var/tmp),
//! waits for a leader, and runs `--concurrency` closed-loop clients, each on its own thread with
//! its own session: append one entry, wait until it is committed on a majority (durable on
//! each), record the latency, repeat. With `--addresses` it loads an existing cluster instead.
//! The warm-up is excluded from every figure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{latency_histogram, parse_bytes, parse_duration, peak_rss_bytes, process_cpu_time};
use crate::client::{Client, ClientConfig};
use crate::node::{self, NodeConfig, PeerConfig};

/// Arguments of `corelog bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring (excluded).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes per entry.
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    pub entry_size: usize,
    /// Clients (closed loop, one append in flight each).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Replicas of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// Run against an existing cluster (client addresses, comma separated) instead.
    #[arg(long, value_delimiter = ',')]
    pub addresses: Vec<SocketAddr>,
    /// Directory for the local cluster's data (default: a new directory under /var/tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub replicas: u64,
    pub concurrency: usize,
    pub entry_size: usize,
    pub duration_s: f64,
    pub appends: u64,
    pub errors: u64,
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
    pub cpu_us_per_append: f64,
    pub peak_rss_mib: f64,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &ClusterArgs) -> Result<ClusterReport, String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if cfg!(debug_assertions) {
        eprintln!("WARNING: debug build; the figures mean nothing. Use --release.");
    }
    let mut nodes = Vec::new();
    let mut _tmp = None;
    let addresses = if args.addresses.is_empty() {
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
        for line in super::host_header(&dir) {
            eprintln!("{line}");
        }
        if !crate::log::direct_io_effective(&dir) {
            eprintln!(
                "WARNING: O_DIRECT is not in effect on {} (tmpfs?); the figures are not a disk's.",
                dir.display()
            );
        }
        let mut members = Vec::new();
        for id in 1..=args.replicas {
            members.push(PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            });
        }
        for id in 1..=args.replicas {
            let cfg = NodeConfig {
                node_id: id,
                data_dir: dir.join(format!("node{id}")),
                members: members.clone(),
                ..NodeConfig::default()
            };
            nodes.push(node::start(cfg)?);
        }
        eprintln!(
            "corelog bench: local cluster of {} replicas on loopback, data under {}",
            args.replicas,
            dir.display()
        );
        members.iter().map(|m| m.client_addr).collect()
    } else {
        args.addresses.clone()
    };
    eprintln!(
        "corelog bench: {} clients, {} B entries, {:.1}s + {:.1}s warm-up",
        args.concurrency,
        args.entry_size,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    // Wait for a leader: the first append that succeeds.
    let mut probe = Client::new(ClientConfig::new(addresses.clone())).map_err(|e| e.to_string())?;
    probe
        .append(0, b"corelog bench: warm-up probe")
        .map_err(|e| format!("the cluster does not accept appends: {e}"))?;

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let stop_at = measure_from + args.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let appends = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..args.concurrency {
        let (addresses, stop, appends, errors) =
            (addresses.clone(), stop.clone(), appends.clone(), errors.clone());
        let size = args.entry_size;
        threads.push(std::thread::spawn(move || {
            let mut hist = latency_histogram();
            let Ok(mut client) = Client::new(ClientConfig::new(addresses)) else {
                return hist;
            };
            let data = vec![0x5Au8; size];
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if t0 >= stop_at {
                    break;
                }
                match client.append(0, &data) {
                    Ok(_) if t0 >= measure_from => {
                        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                        appends.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let cpu0 = process_cpu_time();
    let mut last = 0;
    while Instant::now() < stop_at {
        std::thread::sleep(
            Duration::from_secs(1).min(stop_at.saturating_duration_since(Instant::now())),
        );
        let now = appends.load(Ordering::Relaxed);
        eprintln!("  {:>10} appends/s", now - last);
        last = now;
    }
    let cpu = process_cpu_time().saturating_sub(cpu0);
    stop.store(true, Ordering::Relaxed);
    let mut hist = latency_histogram();
    for t in threads {
        if let Ok(h) = t.join() {
            hist.add(&h).map_err(|e| e.to_string())?;
        }
    }
    for n in nodes {
        n.shutdown()?;
    }
    let n = appends.load(Ordering::Relaxed);
    let secs = args.duration.as_secs_f64();
    let r = ClusterReport {
        replicas: if args.addresses.is_empty() {
            args.replicas
        } else {
            args.addresses.len() as u64
        },
        concurrency: args.concurrency,
        entry_size: args.entry_size,
        duration_s: secs,
        appends: n,
        errors: errors.load(Ordering::Relaxed),
        appends_per_sec: n as f64 / secs,
        mib_per_sec: n as f64 * args.entry_size as f64 / secs / (1 << 20) as f64,
        min_us: hist.min(),
        mean_us: hist.mean(),
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        p9999_us: hist.value_at_quantile(0.9999),
        max_us: hist.max(),
        cpu_us_per_append: if n > 0 && args.addresses.is_empty() {
            cpu.as_secs_f64() * 1e6 / n as f64
        } else {
            0.0
        },
        peak_rss_mib: peak_rss_bytes() as f64 / (1 << 20) as f64,
    };
    println!("appends/s        {:>12.0}", r.appends_per_sec);
    println!("MiB/s            {:>12.1}", r.mib_per_sec);
    println!(
        "commit latency us min {} mean {:.0} p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
        r.min_us, r.mean_us, r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.p9999_us, r.max_us
    );
    println!("errors           {:>12}", r.errors);
    if args.addresses.is_empty() {
        println!(
            "cpu per append   {:>12.1} us (all replicas and the clients, one process)",
            r.cpu_us_per_append
        );
        println!("peak RSS         {:>12.0} MiB (all replicas and the clients)", r.peak_rss_mib);
    }
    println!(
        "SUMMARY cluster appends_per_sec={:.0} mib_per_sec={:.1} p50_us={} p99_us={} p999_us={} max_us={} entry_size={} concurrency={} replicas={}",
        r.appends_per_sec,
        r.mib_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.entry_size,
        r.concurrency,
        r.replicas
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(r)
}
