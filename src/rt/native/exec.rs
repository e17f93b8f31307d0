//! The executor: one thread, one io_uring, a run queue of tasks, timers.
//!
//! The loop runs the ready tasks, hands the submissions they queued to the kernel, takes the
//! completions (no system call: the completion queue is shared memory), fires due timers, and
//! when nothing is ready sleeps in one `io_uring_enter` that also submits, bounded by the next
//! timer. A wake-up therefore costs the kernel one system call, whatever woke it: a socket, a
//! disk write, a timer, or another thread (which writes an eventfd that a read on the ring is
//! waiting for, only while the executor sleeps).
//!
//! Tasks live in a slab owned by the executor; a waker names its task's slot and generation,
//! so waking a finished or cancelled task does nothing. A waker may be woken from any thread:
//! from the executor's own it queues the task directly, from another it goes through a locked
//! queue and the eventfd.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;

/// Submission queue entries; the completion queue is twice that (the kernel's default).
const RING_ENTRIES: u32 = 1024;

/// Slots of the table of registered ("fixed") buffers each ring has: the buffers written from
/// (pooled, so a log registers a handful and reuses them).
const FIXED_BUFFERS: u32 = 512;

/// Tells runtimes apart, so a buffer registered with one ring is never used by index with
/// another.
static NEXT_RUNTIME_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Tasks run between two looks at the completion queue, so a busy run queue cannot hold
/// completed I/O back for long.
const TASKS_PER_TURN: usize = 256;

/// `user_data` of the eventfd read that wakes a sleeping executor from another thread.
const UD_EVENTFD: u64 = u64::MAX;
/// `user_data` of cancellations, whose own completions carry nothing.
const UD_IGNORE: u64 = u64::MAX - 1;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
}

/// The executor of the current thread. Panics outside an executor: every async part of
/// corelog runs on one, and a call from elsewhere is a bug.
pub(crate) fn current() -> Rc<Runtime> {
    try_current().expect("corelog::rt: not on an executor thread (start one with rt::Executor)")
}

pub(crate) fn try_current() -> Option<Rc<Runtime>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// What other threads share with an executor.
pub(crate) struct Shared {
    /// Tasks woken from other threads: (slot, generation).
    remote: Mutex<Vec<(usize, u64)>>,
    /// Set (SeqCst) just before the executor sleeps; a remote waker that sees it writes the
    /// eventfd. The executor looks at `remote` after setting it, so no wake is lost.
    sleeping: AtomicBool,
    eventfd: OwnedFd,
}

