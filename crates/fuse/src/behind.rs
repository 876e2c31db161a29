//! Write-behind: a buffered write is answered as soon as it is on its way to the bricks, so
//! the writer goes on while the bricks store it (one brick round trip per write otherwise
//! caps a sequential writer at what one request at a time can carry).
//!
//! The promises are those of NFS and of a local page cache: a close (flush) or fsync waits
//! for the file's writes and reports any that failed; so do reads, attribute fetches, size
//! changes and locks of that file from this mount. A write that failed also fails the next
//! writes to its file. Writes in flight never overlap, so the bricks cannot apply two of
//! them out of order; their bytes are bounded across the mount. `O_SYNC`, `O_DSYNC` and
//! `O_DIRECT` writes do not go behind.

use proto::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Bytes of writes in flight across the mount.
pub const BUDGET: usize = 16 << 20;

#[derive(Default)]
struct State {
    /// Byte ranges `[start, end)` in flight.
    ranges: Vec<(u64, u64)>,
    /// The first failure not yet reported by a flush or fsync.
    error: Option<Errno>,
}

#[derive(Default)]
struct Pending {
    state: Mutex<State>,
    /// Told whenever a write ends.
    ended: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Behind {
    budget: Arc<Semaphore>,
    size: usize,
    files: Mutex<HashMap<u64, Arc<Pending>>>,
}

impl Default for Behind {
    fn default() -> Behind {
        Behind::new(BUDGET)
    }
}

/// One admitted write. Its end must be told with [`Ticket::done`]; dropped untold (its task
/// was cancelled), it counts as failed.
pub struct Ticket {
    ino: u64,
    range: (u64, u64),
    pending: Arc<Pending>,
    behind: Arc<Behind>,
    _permit: OwnedSemaphorePermit,
    told: bool,
}

impl Behind {
    pub fn new(budget: usize) -> Behind {
        Behind {
            budget: Arc::new(Semaphore::new(budget)),
            size: budget,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, ino: u64) -> Option<Arc<Pending>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// True if `ino` has writes in flight or a failure to report.
    pub fn pending(&self, ino: u64) -> bool {
        lock(&self.files).contains_key(&ino)
    }

    /// Waits until a write of `len` bytes at `offset` may go: within the budget, and
    /// overlapping no write in flight. Fails with an earlier write's error.
    pub async fn admit(self: &Arc<Self>, ino: u64, offset: u64, len: usize) -> Result<Ticket, Errno> {
        let want = len.clamp(1, self.size) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| Errno::EIO)?;
        let range = (offset, offset.saturating_add(len as u64));
        loop {
            let pending = {
                // Under the map's lock, so that the entry cannot be dropped as idle meanwhile.
                let mut files = lock(&self.files);
                files.entry(ino).or_default().clone()
            };
            let ended = pending.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let files = lock(&self.files);
                let mut st = lock(&pending.state);
                if let Some(e) = st.error {
                    return Err(e);
                }
                let current = files.get(&ino).is_some_and(|p| Arc::ptr_eq(p, &pending));
                if current && !st.ranges.iter().any(|r| r.0 < range.1 && range.0 < r.1) {
                    st.ranges.push(range);
                    return Ok(Ticket {
                        ino,
                        range,
                        pending: pending.clone(),
                        behind: self.clone(),
                        _permit: permit,
                        told: false,
                    });
                }
                if !current {
                    continue; // dropped as idle meanwhile: take the new entry
                }
            }
            ended.await;
        }
    }

    /// The failure a flush of `ino` would report, if any (left for it to report).
    pub fn failed(&self, ino: u64) -> Option<Errno> {
        self.get(ino).and_then(|p| lock(&p.state).error)
    }

    /// Waits until `ino` has no write in flight.
    pub async fn settle(&self, ino: u64) {
        self.wait(ino, false).await;
    }

