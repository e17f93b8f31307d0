//! On glommio, a flush path below the runtime: one io_uring of the log's own (the `io-uring`
//! crate), where a flush is one submission of a chain `write -> fdatasync -> notify`. (The
//! native runtime needs none of this: its executor's ring takes the chain itself.)
//!
//! Why: through glommio 0.9 a flush is two separate operations, each submitted and reaped by
//! the runtime's rings, and the executor crosses into the kernel about a dozen times per flush
//! (measured with `strace -c` on `corelog bench wal --concurrency 1`); in a VM each crossing
//! costs microseconds. glommio also cannot link a write to its fdatasync. Here the executor
//! makes one `io_uring_enter` to submit the chain and never waits in it: the kernel runs the
//! write, then the fdatasync (in its io-wq workers, as for any fsync on io_uring), then sends
//! one byte on a socket pair whose other end the runtime is already reading. That read's
//! completion wakes a small reaper task, which takes the chain's results from this ring's
//! completion queue and wakes the flush that waits for them. No thread of ours blocks and
//! nothing spins.
//!
//! Links are hard (`IOSQE_IO_HARDLINK`): a failed or short write does not cancel the rest of the
//! chain, so the notification is always sent and the error always reaches the waiter. The
//! fdatasync after a failed write is harmless; the flush reports the write's error, and the log
//! poisons itself as for any write error (see the log's module docs).
//!
//! With `SyncMethod::Dsync` the segment is opened `O_DSYNC`, so the chain is `write -> notify`;
//! so it is for a flush written with `RWF_DSYNC` (`WriteSync::Dsync`, see
//! `SyncMethod::Adaptive`), whose write completes once durable.
//!
//! Ordering of results: the write and fdatasync completions are posted before the notification
//! is even started (the chain runs in order), so once its byte has arrived they are in the
//! completion queue. The notification's own completion may come later; it is reaped and
//! checked whenever it shows up.
//!
//! Lifetime: a chain borrows the flush's buffer and the segment's file descriptor until its
//! completions are reaped. The pending table keeps the buffer (`Rc<DmaBuffer>`) alive for that
//! long, and the log drains every flush before it closes or retires a segment. Dropping the
//! ring shuts the socket pair, which ends the reaper.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use crate::rt::fs::DmaBuffer;
use futures_lite::io::AsyncReadExt;
use io_uring::{IoUring, opcode, squeue, types};

/// Entries of the submission queue: three per flush, a few flushes in flight per log.
const RING_ENTRIES: u32 = 64;

/// The byte each chain sends to wake the reaper.
static NOTIFY_BYTE: [u8; 1] = [1];

const OP_WRITE: u64 = 0;
const OP_SYNC: u64 = 1;
const OP_NOTIFY: u64 = 2;

/// Results of one chain, filled in as its completions are reaped.
#[derive(Default)]
struct Pending {
    write: Option<i32>,
    sync: Option<i32>,
    /// Whether the chain has an fdatasync.
    wants_sync: bool,
    waker: Option<Waker>,
    /// Kept alive until the kernel is done with it.
    _buf: Option<Rc<DmaBuffer>>,
}

impl Pending {
    fn done(&self) -> bool {
        self.write.is_some() && (!self.wants_sync || self.sync.is_some())
    }
}

struct Inner {
    ring: RefCell<IoUring>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    /// The end the kernel writes the notification byte into; shut down on drop.
    notify_tx: StdUnixStream,
    /// A notification failed: the reaper cannot be trusted to wake waiters any more.
    broken: RefCell<Option<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The log drains its flushes before it lets go of the ring, so nothing should be in
        // flight. If something is, its buffer must not be freed under the kernel: wait for it.
        let ring = self.ring.get_mut();
        let pending = self.pending.get_mut();
        while pending.values().any(|p| !p.done()) {
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            for cqe in ring.completion() {
                if let Some(p) = pending.get_mut(&(cqe.user_data() >> 2)) {
                    match cqe.user_data() & 3 {
                        OP_WRITE => p.write = Some(cqe.result()),
                        OP_SYNC => p.sync = Some(cqe.result()),
                        _ => {}
                    }
                }
            }
        }
        let _ = self.notify_tx.shutdown(std::net::Shutdown::Both);
    }
}

