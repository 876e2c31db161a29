//! This client's hold on a replicated file's write order (see `brick::order`): taken on the
//! copies in child order before a change of the file's data, kept while nobody else asks
//! (a single writer pays no request per write), and given up once another client asks and
//! the changes under way have ended. A brick lets it go by itself when the connection closes
//! its last handle on the file; the client forgets it at each close of one of its handles
//! (the next change takes it again, at once where nobody else has it).
//!
//! Taking in child order is what keeps two clients from each holding a part and waiting
//! for the other's: a hold on a later child is given up before an earlier one is taken
//! again (its connection was renewed, so the brick let it go).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::replicate::bit;
use crate::xlator::Child;
use futures_util::future::join_all;
use proto::FileId;

#[derive(Default)]
struct State {
    /// Children that hold the order for this client, with the generation of the
    /// connection each was taken on.
    held: Vec<(usize, u64)>,
    /// Changes running under the hold (or taking it).
    running: usize,
    /// A change is taking the order: the others wait for it (two takes of one
    /// connection would queue twice at a brick).
    taking: bool,
    /// Another client asked for the order: it goes once the changes under way end (whoever
    /// sees that gives it up), and new changes wait until it is given up.
    asked: bool,
}

impl State {
    fn mask(&self) -> u64 {
        self.held.iter().fold(0, |m, (i, _)| m | bit(*i))
    }

    fn take_all(&mut self) -> u64 {
        let m = self.mask();
        self.held.clear();
        m
    }
}

#[derive(Default)]
pub struct Order {
    state: Mutex<State>,
    /// Wakes changes that wait for the hold to be given up, for a take, or for the
    /// changes under way to end.
    given: Notify,
}

/// What a change must do next to run in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// It may run (and must call [`Order::end`] when done).
    Run,
    /// Take the order on the children in `take`, one by one in child order, after giving
    /// it up on those in `give`; then run (and [`Order::end`]). A change that took runs even
    /// if another client asked meanwhile, so that two cannot keep giving way to each other.
    Take { give: u64, take: u64 },
    /// The hold is being given up: wait for [`Order::given`], then ask again.
    Wait,
}

impl Order {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For a change that needs the order on the children in `want`; `generation` tells
    /// each child's current connection.
    pub fn next(&self, want: u64, generation: impl Fn(usize) -> u64) -> Step {
        let mut s = self.state();
        // Asked for: the changes under way end, or the hold is being given up.
        if s.asked || s.taking {
            return Step::Wait;
        }
        s.held.retain(|(i, g)| generation(*i) == *g);
        let held = s.mask();
        let missing = want & !held;
        if missing == 0 {
            s.running += 1;
            return Step::Run;
        }
        let give = held & (u64::MAX << missing.trailing_zeros());
        if give != 0 && s.running > 0 {
            // Not while changes run under those holds.
            return Step::Wait;
        }
        s.held.retain(|(i, _)| give & bit(*i) == 0);
        s.running += 1;
        s.taking = true;
        Step::Take {
            give,
            take: missing | (give & want),
        }
    }

    /// The order was taken on child `i`, on the connection of `generation`.
    pub fn took(&self, i: usize, generation: u64) {
        let mut s = self.state();
        s.held.retain(|(c, _)| *c != i);
        s.held.push((i, generation));
    }

    /// The takes of [`Step::Take`] are done: other changes may go on.
    pub fn taken(&self) {
        self.state().taking = false;
        self.given.notify_waiters();
    }

    /// A change ended. Some: give the hold up now (then [`Order::gave`]) on these
    /// children and on every other the file is open on (a brick may hold it for this client
    /// although it was forgotten here).
    pub fn end(&self) -> Option<u64> {
        let mut s = self.state();
        s.running -= 1;
        if s.running > 0 {
            return None;
        }
        if s.asked {
            return Some(s.take_all());
        }
        drop(s);
        // A change waiting to give up a later child's hold may go on.
        self.given.notify_waiters();
        None
    }

    /// Another client waits for the order. Some: give it up now (then [`Order::gave`]) on
    /// these children and on the one that asked; None: it goes when the changes under
    /// way end.
    pub fn ask(&self) -> Option<u64> {
        let mut s = self.state();
        s.asked = true;
        (s.running == 0).then(|| s.take_all())
    }

    /// The hold was given up: changes waiting go on.
    pub fn gave(&self) {
        self.state().asked = false;
        self.given.notify_waiters();
    }

    pub fn given(&self) -> &Notify {
        &self.given
    }

    /// Forgets the hold (a handle of the file closed: the brick may have let it go).
    pub fn forget(&self) -> u64 {
        self.state().take_all()
    }
}

