//! POSIX byte-range locks, held on the brick so that every client sees the same locks.
//!
//! Owners are (connection, lock owner): a lock dies with its owner's close (`Flush`), with
//! its connection, or when its owner unlocks. Same-owner requests replace the overlapped
//! parts of that owner's locks, as fcntl(2) does. Only open connections are granted locks:
//! a request of a connection that went away (still waiting, or still on its way to the
//! table when the connection's locks were dropped) would hold its lock forever.

use proto::{Errno, FileId, Lock, LockKind};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub conn: u64,
    pub owner: u64,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    owner: Owner,
    kind: LockKind,
    start: u64,
    end: u64,
    pid: u32,
}

#[derive(Default)]
struct FileLocks {
    held: Vec<Held>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<FileId, FileLocks>,
    /// For owners with a blocked request: (close count, number of blocked requests). A close
    /// bumps the count so that the blocked request gives up instead of being granted after
    /// its owner is gone.
    waiting: HashMap<(Owner, FileId), (u64, u32)>,
    /// Connections that may hold locks.
    open: HashSet<u64>,
    /// Until then, only reclaims are granted (the brick restarted while clients may have
    /// held locks: they get them back first).
    grace_until: Option<Instant>,
}

#[derive(Default)]
pub struct LockTable {
    inner: Mutex<Inner>,
}

