//! Replication: every copy gets every change, any good copy serves reads.
//!
//! A change goes to all reachable children and is acknowledged only once it is on a quorum
//! of them (a majority; with an even count, half including the first child). Without a
//! quorum the change is refused with EROFS before anything is written. A child that misses
//! a change is marked pending on the children that have it (`pending.<child>` counters in
//! internal xattrs, on the object for data and metadata changes, on the parent directory for
//! entry changes) before the change is acknowledged, so healing knows exactly what to
//! repair, and reads never use a copy that others mark as behind.

use crate::heal::Healer;
use crate::lockset::LockSet;
use crate::openfiles::{OpenFiles, Ticket};
use crate::order::{give_order, Gives, Order, Step};
use crate::xlator::{Child, DirCursor, DirPage, Handle, HealReport, Result, Xlator};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use proto::{Entry, Errno, FileId, Lock, LockKind, NewNode, RenameFlags, SetAttr, StatFs};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Name of the counter that marks child `j` as behind.
pub fn pending_key(j: usize) -> String {
    format!("pending.{j}")
}

/// Children that this entry marks as behind.
pub fn pending_mask(e: &Entry) -> u64 {
    let mut mask = 0;
    for m in &e.meta {
        let Some(j) = m
            .name
            .strip_prefix("pending.")
            .and_then(|j| j.parse::<u32>().ok())
        else {
            continue;
        };
        let count = <[u8; 8]>::try_from(m.value.as_slice())
            .map(i64::from_be_bytes)
            .unwrap_or(0);
        if count != 0 && j < 64 {
            mask |= 1 << j;
        }
    }
    mask
}

pub struct Replicate {
    pub(crate) children: Vec<Child>,
    /// The same bricks over connections of the healer's own (see `crate::heal`).
    pub(crate) healers: Vec<Healer>,
    /// One heal pass at a time.
    pub(crate) heal_lock: tokio::sync::Mutex<()>,
    /// Tells the background healer that requests met pending markers.
    heal_wake: Arc<Notify>,
    /// The locks this client holds, per file and lock owner, as the children were told: to
    /// put them back on children that granted a request the others refused.
    held: Mutex<LockSet>,
    /// The files this client is changing (see `crate::openfiles`).
    pub(crate) open: Arc<OpenFiles>,
    /// Gives of write orders on their way (see `crate::order`).
    gives: Arc<Gives>,
    /// The orders of directories' namespace changes (see [`Replicate::in_dir_order`]).
    dirs: Mutex<HashMap<FileId, Arc<DirOrder>>>,
    /// Under distribute, which removes a directory a rename replaces before the rename
    /// gets here: a rename need not look its target up.
    under_distribute: bool,
    /// Heals move directories on a copy one at a time (see `crate::dirmove`): a move looks
    /// a name up, then renames it, and another move must not change it in between.
    pub(crate) moves: tokio::sync::Mutex<()>,
}

/// A directory's order, and its changes from this client one at a time (the kernel has a
/// mount's one at a time already; other front ends may not).
#[derive(Default)]
struct DirOrder {
    order: Arc<Order>,
    one: Arc<tokio::sync::Mutex<()>>,
}

/// Namespace changes of directories under their orders (see [`Replicate::in_dir_order`]).
struct DirsInOrder<'a> {
    _orders: Vec<InOrder<'a>>,
    _one: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

/// Replicate's part of an open file.
pub struct ReplicaHandle {
    id: FileId,
    /// How it was opened (what a copy it lacks is opened with once back).
    flags: u32,
    /// Per child, the file's handle there: from the open, or from once the copy was back
    /// (`Replicate::open_where_back`).
    handles: Vec<OnceLock<Handle>>,
    /// When a copy this handle lacks was last tried (`Replicate::open_where_back`).
    tried: Mutex<Vec<Option<Instant>>>,
    /// Children that missed changes made through this handle (reads avoid them).
    marked: AtomicU64,
    /// Children that missed the last change made through this handle: the next write
    /// marks them behind itself, on the children that take it.
    failing: AtomicU64,
    /// The child reads go to.
    read_child: AtomicU64,
    /// Per child, the generation of its connection when this handle last knew the copy
    /// there to be good (see [`Replicate::still_good`]).
    seen: Vec<AtomicU64>,
    /// Children a read-only open went by because another client was healing them there:
    /// an fsync through the handle does not mark them (nothing was written through it).
    skipped: AtomicU64,
    /// Holds the file among those this client changes; its gate orders this handle's
    /// changes against a heal in place.
    ticket: Ticket,
}

struct Outcome<T> {
    ok: Vec<(usize, T)>,
    failed: u64,
}

impl<T> Outcome<T> {
    /// The children that took the change.
    fn took(&self) -> Vec<usize> {
        self.ok.iter().map(|(i, _)| *i).collect()
    }

    fn ok_mask(&self) -> u64 {
        self.ok.iter().fold(0, |m, (i, _)| m | bit(*i))
    }

    /// Children that took the change when tried again.
    fn took_later(&mut self, more: Vec<(usize, T)>) {
        for (s, v) in more {
            self.failed &= !bit(s);
            self.ok.push((s, v));
        }
    }
}

/// A change of a file's data (or of a directory's names) under its order (see
/// [`Replicate::in_order`]).
struct InOrder<'a> {
    r: &'a Replicate,
    order: Arc<Order>,
    id: FileId,
    /// Children the file is open on (every child for a directory).
    open: u64,
    /// Still taking the order (the future was dropped then).
    taking: bool,
}

impl Drop for InOrder<'_> {
    fn drop(&mut self) {
        if self.taking {
            self.order.taken();
        }
        if let Some(held) = self.order.end() {
            let (r, order) = (self.r, Some(self.order.clone()));
            r.gives
                .spawn(r.children.clone(), self.id, held | self.open, order);
        }
    }
}

pub(crate) fn bit(i: usize) -> u64 {
    1u64 << i
}

/// The children whose answer says that what was asked for is gone there.
fn lacking<T>(results: &[Result<T>]) -> Vec<usize> {
    (0..results.len())
        .filter(|i| results[*i].as_ref().is_err_and(|e| crate::heal::gone(*e)))
        .collect()
}

/// Directory orders kept before those unused are given up.
const DIR_ORDERS: usize = 4096;

/// How long a lookup waits to make a name on a copy that lacks it (see `make_where_lacking`).
const MAKE_WAIT: Duration = Duration::from_millis(500);
/// How often a handle tries to open its file on a copy it lacks that is back.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

impl Replicate {
    /// A replica set over `children`; `healers` reach the same bricks over connections of
    /// their own. Heals in the background (on the current tokio runtime) while it lives.
    pub fn new(children: Vec<Child>, healers: Vec<Healer>, under_distribute: bool) -> Arc<Replicate> {
        assert!(!children.is_empty() && children.len() <= 64 && healers.len() == children.len());
        let heal_wake = Arc::new(Notify::new());
        let r = Arc::new(Replicate {
            children,
            healers,
            heal_lock: tokio::sync::Mutex::new(()),
            heal_wake: heal_wake.clone(),
            held: Mutex::new(LockSet::default()),
            open: Arc::new(OpenFiles::default()),
            gives: Arc::default(),
            dirs: Mutex::default(),
            under_distribute,
            moves: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(crate::heal::keep_healing(Arc::downgrade(&r), heal_wake));
        r
    }

    /// The directory named `name` in `parent`, if that is one: a change that removes or
    /// replaces it takes its order too, so that names made in it meet its going in one
    /// order on every copy (which then finds it empty, or not, alike).
    async fn dir_named(&self, parent: FileId, name: &[u8]) -> Option<FileId> {
        match Self::pick(self.fan(|_, c| c.lookup(parent, name)).await) {
            Ok(d) if d.attr.kind == proto::FileKind::Dir => Some(d.attr.id),
            _ => None,
        }
    }

    /// Starts a heal pass soon.
    pub(crate) fn wake_healer(&self) {
        self.heal_wake.notify_one();
    }

    /// Requests met copies marked behind: if those can be reached, heal soon.
    fn noticed(&self, stale: u64) {
        if stale & self.up_mask() != 0 {
            self.heal_wake.notify_one();
        }
    }

    /// Children marked behind by any of these answers.
    fn stale_in(results: &[Result<Entry>]) -> u64 {
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .fold(0, |m, e| m | pending_mask(e))
    }

    /// Each child's connection generation now.
    fn generations(&self) -> Vec<u64> {
        self.children.iter().map(|c| c.generation()).collect()
    }

    pub(crate) fn all(&self) -> u64 {
        if self.children.len() == 64 {
            u64::MAX
        } else {
            bit(self.children.len()) - 1
        }
    }

    pub(crate) fn up_mask(&self) -> u64 {
        self.children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_up())
            .fold(0, |m, (i, _)| m | bit(i))
    }

    /// Majority, or exactly half including the first child.
    pub fn quorum(&self, mask: u64) -> bool {
        let n = self.children.len() as u32;
        let k = (mask & self.all()).count_ones();
        2 * k > n || (2 * k == n && mask & 1 == 1)
    }

    async fn fan<'a, T, F, Fut>(&'a self, f: F) -> Vec<Result<T>>
    where
        F: Fn(usize, &'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        join_all(self.children.iter().enumerate().map(|(i, c)| f(i, c))).await
    }