    /// Waits until `ino` has no write in flight, then reports (once) a failure among them.
    pub async fn drain(&self, ino: u64) -> Result<(), Errno> {
        match self.wait(ino, true).await {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn wait(&self, ino: u64, take: bool) -> Option<Errno> {
        loop {
            let pending = self.get(ino)?;
            let ended = pending.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut st = lock(&pending.state);
                if st.ranges.is_empty() {
                    let e = if take { st.error.take() } else { st.error };
                    let idle = st.error.is_none();
                    drop(st);
                    if idle {
                        self.forget_if_idle(ino, &pending);
                    }
                    return e;
                }
            }
            ended.await;
        }
    }

    /// Drops the entry of `ino` if it is still `pending` and has nothing left to tell.
    fn forget_if_idle(&self, ino: u64, pending: &Arc<Pending>) {
        let mut files = lock(&self.files);
        if let Some(p) = files.get(&ino) {
            let st = lock(&p.state);
            if Arc::ptr_eq(p, pending) && st.ranges.is_empty() && st.error.is_none() {
                drop(st);
                files.remove(&ino);
            }
        }
    }
}

impl Ticket {
    /// The write ended with `r`.
    pub fn done(mut self, r: Result<(), Errno>) {
        self.end(r);
    }

    fn end(&mut self, r: Result<(), Errno>) {
        self.told = true;
        {
            let mut st = lock(&self.pending.state);
            if let Some(i) = st.ranges.iter().position(|x| *x == self.range) {
                st.ranges.swap_remove(i);
            }
            if let Err(e) = r {
                st.error.get_or_insert(e);
            }
        }
        self.pending.ended.notify_waiters();
        self.behind.forget_if_idle(self.ino, &self.pending);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.told {
            self.end(Err(Errno::EIO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_failure_is_reported_once_by_drain_and_fails_later_writes_until_then() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let t = b.admit(7, 0, 10).await.unwrap();
            assert!(b.pending(7));
            t.done(Err(Errno::ENOSPC));
            assert_eq!(b.admit(7, 100, 10).await.err(), Some(Errno::ENOSPC));
            b.settle(7).await;
            assert!(b.pending(7), "settling keeps the error for the flush");
            assert_eq!(b.failed(7), Some(Errno::ENOSPC));
            assert_eq!(b.drain(7).await, Err(Errno::ENOSPC));
            assert_eq!(b.drain(7).await, Ok(()));
            assert!(!b.pending(7));
            b.admit(7, 100, 10).await.unwrap().done(Ok(()));
            assert!(!b.pending(7));
        });
    }

    #[test]
    fn overlapping_writes_wait_for_each_other_and_drain_waits_for_all() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let first = b.admit(1, 0, 100).await.unwrap();
            // Disjoint: admitted at once.
            let beside = b.admit(1, 100, 50).await.unwrap();
            let b2 = b.clone();
            let mut over = tokio::spawn(async move { b2.admit(1, 50, 100).await.map(|t| t.done(Ok(()))) });
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut over)
                .await
                .is_err());
            first.done(Ok(()));
            // Still overlaps `beside`.
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut over)
                .await
                .is_err());
            let b3 = b.clone();
            let drain = tokio::spawn(async move { b3.drain(1).await });
            beside.done(Ok(()));
            over.await.unwrap().unwrap();
            assert_eq!(drain.await.unwrap(), Ok(()));
            assert!(!b.pending(1));
        });
    }

    #[test]
    fn the_budget_bounds_bytes_in_flight_and_a_dropped_ticket_counts_as_failed() {
        rt().block_on(async {
            let b = Arc::new(Behind::new(100));
            let t = b.admit(1, 0, 100).await.unwrap();
            let b2 = b.clone();
            let mut next = tokio::spawn(async move { b2.admit(2, 0, 10).await.map(|t| t.done(Ok(()))) });
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut next)
                .await
                .is_err());
            drop(t);
            next.await.unwrap().unwrap();
            assert_eq!(b.drain(1).await, Err(Errno::EIO));
        });
    }
}
