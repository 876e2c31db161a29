//! The files a replica set's client is changing: open files, and files a by-id change
//! (attributes, xattrs) is under way on.
//!
//! A file open here cannot be healed by the healer's own connections: the bricks refuse a
//! heal guard while another connection has the file open, and this client's own writes
//! would count as foreign changes on the good copies. Such a file is healed in place
//! instead, through the client's own connections (see `crate::heal`), and this client's
//! changes to it are ordered against the heal's copying by the file's *gate*: every change
//! holds it shared while it runs, the heal holds it exclusively while it copies a range.
//! The entry also carries the client's hold on the file's write order (`crate::order`), and
//! the copies this client saw miss a change of the file while it held it, which every
//! handle of it then avoids for reads (another handle's read child may be one of them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::RwLock;

use crate::order::Order;
use proto::FileId;

#[derive(Default)]
struct Entry {
    gate: Arc<RwLock<()>>,
    order: Arc<Order>,
    /// Children (bits) that missed a change of the file made here while it was held, or
    /// were behind when a handle here opened them (a heal in place takes its copy's bit
    /// off again, `OpenFiles::healed`).
    behind: Arc<AtomicU64>,
    /// Per child, how many times it was added to `behind`.
    misses: HashMap<usize, u64>,
    /// Tickets held on the file.
    tickets: usize,
    /// Per child, tickets of handles that do not have the file open there.
    closed_on: HashMap<usize, usize>,
}

#[derive(Default)]
pub struct OpenFiles {
    files: Mutex<HashMap<FileId, Entry>>,
}

impl OpenFiles {
    fn files(&self) -> MutexGuard<'_, HashMap<FileId, Entry>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The write order of `id`, if this client is changing it.
    pub fn order_of(&self, id: FileId) -> Option<Arc<Order>> {
        self.files().get(&id).map(|e| e.order.clone())
    }

    /// Notes that the children in `missed` (bits) missed a change of `id` (or lack one),
    /// if it is held.
    pub fn missed(&self, id: FileId, missed: u64) {
        if let Some(e) = self.files().get_mut(&id).filter(|_| missed != 0) {
            e.behind.fetch_or(missed, Ordering::SeqCst);
            for c in (0..64).filter(|c| missed & (1u64 << c) != 0) {
                *e.misses.entry(c).or_default() += 1;
            }
        }
    }

    /// What `healed` compares: how many misses of child `c`'s copy of `id` were noted.
    pub fn misses(&self, id: FileId, c: usize) -> u64 {
        self.files()
            .get(&id)
            .and_then(|e| e.misses.get(&c).copied())
            .unwrap_or(0)
    }

    /// Child `c`'s copy of `id` has everything it was marked behind for when `misses` of
    /// its misses were noted here: unless more were since, it is no longer behind.
    /// (Called with the file's gate held.)
    pub fn healed(&self, id: FileId, c: usize, misses: u64) {
        let files = self.files();
        let Some(e) = files.get(&id) else { return };
        if e.misses.get(&c).copied().unwrap_or(0) == misses {
            e.behind.fetch_and(!(1u64 << c), Ordering::SeqCst);
        }
    }

    /// A ticket on `id` for a handle that does not have it open on `closed` (children by
    /// index), or for a by-id change (nothing closed).
    pub fn ticket(self: &Arc<Self>, id: FileId, closed: &[usize]) -> Ticket {
        self.take(&mut self.files(), id, closed)
    }

    fn take(self: &Arc<Self>, files: &mut HashMap<FileId, Entry>, id: FileId, closed: &[usize]) -> Ticket {
        let e = files.entry(id).or_default();
        e.tickets += 1;
        for c in closed {
            *e.closed_on.entry(*c).or_default() += 1;
        }
        Ticket {
            files: self.clone(),
            id,
            closed: Mutex::new(closed.to_vec()),
            gate: e.gate.clone(),
            order: e.order.clone(),
            behind: e.behind.clone(),
        }
    }