/// The result of one flush chain: the write's byte count, and the fdatasync's result when the
/// chain had one.
#[derive(Debug)]
pub struct ChainResult {
    /// Bytes written, or the write's error.
    pub write: io::Result<usize>,
    /// The fdatasync's result, if there was one.
    pub sync: Option<io::Result<()>>,
}

fn to_result(res: i32) -> io::Result<usize> {
    if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as usize) }
}

/// One log's side ring. Cheap to clone.
#[derive(Clone)]
pub struct FlushRing {
    inner: Rc<Inner>,
}

impl FlushRing {
    /// Sets up the ring and its socket pair and starts the reaper on the current executor.
    pub fn new() -> io::Result<FlushRing> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let (tx, rx) = StdUnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        // SAFETY: `rx` is a connected socket we own; ownership moves to the runtime's stream.
        let rx = unsafe {
            use std::os::fd::{FromRawFd, IntoRawFd};
            glommio::net::UnixStream::from_raw_fd(rx.into_raw_fd())
        };
        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            notify_tx: tx,
            broken: RefCell::new(None),
        });
        let weak = Rc::downgrade(&inner);
        crate::rt::spawn(reaper(weak, rx)).detach();
        Ok(FlushRing { inner })
    }

    /// Writes `buf` at `pos` of `fd`, made durable as `how` says (then an fdatasync in the same
    /// chain, or the write flagged `RWF_DSYNC`); resolves when the chain is done. The buffer is
    /// kept alive until the kernel is done with it, even if this future is dropped early.
    pub async fn write_then_sync(
        &self,
        file: &glommio::io::DmaFile,
        buf: Rc<DmaBuffer>,
        pos: u64,
        how: crate::rt::WriteSync,
    ) -> io::Result<ChainResult> {
        let sync = how == crate::rt::WriteSync::Fdatasync;
        if let Some(why) = self.inner.broken.borrow().as_ref() {
            return Err(io::Error::other(why.clone()));
        }
        let fd = file.as_raw_fd();
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("flush over 4 GiB"))?;
        let write = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
            .offset(pos)
            .rw_flags(how.rw_flags())
            .build()
            .user_data(id << 2 | OP_WRITE)
            .flags(squeue::Flags::IO_HARDLINK);
        let fsync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(id << 2 | OP_SYNC)
            .flags(squeue::Flags::IO_HARDLINK);
        let notify =
            opcode::Send::new(types::Fd(self.inner.notify_tx.as_raw_fd()), NOTIFY_BYTE.as_ptr(), 1)
                .build()
                .user_data(id << 2 | OP_NOTIFY);
        self.inner
            .pending
            .borrow_mut()
            .insert(id, Pending { wants_sync: sync, _buf: Some(buf), ..Pending::default() });
        {
            let mut ring = self.inner.ring.borrow_mut();
            let mut sq = ring.submission();
            let need = if sync { 3 } else { 2 };
            if sq.capacity() - sq.len() < need {
                drop(sq);
                self.inner.pending.borrow_mut().remove(&id);
                return Err(io::Error::other("side ring submission queue full"));
            }
            // SAFETY: the buffer and the notification byte outlive the operations (the buffer
            // is held in `pending` until its completions are reaped; the byte is static), and
            // `fd` stays open until the log has drained its flushes.
            unsafe {
                sq.push(&write).expect("room checked");
                if sync {
                    sq.push(&fsync).expect("room checked");
                }
                sq.push(&notify).expect("room checked");
            }
            drop(sq);
            if let Err(e) = ring.submit() {
                // Nothing of the chain reached the kernel (the queue is consumed only by a
                // successful enter), so nothing is in flight.
                ring.submission().sync();
                self.inner.pending.borrow_mut().remove(&id);
                return Err(e);
            }
        }
        loop {
            let inner = self.inner.clone();
            let done = std::future::poll_fn(move |cx| {
                let mut pending = inner.pending.borrow_mut();
                let p = pending.get_mut(&id).expect("a waiter's chain is pending until it is done");
                if p.done() {
                    let p = pending.remove(&id).expect("present");
                    return Poll::Ready(Ok(ChainResult {
                        write: to_result(p.write.expect("done")),
                        sync: p.sync.map(|r| to_result(r).map(|_| ())),
                    }));
                }
                if let Some(why) = inner.broken.borrow().as_ref() {
                    return Poll::Ready(Err(io::Error::other(why.clone())));
                }
                p.waker = Some(cx.waker().clone());
                Poll::Pending
            });
            let poke = async {
                crate::rt::sleep(POKE_AFTER).await;
                None
            };
            match futures_lite::future::or(async { Some(done.await) }, poke).await {
                Some(result) => return result,
                None => self.poke(),
            }
        }
    }

    /// Enters the ring (nothing to submit) and reaps, without waiting for the reaper task (see
    /// [`POKE_AFTER`]).
    fn poke(&self) {
        let _ = self.inner.ring.borrow_mut().submit_and_wait(0);
        reap(&self.inner);
    }
}

