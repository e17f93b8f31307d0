//! The runtime, in one place: everything corelog takes from an executor.
//!
//! The rest of the crate spawns tasks, sleeps, starts executors, accepts and connects
//! sockets, waits on semaphores and opens O_DIRECT files through this module only, so the
//! runtime under it can be changed without touching the log, the node or the benchmarks.
//! There are two, chosen when building:
//!
//! - **native** (the default, [`native`]): corelog's own executor on one io_uring per thread
//!   (the `io-uring` crate). A wake-up costs one `io_uring_enter` that both submits and waits;
//!   a flush is a write linked to its fdatasync on that same ring; sockets are read and
//!   written with non-blocking system calls and a one-shot poll on the ring when they would
//!   block; another thread wakes a sleeping executor through an eventfd.
//! - **glommio** (`--features glommio`): glommio 0.9 as pinned in `Cargo.toml`, with the log's
//!   flushes on a side ring of their own (glommio cannot link a write to its fdatasync). It
//!   is kept to compare against: on the project's 2-vCPU VM it entered the kernel about a
//!   dozen times per wake-up (re-arming its preemption timer, a `membarrier` per sleep), which
//!   a replicated write pays several times over
//!   (`docs/measurements/2026-11-27-full-disk-and-wakeups.md`).
//!
//! Both give the same semantics where corelog depends on them: a [`Task`] is cancelled when
//! dropped unless detached; a [`sync::Semaphore`] returns units when a permit drops; errors
//! cross this boundary as `std::io::Error` with the OS error code kept. They differ where it
//! does not: a panic in a task fails the executor's thread on the native runtime (loudly)
//! and only that task on glommio; the native semaphore serves waiters strictly in order,
//! glommio's lets a later small waiter pass a large one.

use std::future::Future;
use std::io;
use std::time::Duration;

#[cfg(feature = "glommio")]
mod glommio_rt;
#[cfg(feature = "glommio")]
use glommio_rt as backend;
#[cfg(feature = "glommio")]
pub use glommio_rt::*;

#[cfg(not(feature = "glommio"))]
pub mod native;
#[cfg(not(feature = "glommio"))]
use native as backend;
#[cfg(not(feature = "glommio"))]
pub use native::*;

/// What makes one write of a log's flush durable (see [`crate::log::SyncMethod`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSync {
    /// Nothing more: the file was opened `O_DSYNC`, or durability is not wanted.
    None,
    /// The write is linked to an fdatasync of the file (one submission of two operations).
    Fdatasync,
    /// The write carries `RWF_DSYNC`: it completes once its data is durable (one operation).
    Dsync,
}

impl WriteSync {
    /// The `RWF_*` flags of the write.
    pub(crate) fn rw_flags(self) -> i32 {
        if self == WriteSync::Dsync { libc::RWF_DSYNC } else { 0 }
    }
}

/// The name of the runtime this build uses (reports print it).
pub const RUNTIME: &str = if cfg!(feature = "glommio") { "glommio 0.9" } else { "native io_uring" };

/// How to start an executor: its thread's name, the core it is pinned to (none: the scheduler
/// places it), the memory kept for its O_DIRECT buffers, and whether it spins before it
/// sleeps (off unless asked: several executors may share a core).
#[derive(Debug, Clone)]
pub struct Executor {
    pub(crate) name: String,
    pub(crate) core: Option<usize>,
    pub(crate) io_memory: Option<usize>,
    pub(crate) spin_before_park: Option<Duration>,
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

    /// Bytes kept for aligned I/O buffers (glommio registers them with the kernel; the native
    /// runtime keeps that many bytes of freed buffers for reuse).
    pub fn io_memory(mut self, bytes: usize) -> Executor {
        self.io_memory = Some(bytes);
        self
    }

    /// Polls for this long before the executor sleeps.
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
        backend::spawn_executor(self, f)
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
