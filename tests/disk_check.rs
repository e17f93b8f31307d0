//! `corelog disk-check` and its profile: the profile's round trip, a short run on this host,
//! and `corelog serve` applying a profile to its logs.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corelog::log::SyncMethod;
use corelog::node::{NodeConfig, PeerConfig};
use corelog::tools::disk_check::*;

fn profile(sync: SyncMethod, flush: usize, n: usize) -> DiskProfile {
    DiskProfile {
        log: ProfileLog { sync, flush_bytes_max: flush, flushes_in_flight_max: n },
        measured: Measured {
            device: "ext4 on /dev/vda".into(),
            dsync_p99_us: 812.5,
            ..Default::default()
        },
    }
}

#[test]
fn profile_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(SyncMethod::Dsync, 256 << 10, 4);
    let text = p.to_toml();
    assert!(text.starts_with("# corelog disk profile"), "{text}");
    assert!(text.contains("sync = \"dsync\""), "{text}");
    let path = dir.path().join("disk.toml");
    p.save(&path).unwrap();
    assert_eq!(DiskProfile::load(&path).unwrap(), p);

    // Bad profiles are refused with the file's name and the reason.
    for (bad, why) in [
        (
            "[log]\nsync = \"fdatasync\"\nflush_bytes_max = 1000\nflushes_in_flight_max = 2\n",
            "multiple of 4096",
        ),
        (
            "[log]\nsync = \"fdatasync\"\nflush_bytes_max = 65536\nflushes_in_flight_max = 0\n",
            "1..=64",
        ),
        (
            "[log]\nsync = \"sometimes\"\nflush_bytes_max = 65536\nflushes_in_flight_max = 2\n",
            "unknown variant",
        ),
        (
            "[log]\nsync = \"dsync\"\nflush_bytes_max = 65536\nflushes_in_flight_max = 2\nturbo = true\n",
            "unknown field",
        ),
    ] {
        std::fs::write(&path, bad).unwrap();
        let e = DiskProfile::load(&path).unwrap_err();
        assert!(e.contains("disk.toml") && e.contains(why), "{e}");
    }
    let e = DiskProfile::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn choices_follow_the_figures() {
    let lat = |p50: f64, p99: f64| Latency { p50_us: p50, p99_us: p99, ..Default::default() };
    // FUA-like device: a DSYNC write is much cheaper than write + fdatasync.
    assert_eq!(choose_sync(&lat(500.0, 2000.0), &lat(60.0, 120.0)), SyncMethod::Dsync);
    // Emulated FUA: about the same, so RWF_DSYNC only where one flush goes out alone.
    assert_eq!(choose_sync(&lat(500.0, 2000.0), &lat(480.0, 2100.0)), SyncMethod::Adaptive);
    // A dearer DSYNC write: fdatasync for every flush.
    assert_eq!(choose_sync(&lat(500.0, 2000.0), &lat(520.0, 2000.0)), SyncMethod::Fdatasync);
    // A cheaper median but a worse tail is not a win.
    assert_eq!(choose_sync(&lat(500.0, 2000.0), &lat(300.0, 9000.0)), SyncMethod::Fdatasync);

    let bw =
        |small: f64, big: f64| vec![(4096, 32, 200.0), (256 << 10, 8, small), (1 << 20, 8, big)];
    assert_eq!(choose_flush_bytes(&bw(950.0, 1000.0)), 256 << 10);
    assert_eq!(choose_flush_bytes(&bw(500.0, 1000.0)), 1 << 20);

    assert_eq!(choose_in_flight(&[(1, 100.0), (2, 180.0), (4, 195.0), (8, 200.0)]), 2);
    assert_eq!(choose_in_flight(&[(1, 198.0), (2, 199.0), (4, 200.0), (8, 200.0)]), 1);
    assert_eq!(choose_in_flight(&[]), 2);

    // The verdicts state their thresholds; etcd's 10 ms p99 is the FAIL line.
    let mut r = Report {
        bandwidth: vec![(1 << 20, 8, 150.0)],
        write_fdatasync: lat(400.0, 1500.0),
        dsync: lat(400.0, 4000.0),
        fdatasync: lat(100.0, 12_000.0),
        ..Default::default()
    };
    let v = verdicts(&r);
    assert_eq!(
        v.iter().map(|x| x.3).collect::<Vec<_>>(),
        [
            corelog::tools::doctor::Verdict::Pass,
            corelog::tools::doctor::Verdict::Warn,
            corelog::tools::doctor::Verdict::Fail,
            corelog::tools::doctor::Verdict::Warn,
        ]
    );
    assert!(v[0].1.contains("10 ms"), "{}", v[0].1);
    r.flushes = vec![(1, 50.0), (2, 90.0)];
    let p = profile_of(&r, Path::new("/data"), "ext4 on /dev/vda");
    assert_eq!(
        p.log,
        ProfileLog {
            sync: SyncMethod::Fdatasync,
            flush_bytes_max: 1 << 20,
            flushes_in_flight_max: 2
        }
    );
    assert_eq!(p.measured.flush_mb_s, 90.0);
    p.validate().unwrap();
}

