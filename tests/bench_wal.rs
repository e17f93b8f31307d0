//! `corelog bench wal` end to end (the real binary, a short run on one log): its figures on
//! stdout, the JSON keys the issue names, and figures that agree with each other.

use std::process::Command;

#[test]
fn bench_wal_prints_and_writes_consistent_figures() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (data, json) = (tmp.path().join("data"), tmp.path().join("wal.json"));
    let o = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["bench", "wal", "--duration", "1s", "--warmup", "200ms", "--groups", "1"])
        .args(["--concurrency", "16", "--entry-size", "4096", "--segment-bytes", "4MiB"])
        .arg("--dir")
        .arg(&data)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run corelog bench wal");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "bench wal failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for line in ["appends/s", "MiB/s", "flushes/s", "entries per flush", "durable latency us p50"] {
        assert!(stdout.contains(line), "no '{line}' in\n{stdout}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["appends_per_sec", "mib_per_sec", "flushes_per_sec", "p50_us", "p99_us", "p999_us"] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} missing or zero: {j}");
    }
    assert!(j["max_us"].as_u64().unwrap() >= j["p999_us"].as_u64().unwrap());
    assert!(j["p999_us"].as_u64().unwrap() >= j["p50_us"].as_u64().unwrap());
    // Group commit: at 16 in flight a flush carries at least one append, and MiB/s is
    // appends/s times the entry size.
    let appends_per_sec = j["appends_per_sec"].as_f64().unwrap();
    assert!(j["entries_per_flush"].as_f64().unwrap() >= 1.0, "{j}");
    let mib = appends_per_sec * 4096.0 / (1 << 20) as f64;
    assert!((j["mib_per_sec"].as_f64().unwrap() - mib).abs() < 0.01 * mib + 0.01, "{j}");
    // Flushes in flight: at least one while appends wait (16 appenders, every append waits for
    // its flush), at most the setting; flush sizes are ordered and at least a block.
    let inflight = j["flushes_in_flight_mean"].as_f64().unwrap();
    assert!(inflight > 0.1 && inflight <= j["flushes_in_flight"].as_f64().unwrap(), "{j}");
    let (p10, p50, p90) = (
        j["flush_bytes_p10"].as_u64().unwrap(),
        j["flush_bytes_p50"].as_u64().unwrap(),
        j["flush_bytes_p90"].as_u64().unwrap(),
    );
    assert!(4096 <= p10 && p10 <= p50 && p50 <= p90, "{j}");
    // 4 MiB segments: a second of appends fills several, zero-filled or recycled.
    let segments =
        j["segments_zero_filled"].as_u64().unwrap() + j["segments_recycled"].as_u64().unwrap();
    assert!(segments > 0, "{j}");
    // On a block device, the disk wrote at least the payload (every append counted was
    // written and synced within the window, give or take the flushes at its edges).
    match corelog::bench::BlockDevice::of_dir(&data) {
        Some(_) => {
            let d = j["disk_write_mib_per_sec"].as_f64().expect("disk figure");
            assert!(d > 0.9 * j["mib_per_sec"].as_f64().unwrap(), "disk {d} MiB/s: {j}");
            let dev = &j["device"];
            // O_DIRECT writes of whole 4 KiB blocks, journal blocks: 4 KiB at least.
            assert!(dev["write_request_kib"].as_f64().expect("requests") >= 4.0, "{dev}");
            assert!(dev["write_request_ms"].is_number(), "their mean time: {dev}");
        }
        None => {
            assert!(j["disk_write_mib_per_sec"].is_null(), "{j}");
            assert!(j["device"].is_null(), "{j}");
        }
    }
}
