//! The glommio 0.9 backend of [`crate::rt`] (`--features glommio`).

mod flush_ring;

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

/// Spawns a task; glommio has no way to put it before the tasks already ready, so this is
/// [`spawn`] (see the native runtime's `spawn_next` for why the log asks).
pub fn spawn_next<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
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

/// Starts `cfg`'s executor on a new thread and runs the future `f` makes there.
pub(super) fn spawn_executor<G, F, T>(cfg: super::Executor, f: G) -> io::Result<ExecutorThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match cfg.core {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    let mut b = glommio::LocalExecutorBuilder::new(placement).name(&cfg.name);
    if let Some(bytes) = cfg.io_memory {
        b = b.io_memory(bytes);
    }
    if let Some(d) = cfg.spin_before_park {
        b = b.spin_before_park(d);
    }
    b.spawn(f).map(ExecutorThread).map_err(to_io)
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
}

/// Semaphores of one executor.
pub mod sync {
    /// A counting semaphore; permits return on drop, a static permit has no borrow.
    pub use glommio::sync::{Permit, Semaphore, StaticPermit};
}

/// O_DIRECT files and their aligned buffers.
pub mod fs {
    pub use super::flush_ring::{ChainResult, FlushRing};

    /// Makes glommio's probe of io_uring polling support for the device under `dir` see real
    /// data.
    ///
    /// glommio 0.9 probes, once per device and thread, whether the device supports IOPOLL by
    /// reading the first block of the first file opened on it, and caches the answer. If that
    /// file is empty the read succeeds without reaching the device, the device is wrongly
    /// cached as pollable, and every later read fails with EOPNOTSUPP. So before opening
    /// anything on a device for the first time, open a file that holds a block of data.
    /// Errors name what failed and on which path.
    pub async fn prime_device(
        dir: &std::path::Path,
    ) -> Result<(), (&'static str, std::path::PathBuf, std::io::Error)> {
        use std::os::unix::fs::MetadataExt;
        thread_local!(static PRIMED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) });
        let dev = std::fs::metadata(dir).map_err(|e| ("stat", dir.to_path_buf(), e))?.dev();
        if PRIMED.with(|p| p.borrow().contains(&dev)) {
            return Ok(());
        }
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = dir.join(format!(".iopoll-probe-{}-{n}.tmp", std::process::id()));
        std::fs::write(&probe, [0u8; 4096]).map_err(|e| ("writing", probe.clone(), e))?;
        let opened = DmaFile::open(&probe).await;
        let _ = std::fs::remove_file(&probe);
        let file = opened.map_err(|e| ("opening", probe.clone(), super::to_io(e)))?;
        let _ = file.close().await;
        PRIMED.with(|p| p.borrow_mut().push(dev));
        Ok(())
    }

    pub use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions, ReadResult, remove, rename};
}
