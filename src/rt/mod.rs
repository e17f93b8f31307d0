//! The runtime, in one place: everything corelog takes from its executor library.
//!
//! corelog runs on glommio 0.9 (pinned in `Cargo.toml`): one executor per core, io_uring for
//! sockets, timers and O_DIRECT files. glommio is slowly maintained and costs system calls per
//! wake-up that a replicated write pays several times over (see
//! `docs/measurements/2026-11-27-full-disk-and-wakeups.md`), so the rest of the crate does not
//! name it: it spawns tasks, sleeps, starts executors, accepts and connects sockets, waits on
//! semaphores and opens O_DIRECT files through this module only. Filling a gap with the
//! `io-uring` crate (as `log::uring` does for linked write + fdatasync) or swapping the runtime
//! then means changing this module, not the log, the node and the benchmarks.
//!
//! The types keep glommio's semantics where they are re-exported: a [`Task`] is cancelled when
//! dropped unless detached; a [`sync::Semaphore`] hands out permits that are returned on drop.
//! Errors cross this boundary as `std::io::Error` with the OS error code kept.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A spawned task: awaiting it yields its output; dropping it cancels the task unless it was
/// detached ([`Task::detach`]).
pub use glommio::Task;

/// Converts a runtime error into an `io::Error`, keeping the OS error code where there is one
/// (glommio's own conversion drops it for "enhanced" errors).
pub(crate) fn to_io<T>(e: glommio::GlommioError<T>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Spawns a task on the current executor (the executor of this thread).
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Waits `d` on the current executor's timers.
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Runs a blocking function on a thread outside the executor and waits for its result.
pub async fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

/// How to start an executor: its thread's name, the core it is pinned to (none: the scheduler
/// places it), the memory registered for its O_DIRECT buffers, and whether it spins before
/// it sleeps (off unless asked: several executors may share a core).
#[derive(Debug, Clone)]
pub struct Executor {
    name: String,
    core: Option<usize>,
    io_memory: Option<usize>,
    spin_before_park: Option<Duration>,
}

impl Executor {
    /// An unpinned executor on a thread named `name`.
    pub fn new(name: impl Into<String>) -> Executor {
        Executor { name: name.into(), core: None, io_memory: None, spin_before_park: None }
    }

    /// Pins the executor's thread to `core` (or leaves it to the scheduler with `None`).
    pub fn pin(mut self, core: Option<usize>) -> Executor {
        self.core = core;
        self
    }

    /// Bytes registered with the kernel for aligned I/O buffers.
    pub fn io_memory(mut self, bytes: usize) -> Executor {
        self.io_memory = Some(bytes);
        self
    }

    /// Polls for this long before the executor sleeps (only a pinned executor spins).
    pub fn spin_before_park(mut self, d: Option<Duration>) -> Executor {
        self.spin_before_park = d;
        self
    }

    /// Starts the executor on a new thread and runs the future `f` makes there.
    pub fn spawn<G, F, T>(self, f: G) -> io::Result<ExecutorThread<T>>
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let placement = match self.core {
            Some(c) => glommio::Placement::Fixed(c),
            None => glommio::Placement::Unbound,
        };
        let mut b = glommio::LocalExecutorBuilder::new(placement).name(&self.name);
        if let Some(bytes) = self.io_memory {
            b = b.io_memory(bytes);
        }
        if let Some(d) = self.spin_before_park {
            b = b.spin_before_park(d);
        }
        b.spawn(f).map(ExecutorThread).map_err(to_io)
    }

    /// Starts the executor, runs `f`'s future to completion and returns its output.
    pub fn run<G, F, T>(self, f: G) -> Result<T, String>
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let name = self.name.clone();
        self.spawn(f).map_err(|e| format!("starting executor {name}: {e}"))?.join()
    }
}

/// The thread of a running executor.
pub struct ExecutorThread<T: Send + 'static>(glommio::ExecutorJoinHandle<T>);

impl<T: Send + 'static> ExecutorThread<T> {
    /// Waits for the executor's future to finish; an error if it panicked.
    pub fn join(self) -> Result<T, String> {
        self.0.join().map_err(|e| e.to_string())
    }
}

/// Sockets on the executor's ring.
pub mod net {
    use super::*;
    use std::os::fd::{AsRawFd, RawFd};

    /// A listening TCP socket.
    #[derive(Debug)]
    pub struct TcpListener(glommio::net::TcpListener);

    impl TcpListener {
        /// Binds `addr` (SO_REUSEADDR, as glommio sets it).
        pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
            glommio::net::TcpListener::bind(addr).map(TcpListener).map_err(to_io)
        }

        /// The next connection.
        pub async fn accept(&self) -> io::Result<TcpStream> {
            self.0.accept().await.map(TcpStream).map_err(to_io)
        }

        /// The address it is bound to.
        pub fn local_addr(&self) -> io::Result<SocketAddr> {
            self.0.local_addr().map_err(to_io)
        }
    }

    /// A connected TCP socket, read and written through `futures_lite`'s async I/O traits.
    #[derive(Debug)]
    pub struct TcpStream(glommio::net::TcpStream);

    impl TcpStream {
        /// Connects to `addr`.
        pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
            glommio::net::TcpStream::connect(addr).await.map(TcpStream).map_err(to_io)
        }

        /// Connects to `addr`, failing after `timeout`.
        pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
            glommio::net::TcpStream::connect_timeout(addr, timeout)
                .await
                .map(TcpStream)
                .map_err(to_io)
        }

        /// Sets TCP_NODELAY.
        pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
            self.0.set_nodelay(on).map_err(to_io)
        }
    }

    impl AsRawFd for TcpStream {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl futures_lite::AsyncRead for TcpStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl futures_lite::AsyncWrite for TcpStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_close(cx)
        }
    }

    /// A connected Unix stream socket taken from the standard library (read through the ring).
    #[derive(Debug)]
    pub struct UnixStream(glommio::net::UnixStream);

    impl UnixStream {
        /// Takes ownership of a connected, non-blocking socket.
        pub fn from_std(s: std::os::unix::net::UnixStream) -> UnixStream {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor is a connected socket that `s` owned; ownership moves.
            UnixStream(unsafe { glommio::net::UnixStream::from_raw_fd(s.into_raw_fd()) })
        }
    }

    impl futures_lite::AsyncRead for UnixStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
}

/// Semaphores of one executor.
pub mod sync {
    /// A counting semaphore; permits return on drop, a static permit has no borrow.
    pub use glommio::sync::{Permit, Semaphore, StaticPermit};
}

/// O_DIRECT files and their aligned buffers.
pub mod fs {
    pub use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions, ReadResult, remove, rename};
}