fn overlaps(a: &Held, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

impl LockTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conflict(inner: &Inner, id: FileId, owner: Owner, l: &Lock) -> Option<Lock> {
        let f = inner.files.get(&id)?;
        f.held
            .iter()
            .find(|h| {
                h.owner != owner
                    && overlaps(h, l.start, l.end)
                    && (h.kind == LockKind::Write || l.kind == LockKind::Write)
            })
            .map(|h| Lock {
                kind: h.kind,
                start: h.start,
                end: h.end,
                owner: h.owner.owner,
                pid: h.pid,
            })
    }

    /// F_GETLK: the first lock that would block `l`, or `l` with kind Unlock.
    pub fn test(&self, id: FileId, conn: u64, l: &Lock) -> Lock {
        let inner = self.lock();
        Self::conflict(&inner, id, Owner { conn, owner: l.owner }, l).unwrap_or(Lock {
            kind: LockKind::Unlock,
            ..*l
        })
    }

    /// For `d` from now, only reclaims are granted: the brick restarted while clients may
    /// have held locks, and they are to get them back before anyone else takes them.
    pub fn start_grace(&self, d: Duration) {
        self.lock().grace_until = Some(Instant::now() + d);
    }

    /// Makes `conn`'s locks those its client holds (see `Request::Reclaim`): with `reset`,
    /// its locks go first; then each of `locks` is taken, grace period or not. Returns those
    /// that could not be.
    pub fn reclaim(&self, conn: u64, locks: &[(FileId, Lock)], reset: bool) -> Vec<(FileId, Lock)> {
        let mut inner = self.lock();
        if reset {
            for f in inner.files.values_mut() {
                let before = f.held.len();
                f.held.retain(|h| h.owner.conn != conn);
                if f.held.len() != before {
                    f.wake.notify_waiters();
                }
            }
            inner
                .files
                .retain(|_, f| !f.held.is_empty() || Arc::strong_count(&f.wake) > 1);
        }
        let mut refused = Vec::new();
        for (id, l) in locks {
            let owner = Owner { conn, owner: l.owner };
            if l.start > l.end || Self::grant(&mut inner, *id, owner, l, true).is_err() {
                refused.push((*id, *l));
            }
        }
        refused
    }

    /// Whether any lock is held.
    pub fn any(&self) -> bool {
        self.lock().files.values().any(|f| !f.held.is_empty())
    }

    /// A connection opened: it may take locks until [`LockTable::release_conn`].
    pub fn open_conn(&self, conn: u64) {
        self.lock().open.insert(conn);
    }

    /// F_SETLK: takes or releases at once, or fails with EAGAIN (ECONNRESET for a connection
    /// that is not open).
    pub fn set(&self, id: FileId, conn: u64, l: &Lock) -> Result<(), Errno> {
        if l.start > l.end {
            return Err(Errno::EINVAL);
        }
        let owner = Owner { conn, owner: l.owner };
        Self::set_in(&mut self.lock(), id, owner, l)
    }

    fn set_in(inner: &mut Inner, id: FileId, owner: Owner, l: &Lock) -> Result<(), Errno> {
        Self::grant(inner, id, owner, l, false)
    }

    /// What is left of the grace period.
    fn grace_left(inner: &mut Inner) -> Option<Duration> {
        let left = inner
            .grace_until
            .map(|t| t.saturating_duration_since(Instant::now()));
        match left {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                inner.grace_until = None;
                None
            }
        }
    }

    fn grant(inner: &mut Inner, id: FileId, owner: Owner, l: &Lock, reclaim: bool) -> Result<(), Errno> {
        if !inner.open.contains(&owner.conn) {
            return Err(Errno::ECONNRESET);
        }
        if !reclaim && l.kind != LockKind::Unlock && Self::grace_left(inner).is_some() {
            return Err(Errno::EAGAIN);
        }
        if l.kind != LockKind::Unlock && Self::conflict(inner, id, owner, l).is_some() {
            return Err(Errno::EAGAIN);
        }
        let f = inner.files.entry(id).or_default();
        // Cut the range out of this owner's locks, then add the new one.
        let mut kept = Vec::with_capacity(f.held.len() + 1);
        let mut released = false;
        for h in f.held.drain(..) {
            if h.owner != owner || !overlaps(&h, l.start, l.end) {
                kept.push(h);
                continue;
            }
            released = true;
            if h.start < l.start {
                kept.push(Held {
                    end: l.start - 1,
                    ..h
                });
            }
            if h.end > l.end {
                kept.push(Held {
                    start: l.end + 1,
                    ..h
                });
            }
        }
        if l.kind != LockKind::Unlock {
            kept.push(Held {
                owner,
                kind: l.kind,
                start: l.start,
                end: l.end,
                pid: l.pid,
            });
        }
        f.held = kept;
        if released {
            f.wake.notify_waiters();
        }
        if f.held.is_empty() {
            inner.files.remove(&id);
        }
        Ok(())
    }

    /// F_SETLKW: waits until the lock can be had. Gives up with EINTR if the owner closes
    /// the file meanwhile.
    pub async fn set_wait(&self, id: FileId, conn: u64, l: &Lock) -> Result<(), Errno> {
        let owner = Owner { conn, owner: l.owner };
        let epoch = {
            let mut inner = self.lock();
            let w = inner.waiting.entry((owner, id)).or_insert((0, 0));
            w.1 += 1;
            w.0
        };
        let result = self.wait_loop(id, owner, epoch, l).await;
        let mut inner = self.lock();
        if let Some(w) = inner.waiting.get_mut(&(owner, id)) {
            w.1 -= 1;
            if w.1 == 0 {
                inner.waiting.remove(&(owner, id));
            }
        }
        result
    }

    async fn wait_loop(&self, id: FileId, owner: Owner, epoch: u64, l: &Lock) -> Result<(), Errno> {
        if l.start > l.end {
            return Err(Errno::EINVAL);
        }
        loop {
            let wake = self.lock().files.entry(id).or_default().wake.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let grace = {
                // The owner's close is checked under the same lock as the grant, so that
                // nothing is granted to an owner that closed the file meanwhile.
                let mut inner = self.lock();
                if inner.waiting.get(&(owner, id)).map(|w| w.0) != Some(epoch) {
                    return Err(Errno::EINTR);
                }
                match Self::set_in(&mut inner, id, owner, l) {
                    Err(Errno::EAGAIN) => {}
                    other => return other,
                }
                Self::grace_left(&mut inner)
            };
            match grace {
                // Nothing need happen for the grace period to end.
                Some(d) => {
                    let _ = tokio::time::timeout(d, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Drops every lock of one owner on one file (the owner closed it) and wakes any of
    /// that owner's blocked requests so that they give up.
    pub fn release_owner(&self, id: FileId, conn: u64, owner: u64) {
        let owner = Owner { conn, owner };
        let mut inner = self.lock();
        if let Some(w) = inner.waiting.get_mut(&(owner, id)) {
            w.0 += 1;
        }
        if let Some(f) = inner.files.get_mut(&id) {
            f.wake.notify_waiters();
            f.held.retain(|h| h.owner != owner);
            if f.held.is_empty() {
                inner.files.remove(&id);
            }
        }
    }

    /// A connection went away but its locks are kept for now (its session may come back
    /// on another connection, see [`LockTable::adopt`]): it is granted nothing more, and its
    /// waiting requests give up.
    pub fn close_conn(&self, conn: u64) {
        let mut inner = self.lock();
        inner.open.remove(&conn);
        let waiting: HashSet<FileId> = inner
            .waiting
            .keys()
            .filter(|(o, _)| o.conn == conn)
            .map(|(_, id)| *id)
            .collect();
        for id in waiting {
            if let Some(f) = inner.files.get(&id) {
                f.wake.notify_waiters();
            }
        }
    }

    /// Whether `conn` holds any lock.
    pub fn holds(&self, conn: u64) -> bool {
        self.lock()
            .files
            .values()
            .any(|f| f.held.iter().any(|h| h.owner.conn == conn))
    }

    /// Moves the locks of connection `from` to `to` (the same client session, on a new
    /// connection). Returns how many moved.
    pub fn adopt(&self, from: u64, to: u64) -> usize {
        let mut inner = self.lock();
        let mut moved = 0;
        for f in inner.files.values_mut() {
            for h in f.held.iter_mut().filter(|h| h.owner.conn == from) {
                h.owner.conn = to;
                moved += 1;
            }
        }
        moved
    }

    /// Drops every lock held through a connection that went away; its waiting requests give
    /// up.
    pub fn release_conn(&self, conn: u64) {
        let mut inner = self.lock();
        inner.open.remove(&conn);
        let waits = inner.waiting.keys().any(|(o, _)| o.conn == conn);
        inner.files.retain(|_, f| {
            let before = f.held.len();
            f.held.retain(|h| h.owner.conn != conn);
            if waits || f.held.len() != before {
                f.wake.notify_waiters();
            }
            !f.held.is_empty() || Arc::strong_count(&f.wake) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kind: LockKind, start: u64, end: u64, owner: u64) -> Lock {
        Lock {
            kind,
            start,
            end,
            owner,
            pid: 1,
        }
    }
    const F: FileId = FileId(0x10000);

    fn table(conns: &[u64]) -> LockTable {
        let t = LockTable::default();
        for c in conns {
            t.open_conn(*c);
        }
        t
    }

    #[test]
    fn shared_and_exclusive() {
        let t = table(&[1, 2, 3, 9]);
        t.set(F, 1, &l(LockKind::Read, 0, 99, 1)).unwrap();
        t.set(F, 2, &l(LockKind::Read, 50, 150, 1)).unwrap();
        assert_eq!(t.set(F, 3, &l(LockKind::Write, 90, 95, 1)), Err(Errno::EAGAIN));
        assert!(t.set(F, 3, &l(LockKind::Write, 151, u64::MAX, 1)).is_ok());
        assert_eq!(t.test(F, 3, &l(LockKind::Write, 0, 10, 1)).kind, LockKind::Read);
        // Unlocking the middle of a range splits it.
        t.set(F, 1, &l(LockKind::Unlock, 10, 20, 1)).unwrap();
        assert_eq!(
            t.test(F, 9, &l(LockKind::Write, 10, 20, 1)).kind,
            LockKind::Unlock
        );
        assert_eq!(t.test(F, 9, &l(LockKind::Write, 5, 5, 1)).kind, LockKind::Read);
        t.release_conn(1);
        t.release_conn(2);
        assert_eq!(
            t.test(F, 9, &l(LockKind::Write, 0, 150, 1)).kind,
            LockKind::Unlock
        );
    }

    #[tokio::test]
    async fn waiter_gets_lock_after_release() {
        let t = Arc::new(table(&[1, 2]));
        t.set(F, 1, &l(LockKind::Write, 0, u64::MAX, 7)).unwrap();
        let t2 = t.clone();
        let w = tokio::spawn(async move { t2.set_wait(F, 2, &l(LockKind::Write, 0, 0, 8)).await });
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        t.release_owner(F, 1, 7);
        assert_eq!(w.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_connection_that_went_away_is_granted_nothing() {
        let t = Arc::new(table(&[1, 2, 3]));
        t.set(F, 1, &l(LockKind::Write, 0, u64::MAX, 7)).unwrap();
        // Connection 2 waits for the lock, then goes away.
        let t2 = t.clone();
        let w = tokio::spawn(async move { t2.set_wait(F, 2, &l(LockKind::Write, 0, 0, 8)).await });
        while !t.lock().waiting.keys().any(|(o, _)| o.conn == 2) {
            tokio::task::yield_now().await;
        }
        t.release_conn(2);
        // The lock it waited for comes free: it is not granted to the gone connection.
        t.release_owner(F, 1, 7);
        assert_eq!(w.await.unwrap(), Err(Errno::ECONNRESET));
        // Nor is a request of it that reaches the table late.
        assert_eq!(t.set(F, 2, &l(LockKind::Read, 0, 0, 8)), Err(Errno::ECONNRESET));
        assert_eq!(
            t.test(F, 3, &l(LockKind::Write, 0, u64::MAX, 1)).kind,
            LockKind::Unlock
        );
    }

    #[test]
    fn a_session_that_comes_back_gets_exactly_its_locks() {
        use LockKind::{Read, Write};
        let t = table(&[1, 2, 3]);
        t.set(F, 1, &l(Write, 0, 9, 7)).unwrap();
        t.set(F, 1, &l(Write, 20, 29, 8)).unwrap();
        // Connection 1 goes; its session's locks move to connection 3.
        t.close_conn(1);
        assert_eq!(t.adopt(1, 3), 2);
        assert!(t.holds(3) && !t.holds(1));
        // The client holds only owner 7's lock now (owner 8's unlock was lost with the
        // link), and asks for one that another took meanwhile.
        t.set(F, 2, &l(Read, 40, 49, 9)).unwrap();
        let refused = t.reclaim(3, &[(F, l(Write, 0, 9, 7)), (F, l(Write, 45, 45, 7))], true);
        assert_eq!(refused, [(F, l(Write, 45, 45, 7))]);
        assert_eq!(
            t.test(F, 2, &l(Write, 0, 9, 9)).kind,
            Write,
            "owner 7's lock is back"
        );
        assert_eq!(
            t.test(F, 2, &l(Write, 20, 29, 9)).kind,
            LockKind::Unlock,
            "owner 8's is gone"
        );
        // During a grace period only reclaims are granted.
        t.start_grace(std::time::Duration::from_secs(60));
        assert_eq!(t.set(F, 2, &l(Write, 100, 109, 9)), Err(Errno::EAGAIN));
        assert!(t.reclaim(3, &[(F, l(Write, 100, 109, 7))], false).is_empty());
    }
}
