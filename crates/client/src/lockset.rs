//! The POSIX locks a client holds, per file and lock owner, as it was granted them: what
//! replicate puts back on copies that granted a request the others refused, and what a
//! brick connection takes again after a reconnect (a brick that restarted has lost them).

use proto::{FileId, Lock, LockKind};
use std::collections::HashMap;

#[derive(Default)]
pub struct LockSet {
    held: HashMap<(FileId, u64), Vec<Lock>>,
}

impl LockSet {
    /// Records a granted request (or an unlock), as fcntl applies it.
    pub fn apply(&mut self, id: FileId, l: &Lock) {
        let key = (id, l.owner);
        let v = self.held.entry(key).or_default();
        apply_lock(v, l);
        if v.is_empty() {
            self.held.remove(&key);
        }
    }

    /// Forgets an owner's locks on a file (its close released them); whether it had any.
    pub fn drop_owner(&mut self, id: FileId, owner: u64) -> bool {
        self.held.remove(&(id, owner)).is_some()
    }

    /// The owner's locks on `id` within the range of `l`.
    pub fn overlapped(&self, id: FileId, l: &Lock) -> Vec<Lock> {
        self.held
            .get(&(id, l.owner))
            .map(|v| overlapped(v, l))
            .unwrap_or_default()
    }

    /// Every lock held.
    pub fn all(&self) -> Vec<(FileId, Lock)> {
        self.held
            .iter()
            .flat_map(|((id, _), v)| v.iter().map(move |l| (*id, *l)))
            .collect()
    }
}

/// Applies `l` to `held`, one owner's locks on one file, as fcntl does: the range is cut
/// out of them, then added with its new kind unless it is an unlock.
fn apply_lock(held: &mut Vec<Lock>, l: &Lock) {
    let mut kept = Vec::with_capacity(held.len() + 2);
    for h in held.drain(..) {
        if h.end < l.start || l.end < h.start {
            kept.push(h);
            continue;
        }
        if h.start < l.start {
            kept.push(Lock {
                end: l.start - 1,
                ..h
            });
        }
        if h.end > l.end {
            kept.push(Lock {
                start: l.end + 1,
                ..h
            });
        }
    }
    if l.kind != LockKind::Unlock {
        kept.push(*l);
    }
    *held = kept;
}

/// The parts of `held` within the range of `l`.
fn overlapped(held: &[Lock], l: &Lock) -> Vec<Lock> {
    held.iter()
        .filter(|h| h.start <= l.end && l.start <= h.end)
        .map(|h| Lock {
            start: h.start.max(l.start),
            end: h.end.min(l.end),
            ..*h
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kind: LockKind, start: u64, end: u64) -> Lock {
        Lock {
            kind,
            start,
            end,
            owner: 1,
            pid: 1,
        }
    }

    fn ranges(v: &[Lock]) -> Vec<(LockKind, u64, u64)> {
        let mut r: Vec<_> = v.iter().map(|h| (h.kind, h.start, h.end)).collect();
        r.sort_by_key(|x| x.1);
        r
    }

    #[test]
    fn an_owners_locks_are_cut_and_replaced_as_fcntl_does() {
        use LockKind::{Read, Unlock, Write};
        let mut v = Vec::new();
        apply_lock(&mut v, &l(Read, 0, 99));
        apply_lock(&mut v, &l(Write, 10, 19));
        assert_eq!(ranges(&v), [(Read, 0, 9), (Write, 10, 19), (Read, 20, 99)]);
        assert_eq!(
            ranges(&overlapped(&v, &l(Write, 5, 14))),
            [(Read, 5, 9), (Write, 10, 14)]
        );
        apply_lock(&mut v, &l(Unlock, 0, u64::MAX));
        assert!(v.is_empty());
        apply_lock(&mut v, &l(Write, 0, u64::MAX));
        apply_lock(&mut v, &l(Unlock, 0, 0));
        assert_eq!(ranges(&v), [(Write, 1, u64::MAX)]);
    }

    #[test]
    fn a_set_keeps_each_owners_locks_until_they_go() {
        use LockKind::{Read, Unlock, Write};
        let (f, g) = (FileId::random(), FileId::random());
        let mut s = LockSet::default();
        s.apply(f, &l(Write, 0, 9));
        s.apply(
            g,
            &Lock {
                owner: 2,
                ..l(Read, 5, 5)
            },
        );
        assert_eq!(s.all().len(), 2);
        s.apply(f, &l(Unlock, 0, u64::MAX));
        assert_eq!(
            s.all(),
            [(
                g,
                Lock {
                    owner: 2,
                    ..l(Read, 5, 5)
                }
            )]
        );
        assert!(!s.drop_owner(g, 1));
        assert!(s.drop_owner(g, 2));
        assert!(s.all().is_empty());
    }
}