    /// Sorts results into successes and failed children. When nothing succeeded, the error
    /// to report: a real answer (ENOENT, EEXIST, ...) rather than a transport failure.
    fn outcome<T>(results: Vec<Result<T>>) -> std::result::Result<Outcome<T>, Errno> {
        let mut ok = Vec::new();
        let mut failed = 0;
        let mut real_err = None;
        let mut any_err = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => ok.push((i, v)),
                Err(e) => {
                    failed |= bit(i);
                    if !e.is_transport() && real_err.is_none() {
                        real_err = Some(e);
                    }
                    any_err.get_or_insert(e);
                }
            }
        }
        if ok.is_empty() {
            return Err(real_err.or(any_err).unwrap_or(Errno::ENOTCONN));
        }
        Ok(Outcome { ok, failed })
    }

    /// Marks `failed` children as behind on `id`, on every child that has the change.
    async fn mark(&self, id: FileId, ok: &[usize], failed: u64) {
        let deltas: Vec<(String, i64)> = (0..self.children.len())
            .filter(|j| failed & bit(*j) != 0)
            .map(|j| (pending_key(j), 1))
            .collect();
        let marks = join_all(ok.iter().map(|&i| self.children[i].xattr_add(id, &deltas))).await;
        for (r, i) in marks.into_iter().zip(ok) {
            if let Err(e) = r {
                tracing::warn!(%id, child = i, "cannot mark pending heal: {e}");
            }
        }
    }

    /// A name found on too few copies for a change to it to have quorum, because the others
    /// lack it: with replica 2 and the first copy being refilled (a replaced disk), every
    /// write, attribute change or hard link of a file the heal has not made there yet would
    /// fail with EROFS. Where the good copies mark a lacking copy as behind in `parent` (so
    /// it did not remove the name itself), the name is made there now, as the heal makes
    /// it (same id, marked for its contents to follow), with any directories above that it
    /// lacks. Best effort: what cannot be made is left to the heal.
    async fn make_where_lacking(&self, parent: FileId, name: &[u8], results: &[Result<Entry>]) {
        let stale = Self::stale_in(results);
        let good = |i: usize| results[i].as_ref().ok().filter(|_| stale & bit(i) == 0);
        let Some(e) = (0..results.len()).find_map(good) else {
            return;
        };
        let has: Vec<usize> = (0..results.len())
            .filter(|i| good(*i).is_some_and(|x| x.attr.id == e.attr.id))
            .collect();
        let lacking = lacking(results);
        let has_mask = has.iter().fold(0, |m, i| m | bit(*i));
        if lacking.is_empty() || self.quorum(has_mask) {
            return;
        }
        for s in lacking {
            match self.make_name(parent, name, e, &has, s).await {
                Ok(made) => tracing::debug!(%parent, child = s, made, "a name a copy lacks"),
                Err(err) => tracing::debug!(%parent, child = s, "cannot make a name a copy lacks: {err}"),
            }
        }
    }

    /// A change to the regular file `id` that too few copies took because the others lack
    /// the file (as for `make_where_lacking`, but reached by id: an open file, an attribute
    /// change): the file is made on the children in `lacking` where the copies in `took`
    /// record it and mark them as behind, and the change `f` is tried again there. The
    /// answers of those that then took it, and whether a copy lacks the file because it
    /// was removed there (not marked behind, or gone from the good copies too by now): a
    /// removal racing the change, which then answers ENOENT, as after the removal.
    async fn retry_where_file_missing<T, Fut>(
        &self,
        id: FileId,
        took: &[usize],
        lacking: &[usize],
        f: impl Fn(usize) -> Fut,
    ) -> (Vec<(usize, T)>, bool)
    where
        Fut: Future<Output = Result<T>>,
    {
        let (mut ok, mut removed) = (Vec::new(), false);
        if took.is_empty() {
            return (ok, removed);
        }
        for &s in lacking {
            match self.make_file(id, took, s).await {
                Ok(true) => match f(s).await {
                    Ok(v) => ok.push((s, v)),
                    Err(e) => tracing::debug!(%id, child = s, "a change failed on the file made: {e}"),
                },
                // Or where the good copies recorded it is gone too (ESTALE: its name there
                // names another file now; ENOTDIR: a directory on its way is gone).
                Ok(false) | Err(Errno::ENOENT | Errno::ESTALE | Errno::ENOTDIR) => removed = true,
                Err(e) => tracing::debug!(%id, child = s, "cannot make a file a copy lacks: {e}"),
            }
        }
        (ok, removed)
    }

    /// Runs a change on every child: refused without quorum, marks what was missed, fails
    /// with EROFS if fewer than a quorum took it.
    async fn mutate<'a, T, F, Fut>(&'a self, mark_ids: &[FileId], f: F) -> Result<Vec<(usize, T)>>
    where
        F: Fn(usize, &'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let (mut out, lacking) = self.attempt(&f).await?;
        if let ([id], false, false) = (mark_ids, lacking.is_empty(), self.quorum(out.ok_mask())) {
            let took = out.took();
            let (more, removed) = self
                .retry_where_file_missing(*id, &took, &lacking, |s| f(s, &self.children[s]))
                .await;
            out.took_later(more);
            if removed && !self.quorum(out.ok_mask()) {
                // Those that lack it lose nothing (the copies that took it lose the file with
                // the removal); those that did not answer are marked as ever.
                let silent = lacking.iter().fold(out.failed, |m, i| m & !bit(*i));
                if silent != 0 {
                    self.mark(*id, &out.took(), silent).await;
                }
                return Err(Errno::ENOENT);
            }
        }
        if out.failed != 0 {
            for id in mark_ids {
                self.mark(*id, &out.took(), out.failed).await;
                // (A truncation through a handle is one of these.)
                self.open.missed(*id, out.failed);
            }
        }
        if !self.quorum(out.ok_mask()) {
            return Err(Errno::EROFS);
        }
        Ok(out.ok)
    }

    /// A change inside `parent` that too few copies took because some of them lack
    /// `parent` (a copy being refilled, such as a replaced disk the heal has not reached
    /// yet; with replica 2 the first copy must take every change): the directories are made
    /// there first (`Replicate::make_dirs_above`) and the change is tried again there.
    async fn retry_where_parent_missing<'a, T, F, Fut>(
        &'a self,
        parent: FileId,
        results: &mut [Result<T>],
        f: F,
    ) where
        F: Fn(&'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let ok: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
        if ok.is_empty() || self.quorum(ok.iter().fold(0, |m, i| m | bit(*i))) {
            return;
        }
        for (s, r) in results.iter_mut().enumerate() {
            if !r.as_ref().is_err_and(|e| crate::heal::gone(*e)) {
                continue;
            }
            match self.make_dirs_above(parent, &ok, s).await {
                Ok(()) => *r = f(&self.children[s]).await,
                Err(e) => {
                    tracing::debug!(%parent, child = s, "cannot make the directories a copy lacks: {e}")
                }
            }
        }
    }

    /// Runs a change on every child, refused without quorum: the answers sorted as by
    /// `outcome`, and the children that answered that what it names is gone.
    async fn attempt<'a, T, F, Fut>(&'a self, f: F) -> Result<(Outcome<T>, Vec<usize>)>
    where
        F: Fn(usize, &'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        if !self.quorum(self.up_mask()) {
            return Err(Errno::EROFS);
        }
        let results = self.fan(f).await;
        let lacking = lacking(&results);
        Ok((Self::outcome(results)?, lacking))
    }

    /// Removes a name in `parent` as `mutate` changes things, except for a child that lacks
    /// the name (or `parent`): when the good copies mark it as behind there, it counts as
    /// having taken the removal (absent is what was asked, and a copy being refilled lacks
    /// every name the heal has not made yet; with replica 2 the first copy must take every
    /// change); when they do not, it is not marked either (see below).
    async fn remove<'a, T, F, Fut>(&'a self, parent: FileId, f: F) -> Result<Vec<(usize, T)>>
    where
        F: Fn(usize, &'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let (out, lacking) = self.attempt(f).await?;
        let (ok, mut ok_mask, mut failed) = (out.took(), out.ok_mask(), out.failed);
        let mut gone_there = false;
        if !self.quorum(ok_mask) {
            for s in lacking {
                match self.behind_in(parent, &ok, s).await {
                    Ok(true) => {
                        ok_mask |= bit(s);
                        failed &= !bit(s);
                    }
                    // Not behind: it removed the name itself while the copies that had it
                    // were away (they are the stale ones). Marking it would have each copy
                    // blame the other (split brain); the removal leaves them all without the
                    // name, and its answer stands: there was no such name.
                    Ok(false) => {
                        failed &= !bit(s);
                        gone_there = true;
                    }
                    Err(e) => tracing::debug!(%parent, child = s, "cannot tell why a copy lacks a name: {e}"),
                }
            }
        }
        if failed != 0 {
            self.mark(parent, &ok, failed).await;
        }
        if !self.quorum(ok_mask) {
            return Err(if gone_there { Errno::ENOENT } else { Errno::EROFS });
        }
        Ok(out.ok)
    }

    /// The entry of a good copy among lookup/getattr answers.
    fn pick(results: Vec<Result<Entry>>) -> Result<Entry> {
        let stale = Self::stale_in(&results);
        let out = Self::outcome(results)?;
        let mut first = None;
        for (i, e) in out.ok {
            if stale & bit(i) == 0 {
                return Ok(e);
            }
            first.get_or_insert(e);
        }
        // Every copy is marked behind by another (split brain): serve the first rather
        // than nothing; healing reports it.
        first.ok_or(Errno::EIO)
    }

    /// The entry a change answered with from a good copy: not from one the answers mark
    /// as behind (its size may be what it missed, or, while it heals, what it has so far).
    fn good_entry(ok: Vec<(usize, Entry)>) -> Result<Entry> {
        let stale = ok.iter().fold(0, |m, (_, e)| m | pending_mask(e));
        let i = ok.iter().position(|(i, _)| stale & bit(*i) == 0).unwrap_or(0);
        ok.into_iter().nth(i).map(|(_, e)| e).ok_or(Errno::EIO)
    }

    fn rh(h: &Handle) -> Result<&ReplicaHandle> {
        match h {
            Handle::Replica(r) => Ok(r),
            _ => Err(Errno::EBADF),
        }
    }

    /// A handle on the copies `handles` opened, `good` those that may serve reads, over the
    /// connections of generations `gens` (taken before the opens were sent).
    fn handle(
        &self,
        id: FileId,
        flags: u32,
        handles: Vec<Option<Handle>>,
        good: u64,
        gens: Vec<u64>,
    ) -> Handle {
        let candidates: Vec<usize> = handles
            .iter()
            .enumerate()
            .filter(|(i, h)| h.is_some() && good & bit(*i) != 0)
            .map(|(i, _)| i)
            .collect();
        let read_child = if candidates.is_empty() {
            handles.iter().position(Option::is_some).unwrap_or(0)
        } else {
            // Spread reads of different files over the good copies.
            candidates[(id.0 % candidates.len() as u128) as usize]
        };
        // Copies the file is not open on will miss its first write too: it carries their
        // markers already.
        let closed: Vec<usize> = (0..handles.len()).filter(|i| handles[*i].is_none()).collect();
        // (A reader writes to no copy: it holds no heal in place up.)
        let reads_only = flags as i32 & libc::O_ACCMODE == libc::O_RDONLY;
        let ticket = self.open.ticket(id, if reads_only { &[] } else { &closed });
        Handle::Replica(Box::new(ReplicaHandle {
            id,
            flags: flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL) as u32,
            tried: Mutex::new(vec![None; handles.len()]),
            handles: handles
                .into_iter()
                .map(|h| h.map_or_else(OnceLock::new, OnceLock::from))
                .collect(),
            marked: AtomicU64::new(0),
            failing: AtomicU64::new(closed.iter().fold(0, |m, i| m | bit(*i))),
            read_child: AtomicU64::new(read_child as u64),
            seen: gens.into_iter().map(AtomicU64::new).collect(),
            skipped: AtomicU64::new(0),
            ticket,
        }))
    }

    /// The copies `rh` has the file open on whose bricks are up.
    fn reachable(&self, rh: &ReplicaHandle) -> u64 {
        rh.handles
            .iter()
            .enumerate()
            .filter(|(i, h)| h.get().is_some() && self.children[*i].is_up())
            .fold(0, |m, (i, _)| m | bit(i))
    }

    /// Runs a data change through the open handles, with the same quorum and marking rules.
    /// Children in `covered` need no marking if they miss it: the change itself marked them
    /// on the children that took it. `ordered`: the caller holds the file's write order.
    async fn mutate_open<'a, T, F, Fut>(
        &'a self,
        rh: &'a ReplicaHandle,
        covered: u64,
        ordered: bool,
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        F: Fn(usize, &'a Child, &'a Handle) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let mut open_up = self.reachable(rh);
        if !self.quorum(open_up) && !ordered {
            // Copies that came back since the last try count before refusing (a change
            // under the file's order tried them as it took it: one opened now would take
            // the change outside the order).
            self.open_where_back(rh, true).await;
            open_up = self.reachable(rh);
        }
        if !self.quorum(open_up) {
            return Err(Errno::EROFS);
        }
        // Nor without a copy that is not behind: copies that each lack something would
        // then each lack what the others have (split brain), as GlusterFS refuses too.
        if open_up & !rh.ticket.behind() == 0 {
            // (Unless the markers say one was healed since.)
            self.recheck(rh, rh.ticket.behind()).await;
            if open_up & !rh.ticket.behind() == 0 {
                tracing::warn!(id = %rh.id, "every reachable copy is behind: change refused");
                return Err(Errno::EROFS);
            }
        }
        // Copies the change did not reach for want of a handle.
        let mut unopened = 0u64;
        let futs: Vec<std::pin::Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>> = rh
            .handles
            .iter()
            .enumerate()
            .map(|(i, h)| match h.get() {
                Some(h) => Box::pin(f(i, &self.children[i], h)) as _,
                None => {
                    unopened |= bit(i);
                    Box::pin(async { Err(Errno::ENOTCONN) }) as _
                }
            })
            .collect();
        let results = join_all(futs).await;
        let lacking = lacking(&results);
        // (For the log of a refusal; nothing to keep when every copy took it.)
        let errors: Vec<Option<Errno>> = match results.iter().any(Result::is_err) {
            true => results.iter().map(|r| r.as_ref().err().copied()).collect(),
            false => Vec::new(),
        };
        let mut out = Self::outcome(results)?;
        if !lacking.is_empty() && !self.quorum(out.ok_mask()) {
            // (A handle whose file is made again there reopens it by id.)
            let (took, f) = (out.took(), &f);
            let retry = |s: usize| async move {
                match rh.handles[s].get() {
                    Some(h) => f(s, &self.children[s], h).await,
                    None => Err(Errno::ENOTCONN),
                }
            };
            let (more, _) = self.retry_where_file_missing(rh.id, &took, &lacking, retry).await;
            // A copy made just now holds only what was written to it since: never read.
            let made = more.iter().fold(0, |m, (s, _)| m | bit(*s));
            rh.marked.fetch_or(made, Ordering::SeqCst);
            out.took_later(more);
        }
        if !ordered && !self.quorum(out.ok_mask()) {
            // A copy went away meanwhile: one that came back but that the handle had not
            // opened (refused a moment ago) counts too, as it would for a write, opened now
            // here or by another change through the handle since this one went out.
            self.open_where_back(rh, true).await;
            let new: Vec<usize> = (0..rh.handles.len())
                .filter(|&i| unopened & out.failed & bit(i) != 0)
                .collect();
            let more = join_all(new.into_iter().filter_map(|i| {
                let (f, h) = (&f, rh.handles[i].get()?);
                Some(async move { (i, f(i, &self.children[i], h).await) })
            }))
            .await;
            out.took_later(
                more.into_iter()
                    .filter_map(|(i, r)| r.ok().map(|v| (i, v)))
                    .collect(),
            );
        }
        // Marked for every change missed, not once per handle: a heal may have cleared
        // the markers since the last one (it clears exactly the counts it read), and a
        // change missed after that would otherwise go unrecorded.
        let unmarked = out.failed & !covered;
        if unmarked != 0 {
            self.mark(rh.id, &out.took(), unmarked).await;
        }
        rh.marked.fetch_or(out.failed, Ordering::SeqCst);
        self.open.missed(rh.id, out.failed);
        rh.failing.store(out.failed, Ordering::SeqCst);
        if !self.quorum(out.ok_mask()) {
            tracing::debug!(id = %rh.id, ?errors, "too few copies took a change: refused");
            return Err(Errno::EROFS);
        }
        Ok(out.ok)
    }

    /// Holds the write order of the file `rh` has open on every copy it is open on (see
    /// `crate::order`) until the guard returned is dropped: two clients' changes of the
    /// same bytes then reach every copy in the same order.
    async fn in_order<'a>(&'a self, rh: &'a ReplicaHandle) -> InOrder<'a> {
        // (At once, whenever last tried, where the change would otherwise be refused: a
        // copy opened after the order was taken would take the change outside it.)
        let short = !self.quorum(self.reachable(rh));
        self.open_where_back(rh, short).await;
        self.ordered(rh.ticket.order().clone(), rh.id, Self::opened(rh))
            .await
    }

    /// The children `rh`'s file is open on.
    fn opened(rh: &ReplicaHandle) -> u64 {
        rh.handles
            .iter()
            .enumerate()
            .filter(|(_, h)| h.get().is_some())
            .fold(0, |m, (i, _)| m | bit(i))
    }

    /// Holds the orders of the directories `dirs` (taken one by one in id order, so that
    /// two clients never each wait for what the other holds) until the guards returned
    /// are dropped: two clients' changes of the same names (two renames onto one name, a
    /// link and an unlink) then reach every copy in the same order, and the copies end
    /// alike. The kernel makes one mount's changes in a directory one at a time already.
    async fn in_dir_order<'a>(&'a self, dirs: &[FileId]) -> DirsInOrder<'a> {
        let mut ids = dirs.to_vec();
        ids.sort();
        ids.dedup();
        let mut held = DirsInOrder {
            _orders: Vec::with_capacity(ids.len()),
            _one: Vec::with_capacity(ids.len()),
        };
        for id in ids {
            let d = self.dir_order(id);
            held._one.push(d.one.clone().lock_owned().await);
            held._orders
                .push(self.ordered(d.order.clone(), id, self.all()).await);
        }
        held
    }

    /// The order of directory `id`'s namespace changes, made on first use.
    fn dir_order(&self, id: FileId) -> Arc<DirOrder> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.len() >= DIR_ORDERS {
            // Those no change uses now are given up (another client may want them anyway).
            dirs.retain(|&d, o| {
                if Arc::strong_count(o) > 1 || Arc::strong_count(&o.order) > 1 {
                    return true;
                }
                let held = o.order.forget();
                if held != 0 {
                    self.gives.spawn(self.children.clone(), d, held, None);
                }
                false
            });
        }
        dirs.entry(id).or_default().clone()
    }

    /// Holds `order` (of the file or directory `id`) on the children in `open` that are up.
    async fn ordered(&self, order: Arc<Order>, id: FileId, open: u64) -> InOrder<'_> {
        let want = (0..self.children.len())
            .filter(|i| open & bit(*i) != 0 && self.children[*i].is_up())
            .fold(0, |m, i| m | bit(i));
        loop {
            let step = {
                let given = order.given().notified();
                tokio::pin!(given);
                given.as_mut().enable();
                let step = order.next(want, |i| self.children[i].generation());
                tracing::trace!(%id, ?step, "order");
                if step == Step::Wait {
                    given.await;
                    continue;
                }
                step
            };
            let (give, take) = match step {
                Step::Take { give, take } => (give, take),
                _ => (0, 0),
            };
            // From here the change counts as running, whatever becomes of this future.
            let mut guard = InOrder {
                r: self,
                order,
                id,
                open,
                taking: step != Step::Run,
            };
            if guard.taking {
                // A give of this file still on its way must not overtake the takes.
                self.gives.settled(id).await;
                give_order(&self.children, id, give).await;
                for i in (0..self.children.len()).filter(|i| take & bit(*i) != 0) {
                    let generation = self.children[i].generation();
                    match self.children[i].order(id, true).await {
                        // (A brick from before write orders has none to take.)
                        Ok(()) | Err(Errno::ENOSYS) => guard.order.took(i, generation),
                        Err(e) => tracing::debug!(child = i, "write order not taken: {e}"),
                    }
                }
                guard.taking = false;
                guard.order.taken();
            }
            return guard;
        }
    }

    /// A brick (child `i`) says another client waits for the write order of `ids`.
    pub fn yield_orders(&self, i: usize, ids: Vec<FileId>) {
        for id in ids {
            tracing::trace!(%id, child = i, "asked to yield");
            let order = self.open.order_of(id).or_else(|| {
                let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
                dirs.get(&id).map(|d| d.order.clone())
            });
            let give = match order.as_ref().map(|o| o.ask()) {
                Some(Some(held)) => held | bit(i),
                // It goes once the changes under way end.
                Some(None) => continue,
                // Not changed here any more: the brick's hold is a leftover.
                None => bit(i),
            };
            self.gives.spawn(self.children.clone(), id, give, order);
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, LockSet> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts this owner's locks on the range of `l` back as they were (`before`) on child
    /// `i`, which granted `l` when the others did not.
    async fn restore(&self, i: usize, id: FileId, l: &Lock, before: &[Lock]) {
        let c = &self.children[i];
        let mut r = c
            .setlk(
                id,
                &Lock {
                    kind: LockKind::Unlock,
                    ..*l
                },
                false,
            )
            .await;
        for old in before {
            if r.is_ok() {
                // It held these until just now: nobody else can have taken them since.
                r = c.setlk(id, old, false).await;
            }
        }
        if let Err(e) = r {
            tracing::warn!(%id, child = i, "cannot put back a lock after a refused request: {e}");
        }
    }

    /// Children ordered good-first for reading `id`.
    async fn good_children(&self, id: FileId) -> Result<Vec<usize>> {
        let results = self.fan(|_, c| c.getattr(id)).await;
        let stale = Self::stale_in(&results);
        self.noticed(stale);
        let out = Self::outcome(results)?;
        let mut order: Vec<usize> = out
            .ok
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| stale & bit(*i) == 0)
            .collect();
        order.extend(out.ok.iter().map(|(i, _)| *i).filter(|i| stale & bit(*i) != 0));
        Ok(order)
    }

    /// Runs a read-only request on good copies in turn until one answers.
    async fn read_from<'a, T, F, Fut>(&'a self, id: FileId, f: F) -> Result<T>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let mut last = Errno::ENOTCONN;
        for i in self.good_children(id).await? {
            match f(&self.children[i]).await {
                Err(e) if e.is_transport() => last = e,
                r => return r,
            }
        }
        Err(last)
    }
}

