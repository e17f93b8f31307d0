//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use corelog::frame::{EntryKind, EntryRef};
use corelog::log::{Log, LogConfig};

/// Runs `f` on a fresh glommio executor and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A small configuration that exercises segment rolls and full buffers quickly.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        flush_bytes_max: 64 << 10,
        recent_cache_bytes: 128 << 10,
        ..LogConfig::new(1)
    }
}

/// The payload of entry `index`: deterministic, so a reader can check it (the crash writer's).
pub use corelog::tools::crash_writer::payload;

/// Appends `n` frames of `per_frame` entries of `len` bytes with `term`, the contents given by
/// [`payload`]. Returns the last index.
pub async fn append_n(log: &Log, term: u64, n: usize, per_frame: usize, len: usize) -> u64 {
    let mut last = log.last_index();
    for _ in 0..n {
        let datas: Vec<Vec<u8>> =
            (0..per_frame as u64).map(|k| payload(last + 1 + k, len)).collect();
        let entries: Vec<EntryRef<'_>> = datas
            .iter()
            .enumerate()
            .map(|(k, d)| EntryRef {
                kind: EntryKind::Normal,
                session: 1,
                seq: last + 1 + k as u64,
                data: d,
            })
            .collect();
        let r = log.append_entries(term, &entries).await.expect("append");
        last = r.last;
    }
    last
}

/// Reads `lo..=hi` and checks every entry against [`payload`] and its index.
pub async fn check_range(log: &Log, lo: u64, hi: u64, len: usize) {
    let mut next = lo;
    while next <= hi {
        let frames = log.read(next, hi, 1 << 20).await.expect("read");
        assert!(!frames.is_empty());
        for f in &frames {
            for e in f.entries() {
                assert_eq!(e.index, next, "entries in order");
                assert_eq!(e.seq, next, "entry {next} seq");
                assert_eq!(e.data, &payload(next, len)[..], "entry {next} contents");
                next += 1;
            }
        }
    }
    assert_eq!(next, hi + 1);
}

/// Lists the segment files of a log directory, sorted.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".seg") && !n.starts_with("spare-")
        })
        .collect();
    v.sort();
    v
}

