//! A fault-injecting TCP proxy for tests of real processes (`corelog proxy`).
//!
//! This machine's kernel has no `netem`, so delay, loss and partitions between the processes
//! of a test cluster come from a proxy in user space, the approach of etcd's robustness tests
//! and TigerBeetle's real-process tests: every peer link of the cluster is pointed at a
//! listener of the proxy, which forwards to the real peer. A *route* is one listener, labelled
//! with the names of the two ends (`from` dials `to`); a *directed link* `A->B` is every byte
//! that flows from `A` to `B`, whichever end dialled: the requests on the routes `A->B` and the
//! replies on the routes `B->A`. Faults are set per directed link:
//!
//! - `delay A->B 10ms jitter 2ms`: each chunk read is released after the delay plus a uniform
//!   jitter in `[-jitter, +jitter]`, but never before the chunk read before it: a link keeps
//!   its order, as TCP does. Reading goes on while chunks wait, so a delayed link still
//!   pipelines (its throughput is not one chunk per delay).
//! - `blackhole A->B`: bytes are read and thrown away; the connections stay up (a partition
//!   that TCP has not noticed yet). A stream with a hole in it cannot go on, so when the
//!   blackhole lifts, the connections that lost bytes are reset, as TCP would after its
//!   retransmission timeout.
//! - `stall A->B`: bytes are held, not read: the kernel buffers fill, the sender blocks; when
//!   the stall lifts everything arrives, late (a partition that heals before TCP gives up).
//! - `reset A->B`: every connection carrying bytes from `A` to `B` is aborted now (RST).
//! - `bandwidth A->B 10MiB`: the link carries at most that many bytes per second (shared by
//!   its connections), in slices of 16 KiB.
//! - `heal A->B` clears the faults of a link, `heal` of every link.
//!
//! A link pattern may name both directions (`A<->B`) and use `*` for "every other name"
//! (`1<->*` isolates node 1). The same commands drive the proxy from a test
//! ([`FaultProxy::command`], or the typed methods) and from outside, as lines on its control
//! port (`corelog proxy --control ADDR --send 'delay 1->2 10ms'`); each line is answered with
//! one line, `ok ...` or `err ...`.
//!
//! Threads, not a runtime: per connection and direction one reader and one writer thread,
//! blocking on their sockets and on a condition variable; nothing polls or spins. With no
//! delay and no bandwidth cap set, the reader writes what it read itself (no hand-off to the
//! writer), so an idle proxy costs one extra pair of socket calls per chunk. Measured on the
//! dev VM (2 vCPUs shared with other builds, loopback, 64-byte ping-pong, 20 000 round trips,
//! `cargo test --release --test faultproxy -- --nocapture added_latency`): direct p50 14 µs /
//! p99 42 µs, through the proxy (both directions proxied) p50 46 µs / p99 113 µs: about 32 µs
//! added per round trip at the median (16 µs per crossing), 70 µs at p99. That is small
//! against a durable write (1-4 ms on this disk) but not nothing against a loopback round
//! trip, and noisy: with both CPUs busy a woken thread may wait for a 4 ms tick.
//!
//! What it does not do: drop single packets (TCP would retransmit them; a stream proxy can
//! only delay, hold, cut or reset), reorder bytes within a link, or corrupt bytes.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Errors of the proxy's control interface.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// A command or a link pattern that does not parse, with why.
    #[error("{0}")]
    Parse(String),
    /// A pattern that matches no known link.
    #[error("no link matches {0:?} (known names: {1})")]
    NoLink(String, String),
    /// A socket could not be bound or reached.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The faults of one directed link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Extra one-way delay.
    pub delay: Duration,
    /// Uniform jitter around the delay (never below zero, never reordering).
    pub jitter: Duration,
    /// Bytes are read and discarded.
    pub blackhole: bool,
    /// Bytes are held (not read) until the stall lifts.
    pub stall: bool,
    /// Most bytes per second, if capped.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl LinkFaults {
    fn is_clear(&self) -> bool {
        *self == LinkFaults::default()
    }

    /// Bytes can go straight from the reader to the socket.
    fn direct(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero() && self.bandwidth_bytes_per_sec.is_none()
    }
}

/// Counters of one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes delivered to the receiving end.
    pub bytes_forwarded: u64,
    /// Bytes thrown away by a blackhole.
    pub bytes_discarded: u64,
    /// Connections aborted by a reset (or by the lifting of a blackhole that lost bytes).
    pub resets: u64,
}