impl Replicate {
    /// Asks the read child, and on a transport error each other copy in turn that has every
    /// write made through this handle.
    async fn ask_a_copy<'a, T, F>(
        &'a self,
        h: &'a Handle,
        ask: impl Fn(&'a Child, &'a Handle) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let rh = Self::rh(h)?;
        let first = rh.read_child.load(Ordering::Relaxed) as usize;
        let n = rh.handles.len();
        let mut rechecked = false;
        loop {
            // (Also what other handles of the file here saw copies miss.)
            let marked = rh.marked.load(Ordering::Relaxed) | rh.ticket.behind();
            let mut last = Errno::ENOTCONN;
            for k in 0..n {
                let i = (first + k) % n;
                let Some(ch) = rh.handles[i].get() else { continue };
                // (Loaded again: a copy opened late is marked before it is set.)
                let marked = marked | rh.marked.load(Ordering::SeqCst);
                let fresh = (0..n).any(|j| rh.handles[j].get().is_some() && marked & bit(j) == 0);
                if fresh && marked & bit(i) != 0 {
                    continue; // missed changes made here (the read child too)
                }
                if !self.still_good(rh, i).await {
                    continue;
                }
                let misses = self.open.misses(rh.id, i);
                match ask(&self.children[i], ch).await {
                    Err(e) if e.is_transport() => {
                        last = e;
                        if k == 0 {
                            tracing::debug!(child = i, "read child unreachable, trying another copy");
                        }
                    }
                    // The copy was marked behind while it answered: a heal in place here may
                    // have begun emptying it (it marks the copy first), or a change missed it.
                    // Another copy is asked; if none can answer, the answer is not trusted.
                    _ if self.open.misses(rh.id, i) != misses => last = Errno::EIO,
                    r => {
                        if k > 0 {
                            rh.read_child.store(i as u64, Ordering::Relaxed);
                        }
                        return r;
                    }
                }
            }
            // No copy this handle trusts answered: those it avoids may have been healed since
            // (by the healer's own connections, which this record does not hear of).
            if rechecked || !self.recheck(rh, marked).await {
                return Err(last);
            }
            rechecked = true;
        }
    }

    /// Asks the copies' markers about the copies in `avoided` that `rh` avoids, and stops
    /// avoiding those no reachable copy marks behind any more: true if there were any.
    async fn recheck(&self, rh: &ReplicaHandle, avoided: u64) -> bool {
        let avoided = avoided & self.reachable(rh);
        if avoided == 0 {
            return false;
        }
        let n = rh.handles.len();
        // (Read first: a change that misses a copy after the markers were read keeps it.)
        let misses: Vec<u64> = (0..n).map(|i| self.open.misses(rh.id, i)).collect();
        let results = self.fan(|_, c| c.getattr(rh.id)).await;
        let answered = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .fold(0, |m, (i, _)| m | bit(i));
        let stale = Self::stale_in(&results);
        let good = avoided & answered & !stale;
        for i in (0..n).filter(|i| good & bit(*i) != 0) {
            rh.marked.fetch_and(!bit(i), Ordering::SeqCst);
            self.open.healed(rh.id, i, misses[i]);
            tracing::debug!(id = %rh.id, child = i, "a copy avoided is not behind any more");
        }
        good != 0
    }

    /// Opens `rh`'s file on the copies it lacks (their bricks were away when it was opened)
    /// that are reachable again: the handle's changes reach them from then on instead of
    /// marking them behind each time, they count for the changes' quorum again, and the
    /// file can be healed in place while it stays open (`crate::heal`), as GlusterFS
    /// reopens its files on a brick that comes back. Such a copy is read through the
    /// handle only if the markers show it is not behind. A copy being healed by another
    /// client (or by this client's healer, over connections of its own) answers EBUSY
    /// and is tried again a second later, at a change then. Where the change would
    /// otherwise be refused for want of copies (`now_or_never`) and still is once the
    /// others are open, the opens wait for those heals to end instead, as an open for
    /// writing does (together, and each to its end: an open dropped on the way could
    /// stay open on the brick). A heal ends by itself or with its client's connection,
    /// and waits for nothing a change of this client holds: its own heal in place goes
    /// through the connection these opens take, which its guard lets through. (Two
    /// clients each healing in place a copy the other's change waits for would wait for
    /// each other until the bricks break their idle guards.)
    async fn open_where_back(&self, rh: &ReplicaHandle, now_or_never: bool) {
        let now = Instant::now();
        let back: Vec<usize> = {
            let mut tried = rh.tried.lock().unwrap_or_else(|p| p.into_inner());
            (0..rh.handles.len())
                .filter(|&i| rh.handles[i].get().is_none() && self.children[i].is_up())
                .filter(|&i| {
                    let due = now_or_never || tried[i].is_none_or(|t| now.duration_since(t) >= REOPEN_EVERY);
                    if due {
                        tried[i] = Some(now);
                    }
                    due
                })
                .collect()
        };
        let opens = join_all(
            back.iter()
                .map(|&i| async move { (i, self.children[i].open_now(rh.id, rh.flags).await) }),
        )
        .await;
        let mut busy = Vec::new();
        for (i, opened) in opens {
            match opened {
                Err(Errno::EBUSY) if now_or_never => busy.push(i),
                opened => self.took_back(rh, i, opened).await,
            }
        }
        // (Short no more: they are tried again later, like the others.)
        let short = !self.quorum(self.reachable(rh));
        let opens = join_all(busy.iter().map(|&i| async move {
            match short {
                true => (i, self.children[i].open(rh.id, rh.flags).await),
                false => (i, Err(Errno::EBUSY)),
            }
        }))
        .await;
        for (i, opened) in opens {
            self.took_back(rh, i, opened).await;
        }
    }

    /// What `open_where_back` does with its open of `rh`'s file on child `i`.
    async fn took_back(&self, rh: &ReplicaHandle, i: usize, opened: Result<Handle>) {
        match opened {
            Ok(h) => {
                // Behind if it missed this handle's changes (which marked it) or any
                // other's, unless a heal repaired it meanwhile: the markers tell.
                let stale = Self::stale_in(&self.fan(|_, c| c.getattr(rh.id)).await);
                if stale & bit(i) != 0 {
                    rh.marked.fetch_or(bit(i), Ordering::SeqCst);
                    self.open.missed(rh.id, bit(i));
                }
                match rh.handles[i].set(h) {
                    Ok(()) => rh.ticket.opened_on(i),
                    // Opened there meanwhile by another change through the handle.
                    Err(h) => {
                        let _ = self.children[i].release(&h).await;
                    }
                }
                tracing::debug!(id = %rh.id, child = i, "file opened on a copy that came back");
            }
            Err(e) => {
                tracing::debug!(id = %rh.id, child = i, "cannot open the file on a copy that came back: {e}")
            }
        }
    }

    /// Whether the copy on child `i` may still serve reads through `rh`. One reached over a
    /// newer connection than the handle last knew (the brick was away, perhaps restarted,
    /// and the child reopened the file there by itself) may have missed changes meanwhile
    /// that nothing here saw fail (another client's, or one made while this client's link
    /// to it hung): the copies' markers tell, and a copy marked behind is not read through
    /// this handle again.
    async fn still_good(&self, rh: &ReplicaHandle, i: usize) -> bool {
        let now = self.children[i].generation();
        if now == 0 || rh.seen.get(i).is_none_or(|s| s.load(Ordering::SeqCst) == now) {
            return true;
        }
        let stale = Self::stale_in(&self.fan(|_, c| c.getattr(rh.id)).await);
        self.noticed(stale);
        rh.seen[i].store(now, Ordering::SeqCst);
        if stale & bit(i) != 0 {
            rh.marked.fetch_or(bit(i), Ordering::SeqCst);
            return false;
        }
        true
    }
}