/// A short run on this host: every table is printed, the scratch file is gone afterwards, and
/// the profile it writes loads. The verdicts themselves depend on the host and its load.
#[test]
fn quick_run_writes_a_loadable_profile() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prof = dir.path().join("profile.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["disk-check", "--quick", "--duration", "150ms", "--file-bytes", "8MiB", "--linked"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--profile")
        .arg(&prof)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if text.is_empty() && err.contains("O_DIRECT is not in effect") {
        eprintln!("skipped: {err}");
        return;
    }
    for want in [
        "sequential O_DIRECT writes",
        "qd32",
        "1 MiB",
        "write, then fdatasync",
        "write with RWF_DSYNC",
        "fdatasync alone",
        "write linked to fdatasync",
        "flushes in flight",
        "etcd",
        "profile: sync",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}\n{err}");
    }
    let fails = text.lines().filter(|l| l.ends_with("FAIL")).count();
    assert_eq!(out.status.success(), fails == 0, "{text}");
    let p = DiskProfile::load(&prof).unwrap();
    assert!(p.measured.write_fdatasync_p50_us > 0.0, "{p:?}");
    assert!(p.measured.bandwidth_best_mb_s > 0.0, "{p:?}");
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("profile.toml")]);
}

#[test]
fn node_config_applies_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.toml");
    profile(SyncMethod::Dsync, 512 << 10, 6).save(&path).unwrap();
    let text = format!("node_id = 1\ndisk_profile = {:?}\n", path.to_str().unwrap());
    let mut cfg: NodeConfig = toml::from_str(&text).unwrap();
    assert_eq!(cfg.log_config(2).sync, SyncMethod::Adaptive);
    cfg.apply_disk_profile().unwrap();
    let l = cfg.log_config(2);
    assert_eq!(
        (l.group, l.sync, l.flush_bytes_max, l.flushes_in_flight_max),
        (2, SyncMethod::Dsync, 512 << 10, 6)
    );
    cfg.validate().unwrap();
    // Without a profile, nothing changes.
    let mut plain = NodeConfig::default();
    plain.apply_disk_profile().unwrap();
    assert_eq!(plain, NodeConfig::default());
    // The default configuration does not mention a profile it does not have.
    assert!(!NodeConfig::default_toml().contains("disk_profile"));
}

use common::{free_port, segments_open_dsync};

/// Starts `corelog serve` on a one-node configuration; returns the child once it printed its
/// log settings, with that line.
fn serve(dir: &Path, disk_profile: Option<&Path>) -> (std::process::Child, String) {
    let cfg = NodeConfig {
        data_dir: dir.join("data"),
        members: vec![PeerConfig {
            id: 1,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }],
        segment_bytes: 1 << 20,
        disk_profile: disk_profile.map(Path::to_path_buf),
        ..NodeConfig::default()
    };
    let path = dir.join("node.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains(" log: sync ") => return (child, l),
            Ok(l) => seen.push(l),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve printed no log settings: {seen:?}");
}

fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// `serve` reads the profile: the settings it reports are the profile's, and the log's segments
/// are open with O_DSYNC when the profile says `dsync` (and without it when there is none).
#[test]
fn serve_applies_the_profile() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (child, line) = serve(dir.path(), None);
    let data = std::fs::canonicalize(dir.path().join("data")).unwrap();
    let plain = segments_open_dsync(child.id(), &data);
    // Stop the node before any assertion, so a failure never leaves it running.
    stop(child);
    let defaults = format!(
        "sync adaptive, flush_bytes_max 1048576, flushes_in_flight_max {}",
        corelog::log::LogConfig::new(0).flushes_in_flight_max
    );
    assert!(line.contains(&defaults), "{line}");
    assert!(!plain.is_empty(), "no O_DIRECT segment open");
    assert!(plain.iter().all(|d| !d), "{plain:?}");

    let prof = dir.path().join("disk.toml");
    profile(SyncMethod::Dsync, 256 << 10, 7).save(&prof).unwrap();
    let (child, line) = serve(dir.path(), Some(&prof));
    let with = segments_open_dsync(child.id(), &data);
    stop(child);
    assert!(line.contains("sync dsync, flush_bytes_max 262144, flushes_in_flight_max 7"), "{line}");
    assert!(line.contains("disk.toml"), "{line}");
    assert!(!with.is_empty() && with.iter().all(|d| *d), "{with:?}");

    // A bad profile stops the node before it starts, saying why.
    std::fs::write(
        &prof,
        "[log]\nsync = \"dsync\"\nflush_bytes_max = 12\nflushes_in_flight_max = 4\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("node.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk profile") && err.contains("flush_bytes_max"), "{err}");
}
