//! Replication transport between the cores of different nodes.
//!
//! Core `i` of a node talks only to core `i` of its peers: core `i` listens on the node's peer
//! port + `i`, and dials each peer's peer port + `i`. Each node dials each peer once per core
//! and sends everything for that peer (appends and heartbeats of all its groups on this core)
//! on that connection; it receives on the connection the peer dialed. So a pair of cores
//! shares two connections, one per direction. The choice: each sender owns its connection end
//! to end (reconnect, backoff, queue), there is no tie-break on who dials, and no socket is
//! shared by a reader task and a writer task.
//!
//! A connection starts with `Hello` (cluster id, node id, core, wire version); a mismatch is
//! answered with an `Error` message and the connection is closed. Messages queued while a
//! link is down are dropped: consensus retries what matters, and a dead peer cannot make the
//! queue grow. The queue of a live link is bounded in bytes too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::rt::net::{TcpListener, TcpStream};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::group::Input;
use super::{CoreCtx, STOP_CHECK, TaskCount, sleep_unless_stopped, until_stopped};
use crate::consensus::{Entry, Message};
use crate::frame::FrameLimits;
use crate::wire::{self, ENVELOPE_LEN, Kind};

/// Meta of `Hello` and `HelloOk`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
struct HelloMeta {
    cluster_id: U64,
    node_id: U64,
    core: U32,
    /// The sender's timing: `election_ticks` in the high 16 bits, `tick_ms` in the low 16
    /// (each saturated); 0 from a node that does not say (an older build). A leader's lease is
    /// safe only because the other voters wait at least as long as it, counted the same way,
    /// before they help elect another leader, so every node must have the same: a peer that
    /// states another is refused.
    timing: U32,
}

/// This node's timing as a hello states it (see [`HelloMeta::timing`]).
fn timing(cfg: &super::config::NodeConfig) -> u32 {
    let ticks = cfg.election_ticks.min(0xffff);
    let ms = u32::try_from(cfg.tick_ms.min(0xffff)).expect("at most 16 bits");
    ticks << 16 | ms
}

/// How a refusal from a peer's handshake begins (see `drive_link`).
const REFUSED: &str = "peer refused the link: ";

/// Bytes queued for one peer before further messages are dropped.
const LINK_QUEUE_BYTES_MAX: usize = 64 << 20;

/// Appends whose frames come to at least this many bytes are sent straight from the leader's
/// log (see [`Peers::send_frames`]); smaller ones are copied into the queue, where they join
/// whatever else goes out in the link's next write.
const DIRECT_SEND_MIN_BYTES: usize = 16 << 10;

/// Most slices in one vectored send (the kernel allows 1,024).
const DIRECT_SEND_MAX_SLICES: usize = 64;

struct Link {
    peer: u64,
    addr: SocketAddr,
    queue: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    connected: Cell<bool>,
    dropped: Cell<u64>,
    /// The connected socket, while the link task holds it (cleared before it is closed, so a
    /// reused descriptor number is never written to). The task is only ever dropped midway when
    /// the executor is torn down, after the group drivers, so nothing sends after that.
    fd: Cell<Option<std::os::fd::RawFd>>,
    /// The link task is writing bytes it took from `queue`.
    writing: Cell<bool>,
    /// Appends sent straight from the log (the socket took at least a byte), and those of them
    /// the socket took only in part.
    direct_sends: Cell<u64>,
    direct_partial: Cell<u64>,
}

impl Link {
    /// A link that is down until its task connects it.
    fn new(peer: u64, addr: SocketAddr) -> Link {
        Link {
            peer,
            addr,
            queue: RefCell::new(Vec::new()),
            waker: Cell::new(None),
            connected: Cell::new(false),
            dropped: Cell::new(0),
            fd: Cell::new(None),
            writing: Cell::new(false),
            direct_sends: Cell::new(0),
            direct_partial: Cell::new(0),
        }
    }
}

