//! A single-consumer queue on one executor: producers push without waiting, the consumer
//! takes everything queued at once (so a burst of inputs becomes one batch for the consensus
//! core, and one frame for the log).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};

/// See the module docs.
pub struct Inbox<T> {
    queue: RefCell<VecDeque<T>>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

impl<T> std::fmt::Debug for Inbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("len", &self.len())
            .field("closed", &self.closed.get())
            .finish()
    }
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            queue: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            closed: Cell::new(false),
        }
    }
}

impl<T> Inbox<T> {
    /// Queues an item and wakes the consumer.
    pub fn push(&self, item: T) {
        self.queue.borrow_mut().push_back(item);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Closes the inbox: the consumer's next wait returns `false` once it is drained.
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits until something is queued (true) or the inbox is closed and empty (false), then
    /// moves everything queued into `out`.
    pub async fn drain_into(&self, out: &mut Vec<T>) -> bool {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            if !q.is_empty() {
                out.extend(q.drain(..));
                return Poll::Ready(true);
            }
            if self.closed.get() {
                return Poll::Ready(false);
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}
