//! Client connections of one core: requests are read, checked and routed to the group's driver;
//! responses are queued per connection and written by the connection's writer task.
//!
//! Bad input never reaches a log: an envelope is checked (magic, version, lengths against
//! `message_bytes_max`, checksum) before its body is read or trusted, an append's frame is
//! verified (checksum, limits) before any entry is proposed, a request for a group that does
//! not exist or lives on another core is answered with an error. A connection that sends
//! nothing within `read_timeout_secs`, or stops in the middle of a message, is closed; so is
//! one whose unread responses exceed `client_queue_bytes_max` (a client that never reads).
//!
//! Appends are admitted against their group's `uncommitted_bytes_max` (the bytes of client
//! appends a leader holds unanswered). One that does not fit is not refused: its connection's
//! reader waits for room, beside the other connections of the group, and reads nothing
//! meanwhile, so the client's socket fills and its writes block (TCP backpressure, as
//! a broker mutes a connection when its memory is spent). Reading and verifying a request that
//! is then refused would only add work where there is too much, and a refused client resends.
//! Only after `admission_wait_ms` without room (commits stopped) is the append answered
//! `Busy`. The room is given back when the append is answered, whatever the answer, or
//! dropped. Waiters are served in arrival order (the native runtime's semaphore strictly;
//! glommio's wakes those that fit, so a large waiter can be overtaken), and one connection is
//! one waiter at a time, so a connection's own appends stay in order.
//!
//! The price of muting a connection, as a broker does: one connection carries every group of
//! its core, so while an append for a full group waits, the connection's requests for the
//! other groups of that core wait behind it. With one group per core (the default) there are
//! none; with more, a client that must keep groups apart opens a connection per group. The
//! consensus core can still answer `Busy` itself in a new leader's first moments (entries
//! inherited uncommitted from the old leader count against its bound, not the admission's).
//!
//! A tail (`Op::Tail`) is a task of the connection: it waits on the group's commit index,
//! reads the newly committed frames from the log (the cache or the disk, as a read does) and
//! queues them as responses with the tail's id, one batch at a time, never more than the
//! connection's queue bound allows (a tail that is not read waits, then the connection is
//! closed like any that does not read). An idle tail sends a keepalive every half second, so
//! the client notices a node that has stopped and moves to another replica. Any replica serves
//! a tail: it only ever sends what it knows committed, which every replica agrees on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::rt::net::{TcpListener, TcpStream};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zerocopy::{FromBytes, IntoBytes};

use super::CoreCtx;
use super::group::{GroupHandle, Input, ReplyTo};
use super::peer::{ReadError, read_message_after};
use super::proto::{MemberChange, Op, RequestMeta, ResponseMeta, Status};
use super::{ACCEPT_STOP_CHECK, STOP_CHECK, TaskCount, sleep_unless_stopped, until_stopped};
use crate::consensus::session::SessionHasherBuilder;
use crate::frame::{Frame, FrameLimits};
use crate::wire::{self, ENVELOPE_LEN, Kind};

/// The response side of one client connection.
///
/// Bytes buffered for a connection are bounded by `queue_max`: the responses queued (`out`),
/// the ones being written (`writing`), and what the requests in flight may still produce
/// (`reserved`, an estimate per request). The reader takes no new request while that sum is at
/// the bound; if it stays there for the read timeout, or a response would push the queue past
/// it, the client is not reading its responses and the connection is closed.
pub(crate) struct ClientConn {
    out: RefCell<Vec<u8>>,
    /// The writer task, waiting for bytes or for the close.
    waker: Cell<Option<Waker>>,
    /// The reader task, waiting for room in the queue or for the close.
    reader_waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
    /// Closed because the client does not read: drop what is queued, do not wait to write it.
    abort: Cell<bool>,
    writing: Cell<usize>,
    reserved: Cell<usize>,
    /// Bytes reserved per request id (ids chosen by the client: a keyed hasher).
    reservations: RefCell<HashMap<u64, usize, SessionHasherBuilder>>,
    queue_max: usize,
    /// Tails running on this connection (a connection with one is never idle).
    tails: Cell<usize>,
    /// Tails waiting for room in the queue or for the close.
    tail_wakers: RefCell<Vec<Waker>>,
}

