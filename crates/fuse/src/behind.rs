//! Write-behind: a buffered write is answered as soon as it is on its way to the bricks, so
//! the writer goes on while the bricks store it (one brick round trip per write otherwise
//! caps a sequential writer at what one request at a time can carry).
//!
//! The promises are those of NFS and of a local page cache: a close (flush) or fsync waits
//! for the file's writes and reports a failure among them; reads, attribute fetches, size
//! changes and locks of that file from this mount wait for them too. As with the kernel's
//! `errseq`, a failure concerns every open file (the kernel's file handle, which dup'ed and
//! inherited descriptors share) that was open when it happened, never one opened after:
//! each close of it reports the failure (a child's exec closing an inherited copy must not
//! take the report from the writer's own close), its writes fail, and an fsync reports it
//! once and clears it. Waits are
//! for the writes admitted before them, so a busy writer cannot starve a reader. Writes in
//! flight never overlap, so the bricks cannot apply two of them out of order; their bytes
//! are bounded across the mount. `O_SYNC`, `O_DSYNC` and `O_DIRECT` writes do not go behind.

use proto::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Bytes of writes in flight across the mount.
pub const BUDGET: usize = 16 << 20;

#[derive(Default)]
struct State {
    /// Writes in flight: (admission number, start, end).
    ranges: Vec<(u64, u64, u64)>,
    /// Writes admitted so far.
    admitted: u64,
    /// Failures so far, and the latest one.
    failures: u64,
    error: Option<Errno>,
}

