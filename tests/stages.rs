//! Where the latency goes: a 3-node cluster (one process, real TCP, real files) times every
//! stage of its appends, and its sampled appends make a Chrome trace with every stage on
//! every node.
//!
//! `stage_timing_overhead` (ignored by default) measures what the timing costs: the same
//! closed-loop load against clusters with `stage_timing` on and off, alternated in one run.
//! `CORELOG_OVERHEAD_SECS` (default 5) per round, `CORELOG_OVERHEAD_ROUNDS` (default 3) pairs,
//! `CORELOG_OVERHEAD_CLIENTS` (default 16):
//! `cargo test --release --test stages -- --ignored --nocapture`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig};
use corelog::node::stages::{self, STAGE_COUNT, STAGES};
use corelog::node::trace::{self, Role};
use corelog::node::{self, NodeHandle, metrics};

/// Closed loop: `clients` threads appending `size`-byte entries for `run` (or `count` appends
/// each when given). Returns the client-side latencies (µs) of all appends.
fn load(
    addrs: &[SocketAddr],
    clients: usize,
    size: usize,
    run: Duration,
    count: Option<usize>,
) -> hdrhistogram::Histogram<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addrs, stop) = (addrs.to_vec(), stop.clone());
            std::thread::spawn(move || {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                let mut c = Client::new(ClientConfig::new(addrs)).unwrap();
                let data = vec![7u8; size];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| n < c) {
                    let t = Instant::now();
                    c.append(0, &data).expect("append");
                    h.record(t.elapsed().as_micros() as u64).unwrap();
                    n += 1;
                }
                h
            })
        })
        .collect();
    if count.is_none() {
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in threads {
        all.add(t.join().unwrap()).unwrap();
    }
    all
}

fn leader_of(nodes: &[NodeHandle]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|i| {
                nodes[*i].snapshot(false).unwrap().cores[0].groups.iter().any(|g| g.is_leader)
            })
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_stage_is_timed_and_traced_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = common::local_configs(dir.path(), 3, 8 << 20, |c| {
        c.trace_sample_every = 8;
        c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let nodes: Vec<NodeHandle> = cfgs.into_iter().map(|c| node::start(c).unwrap()).collect();
    Client::new(ClientConfig::new(addrs.clone())).unwrap().append(0, b"hello").unwrap();
    let leader = leader_of(&nodes);
    let (clients, each) = (4, 60);
    let client_side = load(&addrs, clients, 512, Duration::ZERO, Some(each));
    let appends = (clients * each) as u64;

    // The leader timed every append at every stage; the stages sum to the total.
    let snap = nodes[leader].snapshot(false).unwrap().stages();
    assert_eq!(snap.incomplete, 0, "every point of every append is known: {:?}", snap.missing);
    let named = nodes[leader].stages().unwrap();
    assert_eq!(named.len(), STAGE_COUNT);
    for ((name, h), (expected, _)) in named.iter().zip(STAGES) {
        assert_eq!(name, expected);
        assert!(h.len() > appends, "stage {name}: {} of {appends} appends", h.len());
    }
    let stage_sum: f64 = named.iter().map(|(_, h)| h.mean()).sum();
    let total = snap.total.mean();
    assert!((stage_sum - total).abs() <= total * 0.03, "stages {stage_sum} vs total {total}");
    // The leader's flush is a real fdatasync; the total sits inside what the clients saw.
    let mean = |n: &str| named.iter().find(|(s, _)| s == n).unwrap().1.mean();
    assert!(mean("leader_flush") > 1_000.0, "a flush under 1 µs is no flush");
    assert!(total / 1_000.0 <= client_side.mean() * 1.05, "node total within the client's");
    let shares = stages::shares(&named);
    assert!((shares.iter().map(|s| s.1).sum::<f64>() - 1.0).abs() < 1e-9);
    eprintln!(
        "{appends} appends, client mean {:.0} µs, node total mean {:.0} µs: {}",
        client_side.mean(),
        total / 1_000.0,
        stages::summary(&named)
    );
    // Followers' records exist and report sensible local times (the ack came after the
    // append arrived).
    let samples: Vec<trace::TraceSample> =
        nodes.iter().flat_map(|n| n.snapshot(true).unwrap().trace_samples()).collect();
    let leader_keys: HashSet<u64> =
        samples.iter().filter(|s| s.role == Role::Leader).map(|s| s.key).collect();
    assert!(leader_keys.len() as u64 >= appends / 8 / 2, "{} sampled", leader_keys.len());
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mine: Vec<_> =
            samples.iter().filter(|s| s.node == i as u64 + 1 && s.role == Role::Follower).collect();
        assert!(
            mine.iter().filter(|s| leader_keys.contains(&s.key)).count() >= leader_keys.len() / 2,
            "follower {i} sampled the leader's appends"
        );
        for s in &mine {
            let names: Vec<&str> = s.points.iter().map(|p| p.0.as_str()).collect();
            assert_eq!(names, ["received", "write_submitted", "durable", "ack_sent"]);
            assert!(s.points.windows(2).all(|w| w[0].1 <= w[1].1), "{s:?}");
        }
        // The same samples over the network.
        let remote = metrics::fetch_trace(n.metrics_addr().unwrap()).unwrap();
        assert!(remote.len() >= mine.len());
    }
    for s in samples.iter().filter(|s| s.role == Role::Leader) {
        assert_eq!(s.points.len(), STAGE_COUNT + 1);
        assert!(s.points.windows(2).all(|w| w[0].1 <= w[1].1), "{s:?}");
    }

    // The Chrome trace: valid JSON, an event for every stage, on the leader and the followers,
    // and arrows from the leader's send to each follower's receipt.
    let mut out = Vec::new();
    trace::write_chrome_trace(&mut out, &samples).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let spans: HashSet<(&str, u64)> = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| {
            assert!(e["ts"].as_f64().unwrap() > 1e15, "wall-clock microseconds");
            assert!(e["dur"].as_f64().unwrap() >= 0.0);
            (e["name"].as_str().unwrap(), e["pid"].as_u64().unwrap())
        })
        .collect();
    let leader_pid = leader as u64 + 1;
    for (stage, _) in STAGES {
        assert!(spans.contains(&(stage, leader_pid)), "no {stage} span on the leader");
    }
    for pid in (1..=3).filter(|p| *p != leader_pid) {
        for stage in ["follower_write_wait", "follower_local_flush", "follower_ack_send"] {
            assert!(spans.contains(&(stage, pid)), "no {stage} span on node {pid}");
        }
    }
    let starts = events.iter().filter(|e| e["ph"] == "s").count();
    let ends: HashSet<u64> =
        events.iter().filter(|e| e["ph"] == "f").map(|e| e["pid"].as_u64().unwrap()).collect();
    assert!(starts > 0 && ends.len() == 2, "flows to both followers");
    if let Ok(path) = std::env::var("CORELOG_TRACE_OUT") {
        std::fs::write(&path, &out).unwrap();
        eprintln!("trace written to {path}");
    }
    for n in nodes {
        n.shutdown().unwrap();
    }
}

