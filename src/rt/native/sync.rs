//! A counting semaphore for the tasks of one executor, first come first served: a waiter
//! that needs many units is not overtaken by later ones that need few, and a `try_` acquire
//! fails while anyone waits.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Why an acquire failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SemaphoreError {
    /// Not enough units now (only from `try_` acquires).
    WouldBlock,
    /// The semaphore was closed.
    Closed,
}

impl std::fmt::Display for SemaphoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SemaphoreError::WouldBlock => write!(f, "not enough semaphore units available"),
            SemaphoreError::Closed => write!(f, "semaphore closed"),
        }
    }
}

impl std::error::Error for SemaphoreError {}

struct Waiter {
    id: u64,
    units: u64,
    waker: Option<Waker>,
    granted: bool,
}

/// See the module docs.
pub struct Semaphore {
    available: Cell<u64>,
    closed: Cell<bool>,
    waiters: RefCell<VecDeque<Waiter>>,
    next_id: Cell<u64>,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available.get())
            .field("waiters", &self.waiters.borrow().len())
            .finish()
    }
}

/// Units held; returned to the semaphore on drop.
#[derive(Debug)]
#[must_use = "the units return when the permit is dropped"]
pub struct Permit<'a> {
    sem: &'a Semaphore,
    units: u64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.sem.release(self.units);
    }
}

/// Units held without a borrow of the semaphore; returned on drop.
#[derive(Debug)]
#[must_use = "the units return when the permit is dropped"]
pub struct StaticPermit {
    sem: Rc<Semaphore>,
    units: u64,
}

impl Drop for StaticPermit {
    fn drop(&mut self) {
        self.sem.release(self.units);
    }
}

impl Semaphore {
    /// A semaphore with `units` available.
    pub fn new(units: u64) -> Semaphore {
        Semaphore {
            available: Cell::new(units),
            closed: Cell::new(false),
            waiters: RefCell::new(VecDeque::new()),
            next_id: Cell::new(0),
        }
    }

    /// Units available now.
    pub fn available(&self) -> u64 {
        self.available.get()
    }

    /// Fails every waiter and every later acquire.
    pub fn close(&self) {
        self.closed.set(true);
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(k) = w.waker.take() {
                k.wake();
            }
        }
    }

    fn release(&self, units: u64) {
        self.available.set(self.available.get() + units);
        self.grant();
    }

    /// Hands units to waiters in order, as far as they go.
    fn grant(&self) {
        let mut ws = self.waiters.borrow_mut();
        for w in ws.iter_mut() {
            if w.granted {
                continue;
            }
            if w.units > self.available.get() {
                break;
            }
            self.available.set(self.available.get() - w.units);
            w.granted = true;
            if let Some(k) = w.waker.take() {
                k.wake();
            }
        }
    }

    fn try_take(&self, units: u64) -> Result<(), SemaphoreError> {
        if self.closed.get() {
            return Err(SemaphoreError::Closed);
        }
        if self.waiters.borrow().is_empty() && self.available.get() >= units {
            self.available.set(self.available.get() - units);
            return Ok(());
        }
        Err(SemaphoreError::WouldBlock)
    }

    async fn take(&self, units: u64) -> Result<(), SemaphoreError> {
        match self.try_take(units) {
            Err(SemaphoreError::WouldBlock) => {}
            r => return r,
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.waiters.borrow_mut().push_back(Waiter { id, units, waker: None, granted: false });
        // Leaves the queue however the wait ends (granted, closed, or the future dropped).
        struct Leave<'a>(&'a Semaphore, u64, bool);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let mut ws = self.0.waiters.borrow_mut();
                if let Some(i) = ws.iter().position(|w| w.id == self.1) {
                    let w = ws.remove(i).expect("present");
                    drop(ws);
                    if w.granted && !self.2 {
                        // Granted but never taken: give the units back.
                        self.0.release(w.units);
                    } else {
                        // A large waiter leaving may let smaller ones behind it through.
                        self.0.grant();
                    }
                }
            }
        }
        let mut leave = Leave(self, id, false);
        std::future::poll_fn(|cx| {
            let mut ws = self.waiters.borrow_mut();
            let w = ws.iter_mut().find(|w| w.id == id).expect("waiter queued");
            if w.granted {
                leave.2 = true;
                return Poll::Ready(Ok(()));
            }
            if self.closed.get() {
                return Poll::Ready(Err(SemaphoreError::Closed));
            }
            w.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits for `units`.
    pub async fn acquire_permit(&self, units: u64) -> Result<Permit<'_>, SemaphoreError> {
        self.take(units).await?;
        Ok(Permit { sem: self, units })
    }

    /// Waits for `units`, held by a permit that does not borrow the semaphore.
    pub async fn acquire_static_permit(
        self: &Rc<Self>,
        units: u64,
    ) -> Result<StaticPermit, SemaphoreError> {
        self.take(units).await?;
        Ok(StaticPermit { sem: self.clone(), units })
    }

    /// `units` now, or an error if they are not available (or someone waits already).
    pub fn try_acquire_static_permit(
        self: &Rc<Self>,
        units: u64,
    ) -> Result<StaticPermit, SemaphoreError> {
        self.try_take(units)?;
        Ok(StaticPermit { sem: self.clone(), units })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served_and_units_return() {
        crate::rt::Executor::new("sem-test")
            .run(|| async {
                let s = Rc::new(Semaphore::new(10));
                let a = s.try_acquire_static_permit(8).unwrap();
                assert_eq!(s.available(), 2);
                // A waiter for 5 queues; a later try for 1 must not overtake it.
                let s2 = s.clone();
                let big = crate::rt::spawn(async move { s2.acquire_static_permit(5).await });
                crate::rt::sleep(std::time::Duration::from_millis(1)).await;
                assert_eq!(s.try_acquire_static_permit(1).unwrap_err(), SemaphoreError::WouldBlock);
                drop(a);
                let p = big.await.unwrap();
                assert_eq!(s.available(), 5);
                drop(p);
                assert_eq!(s.available(), 10);
                // A dropped wait gives nothing away and lets the next through.
                let held = s.try_acquire_static_permit(10).unwrap();
                let s3 = s.clone();
                let gone = crate::rt::spawn(async move { s3.acquire_static_permit(4).await });
                crate::rt::sleep(std::time::Duration::from_millis(1)).await;
                drop(gone);
                drop(held);
                assert_eq!(s.available(), 10);
                assert!(s.try_acquire_static_permit(10).is_ok());
            })
            .unwrap();
    }
}
