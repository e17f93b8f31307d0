//! `corelog bench` end to end (a short run of the real binary against a local 3-replica
//! cluster): the phases, the stdout figures and the SUMMARY line, and the files of the output
//! directory, with report.html rendered by headless Chromium (Debian's `chromium`; the test
//! skips the browser part when it is not installed, unless CORELOG_REQUIRE_CHROMIUM=1).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

fn bench(out: &Path, data: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_corelog"))
        // The nodes' settings as the bench chooses them (the 2 MiB flushes of a shared disk).
        .env_remove("CORELOG_FLUSH_BYTES_MAX")
        .args(["bench", "--quiet", "--duration", "1s", "--connections", "2"])
        .arg("--out")
        .arg(out)
        .arg("--dir")
        .arg(data)
        .args(extra)
        .output()
        .expect("run corelog bench");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "corelog bench failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn summary_field(stdout: &str, key: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with("SUMMARY cluster ")).expect("SUMMARY line");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
        .parse()
        .unwrap()
}

/// The number that follows `marker` in `line`.
fn number_after(line: &str, marker: &str) -> f64 {
    line.split(marker)
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in {line}"))
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        Command::new(b).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
    })
}

#[test]
fn default_phases_write_every_report_and_the_page_renders() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (out, data) = (tmp.path().join("out"), tmp.path().join("data"));
    let trace = tmp.path().join("trace.json");
    let stdout = bench(
        &out,
        &data,
        &["--warmup", "500ms", "--concurrency", "32,64", "--trace", trace.to_str().unwrap()],
    );
    // The trace: Chrome trace-event JSON with spans of the sampled appends on the leader and
    // on the followers (one process per node).
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace written")).unwrap();
    let events = t["traceEvents"].as_array().expect("traceEvents");
    assert!(events.iter().any(|e| e["ph"] == "X"), "no spans in the trace");
    let pids: std::collections::HashSet<String> =
        events.iter().filter(|e| e["ph"] == "X").map(|e| e["pid"].to_string()).collect();
    assert!(pids.len() >= 2, "spans from {} node(s) only", pids.len());
    // stdout: both phases, every percentile, errors, the generator's share, the stages.
    for needle in [
        "saturation (closed loop",
        "open loop 80% (open loop",
        "offered ",
        "p99.99 ",
        "errors     none",
        "generator  ",
        "where the latency goes",
        "data dir  ",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing in\n{stdout}");
    }
    let sat = summary_field(&stdout, "appends_per_sec");
    let offered = summary_field(&stdout, "offered_per_sec");
    assert!(sat > 0.0);
    assert!((offered - 0.8 * sat).abs() <= 1.0, "offered {offered} is 80% of {sat}");
    assert_eq!(summary_field(&stdout, "errors"), 0.0);
    assert!(summary_field(&stdout, "p99_us") >= summary_field(&stdout, "p50_us"));

    // summary.json
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for k in ["appends_per_sec", "mib_per_sec", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(j[k].is_number(), "summary.json lacks {k}: {j}");
    }
    // Where the open loop's pacers spent their time (what tells the generator's own lag from
    // the cluster's backpressure): shares of it, for the open loop only.
    for p in j["phases"].as_array().unwrap() {
        let keys = ["pacer_sending_share", "pacer_window_full_share", "pacer_late_wake_share"];
        if p["offered_per_sec"].is_null() {
            assert!(keys.iter().all(|k| p[k].is_null()), "{p}");
            continue;
        }
        let shares: Vec<f64> = keys.iter().map(|k| p[k].as_f64().expect(k)).collect();
        assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{p}");
        // The parts are disjoint stretches of the pacers' time, which also sleep as planned.
        assert!(shares.iter().sum::<f64>() < 1.0, "{p}");
        assert!(shares[0] > 0.0, "sending takes some time: {p}");
    }
    assert!(stdout.contains("  pacers     "), "{stdout}");
    // The sweep: a short closed loop at 32 in flight, then at 64; the saturation phase runs at
    // 64 only if it gained at least 5% over 32.
    let sweep = j["sweep"].as_array().expect("sweep");
    assert_eq!(sweep.len(), 2, "{sweep:?}");
    let rate = |i: usize| sweep[i]["appends_per_sec"].as_f64().unwrap();
    assert_eq!(
        (sweep[0]["concurrency"].as_u64(), sweep[1]["concurrency"].as_u64()),
        (Some(32), Some(64))
    );
    assert!(rate(0) > 0.0 && rate(1) > 0.0, "{sweep:?}");
    let chosen = if rate(1) >= rate(0) * 1.05 { 64 } else { 32 };
    assert_eq!(j["settings"]["concurrency"], chosen, "{sweep:?}");
    assert_eq!(summary_field(&stdout, "concurrency"), chosen as f64);
    assert!(
        stdout.contains(&format!("; saturation at {chosen} in flight")),
        "no sweep line:\n{stdout}"
    );
    // Before the sweep, load at its largest level until the fresh directory's logs recycle
    // trimmed segments instead of zero-filling new ones (or 10 s at most): reported, not
    // counted.
    let settle = &j["settle"];
    let secs = settle["seconds"].as_f64().expect("settle.seconds");
    assert!((1.0..10.5).contains(&secs), "{settle}");
    assert_eq!(settle["concurrency"], 64, "{settle}");
    assert!(settle["appends_per_sec"].as_f64().unwrap() > 0.0, "{settle}");
    let end = settle["end"].as_str().expect("settle.end");
    assert!(["recycling", "idle", "cap"].contains(&end), "{settle}");
    let line = stdout.lines().find(|l| l.starts_with("settle    ")).expect("a settle line");
    assert!(line.contains("s of load at 64 in flight ("), "{line}");
    assert!(line.contains(") before measuring, not counted: "), "{line}");
    assert_eq!(j["settings"]["replicas"], 3);
    assert_eq!(j["phases"].as_array().unwrap().len(), 2);
    assert_eq!(j["appends_per_sec"].as_f64().unwrap().round(), sat);
    // The local cluster is trimmed behind its commit index once a second (each trim up to
    // what the previous round saw committed): at least one trim in 2.5 s of load, none failed.
    assert_eq!(j["settings"]["checkpoint_every_s"], 1.0);
    assert!(j["checkpoints"]["trims"].as_u64().unwrap() >= 1, "{}", j["checkpoints"]);
    assert_eq!(j["checkpoints"]["errors"], 0, "{}", j["checkpoints"]);
    assert!(stdout.contains("trim      every 1s behind the commit index"), "{stdout}");
    // What the data directory's disk wrote: at least the payload of all three replicas
    // (every acknowledged append was written and synced within the window, give or take the
    // flushes in flight at its edges), when the directory is on a block device.
    for p in j["phases"].as_array().unwrap() {
        match corelog::bench::BlockDevice::of_dir(&data) {
            Some(_) => {
                let x = p["disk_write_per_replicated_byte"].as_f64().expect("disk figures");
                assert!(x > 0.9, "the disk wrote less than the replicas appended: {x} ({p})");
                assert!(p["disk_write_mib_per_sec"].as_f64().unwrap() > 0.0);
                // The device's own side: its write requests (at least a sector each) and the
                // mean time it took for them, beside the flushes' latency.
                let d = &p["device"];
                // O_DIRECT writes of whole 4 KiB blocks, journal blocks: 4 KiB at least.
                assert!(d["write_request_kib"].as_f64().expect("requests") >= 4.0, "{d}");
                assert!(d["write_request_ms"].is_number(), "their mean time: {d}");
                assert!(stdout.contains("  device     writes of "), "{stdout}");
            }
            None => {
                assert!(p["disk_write_mib_per_sec"].is_null(), "{p}");
                assert!(p["device"].is_null(), "{p}");
            }
        }
    }
    assert!(stdout.contains("  disk       wrote "), "{stdout}");
    // What each replica's logs wrote: three figures per phase, each at least most of the
    // payload (every replica writes every append, give or take the flushes in flight at the
    // window's edges and a follower that is behind), and the frames read back from disk.
    for p in j["phases"].as_array().unwrap() {
        // A figure per replica, in node order.
        let per_replica = |key: &str| -> Vec<f64> {
            let v = p[key].as_array().unwrap_or_else(|| panic!("no {key}: {p}"));
            let v: Vec<f64> = v.iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(v.len(), 3, "{key}: {p}");
            v
        };
        let each = per_replica("replica_write_mib_per_sec");
        let payload = p["mib_per_sec"].as_f64().unwrap();
        let total: f64 = each.iter().sum();
        assert!(total >= 2.0 * payload, "replicas wrote {each:?} MiB/s of {payload} MiB/s: {p}");
        assert!(each.iter().all(|&x| x > 0.0), "{p}");
        assert!(p["frames_read_back"].is_u64(), "{p}");
        let waits = per_replica("replica_log_wait_share");
        assert!(waits.iter().all(|&x| (0.0..=1.05).contains(&x)), "{p}");
        // Every replica wrote, so each had a flush in flight some of the time; at most 4.
        let flights = per_replica("replica_flushes_in_flight");
        assert!(flights.iter().all(|&x| x > 0.0 && x <= 4.05), "{p}");
    }
    assert!(stdout.contains("  replicas   logs wrote "), "{stdout}");
    assert!(stdout.contains("  log room   the replicas waited for room"), "{stdout}");

    // latency.hgrm: the percentile distribution format.
    let hgrm = std::fs::read_to_string(out.join("latency.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(hgrm.contains("#[Mean    =") && hgrm.contains("Total count    ="), "{hgrm}");
    let data_lines: Vec<&str> =
        hgrm.lines().skip(2).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(data_lines.len() > 10, "{hgrm}");
    let pct: Vec<f64> =
        data_lines.iter().map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap()).collect();
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "percentiles ascend");
    assert_eq!(*pct.last().unwrap(), 1.0);

    // timeseries.csv: one row per second of each phase.
    let csv = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("phase,second,appends,"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().filter(|r| r[0] == "saturation").count(), 1, "{csv}");
    assert_eq!(rows.iter().filter(|r| r[0].starts_with("open loop")).count(), 1, "{csv}");
    // Each second names its slowest flush (a local cluster): some flush took a positive time.
    assert!(csv.lines().next().unwrap().ends_with(",errors,flush_max_us"), "{csv}");
    for r in &rows {
        let us: u64 = r[9].parse().unwrap_or_else(|_| panic!("flush_max_us in {r:?}"));
        assert!(us > 0, "{csv}");
    }
    assert_eq!(stdout.matches("  flushes    slowest ").count(), 2, "{stdout}");

    // report.html: the charts, as the browser sees them.
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("in flight -&gt; appends/s"), "no sweep row in report.html");
    for id in ["latency-percentiles", "throughput-timeseries", "p99-timeseries", "stage-shares"] {
        assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id} missing");
    }
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CORELOG_REQUIRE_CHROMIUM").is_none(),
            "CORELOG_REQUIRE_CHROMIUM is set but no chromium is installed"
        );
        eprintln!("skipping the browser check: chromium is not installed");
        return;
    };
    let profile = tmp.path().join("chromium-profile");
    let headless = |extra: &[&str]| {
        Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium")
    };
    let dom = headless(&["--dump-dom"]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["latency-percentiles", "throughput-timeseries", "p99-timeseries", "stage-shares"] {
        assert!(dom.contains(&format!("<svg id=\"{id}\"")), "the browser's DOM lacks svg#{id}");
    }
    // Two latency lines (saturation, open loop), a line per phase in each time series.
    assert!(dom.matches("class=\"series\"").count() >= 6, "{dom}");
    // The generator's stage, then the leaders' own stages.
    assert_eq!(
        dom.matches("<rect class=\"stage\"").count(),
        1 + corelog::node::stages::STAGES.len()
    );
    let shot = tmp.path().join("report.png");
    let s = headless(&[&format!("--screenshot={}", shot.display()), "--window-size=900,2400"]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a page with charts");
}

#[test]
fn a_fixed_rate_skips_saturation_and_sizes_follow_the_distribution() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (out, data) = (tmp.path().join("out"), tmp.path().join("data"));
    let stdout = bench(
        &out,
        &data,
        &["--warmup", "1s", "--rate", "2000", "--entry-size", "uniform:100..3000", "--seed", "7"],
    );
    assert!(!stdout.contains("saturation (closed loop"), "{stdout}");
    assert!(stdout.contains("open loop (open loop, 1s): offered 2000/s"), "{stdout}");
    // 2,000/s is far below what the cluster sustains: no warning that it fell behind.
    assert!(!stdout.contains("the open loop fell behind"), "{stdout}");
    assert_eq!(summary_field(&stdout, "errors"), 0.0);
    assert_eq!(summary_field(&stdout, "entry_size"), 1550.0, "the mean of 100..=3000");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(j["settings"]["seed"], 7);
    assert_eq!(j["phases"].as_array().unwrap().len(), 1);
    // MiB/s and appends/s agree with a mean entry of about 1550 bytes.
    let (n, mib) = (
        j["phases"][0]["appends"].as_f64().unwrap(),
        j["phases"][0]["mib_per_sec"].as_f64().unwrap(),
    );
    // The open loop warmed up for 1 s at its rate: only the measured second's appends count
    // (with the warm-up's, about 4,000).
    assert!((1500.0..2500.0).contains(&n), "{n} appends in the measured second");
    let csv = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| l.starts_with("open loop,")).count(), 1, "{csv}");
    let mean = mib * (1 << 20) as f64 / j["phases"][0]["appends_per_sec"].as_f64().unwrap();
    assert!((1200.0..1900.0).contains(&mean), "mean entry {mean} bytes");
}