/// How long a flush waits for its chain before it reaps the ring itself.
///
/// Why a flush cannot simply wait for the reaper: glommio 0.9's executor can go to sleep with
/// a task it has just woken still unrun. Its loop polls the rings (waking tasks), then runs
/// the task queues, but `run_task_queues` stops before running anything when `need_preempt()`
/// is true, and that is true whenever the latency ring's completion queue is not empty. A late
/// completion of the runtime's own cancelled preemption timer (`-ECANCELED`, posted by kernel
/// task work on the executor thread) can land there in between; the loop then takes "nothing
/// ran" for "idle", consumes that completion (which wakes nobody) and parks, leaving the woken
/// reaper in its queue until some unrelated event arrives. Under CPU pressure (two busy loops
/// beside `tests/log.rs`'s pipelined test on this project's 2-vCPU VM) that happened in about
/// 1 run of 600: every chain complete in this ring's completion queue, the notification bytes
/// unread in the socket, the executor asleep in the runtime's ring for good (an `ftrace` of the
/// `io_uring` events showed the sequence). With `run_task_queues` changed to report "ran" when
/// it stops for preemption with tasks queued, the same stress gave 0 stalls in 3,000 runs; that
/// two-line change belongs in the runtime, not here. Until then, a flush that has waited this
/// long reaps the ring itself (and enters it, which runs any completion work queued to this
/// thread), so such a stall costs a few milliseconds instead of forever. Other tasks of a node
/// are bounded the same way by the consensus tick.
const POKE_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// Takes every completion from the ring and wakes the waiters whose chains are done.
fn reap(inner: &Inner) {
    let mut ring = inner.ring.borrow_mut();
    let mut pending = inner.pending.borrow_mut();
    for cqe in ring.completion() {
        let id = cqe.user_data() >> 2;
        let op = cqe.user_data() & 3;
        if op == OP_NOTIFY {
            if cqe.result() < 0 {
                let e = io::Error::from_raw_os_error(-cqe.result());
                *inner.broken.borrow_mut() = Some(format!("side ring notification failed: {e}"));
                tracing::error!("side ring notification failed: {e}");
            }
            continue;
        }
        let Some(p) = pending.get_mut(&id) else {
            continue;
        };
        match op {
            OP_WRITE => p.write = Some(cqe.result()),
            OP_SYNC => p.sync = Some(cqe.result()),
            _ => {}
        }
        if p.done()
            && let Some(w) = p.waker.take()
        {
            w.wake();
        }
    }
}

async fn reaper(inner: Weak<Inner>, mut rx: glommio::net::UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        let n = rx.read(&mut buf).await;
        let Some(inner) = inner.upgrade() else { return };
        match n {
            Ok(0) | Err(_) => {
                // The ring was dropped (EOF) or the socket failed: wake everyone, so no waiter
                // hangs, with the reason.
                if n.is_err() {
                    *inner.broken.borrow_mut() =
                        Some(format!("side ring notification socket failed: {n:?}"));
                }
                reap(&inner);
                for p in inner.pending.borrow_mut().values_mut() {
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                }
                return;
            }
            Ok(_) => reap(&inner),
        }
    }
}