/// The state of one directed link, shared by the pipes that carry it.
struct LinkState {
    faults: Mutex<LinkFaults>,
    /// Signalled when the faults change (a stalled reader waits on it).
    changed: Condvar,
    /// When the bandwidth cap lets the next slice go.
    next_free: Mutex<Instant>,
    forwarded: AtomicU64,
    discarded: AtomicU64,
    resets: AtomicU64,
}

impl LinkState {
    fn new() -> LinkState {
        LinkState {
            faults: Mutex::new(LinkFaults::default()),
            changed: Condvar::new(),
            next_free: Mutex::new(Instant::now()),
            forwarded: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }

    fn faults(&self) -> LinkFaults {
        lock(&self.faults).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type LinkKey = (String, String);

/// One item waiting in a pipe.
enum Chunk {
    Data(Instant, Vec<u8>),
    Eof,
}

/// The queue between the reader and the writer of one direction of one connection.
#[derive(Default)]
struct PipeQueue {
    items: VecDeque<Chunk>,
    /// Someone (the writer thread, or the reader on its direct path) is writing.
    busy: bool,
    /// Release time of the last chunk queued: no chunk leaves before the one before it.
    last_release: Option<Instant>,
}

struct Pipe {
    link: Arc<LinkState>,
    q: Mutex<PipeQueue>,
    cv: Condvar,
    /// Bytes were thrown away on this pipe (its stream has a hole).
    lost_bytes: AtomicBool,
}

/// One proxied connection: `client` dialled the proxy, `server` is the real target.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// client -> server, then server -> client.
    pipes: [Arc<Pipe>; 2],
    dead: AtomicBool,
}

impl Conn {
    /// Aborts the connection: both ends see a reset.
    fn abort(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for s in [&self.client, &self.server] {
            set_linger_zero(s);
            // Wakes the blocked readers; the last close of each socket then sends the RST.
            let _ = s.shutdown(Shutdown::Read);
        }
        for p in &self.pipes {
            let busy = lock(&p.q).busy;
            p.cv.notify_all();
            p.link.changed.notify_all();
            if busy {
                // A writer may be blocked on a full socket: unblock it too.
                let _ = self.client.shutdown(Shutdown::Both);
                let _ = self.server.shutdown(Shutdown::Both);
            }
        }
    }

    /// Closes the connection normally (after an end of stream).
    fn close(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
        for p in &self.pipes {
            p.cv.notify_all();
            p.link.changed.notify_all();
        }
    }
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

struct Route {
    from: String,
    to: String,
    listen: SocketAddr,
    target: SocketAddr,
    listener: TcpListener,
}

struct Inner {
    links: Mutex<HashMap<LinkKey, Arc<LinkState>>>,
    names: Mutex<Vec<String>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    routes: Mutex<Vec<Arc<Route>>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
    seed: u64,
}

impl Inner {
    fn link(&self, from: &str, to: &str) -> Arc<LinkState> {
        lock(&self.links)
            .entry((from.to_string(), to.to_string()))
            .or_insert_with(|| Arc::new(LinkState::new()))
            .clone()
    }

    fn conns_carrying(&self, link: &Arc<LinkState>) -> Vec<Arc<Conn>> {
        lock(&self.conns)
            .values()
            .filter(|c| c.pipes.iter().any(|p| Arc::ptr_eq(&p.link, link)))
            .cloned()
            .collect()
    }
}

/// The fault proxy. Dropping it stops its listeners and aborts its connections.
pub struct FaultProxy {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    control: Mutex<Option<(SocketAddr, TcpListener)>>,
}

impl Default for FaultProxy {
    fn default() -> Self {
        FaultProxy::new()
    }
}

impl FaultProxy {
    /// A proxy with no routes yet.
    pub fn new() -> FaultProxy {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        FaultProxy::with_seed(seed)
    }

    /// A proxy whose jitter is drawn from `seed`.
    pub fn with_seed(seed: u64) -> FaultProxy {
        FaultProxy {
            inner: Arc::new(Inner {
                links: Mutex::default(),
                names: Mutex::default(),
                conns: Mutex::default(),
                routes: Mutex::default(),
                next_conn: AtomicU64::new(1),
                stop: AtomicBool::new(false),
                seed,
            }),
            threads: Mutex::default(),
            control: Mutex::default(),
        }
    }

    /// Listens on `listen` (port 0: any) and forwards each connection to `target`; the
    /// connection is `from` dialling `to`. Returns the address listened on.
    pub fn add_route(
        &self,
        from: &str,
        to: &str,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| ProxyError::Io(format!("binding {listen}"), e))?;
        self.start_route(from, to, listener, target)
    }

    /// Routes for `ports` consecutive ports (the per-core ports of a corelog node: core `i`
    /// dials port + `i`): listens on `ports` consecutive ports of `ip` (picked free) and
    /// forwards port + `i` to `target` port + `i`. Returns the first listening address.
    pub fn add_routes(
        &self,
        from: &str,
        to: &str,
        ip: std::net::IpAddr,
        target: SocketAddr,
        ports: u16,
    ) -> Result<SocketAddr, ProxyError> {
        let ports = ports.max(1);
        let mut last_err = None;
        for _ in 0..50 {
            let first = TcpListener::bind(SocketAddr::new(ip, 0))
                .map_err(|e| ProxyError::Io(format!("binding {ip}:0"), e))?;
            let base = first.local_addr().map_err(|e| ProxyError::Io("local_addr".into(), e))?;
            if u32::from(base.port()) + u32::from(ports) > 65535 {
                continue;
            }
            let mut listeners = vec![first];
            for i in 1..ports {
                match TcpListener::bind(SocketAddr::new(ip, base.port() + i)) {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                }
            }
            if listeners.len() == usize::from(ports) {
                for (i, l) in listeners.into_iter().enumerate() {
                    let mut t = target;
                    t.set_port(target.port() + i as u16);
                    self.start_route(from, to, l, t)?;
                }
                return Ok(base);
            }
        }
        Err(ProxyError::Io(
            format!("finding {ports} consecutive free ports on {ip}"),
            last_err.unwrap_or_else(|| std::io::Error::other("none found")),
        ))
    }

    fn start_route(
        &self,
        from: &str,
        to: &str,
        listener: TcpListener,
        target: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        let listen = listener.local_addr().map_err(|e| ProxyError::Io("local_addr".into(), e))?;
        {
            let mut names = lock(&self.inner.names);
            for n in [from, to] {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
        }
        let route = Arc::new(Route {
            from: from.to_string(),
            to: to.to_string(),
            listen,
            target,
            listener,
        });
        lock(&self.inner.routes).push(route.clone());
        let inner = self.inner.clone();
        let t = std::thread::Builder::new()
            .name(format!("proxy {from}->{to}"))
            .spawn(move || accept_loop(inner, route))
            .map_err(|e| ProxyError::Io("spawning a thread".into(), e))?;
        lock(&self.threads).push(t);
        Ok(listen)
    }

    /// Serves the line protocol on `addr` (port 0: any); returns the address.
    pub fn serve_control(&self, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        let listener =
            TcpListener::bind(addr).map_err(|e| ProxyError::Io(format!("binding {addr}"), e))?;
        let local = listener.local_addr().map_err(|e| ProxyError::Io("local_addr".into(), e))?;
        let l2 = listener.try_clone().map_err(|e| ProxyError::Io("try_clone".into(), e))?;
        *lock(&self.control) = Some((local, l2));
        let inner = self.inner.clone();
        let t = std::thread::Builder::new()
            .name("proxy control".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if inner.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    let inner = inner.clone();
                    std::thread::spawn(move || control_conn(&inner, s));
                }
            })
            .map_err(|e| ProxyError::Io("spawning a thread".into(), e))?;
        lock(&self.threads).push(t);
        Ok(local)
    }

    /// Runs one command of the line protocol (see the module docs); returns the answer text
    /// (without the leading `ok`).
    pub fn command(&self, line: &str) -> Result<String, ProxyError> {
        command(&self.inner, line)
    }

    /// Sets the delay and jitter of the links matching `pattern` (zero clears them).
    pub fn delay(
        &self,
        pattern: &str,
        delay: Duration,
        jitter: Duration,
    ) -> Result<(), ProxyError> {
        self.update(pattern, |f| {
            f.delay = delay;
            f.jitter = jitter;
        })
    }

    /// Throws away every byte on the links matching `pattern`.
    pub fn blackhole(&self, pattern: &str) -> Result<(), ProxyError> {
        self.update(pattern, |f| f.blackhole = true)
    }

    /// Holds every byte on the links matching `pattern`.
    pub fn stall(&self, pattern: &str) -> Result<(), ProxyError> {
        self.update(pattern, |f| f.stall = true)
    }

    /// Caps the links matching `pattern` at `bytes_per_sec` (`None` lifts the cap).
    pub fn bandwidth(&self, pattern: &str, bytes_per_sec: Option<u64>) -> Result<(), ProxyError> {
        self.update(pattern, |f| f.bandwidth_bytes_per_sec = bytes_per_sec.filter(|&b| b > 0))
    }

    /// Aborts every connection that carries a link matching `pattern`; returns how many.
    pub fn reset(&self, pattern: &str) -> Result<usize, ProxyError> {
        let keys = expand(&self.inner, pattern)?;
        Ok(reset_links(&self.inner, &keys))
    }

    /// Clears the faults of the links matching `pattern`.
    pub fn heal(&self, pattern: &str) -> Result<(), ProxyError> {
        self.update(pattern, |f| *f = LinkFaults::default())
    }

    /// Clears every fault.
    pub fn heal_all(&self) {
        let keys: Vec<LinkKey> = lock(&self.inner.links).keys().cloned().collect();
        apply(&self.inner, &keys, |f| *f = LinkFaults::default());
    }

    /// The faults of the directed link `from -> to`.
    pub fn faults(&self, from: &str, to: &str) -> LinkFaults {
        self.inner.link(from, to).faults()
    }

    /// The counters of the directed link `from -> to`.
    pub fn stats(&self, from: &str, to: &str) -> LinkStats {
        let l = self.inner.link(from, to);
        LinkStats {
            bytes_forwarded: l.forwarded.load(Ordering::Relaxed),
            bytes_discarded: l.discarded.load(Ordering::Relaxed),
            resets: l.resets.load(Ordering::Relaxed),
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    fn update(&self, pattern: &str, f: impl Fn(&mut LinkFaults)) -> Result<(), ProxyError> {
        let keys = expand(&self.inner, pattern)?;
        apply(&self.inner, &keys, f);
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        for r in lock(&self.inner.routes).iter() {
            // SAFETY: shutting down a listening socket wakes its blocked accept (Linux).
            unsafe { libc::shutdown(r.listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some((_, l)) = lock(&self.control).take() {
            // SAFETY: as above.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let conns: Vec<Arc<Conn>> = lock(&self.inner.conns).values().cloned().collect();
        for c in conns {
            c.abort();
        }
        for l in lock(&self.inner.links).values() {
            l.changed.notify_all();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

/// Applies `f` to the faults of `keys`; resets the connections whose lifted blackhole lost
/// bytes, and wakes stalled readers.
fn apply(inner: &Inner, keys: &[LinkKey], f: impl Fn(&mut LinkFaults)) {
    for (from, to) in keys {
        let link = inner.link(from, to);
        let lifted_blackhole = {
            let mut faults = lock(&link.faults);
            let before = faults.blackhole;
            f(&mut faults);
            before && !faults.blackhole
        };
        link.changed.notify_all();
        if lifted_blackhole {
            for c in inner.conns_carrying(&link) {
                let holed = c
                    .pipes
                    .iter()
                    .any(|p| Arc::ptr_eq(&p.link, &link) && p.lost_bytes.load(Ordering::SeqCst));
                if holed {
                    link.resets.fetch_add(1, Ordering::Relaxed);
                    c.abort();
                }
            }
        }
    }
}

fn reset_links(inner: &Inner, keys: &[LinkKey]) -> usize {
    let mut n = 0;
    for (from, to) in keys {
        let link = inner.link(from, to);
        for c in inner.conns_carrying(&link) {
            if !c.dead.load(Ordering::SeqCst) {
                link.resets.fetch_add(1, Ordering::Relaxed);
                c.abort();
                n += 1;
            }
        }
    }
    n
}

/// The directed links a pattern names: `A->B`, `A<->B`, with `*` for every other name.
fn expand(inner: &Inner, pattern: &str) -> Result<Vec<LinkKey>, ProxyError> {
    let (a, b, both) = if let Some((a, b)) = pattern.split_once("<->") {
        (a.trim(), b.trim(), true)
    } else if let Some((a, b)) = pattern.split_once("->") {
        (a.trim(), b.trim(), false)
    } else {
        return Err(ProxyError::Parse(format!("{pattern:?} is not a link (A->B or A<->B)")));
    };
    if a.is_empty() || b.is_empty() {
        return Err(ProxyError::Parse(format!("{pattern:?}: a link needs two names")));
    }
    let names = lock(&inner.names).clone();
    let pick = |x: &str| -> Vec<String> {
        if x == "*" { names.clone() } else { names.iter().filter(|n| *n == x).cloned().collect() }
    };
    let mut keys = Vec::new();
    for x in pick(a) {
        for y in pick(b) {
            if x == y {
                continue;
            }
            keys.push((x.clone(), y.clone()));
            if both {
                keys.push((y.clone(), x.clone()));
            }
        }
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Err(ProxyError::NoLink(pattern.to_string(), names.join(",")));
    }
    Ok(keys)
}

/// Parses `10ms`, `1.5ms`, `200us`, `2s`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, ProxyError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| ProxyError::Parse(format!("{s:?} is not a duration")))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        _ => return Err(ProxyError::Parse(format!("{s:?}: the unit is one of s, ms, us, ns"))),
    };
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(ProxyError::Parse(format!("{s:?} is out of range")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate in bytes per second: `10MiB`, `500KB`, `1GiB`, `12345`, `off`.
pub fn parse_rate(s: &str) -> Result<Option<u64>, ProxyError> {
    let s = s.trim().trim_end_matches("/s");
    if s == "off" || s == "0" {
        return Ok(None);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| ProxyError::Parse(format!("{s:?} is not a rate")))?;
    let mul = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(ProxyError::Parse(format!(
                "{s:?}: the unit is B, KB, MB, GB, KiB, MiB or GiB"
            )));
        }
    };
    let r = v * mul;
    if !r.is_finite() || !(1.0..=1e12).contains(&r) {
        return Err(ProxyError::Parse(format!("{s:?} is out of range")));
    }
    Ok(Some(r as u64))
}

fn command(inner: &Inner, line: &str) -> Result<String, ProxyError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let arity = |n: usize| {
        if words.len() == n {
            Ok(())
        } else {
            Err(ProxyError::Parse(format!("{:?} takes {} argument(s)", words[0], n - 1)))
        }
    };
    match words.first().copied() {
        None => Err(ProxyError::Parse("empty command".into())),
        Some("delay") => {
            if !(words.len() == 3 || (words.len() == 5 && words[3] == "jitter")) {
                return Err(ProxyError::Parse("usage: delay A->B 10ms [jitter 2ms]".into()));
            }
            let keys = expand(inner, words[1])?;
            let d = parse_duration(words[2])?;
            let j = if words.len() == 5 { parse_duration(words[4])? } else { Duration::ZERO };
            apply(inner, &keys, |f| {
                f.delay = d;
                f.jitter = j;
            });
            Ok(format!("{} link(s)", keys.len()))
        }
        Some("blackhole") | Some("stall") => {
            arity(2)?;
            let keys = expand(inner, words[1])?;
            let hole = words[0] == "blackhole";
            apply(inner, &keys, |f| if hole { f.blackhole = true } else { f.stall = true });
            Ok(format!("{} link(s)", keys.len()))
        }
        Some("bandwidth") => {
            arity(3)?;
            let keys = expand(inner, words[1])?;
            let r = parse_rate(words[2])?;
            apply(inner, &keys, |f| f.bandwidth_bytes_per_sec = r);
            Ok(format!("{} link(s)", keys.len()))
        }
        Some("reset") => {
            arity(2)?;
            let keys = expand(inner, words[1])?;
            Ok(format!("{} connection(s) reset", reset_links(inner, &keys)))
        }
        Some("heal") => {
            let keys = match words.len() {
                1 => lock(&inner.links).keys().cloned().collect(),
                2 => expand(inner, words[1])?,
                _ => return Err(ProxyError::Parse("usage: heal [A->B]".into())),
            };
            apply(inner, &keys, |f| *f = LinkFaults::default());
            Ok(format!("{} link(s)", keys.len()))
        }
        Some("status") => {
            arity(1)?;
            let mut out = Vec::new();
            for r in lock(&inner.routes).iter() {
                out.push(format!("route {}->{} {} => {}", r.from, r.to, r.listen, r.target));
            }
            let links = lock(&inner.links);
            let mut keys: Vec<&LinkKey> = links.keys().collect();
            keys.sort();
            for k in keys {
                let l = &links[k];
                let f = l.faults();
                out.push(format!(
                    "link {}->{} {} forwarded={} discarded={} resets={}",
                    k.0,
                    k.1,
                    describe(&f),
                    l.forwarded.load(Ordering::Relaxed),
                    l.discarded.load(Ordering::Relaxed),
                    l.resets.load(Ordering::Relaxed)
                ));
            }
            out.push(format!("connections {}", lock(&inner.conns).len()));
            Ok(out.join("; "))
        }
        Some(w) => Err(ProxyError::Parse(format!(
            "unknown command {w:?} (delay, blackhole, stall, bandwidth, reset, heal, status)"
        ))),
    }
}

fn describe(f: &LinkFaults) -> String {
    if f.is_clear() {
        return "clear".into();
    }
    let mut v = Vec::new();
    if !f.delay.is_zero() || !f.jitter.is_zero() {
        v.push(format!("delay={:?} jitter={:?}", f.delay, f.jitter));
    }
    if f.blackhole {
        v.push("blackhole".into());
    }
    if f.stall {
        v.push("stall".into());
    }
    if let Some(b) = f.bandwidth_bytes_per_sec {
        v.push(format!("bandwidth={b}B/s"));
    }
    v.join(",")
}

fn control_conn(inner: &Inner, s: TcpStream) {
    let Ok(mut w) = s.try_clone() else { return };
    let r = std::io::BufReader::new(s);
    for line in std::io::BufRead::lines(r) {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match command(inner, &line) {
            Ok(t) => format!("ok {t}\n"),
            Err(e) => format!("err {e}\n"),
        };
        if w.write_all(reply.as_bytes()).is_err() {
            break;
        }
    }
}

/// Sends one command line to a proxy's control port and returns its answer line.
pub fn send_command(control: SocketAddr, line: &str) -> Result<String, ProxyError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| ProxyError::Io(what, e)
    };
    let mut s = TcpStream::connect_timeout(&control, Duration::from_secs(2))
        .map_err(io(&format!("connecting to {control}")))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io("set_read_timeout"))?;
    s.write_all(format!("{}\n", line.trim()).as_bytes()).map_err(io("sending"))?;
    let mut r = std::io::BufReader::new(s);
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut r, &mut answer).map_err(io("reading the answer"))?;
    Ok(answer.trim_end().to_string())
}

fn accept_loop(inner: Arc<Inner>, route: Arc<Route>) {
    loop {
        let accepted = route.listener.accept();
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "proxy accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let inner = inner.clone();
        let route = route.clone();
        std::thread::spawn(move || open_conn(inner, route, client));
    }
}

fn open_conn(inner: Arc<Inner>, route: Arc<Route>, client: TcpStream) {
    let server = match TcpStream::connect_timeout(&route.target, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            // The target is down: the dialler sees its connection reset, as it would directly
            // (there, a refused connect).
            tracing::debug!(target = %route.target, error = %e, "proxy target unreachable");
            set_linger_zero(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let pipe = |link| {
        Arc::new(Pipe {
            link,
            q: Mutex::default(),
            cv: Condvar::new(),
            lost_bytes: AtomicBool::new(false),
        })
    };
    let clones = (|| Ok::<_, std::io::Error>((client.try_clone()?, server.try_clone()?)))();
    let Ok((client2, server2)) = clones else { return };
    let conn = Arc::new(Conn {
        client,
        server,
        pipes: [pipe(inner.link(&route.from, &route.to)), pipe(inner.link(&route.to, &route.from))],
        dead: AtomicBool::new(false),
    });
    lock(&inner.conns).insert(id, conn.clone());
    if inner.stop.load(Ordering::SeqCst) {
        conn.abort();
    }
    let mut threads = Vec::new();
    for (dir, src, dst) in
        [(0usize, client2, conn.server.try_clone()), (1, server2, conn.client.try_clone())]
    {
        let Ok(dst) = dst else {
            conn.abort();
            continue;
        };
        let (c1, c2) = (conn.clone(), conn.clone());
        let dst2 = match dst.try_clone() {
            Ok(d) => d,
            Err(_) => {
                conn.abort();
                continue;
            }
        };
        let seed = inner.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ dir as u64;
        threads.push(std::thread::spawn(move || reader(c1, dir, src, dst, seed)));
        threads.push(std::thread::spawn(move || writer(c2, dir, dst2)));
    }
    for t in threads {
        let _ = t.join();
    }
    lock(&inner.conns).remove(&id);
}

/// A small xorshift generator for the jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const CHUNK_BYTES: usize = 64 << 10;
const SLICE_BYTES: usize = 16 << 10;

fn reader(conn: Arc<Conn>, dir: usize, mut src: TcpStream, mut dst: TcpStream, seed: u64) {
    let pipe = conn.pipes[dir].clone();
    let link = pipe.link.clone();
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        // A stalled link is not read: its bytes wait in the kernel's buffers.
        {
            let mut f = lock(&link.faults);
            while f.stall && !conn.dead.load(Ordering::SeqCst) {
                f = link.changed.wait(f).unwrap_or_else(|e| e.into_inner());
            }
        }
        if conn.dead.load(Ordering::SeqCst) {
            break;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                push(&pipe, Chunk::Eof);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // A reset or error on one end: the other end sees a reset too.
                conn.abort();
                break;
            }
        };
        // Bytes read just before a stall are held until it lifts.
        let faults = {
            let mut f = lock(&link.faults);
            while f.stall && !conn.dead.load(Ordering::SeqCst) {
                f = link.changed.wait(f).unwrap_or_else(|e| e.into_inner());
            }
            f.clone()
        };
        if conn.dead.load(Ordering::SeqCst) {
            break;
        }
        if faults.blackhole {
            pipe.lost_bytes.store(true, Ordering::SeqCst);
            link.discarded.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let mut q = lock(&pipe.q);
        if faults.direct() && q.items.is_empty() && !q.busy {
            // The fast path: nothing waits before these bytes, so they go now, from here.
            q.busy = true;
            drop(q);
            let r = dst.write_all(&buf[..n]);
            if r.is_ok() {
                link.forwarded.fetch_add(n as u64, Ordering::Relaxed);
            }
            let mut q = lock(&pipe.q);
            q.busy = false;
            q.last_release = Some(now);
            drop(q);
            pipe.cv.notify_all();
            if r.is_err() {
                conn.abort();
                break;
            }
            continue;
        }
        let mut release = now + faults.delay;
        if !faults.jitter.is_zero() {
            let j = faults.jitter.as_nanos() as u64;
            let off = rng.next() % (2 * j + 1);
            release = (now + faults.delay + Duration::from_nanos(off))
                .checked_sub(faults.jitter)
                .unwrap_or(now)
                .max(now);
        }
        if let Some(last) = q.last_release {
            release = release.max(last);
        }
        q.last_release = Some(release);
        q.items.push_back(Chunk::Data(release, buf[..n].to_vec()));
        drop(q);
        pipe.cv.notify_all();
    }
    pipe.cv.notify_all();
}

fn push(pipe: &Pipe, c: Chunk) {
    lock(&pipe.q).items.push_back(c);
    pipe.cv.notify_all();
}

fn writer(conn: Arc<Conn>, dir: usize, mut dst: TcpStream) {
    let pipe = conn.pipes[dir].clone();
    let link = pipe.link.clone();
    loop {
        let chunk = {
            let mut q = lock(&pipe.q);
            loop {
                if conn.dead.load(Ordering::SeqCst) {
                    return;
                }
                if !q.busy
                    && let Some(c) = q.items.pop_front()
                {
                    q.busy = true;
                    break c;
                }
                q = pipe.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let done = |ok: bool| {
            lock(&pipe.q).busy = false;
            pipe.cv.notify_all();
            ok
        };
        let (release, data) = match chunk {
            Chunk::Eof => {
                done(true);
                conn.close();
                return;
            }
            Chunk::Data(r, d) => (r, d),
        };
        if !sleep_until(&conn, &pipe, release) {
            done(false);
            return;
        }
        let mut ok = true;
        for slice in data.chunks(SLICE_BYTES) {
            if link.faults().blackhole {
                pipe.lost_bytes.store(true, Ordering::SeqCst);
                link.discarded.fetch_add(slice.len() as u64, Ordering::Relaxed);
                continue;
            }
            if let Some(rate) = link.faults().bandwidth_bytes_per_sec {
                let at = {
                    let mut next = lock(&link.next_free);
                    let at = (*next).max(Instant::now());
                    *next = at + Duration::from_secs_f64(slice.len() as f64 / rate as f64);
                    at
                };
                if !sleep_until(&conn, &pipe, at) {
                    ok = false;
                    break;
                }
            }
            if dst.write_all(slice).is_err() {
                conn.abort();
                ok = false;
                break;
            }
            link.forwarded.fetch_add(slice.len() as u64, Ordering::Relaxed);
        }
        if !done(ok) {
            return;
        }
    }
}

/// Sleeps until `t` (waking early only if the connection dies); false if it died.
fn sleep_until(conn: &Conn, pipe: &Pipe, t: Instant) -> bool {
    let mut q = lock(&pipe.q);
    loop {
        if conn.dead.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        q = pipe.cv.wait_timeout(q, t - now).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Arguments of `corelog proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// A route `FROM->TO=LISTEN=TARGET`, e.g. `1->2=127.0.0.1:8100=127.0.0.1:7100` (node 1
    /// dials node 2's peer port through 127.0.0.1:8100). Repeat for every directed link.
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Consecutive ports per route (the nodes' cores): LISTEN port + i forwards to TARGET
    /// port + i.
    #[arg(long, default_value_t = 1)]
    pub ports: u16,
    /// The control port (line protocol: delay, blackhole, stall, bandwidth, reset, heal,
    /// status).
    #[arg(long, default_value = "127.0.0.1:7099")]
    pub control: SocketAddr,
    /// Send this command to a running proxy's control port, print the answer and exit.
    #[arg(long)]
    pub send: Option<String>,
}

/// Runs `corelog proxy`: either a proxy until SIGINT/SIGTERM, or one command to a running one.
pub fn run(args: &ProxyArgs) -> ExitCode {
    if let Some(line) = &args.send {
        return match send_command(args.control, line) {
            Ok(a) => {
                println!("{a}");
                if a.starts_with("ok") { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("corelog proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.routes.is_empty() {
        eprintln!("corelog proxy: give at least one --route FROM->TO=LISTEN=TARGET (or --send)");
        return ExitCode::FAILURE;
    }
    let proxy = FaultProxy::new();
    for r in &args.routes {
        let parsed = (|| {
            let (link, rest) = r.split_once('=')?;
            let (from, to) = link.split_once("->")?;
            let (listen, target) = rest.split_once('=')?;
            Some((from, to, listen.parse::<SocketAddr>().ok()?, target.parse::<SocketAddr>().ok()?))
        })();
        let Some((from, to, listen, target)) = parsed else {
            eprintln!("corelog proxy: {r:?} is not FROM->TO=LISTEN=TARGET");
            return ExitCode::FAILURE;
        };
        for i in 0..args.ports.max(1) {
            let (mut l, mut t) = (listen, target);
            l.set_port(listen.port() + i);
            t.set_port(target.port() + i);
            if let Err(e) = proxy.add_route(from, to, l, t) {
                eprintln!("corelog proxy: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("corelog proxy: {from}->{to}: {l} => {t}");
        }
    }
    match proxy.serve_control(args.control) {
        Ok(a) => eprintln!(
            "corelog proxy: control on {a} (try: corelog proxy --control {a} --send status)"
        ),
        Err(e) => {
            eprintln!("corelog proxy: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: blocking SIGINT and SIGTERM and waiting for one of them with sigwait, on
    // properly initialised signal sets.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(set.as_ptr(), &mut sig);
    }
    eprintln!("corelog proxy: stopping");
    drop(proxy);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1.5ms").unwrap(), Duration::from_micros(1500));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert_eq!(parse_rate("10MiB").unwrap(), Some(10 << 20));
        assert_eq!(parse_rate("500KB/s").unwrap(), Some(500_000));
        assert_eq!(parse_rate("off").unwrap(), None);
        assert!(parse_rate("10 furlongs").is_err());
    }

    #[test]
    fn patterns_expand_to_known_links() {
        let p = FaultProxy::with_seed(1);
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (a, b) in [("1", "2"), ("2", "1"), ("1", "3"), ("3", "1"), ("2", "3"), ("3", "2")] {
            p.add_route(a, b, any, target).unwrap();
        }
        let k = |v: &[(&str, &str)]| -> Vec<LinkKey> {
            v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        assert_eq!(expand(&p.inner, "1->2").unwrap(), k(&[("1", "2")]));
        assert_eq!(expand(&p.inner, "1<->2").unwrap(), k(&[("1", "2"), ("2", "1")]));
        assert_eq!(
            expand(&p.inner, "1<->*").unwrap(),
            k(&[("1", "2"), ("1", "3"), ("2", "1"), ("3", "1")])
        );
        assert_eq!(expand(&p.inner, "*->3").unwrap(), k(&[("1", "3"), ("2", "3")]));
        assert!(matches!(expand(&p.inner, "1->9"), Err(ProxyError::NoLink(..))));
        assert!(matches!(expand(&p.inner, "12"), Err(ProxyError::Parse(_))));
        assert!(p.command("delay 1->2 10ms jitter 2ms").is_ok());
        assert_eq!(
            p.faults("1", "2"),
            LinkFaults {
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(2),
                ..Default::default()
            }
        );
        assert!(p.faults("2", "1").is_clear());
        assert!(p.command("blackhole 1->").is_err());
        assert!(p.command("frobnicate 1->2").is_err());
        assert!(p.command("heal").is_ok());
        assert!(p.faults("1", "2").is_clear());
    }
}