/// `--compare` measures the disk and loopback first (a round trip, and the bandwidth of one
/// stream per replica), then the disk under the replicas' own pattern of the saturation phase
/// (one writer per replica at their mean flush size), and states the cluster's bandwidth as a
/// fraction of each.
#[test]
fn compare_measures_the_disk_under_the_replicas_own_pattern() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (out, data) = (tmp.path().join("out"), tmp.path().join("data"));
    let stdout = bench(&out, &data, &["--warmup", "0s", "--concurrency", "64", "--compare"]);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // No warm-up: no settling load either.
    assert!(j["settle"].is_null(), "{}", j["settle"]);
    assert!(!stdout.contains("settle    "), "{stdout}");
    let limits = &j["limits"];
    // The disk at 4 KiB, 256 KiB, 1 MiB and at the local nodes' largest flush (2 MiB: the
    // replicas share one disk), whose best is the bandwidth the cluster's is a share of.
    let sizes: Vec<u64> = limits["disk"]
        .as_array()
        .expect("disk points")
        .iter()
        .map(|d| d["write_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4096, 256 << 10, 1 << 20, 2 << 20], "{limits}");
    let same = &limits["same_pattern"];
    assert_eq!(same["writers"], 3, "{limits}");
    let size = same["write_bytes"].as_u64().expect("write size");
    assert!((4096..=2 << 20).contains(&size) && size.is_multiple_of(4096), "{same}");
    assert!(same["mib_per_sec"].as_f64().unwrap() > 0.0, "{same}");
    assert!(stdout.contains(&format!("write + fdatasync of {size:>7} B x 3 writers")), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("of what this disk does under the replicas' pattern"))
        .unwrap_or_else(|| panic!("no same-pattern line:\n{stdout}"));
    assert!(line.contains(&format!("3 writers x {} KiB", size >> 10)), "{line}");
    // Written by the replicas: their appends' MiB/s three times.
    let mib = summary_field(&stdout, "mib_per_sec");
    let wrote = number_after(line, "appends x 3 replicas = ");
    assert!((wrote - mib * 3.0).abs() < 0.5, "{line}\n{stdout}");
    // Loopback TCP in the replicas' pattern: one stream per replica, and the appends' bytes
    // three times over as a share of it.
    let net = &limits["loopback_streams"];
    assert_eq!(net["streams"], 3, "{limits}");
    let net_mib = net["mib_per_sec"].as_f64().expect("loopback MiB/s");
    assert!(net_mib > 0.0 && net["bytes"].as_u64().unwrap() > 0, "{net}");
    let line = stdout
        .lines()
        .find(|l| l.contains("cross loopback 3 times"))
        .unwrap_or_else(|| panic!("no loopback line:\n{stdout}"));
    let crossed = number_after(line, "follower) = ");
    assert!((crossed - mib * 3.0).abs() < 0.5, "{line}");
    assert!(line.contains(&format!("({net_mib:.1} MiB/s, no disk")), "{line}");
}

/// Against a cluster that is already running (`--addresses`), the bench takes the stage
/// breakdown and the trace from the nodes' metrics endpoints (`--metrics`): the same leader
/// stages as for its own local cluster, and sampled appends with their stages.
#[test]
fn an_existing_cluster_gives_its_stages_through_its_metrics_endpoints() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfgs = common::local_configs(&tmp.path().join("cluster"), 3, 4 << 20, |c| {
        c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.trace_sample_every = 16;
    });
    let clients: Vec<String> = cfgs[0].members.iter().map(|m| m.client_addr.to_string()).collect();
    let nodes: Vec<_> =
        cfgs.iter().cloned().map(|c| corelog::node::start(c).expect("start")).collect();
    let metrics: Vec<String> =
        nodes.iter().map(|n| n.metrics_addr().expect("metrics endpoint").to_string()).collect();
    let (out, trace) = (tmp.path().join("out"), tmp.path().join("trace.json"));
    let o = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["bench", "--quiet", "--duration", "1s", "--warmup", "0s", "--rate", "1000"])
        .args(["--connections", "2", "--addresses", &clients.join(",")])
        .args(["--metrics", &metrics.join(",")])
        .arg("--out")
        .arg(&out)
        .arg("--trace")
        .arg(&trace)
        .output()
        .expect("run corelog bench");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(summary_field(&stdout, "errors"), 0.0);
    // Someone else's cluster is never trimmed unless asked, and the user is told at the
    // start that its logs keep everything.
    assert!(stdout.contains("trim      never"), "{stdout}");
    assert!(stderr.contains("logs are not trimmed during this run"), "{stderr}");
    // Its replicas' logs are not this process's: no per-replica figures, rather than zeros.
    assert!(!stdout.contains("  replicas   "), "{stdout}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(j["phases"][0]["replica_write_mib_per_sec"].is_null(), "{j}");
    for (stage, _) in corelog::node::stages::STAGES {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("leader: {stage} ")))
            .unwrap_or_else(|| panic!("no row for stage {stage}:\n{stdout}"));
        assert!(!row.contains(" 0 µs "), "{row}");
    }
    assert!(!stdout.contains("cluster: sent → acknowledged"), "{stdout}");
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace written")).unwrap();
    let events = t["traceEvents"].as_array().or_else(|| t.as_array()).expect("trace events");
    assert!(events.len() > 10, "{} trace events", events.len());
    // Without --metrics, the breakdown is the cluster's total and --trace is refused.
    let o = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["bench", "--quiet", "--addresses", &clients.join(",")])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--metrics"));
    for n in nodes {
        n.shutdown().unwrap();
    }
}