/// A free TCP port on loopback (picked by the OS).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A cluster of `corelog serve` processes on loopback, each with its own TOML file and data
/// directory under a temporary directory; dropping it kills and reaps them all (also when the
/// test panics, after printing the tail of each node's stderr).
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    /// Configurations, node `id` at `id - 1`.
    pub cfgs: Vec<corelog::node::NodeConfig>,
    children: Vec<Option<std::process::Child>>,
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for id in 1..=self.cfgs.len() {
                if let Ok(text) = std::fs::read_to_string(self.stderr_path(id as u64)) {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- node {id} stderr (last lines) ---");
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

impl ProcCluster {
    /// Writes the configurations of `n` nodes (all in every node's `members`; the first
    /// `voters` of them the initial voters) with `tweak` applied; starts none.
    pub fn new(n: u64, voters: u64, tweak: impl Fn(&mut corelog::node::NodeConfig)) -> ProcCluster {
        use corelog::node::{NodeConfig, PeerConfig};
        use std::net::SocketAddr;
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<PeerConfig> = (1..=n)
            .map(|id| PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            })
            .collect();
        let cfgs: Vec<NodeConfig> = (1..=n)
            .map(|id| {
                let mut c = NodeConfig {
                    cluster_id: 9,
                    node_id: id,
                    data_dir: dir.path().join(format!("n{id}")),
                    members: members.clone(),
                    voters: if voters < n { (1..=voters).collect() } else { Vec::new() },
                    segment_bytes: 4 << 20,
                    ..NodeConfig::default()
                };
                tweak(&mut c);
                let path = dir.path().join(format!("n{id}.toml"));
                std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
                c
            })
            .collect();
        let children = (0..n).map(|_| None).collect();
        ProcCluster { dir, cfgs, children }
    }

    fn stderr_path(&self, id: u64) -> std::path::PathBuf {
        self.dir.path().join(format!("n{id}.stderr"))
    }

    /// Client address of node `id`.
    pub fn addr(&self, id: u64) -> std::net::SocketAddr {
        self.cfgs[id as usize - 1].me().client_addr
    }

    /// Client addresses of nodes `ids`.
    pub fn addrs(&self, ids: &[u64]) -> Vec<std::net::SocketAddr> {
        ids.iter().map(|&id| self.addr(id)).collect()
    }

    /// Starts node `id` and waits until it accepts clients.
    pub fn spawn(&mut self, id: u64) {
        use std::time::{Duration, Instant};
        assert!(self.children[id as usize - 1].is_none(), "node {id} is running");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path(id))
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join(format!("n{id}.toml")))
            .env("CORELOG_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn corelog serve");
        self.children[id as usize - 1] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&self.addr(id), Duration::from_millis(200))
            .is_err()
        {
            if let Some(s) = self.children[id as usize - 1].as_mut().unwrap().try_wait().unwrap() {
                panic!("node {id} exited at start: {s}");
            }
            assert!(Instant::now() < deadline, "node {id} does not accept clients after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to node `id`.
    pub fn signal(&self, id: u64, signal: i32) {
        let c = self.children[id as usize - 1].as_ref().expect("running");
        unsafe { libc::kill(c.id() as i32, signal) };
    }

    /// SIGKILL: node `id` dies at once.
    pub fn kill9(&mut self, id: u64) {
        let mut c = self.children[id as usize - 1].take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// A client of nodes `ids` that gives up fast (for status and reads).
    pub fn probe(&self, ids: &[u64]) -> corelog::client::Client {
        use std::time::Duration;
        let mut cfg = corelog::client::ClientConfig::new(self.addrs(ids));
        cfg.deadline = Duration::from_millis(800);
        cfg.attempt_timeout = Duration::from_millis(400);
        corelog::client::Client::new(cfg).unwrap()
    }

    /// Status of group 0 as node `id` sees it.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let text = self.probe(&[id]).status_of(self.addr(id), 0).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until one of `ids` says it leads, in the highest term any of them reports.
    pub fn leader(&self, ids: &[u64], within: std::time::Duration) -> u64 {
        let deadline = std::time::Instant::now() + within;
        loop {
            let st: Vec<(u64, serde_json::Value)> =
                ids.iter().filter_map(|&id| Some((id, self.status(id)?))).collect();
            let max_term = st.iter().map(|(_, s)| s["term"].as_u64().unwrap_or(0)).max();
            if let Some((id, _)) =
                st.iter().find(|(_, s)| s["role"] == "Leader" && s["term"].as_u64() == max_term)
            {
                return *id;
            }
            assert!(std::time::Instant::now() < deadline, "no leader among {ids:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits until node `id` knows `last` committed, then reads its log `from..=last`.
    pub fn log_of(&self, id: u64, from: u64, last: u64) -> Vec<corelog::client::ReadEntry> {
        use std::time::{Duration, Instant};
        let mut probe = self.probe(&[id]);
        let addr = self.addr(id);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match probe.read_from(addr, 0, 1, 0, 1) {
                Ok((commit, _)) if commit >= last => break,
                other => assert!(
                    Instant::now() < deadline,
                    "node {id} does not reach commit {last}: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out: Vec<corelog::client::ReadEntry> = Vec::new();
        let mut lo = from;
        while lo <= last {
            let (_, entries) = probe
                .read_from(addr, 0, lo, last, 1 << 20)
                .unwrap_or_else(|e| panic!("node {id}: read from {lo}: {e}"));
            assert!(!entries.is_empty(), "node {id}: nothing at {lo}");
            for e in entries {
                assert_eq!(e.index, lo, "node {id}: a gap or disorder");
                lo += 1;
                out.push(e);
            }
        }
        out
    }
}

/// Acknowledged appends: (index, payload).
pub type AckedLog = std::sync::Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;

/// A writer thread that appends unique payloads until stopped and keeps what was
/// acknowledged: (position, payload).
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: AckedLog,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    pub fn start(nodes: Vec<std::net::SocketAddr>, tag: &str) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a, tag) = (stop.clone(), acked.clone(), tag.to_string());
        let thread = std::thread::spawn(move || {
            let mut cfg = corelog::client::ClientConfig::new(nodes);
            cfg.attempt_timeout = std::time::Duration::from_millis(1000);
            cfg.deadline = std::time::Duration::from_secs(30);
            let mut c = corelog::client::Client::new(cfg).unwrap();
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                let mut data = format!("{tag}-{i}-").into_bytes();
                data.resize(200, b'.');
                let p = c.append(0, &data).expect("an append failed for good");
                a.lock().unwrap().push((p.index, data));
                i += 1;
            }
        });
        Writer { stop, acked, thread }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more appends are acknowledged.
    pub fn wait_more(&self, n: usize, within: std::time::Duration) {
        let target = self.count() + n;
        let deadline = std::time::Instant::now() + within;
        while self.count() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer is stuck at {}",
                self.count()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn finish(self) -> Vec<(u64, Vec<u8>)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("writer thread");
        std::sync::Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Checks that `log` holds every acknowledged append at its index and no payload twice.
pub fn check_acked(log: &[corelog::client::ReadEntry], acked: &[(u64, Vec<u8>)]) {
    use std::collections::{HashMap, HashSet};
    let by_index: HashMap<u64, &corelog::client::ReadEntry> =
        log.iter().map(|e| (e.index, e)).collect();
    let mut seen = HashSet::new();
    for e in log.iter().filter(|e| e.kind == EntryKind::Normal) {
        assert!(seen.insert(&e.data), "payload at {} appears twice", e.index);
    }
    for (index, data) in acked {
        let e = by_index.get(index).unwrap_or_else(|| panic!("acknowledged {index} missing"));
        assert_eq!(&e.data, data, "index {index} holds another payload");
    }
}