/// What the metrics show of one outbound link.
#[derive(Debug, Clone, Copy)]
pub struct LinkState {
    pub peer: u64,
    pub up: bool,
    /// Messages dropped because the link was down or its queue full.
    pub dropped: u64,
    /// Appends sent straight from the leader's log (no copy into the queue; a send the socket
    /// took nothing of went through the queue and is not counted).
    pub direct_sends: u64,
    /// Those of them the socket took only in part (the rest went through the queue).
    pub direct_partial: u64,
}

/// The outbound links of one core.
pub(crate) struct Peers {
    links: HashMap<u64, Rc<Link>>,
}

impl Peers {
    /// Links to every other member, each driven by its own task.
    pub fn start(
        ctx_cfg: &super::config::NodeConfig,
        core: usize,
        stop: Rc<Cell<bool>>,
        tasks: &Rc<Cell<usize>>,
    ) -> Rc<Peers> {
        let mut links = HashMap::new();
        for m in &ctx_cfg.members {
            if m.id == ctx_cfg.node_id {
                continue;
            }
            let mut addr = m.peer_addr;
            addr.set_port(addr.port() + core as u16);
            let link = Rc::new(Link::new(m.id, addr));
            let hello = HelloMeta {
                cluster_id: U64::new(ctx_cfg.cluster_id),
                node_id: U64::new(ctx_cfg.node_id),
                core: U32::new(core as u32),
                timing: U32::new(timing(ctx_cfg)),
            };
            let running = TaskCount::new(tasks);
            crate::rt::spawn(drive_link(link.clone(), hello, stop.clone(), running)).detach();
            links.insert(m.id, link);
        }
        Rc::new(Peers { links })
    }

    /// Queues `m` for its destination; dropped if the link is down or its queue is full. An
    /// ack carries `ack_local_ns` when given (see [`super::codec`]).
    pub fn send(&self, group: u64, m: &Message, ack_local_ns: Option<u64>) {
        self.queue(m.to, |q| super::codec::encode_timed(q, group, m, ack_local_ns));
    }

    /// Queues the append `m` whose entries are `head`, the leader's log frames `frames` (sent
    /// as they are), and `tail` (see [`super::codec::encode_append_frames`]).
    ///
    /// Large frames are not copied: when nothing is queued or being written on the link, the
    /// message goes to the socket at once in one vectored, non-blocking send from the log's
    /// own memory (the kernel copies it into the socket buffer, as any send does), and only
    /// what the socket did not take is copied into the queue for the link task. Order is kept:
    /// a direct send happens only when nothing sent before it is still waiting.
    pub fn send_frames(
        &self,
        group: u64,
        m: &Message,
        head: &[Entry],
        frames: &[&[u8]],
        tail: &[Entry],
    ) {
        let large = frames.len() + 2 <= DIRECT_SEND_MAX_SLICES
            && frames.iter().map(|f| f.len()).sum::<usize>() >= DIRECT_SEND_MIN_BYTES;
        let Some((link, fd)) = large.then(|| self.idle_link(m.to)).flatten() else {
            self.queue(m.to, |q| {
                super::codec::encode_append_frames(q, group, m, head, frames, tail)
            });
            return;
        };
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        super::codec::encode_append_around(&mut pre, &mut post, group, m, head, frames, tail);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() + 2);
        parts.push(&pre);
        parts.extend_from_slice(frames);
        parts.push(&post);
        let sent = send_vectored(fd, &parts);
        if sent > 0 {
            link.direct_sends.set(link.direct_sends.get() + 1);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if sent == total {
            return;
        }
        // The socket is full (or failed: the link task's next write finds out): the rest goes
        // through the queue, in order, ahead of anything queued later.
        if sent > 0 {
            link.direct_partial.set(link.direct_partial.get() + 1);
        }
        queue_unsent(&parts, sent, &mut link.queue.borrow_mut());
        if let Some(w) = link.waker.take() {
            w.wake();
        }
    }

