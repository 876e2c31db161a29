//! Write order on replicated files: one connection at a time changes a file's data.
//!
//! Replication sends each change of a file to every copy at once. Two clients writing the
//! same bytes at once could reach two copies in opposite orders and leave them different,
//! with nothing marked for heal. So a replicating client holds a file's *order* on its
//! copies while it changes the file (`Request::Order`, taken copy by copy in brick order, so
//! that two clients never each hold a part), and keeps it while nobody else asks: a single
//! writer pays no request per write. When another connection asks, the holder is told
//! (`Notice::Yield`), finishes the changes it has under way and gives the order up; the
//! asker gets it then. A hold ends when its client gives it up, with the connection's last
//! handle on the file (see the server's release), or with the connection.

use proto::FileId;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::oneshot;

struct Order {
    holder: u64,
    /// Connections waiting for it, in the order they asked.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Orders held, by file.
#[derive(Default)]
pub struct Orders {
    map: Mutex<HashMap<FileId, Order>>,
}

/// The outcome of asking for an order.
pub enum Take {
    Granted,
    /// Resolves once granted. `tell`: the holder, to be told someone waits (the first
    /// waiter tells it; later ones find it told).
    Wait {
        granted: oneshot::Receiver<()>,
        tell: Option<u64>,
    },
}

impl Orders {
    fn lock(&self) -> MutexGuard<'_, HashMap<FileId, Order>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `conn` asks for the order of `id`.
    pub fn take(&self, id: FileId, conn: u64) -> Take {
        match self.lock().entry(id) {
            Entry::Vacant(v) => {
                grant(v, conn);
                Take::Granted
            }
            Entry::Occupied(mut o) => {
                let o = o.get_mut();
                if o.holder == conn {
                    return Take::Granted;
                }
                let (tx, granted) = oneshot::channel();
                let tell = o.waiting.is_empty().then_some(o.holder);
                o.waiting.push_back((conn, tx));
                Take::Wait { granted, tell }
            }
        }
    }

    /// Takes the order of `id` for `conn` if nobody else holds it; never waits.
    pub fn try_take(&self, id: FileId, conn: u64) -> bool {
        match self.lock().entry(id) {
            Entry::Vacant(v) => {
                grant(v, conn);
                true
            }
            Entry::Occupied(o) => o.get().holder == conn,
        }
    }

    /// `conn` gives up the order of `id` (or stops waiting for it). Returns the connection
    /// that holds it now if others still wait: it must be told.
    pub fn give(&self, id: FileId, conn: u64) -> Option<u64> {
        let mut map = self.lock();
        let o = map.get_mut(&id)?;
        if o.holder != conn {
            o.waiting.retain(|(c, _)| *c != conn);
            return None;
        }
        // A waiter whose request is gone (its connection ended) is passed over. Every
        // request of the new holder's is answered (a client may ask more than once).
        while let Some((next, tx)) = o.waiting.pop_front() {
            if tx.send(()).is_ok() {
                o.holder = next;
                let (mine, others) = std::mem::take(&mut o.waiting)
                    .into_iter()
                    .partition(|(c, _)| *c == next);
                o.waiting = others;
                for (_, tx) in mine {
                    let _: Result<(), ()> = tx.send(());
                }
                return (!o.waiting.is_empty()).then_some(next);
            }
        }
        map.remove(&id);
        None
    }

    /// Everything `conn` held or waited for, as its connection ends. Returns the new holders
    /// that others wait for.
    pub fn end(&self, conn: u64) -> Vec<(FileId, u64)> {
        let held: Vec<FileId> = self
            .lock()
            .iter()
            .filter(|(_, o)| o.holder == conn || o.waiting.iter().any(|(c, _)| *c == conn))
            .map(|(id, _)| *id)
            .collect();
        held.into_iter()
            .filter_map(|id| self.give(id, conn).map(|next| (id, next)))
            .collect()
    }

    /// Who holds the order of `id`.
    pub fn holder(&self, id: FileId) -> Option<u64> {
        self.lock().get(&id).map(|o| o.holder)
    }
}

fn grant(v: std::collections::hash_map::VacantEntry<'_, FileId, Order>, conn: u64) {
    v.insert(Order {
        holder: conn,
        waiting: VecDeque::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FileId = FileId(7);

    fn wait(t: Take) -> (oneshot::Receiver<()>, Option<u64>) {
        match t {
            Take::Wait { granted, tell } => (granted, tell),
            Take::Granted => panic!("granted while held"),
        }
    }

    #[test]
    fn one_holder_at_a_time_in_the_order_asked() {
        let o = Orders::default();
        assert!(matches!(o.take(F, 1), Take::Granted));
        assert!(matches!(o.take(F, 1), Take::Granted), "held already");
        let (mut two, tell) = wait(o.take(F, 2));
        assert_eq!(tell, Some(1), "the first waiter tells the holder");
        let (mut three, tell) = wait(o.take(F, 3));
        assert_eq!(tell, None, "told already");
        assert!(two.try_recv().is_err());
        // 2 gets it, and must hear that 3 waits.
        assert_eq!(o.give(F, 1), Some(2));
        assert!(two.try_recv().is_ok());
        assert!(three.try_recv().is_err());
        assert_eq!(o.give(F, 2), None, "nobody else waits for 3");
        assert!(three.try_recv().is_ok());
        assert_eq!(o.holder(F), Some(3));
        assert_eq!(o.give(F, 3), None);
        assert_eq!(o.holder(F), None);
    }

    #[test]
    fn a_connection_that_ends_gives_up_what_it_held_and_waited_for() {
        let o = Orders::default();
        assert!(o.try_take(F, 1));
        assert!(!o.try_take(F, 2));
        let g = FileId(8);
        assert!(matches!(o.take(g, 2), Take::Granted));
        let (_wait_g, _) = wait(o.take(g, 1));
        let (mut two, _) = wait(o.take(F, 2));
        assert_eq!(o.end(1), vec![]);
        assert!(two.try_recv().is_ok());
        assert_eq!(o.holder(F), Some(2));
        // 1 no longer waits for g: 2's give frees it.
        assert_eq!(o.give(g, 2), None);
        assert_eq!(o.holder(g), None);
    }

    #[test]
    fn every_request_of_the_next_holder_is_answered() {
        let o = Orders::default();
        assert!(matches!(o.take(F, 1), Take::Granted));
        let (mut two_a, tell) = wait(o.take(F, 2));
        assert_eq!(tell, Some(1));
        let (mut two_b, _) = wait(o.take(F, 2));
        assert_eq!(o.give(F, 1), None, "nobody else waits for 2");
        assert!(two_a.try_recv().is_ok() && two_b.try_recv().is_ok());
        // With another connection behind it, the new holder is to be told.
        let o = Orders::default();
        assert!(matches!(o.take(F, 1), Take::Granted));
        let (_two, _) = wait(o.take(F, 2));
        let (_three, _) = wait(o.take(F, 3));
        let (_two_again, _) = wait(o.take(F, 2));
        assert_eq!(o.give(F, 1), Some(2));
        assert_eq!(o.give(F, 2), None);
        assert_eq!(o.holder(F), Some(3));
    }

    #[test]
    fn a_waiter_whose_request_is_gone_is_passed_over() {
        let o = Orders::default();
        assert!(matches!(o.take(F, 1), Take::Granted));
        let (gone, _) = wait(o.take(F, 2));
        let (mut three, _) = wait(o.take(F, 3));
        drop(gone);
        assert_eq!(o.give(F, 1), None);
        assert!(three.try_recv().is_ok());
        assert_eq!(o.holder(F), Some(3));
    }
}