impl Shared {
    fn wake_remote(&self, slot: usize, gen_: u64) {
        self.remote.lock().unwrap_or_else(|e| e.into_inner()).push((slot, gen_));
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// The waker of one task.
struct TaskWaker {
    slot: usize,
    gen_: u64,
    /// Queued and not yet run: further wakes are free.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // On the executor's own thread (its runtime is the current one) the task is queued
        // directly; from anywhere else through the locked queue.
        if let Some(rt) = try_current()
            && Arc::ptr_eq(&rt.shared, &self.shared)
        {
            rt.ready.borrow_mut().push_back((self.slot, self.gen_));
            return;
        }
        self.shared.wake_remote(self.slot, self.gen_);
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    gen_: u64,
    /// `None` while the task is being polled.
    future: Option<BoxFuture>,
    waker: Arc<TaskWaker>,
    /// Its handle was dropped while it was being polled: drop it after this poll.
    cancelled: bool,
}

/// Results of operations on the ring, by slot (`user_data`).
pub(crate) struct OpSlot {
    /// Matches the high half of the `user_data`: a completion for an earlier user of the
    /// same slot is ignored.
    gen_: u32,
    pub(crate) result: Option<i32>,
    pub(crate) waker: Option<Waker>,
    /// The future went away before the completion: free the slot when it comes.
    pub(crate) orphan: bool,
    /// What the kernel may still touch (buffers, paths) until the completion.
    pub(crate) _keep: Option<Box<dyn std::any::Any>>,
    /// Half of a write -> fdatasync chain whose write posts no completion when it succeeds.
    link: Link,
    /// The op opens a descriptor: if nobody waits for it any more, close what it returns.
    pub(crate) opens_fd: bool,
}

/// The two halves of a chain whose head is submitted with `CQE_SKIP_SUCCESS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    None,
    /// The head (the write): a completion means it failed or was short; the op named here
    /// (the fdatasync) is then cancelled, and its completion may never come.
    HeadOf(u64),
    /// The tail (the fdatasync): its completion means the head finished too.
    TailOf(u64),
}

/// One executor's state, on its own thread.
pub(crate) struct Runtime {
    ring: RefCell<IoUring>,
    pub(crate) ops: RefCell<Slab<OpSlot>>,
    tasks: RefCell<Slab<TaskSlot>>,
    next_gen: Cell<u64>,
    ready: RefCell<VecDeque<(usize, u64)>>,
    shared: Arc<Shared>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    /// The eventfd read's target (leaked: 8 bytes per executor, so that a read still in the
    /// kernel when the executor ends never lands in freed memory).
    eventfd_buf: &'static Cell<u64>,
    /// Whether the eventfd read is in the ring.
    eventfd_armed: Cell<bool>,
    /// Poll this long for completions before sleeping (off by default).
    spin: Option<Duration>,
    /// The kernel can skip a successful op's completion (`IOSQE_CQE_SKIP_SUCCESS`, 5.17).
    skip_success: bool,
    /// Unique among the runtimes of this process.
    pub(crate) id: u64,
    /// Free slots of the fixed-buffer table; `None` once registering is not possible (no
    /// sparse tables before 5.13, or the locked-memory limit reached).
    fixed_free: RefCell<Option<Vec<u16>>>,
    /// Slots whose buffers were freed while the ring was borrowed (see `unregister_buffer`).
    fixed_unregister: RefCell<Vec<u16>>,
}

impl Runtime {
    fn new() -> io::Result<Runtime> {
        let ring = build_ring()?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (Linux 5.11 or later is needed)",
            ));
        }
        let skip_success = ring.params().is_feature_skip_cqe_on_success();
        let fixed_free = ring
            .submitter()
            .register_buffers_sparse(FIXED_BUFFERS)
            .ok()
            .map(|()| (0..FIXED_BUFFERS as u16).rev().collect());
        // Blocking: a read on the ring then waits for a write (io_uring would answer EAGAIN at
        // once for a non-blocking descriptor).
        // SAFETY: plain eventfd creation; the descriptor is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a new descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(Runtime {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::with_capacity(256)),
            tasks: RefCell::new(Slab::with_capacity(256)),
            next_gen: Cell::new(1),
            ready: RefCell::new(VecDeque::with_capacity(256)),
            shared: Arc::new(Shared {
                remote: Mutex::new(Vec::new()),
                sleeping: AtomicBool::new(false),
                eventfd,
            }),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
            eventfd_buf: Box::leak(Box::new(Cell::new(0))),
            eventfd_armed: Cell::new(false),
            spin: None,
            skip_success,
            id: NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed),
            fixed_free: RefCell::new(fixed_free),
            fixed_unregister: RefCell::new(Vec::new()),
        })
    }

    /// Queues one submission (a chain's entries are queued together after [`Self::room_for`]).
    pub(crate) fn push(&self, entry: squeue::Entry) {
        self.room_for(1);
        // SAFETY: every entry's pointers stay valid until its completion: the caller keeps
        // them in the op slot (`_keep`) or in memory that outlives the ring.
        unsafe { self.ring.borrow_mut().submission().push(&entry) }.expect("room was made");
    }

    /// Makes room for `n` submissions in a row (a chain must not be split by a submit): when
    /// the queue is full, hands it to the kernel.
    pub(crate) fn room_for(&self, n: usize) {
        let mut ring = self.ring.borrow_mut();
        loop {
            let free = {
                let sq = ring.submission();
                sq.capacity() - sq.len()
            };
            if free >= n {
                return;
            }
            match ring.submit() {
                Ok(_) => {}
                Err(e) if retryable(&e) => {
                    drop(ring);
                    self.reap();
                    ring = self.ring.borrow_mut();
                }
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// Registers the `len` bytes at `ptr` as a fixed buffer of this ring; returns its index,
    /// or `None` when the table is full or registering failed (then the caller writes from
    /// plain memory, and after a failure this ring stops trying: it is the locked-memory
    /// limit, which a later buffer would meet too).
    ///
    /// # Safety
    /// The memory must stay allocated until [`Runtime::unregister_buffer`] or the ring's end.
    pub(crate) unsafe fn register_buffer(&self, ptr: *mut u8, len: usize) -> Option<u16> {
        // A write is built while no ring borrow is held; were one held, write from plain memory.
        let ring = self.ring.try_borrow().ok()?;
        let mut free = self.fixed_free.borrow_mut();
        let idx = free.as_mut()?.pop()?;
        let iov = libc::iovec { iov_base: ptr.cast(), iov_len: len };
        // SAFETY: the caller keeps the memory alive while it is registered.
        let r = unsafe { ring.submitter().register_buffers_update(u32::from(idx), &[iov], None) };
        match r {
            Ok(()) => Some(idx),
            Err(e) => {
                tracing::debug!(error = %e, "registering a buffer failed; writing from plain memory");
                *free = None;
                None
            }
        }
    }

    /// Empties slot `idx` of the fixed-buffer table (its memory is about to be freed; no op
    /// uses it, since ops hold their buffers until their completions). A buffer can be freed
    /// while the ring is borrowed (an op slot dropped as a completion is reaped): then the slot
    /// is emptied at the next turn, and not reused before. Freeing the memory first is sound:
    /// no op refers to the slot, and the kernel holds the pages it pinned until then.
    pub(crate) fn unregister_buffer(&self, idx: u16) {
        let Ok(ring) = self.ring.try_borrow() else {
            self.fixed_unregister.borrow_mut().push(idx);
            return;
        };
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: an empty entry refers to no memory.
        let r = unsafe { ring.submitter().register_buffers_update(u32::from(idx), &[iov], None) };
        // On failure the slot stays registered and is not reused: the ring's end releases it.
        if let (Ok(()), Some(free)) = (r, self.fixed_free.borrow_mut().as_mut()) {
            free.push(idx);
        }
    }

    /// Empties the fixed-buffer slots whose buffers were freed while the ring was borrowed.
    fn unregister_deferred(&self) {
        if self.fixed_unregister.borrow().is_empty() {
            return;
        }
        let pending = std::mem::take(&mut *self.fixed_unregister.borrow_mut());
        for idx in pending {
            self.unregister_buffer(idx);
        }
    }

    /// A new op slot holding `keep` until its completion; returns its `user_data`.
    pub(crate) fn new_op(&self, keep: Option<Box<dyn std::any::Any>>) -> u64 {
        let gen_ = self.next_gen.get() as u32;
        self.next_gen.set(self.next_gen.get() + 1);
        let key = self.ops.borrow_mut().insert(OpSlot {
            gen_,
            result: None,
            waker: None,
            orphan: false,
            _keep: keep,
            link: Link::None,
            opens_fd: false,
        });
        (gen_ as u64) << 32 | key as u64
    }

    /// Asks the kernel to cancel the operation `ud` (its completion still arrives).
    pub(crate) fn cancel(&self, ud: u64) {
        self.push(opcode::AsyncCancel::new(ud).build().user_data(UD_IGNORE));
    }

    /// Takes every completion in the queue; returns how many.
    fn reap(&self) -> usize {
        let mut n = 0;
        let mut ring = self.ring.borrow_mut();
        let mut ops = self.ops.borrow_mut();
        for cqe in ring.completion() {
            n += 1;
            match cqe.user_data() {
                UD_IGNORE => {}
                UD_EVENTFD => self.eventfd_armed.set(false),
                ud => {
                    let Some(slot) = op_mut(&mut ops, ud) else { continue };
                    match slot.link {
                        Link::None => {}
                        Link::TailOf(head) => {
                            // The head's success posted nothing: it is done, free it (unless
                            // it failed and its completion is waiting to be read).
                            if op_mut(&mut ops, head).is_some_and(|h| h.result.is_none()) {
                                ops.remove(key_of(head));
                            }
                        }
                        Link::HeadOf(tail) => {
                            // The head failed: the tail was cancelled, and the kernel may not
                            // post it (a late completion finds the slot gone and is ignored).
                            if op_mut(&mut ops, tail).is_some() {
                                ops.remove(key_of(tail));
                            }
                        }
                    }
                    let Some(slot) = op_mut(&mut ops, ud) else { continue };
                    if slot.orphan {
                        if slot.opens_fd && cqe.result() >= 0 {
                            // SAFETY: a descriptor the kernel just opened for us, unused.
                            unsafe { libc::close(cqe.result()) };
                        }
                        ops.remove(key_of(ud));
                        continue;
                    }
                    slot.result = Some(cqe.result());
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
            }
        }
        n
    }

    fn arm_eventfd(&self) {
        if self.eventfd_armed.replace(true) {
            return;
        }
        let e = opcode::Read::new(
            types::Fd(self.shared.eventfd.as_raw_fd()),
            self.eventfd_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(UD_EVENTFD);
        self.push(e);
    }

    fn fire_timers(&self) {
        let now = Instant::now();
        loop {
            let w = {
                let mut t = self.timers.borrow_mut();
                match t.first_entry() {
                    Some(e) if e.key().0 <= now => e.remove(),
                    _ => return,
                }
            };
            w.wake();
        }
    }

    fn take_remote(&self) {
        let mut remote = self.shared.remote.lock().unwrap_or_else(|e| e.into_inner());
        if !remote.is_empty() {
            self.ready.borrow_mut().extend(remote.drain(..));
        }
    }

    /// Runs up to [`TASKS_PER_TURN`] ready tasks; returns how many ran.
    fn run_ready(&self) -> usize {
        let mut ran = 0;
        while ran < TASKS_PER_TURN {
            let Some((slot, gen_)) = self.ready.borrow_mut().pop_front() else { break };
            let (mut fut, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(t) = tasks.get_mut(slot) else { continue };
                if t.gen_ != gen_ {
                    continue;
                }
                let Some(f) = t.future.take() else { continue };
                t.waker.queued.swap(false, Ordering::AcqRel);
                (f, t.waker.clone())
            };
            ran += 1;
            let w = Waker::from(waker);
            let done = fut.as_mut().poll(&mut Context::from_waker(&w)).is_ready();
            let dropped = {
                let mut tasks = self.tasks.borrow_mut();
                match tasks.get_mut(slot) {
                    Some(t) if t.gen_ == gen_ && !done && !t.cancelled => {
                        t.future = Some(fut);
                        None
                    }
                    Some(t) if t.gen_ == gen_ => {
                        tasks.remove(slot);
                        Some(fut)
                    }
                    _ => Some(fut),
                }
            };
            // Dropped outside the borrow: a future's drop may cancel other tasks.
            drop(dropped);
        }
        ran
    }

    /// Adds a task to the slab and the run queue: at its end, or (`next`) at its front.
    fn spawn_boxed(&self, future: BoxFuture, next: bool) -> (usize, u64) {
        let gen_ = self.next_gen.get();
        self.next_gen.set(gen_ + 1);
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let slot = entry.key();
        let waker = Arc::new(TaskWaker {
            slot,
            gen_,
            queued: AtomicBool::new(true),
            shared: self.shared.clone(),
        });
        entry.insert(TaskSlot { gen_, future: Some(future), waker, cancelled: false });
        if next {
            self.ready.borrow_mut().push_front((slot, gen_));
        } else {
            self.ready.borrow_mut().push_back((slot, gen_));
        }
        (slot, gen_)
    }

    fn cancel_task(&self, slot: usize, gen_: u64) {
        let removed = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(slot) {
                Some(t) if t.gen_ == gen_ => {
                    if t.future.is_none() {
                        // Being polled right now (it dropped its own handle): after the poll.
                        t.cancelled = true;
                        None
                    } else {
                        Some(tasks.remove(slot))
                    }
                }
                _ => None,
            }
        };
        drop(removed);
    }

    /// One turn of the loop: run what is ready, then take I/O and timers, sleeping for them
    /// if nothing is ready. Returns at once, without sleeping, once `done()`.
    fn turn(&self, done: &dyn Fn() -> bool) -> io::Result<()> {
        self.unregister_deferred();
        self.run_ready();
        if done() {
            return Ok(());
        }
        self.take_remote();
        self.reap();
        self.fire_timers();
        if !self.ready.borrow().is_empty() {
            let ring = self.ring.borrow();
            if needs_enter(&ring) {
                ring.submit().or_else(busy_ok)?;
            }
            return Ok(());
        }
        if let Some(d) = self.spin {
            // Opt-in: enter the kernel without waiting (which also runs the completion work
            // queued for this thread) until something is ready, the next timer, or `d`.
            let mut until = Instant::now() + d;
            if let Some((k, _)) = self.timers.borrow().first_key_value() {
                until = until.min(k.0);
            }
            while Instant::now() < until {
                self.ring.borrow().submit().or_else(busy_ok)?;
                self.reap();
                self.take_remote();
                if !self.ready.borrow().is_empty() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            self.fire_timers();
            if !self.ready.borrow().is_empty() {
                return Ok(());
            }
        }
        self.arm_eventfd();
        self.shared.sleeping.store(true, Ordering::SeqCst);
        self.take_remote();
        if !self.ready.borrow().is_empty() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            let ring = self.ring.borrow();
            if needs_enter(&ring) {
                ring.submit().or_else(busy_ok)?;
            }
            return Ok(());
        }
        let next = self.timers.borrow().first_key_value().map(|(k, _)| k.0);
        let r = {
            let ring = self.ring.borrow();
            match next {
                Some(at) => {
                    let d = at.saturating_duration_since(Instant::now());
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
                None => ring.submit_and_wait(1),
            }
        };
        self.shared.sleeping.store(false, Ordering::SeqCst);
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || retryable(&e) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        self.fire_timers();
        self.take_remote();
        Ok(())
    }

    /// Cancels what is in flight and waits for the kernel to let go of every buffer.
    fn drain(&self) {
        // What the last turn queued goes to the kernel before the tasks (and the files and
        // sockets they own) are dropped.
        let _ = self.ring.borrow().submit();
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
        let live: Vec<u64> =
            self.ops.borrow().iter().map(|(k, s)| (s.gen_ as u64) << 32 | k as u64).collect();
        for ud in live {
            self.cancel(ud);
        }
        if self.eventfd_armed.get() {
            self.cancel(UD_EVENTFD);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while (!self.ops.borrow().is_empty() || self.eventfd_armed.get())
            && Instant::now() < deadline
        {
            {
                let ring = self.ring.borrow();
                let ts = types::Timespec::from(Duration::from_millis(100));
                let args = types::SubmitArgs::new().timespec(&ts);
                if let Err(e) = ring.submitter().submit_with_args(1, &args)
                    && e.raw_os_error() != Some(libc::ETIME)
                    && !retryable(&e)
                {
                    tracing::error!(error = %e, "io_uring enter failed while draining");
                    break;
                }
            }
            // Completions of ops whose futures are gone free their slots.
            for (_, s) in self.ops.borrow_mut().iter_mut() {
                s.orphan = true;
            }
            self.reap();
        }
        let left = self.ops.borrow().len();
        if left > 0 {
            // The kernel may still write into what these ops hold: never free it.
            tracing::error!(
                ops = left,
                "io_uring operations still in flight at executor exit; their buffers are leaked"
            );
            std::mem::forget(std::mem::take(&mut *self.ops.borrow_mut()));
        }
    }
}

fn key_of(ud: u64) -> usize {
    (ud & 0xffff_ffff) as usize
}

/// The slot of op `ud`, if it is still that op's.
fn op_mut(ops: &mut Slab<OpSlot>, ud: u64) -> Option<&mut OpSlot> {
    ops.get_mut(key_of(ud)).filter(|s| s.gen_ as u64 == ud >> 32)
}

/// Errors of `io_uring_enter` that mean "try again" (completion queue backpressure, memory
/// pressure, a signal).
fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR))
}

fn busy_ok(e: io::Error) -> io::Result<usize> {
    if retryable(&e) { Ok(0) } else { Err(e) }
}

/// Whether the kernel holds completions back (overflow) or task work for this thread: only
/// an enter with GETEVENTS (which `submit` adds then) lets them through.
fn needs_enter(ring: &IoUring) -> bool {
    // SAFETY: a shared view of the submission queue's flags; nothing pushes meanwhile.
    let sq = unsafe { ring.submission_shared() };
    !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
}

fn build_ring() -> io::Result<IoUring> {
    // Completions are run when the executor enters the kernel, not by interrupting it
    // (COOP_TASKRUN, 5.19), and only this thread submits (SINGLE_ISSUER, 6.0); older kernels
    // get a plain ring.
    let tuned = IoUring::builder().setup_coop_taskrun().setup_single_issuer().build(RING_ENTRIES);
    match tuned {
        Ok(r) => Ok(r),
        Err(_) => IoUring::new(RING_ENTRIES),
    }
}

/// A spawned task: awaiting it yields its output; dropping it cancels the task unless it was
/// detached.
pub struct Task<T> {
    slot: usize,
    gen_: u64,
    state: Rc<JoinState<T>>,
    detached: bool,
}

struct JoinState<T> {
    output: RefCell<Option<T>>,
    done: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl<T> Task<T> {
    /// Lets the task run on after this handle is gone.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if !self.detached
            && !self.state.done.get()
            && let Some(rt) = try_current()
        {
            rt.cancel_task(self.slot, self.gen_);
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.state.output.borrow_mut().take() {
            return Poll::Ready(v);
        }
        assert!(!self.state.done.get(), "a task's output was taken twice");
        *self.state.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Spawns a task on the current executor; it runs after the tasks already ready.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    spawn_at(future, false)
}

/// Spawns a task that runs before the tasks already ready (as soon as the current one
/// yields). The log starts its flushes this way: a flush then goes out while the appenders
/// woken with it are still queued, so up to the allowed number of flushes are in flight at
/// once and later appends gather behind them, instead of every ready appender landing in one
/// large flush (13-18% more appends/s with 64 in flight on the project's VM).
pub fn spawn_next<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    spawn_at(future, true)
}

fn spawn_at<T: 'static>(future: impl Future<Output = T> + 'static, next: bool) -> Task<T> {
    let state = Rc::new(JoinState {
        output: RefCell::new(None),
        done: Cell::new(false),
        waiter: RefCell::new(None),
    });
    let s = state.clone();
    let wrapped = async move {
        let v = future.await;
        *s.output.borrow_mut() = Some(v);
        s.done.set(true);
        if let Some(w) = s.waiter.borrow_mut().take() {
            w.wake();
        }
    };
    let (slot, gen_) = current().spawn_boxed(Box::pin(wrapped), next);
    Task { slot, gen_, state, detached: false }
}

/// Runs `future` to completion on a new executor on this thread, with everything it spawns.
/// When it finishes, the tasks still running are dropped and in-flight I/O is cancelled.
///
/// `pin`: the core to pin this thread to. The kernel's io-wq workers for this ring (every
/// fdatasync runs in one) inherit the pin, so a pinned executor and its fdatasyncs take turns
/// on one core: with one appender on the project's 2-vCPU VM a flush took 127-158 µs pinned
/// and 95-106 µs unpinned (a bare write + fdatasync: 100 µs), while 64 appenders in each of
/// two groups made 13% more appends/s pinned. (Registering a wider io-wq affinity,
/// `IORING_REGISTER_IOWQ_AFF`, was accepted but did not change the workers' CPUs on Linux
/// 6.18.)
pub(crate) fn block_on<F: Future<Output = T> + 'static, T: 'static>(
    make: impl FnOnce() -> F,
    spin: Option<Duration>,
    pin: Option<usize>,
) -> io::Result<T> {
    let mut rt = Runtime::new()?;
    rt.spin = spin;
    if let Some(core) = pin
        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
    {
        return Err(io::Error::other(format!("pinning the executor to core {core} failed")));
    }
    let rt = Rc::new(rt);
    CURRENT.with(|c| {
        assert!(c.borrow().is_none(), "an executor is already running on this thread");
        *c.borrow_mut() = Some(rt.clone());
    });
    struct Reset(Rc<Runtime>);
    impl Drop for Reset {
        fn drop(&mut self) {
            self.0.drain();
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    let reset = Reset(rt.clone());
    // Made on the executor, so it may spawn and sleep at once.
    let main = spawn(make());
    let out = loop {
        if let Some(v) = main.state.output.borrow_mut().take() {
            break v;
        }
        rt.turn(&|| main.state.done.get())?;
    };
    drop(main);
    drop(reset);
    Ok(out)
}

/// A timer future: ready at its deadline.
pub struct Sleep {
    at: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            if let Some(k) = self.key.take() {
                current().timers.borrow_mut().remove(&k);
            }
            return Poll::Ready(());
        }
        let rt = current();
        let key = match self.key {
            Some(k) => k,
            None => {
                let id = rt.next_timer.get();
                rt.next_timer.set(id + 1);
                let k = (self.at, id);
                self.key = Some(k);
                k
            }
        };
        rt.timers.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take()
            && let Some(rt) = try_current()
        {
            rt.timers.borrow_mut().remove(&k);
        }
    }
}

/// Waits `d` on the current executor's timers.
pub fn sleep(d: Duration) -> Sleep {
    Sleep { at: Instant::now() + d, key: None }
}

/// Runs a blocking function on a thread of its own and waits for its result.
pub async fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    struct Slot<T> {
        value: Option<std::thread::Result<T>>,
        waker: Option<Waker>,
    }
    let slot = Arc::new(Mutex::new(Slot { value: None, waker: None }));
    let s = slot.clone();
    std::thread::spawn(move || {
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let w = {
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            g.value = Some(v);
            g.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    });
    let v = std::future::poll_fn(|cx| {
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        match g.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    match v {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// An operation on the ring: resolves to the completion's result (`-errno` on failure).
pub(crate) struct Op {
    ud: Option<u64>,
    /// An op belongs to the executor of the thread that submitted it.
    _not_send: std::marker::PhantomData<*const ()>,
    /// Cancel the operation if the future is dropped before it completes (polls on sockets);
    /// a disk write is left to finish, its buffer kept alive by the slot.
    cancel_on_drop: bool,
}

impl Op {
    /// Submits `entry` (its `user_data` is set here); `keep` lives until the completion.
    pub(crate) fn submit(
        entry: squeue::Entry,
        keep: Option<Box<dyn std::any::Any>>,
        cancel_on_drop: bool,
    ) -> Op {
        let rt = current();
        let ud = rt.new_op(keep);
        rt.push(entry.user_data(ud));
        Op { ud: Some(ud), cancel_on_drop, _not_send: std::marker::PhantomData }
    }
}

/// A write linked to an fdatasync, submitted together (see [`write_then_fdatasync`]).
pub(crate) struct Chain {
    write: Op,
    sync: Op,
    /// The write's success posts no completion.
    skipped: bool,
}

/// Submits `write` linked to `sync`; `keep` (the write's buffer) lives until the write is
/// done. Where the kernel allows, the write is submitted with `CQE_SKIP_SUCCESS`, so a
/// successful flush posts one completion and wakes the executor once, not twice; a failed or
/// short write still posts its own (a short write fails the link, so the fdatasync is then
/// cancelled). Elsewhere the links are hard and both complete.
pub(crate) fn write_then_fdatasync(
    write: squeue::Entry,
    sync: squeue::Entry,
    keep: Box<dyn std::any::Any>,
) -> Chain {
    let rt = current();
    rt.room_for(2);
    let w = rt.new_op(Some(keep));
    let s = rt.new_op(None);
    let skipped = rt.skip_success;
    if skipped {
        let mut ops = rt.ops.borrow_mut();
        op_mut(&mut ops, w).expect("new").link = Link::HeadOf(s);
        op_mut(&mut ops, s).expect("new").link = Link::TailOf(w);
    }
    let head_flags = if skipped {
        squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS
    } else {
        squeue::Flags::IO_HARDLINK
    };
    rt.push(write.flags(head_flags).user_data(w));
    rt.push(sync.user_data(s));
    Chain {
        write: Op { ud: Some(w), cancel_on_drop: false, _not_send: std::marker::PhantomData },
        sync: Op { ud: Some(s), cancel_on_drop: false, _not_send: std::marker::PhantomData },
        skipped,
    }
}

impl Chain {
    /// The write's result (`len` if its success was not posted) and the fdatasync's, if it
    /// ran.
    pub(crate) async fn wait(mut self, len: usize) -> (i32, Option<i32>) {
        if !self.skipped {
            let w = (&mut self.write).await;
            let s = (&mut self.sync).await;
            return (w, Some(s));
        }
        std::future::poll_fn(|cx| {
            let rt = current();
            let mut ops = rt.ops.borrow_mut();
            let wud = self.write.ud.expect("pending");
            let sud = self.sync.ud.expect("pending");
            // A completion of the write means it failed or was short.
            if let Some(r) = op_mut(&mut ops, wud).and_then(|w| w.result) {
                ops.remove(key_of(wud));
                if op_mut(&mut ops, sud).is_some() {
                    ops.remove(key_of(sud));
                }
                self.write.ud = None;
                self.sync.ud = None;
                return Poll::Ready((r, None));
            }
            let sync = op_mut(&mut ops, sud).expect("the tail lives until it is read");
            if let Some(r) = sync.result {
                // The write is done (freed by the reaper when this completion came).
                ops.remove(key_of(sud));
                self.write.ud = None;
                self.sync.ud = None;
                return Poll::Ready((len as i32, Some(r)));
            }
            sync.waker = Some(cx.waker().clone());
            if let Some(w) = op_mut(&mut ops, wud) {
                w.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Op {
    /// Submits an op that returns a new descriptor: if the future is dropped first, the
    /// descriptor is closed when the op completes.
    pub(crate) fn submit_open(entry: squeue::Entry, keep: Option<Box<dyn std::any::Any>>) -> Op {
        let op = Op::submit(entry, keep, false);
        let rt = current();
        let ud = op.ud.expect("just submitted");
        if let Some(slot) = op_mut(&mut rt.ops.borrow_mut(), ud) {
            slot.opens_fd = true;
        }
        op
    }
}

impl Future for Op {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let ud = self.ud.expect("an op polled after it completed");
        let rt = current();
        let mut ops = rt.ops.borrow_mut();
        let slot = op_mut(&mut ops, ud).expect("an op's slot lives until it is polled ready");
        if let Some(r) = slot.result {
            ops.remove(key_of(ud));
            self.ud = None;
            return Poll::Ready(r);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(ud) = self.ud.take() else { return };
        let Some(rt) = try_current() else { return };
        let mut ops = rt.ops.borrow_mut();
        let Some(slot) = op_mut(&mut ops, ud) else { return };
        if slot.result.is_some() {
            ops.remove(key_of(ud));
            return;
        }
        slot.orphan = true;
        slot.waker = None;
        drop(ops);
        if self.cancel_on_drop {
            rt.cancel(ud);
        }
    }
}

/// A result of an op as `io::Result` (negative values are errnos).
pub(crate) fn check(r: i32) -> io::Result<usize> {
    if r < 0 { Err(io::Error::from_raw_os_error(-r)) } else { Ok(r as usize) }
}