    /// The link to `to` and its socket, when it is connected with nothing queued and nothing
    /// being written: a send on the socket now keeps the order of the link's messages.
    fn idle_link(&self, to: u64) -> Option<(&Link, std::os::fd::RawFd)> {
        let link = self.links.get(&to)?;
        let fd = link.fd.get()?;
        let idle = link.connected.get() && !link.writing.get() && link.queue.borrow().is_empty();
        idle.then_some((&**link, fd))
    }

    fn queue(&self, to: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(link) = self.links.get(&to) else {
            return;
        };
        if !link.connected.get() {
            link.dropped.set(link.dropped.get() + 1);
            return;
        }
        let mut q = link.queue.borrow_mut();
        if q.len() > LINK_QUEUE_BYTES_MAX {
            link.dropped.set(link.dropped.get() + 1);
            return;
        }
        encode(&mut q);
        drop(q);
        if let Some(w) = link.waker.take() {
            w.wake();
        }
    }

    /// Links to `peers` that count as up but have no task: what is sent to them stays queued,
    /// for a test to read with [`Peers::take_sent`].
    #[cfg(test)]
    pub fn for_test(peers: &[u64]) -> Rc<Peers> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let links = peers
            .iter()
            .map(|&id| {
                let link = Link::new(id, addr);
                link.connected.set(true);
                (id, Rc::new(link))
            })
            .collect();
        Rc::new(Peers { links })
    }

    /// The messages queued for `peer` so far (taken off its queue), decoded.
    #[cfg(test)]
    pub fn take_sent(&self, peer: u64) -> Vec<Message> {
        let q = std::mem::take(&mut *self.links[&peer].queue.borrow_mut());
        let buf = Bytes::from(q);
        let mut at = 0;
        let mut out = Vec::new();
        while at < buf.len() {
            let env = wire::check_envelope(&buf[at..], u32::MAX).expect("an envelope");
            let part = buf.slice(at..at + wire::message_len(env));
            let msg = wire::verify(&part, u32::MAX).expect("a whole message");
            out.push(super::codec::decode(&part, &msg, &FrameLimits::default()).expect("decodes"));
            at += part.len();
        }
        out
    }

    /// The state of every link, for the metrics.
    pub fn link_states(&self) -> Vec<LinkState> {
        self.links
            .values()
            .map(|l| LinkState {
                peer: l.peer,
                up: l.connected.get(),
                dropped: l.dropped.get(),
                direct_sends: l.direct_sends.get(),
                direct_partial: l.direct_partial.get(),
            })
            .collect()
    }

    /// Wakes every link task (at shutdown).
    pub fn wake_all(&self) {
        for l in self.links.values() {
            if let Some(w) = l.waker.take() {
                w.wake();
            }
        }
    }
}

/// Appends to `q` what follows the first `sent` bytes of `parts` (taken one after the other).
fn queue_unsent(parts: &[&[u8]], sent: usize, q: &mut Vec<u8>) {
    let mut skip = sent;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        q.extend_from_slice(&p[skip..]);
        skip = 0;
    }
}

/// One non-blocking vectored send of `parts` on `fd`; returns how many bytes the socket took
/// (0 when it took none or failed: the caller queues the rest for the link task, whose write
/// reports a failure).
fn send_vectored(fd: std::os::fd::RawFd, parts: &[&[u8]]) -> usize {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() })
        .collect();
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: every iovec points into a slice borrowed for this call; the kernel only reads
        // them, and `fd` is the link's open socket (cleared before the socket is closed).
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return n as usize;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 0;
        }
    }
}

