//! A node inside the application's own process: [`EmbeddedNode`] starts a node from a
//! [`NodeConfig`] and serves the application through in-process pipes instead of sockets.
//!
//! The application's side is blocking ([`Client`] over a [`LocalStream`]), so it works from any
//! thread, with any runtime or none: the node's executors run on their own threads. A pipe is
//! a pair of byte queues between the application's thread and the core that serves the group;
//! the core reads and answers it exactly as it does a client's TCP connection (same checks,
//! same bounds, same protocol), so append, read, tail, trim, status and membership changes
//! all work in-process. When this node is not the leader of a group, an append is redirected
//! to the leader over TCP, as for any client: only the hops to this node are in-process.
//!
//! Waking: the core waits on a waker that the application's thread wakes (the runtime
//! takes wakes from foreign threads); the application waits on a condition variable that the core
//! signals. Nothing polls.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientConfig, ClientError, Conn, Position, ReadEntry, Tail};
use crate::node::{self, NodeConfig, NodeHandle};

/// Bytes a core may queue towards the application before its writes wait.
const PIPE_BYTES_MAX: usize = 4 << 20;

#[derive(Default)]
struct HalfState {
    data: VecDeque<u8>,
    closed: bool,
    /// The core's task waiting on this half (to read, or for room to write).
    waker: Option<Waker>,
}

/// One direction of a pipe.
#[derive(Default)]
struct Half {
    state: Mutex<HalfState>,
    /// The application's thread waiting on this half.
    cv: Condvar,
}

impl Half {
    fn lock(&self) -> std::sync::MutexGuard<'_, HalfState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        drop(st);
        self.cv.notify_all();
    }
}

/// The application's end of an in-process connection to a core of an embedded node: a
/// blocking `Read + Write` byte stream.
pub struct LocalStream {
    to_node: Arc<Half>,
    from_node: Arc<Half>,
    read_timeout: Duration,
}

impl Read for LocalStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let deadline = Instant::now() + self.read_timeout;
        let mut st = self.from_node.lock();
        loop {
            if !st.data.is_empty() {
                let n = buf.len().min(st.data.len());
                for (d, s) in buf[..n].iter_mut().zip(st.data.drain(..n)) {
                    *d = s;
                }
                if let Some(w) = st.waker.take() {
                    w.wake(); // room for the core's writer
                }
                return Ok(n);
            }
            if st.closed {
                return Ok(0);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            st = self
                .from_node
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Write for LocalStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.to_node.lock();
        if st.closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        st.data.extend(buf);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.to_node.close();
        self.from_node.close();
    }
}

/// The core's end of an in-process connection: an async byte stream for the client server.
pub(crate) struct PipeEnd {
    to_node: Arc<Half>,
    from_node: Arc<Half>,
}

impl futures_lite::AsyncRead for PipeEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut st = self.to_node.lock();
        if !st.data.is_empty() {
            let n = buf.len().min(st.data.len());
            for (d, s) in buf[..n].iter_mut().zip(st.data.drain(..n)) {
                *d = s;
            }
            return Poll::Ready(Ok(n));
        }
        if st.closed {
            return Poll::Ready(Ok(0));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl futures_lite::AsyncWrite for PipeEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut st = self.from_node.lock();
        if st.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if st.data.len() >= PIPE_BYTES_MAX {
            st.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(PIPE_BYTES_MAX - st.data.len());
        st.data.extend(&buf[..n]);
        drop(st);
        self.from_node.cv.notify_all();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.from_node.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        self.to_node.close();
        self.from_node.close();
    }
}

#[derive(Default)]
struct AcceptState {
    pending: Vec<PipeEnd>,
    closed: bool,
    waker: Option<Waker>,
}

/// Where in-process connections to one core arrive.
#[derive(Default)]
pub(crate) struct LocalAcceptor {
    state: Mutex<AcceptState>,
}