#[async_trait]
impl Xlator for Replicate {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry> {
        let results = self.fan(|_, c| c.lookup(parent, name)).await;
        self.noticed(Self::stale_in(&results));
        // Bounded: a directory being healed there holds its entries until its heal ends (which
        // makes the name anyway), and a lookup must not wait that long.
        let making = self.make_where_lacking(parent, name, &results);
        if tokio::time::timeout(MAKE_WAIT, making).await.is_err() {
            tracing::debug!(%parent, "a name a copy lacks is left to the heal");
        }
        Self::pick(results)
    }

    async fn getattr(&self, id: FileId) -> Result<Entry> {
        let results = self.fan(|_, c| c.getattr(id)).await;
        self.noticed(Self::stale_in(&results));
        Self::pick(results)
    }

    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry> {
        let rh = h.map(Self::rh).transpose()?;
        let by_id;
        let ticket = match rh {
            Some(rh) => &rh.ticket,
            None => {
                by_id = self.open.ticket(id, &[]);
                &by_id
            }
        };
        let _gate = ticket.gate().read().await;
        // A size change through an open file is ordered as its writes are.
        let _order = match rh {
            Some(rh) if set.size.is_some() => Some(self.in_order(rh).await),
            _ => None,
        };
        let ok = self
            .mutate(&[id], |i, c| {
                let ch = rh.and_then(|rh| rh.handles.get(i).and_then(OnceLock::get));
                c.setattr(id, ch, set)
            })
            .await?;
        Self::good_entry(ok)
    }

    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        if !self.quorum(self.up_mask()) {
            return Err(Errno::EROFS);
        }
        let _dirs = self.in_dir_order(&[parent]).await;
        // A new file's write order is taken with it, by the same round trip's time: it is
        // granted at once (nobody else knows the file), and its first write needs no more.
        let ordered = open.is_some() && node.kind == proto::FileKind::File;
        let gens = self.generations();
        let (mut results, orders) = futures_util::future::join(
            self.fan(|_, c| c.create(parent, name, node, symlink_target, open)),
            self.fan(|_, c| async move {
                let generation = c.generation();
                match ordered {
                    true => c.order(node.id, true).await.map(|_| generation),
                    false => Err(Errno::ENOSYS),
                }
            }),
        )
        .await;
        let made: Result<(Entry, Option<Handle>, u64)> = async {
            self.retry_where_parent_missing(parent, &mut results, |c| {
                c.create(parent, name, node, symlink_target, open)
            })
            .await;
            // Children that never answered: they may have made the name, or may yet.
            let unknown = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.as_ref().is_err_and(|e| e.is_transport()))
                .fold(0, |m, (i, _)| m | bit(i));
            let out = Self::outcome(results)?;
            if !self.quorum(out.ok_mask()) {
                // A child went away unnoticed until now, and too few copies took the new name:
                // it is taken back, so that nothing is left of a create that was refused.
                let (mut kept, mut taken_back) = (Vec::new(), Vec::new());
                for (i, (_, h)) in out.ok {
                    let c = &self.children[i];
                    if let Some(h) = h {
                        let _ = c.release(&h).await;
                    }
                    let undone = match node.kind {
                        proto::FileKind::Dir => c.rmdir(parent, name).await,
                        _ => c.unlink(parent, name).await,
                    };
                    if let Err(e) = undone {
                        tracing::warn!(
                            child = i,
                            "cannot take back a create refused for want of quorum: {e}"
                        );
                        kept.push(i);
                    } else {
                        taken_back.push(i);
                    }
                }
                // Where it could not be taken back, every other copy now lacks the name.
                if !kept.is_empty() {
                    let lacking = taken_back.iter().fold(out.failed, |m, i| m | bit(*i));
                    self.mark(parent, &kept, lacking).await;
                }
                // What a silent child did with the name is unknown: its copy of the directory
                // is to be checked against the others.
                if unknown != 0 && !taken_back.is_empty() {
                    self.mark(parent, &taken_back, unknown).await;
                }
                return Err(Errno::EROFS);
            }
            if out.failed != 0 {
                self.mark(parent, &out.took(), out.failed).await;
            }
            let ok = out.ok;
            let mut handles: Vec<Option<Handle>> = (0..self.children.len()).map(|_| None).collect();
            let mut entry = None;
            let mut good = 0;
            for (i, (e, h)) in ok {
                handles[i] = h;
                good |= bit(i);
                entry.get_or_insert(e);
            }
            let entry = entry.ok_or(Errno::EIO)?;
            Ok((
                entry,
                open.map(|flags| self.handle(node.id, flags, handles, good, gens.clone())),
                good,
            ))
        }
        .await;
        // Orders taken where the file is not open now are given back.
        let mut stray = orders
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .fold(0, |m, (i, _)| m | bit(i));
        if let Ok((_, Some(Handle::Replica(rh)), good)) = &made {
            for (i, r) in orders.iter().enumerate() {
                if let (Ok(generation), true) = (r, good & bit(i) != 0) {
                    rh.ticket.order().took(i, *generation);
                    stray &= !bit(i);
                }
            }
        }
        if stray != 0 {
            self.gives.spawn(self.children.clone(), node.id, stray, None);
        }
        made.map(|(entry, handle, _)| (entry, handle))
    }

    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()> {
        let _dirs = self.in_dir_order(&[parent]).await;
        self.remove(parent, |_, c| c.unlink(parent, name))
            .await
            .map(|_| ())
    }

    async fn unlink_unless(&self, parent: FileId, name: &[u8], keep: &str) -> Result<Option<Entry>> {
        let _dirs = self.in_dir_order(&[parent]).await;
        // Every copy holds the same entry: kept on one, kept on all.
        let ok = self
            .remove(parent, |_, c| c.unlink_unless(parent, name, keep))
            .await?;
        Ok(ok.into_iter().find_map(|(_, kept)| kept))
    }

    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()> {
        let mut dirs = vec![parent];
        dirs.extend(self.dir_named(parent, name).await);
        let _dirs = self.in_dir_order(&dirs).await;
        self.remove(parent, |_, c| c.rmdir(parent, name))
            .await
            .map(|_| ())
    }

    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        // A directory the rename replaces: its order too, as for an rmdir.
        let mut dirs = vec![parent, new_parent];
        if !self.under_distribute {
            dirs.extend(self.dir_named(new_parent, new_name).await);
        }
        let _dirs = self.in_dir_order(&dirs).await;
        let ids: &[FileId] = if parent == new_parent {
            &[parent]
        } else {
            &[parent, new_parent]
        };
        let (out, lacking) = self
            .attempt(|_, c| c.rename(parent, name, new_parent, new_name, flags))
            .await?;
        let (ok, mut ok_mask) = (out.took(), out.ok_mask());
        if !self.quorum(ok_mask) {
            // As for a removal: a copy that lacks the name because it is behind (being
            // refilled) counts as having taken the rename, and is marked behind on both
            // directories below, for the heal to make the new name there. One that lacks it
            // without being known behind removed it itself while the copies that renamed it
            // were away. They are the stale ones: it marks them behind on the new name's
            // directory (whose heal then takes the new name back there), and its answer
            // stands.
            let mut gone_there = Vec::new();
            for s in lacking {
                match self.behind_in(parent, &ok, s).await {
                    Ok(true) => ok_mask |= bit(s),
                    Ok(false) => gone_there.push(s),
                    Err(e) => tracing::debug!(%parent, child = s, "cannot tell why a copy lacks a name: {e}"),
                }
            }
            if !gone_there.is_empty() {
                self.mark(new_parent, &gone_there, ok_mask).await;
                return Err(Errno::ENOENT);
            }
        }
        if out.failed != 0 {
            for id in ids {
                self.mark(*id, &ok, out.failed).await;
            }
        }
        if !self.quorum(ok_mask) {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        let _dirs = self.in_dir_order(&[new_parent]).await;
        let link = |s: usize| self.children[s].link(id, new_parent, new_name);
        let (mut out, mut lacking) = self.attempt(|s, _| link(s)).await?;
        let mut removed = false;
        if !self.quorum(out.ok_mask()) && !lacking.is_empty() {
            let took = out.took();
            let more;
            (more, removed) = self.retry_where_file_missing(id, &took, &lacking, link).await;
            lacking.retain(|l| more.iter().all(|(s, _)| s != l));
            out.took_later(more);
        }
        let (ok, ok_mask) = (out.took(), out.ok_mask());
        if !self.quorum(ok_mask) && !lacking.is_empty() {
            // Too few copies have the file. Those that lack it, where its record does not
            // tell they are behind, may have removed it while the others were away: marked
            // behind, they would get the file back from the heal under the new name. It is
            // taken back.
            let mut kept = Vec::new();
            for &i in &ok {
                if let Err(e) = self.children[i].unlink(new_parent, new_name).await {
                    tracing::warn!(
                        child = i,
                        "cannot take back a link refused for want of quorum: {e}"
                    );
                    kept.push(i);
                }
            }
            if !kept.is_empty() {
                self.mark(new_parent, &kept, out.failed).await;
            }
            // The file was removed meanwhile: no link, as after the removal.
            return Err(if removed { Errno::ENOENT } else { Errno::EROFS });
        }
        if out.failed != 0 {
            self.mark(new_parent, &ok, out.failed).await;
        }
        if !self.quorum(ok_mask) {
            return Err(Errno::EROFS);
        }
        Self::good_entry(out.ok)
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>> {
        self.read_from(id, |c| c.readlink(id)).await
    }

    async fn dir_parent(&self, id: FileId) -> Result<(FileId, Vec<u8>)> {
        self.read_from(id, |c| c.dir_parent(id)).await
    }

    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        // The cursor names the child the listing started on, so that it stays on one copy.
        let (child, sub) = match cursor.0.split_first() {
            Some((c, rest)) if (*c as usize) < self.children.len() => (*c as usize, DirCursor(rest.to_vec())),
            Some(_) => return Err(Errno::EINVAL),
            None => (
                *self.good_children(id).await?.first().ok_or(Errno::ENOTCONN)?,
                DirCursor::default(),
            ),
        };
        let mut page = self.children[child].readdir(id, &sub, plus).await?;
        page.next = page
            .next
            .map(|n| DirCursor(std::iter::once(child as u64).chain(n.0).collect()));
        Ok(page)
    }

    async fn open(&self, id: FileId, flags: u32) -> Result<Handle> {
        // A truncation is a change like any other.
        let ticket = (flags as i32 & libc::O_TRUNC != 0).then(|| self.open.ticket(id, &[]));
        let _gate = match &ticket {
            Some(t) => Some(t.gate().read().await),
            None => None,
        };
        // For reading, a copy being healed answers at once (EBUSY) instead of holding the
        // open until it is whole (minutes, for a big file): reads never use a copy marked
        // behind, so the file opens on the others when they are a quorum. An open for
        // writing waits: a handle without that copy would mark it with every write, and a
        // file kept open and written (a VM image) would never be healed until closed.
        let reads_only = flags as i32 & (libc::O_ACCMODE | libc::O_TRUNC) == libc::O_RDONLY;
        let gens = self.generations();
        let (mut opens, attrs) = tokio::join!(
            self.fan(|_, c| async move {
                match reads_only {
                    true => c.open_now(id, flags).await,
                    false => c.open(id, flags).await,
                }
            }),
            self.fan(|_, c| c.getattr(id))
        );
        let busy: Vec<usize> = (0..opens.len())
            .filter(|i| matches!(opens[*i], Err(Errno::EBUSY)))
            .collect();
        let answered = (0..opens.len())
            .filter(|i| opens[*i].is_ok())
            .fold(0, |m, i| m | bit(i));
        let mut skipped = 0;
        if !busy.is_empty() && !self.quorum(answered) {
            let again = join_all(busy.iter().map(|&i| self.children[i].open(id, flags))).await;
            for (&i, r) in busy.iter().zip(again) {
                opens[i] = r;
            }
        } else {
            skipped = busy.iter().fold(0, |m, i| m | bit(*i));
        }
        let stale = Self::stale_in(&attrs);
        self.noticed(stale);
        let lacking = lacking(&opens);
        let mut out = Self::outcome(opens)?;
        // Opened for writing where too few copies have the file (a copy being refilled, as
        // for `mutate`; with replica 2 the first copy must take every change): it is made on
        // those that lack it, where the good copies mark them behind, and opened there too.
        let writes = flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
        let mut made = 0;
        if writes && !lacking.is_empty() && !self.quorum(out.ok_mask()) {
            let took = out.took();
            let (more, removed) = self
                .retry_where_file_missing(id, &took, &lacking, |s| self.children[s].open(id, flags))
                .await;
            made = more.iter().fold(0, |m, (s, _)| m | bit(*s));
            out.took_later(more);
            if removed && !self.quorum(out.ok_mask()) {
                // Removed while it was opened: opened after the removal, as it were. (A
                // handle without quorum would only fail every write with EROFS.)
                for (i, h) in &out.ok {
                    let _ = self.children[*i].release(h).await;
                }
                return Err(Errno::ENOENT);
            }
        }
        let mut handles: Vec<Option<Handle>> = (0..self.children.len()).map(|_| None).collect();
        let mut opened = 0;
        for (i, h) in out.ok {
            handles[i] = Some(h);
            opened |= bit(i);
        }
        // A copy marked behind is not kept open for reading when the good ones are a
        // quorum: reads never use it, and a handle there would keep the healer's own
        // connections from repairing it until the file is closed. Open for writing, it is
        // kept: the handle's writes reach it (else each would mark it behind again, and a
        // file written on and on would never be healed), and with every handle here
        // writing to it the file is healed in place (`crate::heal`). It counts for the
        // writes' quorum (a second copy lost meanwhile leaves the file writable), but a
        // change also needs a copy that is not behind (`mutate_open`).
        if reads_only && stale & opened != 0 && self.quorum(opened & !stale) {
            for i in (0..self.children.len()).filter(|i| stale & bit(*i) != 0) {
                if let Some(h) = handles[i].take() {
                    let _ = self.children[i].release(&h).await;
                }
            }
        }
        let h = self.handle(id, flags, handles, self.all() & !stale & !made, gens);
        if let Handle::Replica(rh) = &h {
            // A copy made just now holds nothing written before, a copy marked behind
            // lacks what it missed: neither is read through this handle.
            rh.marked.fetch_or(made | stale, Ordering::SeqCst);
            rh.skipped.store(skipped, Ordering::SeqCst);
            let kept = (0..rh.handles.len())
                .filter(|i| rh.handles[*i].get().is_some())
                .fold(0, |m, i| m | bit(i));
            self.open.missed(id, (made | stale) & kept);
        }
        Ok(h)
    }

    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes> {
        self.ask_a_copy(h, |c, ch| c.read(ch, offset, size)).await
    }

    async fn read_ranges(&self, h: &Handle, ranges: &[(u64, u32)]) -> Result<Vec<Bytes>> {
        self.ask_a_copy(h, |c, ch| c.read_ranges(ch, ranges)).await
    }

    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32> {
        let rh = Self::rh(h)?;
        let _gate = rh.ticket.gate().read().await;
        let before = Self::opened(rh);
        let _order = self.in_order(rh).await;
        // Copies that missed the last change through this handle will likely miss this one
        // too: the write marks them behind itself on every copy that takes it, which saves
        // a round trip per write while a copy is down. (Not those opened just now: they
        // take it.)
        let known = rh.failing.load(Ordering::SeqCst) & !(Self::opened(rh) & !before);
        let ok = self
            .mutate_open(rh, known, true, |i, c, ch| {
                let mark: Vec<(String, i64)> = (0..self.children.len())
                    .filter(|j| *j != i && known & bit(*j) != 0)
                    .map(|j| (pending_key(j), 1))
                    .collect();
                let data = data.clone();
                async move { c.write_marked(ch, offset, data, &mark).await }
            })
            .await?;
        Ok(ok.iter().map(|(_, n)| *n).min().unwrap_or(0))
    }

    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()> {
        let rh = Self::rh(h)?;
        self.mutate_open(rh, rh.skipped.load(Ordering::SeqCst), false, |_, c, ch| {
            c.fsync(ch, datasync)
        })
        .await
        .map(|_| ())
    }

    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()> {
        let rh = Self::rh(h)?;
        let locked = self.held().drop_owner(rh.id, lock_owner);
        // Children that have no handle of the file (they were down at its open) may hold
        // the owner's locks all the same: they are unlocked by request.
        let everything = Lock {
            kind: LockKind::Unlock,
            start: 0,
            end: u64::MAX,
            owner: lock_owner,
            pid: 0,
        };
        let futs = rh.handles.iter().enumerate().filter_map(|(i, ch)| {
            let c = &self.children[i];
            match ch.get() {
                Some(ch) => Some(c.flush(ch, lock_owner)),
                None if locked => Some(c.setlk(rh.id, &everything, false)),
                None => None,
            }
        });
        let results = join_all(futs).await;
        if results.iter().any(Result::is_ok) || results.is_empty() {
            Ok(())
        } else {
            results.into_iter().next().unwrap_or(Ok(()))
        }
    }

    async fn release(&self, h: &Handle) -> Result<Option<Entry>> {
        let rh = Self::rh(h)?;
        // A brick lets the write order go with its connection's last handle on the file.
        rh.ticket.order().forget();
        let futs = rh.handles.iter().enumerate().map(|(i, ch)| async move {
            match ch.get() {
                Some(ch) => self.children[i].release(ch).await,
                None => Ok(None),
            }
        });
        let results = join_all(futs).await;
        // The attributes are only worth anything as getattr would have picked them: from
        // every copy the file was open on. A copy it was not open on (down, or behind,
        // since it opened) counts as one that is down.
        let mut entries = Vec::with_capacity(results.len());
        for (r, ch) in results.into_iter().zip(&rh.handles) {
            match (r, ch.get()) {
                (Ok(Some(e)), Some(_)) => entries.push(Ok(e)),
                (Ok(None), None) => entries.push(Err(Errno::ENOTCONN)),
                _ => return Ok(None),
            }
        }
        Ok(Self::pick(entries).ok())
    }

    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()> {
        let rh = Self::rh(h)?;
        let _gate = rh.ticket.gate().read().await;
        let _order = self.in_order(rh).await;
        self.mutate_open(rh, 0, true, |_, c, ch| c.fallocate(ch, mode, offset, len))
            .await
            .map(|_| ())
    }

    async fn statfs(&self) -> Result<StatFs> {
        let out = Self::outcome(self.fan(|_, c| c.statfs()).await)?;
        // The set can hold only what its smallest copy holds.
        out.ok
            .into_iter()
            .map(|(_, s)| s)
            .min_by_key(|s| s.bavail.saturating_mul(s.frsize as u64))
            .ok_or(Errno::EIO)
    }

    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>> {
        self.read_from(id, |c| c.getxattr(id, name)).await
    }

    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let ticket = self.open.ticket(id, &[]);
        let _gate = ticket.gate().read().await;
        self.mutate(&[id], |_, c| c.setxattr(id, name, value, flags))
            .await
            .map(|_| ())
    }

    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>> {
        self.read_from(id, |c| c.listxattr(id)).await
    }

    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()> {
        let ticket = self.open.ticket(id, &[]);
        let _gate = ticket.gate().read().await;
        self.mutate(&[id], |_, c| c.removexattr(id, name))
            .await
            .map(|_| ())
    }

    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()> {
        Self::outcome(self.fan(|_, c| c.xattr_add(id, deltas)).await).map(|_| ())
    }

    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        let ticket = self.open.ticket(id, &[]);
        let _gate = ticket.gate().read().await;
        self.mutate(&[id], |_, c| c.set_meta(id, meta)).await.map(|_| ())
    }

    /// Any child's conflicting lock counts: one taken by a client that could not reach the
    /// others is still in the way there.
    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock> {
        let results = self.fan(|_, c| c.getlk(id, lock)).await;
        let answers: Vec<Lock> = Self::outcome(results)?.ok.into_iter().map(|(_, l)| l).collect();
        let conflict = answers.iter().find(|l| l.kind != LockKind::Unlock);
        conflict.or(answers.first()).copied().ok_or(Errno::ENOTCONN)
    }

    /// A lock is taken on a quorum of the children, so that two clients that reach
    /// different children cannot both have it (any two quorums share a child). Blocking
    /// requests go child by child in their order, so that two of them cannot each wait for
    /// what the other holds. A request some children refused is taken back from those that
    /// granted it, which get the owner's locks on its range as they were (POSIX leaves them
    /// unchanged when a request fails).
    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()> {
        if lock.kind == LockKind::Unlock {
            let results = self.fan(|_, c| c.setlk(id, lock, false)).await;
            self.held().apply(id, lock);
            return Self::outcome(results).map(|_| ());
        }
        let before: Vec<Lock> = self.held().overlapped(id, lock);
        let mut granted = 0u64;
        let mut refused = None;
        if wait {
            for (i, c) in self.children.iter().enumerate() {
                match c.setlk(id, lock, true).await {
                    Ok(()) => granted |= bit(i),
                    Err(e) if e.is_transport() => {}
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
        } else {
            for (i, r) in self
                .fan(|_, c| c.setlk(id, lock, false))
                .await
                .into_iter()
                .enumerate()
            {
                match r {
                    Ok(()) => granted |= bit(i),
                    Err(e) if e.is_transport() => {}
                    // A conflict anywhere is reported as such.
                    Err(e) => refused = Some(refused.filter(|r| *r == Errno::EAGAIN).unwrap_or(e)),
                }
            }
        }
        if refused.is_none() && self.quorum(granted) {
            self.held().apply(id, lock);
            return Ok(());
        }
        // EINTR: the owner closed the file meanwhile, and its locks are to go, not return.
        let before = if refused == Some(Errno::EINTR) {
            &[][..]
        } else {
            &before[..]
        };
        for i in (0..self.children.len()).filter(|i| granted & bit(*i) != 0) {
            self.restore(i, id, lock, before).await;
        }
        Err(refused.unwrap_or(Errno::ENOLCK))
    }

    fn is_up(&self) -> bool {
        self.quorum(self.up_mask())
    }

    async fn caught_up(&self) -> bool {
        crate::xlator::caught_up_all(&self.children).await
    }

    async fn heal(&self) -> Result<HealReport> {
        Ok(self.heal_pass().await)
    }

    async fn split_brains(&self) -> Result<Vec<FileId>> {
        self.find_split_brains().await
    }

    async fn settle(&self, id: FileId, how: &crate::split_brain::Settle) -> Result<Vec<String>> {
        Ok(self.settle_here(id, how).await?.into_iter().collect())
    }
}