/// One round of the overhead measurement: (appends/s, p50 µs, p99 µs, process CPU µs per
/// append: three nodes and the clients).
fn overhead_round(timing: bool, secs: u64, clients: usize) -> (f64, u64, u64, f64) {
    let dir = tempfile::Builder::new().prefix("corelog-overhead-").tempdir_in("/var/tmp").unwrap();
    let cfgs = common::local_configs(dir.path(), 3, 8 << 20, |c| {
        c.stage_timing = timing;
        c.segment_bytes = 64 << 20;
    });
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let nodes: Vec<NodeHandle> = cfgs.into_iter().map(|c| node::start(c).unwrap()).collect();
    Client::new(ClientConfig::new(addrs.clone())).unwrap().append(0, b"hello").unwrap();
    let leader = leader_of(&nodes);
    load(&addrs, clients, 1024, Duration::from_secs(1), None); // warm-up
    let cpu0 = corelog::bench::process_cpu_time();
    let h = load(&addrs, clients, 1024, Duration::from_secs(secs), None);
    let cpu = corelog::bench::process_cpu_time() - cpu0;
    let timed: u64 = nodes[leader].stages().unwrap().iter().map(|(_, h)| h.len()).sum();
    if timing {
        assert!(timed > 0, "timing on records stages");
    } else {
        assert_eq!(timed, 0, "timing off records nothing");
    }
    for n in nodes {
        n.shutdown().unwrap();
    }
    (
        h.len() as f64 / secs as f64,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        cpu.as_secs_f64() * 1e6 / h.len().max(1) as f64,
    )
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU cost of the timing work of one append, measured in isolation (thread CPU time, so a
/// busy machine does not inflate it): the clock reads of one append and its share of its
/// batch's (about 8), and one record of every stage.
fn recording_cost_ns() -> f64 {
    let mut r = stages::StageRecorder::default();
    let n = 200_000u32;
    let t0 = thread_cpu();
    for i in 0..n {
        let base = Instant::now();
        let mut points = [Some(base); stages::POINT_COUNT];
        for (k, p) in points.iter_mut().enumerate().skip(1).take(7) {
            *p = Some(Instant::now() + Duration::from_nanos(u64::from(i % 97) * k as u64));
        }
        points[stages::POINT_COUNT - 1] = Some(base + Duration::from_micros(u64::from(i % 5000)));
        std::hint::black_box(r.record(&points, &[true; stages::POINT_COUNT]));
    }
    (thread_cpu() - t0).as_nanos() as f64 / f64::from(n)
}

#[test]
#[ignore = "a benchmark: prints figures; run with --ignored --nocapture"]
fn stage_timing_overhead() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let secs = env("CORELOG_OVERHEAD_SECS", 5);
    let rounds = env("CORELOG_OVERHEAD_ROUNDS", 3);
    let clients = env("CORELOG_OVERHEAD_CLIENTS", 16) as usize;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so drift of the machine hits both alike.
        let order = if r % 2 == 0 { [true, false] } else { [false, true] };
        for timing in order {
            let f = overhead_round(timing, secs, clients);
            eprintln!(
                "round {r} timing {:>3}: {:>8.0} appends/s  p50 {:>6} µs  p99 {:>6} µs  \
                 CPU {:>5.1} µs/append",
                if timing { "on" } else { "off" },
                f.0,
                f.1,
                f.2,
                f.3
            );
            if timing { on.push(f) } else { off.push(f) }
        }
    }
    type Round = (f64, u64, u64, f64);
    let avg = |v: &[Round], f: fn(&Round) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    eprintln!(
        "timing work of one append in isolation (8 clock reads + 8 stage records): {:.0} ns CPU",
        recording_cost_ns()
    );
    if rounds == 0 {
        return;
    }
    eprintln!(
        "stage timing on/off, {clients} clients, 1 KiB entries, {rounds}x{secs}s each: \
         throughput ratio {:.3}, p50 ratio {:.3}, p99 ratio {:.3}, CPU per append ratio {:.3}",
        avg(&on, |f| f.0) / avg(&off, |f| f.0),
        avg(&on, |f| f.1 as f64) / avg(&off, |f| f.1 as f64),
        avg(&on, |f| f.2 as f64) / avg(&off, |f| f.2 as f64),
        avg(&on, |f| f.3) / avg(&off, |f| f.3),
    );
}