async fn drive_link(link: Rc<Link>, hello: HelloMeta, stop: Rc<Cell<bool>>, _running: TaskCount) {
    let mut backoff = Duration::from_millis(20);
    let mut spare = Vec::new();
    // The last refusal said, so that a peer refusing for a reason (another cluster id, other
    // timing) is reported once, not at every retry.
    let mut refused = String::new();
    while !stop.get() {
        match until_stopped(&stop, STOP_CHECK, connect(&link, &hello, &stop))
            .await
            .unwrap_or(Err(String::new()))
        {
            Ok(mut stream) => {
                backoff = Duration::from_millis(20);
                refused.clear();
                link.fd.set(Some(std::os::fd::AsRawFd::as_raw_fd(&stream)));
                link.connected.set(true);
                tracing::debug!(peer = link.peer, addr = %link.addr, "peer link up");
                loop {
                    // Wait for bytes to send.
                    std::future::poll_fn(|cx| {
                        if !link.queue.borrow().is_empty() || stop.get() {
                            Poll::Ready(())
                        } else {
                            link.waker.set(Some(cx.waker().clone()));
                            Poll::Pending
                        }
                    })
                    .await;
                    if stop.get() {
                        break;
                    }
                    // Everything queued goes in one write.
                    std::mem::swap(&mut *link.queue.borrow_mut(), &mut spare);
                    link.writing.set(true);
                    let r = stream.write_all(&spare).await;
                    link.writing.set(false);
                    spare.clear();
                    if let Err(e) = r {
                        tracing::debug!(peer = link.peer, error = %e, "peer link lost");
                        break;
                    }
                }
                link.fd.set(None);
                link.writing.set(false);
                link.connected.set(false);
                link.queue.borrow_mut().clear();
                let _ = stream.close().await;
            }
            Err(e) if e.starts_with(REFUSED) => {
                if e != refused {
                    tracing::warn!(peer = link.peer, addr = %link.addr, "{e}");
                    refused = e;
                }
            }
            Err(e) => {
                tracing::trace!(peer = link.peer, addr = %link.addr, error = %e, "peer unreachable")
            }
        }
        until_stopped(&stop, STOP_CHECK, crate::rt::sleep(backoff)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn connect(link: &Link, hello: &HelloMeta, stop: &Cell<bool>) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(link.addr, Duration::from_secs(1))
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    wire::encode(&mut out, Kind::Hello, 0, hello.node_id.get(), hello.as_bytes(), 0);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let reply = read_message(&mut stream, 1 << 16, Duration::from_secs(2), Some(stop))
        .await
        .map_err(|e| e.to_string())?;
    let msg = wire::verify(&reply, 1 << 16).map_err(|e| e.to_string())?;
    match msg.kind {
        Kind::HelloOk => Ok(stream),
        Kind::Error => Err(format!("{REFUSED}{}", String::from_utf8_lossy(msg.frames))),
        k => Err(format!("unexpected {k:?} in the handshake")),
    }
}

/// Why [`read_message`] returned no message.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection ended or failed (EOF included).
    Io(std::io::Error),
    /// The envelope is not acceptable (garbage, an oversized length...): worth telling the
    /// sender before closing. With the envelope's bytes, unverified.
    Wire(wire::WireError, [u8; ENVELOPE_LEN]),
    /// No whole message within the timeout.
    Timeout(Duration),
    /// The node is stopping.
    Stopped,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Wire(e, _) => write!(f, "{e}"),
            ReadError::Timeout(t) => write!(f, "no whole message within {t:?}"),
            ReadError::Stopped => write!(f, "the node is stopping"),
        }
    }
}

/// A stream a message body is read from: appends to a buffer's spare capacity, so a body is
/// not zeroed before the bytes that overwrite it arrive (zeroing a 1 MiB body cost as much as
/// receiving it).
pub(crate) trait ReadBody: futures_lite::AsyncRead + Unpin {
    /// Reads until `buf` holds `want` bytes (at most its capacity); EOF first is an error.
    async fn read_body(&mut self, buf: &mut BytesMut, want: usize) -> std::io::Result<()>;
}

