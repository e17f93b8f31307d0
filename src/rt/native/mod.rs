//! corelog's own runtime: one io_uring per executor thread (see [`crate::rt`] for why).

mod exec;

pub use exec::{Sleep, Task, sleep, spawn, spawn_blocking, spawn_next};

use std::future::Future;
use std::io;

/// Errors are already `io::Error` here (kept so callers convert the same way on both
/// runtimes).
pub(crate) fn to_io(e: io::Error) -> io::Error {
    e
}

/// Starts `cfg`'s executor on a new thread and runs the future `f` makes there.
pub(super) fn spawn_executor<G, F, T>(cfg: super::Executor, f: G) -> io::Result<ExecutorThread<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let core = cfg.core;
    let pool = cfg.io_memory;
    let spin = cfg.spin_before_park;
    let t = std::thread::Builder::new().name(cfg.name).spawn(move || {
        if let Some(bytes) = pool {
            fs::set_pool_bytes(bytes);
        }
        exec::block_on(f, spin, core)
    })?;
    Ok(ExecutorThread(t))
}

/// The thread of a running executor.
pub struct ExecutorThread<T>(std::thread::JoinHandle<io::Result<T>>);

impl<T> ExecutorThread<T> {
    /// Waits for the executor's future to finish; an error if it panicked or could not start.
    pub fn join(self) -> Result<T, String> {
        match self.0.join() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("executor failed: {e}")),
            Err(p) => Err(match p.downcast_ref::<&str>() {
                Some(s) => format!("executor panicked: {s}"),
                None => match p.downcast_ref::<String>() {
                    Some(s) => format!("executor panicked: {s}"),
                    None => "executor panicked".to_string(),
                },
            }),
        }
    }
}

/// Sockets.
pub mod net;

/// Semaphores of one executor.
pub mod sync;

/// O_DIRECT files and their aligned buffers.
pub mod fs {
    mod file;
    pub use file::*;

    /// Nothing to prepare on this runtime (glommio needs a probe; see its backend).
    pub async fn prime_device(
        _dir: &std::path::Path,
    ) -> Result<(), (&'static str, std::path::PathBuf, std::io::Error)> {
        Ok(())
    }

    /// The flush path of a log: on this runtime a flush is a chain on the executor's own ring,
    /// so there is nothing to set up (kept for the log's choice of engine, see
    /// [`crate::log::IoEngine`]).
    #[derive(Debug, Clone, Default)]
    pub struct FlushRing;

    impl FlushRing {
        /// Nothing to set up.
        pub fn new() -> std::io::Result<FlushRing> {
            Ok(FlushRing)
        }

        /// [`DmaFile::write_then_sync`].
        pub async fn write_then_sync(
            &self,
            file: &DmaFile,
            buf: std::rc::Rc<DmaBuffer>,
            pos: u64,
            sync: crate::rt::WriteSync,
        ) -> std::io::Result<ChainResult> {
            file.write_then_sync(buf, pos, sync).await
        }
    }
}
