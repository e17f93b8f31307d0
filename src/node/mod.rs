//! The node runtime: consensus groups on pinned executors, wired to their logs and peers.
//!
//! One executor per core (`crate::rt`; pinned when `pin` is set). Group `g` lives on core
//! `g % cores`: its log, hard state, consensus core and timers belong to that executor. Core
//! `i` talks only to core `i` of the other nodes (see [`peer`]), and serves the clients of its
//! groups on its own client port (client port + `i`): connections reach the right core by
//! port, not by a hand-off at accept, so no connection and no byte ever crosses cores. A
//! request that arrives at the wrong core is answered with the right port.
//!
//! Inside a core everything is single-threaded: per group one driver task owns the core and
//! the log ([`group`]); peer readers, client connections, the tick timer and log completions
//! reach it through its inbox.
//!
//! Copies of an appended payload, from the client's socket to a follower's disk, and where the
//! checksum is computed:
//! 1. the kernel copies it into the client connection's read buffer (one read takes many
//!    pipelined requests), and the request is copied from there into a buffer it shares with
//!    the requests that arrived whole with it: copy 1; the client's frame is verified there,
//!    and the core's entries are slices of that buffer (no copy);
//! 2. the leader builds the log frame once, in its log's aligned write buffer: copy 2 and the
//!    one checksum of the frame;
//! 3. that frame, as it is, goes to each follower: when its link has nothing queued and the
//!    frames come to 16 KiB or more, in one vectored non-blocking `sendmsg` straight from the
//!    log's memory (no copy in user space; only what the socket does not take is copied into
//!    the link's queue); otherwise it is copied into the send queue: copy 3 (one per follower;
//!    a plain copy, no framing, no checksum; see [`codec::encode_append_frames`],
//!    `Peers::send_frames` and `Log::with_frames`); the kernel copies it to the socket;
//! 4. the follower receives the message straight into one buffer (no read buffer between,
//!    and the buffer is not zeroed first), verifies each frame's checksum, and writes those
//!    very bytes into its log's write buffer: copy 4 (see `GroupDriver::write_entries`).
//!
//! So three or four copies in user space, none per entry in the protocol core, and the payload
//! is checksummed once where it is built and once where it is received. Copy 1 buys one read
//! system call for many small requests (the requests that arrived whole are copied out in one
//! piece and split, each sharing it). Copy 3 stays for small appends, which join other
//! messages in one write (the runtime's socket has no vectored send; the direct send goes
//! around it on the link's socket). Copy 4 would go if the follower received straight into
//! its log's buffer. One frame per pipelined flush, the one that the flush's block-aligned
//! cut splits between two buffers, is copied whole once more (for all followers) the first
//! time it is sent. Entries of an append that are not in a whole frame in memory (an append
//! that starts or ends inside a frame, frames evicted past `entry_cache_bytes_max`) are
//! framed anew, around the run of whole frames; `corelog_peer_entries_sent_total` and
//! `corelog_follower_entries_written_total` count both paths, and
//! `corelog_leader_entries_fetched_total` the entries a leader had to read back from disk.

pub mod codec;
pub mod config;
mod group;
pub mod inbox;
pub mod metrics;
mod peer;
pub mod proto;
mod server;
pub mod stages;
pub mod trace;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use config::{NodeConfig, PeerConfig};
use group::{GroupDriver, GroupHandle, Input, TickClock};
pub use peer::LinkState;
use peer::Peers;

/// What one core shares among its tasks.
pub(crate) struct CoreCtx {
    cfg: Rc<NodeConfig>,
    core: usize,
    groups: RefCell<HashMap<u64, Rc<GroupHandle>>>,
    stop: Rc<Cell<bool>>,
    /// Client connections being served (each counted by a [`TaskCount`]).
    client_connections: Rc<Cell<usize>>,
    /// Peer connections accepted whose handshake is not finished.
    peer_handshakes: Rc<Cell<usize>>,
    /// Tasks serving accepted peer connections, and outbound peer links, still running.
    peer_tasks: Rc<Cell<usize>>,
    errors_unknown_group: Cell<u64>,
}

/// Counts a running task in a counter until dropped.
pub(crate) struct TaskCount(Rc<Cell<usize>>);

impl TaskCount {
    pub(crate) fn new(count: &Rc<Cell<usize>>) -> TaskCount {
        count.set(count.get() + 1);
        TaskCount(count.clone())
    }
}

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// How long a stopping core waits for its connection tasks to close their sockets.
const CONNECTIONS_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How often a connection's waits (reads, connects, backoff) check whether the core stops.
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(100);

/// How often a listener's accept checks whether the core stops.
pub(crate) const ACCEPT_STOP_CHECK: Duration = Duration::from_millis(20);

