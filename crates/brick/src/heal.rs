//! What a brick does for a client that heals one of its objects (replicate's self-heal).
//!
//! A healer copies a good copy of an object onto a stale one. Writers do not lock for that
//! (replicate's writes take no locks), so two things keep a copy made meanwhile exact:
//!
//! - On the brick being repaired the healer holds a *guard*: other clients' changes to the
//!   object (or to a directory's entries) and opens of it wait until the heal ends (an
//!   `OpenNow` is refused at once instead: a replicated reader opens the other copies),
//!   and the guard is only granted once nobody else has the file open and their changes in
//!   flight have landed. So nothing but the healer writes to that copy meanwhile.
//! - On each good copy the healer *watches* the object: any change another client makes
//!   to it, from before the watch began to after it ends, is reported at the end, and the
//!   healer then keeps the pending markers (the copy may have missed that change) and
//!   tries again later.
//!
//! Every request that changes an object registers here while it runs; that costs one map
//! update, and it is what lets a guard wait for changes already under way.
//!
//! A healer that stops making progress (its process hung with its connection open) must not
//! hold others up for good: once its guarded object has seen nothing from it for
//! `GUARD_IDLE` while others wait, the guard is broken. The healer then hears at the end
//! that its copy cannot be vouched for, and leaves the markers in place.

use proto::msg::{Fh, Request};
use proto::{Errno, FileId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a guard may see nothing from its healer while others wait before it is broken.
const GUARD_IDLE: Duration = Duration::from_secs(30);

/// The objects one request changes (or opens), at most two: `(id, changes it)`. An open
/// without truncation waits for a guard but changes nothing a watcher cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touched {
    ids: [(FileId, bool); 2],
    n: usize,
}

impl Default for Touched {
    fn default() -> Touched {
        Touched {
            ids: [(FileId::ROOT, false); 2],
            n: 0,
        }
    }
}

impl Touched {
    fn push(&mut self, id: FileId, changes: bool) {
        if self.ids[..self.n].iter().any(|(i, _)| *i == id) {
            return;
        }
        self.ids[self.n] = (id, changes);
        self.n += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn iter(&self) -> impl Iterator<Item = (FileId, bool)> + '_ {
        self.ids[..self.n].iter().copied()
    }

    /// What `req` touches; `file_of` gives the object behind a handle.
    pub fn of(req: &Request, file_of: impl Fn(Fh) -> Option<FileId>) -> Touched {
        let mut t = Touched::default();
        match req {
            Request::SetAttr { id, .. }
            | Request::SetXattr { id, .. }
            | Request::RemoveXattr { id, .. }
            | Request::SetMeta { id, .. } => t.push(*id, true),
            Request::Open { id, flags } => t.push(*id, *flags as i32 & libc::O_TRUNC != 0),
            Request::Write { fh, .. }
            | Request::WriteMarked { fh, .. }
            | Request::WriteV { fh, .. }
            | Request::Fallocate { fh, .. } => {
                if let Some(id) = file_of(*fh) {
                    t.push(id, true);
                }
            }
            Request::Create { parent, .. }
            | Request::Unlink { parent, .. }
            | Request::Rmdir { parent, .. }
            | Request::UnlinkUnless { parent, .. } => t.push(*parent, true),
            Request::Rename {
                parent, new_parent, ..
            } => {
                t.push(*parent, true);
                t.push(*new_parent, true);
            }
            Request::Link { id, new_parent, .. } => {
                t.push(*new_parent, true);
                t.push(*id, true);
            }
            _ => {}
        }
        t
    }
}

#[derive(Default)]
struct Slot {
    /// Requests under way on the object, per connection.
    running: Vec<(u64, u32)>,
    /// The connection healing this copy, and when it last did anything with it.
    guard: Option<u64>,
    guard_active: Option<Instant>,
    /// Connections whose guard was broken (they have not ended it yet).
    broken: Vec<u64>,
    /// Connections watching this copy, and whether another changed it since.
    watchers: Vec<(u64, bool)>,
}

impl Slot {
    fn running_except(&self, conn: u64) -> bool {
        self.running.iter().any(|(c, n)| *c != conn && *n > 0)
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.guard.is_none() && self.watchers.is_empty() && self.broken.is_empty()
    }

    fn changed_by(&mut self, conn: u64) {
        for (c, dirty) in &mut self.watchers {
            if *c != conn {
                *dirty = true;
            }
        }
    }
}

/// The brick's heal guards and watches, and the changes under way.
#[derive(Default)]
pub struct Heals {
    slots: Mutex<HashMap<FileId, Slot>>,
    /// Told whenever a change ends or a guard goes.
    moved: Notify,
    /// Moves whenever a heal may start reading markers here (a guard or watch begins) or
    /// markers are taken off: a marker added before it last moved may have been counted
    /// by a heal, and cleared.
    epoch: std::sync::atomic::AtomicU64,
}