/// A peer connection: `recv` straight into the spare capacity. When the socket runs dry, a
/// one-byte read through the runtime waits for more.
impl ReadBody for TcpStream {
    async fn read_body(&mut self, buf: &mut BytesMut, want: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        debug_assert!(want <= buf.capacity());
        let fd = self.as_raw_fd();
        while buf.len() < want {
            let missing = want - buf.len();
            let spare = buf.spare_capacity_mut();
            let len = missing.min(spare.len());
            // SAFETY: the kernel writes at most `len` bytes into the spare capacity, which is
            // owned by `buf` and at least `len` long; nothing reads it before `set_len`.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
            let dry = match n {
                1.. => {
                    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n as usize) };
                    (n as usize) < len
                }
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::Interrupted => false,
                        std::io::ErrorKind::WouldBlock => true,
                        _ => return Err(e),
                    }
                }
            };
            if dry && buf.len() < want {
                // The runtime's own read waits for the socket (a poll on its ring) and takes
                // the first byte that arrives.
                let mut one = [0u8; 1];
                if self.read(&mut one).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&one);
            }
        }
        Ok(())
    }
}

/// Appends from a buffered reader's buffer (client connections, tests).
async fn read_body_buffered<R: futures_lite::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> std::io::Result<()> {
    use futures_lite::AsyncBufReadExt;
    while buf.len() < want {
        let have = r.fill_buf().await?;
        if have.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = have.len().min(want - buf.len());
        buf.extend_from_slice(&have[..n]);
        r.consume(n);
    }
    Ok(())
}

impl<R: futures_lite::AsyncRead + Unpin> ReadBody for futures_lite::io::BufReader<R> {
    async fn read_body(&mut self, buf: &mut BytesMut, want: usize) -> std::io::Result<()> {
        read_body_buffered(self, buf, want).await
    }
}

impl<T: AsRef<[u8]> + Unpin> ReadBody for futures_lite::io::Cursor<T> {
    async fn read_body(&mut self, buf: &mut BytesMut, want: usize) -> std::io::Result<()> {
        read_body_buffered(self, buf, want).await
    }
}

/// Bytes of a message body allocated before any of it arrived.
const BODY_FIRST_ALLOC: usize = 1 << 20;

/// Reads one whole message (envelope checked before the body is read), within `timeout`; gives
/// up when `stop` is set (checked every [`STOP_CHECK`]), so that a stopping node closes its
/// connections and its peers see it go.
pub(crate) async fn read_message<S: ReadBody>(
    stream: &mut S,
    body_max: u32,
    timeout: Duration,
    stop: Option<&Cell<bool>>,
) -> Result<Bytes, ReadError> {
    read_message_after(stream, None, body_max, timeout, stop).await
}

/// Reads one whole message whose first byte, when `first` is given, was read already.
pub(crate) async fn read_message_after<S: ReadBody>(
    stream: &mut S,
    first: Option<u8>,
    body_max: u32,
    timeout: Duration,
    stop: Option<&Cell<bool>>,
) -> Result<Bytes, ReadError> {
    let work = async {
        let mut env = [0u8; ENVELOPE_LEN];
        let from = match first {
            Some(b) => {
                env[0] = b;
                1
            }
            None => 0,
        };
        stream.read_exact(&mut env[from..]).await.map_err(ReadError::Io)?;
        let e = wire::check_envelope(&env, body_max).map_err(|e| ReadError::Wire(e, env))?;
        let total = wire::message_len(e);
        // The body is allocated as it arrives: up to 1 MiB at once (every usual message), then
        // doubling, so a peer that declares a large body and sends little of it holds at most
        // about twice what it sent, not the declared length.
        let mut buf = BytesMut::with_capacity(total.min(BODY_FIRST_ALLOC));
        buf.extend_from_slice(&env);
        loop {
            let want = total.min(buf.capacity());
            stream.read_body(&mut buf, want).await.map_err(ReadError::Io)?;
            if buf.len() == total {
                break;
            }
            buf.reserve(total.min(buf.len() * 2) - buf.len());
        }
        Ok::<Bytes, ReadError>(buf.freeze())
    };
    futures_lite::future::or(work, async {
        if sleep_unless_stopped(stop, timeout, STOP_CHECK).await {
            Err(ReadError::Stopped)
        } else {
            Err(ReadError::Timeout(timeout))
        }
    })
    .await
}