/// The commit index of a group, for tasks to wait on.
#[derive(Default)]
pub(crate) struct CommitWatch {
    index: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl CommitWatch {
    /// Records a new commit index and wakes the waiters.
    pub fn set(&self, index: u64) {
        if index > self.index.get() {
            self.index.set(index);
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// The commit index.
    pub fn get(&self) -> u64 {
        self.index.get()
    }

    /// Resolves once the commit index is at least `index`.
    async fn reached(&self, index: u64) {
        std::future::poll_fn(|cx| {
            if self.index.get() >= index {
                Poll::Ready(())
            } else {
                let mut w = self.waiters.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

impl ClientConn {
    fn new(queue_max: usize) -> Self {
        ClientConn {
            out: RefCell::new(Vec::new()),
            waker: Cell::new(None),
            reader_waker: Cell::new(None),
            closed: Cell::new(false),
            abort: Cell::new(false),
            writing: Cell::new(0),
            reserved: Cell::new(0),
            reservations: RefCell::new(HashMap::with_hasher(SessionHasherBuilder::random())),
            queue_max,
            tails: Cell::new(0),
            tail_wakers: RefCell::new(Vec::new()),
        }
    }

    fn wake(&self) {
        for w in [&self.waker, &self.reader_waker] {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        for w in self.tail_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Bytes buffered or promised to this connection.
    fn buffered(&self) -> usize {
        self.out.borrow().len() + self.writing.get() + self.reserved.get()
    }

    /// Closes the connection; with `abort`, without writing what is queued.
    fn close(&self, abort: bool) {
        self.closed.set(true);
        self.abort.set(self.abort.get() || abort);
        self.wake();
    }

    /// A connection-level error (after which the connection closes): queued after the
    /// responses already queued, whatever the bound.
    fn fail(&self, why: &str) {
        super::metrics::count_error("client_protocol");
        self.say_and_close(why);
    }

    /// Queues an error message that says why, then closes (no error counted).
    fn say_and_close(&self, why: &str) {
        if !self.closed.get() {
            let mut out = self.out.borrow_mut();
            wire::encode(&mut out, Kind::Error, 0, 0, &[], why.len());
            out.extend_from_slice(why.as_bytes());
        }
        self.close(false);
    }

    /// Counts `bytes` against the bound until the response to request `id` is queued.
    fn reserve(&self, id: u64, bytes: usize) {
        *self.reservations.borrow_mut().entry(id).or_default() += bytes;
        self.reserved.set(self.reserved.get() + bytes);
    }

    /// Queues a response; closes the connection instead if the client is not reading.
    pub fn respond(&self, group: u64, id: u64, meta: ResponseMeta, payload: &[u8]) {
        if let Some(r) = self.reservations.borrow_mut().remove(&id) {
            self.reserved.set(self.reserved.get() - r);
        }
        if self.closed.get() {
            return;
        }
        let len = ENVELOPE_LEN + meta.as_bytes().len() + payload.len();
        if self.buffered() - self.reserved.get() + len > self.queue_max {
            tracing::warn!("a client does not read its responses; closing its connection");
            self.close(true);
            return;
        }
        let mut out = self.out.borrow_mut();
        wire::encode(&mut out, Kind::Response, group, id, meta.as_bytes(), payload.len());
        out.extend_from_slice(payload);
        drop(out);
        self.wake();
    }
}

/// Read buffer of a client connection.
const CLIENT_READ_BUFFER_BYTES: usize = 64 << 10;

/// Length of the run of whole messages at the head of `buf` whose envelopes pass
/// [`wire::check_envelope`]; stops at the first partial or doubtful one (the slow path reads it
/// and reports what is wrong with it).
fn whole_messages_len(buf: &[u8], body_max: u32) -> usize {
    let mut at = 0;
    while let Ok(env) = wire::check_envelope(&buf[at..], body_max) {
        let len = wire::message_len(env);
        if buf.len() - at < len {
            break;
        }
        at += len;
    }
    at
}

/// Resolves once `conn` is closed (registering `slot` as the waker).
async fn closed(conn: &ClientConn, slot: fn(&ClientConn) -> &Cell<Option<Waker>>) {
    std::future::poll_fn(|cx| {
        if conn.closed.get() {
            Poll::Ready(())
        } else {
            slot(conn).set(Some(cx.waker().clone()));
            Poll::Pending
        }
    })
    .await
}

/// What a request may add to its connection's queue, at most (about; a response that
/// exceeds its estimate is still caught by the bound when it is queued).
fn reservation(op: Op, meta: &RequestMeta, entries: usize, read_max: usize) -> usize {
    const RESPONSE_OVERHEAD: usize = ENVELOPE_LEN + 32 + 256;
    RESPONSE_OVERHEAD
        + match op {
            Op::Append => 16 * entries,
            Op::Read => (meta.c.get() as usize).clamp(1, read_max),
            Op::Status => 8 << 10,
            Op::Trim | Op::Member => 0,
            Op::Tail => 0,
        }
}

/// Accepts client connections on this core's client port.
pub(crate) async fn serve(ctx: Rc<CoreCtx>, listener: TcpListener) {
    loop {
        let Some(accepted) = ctx.accept_until_stopped(&listener).await else { break };
        match accepted {
            Ok(mut stream) => {
                if ctx.client_connections.get() >= ctx.cfg.client_connections_max {
                    let why = "too many client connections";
                    let mut out = Vec::new();
                    wire::encode(&mut out, Kind::Error, 0, 0, &[], why.len());
                    out.extend_from_slice(why.as_bytes());
                    crate::rt::spawn(async move {
                        let _ = stream.write_all(&out).await;
                        let _ = stream.close().await;
                    })
                    .detach();
                    continue;
                }
                let counted = TaskCount::new(&ctx.client_connections);
                let c = ctx.clone();
                crate::rt::spawn(async move {
                    handle_conn(c, stream).await;
                    drop(counted);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a client connection failed");
                crate::rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves the in-process connections of an embedded node (see [`crate::embed`]) until the
/// core stops.
pub(crate) async fn serve_local(
    ctx: Rc<CoreCtx>,
    acceptor: std::sync::Arc<crate::embed::LocalAcceptor>,
) {
    loop {
        let Some(pipes) = until_stopped(&ctx.stop, ACCEPT_STOP_CHECK, acceptor.accept()).await
        else {
            break;
        };
        for pipe in pipes {
            let counted = TaskCount::new(&ctx.client_connections);
            let c = ctx.clone();
            crate::rt::spawn(async move {
                serve_stream(c, pipe).await;
                drop(counted);
            })
            .detach();
        }
    }
}

async fn handle_conn(ctx: Rc<CoreCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    serve_stream(ctx, stream).await
}

/// Serves one client connection over any byte stream (a TCP connection, or an in-process pipe
/// of an embedded node).
pub(crate) async fn serve_stream<S>(ctx: Rc<CoreCtx>, stream: S)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (rd, mut wr) = futures_lite::io::split(stream);
    // Buffered: a pipelining client sends many requests back to back, and one read takes all
    // that arrived instead of two reads (envelope, body) per request.
    let mut rd = futures_lite::io::BufReader::with_capacity(CLIENT_READ_BUFFER_BYTES, rd);
    let conn = Rc::new(ClientConn::new(ctx.cfg.client_queue_bytes_max));
    let timeout = Duration::from_secs(ctx.cfg.read_timeout_secs.max(1));
    // The writer: everything queued goes out in one write. A write that does not finish
    // within the read timeout, or a close for not reading, ends the connection: a write never
    // holds the connection (and its slot) forever.
    let writer = {
        let conn = conn.clone();
        let stop = ctx.stop.clone();
        crate::rt::spawn(async move {
            let mut spare = Vec::new();
            loop {
                std::future::poll_fn(|cx| {
                    if !conn.out.borrow().is_empty() || conn.closed.get() || stop.get() {
                        Poll::Ready(())
                    } else {
                        conn.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                })
                .await;
                if conn.abort.get() {
                    break;
                }
                std::mem::swap(&mut *conn.out.borrow_mut(), &mut spare);
                conn.writing.set(spare.len());
                if !spare.is_empty() {
                    let write = async { wr.write_all(&spare).await.is_ok() };
                    let aborted = std::future::poll_fn(|cx| {
                        if conn.abort.get() {
                            Poll::Ready(false)
                        } else {
                            conn.waker.set(Some(cx.waker().clone()));
                            Poll::Pending
                        }
                    });
                    let timed_out = async {
                        crate::rt::sleep(timeout).await;
                        false
                    };
                    let written = futures_lite::future::or(
                        write,
                        futures_lite::future::or(aborted, timed_out),
                    )
                    .await;
                    if !written {
                        conn.close(true);
                    }
                }
                spare.clear();
                conn.writing.set(0);
                conn.wake();
                if conn.closed.get() || stop.get() {
                    break;
                }
            }
            let _ = wr.close().await;
        })
    };
    let max = ctx.cfg.message_bytes_max;
    // Whole requests already read but not yet handled: a copy of the complete messages at the
    // head of the read buffer, taken in one allocation and split per request (each request's
    // entries then share it by reference count).
    let mut ready = Bytes::new();
    while !conn.closed.get() && !ctx.stop.get() {
        // Backpressure: no new request while the queue is at its bound (there is always room
        // for one request when none is in flight).
        if conn.reserved.get() > 0 && conn.buffered() >= conn.queue_max {
            let room = std::future::poll_fn(|cx| {
                if conn.closed.get() || conn.buffered() < conn.queue_max {
                    Poll::Ready(true)
                } else {
                    conn.reader_waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            });
            let full = async {
                sleep_unless_stopped(Some(&ctx.stop), timeout, STOP_CHECK).await;
                false
            };
            if !futures_lite::future::or(room, full).await {
                tracing::warn!("a client does not read its responses; closing its connection");
                conn.close(true);
            }
            continue;
        }
        // Fast path: a request that arrived whole with the ones before it needs no wait, so
        // no timer and no allocation of its own.
        if ready.is_empty() {
            let whole = whole_messages_len(rd.buffer(), max);
            if whole > 0 {
                ready = Bytes::copy_from_slice(&rd.buffer()[..whole]);
                futures_lite::AsyncBufReadExt::consume(&mut rd, whole);
            }
        }
        let buf = if !ready.is_empty() {
            let env = wire::check_envelope(&ready, max).expect("checked when it was buffered");
            ready.split_to(wire::message_len(env))
        } else {
            // The first byte: a silent connection is closed after the timeout, unless it waits
            // for answers to its requests (a commit may take longer than the timeout).
            let read = async {
                let mut first = [0u8; 1];
                let mut next = std::pin::pin!(rd.read(&mut first));
                let mut silent_since = Instant::now();
                loop {
                    let tick = async {
                        crate::rt::sleep(timeout.min(STOP_CHECK)).await;
                        None
                    };
                    match futures_lite::future::or(async { Some((&mut next).await) }, tick).await {
                        Some(Ok(0)) => {
                            let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                            return Some(Err(ReadError::Io(eof)));
                        }
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Some(Err(ReadError::Io(e))),
                        None if ctx.stop.get() => return Some(Err(ReadError::Stopped)),
                        None if conn.reserved.get() > 0 || conn.tails.get() > 0 => {
                            silent_since = Instant::now();
                        }
                        None if silent_since.elapsed() < timeout => {}
                        None => return Some(Err(ReadError::Timeout(timeout))),
                    }
                }
                Some(
                    read_message_after(&mut rd, Some(first[0]), max, timeout, Some(&ctx.stop))
                        .await,
                )
            };
            let Some(read) = futures_lite::future::or(read, async {
                closed(&conn, |c| &c.reader_waker).await;
                None
            })
            .await
            else {
                break;
            };
            match read {
                Ok(b) => b,
                Err(ReadError::Io(e)) => {
                    tracing::debug!(error = %e, "client connection closed");
                    break;
                }
                Err(ReadError::Stopped) => {
                    conn.say_and_close("the node is stopping");
                    break;
                }
                Err(ReadError::Wire(e @ wire::WireError::TooLarge { .. }, env))
                    if env[6] == Kind::Request as u8 =>
                {
                    // A request too large to read: a final answer to it (the client must not
                    // retry it), then the close (its body is not read, so the stream is lost).
                    let group = u64::from_le_bytes(env[16..24].try_into().expect("8 bytes"));
                    let id = u64::from_le_bytes(env[24..32].try_into().expect("8 bytes"));
                    let meta = ResponseMeta::new(Status::TooLarge, 0, 0, 0);
                    conn.respond(group, id, meta, e.to_string().as_bytes());
                    conn.close(false);
                    break;
                }
                Err(e) => {
                    // Garbage, an oversized length, a silent or stalled client: say why, close.
                    tracing::debug!(error = %e, "closing a client connection");
                    conn.fail(&e.to_string());
                    break;
                }
            }
        };
        let msg = match wire::verify(&buf, max) {
            Ok(m) if m.kind == Kind::Request => m,
            Ok(m) => {
                conn.fail(&format!("expected a request, not {:?}", m.kind));
                break;
            }
            Err(e) => {
                conn.fail(&e.to_string());
                break;
            }
        };
        if let Some(waiting) = handle_request(&ctx, &conn, &buf, &msg) {
            admit(&ctx, &conn, waiting).await;
        }
    }
    conn.close(false);
    writer.await;
}

/// An append on its way to its group: when its group's admission bound is full, the reader
/// waits for room with it.
struct Waiting {
    g: Rc<GroupHandle>,
    group: u64,
    units: u64,
    /// What its answer may add to the connection's queue (see [`reservation`]).
    reserve: usize,
    entries: Vec<(u64, u64, Bytes)>,
    reply: ReplyTo,
    received: Instant,
}

impl Waiting {
    /// Hands the append, with its room, to its group.
    fn hand_over(self, conn: &ClientConn, admitted: crate::rt::sync::StaticPermit) {
        let Waiting { g, reserve, entries, reply, received, .. } = self;
        conn.reserve(reply.id, reserve);
        g.inbox.push(Input::Append { entries, reply, received, admitted });
    }
}

/// What an append counts against `uncommitted_bytes_max`: as the consensus core counts its
/// entries, and at least `ADMISSION_ENTRY_MIN_BYTES` each; never more than the whole bound
/// (the largest request still gets in when nothing else is admitted).
fn admission_units(entries: &[(u64, u64, Bytes)], bound: u64) -> u64 {
    let per_entry = |len: usize| {
        (len as u64 + crate::consensus::ENTRY_OVERHEAD_BYTES)
            .max(super::config::ADMISSION_ENTRY_MIN_BYTES)
    };
    entries.iter().map(|(_, _, d)| per_entry(d.len())).sum::<u64>().min(bound)
}

/// Waits (the connection unread meanwhile) until the group's admission bound has room for
/// `w`, then hands it to the group; answers it `Busy` after `admission_wait_ms` without room,
/// and drops it if the connection closes or the node stops first.
async fn admit(ctx: &Rc<CoreCtx>, conn: &Rc<ClientConn>, w: Waiting) {
    super::metrics::count_admission_wait();
    let Waiting { g, group, units, reserve, entries, reply, received } = w;
    let acquire = async { Some(g.admission.acquire_static_permit(units).await.ok()) };
    let wait = Duration::from_millis(ctx.cfg.admission_wait_ms);
    let timeout = async {
        let stopped = sleep_unless_stopped(Some(&ctx.stop), wait, STOP_CHECK).await;
        (!stopped).then_some(None)
    };
    let gone = async {
        closed(conn, |c| &c.reader_waker).await;
        None
    };
    match futures_lite::future::or(acquire, futures_lite::future::or(timeout, gone)).await {
        Some(Some(admitted)) => {
            Waiting { g, group, units, reserve, entries, reply, received }.hand_over(conn, admitted)
        }
        Some(None) => {
            let why = format!(
                "busy: the leader of group {group} holds uncommitted_bytes_max ({} bytes) of \
                 appends and none committed to make room within {wait:?}",
                ctx.cfg.uncommitted_bytes_max
            );
            reply.send(group, ResponseMeta::new(Status::Busy, 0, 0, 0), why.as_bytes());
        }
        None => {}
    }
}

/// Handles one verified request; an append that must wait for room is returned (see
/// [`admit`]).
fn handle_request(
    ctx: &Rc<CoreCtx>,
    conn: &Rc<ClientConn>,
    buf: &Bytes,
    msg: &wire::Message<'_>,
) -> Option<Waiting> {
    let group = msg.envelope.group.get();
    let id = msg.envelope.id.get();
    let reply = ReplyTo { conn: conn.clone(), id };
    let bad = |why: String| {
        reply.send(group, ResponseMeta::new(Status::BadRequest, 0, 0, 0), why.as_bytes())
    };
    let Ok(meta) = RequestMeta::read_from_bytes(msg.meta) else {
        bad(format!("request meta of {} bytes", msg.meta.len()));
        return None;
    };
    let Some(op) = Op::from_code(meta.op) else {
        bad(format!("unknown operation {}", meta.op));
        return None;
    };
    if group >= ctx.cfg.groups {
        reply.send(
            group,
            ResponseMeta::new(Status::UnknownGroup, 0, 0, 0),
            format!("no group {group} (this cluster has {})", ctx.cfg.groups).as_bytes(),
        );
        return None;
    }
    let Some(g) = ctx.group(group) else {
        let core = (group % ctx.cfg.cores as u64) as u16;
        let port = ctx.cfg.me().client_addr.port() + core;
        reply.send(
            group,
            ResponseMeta::new(Status::WrongCore, 0, u64::from(port), 0),
            format!("group {group} is served on port {port}").as_bytes(),
        );
        return None;
    };
    match op {
        Op::Append => {
            let limits = FrameLimits::default();
            let frame = match Frame::decode(msg.frames, &limits) {
                Ok(f) => f,
                Err(e) => {
                    bad(format!("append frame: {e}"));
                    return None;
                }
            };
            if frame.len() != msg.frames.len() {
                bad("an append carries exactly one frame".into());
                return None;
            }
            if frame.group() != group {
                bad(format!("frame for group {} in a request for group {group}", frame.group()));
                return None;
            }
            let mut entries = Vec::with_capacity(frame.entry_count() as usize);
            for e in frame.entries() {
                if e.session == 0 || e.seq == 0 {
                    bad("every appended entry needs a session and a sequence (both non-zero)"
                        .into());
                    return None;
                }
                if e.kind != crate::frame::EntryKind::Normal {
                    bad("clients append normal entries only".into());
                    return None;
                }
                let start = e.data.as_ptr() as usize - buf.as_ptr() as usize;
                entries.push((e.session, e.seq, buf.slice(start..start + e.data.len())));
            }
            let units = admission_units(&entries, ctx.cfg.uncommitted_bytes_max);
            let reserve = reservation(op, &meta, entries.len(), 0);
            let w = Waiting { g, group, units, reserve, entries, reply, received: Instant::now() };
            match w.g.admission.try_acquire_static_permit(units) {
                Ok(admitted) => w.hand_over(conn, admitted),
                Err(_) => return Some(w),
            }
        }
        Op::Status => {
            conn.reserve(id, reservation(op, &meta, 0, 0));
            g.inbox.push(Input::Status { reply })
        }
        Op::Read => {
            let max_bytes =
                (meta.c.get() as usize).clamp(1, (ctx.cfg.message_bytes_max as usize) / 2);
            conn.reserve(id, reservation(op, &meta, 0, max_bytes));
            g.inbox.push(Input::Read {
                lo: meta.a.get().max(1),
                hi: meta.b.get(),
                max_bytes,
                local: meta.flags & super::proto::READ_LOCAL != 0,
                reply,
            });
        }
        Op::Trim => {
            conn.reserve(id, reservation(op, &meta, 0, 0));
            g.inbox.push(Input::Trim { index: meta.a.get(), reply })
        }
        Op::Member => {
            use crate::consensus::ConfChange;
            let (node, priority) = (meta.b.get(), meta.c.get().min(255) as u8);
            let change = match MemberChange::from_code(meta.a.get()) {
                Some(MemberChange::AddLearner) => ConfChange::AddLearner { id: node },
                Some(MemberChange::Promote) => ConfChange::Promote { id: node, priority },
                Some(MemberChange::Remove) => ConfChange::Remove { id: node },
                Some(MemberChange::AddVoter) => ConfChange::AddVoter { id: node, priority },
                None => {
                    bad(format!("unknown membership change {}", meta.a.get()));
                    return None;
                }
            };
            if !matches!(change, ConfChange::Remove { .. })
                && !ctx.cfg.members.iter().any(|m| m.id == node)
            {
                bad(format!(
                    "node {node} is not in this node's members (the address book): list it in \
                     every node's configuration first"
                ));
                return None;
            }
            conn.reserve(id, reservation(op, &meta, 0, 0));
            g.inbox.push(Input::Member { change, reply })
        }
        Op::Tail => {
            let budget = (meta.c.get() as usize)
                .clamp(1, (ctx.cfg.message_bytes_max as usize) / 2)
                .min(conn.queue_max / 2)
                .max(1);
            crate::rt::spawn(tail(ctx.clone(), conn.clone(), g, group, id, meta.a.get(), budget))
                .detach();
        }
    }
    None
}

/// Streams the committed entries of `group` from `from` on to `conn` (see the module docs).
async fn tail(
    ctx: Rc<CoreCtx>,
    conn: Rc<ClientConn>,
    g: Rc<GroupHandle>,
    group: u64,
    id: u64,
    from: u64,
    budget: usize,
) {
    let Some(log) = g.log.borrow().clone() else { return };
    conn.tails.set(conn.tails.get() + 1);
    let keepalive = Duration::from_millis(500);
    let mut next = from.max(1);
    while !conn.closed.get() && !ctx.stop.get() {
        // Room in the queue for a batch (always when nothing is queued).
        std::future::poll_fn(|cx| {
            let queued = conn.out.borrow().len() + conn.writing.get();
            if conn.closed.get() || queued == 0 || conn.buffered() + budget <= conn.queue_max {
                Poll::Ready(())
            } else {
                conn.tail_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if conn.closed.get() {
            break;
        }
        // Something committed at `next`, or a keepalive.
        let committed = futures_lite::future::or(
            async {
                g.commit.reached(next).await;
                true
            },
            async {
                crate::rt::sleep(keepalive).await;
                false
            },
        )
        .await;
        let commit = g.commit.get();
        if !committed {
            conn.respond(group, id, ResponseMeta::new(Status::Ok, 0, commit, next - 1), &[]);
            continue;
        }
        match log.read(next, commit, budget).await {
            Ok(frames) => {
                let mut payload = Vec::new();
                let mut last = next - 1;
                for f in &frames {
                    payload.extend_from_slice(f.bytes());
                    last = f.frame().last_index();
                }
                let last = last.min(commit);
                if last < next {
                    continue;
                }
                conn.respond(group, id, ResponseMeta::new(Status::Ok, 0, commit, last), &payload);
                next = last + 1;
            }
            Err(crate::log::LogError::OutOfRange { first, .. }) if next < first => {
                let why = format!("entries from {next} are trimmed: the log starts at {first}");
                conn.respond(
                    group,
                    id,
                    ResponseMeta::new(Status::Trimmed, 0, first, 0),
                    why.as_bytes(),
                );
                break;
            }
            Err(e) => {
                // Not in the log yet (a follower may know a commit index before it holds the
                // entries), or the log is being reset by a snapshot: try again shortly.
                tracing::debug!(group, next, error = %e, "tail read");
                crate::rt::sleep(Duration::from_millis(ctx.cfg.tick_ms.max(1))).await;
            }
        }
    }
    conn.tails.set(conn.tails.get() - 1);
}
