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
    corelog::rt::Executor::new("test").run(f).expect("executor")
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
        let free = || SocketAddr::from(([127, 0, 0, 1], free_port()));
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

/// Clusters of real `corelog serve` processes for the fault tests, with every peer link
/// optionally through the fault proxy, or each node in its own network namespace.
pub mod procs {
    use std::collections::{HashMap, HashSet};
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use corelog::client::{Client, ClientConfig, Position, ReadEntry};
    use corelog::faultproxy::FaultProxy;
    use corelog::frame::EntryKind;
    use corelog::node::{NodeConfig, PeerConfig};

    /// The `corelog` binary of this build.
    pub const BIN: &str = env!("CARGO_BIN_EXE_corelog");

    /// How the nodes reach each other.
    pub enum Net {
        /// Directly, on loopback.
        Direct,
        /// Through a fault proxy: node `a` dials node `b` through the proxy's routes `a->b`.
        Proxy(FaultProxy),
        /// Each node in its own network namespace (made by `tools/netns-cluster.sh`); node
        /// `id` runs in namespace `{prefix}{id}` with address `ips[id - 1]`.
        Netns { prefix: String, ips: Vec<IpAddr> },
    }

    /// Settings of a process cluster.
    pub struct Options {
        pub nodes: u64,
        pub cores: usize,
        pub groups: u64,
        pub proxy: bool,
        /// Namespaces: (prefix, address of each node).
        pub netns: Option<(String, Vec<IpAddr>)>,
    }

    impl Default for Options {
        fn default() -> Self {
            Options { nodes: 3, cores: 1, groups: 1, proxy: false, netns: None }
        }
    }

    pub struct Proc {
        pub id: u64,
        pub config: PathBuf,
        pub stderr: PathBuf,
        pub child: Option<Child>,
        pub stopped: bool,
    }

    /// A cluster of `corelog serve` processes; dropping it kills and reaps them all.
    pub struct ProcCluster {
        pub dir: tempfile::TempDir,
        pub procs: Vec<Proc>,
        /// Client addresses, in node order (node `id` at `id - 1`).
        pub addrs: Vec<SocketAddr>,
        pub net: Net,
    }