/// Accepts peer connections on this core's peer port.
pub(crate) async fn serve(ctx: Rc<CoreCtx>, listener: TcpListener) {
    loop {
        let Some(accepted) = ctx.accept_until_stopped(&listener).await else { break };
        match accepted {
            Ok(mut stream) => {
                // A bound on connections that have not said who they are: each holds a task
                // and a socket until its hello or the read timeout.
                if ctx.peer_handshakes.get() >= ctx.cfg.peer_handshakes_max {
                    tracing::warn!("too many peer connections in their handshake; closing one");
                    crate::rt::spawn(async move {
                        refuse(&mut stream, "too many peer connections in their handshake").await
                    })
                    .detach();
                    continue;
                }
                let handshaking = TaskCount::new(&ctx.peer_handshakes);
                let running = TaskCount::new(&ctx.peer_tasks);
                let c = ctx.clone();
                crate::rt::spawn(async move {
                    handle_conn(c, stream, handshaking).await;
                    drop(running);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                crate::rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn refuse(stream: &mut TcpStream, why: &str) {
    let mut out = Vec::new();
    wire::encode(&mut out, Kind::Error, 0, 0, &[], why.len());
    out.extend_from_slice(why.as_bytes());
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// Serves one accepted peer connection; `handshaking` counts it until its hello is accepted.
async fn handle_conn(ctx: Rc<CoreCtx>, mut stream: TcpStream, handshaking: TaskCount) {
    let _ = stream.set_nodelay(true);
    let cfg = ctx.cfg.clone();
    let max = cfg.message_bytes_max;
    // The handshake. Anything but a well-formed hello gets an error that says why.
    let timeout = Duration::from_secs(cfg.read_timeout_secs.max(1));
    let first = match read_message(&mut stream, 1 << 16, timeout, Some(&ctx.stop)).await {
        Ok(b) => b,
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "peer connection closed before its hello");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "no valid hello on a peer connection");
            refuse(&mut stream, &e.to_string()).await;
            return;
        }
    };
    let hello = match wire::verify(&first, 1 << 16) {
        Ok(m) if m.kind == Kind::Hello => HelloMeta::read_from_bytes(m.meta).ok(),
        Ok(_) => None,
        Err(e) => {
            refuse(&mut stream, &e.to_string()).await;
            return;
        }
    };
    let Some(hello) = hello else {
        refuse(&mut stream, "expected a corelog peer hello").await;
        return;
    };
    let peer = hello.node_id.get();
    if hello.cluster_id.get() != cfg.cluster_id {
        let why = format!(
            "cluster id {} does not match this node's {}",
            hello.cluster_id.get(),
            cfg.cluster_id
        );
        tracing::warn!(peer, "{why}");
        refuse(&mut stream, &why).await;
        return;
    }
    if peer == cfg.node_id || !cfg.members.iter().any(|m| m.id == peer) {
        refuse(&mut stream, &format!("node {peer} is not a member of this cluster")).await;
        return;
    }
    if hello.core.get() as usize != ctx.core {
        refuse(&mut stream, &format!("core {} dialed core {}", hello.core.get(), ctx.core)).await;
        return;
    }
    let theirs = hello.timing.get();
    if theirs == 0 {
        tracing::warn!(
            peer,
            "the peer does not state its election_ticks and tick_ms (an older build): they \
             must be the same as this node's for leases to be safe"
        );
    } else if theirs != timing(&cfg) {
        let why = format!(
            "node {peer} has election_ticks {} and tick_ms {}, this node {} and {}: both must \
             be the same on every node (a leader's lease relies on the others waiting as long \
             before they help elect another)",
            theirs >> 16,
            theirs & 0xffff,
            cfg.election_ticks,
            cfg.tick_ms
        );
        tracing::warn!(peer, "{why}");
        refuse(&mut stream, &why).await;
        return;
    }
    let mut out = Vec::new();
    let ok = HelloMeta {
        cluster_id: U64::new(cfg.cluster_id),
        node_id: U64::new(cfg.node_id),
        core: U32::new(ctx.core as u32),
        timing: U32::new(timing(&cfg)),
    };
    wire::encode(&mut out, Kind::HelloOk, 0, cfg.node_id, ok.as_bytes(), 0);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    drop(handshaking);
    let limits = FrameLimits::default();
    // Peers are chatty (heartbeats every few ticks): a long silence means a dead peer. But
    // without a leader, a peer speaks only once per election timeout (randomised up to twice
    // `election_ticks`): closing sooner would lose its vote requests.
    let election_max = Duration::from_millis(2 * u64::from(cfg.election_ticks) * cfg.tick_ms);
    let idle = Duration::from_secs(cfg.read_timeout_secs.max(1) * 3).max(2 * election_max);
    while !ctx.stop.get() {
        let buf = match read_message(&mut stream, max, idle, Some(&ctx.stop)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer connection closed");
                break;
            }
        };
        let msg = match wire::verify(&buf, max) {
            Ok(m) if m.kind == Kind::Raft => m,
            Ok(m) => {
                tracing::warn!(peer, kind = ?m.kind, "unexpected message from a peer; closing");
                break;
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "bad message from a peer; closing");
                break;
            }
        };
        let group = msg.envelope.group.get();
        let (m, frames) = match super::codec::decode_with_frames(&buf, &msg, &limits) {
            Ok(d) => d,
            Err(e) => {
                super::metrics::count_error("peer_protocol");
                tracing::warn!(peer, group, error = %e, "undecodable consensus message; closing");
                break;
            }
        };
        if m.from != peer || m.to != cfg.node_id {
            tracing::warn!(
                peer,
                from = m.from,
                to = m.to,
                "misaddressed consensus message; closing"
            );
            break;
        }
        match ctx.group(group) {
            Some(g) => g.inbox.push(Input::Peer(m, super::group::PeerStamp::of(&msg), frames)),
            None => {
                ctx.errors_unknown_group.set(ctx.errors_unknown_group.get() + 1);
                super::metrics::count_error("unknown_group");
                tracing::warn!(peer, group, "message for a group not on this core; dropped");
            }
        }
    }
    let _ = stream.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of sizes below, at and well above the first allocation, back to back on one
    /// stream, and the bytes expected of each.
    fn messages() -> (Vec<u8>, Vec<Vec<u8>>) {
        let sizes = [0, 100, BODY_FIRST_ALLOC - ENVELOPE_LEN, BODY_FIRST_ALLOC, 3 << 20];
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..*n).map(|k| (k * 7 + i) as u8).collect();
            let start = stream.len();
            wire::encode(&mut stream, Kind::Raft, 1, 2, &[], 0);
            stream.extend_from_slice(&body);
            wire::set_frames_len(&mut stream[start..], body.len());
            want.push(stream[start..].to_vec());
        }
        (stream, want)
    }

    /// Reads `want` from `r`, then expects an error: the stream ends inside the last body.
    async fn read_all_then_cut<S: ReadBody>(r: &mut S, want: &[Vec<u8>]) {
        let t = Duration::from_secs(20);
        for w in &want[..want.len() - 1] {
            let got = read_message(r, 4 << 20, t, None).await.expect("a whole message");
            assert_eq!(got.len(), w.len());
            assert!(got[..] == w[..], "a message of {} bytes changed", w.len());
        }
        assert!(matches!(read_message(r, 4 << 20, t, None).await, Err(ReadError::Io(_))));
    }

    /// Messages of any size arrive whole and unchanged from a buffered reader; a stream that
    /// ends inside a body is an error.
    #[test]
    fn messages_of_any_size_are_read_whole() {
        crate::rt::Executor::new("test")
            .run(|| async {
                let (stream, want) = messages();
                let mut r = futures_lite::io::Cursor::new(stream.clone());
                let t = Duration::from_secs(5);
                for w in &want {
                    let got =
                        read_message(&mut r, 4 << 20, t, None).await.expect("a whole message");
                    assert!(got[..] == w[..], "a message of {} bytes changed", w.len());
                }
                let cut = stream.len() - 1000;
                let mut r = futures_lite::io::Cursor::new(stream[..cut].to_vec());
                read_all_then_cut(&mut r, &want).await;
            })
            .unwrap();
    }

    /// The same over a TCP connection (bodies are received straight into their buffers),
    /// from a sender that writes in pieces of every size with pauses between them, so the
    /// reader finds the socket empty in the middle of envelopes and bodies; the sender then
    /// closes inside the last body.
    #[test]
    fn messages_arrive_whole_over_tcp_in_pieces() {
        crate::rt::Executor::new("test")
            .run(|| async {
                let (stream, want) = messages();
                let listener = TcpListener::bind(([127, 0, 0, 1], 0).into()).unwrap();
                let addr = listener.local_addr().unwrap();
                let cut = stream.len() - 1000;
                let sender = crate::rt::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let mut at = 0;
                    let mut piece = 1;
                    while at < cut {
                        let n = piece.min(cut - at);
                        s.write_all(&stream[at..at + n]).await.unwrap();
                        at += n;
                        piece = (piece * 3 + 1) % 300_000;
                        crate::rt::sleep(Duration::from_micros(200)).await;
                    }
                    s.close().await.unwrap();
                });
                let mut r = listener.accept().await.unwrap();
                read_all_then_cut(&mut r, &want).await;
                sender.await;
            })
            .unwrap();
    }
}