/// Sleeps `timeout`, or less when `stop` is set first (checked every `every`, one timer at a
/// time): `true` when it stopped. `Duration::MAX` waits for the stop alone.
pub(crate) async fn sleep_unless_stopped(
    stop: Option<&Cell<bool>>,
    timeout: Duration,
    every: Duration,
) -> bool {
    let end = Instant::now().checked_add(timeout);
    let every = if stop.is_some() { every } else { timeout };
    loop {
        if stop.is_some_and(Cell::get) {
            return true;
        }
        let left = end.map_or(every, |e| e.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return false;
        }
        crate::rt::sleep(left.min(every)).await;
    }
}

/// Runs `fut` until it ends (`Some`) or `stop` is set first (`None`, checked every `every`).
pub(crate) async fn until_stopped<T>(
    stop: &Cell<bool>,
    every: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        sleep_unless_stopped(Some(stop), Duration::MAX, every).await;
        None
    })
    .await
}

impl CoreCtx {
    fn group(&self, g: u64) -> Option<Rc<GroupHandle>> {
        self.groups.borrow().get(&g).cloned()
    }

    /// The next connection on `listener`, or `None` once the core is stopping.
    async fn accept_until_stopped(
        &self,
        listener: &crate::rt::net::TcpListener,
    ) -> Option<std::io::Result<crate::rt::net::TcpStream>> {
        until_stopped(&self.stop, ACCEPT_STOP_CHECK, listener.accept()).await
    }
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<crate::rt::ExecutorThread<Result<(), String>>>,
    scraper: Arc<metrics::Scraper>,
    metrics_server: Option<(std::net::SocketAddr, std::thread::JoinHandle<()>)>,
    /// Per core: where in-process connections arrive (see [`crate::embed`]).
    local: Vec<Arc<crate::embed::LocalAcceptor>>,
}