/// A change under way; dropping it marks its end.
pub struct Running {
    heals: Arc<Heals>,
    touched: Touched,
    conn: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.heals.leave(&self.touched, self.conn);
    }
}

impl Heals {
    fn slots(&self) -> MutexGuard<'_, HashMap<FileId, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request of `conn` that touches `touched`, unless another connection
    /// guards one of them: then None, and the request is to wait with [`Heals::enter`].
    pub fn try_enter(self: &Arc<Self>, touched: Touched, conn: u64) -> Option<Running> {
        let mut slots = self.slots();
        let blocked = touched
            .iter()
            .any(|(id, _)| slots.get(&id).and_then(|s| s.guard).is_some_and(|g| g != conn));
        if blocked {
            return None;
        }
        for (id, changes) in touched.iter() {
            let slot = slots.entry(id).or_default();
            if slot.guard == Some(conn) {
                slot.guard_active = Some(Instant::now());
            }
            match slot.running.iter_mut().find(|(c, _)| *c == conn) {
                Some((_, n)) => *n += 1,
                None => slot.running.push((conn, 1)),
            }
            if changes {
                slot.changed_by(conn);
            }
        }
        Some(Running {
            heals: self.clone(),
            touched,
            conn,
        })
    }

    /// Registers a request once no other connection guards what it touches (or the guard
    /// was broken for want of progress).
    pub async fn enter(self: &Arc<Self>, touched: Touched, conn: u64) -> Running {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some(r) = self.try_enter(touched, conn) {
                return r;
            }
            if tokio::time::timeout(GUARD_IDLE / 4, moved).await.is_err() {
                self.break_idle_guards(touched, conn, GUARD_IDLE);
            }
        }
    }

    /// Breaks the guards in the way of `conn` on `touched` whose healers did nothing with
    /// their object for `idle`.
    fn break_idle_guards(&self, touched: Touched, conn: u64, idle: Duration) {
        let mut slots = self.slots();
        for (id, _) in touched.iter() {
            let Some(slot) = slots.get_mut(&id) else { continue };
            let Some(g) = slot.guard.filter(|g| *g != conn) else {
                continue;
            };
            let quiet = slot.running.iter().all(|(c, _)| *c != g)
                && slot.guard_active.is_none_or(|t| t.elapsed() >= idle);
            if quiet {
                tracing::warn!(%id, healer = g, "a heal made no progress for {idle:?}: its guard is broken");
                slot.guard = None;
                slot.broken.push(g);
            }
        }
        drop(slots);
        self.moved.notify_waiters();
    }

    fn leave(&self, touched: &Touched, conn: u64) {
        let mut slots = self.slots();
        for (id, changes) in touched.iter() {
            let Some(slot) = slots.get_mut(&id) else { continue };
            if let Some(pos) = slot.running.iter().position(|(c, _)| *c == conn) {
                slot.running[pos].1 -= 1;
                if slot.running[pos].1 == 0 {
                    slot.running.swap_remove(pos);
                }
            }
            // Its effect may have landed after a watch began.
            if changes {
                slot.changed_by(conn);
            }
            if slot.is_idle() {
                slots.remove(&id);
            }
        }
        drop(slots);
        self.moved.notify_waiters();
    }

    /// Takes the guard of `id` for `conn`, once the changes other connections have under
    /// way on it have landed. `busy` is asked then (with nothing of others running): true
    /// means the object may not be healed now (another client has it open), and EBUSY.
    pub async fn guard(&self, id: FileId, conn: u64, busy: impl Fn() -> bool) -> Result<(), Errno> {
        self.markers_taken_off();
        {
            let mut slots = self.slots();
            let slot = slots.entry(id).or_default();
            if slot.guard.is_some() {
                return Err(Errno::EBUSY);
            }
            slot.guard = Some(conn);
            slot.guard_active = Some(Instant::now());
        }
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let running = self.slots().get(&id).is_some_and(|s| s.running_except(conn));
            if !running {
                break;
            }
            moved.await;
        }
        if busy() {
            self.end(id, conn, true);
            return Err(Errno::EBUSY);
        }
        Ok(())
    }

    /// See the `epoch` field.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Moves the epoch: markers may be counted, or were taken off.
    pub fn markers_taken_off(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts watching `id` for changes by other connections.
    pub fn watch(&self, id: FileId, conn: u64) {
        self.markers_taken_off();
        let mut slots = self.slots();
        let slot = slots.entry(id).or_default();
        // A change already under way may land after the copy was read.
        let dirty = slot.running_except(conn);
        match slot.watchers.iter_mut().find(|(c, _)| *c == conn) {
            Some(w) => w.1 |= dirty,
            None => slot.watchers.push((conn, dirty)),
        }
    }

    /// Ends a guard or a watch of `conn`: true if what it was for cannot be vouched for
    /// (for a watch, another connection changed the object meanwhile or still is; for a
    /// guard, it was broken or was not held).
    pub fn end(&self, id: FileId, conn: u64, guard: bool) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&id) else {
            return true;
        };
        let changed = if guard {
            let broken = match slot.broken.iter().position(|c| *c == conn) {
                Some(pos) => {
                    slot.broken.swap_remove(pos);
                    true
                }
                None => slot.guard != Some(conn),
            };
            if slot.guard == Some(conn) {
                slot.guard = None;
                slot.guard_active = None;
            }
            broken
        } else {
            let running = slot.running_except(conn);
            match slot.watchers.iter().position(|(c, _)| *c == conn) {
                Some(pos) => slot.watchers.swap_remove(pos).1 || running,
                // Never began (or the connection was renewed): nothing can be vouched for.
                None => true,
            }
        };
        if slot.is_idle() {
            slots.remove(&id);
        }
        drop(slots);
        self.moved.notify_waiters();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets every other task of this (single-threaded) runtime run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn write_to(id: FileId) -> Touched {
        Touched::of(&Request::Write { fh: 1, offset: 0 }, |_| Some(id))
    }

    #[tokio::test]
    async fn a_guard_holds_others_changes_until_it_ends() {
        let heals = Arc::new(Heals::default());
        let id = FileId::random();
        heals.guard(id, 1, || false).await.unwrap();
        // The healer itself goes on; another connection waits.
        assert!(heals.try_enter(write_to(id), 1).is_some());
        assert!(heals.try_enter(write_to(id), 2).is_none());
        assert!(heals.try_enter(write_to(FileId::random()), 2).is_some());
        let h = heals.clone();
        let waiter = tokio::spawn(async move { drop(h.enter(write_to(id), 2).await) });
        settle().await;
        assert!(!waiter.is_finished());
        assert_eq!(heals.guard(id, 3, || false).await, Err(Errno::EBUSY));
        heals.end(id, 1, true);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(heals.slots().is_empty());
    }

    #[tokio::test]
    async fn a_guard_waits_for_changes_under_way_and_refuses_a_busy_file() {
        let heals = Arc::new(Heals::default());
        let id = FileId::random();
        let running = heals.try_enter(write_to(id), 2).unwrap();
        let h = heals.clone();
        let guard = tokio::spawn(async move { h.guard(id, 1, || false).await });
        settle().await;
        assert!(!guard.is_finished());
        drop(running);
        tokio::time::timeout(Duration::from_secs(5), guard)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        heals.end(id, 1, true);
        assert_eq!(heals.guard(id, 1, || true).await, Err(Errno::EBUSY));
        // A refused guard is gone: the next one may have it.
        heals.guard(id, 4, || false).await.unwrap();
        assert!(
            !heals.end(id, 4, true),
            "a guard held to the end vouches for its copy"
        );
        assert!(heals.end(id, 4, true), "one that is not held does not");
    }

    #[tokio::test]
    async fn a_guard_whose_healer_does_nothing_is_broken_for_those_waiting() {
        let heals = Arc::new(Heals::default());
        let id = FileId::random();
        heals.guard(id, 1, || false).await.unwrap();
        // The healer is busy with it: not broken.
        let busy = heals.try_enter(write_to(id), 1).unwrap();
        heals.break_idle_guards(write_to(id), 2, Duration::ZERO);
        assert!(heals.try_enter(write_to(id), 2).is_none());
        drop(busy);
        heals.break_idle_guards(write_to(id), 2, Duration::from_secs(3600));
        assert!(heals.try_enter(write_to(id), 2).is_none());
        // Quiet for long enough: broken, the others go on, and the healer is told.
        heals.break_idle_guards(write_to(id), 2, Duration::ZERO);
        drop(heals.try_enter(write_to(id), 2).expect("no longer held up"));
        assert!(heals.end(id, 1, true));
        assert!(heals.slots().is_empty());
    }

    #[tokio::test]
    async fn a_watch_reports_changes_by_others_only() {
        let heals = Arc::new(Heals::default());
        let id = FileId::random();
        heals.watch(id, 1);
        drop(heals.try_enter(write_to(id), 1));
        let open = Touched::of(&Request::Open { id, flags: 0 }, |_| None);
        drop(heals.try_enter(open, 2));
        assert!(!heals.end(id, 1, false));
        heals.watch(id, 1);
        drop(heals.try_enter(write_to(id), 2));
        assert!(heals.end(id, 1, false));
        // A change that began before the watch and is still running counts.
        let running = heals.try_enter(write_to(id), 2).unwrap();
        heals.watch(id, 1);
        assert!(heals.end(id, 1, false));
        drop(running);
        // A watch that never began vouches for nothing.
        assert!(heals.end(id, 9, false));
        assert!(heals.slots().is_empty());
    }
}