    impl Drop for ProcCluster {
        fn drop(&mut self) {
            for p in &mut self.procs {
                if let Some(mut c) = p.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            if std::thread::panicking() {
                for p in &self.procs {
                    if let Ok(text) = std::fs::read_to_string(&p.stderr) {
                        let tail: Vec<&str> = text.lines().rev().take(30).collect();
                        eprintln!("--- node {} stderr (last lines) ---", p.id);
                        for l in tail.into_iter().rev() {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
    }

    impl ProcCluster {
        /// Writes the configurations and starts every node.
        pub fn start(o: Options) -> ProcCluster {
            let dir =
                tempfile::Builder::new().prefix("corelog-procs-").tempdir_in("/var/tmp").unwrap();
            let cores = o.cores as u16;
            let ips: Vec<IpAddr> = match &o.netns {
                Some((_, ips)) => ips.clone(),
                None => vec![IpAddr::from([127, 0, 0, 1]); o.nodes as usize],
            };
            let members: Vec<PeerConfig> = (1..=o.nodes)
                .map(|id| {
                    let ip = ips[id as usize - 1];
                    // In a namespace every node has its own address: fixed ports will do.
                    let (p, c) = if o.netns.is_some() {
                        (7100, 7200)
                    } else {
                        (super::free_ports(ip, cores), super::free_ports(ip, cores))
                    };
                    PeerConfig {
                        id,
                        peer_addr: SocketAddr::new(ip, p),
                        client_addr: SocketAddr::new(ip, c),
                    }
                })
                .collect();
            let net = if o.proxy {
                Net::Proxy(FaultProxy::new())
            } else if let Some((prefix, ips)) = o.netns {
                Net::Netns { prefix, ips }
            } else {
                Net::Direct
            };
            let mut procs = Vec::new();
            for id in 1..=o.nodes {
                // Each node's view of the others: their real peer address, or the proxy's
                // listener for the link from this node to them.
                let view: Vec<PeerConfig> = members
                    .iter()
                    .map(|m| match &net {
                        Net::Proxy(p) if m.id != id => {
                            let at = p
                                .add_routes(
                                    &id.to_string(),
                                    &m.id.to_string(),
                                    IpAddr::from([127, 0, 0, 1]),
                                    m.peer_addr,
                                    cores,
                                )
                                .unwrap();
                            PeerConfig { peer_addr: at, ..m.clone() }
                        }
                        _ => m.clone(),
                    })
                    .collect();
                let cfg = NodeConfig {
                    cluster_id: 7,
                    node_id: id,
                    data_dir: dir.path().join(format!("n{id}")),
                    members: view,
                    cores: o.cores,
                    groups: o.groups,
                    segment_bytes: 4 << 20,
                    ..NodeConfig::default()
                };
                let config = dir.path().join(format!("n{id}.toml"));
                std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
                let stderr = dir.path().join(format!("n{id}.stderr"));
                procs.push(Proc { id, config, stderr, child: None, stopped: false });
            }
            let addrs = members.iter().map(|m| m.client_addr).collect();
            let mut c = ProcCluster { dir, procs, addrs, net };
            for id in 1..=o.nodes {
                c.spawn(id);
            }
            c
        }

        /// The fault proxy (panics if the cluster has none).
        pub fn proxy(&self) -> &FaultProxy {
            match &self.net {
                Net::Proxy(p) => p,
                _ => panic!("this cluster has no proxy"),
            }
        }

        /// Starts node `id` (again) and waits until it accepts clients.
        pub fn spawn(&mut self, id: u64) {
            let netns = match &self.net {
                Net::Netns { prefix, .. } => Some(format!("{prefix}{id}")),
                _ => None,
            };
            let p = &mut self.procs[id as usize - 1];
            assert!(p.child.is_none(), "node {id} is running");
            let err =
                std::fs::OpenOptions::new().create(true).append(true).open(&p.stderr).unwrap();
            let mut cmd = match &netns {
                // `ip netns exec` execs the program: the child's pid is the node's.
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, BIN]);
                    c
                }
                None => Command::new(BIN),
            };
            let child = cmd
                .arg("serve")
                .arg("--config")
                .arg(&p.config)
                .env("CORELOG_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("spawn corelog serve");
            p.child = Some(child);
            p.stopped = false;
            let addr = self.addrs[id as usize - 1];
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
                let p = &mut self.procs[id as usize - 1];
                if let Some(s) = p.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("node {id} exited at start: {s}");
                }
                assert!(Instant::now() < deadline, "node {id} does not accept clients after 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// SIGKILL: the node dies at once, in the middle of whatever it was doing.
        pub fn kill9(&mut self, id: u64) {
            let p = &mut self.procs[id as usize - 1];
            let mut c = p.child.take().expect("running");
            c.kill().unwrap();
            c.wait().unwrap();
            p.stopped = false;
        }

        /// SIGTERM: the node stops gracefully; it must exit successfully within 10 s.
        pub fn stop(&mut self, id: u64) {
            let p = &mut self.procs[id as usize - 1];
            let mut c = p.child.take().expect("running");
            p.stopped = false;
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(s) = c.try_wait().unwrap() {
                    assert!(s.success(), "node {id} exited with {s} after SIGTERM");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("node {id} did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// SIGSTOP: the node freezes with its sockets open.
        pub fn sigstop(&mut self, id: u64) {
            let p = &mut self.procs[id as usize - 1];
            let c = p.child.as_ref().expect("running");
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
            p.stopped = true;
        }

        /// SIGCONT: a frozen node goes on.
        pub fn sigcont(&mut self, id: u64) {
            let p = &mut self.procs[id as usize - 1];
            if let Some(c) = p.child.as_ref() {
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            }
            p.stopped = false;
        }

        /// Nodes whose process runs (frozen ones included).
        pub fn running(&self) -> Vec<u64> {
            self.procs.iter().filter(|p| p.child.is_some()).map(|p| p.id).collect()
        }

        /// Nodes that run and are not frozen.
        pub fn live(&self) -> Vec<u64> {
            self.procs.iter().filter(|p| p.child.is_some() && !p.stopped).map(|p| p.id).collect()
        }

        pub fn addr(&self, id: u64) -> SocketAddr {
            self.addrs[id as usize - 1]
        }

        /// A client of the whole cluster (its own session).
        pub fn client(&self) -> Client {
            let mut cfg = ClientConfig::new(self.addrs.clone());
            cfg.attempt_timeout = Duration::from_millis(1000);
            Client::new(cfg).unwrap()
        }

        /// A client for status and reads of one node at a time: it gives up fast.
        pub fn probe(&self) -> Client {
            let mut cfg = ClientConfig::new(self.addrs.clone());
            cfg.deadline = Duration::from_millis(500);
            cfg.attempt_timeout = Duration::from_millis(300);
            Client::new(cfg).unwrap()
        }

        /// Status of `group` as node `id` sees it.
        pub fn status(&self, probe: &mut Client, id: u64, group: u64) -> Option<serde_json::Value> {
            let text = probe.status_of(self.addr(id), group).ok()?;
            serde_json::from_str(&text).ok()
        }

        /// The live node that leads group 0 in the highest term any live node reports, if
        /// there is one now.
        pub fn leader_now(&self, probe: &mut Client) -> Option<(u64, u64)> {
            let mut best: Option<(u64, u64)> = None;
            let mut max_term = 0;
            for id in self.live() {
                if let Some(s) = self.status(probe, id, 0) {
                    let term = s["term"].as_u64().unwrap_or(0);
                    max_term = max_term.max(term);
                    if s["role"] == "Leader" && best.is_none_or(|(_, t)| term > t) {
                        best = Some((id, term));
                    }
                }
            }
            best.filter(|&(_, t)| t == max_term)
        }

        /// Waits for a leader of group 0; returns (leader id, term).
        pub fn leader(&self, within: Duration) -> (u64, u64) {
            let mut probe = self.probe();
            let deadline = Instant::now() + within;
            loop {
                if let Some(l) = self.leader_now(&mut probe) {
                    return l;
                }
                assert!(Instant::now() < deadline, "no leader within {within:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Waits until node `id` knows entries up to `last` of `group` committed, then reads
        /// its log `1..=last`.
        pub fn committed_log(
            &self,
            id: u64,
            group: u64,
            last: u64,
            within: Duration,
        ) -> Vec<ReadEntry> {
            read_committed(&mut self.probe(), id, self.addr(id), group, 1, last, within)
        }

        /// Reads `1..=last` of `group` from every running node, checks that they hold the
        /// same entries at the same indexes, and returns that log.
        pub fn same_log_everywhere(&self, group: u64, last: u64) -> Vec<ReadEntry> {
            let mut reference: Option<(u64, Vec<ReadEntry>)> = None;
            for id in self.running() {
                let log = self.committed_log(id, group, last, Duration::from_secs(20));
                match &reference {
                    None => reference = Some((id, log)),
                    Some((rid, r)) => {
                        assert_eq!(r.len(), log.len());
                        for (a, b) in r.iter().zip(&log) {
                            assert_eq!(a, b, "nodes {rid} and {id} differ at index {}", a.index);
                        }
                    }
                }
            }
            reference.expect("a running node").1
        }
    }

    /// Waits until node `id` (at `addr`) knows entries up to `last` of `group` committed, then
    /// reads its log `from..=last` with `probe`, checking that it has no gap.
    pub fn read_committed(
        probe: &mut Client,
        id: u64,
        addr: SocketAddr,
        group: u64,
        from: u64,
        last: u64,
        within: Duration,
    ) -> Vec<ReadEntry> {
        let deadline = Instant::now() + within;
        loop {
            match probe.read_from(addr, group, 1, 0, 1) {
                Ok((commit, _)) if commit >= last => break,
                Ok((commit, _)) => assert!(
                    Instant::now() < deadline,
                    "node {id}: commit {commit} did not reach {last} within {within:?}"
                ),
                Err(e) => assert!(Instant::now() < deadline, "node {id}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out: Vec<ReadEntry> = Vec::new();
        let mut lo = from;
        while lo <= last {
            let (_, entries) = probe
                .read_from(addr, group, lo, last, 1 << 20)
                .unwrap_or_else(|e| panic!("node {id}: read from {lo}: {e}"));
            assert!(!entries.is_empty(), "node {id}: nothing read at {lo} (commit >= {last})");
            for e in entries {
                assert_eq!(e.index, lo, "node {id}: the log has a gap or is out of order");
                lo += 1;
                out.push(e);
            }
        }
        out
    }

    /// Writer threads, each with its own client (its own session), appending unique payloads
    /// until stopped.
    pub struct Writers {
        stop: Arc<AtomicBool>,
        acked: Arc<Mutex<Vec<Acked>>>,
        threads: Vec<std::thread::JoinHandle<u64>>,
    }

    impl Writers {
        /// Writers `first_writer..first_writer + n`; writer `w`'s `k`-th append carries
        /// `payload(w, k)`, which must be unique.
        pub fn start(
            cluster: &ProcCluster,
            n: usize,
            first_writer: usize,
            payload: fn(usize, u64) -> Vec<u8>,
        ) -> Writers {
            let stop = Arc::new(AtomicBool::new(false));
            let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
            let threads = (first_writer..first_writer + n)
                .map(|w| {
                    let (stop, acked) = (stop.clone(), acked.clone());
                    let mut client = cluster.client();
                    std::thread::spawn(move || {
                        let (mut failed, mut last_index, mut n) = (0u64, 0, 0);
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let data = payload(w, n);
                            match client.append(0, &data) {
                                Ok(pos) => {
                                    assert!(
                                        pos.index > last_index,
                                        "writer {w}: position {} after {last_index}",
                                        pos.index
                                    );
                                    last_index = pos.index;
                                    acked.lock().unwrap().push(Acked {
                                        pos,
                                        data,
                                        at: Instant::now(),
                                    });
                                }
                                // Unknown outcome: in the log once or not at all. The next
                                // append has a new payload, so a duplicate stays detectable.
                                Err(e) => {
                                    failed += 1;
                                    eprintln!("writer {w}: append {n} failed: {e}");
                                }
                            }
                        }
                        failed
                    })
                })
                .collect();
            Writers { stop, acked, threads }
        }

        pub fn count(&self) -> usize {
            self.acked.lock().unwrap().len()
        }

        /// Waits until `more` appends beyond the current count are acknowledged.
        pub fn wait_for(&self, more: usize, within: Duration) -> Duration {
            let t0 = Instant::now();
            let target = self.count() + more;
            while self.count() < target {
                assert!(
                    t0.elapsed() < within,
                    "fewer than {more} appends acknowledged in {within:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            t0.elapsed()
        }

        pub fn finish(self) -> (Vec<Acked>, u64) {
            self.stop.store(true, Ordering::Relaxed);
            let failed = self.threads.into_iter().map(|t| t.join().expect("writer panicked")).sum();
            let acked = self.acked.lock().unwrap().clone();
            (acked, failed)
        }
    }

    /// One acknowledged append.
    #[derive(Clone, Debug)]
    pub struct Acked {
        pub pos: Position,
        pub data: Vec<u8>,
        pub at: Instant,
    }

    /// Checks that every acknowledged append is in `log` exactly once, at its acknowledged
    /// index, and that no payload and no (session, sequence) appears twice; returns the
    /// number of client entries in the log.
    pub fn check_exactly_once(log: &[ReadEntry], acked: &[Acked]) -> usize {
        let by_index: HashMap<u64, &ReadEntry> = log.iter().map(|e| (e.index, e)).collect();
        let mut seen_data: HashSet<&[u8]> = HashSet::new();
        let mut seen_seq: HashSet<(u64, u64)> = HashSet::new();
        let (mut dup_data, mut dup_seq, mut normal) = (0, 0, 0);
        for e in log.iter().filter(|e| e.kind == EntryKind::Normal) {
            normal += 1;
            if !seen_data.insert(&e.data) {
                dup_data += 1;
                eprintln!("duplicate payload at {}: {}", e.index, String::from_utf8_lossy(&e.data));
            }
            if !seen_seq.insert((e.session, e.seq)) {
                dup_seq += 1;
                eprintln!("duplicate (session {}, seq {}) at {}", e.session, e.seq, e.index);
            }
        }
        assert_eq!(dup_data, 0, "a payload was committed more than once");
        assert_eq!(dup_seq, 0, "a (session, sequence) was committed more than once");
        for a in acked {
            let e = by_index
                .get(&a.pos.index)
                .unwrap_or_else(|| panic!("acknowledged index {} is missing", a.pos.index));
            assert_eq!(
                e.kind,
                EntryKind::Normal,
                "acknowledged index {} is not client data",
                e.index
            );
            assert_eq!(
                e.data, a.data,
                "index {} holds another payload than the one acknowledged there",
                e.index
            );
        }
        normal
    }
}

/// A TCP port on loopback that is free now (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(std::net::IpAddr::from([127, 0, 0, 1]), 1)
}

/// Lowest port handed out: above the well-known and most registered service ports.
const TEST_PORT_LOW: u16 = 10_000;

/// `n` consecutive TCP ports on `ip` that are free now; returns the first. They are taken
/// from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), from which the
/// OS also picks the local port of every outgoing connection: a port chosen there with
/// `bind(:0)` and released could be taken by some connection before the node that is to
/// listen on it binds it (it happened to a test whose neighbours open many connections). Each
/// test process starts at its own point of the range and walks on, so two test runs at once
/// rarely meet, and a port is only handed out when binding it succeeds.
pub fn free_ports(ip: std::net::IpAddr, n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(TEST_PORT_LOW + 1_000);
    let span = u32::from(high - TEST_PORT_LOW);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = (std::process::id().wrapping_mul(2_654_435_761) ^ nanos) % span;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let at = NEXT.fetch_add(u32::from(n), Ordering::Relaxed) % span;
        if at + u32::from(n) > span {
            continue;
        }
        let base = TEST_PORT_LOW + at as u16;
        let held: Vec<_> = (0..n)
            .map_while(|i| {
                std::net::TcpListener::bind(std::net::SocketAddr::new(ip, base + i)).ok()
            })
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on {ip} below {high}");
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

    /// What node `id` wrote to stderr so far (its warnings).
    pub fn stderr(&self, id: u64) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
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
        let within = std::time::Duration::from_secs(15);
        procs::read_committed(&mut self.probe(&[id]), id, self.addr(id), 0, from, last, within)
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

/// Configurations of an `n`-node cluster on loopback (free ports, data under `dir/n{id}`),
/// each with `segment_bytes`, then adjusted by `f`.
pub fn local_configs(
    dir: &Path,
    n: u64,
    segment_bytes: u64,
    f: impl Fn(&mut corelog::node::NodeConfig),
) -> Vec<corelog::node::NodeConfig> {
    use corelog::node::{NodeConfig, PeerConfig};
    use std::net::SocketAddr;
    let members: Vec<PeerConfig> = (1..=n)
        .map(|id| PeerConfig {
            id,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        })
        .collect();
    (1..=n)
        .map(|id| {
            let mut c = NodeConfig {
                node_id: id,
                data_dir: dir.join(format!("n{id}")),
                members: members.clone(),
                segment_bytes,
                ..NodeConfig::default()
            };
            f(&mut c);
            c
        })
        .collect()
}

/// For each segment under `data` that the process holds open with O_DIRECT: whether it is also
/// open with O_DSYNC (from /proc/PID/fdinfo).
pub fn segments_open_dsync(pid: u32, data: &Path) -> Vec<bool> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if !target.starts_with(data)
            || target.is_dir()
            || target.extension().is_none_or(|x| x != "seg")
        {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let Some(flags) = info.lines().find_map(|l| l.strip_prefix("flags:")) else { continue };
        let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
        if flags & libc::O_DIRECT as u32 != 0 {
            out.push(flags & libc::O_DSYNC as u32 != 0);
        }
    }
    out
}