/// Gives of write orders on their way, by file: a take of the same file waits for them
/// (sent from another task, a give could reach the brick after the take, and undo it).
#[derive(Default)]
pub struct Gives {
    files: Mutex<HashMap<FileId, usize>>,
    done: Notify,
}

impl Gives {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, usize>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives up the write order of `id` on the children in `mask`, then lets the changes
    /// waiting for that (`order`'s) go on.
    pub fn spawn(self: &Arc<Self>, children: Vec<Child>, id: FileId, mask: u64, order: Option<Arc<Order>>) {
        *self.files().entry(id).or_default() += 1;
        let me = self.clone();
        let give = async move {
            give_order(&children, id, mask).await;
            me.finish(id, order);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(give)),
            Err(_) => {
                tracing::warn!(%id, "no runtime to give up a write order on");
                self.finish(id, None);
            }
        }
    }

    fn finish(&self, id: FileId, order: Option<Arc<Order>>) {
        {
            let mut files = self.files();
            if let Some(n) = files.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    files.remove(&id);
                }
            }
        }
        if let Some(o) = order {
            o.gave();
        }
        self.done.notify_waiters();
    }

    /// Waits until no give of `id` is on its way.
    pub async fn settled(&self, id: FileId) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.files().contains_key(&id) {
                return;
            }
            done.await;
        }
    }
}

pub async fn give_order(children: &[Child], id: FileId, mask: u64) {
    let which: Vec<usize> = (0..children.len()).filter(|i| mask & bit(*i) != 0).collect();
    let gives = which.iter().map(|i| children[*i].order(id, false));
    for (i, r) in which.iter().zip(join_all(gives).await) {
        if let Err(e) = r {
            tracing::debug!(child = i, "write order not given up: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: u64 = 1;

    fn gen(_: usize) -> u64 {
        GEN
    }

    #[test]
    fn taken_once_then_kept_until_asked() {
        let o = Order::default();
        assert_eq!(o.next(0b11, gen), Step::Take { give: 0, take: 0b11 });
        assert_eq!(o.next(0b11, gen), Step::Wait, "one take at a time");
        o.took(0, GEN);
        o.took(1, GEN);
        o.taken();
        assert_eq!(o.end(), None);
        assert_eq!(o.next(0b11, gen), Step::Run, "kept: no request");
        // Asked while a change runs: the hold goes when it ends; new changes wait.
        assert_eq!(o.ask(), None);
        assert_eq!(o.next(0b11, gen), Step::Wait);
        assert_eq!(o.end(), Some(0b11));
        o.gave();
        assert_eq!(o.next(0b11, gen), Step::Take { give: 0, take: 0b11 });
    }

    #[test]
    fn asked_while_idle_gives_up_at_once() {
        let o = Order::default();
        o.took(0, GEN);
        assert_eq!(o.ask(), Some(0b1));
        o.gave();
        assert_eq!(o.forget(), 0);
        // Asked with nothing held here (forgotten at a close): given up all the same.
        assert_eq!(o.ask(), Some(0));
        o.gave();
        assert_eq!(o.next(0b1, gen), Step::Take { give: 0, take: 0b1 });
    }

    #[test]
    fn a_later_hold_goes_before_an_earlier_child_is_taken_again() {
        let o = Order::default();
        o.took(0, GEN);
        o.took(1, GEN);
        o.took(2, GEN);
        // Child 1's connection was renewed: its hold is void, and 2's must go first.
        let renewed = |i: usize| if i == 1 { GEN + 1 } else { GEN };
        assert_eq!(
            o.next(0b111, renewed),
            Step::Take {
                give: 0b100,
                take: 0b110
            }
        );
        o.took(1, GEN + 1);
        o.took(2, GEN);
        o.taken();
        // Not while a change runs under the later hold.
        assert_eq!(o.next(0b111, renewed), Step::Run);
        let then_0 = |i: usize| if i <= 1 { GEN + 1 } else { GEN };
        assert_eq!(o.next(0b111, then_0), Step::Wait);
        assert_eq!(o.end(), None);
        assert_eq!(o.end(), None);
        assert_eq!(o.forget(), 0b110, "child 0's void hold is gone");
    }

    #[test]
    fn a_change_that_took_runs_even_if_asked_meanwhile() {
        let o = Order::default();
        assert_eq!(o.next(0b1, gen), Step::Take { give: 0, take: 0b1 });
        o.took(0, GEN);
        o.taken();
        assert_eq!(o.ask(), None, "taken for a change: given up at its end");
        assert_eq!(o.next(0b1, gen), Step::Wait);
        assert_eq!(o.end(), Some(0b1));
        o.gave();
        // Idle: given up at once.
        o.took(0, GEN);
        assert_eq!(o.ask(), Some(0b1));
    }
}