    /// A ticket on `id` if this client is changing it, None otherwise; with it, whether
    /// every handle of it has it open on child `s`.
    pub fn ticket_if_held(self: &Arc<Self>, id: FileId, s: usize) -> Option<(Ticket, bool)> {
        let mut files = self.files();
        let open_on_s = files.get(&id)?.closed_on.get(&s).copied().unwrap_or(0) == 0;
        Some((self.take(&mut files, id, &[]), open_on_s))
    }
}

/// Held while a handle is open, or while a by-id change runs.
pub struct Ticket {
    files: Arc<OpenFiles>,
    id: FileId,
    /// Children the handle holding it does not have the file open on.
    closed: Mutex<Vec<usize>>,
    gate: Arc<RwLock<()>>,
    order: Arc<Order>,
    behind: Arc<AtomicU64>,
}

impl Ticket {
    /// The children that missed a change of the file made here since it has been held.
    pub fn behind(&self) -> u64 {
        self.behind.load(Ordering::SeqCst)
    }

    pub fn gate(&self) -> &RwLock<()> {
        &self.gate
    }

    pub fn order(&self) -> &Arc<Order> {
        &self.order
    }

    /// The handle holding this ticket has the file open on child `c` now.
    pub fn opened_on(&self, c: usize) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = closed.iter().position(|x| *x == c) {
            closed.swap_remove(p);
            if let Some(e) = self.files.files().get_mut(&self.id) {
                not_closed_on(e, c);
            }
        }
    }
}

fn not_closed_on(e: &mut Entry, c: usize) {
    if let Some(n) = e.closed_on.get_mut(&c) {
        *n -= 1;
        if *n == 0 {
            e.closed_on.remove(&c);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let closed = std::mem::take(self.closed.get_mut().unwrap_or_else(|p| p.into_inner()));
        let mut files = self.files.files();
        let Some(e) = files.get_mut(&self.id) else { return };
        e.tickets -= 1;
        for c in closed {
            not_closed_on(e, c);
        }
        if e.tickets == 0 {
            files.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_held_while_tickets_are() {
        let f = Arc::new(OpenFiles::default());
        let id = FileId(7);
        assert!(f.ticket_if_held(id, 0).is_none());
        let open = f.ticket(id, &[]);
        let not_on_1 = f.ticket(id, &[1]);
        let (t, on_0) = f.ticket_if_held(id, 0).unwrap();
        assert!(on_0);
        assert!(!f.ticket_if_held(id, 1).unwrap().1);
        assert!(Arc::ptr_eq(&t.gate, &open.gate));
        drop(not_on_1);
        assert!(f.ticket_if_held(id, 1).unwrap().1);
        let not_on_2 = f.ticket(id, &[2]);
        assert!(!f.ticket_if_held(id, 2).unwrap().1);
        not_on_2.opened_on(2);
        assert!(f.ticket_if_held(id, 2).unwrap().1, "opened there later");
        drop(not_on_2);
        assert!(f.ticket_if_held(id, 2).unwrap().1);
        drop((open, t));
        assert!(f.ticket_if_held(id, 0).is_none());
        assert!(f.files().is_empty());
    }

    #[test]
    fn a_copy_one_handle_saw_miss_a_change_is_behind_for_every_handle_while_held() {
        let f = Arc::new(OpenFiles::default());
        let id = FileId(7);
        f.missed(id, 0b100); // not held: nothing to tell
        let a = f.ticket(id, &[]);
        assert_eq!(a.behind(), 0);
        let b = f.ticket(id, &[]);
        f.missed(id, 0b010);
        assert_eq!((a.behind(), b.behind()), (0b010, 0b010));
        let then = f.misses(id, 1);
        f.missed(id, 0b100);
        f.healed(id, 1, then);
        assert_eq!(a.behind(), 0b100, "another copy's miss does not matter");
        let then = f.misses(id, 2);
        f.missed(id, 0b100);
        f.healed(id, 2, then);
        assert_eq!(a.behind(), 0b100, "not healed: it missed a change since");
        f.healed(id, 2, f.misses(id, 2));
        assert_eq!(a.behind(), 0);
        drop((a, b));
        assert_eq!(
            f.ticket(id, &[]).behind(),
            0,
            "forgotten once nothing holds the file"
        );
    }
}