impl LocalAcceptor {
    fn lock(&self) -> std::sync::MutexGuard<'_, AcceptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection, from the application's side; `None` once the core has stopped.
    fn connect(&self, read_timeout: Duration) -> Option<LocalStream> {
        let (to_node, from_node) = (Arc::new(Half::default()), Arc::new(Half::default()));
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        st.pending.push(PipeEnd { to_node: to_node.clone(), from_node: from_node.clone() });
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        Some(LocalStream { to_node, from_node, read_timeout })
    }

    /// The next connections, on the core (waits for at least one).
    pub(crate) async fn accept(&self) -> Vec<PipeEnd> {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.pending.is_empty() {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(std::mem::take(&mut st.pending))
            }
        })
        .await
    }

    /// Refuses further connections (the core is stopping).
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.pending.clear();
    }
}

/// A node running inside this process, and blocking access to it without sockets.
pub struct EmbeddedNode {
    handle: NodeHandle,
    cfg: NodeConfig,
    client: Client,
}

impl EmbeddedNode {
    /// Starts the node (its executors on their own threads), recovering its logs, and returns
    /// once it serves.
    pub fn start(cfg: NodeConfig) -> Result<EmbeddedNode, String> {
        let handle = node::start(cfg.clone())?;
        let client = Self::make_client(&handle, &cfg).map_err(|e| e.to_string())?;
        Ok(EmbeddedNode { handle, cfg, client })
    }

    fn make_client(handle: &NodeHandle, cfg: &NodeConfig) -> Result<Client, ClientError> {
        let base = cfg.me().client_addr;
        let acceptors = handle.local_acceptors();
        let connector = Arc::new(move |addr: SocketAddr, timeout: Duration| {
            let core = (addr.ip() == base.ip() && addr.port() >= base.port())
                .then(|| usize::from(addr.port() - base.port()))?;
            acceptors.get(core)?.connect(timeout).map(Conn::Local)
        });
        Client::with_connector(ClientConfig::new(vec![base]), connector)
    }

    /// A new client (its own session) that reaches this node in-process; usable from any
    /// thread. Requests this node cannot serve (an append when it is not the leader) go to
    /// the leader over TCP.
    pub fn client(&self) -> Result<Client, ClientError> {
        Self::make_client(&self.handle, &self.cfg)
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Appends one entry; returns its position once committed on a majority.
    pub fn append(&mut self, group: u64, data: &[u8]) -> Result<Position, ClientError> {
        self.client.append(group, data)
    }

    /// Appends entries as one request; returns their positions once committed.
    pub fn append_many(
        &mut self,
        group: u64,
        items: &[&[u8]],
    ) -> Result<Vec<Position>, ClientError> {
        self.client.append_many(group, items)
    }

    /// Reads committed entries `lo..=hi` from this node's log (about `max_bytes`); returns
    /// this node's commit index and the entries.
    pub fn read(
        &mut self,
        group: u64,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<(u64, Vec<ReadEntry>), ClientError> {
        let me = self.cfg.me().client_addr;
        self.client.read_from(me, group, lo, hi, max_bytes)
    }

    /// Follows the committed entries of `group` from `from`, served by this node.
    pub fn tail(&self, group: u64, from: u64) -> Tail {
        self.client.tail(group, from)
    }

    /// Trims the prefix of `group` up to `index` (at the leader).
    pub fn trim(&mut self, group: u64, index: u64) -> Result<(), ClientError> {
        self.client.trim(group, index)
    }

    /// The status of `group` as this node sees it (JSON).
    pub fn status(&mut self, group: u64) -> Result<String, ClientError> {
        let me = self.cfg.me().client_addr;
        self.client.status_of(me, group)
    }

    /// Stops the node: in-flight flushes finish, the logs close.
    pub fn shutdown(self) -> Result<(), String> {
        drop(self.client);
        self.handle.shutdown()
    }
}