impl State {
    /// The latest failure, if it came after the `seen` first ones.
    fn unseen(&self, seen: u64) -> Option<Errno> {
        (self.failures > seen).then_some(self.error).flatten()
    }
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

/// Writes behind, per inode. An inode's entry lives while it has writes in flight, and
/// after a failure until [`Behind::forget`] (its last close).
pub struct Behind {
    budget: Arc<Semaphore>,
    size: usize,
    files: Mutex<HashMap<u64, Arc<Pending>>>,
    /// Writes ended so far, across the mount.
    ended: AtomicU64,
    /// Per inode, the value of `ended` after its latest write ended (until the kernel
    /// forgets the inode): whether one ended while a request was on its way.
    last_end: Mutex<HashMap<u64, u64>>,
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
    number: u64,
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
            ended: AtomicU64::new(0),
            last_end: Mutex::new(HashMap::new()),
        }
    }

    /// A mark to take before asking the bricks for an object's attributes, for
    /// [`Behind::raced`].
    pub fn epoch(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// True if attributes of `ino` asked for at `epoch` may predate writes of this mount
    /// that were already answered: a write to it is in flight, or ended since (the bricks
    /// may have answered before it landed, and the kernel, told of the write already,
    /// would believe them).
    pub fn raced(&self, ino: u64, epoch: u64) -> bool {
        self.in_flight(ino) || lock(&self.last_end).get(&ino).is_some_and(|&e| e > epoch)
    }

    /// The kernel forgot `ino`.
    pub fn forget_inode(&self, ino: u64) {
        lock(&self.last_end).remove(&ino);
    }

    fn get(&self, ino: u64) -> Option<Arc<Pending>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// True if `ino` has writes in flight or a failure to report.
    pub fn pending(&self, ino: u64) -> bool {
        lock(&self.files).contains_key(&ino)
    }

    /// True if `ino` has writes in flight.
    pub fn in_flight(&self, ino: u64) -> bool {
        self.get(ino).is_some_and(|p| !lock(&p.state).ranges.is_empty())
    }

    /// How many failures `ino` had so far: what a descriptor opened now has seen.
    pub fn failures(&self, ino: u64) -> u64 {
        self.get(ino).map_or(0, |p| lock(&p.state).failures)
    }

    /// A failure the descriptor that has seen `seen` of them was not told of yet.
    pub fn failed(&self, ino: u64, seen: u64) -> Option<Errno> {
        self.get(ino).and_then(|p| lock(&p.state).unseen(seen))
    }

    /// Waits until a write of `len` bytes at `offset` may go: within the budget, and
    /// overlapping no write in flight. Fails with a failure the writer (that has seen
    /// `seen`) was not told of.
    pub async fn admit(
        self: &Arc<Self>,
        ino: u64,
        offset: u64,
        len: usize,
        seen: u64,
    ) -> Result<Ticket, Errno> {
        let want = len.clamp(1, self.size) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| Errno::EIO)?;
        let (start, end) = (offset, offset.saturating_add(len as u64));
        loop {
            let pending = lock(&self.files).entry(ino).or_default().clone();
            let ended = pending.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                // Under the map's lock, so that the entry cannot be dropped as idle meanwhile.
                let files = lock(&self.files);
                let mut st = lock(&pending.state);
                if let Some(e) = st.unseen(seen) {
                    return Err(e);
                }
                if !files.get(&ino).is_some_and(|p| Arc::ptr_eq(p, &pending)) {
                    continue; // dropped as idle meanwhile: take the new entry
                }
                if !st.ranges.iter().any(|r| r.1 < end && start < r.2) {
                    let number = st.admitted;
                    st.admitted += 1;
                    st.ranges.push((number, start, end));
                    return Ok(Ticket {
                        ino,
                        number,
                        pending: pending.clone(),
                        behind: self.clone(),
                        _permit: permit,
                        told: false,
                    });
                }
            }
            ended.await;
        }
    }

    /// Waits until the writes to `ino` admitted so far have ended.
    pub async fn settle(&self, ino: u64) {
        let Some(pending) = self.get(ino) else { return };
        let upto = lock(&pending.state).admitted;
        loop {
            let ended = pending.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !lock(&pending.state).ranges.iter().any(|r| r.0 < upto) {
                return;
            }
            ended.await;
        }
    }

    /// For a flush or fsync through an open file that has seen `seen` failures: waits for
    /// the writes admitted so far, then reports a failure it was not told of; `clear`
    /// (fsync) counts it as told.
    pub async fn report(&self, ino: u64, seen: &AtomicU64, clear: bool) -> Result<(), Errno> {
        self.settle(ino).await;
        let Some(pending) = self.get(ino) else {
            return Ok(());
        };
        let st = lock(&pending.state);
        match st.unseen(seen.load(Ordering::SeqCst)) {
            Some(e) => {
                if clear {
                    seen.store(st.failures, Ordering::SeqCst);
                }
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The last descriptor of `ino` was closed: nobody is left to tell of its failures.
    pub fn forget(&self, ino: u64) {
        let mut files = lock(&self.files);
        if files.get(&ino).is_some_and(|p| lock(&p.state).ranges.is_empty()) {
            files.remove(&ino);
        }
    }

    /// Drops the entry of `ino` if it is still `pending` and has nothing left to tell.
    fn forget_if_idle(&self, ino: u64, pending: &Arc<Pending>) {
        let mut files = lock(&self.files);
        if let Some(p) = files.get(&ino) {
            let st = lock(&p.state);
            if Arc::ptr_eq(p, pending) && st.ranges.is_empty() && st.failures == 0 {
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
            st.ranges.retain(|x| x.0 != self.number);
            if let Err(e) = r {
                st.failures += 1;
                st.error = Some(e);
            }
        }
        let n = self.behind.ended.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.behind.last_end).insert(self.ino, n);
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
    fn a_failure_is_reported_to_each_file_open_when_it_happened_until_an_fsync() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let (writer, reader) = (AtomicU64::new(b.failures(7)), AtomicU64::new(b.failures(7)));
            let t = b.admit(7, 0, 10, 0).await.unwrap();
            assert!(b.pending(7) && b.in_flight(7));
            t.done(Err(Errno::ENOSPC));
            assert!(!b.in_flight(7));
            // The writer's next writes fail until it is told.
            assert_eq!(b.admit(7, 100, 10, 0).await.err(), Some(Errno::ENOSPC));
            assert_eq!(b.failed(7, 0), Some(Errno::ENOSPC));
            // A descriptor opened now never hears of it.
            let later = AtomicU64::new(b.failures(7));
            assert_eq!(b.report(7, &later, false).await, Ok(()));
            b.admit(7, 100, 10, later.load(Ordering::SeqCst))
                .await
                .unwrap()
                .done(Ok(()));
            // Each one open before hears of it at every close, until an fsync.
            assert_eq!(b.report(7, &reader, false).await, Err(Errno::ENOSPC));
            assert_eq!(b.report(7, &writer, false).await, Err(Errno::ENOSPC));
            assert_eq!(b.report(7, &writer, false).await, Err(Errno::ENOSPC));
            assert_eq!(b.report(7, &writer, true).await, Err(Errno::ENOSPC));
            assert_eq!(b.report(7, &writer, false).await, Ok(()));
            assert_eq!(b.report(7, &reader, true).await, Err(Errno::ENOSPC));
            assert_eq!(b.report(7, &reader, true).await, Ok(()));
            assert!(b.pending(7), "kept until the last close");
            b.forget(7);
            assert!(!b.pending(7));
            b.admit(7, 100, 10, 0).await.unwrap().done(Ok(()));
            assert!(!b.pending(7), "an entry without failures goes when idle");
        });
    }

    #[test]
    fn attributes_asked_for_while_a_write_was_in_flight_count_as_raced() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let t = b.admit(3, 0, 10, 0).await.unwrap();
            let asked = b.epoch();
            assert!(b.raced(3, asked), "in flight");
            assert!(!b.raced(4, asked), "another inode");
            // The write ends before the reply is looked at: the reply may still predate it.
            t.done(Ok(()));
            assert!(!b.in_flight(3));
            assert!(b.raced(3, asked));
            // Asked for after it ended: nothing raced.
            assert!(!b.raced(3, b.epoch()));
            b.admit(3, 0, 10, 0).await.unwrap().done(Ok(()));
            b.forget_inode(3);
            assert!(!b.raced(3, asked), "forgotten with the inode");
        });
    }

    #[test]
    fn overlapping_writes_wait_for_each_other_and_settle_waits_for_earlier_ones() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let first = b.admit(1, 0, 100, 0).await.unwrap();
            // Disjoint: admitted at once.
            let beside = b.admit(1, 100, 50, 0).await.unwrap();
            let b2 = b.clone();
            let mut over = tokio::spawn(async move { b2.admit(1, 50, 100, 0).await.map(|t| t.done(Ok(()))) });
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut over)
                .await
                .is_err());
            first.done(Ok(()));
            // Still overlaps `beside`.
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut over)
                .await
                .is_err());
            let b3 = b.clone();
            let settle = tokio::spawn(async move { b3.settle(1).await });
            beside.done(Ok(()));
            over.await.unwrap().unwrap();
            settle.await.unwrap();
            assert!(!b.pending(1));
        });
    }

    #[test]
    fn settling_does_not_wait_for_writes_admitted_after_it() {
        rt().block_on(async {
            let b = Arc::new(Behind::default());
            let early = b.admit(1, 0, 10, 0).await.unwrap();
            let b2 = b.clone();
            let mut settle = tokio::spawn(async move { b2.settle(1).await });
            assert!(tokio::time::timeout(Duration::from_millis(20), &mut settle)
                .await
                .is_err());
            let late = b.admit(1, 10, 10, 0).await.unwrap();
            early.done(Ok(()));
            tokio::time::timeout(Duration::from_secs(5), settle)
                .await
                .expect("settle waited for a later write")
                .unwrap();
            late.done(Ok(()));
        });
    }

    #[test]
    fn the_budget_bounds_bytes_in_flight_and_a_dropped_ticket_counts_as_failed() {
        rt().block_on(async {
            let b = Arc::new(Behind::new(100));
            let t = b.admit(1, 0, 100, 0).await.unwrap();
            let b2 = b.clone();
            let mut next = tokio::spawn(async move { b2.admit(2, 0, 10, 0).await.map(|t| t.done(Ok(()))) });
            assert!(tokio::time::timeout(Duration::from_millis(50), &mut next)
                .await
                .is_err());
            drop(t);
            next.await.unwrap().unwrap();
            assert_eq!(b.report(1, &AtomicU64::new(0), true).await, Err(Errno::EIO));
        });
    }
}
