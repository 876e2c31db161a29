//! Which objects each client may cache, and what a request changes.
//!
//! A client that was told about an object (in a lookup, getattr, listing, create or open)
//! may cache it; when another client changes it, the brick sends a notice. An object's
//! attributes are announced once, then not again until the client asks about it again (a
//! client rewriting a file does not flood every reader with notices). Changes of a
//! directory's entries are always announced to clients that know the directory, since they
//! may cache any of its names, present or absent.

use proto::msg::{Change, Fh, Request};
use proto::FileId;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Objects remembered per client (about 6 MiB). Past this the oldest quarter is dropped,
/// and the client told to forget them as if they had changed: it may no longer rely on
/// hearing about them.
const MAX_TRACKED: usize = 128 * 1024;

/// What a request shows the client and what it changes, worked out before it runs and
/// applied only if it succeeds.
#[derive(Default)]
pub struct Effect {
    pub shown: Vec<FileId>,
    pub changes: Vec<Change>,
}

fn entry(dir: FileId, name: &[u8]) -> Change {
    Change {
        id: dir,
        name: Some(name.to_vec()),
    }
}

fn object(id: FileId) -> Change {
    Change { id, name: None }
}

impl Effect {
    /// `file_of` gives the object behind one of the connection's handles.
    pub fn of(req: &Request, file_of: impl Fn(Fh) -> Option<FileId>) -> Effect {
        let (shown, changes) = match req {
            Request::Lookup { parent, .. } => (vec![*parent], vec![]),
            Request::GetAttr { id } | Request::Open { id, .. } => (vec![*id], vec![]),
            Request::ReadDir { id, .. } => (vec![*id], vec![]),
            Request::Create { parent, name, .. } => (vec![*parent], vec![entry(*parent, name)]),
            Request::Unlink { parent, name }
            | Request::Rmdir { parent, name }
            | Request::UnlinkUnless { parent, name, .. } => (vec![], vec![entry(*parent, name)]),
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => (vec![], vec![entry(*parent, name), entry(*new_parent, new_name)]),
            Request::Link {
                id,
                new_parent,
                new_name,
            } => (vec![], vec![entry(*new_parent, new_name), object(*id)]),
            Request::SetAttr { id, .. } | Request::SetXattr { id, .. } | Request::RemoveXattr { id, .. } => {
                (vec![], vec![object(*id)])
            }
            Request::Write { fh, .. }
            | Request::WriteMarked { fh, .. }
            | Request::WriteV { fh, .. }
            | Request::Fallocate { fh, .. } => (vec![], file_of(*fh).map(object).into_iter().collect()),
            _ => (vec![], vec![]),
        };
        Effect { shown, changes }
    }
}

/// The name a request removes or may replace, as (directory, name).
pub fn doomed(req: &Request) -> Option<(FileId, &[u8])> {
    match req {
        Request::Unlink { parent, name }
        | Request::Rmdir { parent, name }
        | Request::UnlinkUnless { parent, name, .. } => Some((*parent, name)),
        Request::Rename {
            new_parent, new_name, ..
        } => Some((*new_parent, new_name)),
        _ => None,
    }
}

/// One client's objects, each with whether a change to its attributes is still to be told,
/// oldest first.
#[derive(Default)]
pub struct Interest {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Each id with whether it is armed and when it was (last) learnt.
    ids: HashMap<FileId, (bool, u64)>,
    /// Ids in the order learnt; an entry whose stamp is not the id's current one is stale.
    order: VecDeque<(FileId, u64)>,
    clock: u64,
}

impl Interest {
    /// The client was told about `ids`. Returns what the brick stopped tracking to make room:
    /// the client must forget those.
    pub fn learn(&self, ids: impl Iterator<Item = FileId>) -> Vec<FileId> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            t.clock += 1;
            let stamp = t.clock;
            t.ids.insert(id, (true, stamp));
            t.order.push_back((id, stamp));
        }
        let mut dropped = Vec::new();
        if t.ids.len() > MAX_TRACKED {
            while t.ids.len() > MAX_TRACKED * 3 / 4 {
                let Some((id, stamp)) = t.order.pop_front() else {
                    break;
                };
                if t.ids.get(&id).is_some_and(|&(_, s)| s == stamp) {
                    t.ids.remove(&id);
                    dropped.push(id);
                }
            }
        }
        // Stale order entries (ids learnt again) are bounded by the table's size.
        if t.order.len() > 2 * MAX_TRACKED {
            let Table { ids, order, .. } = &mut *t;
            order.retain(|(id, stamp)| ids.get(id).is_some_and(|&(_, s)| s == *stamp));
        }
        dropped
    }

    /// Of `changes`, those this client must hear of.
    pub fn hits(&self, changes: &[Change]) -> Vec<Change> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for c in changes {
            let Some((armed, _)) = t.ids.get_mut(&c.id) else {
                continue;
            };
            if c.name.is_some() || *armed {
                *armed = false;
                out.push(c.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_announced_once_until_asked_again_entries_always() {
        let (file, dir) = (FileId(7), FileId(9));
        let i = Interest::default();
        assert!(
            i.hits(&[object(file)]).is_empty(),
            "unknown objects are not announced"
        );
        assert!(i.learn([file, dir].into_iter()).is_empty());
        assert_eq!(i.hits(&[object(file)]), vec![object(file)]);
        assert!(
            i.hits(&[object(file)]).is_empty(),
            "a second change waits for a new ask"
        );
        i.learn([file].into_iter());
        assert_eq!(i.hits(&[object(file)]), vec![object(file)]);
        for n in [&b"a"[..], b"b"] {
            assert_eq!(i.hits(&[entry(dir, n)]), vec![entry(dir, n)]);
        }
    }

    #[test]
    fn overflow_drops_the_oldest_and_names_them() {
        let i = Interest::default();
        let n = MAX_TRACKED as u128;
        assert!(i.learn((0..n).map(FileId)).is_empty());
        // Learnt again: no longer among the oldest.
        assert!(i.learn([FileId(0)].into_iter()).is_empty());
        let dropped = i.learn([FileId(n)].into_iter());
        assert_eq!(dropped.len(), MAX_TRACKED / 4 + 1);
        assert_eq!(
            dropped.first(),
            Some(&FileId(1)),
            "oldest first, the relearnt one kept"
        );
        assert!(!dropped.contains(&FileId(0)));
        assert!(
            i.hits(&[object(FileId(1))]).is_empty(),
            "dropped ids are not announced"
        );
        assert_eq!(i.hits(&[object(FileId(0))]).len(), 1);
        assert_eq!(i.hits(&[object(FileId(n))]).len(), 1);
    }

    #[test]
    fn writes_change_the_file_behind_the_handle() {
        let e = Effect::of(&Request::Write { fh: 3, offset: 0 }, |fh| {
            (fh == 3).then_some(FileId(42))
        });
        assert_eq!(e.changes, vec![object(FileId(42))]);
    }
}