#[cfg(test)]
mod direct_send_tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    /// A vectored send into a socket that cannot take it all, then the rest through a queue:
    /// the receiver gets exactly the parts, in order.
    #[test]
    fn a_partial_direct_send_queues_exactly_the_rest() {
        let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: setting an integer socket option on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let pre: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let frames: Vec<Vec<u8>> =
            (0..5u32).map(|f| (0..70_000u32).map(|i| (i * 7 + f) as u8).collect()).collect();
        let post = vec![0xAB; 33];
        let mut parts: Vec<&[u8]> = vec![&pre];
        parts.extend(frames.iter().map(|f| f.as_slice()));
        parts.push(&post);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let sent = send_vectored(tx.as_raw_fd(), &parts);
        assert!(sent > 0 && sent < total, "the socket took {sent} of {total}");
        let mut rest = Vec::new();
        queue_unsent(&parts, sent, &mut rest);
        assert_eq!(sent + rest.len(), total);
        // Nothing is waiting on a full socket in this test: the rest goes blocking, from a
        // thread, while this one reads.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut tx = tx;
            tx.write_all(&rest).unwrap();
        });
        let mut got = vec![0u8; total];
        rx.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, parts.concat());
        // Cut exactly at a part's end, and at nothing.
        let mut q = Vec::new();
        queue_unsent(&parts, pre.len(), &mut q);
        assert_eq!(q, parts[1..].concat());
        q.clear();
        queue_unsent(&parts, 0, &mut q);
        assert_eq!(q, parts.concat());
        q.clear();
        queue_unsent(&parts, total, &mut q);
        assert!(q.is_empty());
    }

    /// A send on a socket whose other end is gone takes nothing (the link task's next write
    /// reports the failure).
    #[test]
    fn a_direct_send_to_a_closed_socket_takes_nothing() {
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(rx);
        assert_eq!(send_vectored(tx.as_raw_fd(), &[b"abc", b"def"]), 0);
    }
}
