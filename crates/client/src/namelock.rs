//! Name locks: a namespace change that takes several steps or reaches several children
//! holds each name it changes for its whole course, so that two clients' changes of one
//! name cannot interleave. In distribute (a rename that leaves a pointer, a hard link, a
//! pointer's removal, a directory made or removed on every child) they would leave data on
//! two children, a pointer to nothing, or a directory on some children only; in stripe
//! (every change on every child) two renames onto one name could reach the children in
//! opposite orders and leave each child's piece of a different file under it.
//!
//! A name lock is an exclusive POSIX lock on the name's parent directory, on one child (for
//! distribute the one the name hashes to, for stripe the first), over one byte above
//! OFFSET_MAX picked by the layer and the name's hash. No user lock reaches that range (the
//! kernel keeps directory locks itself, and file locks end at OFFSET_MAX), the two layers'
//! bytes never meet (a distributed stripe holds both), and the brick drops a lock with the
//! connection if the client dies. Names whose hashes meet share a lock: they only wait for
//! each other.
//!
//! A change that removes or replaces a directory may also hold every name in it (the whole
//! range of its layer's bytes on that directory), so that no change inside it is half way
//! through when it goes.
//!
//! Several names are taken at once where nobody holds them; otherwise one by one, in one
//! order (child, directory, first byte) for every client, so that two changes never each
//! wait for what the other holds (a directory's whole range sorts with its names, by its
//! first byte).

use crate::xlator::{Child, Result};
use futures_util::future::join_all;
use proto::{Errno, FileId, Lock, LockKind};

/// One name to hold: on child `child`, in directory `parent`, the bytes `at..=end`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    child: usize,
    parent: FileId,
    at: u64,
    end: u64,
}

/// The layer that holds names: each has bytes of its own.
#[derive(Clone, Copy)]
pub enum Layer {
    Distribute = 0,
    Stripe = 1,
}

impl Name {
    /// A name in `parent` whose hash is `hash` (`layout::hash_name`), held on `child`.
    pub fn new(layer: Layer, child: usize, parent: FileId, hash: u64) -> Name {
        let at = Self::base(layer) | (hash >> 2);
        Name {
            child,
            parent,
            at,
            end: at,
        }
    }

    /// Every name in directory `dir` that `layer` holds on `child`.
    pub fn every(layer: Layer, child: usize, dir: FileId) -> Name {
        Name {
            child,
            parent: dir,
            at: Self::base(layer),
            end: Self::base(layer) | (u64::MAX >> 2),
        }
    }

    fn base(layer: Layer) -> u64 {
        (1 << 63) | ((layer as u64) << 62)
    }
}

/// Names held until `release` (or the drop, which releases them in the background).
pub struct Held {
    children: Vec<Child>,
    names: Vec<Name>,
    owner: u64,
}

fn lock(kind: LockKind, n: &Name, owner: u64) -> Lock {
    Lock {
        kind,
        start: n.at,
        end: n.end,
        owner,
        pid: 0,
    }
}

/// Takes every name in `names`, waiting for other holders.
pub async fn take(children: &[Child], mut names: Vec<Name>) -> Result<Held> {
    names.sort();
    names.dedup();
    // A fresh owner per change: two changes of one client exclude each other too.
    let owner = FileId::random().0 as u64;
    // Counted as held before each request is sent: if this future is dropped half way,
    // the drop gives back whatever was granted (an unlock of what is not held is harmless).
    let mut held = Held {
        children: children.to_vec(),
        names: names.clone(),
        owner,
    };
    let at_once = join_all(names.iter().map(|n| async move {
        children[n.child]
            .setlk(n.parent, &lock(LockKind::Write, n, owner), false)
            .await
    }))
    .await;
    if at_once.iter().all(Result::is_ok) {
        tracing::trace!(owner, n = names.len(), "names held at once");
        return Ok(held);
    }
    // Someone holds one of them: those granted go back, and all are taken in order.
    held.names = names
        .iter()
        .zip(&at_once)
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| *n)
        .collect();
    held.release_names().await;
    if let Some(e) = at_once.iter().find_map(|r| r.as_ref().err().copied()) {
        if e != Errno::EAGAIN {
            return Err(e);
        }
    }
    tracing::trace!(owner, "names taken one by one");
    for n in names {
        held.names.push(n);
        children[n.child]
            .setlk(n.parent, &lock(LockKind::Write, &n, owner), true)
            .await?;
    }
    tracing::trace!(owner, "names held");
    Ok(held)
}

impl Held {
    /// Gives the names back.
    pub async fn release(mut self) {
        self.release_names().await;
    }

    async fn release_names(&mut self) {
        give_back(&self.children, std::mem::take(&mut self.names), self.owner).await;
    }
}

/// Unlocks `names` of `owner`. (Plain data, not a [`Held`]: a future of it dropped before
/// it ran, its runtime going, does nothing, where a `Held` would give back again.)
async fn give_back(children: &[Child], names: Vec<Name>, owner: u64) {
    tracing::trace!(owner, n = names.len(), "names given back");
    let done = join_all(names.iter().map(|n| async move {
        children[n.child]
            .setlk(n.parent, &lock(LockKind::Unlock, n, owner), false)
            .await
    }))
    .await;
    for r in done {
        if let Err(e) = r {
            // The brick drops it with the connection; until then the name waits.
            tracing::warn!("cannot give back a name lock: {e}");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        // A change dropped half way (its request cancelled): the names go back anyway.
        let (children, names, owner) = (self.children.clone(), std::mem::take(&mut self.names), self.owner);
        // On a thread that serves one CPU, from its own runtime: the unlocks then go on the
        // same lane as the locks they undo (`proto::lane`), after them.
        let home = proto::lane::here().map(|(_, home)| home);
        match home.map_or_else(tokio::runtime::Handle::try_current, Ok) {
            Ok(rt) => {
                rt.spawn(async move { give_back(&children, names, owner).await });
            }
            Err(_) => {
                tracing::warn!("name locks left to the bricks: no runtime to give them back");
            }
        }
    }
}
