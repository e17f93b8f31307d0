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

/// A cluster of `n` nodes in this process (each node its own executor threads, real TCP on
/// loopback, real files under a temporary directory).
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<corelog::node::NodeConfig>,
    pub nodes: Vec<Option<corelog::node::NodeHandle>>,
}

impl LocalCluster {
    /// Starts `n` nodes with small segments.
    pub fn start(n: u64) -> LocalCluster {
        use corelog::node::{NodeConfig, PeerConfig};
        use std::net::SocketAddr;
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<PeerConfig> = (1..=n)
            .map(|id| PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free().port())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free().port())),
            })
            .collect();
        let configs: Vec<NodeConfig> = (1..=n)
            .map(|id| NodeConfig {
                node_id: id,
                data_dir: dir.path().join(format!("n{id}")),
                members: members.clone(),
                segment_bytes: 4 << 20,
                ..NodeConfig::default()
            })
            .collect();
        let nodes =
            configs.iter().map(|c| Some(corelog::node::start(c.clone()).expect("start"))).collect();
        LocalCluster { dir, configs, nodes }
    }

    /// The client addresses of all nodes.
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.configs[0].members.iter().map(|m| m.client_addr).collect()
    }

    /// Stops node `id` (1-based).
    pub fn stop(&mut self, id: u64) {
        if let Some(n) = self.nodes[id as usize - 1].take() {
            n.shutdown().expect("shutdown");
        }
    }

    /// The id of the node that reports itself leader of group 0, waiting up to `within`.
    pub fn leader(&self, within: std::time::Duration) -> u64 {
        use corelog::client::{Client, ClientConfig};
        let addrs = self.addrs();
        let mut probe = Client::new(ClientConfig::new(addrs.clone())).unwrap();
        let deadline = std::time::Instant::now() + within;
        loop {
            for (k, a) in addrs.iter().enumerate() {
                if self.nodes[k].is_none() {
                    continue;
                }
                if let Ok(s) = probe.status_of(*a, 0)
                    && s.contains("\"role\":\"Leader\"")
                {
                    return k as u64 + 1;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no leader within {within:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The committed entries `1..=last` of group 0 as node `id` holds them, once its commit
    /// index reaches `last` (waiting up to `within`).
    pub fn committed(
        &self,
        id: u64,
        last: u64,
        within: std::time::Duration,
    ) -> Vec<corelog::client::ReadEntry> {
        use corelog::client::{Client, ClientConfig};
        let addr = self.addrs()[id as usize - 1];
        let mut probe = Client::new(ClientConfig::new(vec![addr])).unwrap();
        let deadline = std::time::Instant::now() + within;
        loop {
            let (commit, _) = probe.read_from(addr, 0, 1, 0, 1).expect("read");
            if commit >= last {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {id}: commit {commit} < {last}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut out: Vec<corelog::client::ReadEntry> = Vec::new();
        while out.last().map_or(0, |e| e.index) < last {
            let from = out.last().map_or(1, |e| e.index + 1);
            let (_, entries) = probe.read_from(addr, 0, from, last, 4 << 20).expect("read");
            assert!(!entries.is_empty(), "node {id}: nothing at {from}");
            out.extend(entries);
        }
        out
    }

    /// Stops every node still running.
    pub fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.shutdown().expect("shutdown");
            }
        }
    }
}
