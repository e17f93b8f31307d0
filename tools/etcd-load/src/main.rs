//! etcd-load: puts against a running etcd cluster through its v3 HTTP/JSON gateway (or, with
//! `--grpc`, its gRPC API as etcd's own clients use it), in a
//! closed loop (peak throughput) or an open loop at a fixed rate (latency at a given load),
//! with latency in an HdrHistogram. The baseline for issue 5's "30x etcd's throughput, and a
//! p99 at 80% load below etcd's p50 at its own 80% load".
//!
//! Every connection is one std thread with one keep-alive TCP connection and one request in
//! flight; connection `i` talks to endpoint `i % endpoints`. In the open loop, request `k` is
//! due at `start + k / rate` and goes to connection `k % connections`; its latency is counted
//! from that intended time, so a connection still busy with an earlier request (or a generator
//! thread woken late) shows up in the figures instead of hiding the stall.

mod grpc;
mod http;
mod run;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use run::{Mode, RunConfig, RunResult};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Closed- and open-loop puts against etcd's v3 API (HTTP/JSON gateway or gRPC)"
)]
struct Args {
    /// etcd client endpoints (host:port), comma separated; connections are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
    )]
    endpoints: Vec<String>,
    /// Connections (one thread each, one request in flight each).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Bytes of each value (random bytes, base64 in the JSON).
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Distinct keys written (picked at random); bounds etcd's key index, not its history.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Measured time of each run (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before the measurement of each run, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Seed of the values and of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Open loop at this many puts/s (closed loop when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop at each of --sweep's connection counts, then an open loop at --fraction of
    /// the best puts/s with --open-connections connections.
    #[arg(long, conflicts_with = "rate")]
    find_peak: bool,
    /// Connection counts of --find-peak's closed-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "64,256,512,1000")]
    sweep: Vec<usize>,
    /// Fraction of the peak offered by --find-peak's open loop.
    #[arg(long, default_value_t = 0.8)]
    fraction: f64,
    /// Connections of --find-peak's open loop (default: the largest of --sweep).
    #[arg(long)]
    open_connections: Option<usize>,
    /// After the measured time, how long the open loop may take to finish the requests that
    /// were due in it; those still unsent then are counted with their wait so far.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// Read/write timeout of every request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Write the figures of every run as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Put through etcd's gRPC API (HTTP/2, protobuf), as etcdctl and etcd's Go client do,
    /// instead of the HTTP/JSON gateway. Give the leader's endpoint for a single client: a put
    /// sent to a follower is forwarded to the leader, one more hop.
    #[arg(long)]
    grpc: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (e.g. 10s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-load: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: &Args) -> Result<(), String> {
    if args.endpoints.is_empty() || args.endpoints.iter().any(|e| e.is_empty()) {
        return Err("--endpoints needs at least one host:port".into());
    }
    if args.connections == 0 || args.sweep.contains(&0) || args.open_connections == Some(0) {
        return Err("connection counts must be at least 1".into());
    }
    if args.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if !(args.fraction > 0.0 && args.fraction <= 1.0) {
        return Err("--fraction must be in (0, 1]".into());
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number of puts/s".into());
        }
    }
    let base = |connections, mode| RunConfig {
        endpoints: args.endpoints.clone(),
        connections,
        value_size: args.value_size,
        key_space: args.key_space,
        duration: args.duration,
        warmup: args.warmup,
        seed: args.seed,
        mode,
        drain: args.drain,
        timeout: args.timeout,
        grpc: args.grpc,
    };
    let mut runs = Vec::new();
    let mut summary = serde_json::Map::new();
    if args.find_peak {
        let mut best: Option<RunResult> = None;
        for &c in &args.sweep {
            let r = run_and_print(base(c, Mode::Closed))?;
            if best.as_ref().is_none_or(|b| r.puts_per_sec > b.puts_per_sec) {
                best = Some(r.clone());
            }
            runs.push(r);
        }
        let best = best.ok_or("--sweep is empty")?;
        let rate = best.puts_per_sec * args.fraction;
        let oc = args.open_connections.unwrap_or_else(|| *args.sweep.iter().max().unwrap());
        eprintln!(
            "etcd-load: peak {:.0} puts/s with {} connections; open loop at {:.0}% = {:.0} puts/s",
            best.puts_per_sec,
            best.connections,
            args.fraction * 100.0,
            rate
        );
        let open = run_and_print(base(oc, Mode::Open { rate }))?;
        println!(
            "SUMMARY etcd-load value_size={} peak_puts_per_sec={:.0} peak_connections={} \
             peak_p50_us={} peak_p99_us={} fraction={} offered_per_sec={:.0} \
             achieved_per_sec={:.0} open_connections={} p50_us={} p90_us={} p99_us={} \
             p999_us={} max_us={} unsent={} gen_cpu_us_per_put={:.1} etcd_cpu_pct={:.0} \
             other_cpu_pct={:.0} load1={:.2}",
            args.value_size,
            best.puts_per_sec,
            best.connections,
            best.p50_us,
            best.p99_us,
            args.fraction,
            rate,
            open.puts_per_sec,
            oc,
            open.p50_us,
            open.p90_us,
            open.p99_us,
            open.p999_us,
            open.max_us,
            open.unsent,
            open.gen_cpu_us_per_put,
            open.etcd_cpu_pct,
            open.other_cpu_pct,
            open.loadavg[0],
        );
        summary.insert("peak".into(), best.to_json());
        summary.insert("fraction".into(), json!(args.fraction));
        summary.insert("open".into(), open.to_json());
        runs.push(open);
    } else {
        let mode = match args.rate {
            Some(rate) => Mode::Open { rate },
            None => Mode::Closed,
        };
        let r = run_and_print(base(args.connections, mode))?;
        println!("{}", r.summary_line());
        runs.push(r);
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "tool": "etcd-load",
            "endpoints": args.endpoints,
            "value_size": args.value_size,
            "key_space": args.key_space,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "seed": args.seed,
            "summary": summary,
            "runs": runs.iter().map(RunResult::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn run_and_print(cfg: RunConfig) -> Result<RunResult, String> {
    let r = run::run(&cfg)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", r.report());
    let _ = out.flush();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