impl NodeHandle {
    /// Stops accepting, lets in-flight flushes finish, closes the logs, and waits.
    pub fn shutdown(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits until the node stops (after a shutdown request from elsewhere).
    pub fn wait(self) -> Result<(), String> {
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        // The cores have stopped: so does the endpoint (it watches the same flag).
        if let Some((_, t)) = self.metrics_server {
            self.stop.store(true, Ordering::SeqCst);
            let _ = t.join();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Per core, the acceptor of in-process connections.
    pub(crate) fn local_acceptors(&self) -> Vec<Arc<crate::embed::LocalAcceptor>> {
        self.local.clone()
    }

    /// The flag that stops the node when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// A copy of every core's figures (see [`metrics`]); with `trace`, the sampled appends too.
    pub fn snapshot(&self, trace: bool) -> Result<metrics::NodeSnapshot, String> {
        self.scraper.snapshot(trace)
    }

    /// A handle that takes [`NodeHandle::snapshot`]s from another thread, as long as the node
    /// runs (an error after it stopped).
    pub(crate) fn scraper(&self) -> Arc<metrics::Scraper> {
        self.scraper.clone()
    }

    /// Where the latency of this node's appends (as leader) went: `(stage, nanoseconds)` per
    /// stage of [`stages::STAGES`], merged over the cores.
    pub fn stages(&self) -> Result<Vec<(String, hdrhistogram::Histogram<u64>)>, String> {
        Ok(self.snapshot(false)?.stages().named())
    }

    /// The address the metrics endpoint listens on, when `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(a, _)| *a)
    }
}

/// Starts a node: one executor per core, each opening (recovering) its groups and binding its
/// ports before this returns.
pub fn start(mut cfg: NodeConfig) -> Result<NodeHandle, String> {
    cfg.apply_disk_profile()?;
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.data_dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    let (scraper, mut asks) = metrics::Scraper::new(cfg.node_id, cfg.cores);
    let scraper = Arc::new(scraper);
    let metrics_listener = match cfg.metrics_addr {
        Some(a) => Some(
            std::net::TcpListener::bind(a)
                .map_err(|e| format!("binding the metrics endpoint {a}: {e}"))?,
        ),
        None => None,
    };
    let local: Vec<Arc<crate::embed::LocalAcceptor>> =
        (0..cfg.cores).map(|_| Arc::default()).collect();
    for (core, acceptor) in local.iter().cloned().enumerate() {
        let asks = asks.remove(0);
        let (cfg, stop, ready_tx) = (cfg.clone(), stop.clone(), ready_tx.clone());
        let io_memory =
            cfg.log_config(0).dma_memory_bytes() * (cfg.groups as usize).div_ceil(cfg.cores).max(1);
        let t = crate::rt::Executor::new(format!("corelog-{}-{core}", cfg.node_id))
            .pin(cfg.pin.then_some(core))
            .io_memory(io_memory)
            .spawn(move || async move { run_core(cfg, core, stop, ready_tx, asks, acceptor).await })
            .map_err(|e| format!("starting core {core}: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..cfg.cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
            Err(_) => return Err("a core stopped while starting".into()),
        }
    }
    let metrics_server = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(|e| format!("metrics endpoint: {e}"))?;
            let (scraper, stop) = (scraper.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("corelog-{}-metrics", cfg.node_id))
                .spawn(move || metrics::serve(l, scraper, stop))
                .map_err(|e| format!("starting the metrics endpoint: {e}"))?;
            Some((addr, t))
        }
        None => None,
    };
    Ok(NodeHandle { stop, threads, scraper, metrics_server, local })
}

async fn run_core(
    cfg: NodeConfig,
    core: usize,
    stop_all: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    asks: std::sync::mpsc::Receiver<metrics::Ask>,
    acceptor: Arc<crate::embed::LocalAcceptor>,
) -> Result<(), String> {
    let cfg = Rc::new(cfg);
    let core_metrics = metrics::CoreMetrics::for_this_core(&cfg, core);
    let stop = Rc::new(Cell::new(false));
    let me = cfg.me().clone();
    let bind = |mut a: std::net::SocketAddr| {
        a.set_port(a.port() + core as u16);
        crate::rt::net::TcpListener::bind(a).map_err(|e| format!("binding {a}: {e}"))
    };
    let listeners = bind(me.peer_addr).and_then(|p| Ok((p, bind(me.client_addr)?)));
    let (peer_listener, client_listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let peer_tasks = Rc::new(Cell::new(0));
    let peers = Peers::start(&cfg, core, stop.clone(), &peer_tasks);
    let ctx = Rc::new(CoreCtx {
        cfg: cfg.clone(),
        core,
        groups: RefCell::new(HashMap::new()),
        stop: stop.clone(),
        client_connections: Rc::new(Cell::new(0)),
        peer_handshakes: Rc::new(Cell::new(0)),
        peer_tasks,
        errors_unknown_group: Cell::new(0),
    });
    let mut drivers = Vec::new();
    let tick = Duration::from_millis(cfg.tick_ms);
    for g in (core as u64..cfg.groups).step_by(cfg.cores) {
        let handle = Rc::new(GroupHandle::new(
            cfg.uncommitted_bytes_max,
            TickClock { start: Instant::now(), tick },
        ));
        match GroupDriver::open(g, cfg.clone(), handle.clone(), peers.clone()).await {
            Ok(d) => {
                ctx.groups.borrow_mut().insert(g, handle);
                drivers.push(crate::rt::spawn(d.run()));
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                stop.set(true);
                peers.wake_all();
                return Err(e);
            }
        }
    }
    let peer_server = crate::rt::spawn(peer::serve(ctx.clone(), peer_listener));
    let client_server = crate::rt::spawn(server::serve(ctx.clone(), client_listener));
    let local_server = crate::rt::spawn(server::serve_local(ctx.clone(), acceptor.clone()));
    let _ = ready.send(Ok(()));
    // The tick: wakes every group on this core when a tick of the clock is due (tick `k` is
    // due `k * tick_ms` after the loop starts; each driver counts by the clock every tick due,
    // however many a pause or a late wake-up missed); also watches for shutdown and answers
    // metrics requests.
    let clock = TickClock { start: Instant::now(), tick };
    for g in ctx.groups.borrow().values() {
        g.clock.set(clock);
    }
    let mut delivered = 0u64;
    while !stop_all.load(Ordering::SeqCst) {
        crate::rt::sleep(clock.at(delivered + 1).saturating_duration_since(Instant::now())).await;
        let due = clock.due(Instant::now());
        if due > delivered {
            // A wake-up: each driver counts the ticks due by the clock itself.
            for g in ctx.groups.borrow().values() {
                g.inbox.push(Input::Tick);
            }
            delivered = due;
        }
        metrics::answer(&asks, &core_metrics, || metrics::CoreExtra {
            client_connections: ctx.client_connections.get() as u64,
            peers: peers.link_states(),
        });
    }
    // Shutdown: stop accepting, stop the drivers (each closes its log after its in-flight
    // flushes), then the links.
    stop.set(true);
    for g in ctx.groups.borrow().values() {
        g.inbox.close();
    }
    for d in drivers {
        d.await;
    }
    peers.wake_all();
    acceptor.close();
    peer_server.await;
    client_server.await;
    local_server.await;
    // Connection tasks notice the stop within a read's stop check and close their sockets.
    // Left behind, a socket would outlive the core (its executor does not run the close), and
    // a peer writing to it would never learn that this node went away.
    let deadline = Instant::now() + CONNECTIONS_CLOSE_WAIT;
    while ctx.peer_tasks.get() + ctx.client_connections.get() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                core,
                peer_tasks = ctx.peer_tasks.get(),
                client_connections = ctx.client_connections.get(),
                "connections still open at shutdown"
            );
            break;
        }
        crate::rt::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