/// The local cluster's nodes take `CORELOG_*` settings from the environment, as `corelog
/// serve` does: the header lists them and they take effect (stage timing off: no breakdown);
/// a bad value is refused with the variable's name.
#[test]
fn the_local_cluster_takes_node_settings_from_the_environment() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let run = |var: &str, value: &str, sub: &str| {
        Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["bench", "--quiet", "--duration", "1s", "--warmup", "0s", "--rate", "500"])
            .arg("--out")
            .arg(tmp.path().join(format!("out-{sub}")))
            .arg("--dir")
            .arg(tmp.path().join(format!("data-{sub}")))
            .env(var, value)
            .output()
            .expect("run corelog bench")
    };
    let o = run("CORELOG_STAGE_TIMING", "false", "off");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout
            .contains("note: the nodes' settings from the environment: CORELOG_STAGE_TIMING=false"),
        "{stdout}"
    );
    assert!(stdout.contains("SUMMARY cluster "), "{stdout}");
    // The nodes timed nothing: the breakdown has the cluster as one stage, not zeros.
    assert!(stdout.contains("cluster: sent → acknowledged"), "stage timing still on:\n{stdout}");
    assert!(!stdout.contains("leader: queue"), "{stdout}");
    let o = run("CORELOG_TICK_MS", "soon", "bad");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a bad setting was accepted");
    assert!(stderr.contains("CORELOG_TICK_MS"), "{stderr}");
}

#[test]
fn a_rate_beyond_the_cluster_is_reported_as_fallen_behind() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (out, data) = (tmp.path().join("out"), tmp.path().join("data"));
    // Two million appends a second, at most 4 x 32 in flight per connection: far beyond
    // what three replicas on this machine sustain, so the window stays full.
    let stdout =
        bench(&out, &data, &["--warmup", "200ms", "--rate", "2000000", "--concurrency", "64"]);
    assert!(stdout.contains("WARNING: the open loop fell behind"), "{stdout}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let p = &j["phases"][0];
    assert!(p["appends_per_sec"].as_f64().unwrap() < 0.95 * 2e6, "{p}");
    let full = p["pacer_window_full_share"].as_f64().unwrap();
    assert!(full > 0.25, "the pacers waited for a full window {full} of their time: {p}");
    // A second after the phase, the pacers gave up the rest of their backlog (a rate this far
    // beyond the cluster's would otherwise run on for many seconds), counted as errors.
    let unsent = p["errors"][corelog::bench::load::UNSENT].as_u64().unwrap_or(0);
    assert!(unsent > 100_000, "appends given up unsent: {unsent} ({p})");
    assert!(stdout.contains("unsent (the generator gave up its backlog)"), "{stdout}");
}
