//! Self-heal for replicate: copies that missed changes are repaired from good ones.
//!
//! Each brick lists the objects that carry pending markers (`ListPending`). A pass takes
//! each of them, finds its good copies (marked behind by no other copy) and its stale ones
//! (marked by some), and for each stale copy that can be reached:
//!
//! 1. takes the stale brick's *guard* on the object: others' changes to that copy wait, and
//!    a file open elsewhere is left for a later pass;
//! 2. *watches* the object on the good copies;
//! 3. copies the good copy onto the stale one: a file's data (holes stay holes), a
//!    directory's entries (missing names made with their ids, extra ones removed, new objects
//!    marked so that the same pass heals them too; a directory the copy has under another
//!    name, moved while it was away, is moved rather than made again: `crate::dirmove`),
//!    then the attributes and xattrs;
//! 4. clears exactly the markers it read after taking the guard, unless a watch saw another
//!    client change a good copy meanwhile: then the markers stay and a later pass redoes it.
//!
//! A directory heal that waits for a moved directory to leave it is redone once at the end
//! of the pass (its last try), after the heal of the directory's new parent.
//!
//! The guard and watches belong to the healer's own brick connections, so that this mount's
//! own requests are held and seen like anyone else's. Copies that each mark another as
//! behind (split brain) are reported and left alone.
//!
//! A file this client has open (a VM image, a database) would never be healed that way:
//! its own handle on the stale copy keeps the guard away. It is healed in place instead,
//! over the client's own connections (a brick lets a guard holder keep its own handles
//! open, and a watch does not count its holder's changes), while the client's changes to
//! the file take its gate shared and the heal takes it for each range it copies (see
//! `crate::openfiles`). Only if every handle of the file here writes to the stale copy:
//! one that does not (opened while the copy was behind) marks it with each write, which
//! the healer's connections watch for.

use crate::conn::BrickConn;
use crate::replicate::{bit, pending_key, pending_mask, Replicate};
use crate::xlator::{Child, DirCursor, Handle, HealReport, Result};
use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use proto::{DirEntry, Entry, Errno, FileId, FileKind, NewNode, SetAttr, TimeSet};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, RwLock};

/// Bytes copied per read while healing a file.
const CHUNK: u32 = 1 << 20;
/// Zeros are left as holes in pieces of this size.
const HOLE_BLOCK: usize = 4096;
/// Objects asked of each brick per listing of its pending index.
pub(crate) const LIST_MAX: u32 = 1024;
/// Objects healed at once, and names made at once in a directory: each heal is a chain of
/// round trips and an fsync, so one at a time leaves the bricks and disks mostly idle.
const PARALLEL: usize = 16;
/// Directories walked up at most to find those a copy lacks (a path has fewer).
pub(crate) const MAX_DEPTH: usize = 4096;
/// How often the background healer looks at the children's states.
const TICK: Duration = Duration::from_secs(1);
/// A pass that left work is retried after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Markers seen by requests start a pass at most this often.
const MIN_GAP: Duration = Duration::from_secs(2);
/// A pass runs at least this often anyway.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A brick connection of the healer's own, beside the one the mount's requests use.
pub struct Healer {
    /// Connected when first needed.
    pub conn: Option<Arc<BrickConn>>,
    /// The connection the client's own requests to this brick use: a new one of it means
    /// the brick may have missed changes.
    pub main: Option<Arc<BrickConn>>,
    pub child: Child,
}

/// What a heal made on a copy, to be healed in turn.
#[derive(Default)]
struct Made {
    dirs: Vec<FileId>,
    other: Vec<FileId>,
    /// The directory still holds one that the heal of its new parent is to move out.
    moving_out: bool,
    /// The last heal of the object in this pass: a directory moved elsewhere that is still
    /// here is removed (and made again where it is now, its contents copied) rather than
    /// waited for, so that every pass makes progress.
    last_try: bool,
}

enum Outcome {
    /// Nothing marked behind (any more).
    Clean,
    Healed,
    /// To be tried again later.
    Left,
    /// The stale copies are unreachable: nothing to do until they are back.
    Waiting,
    SplitBrain,
}

pub(crate) fn counter(e: &Entry, key: &str) -> i64 {
    e.meta(key)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

fn is_marker(name: &str) -> bool {
    name.starts_with("pending.")
}

pub(crate) fn gone(e: Errno) -> bool {
    matches!(e, Errno::ENOENT | Errno::ESTALE)
}

/// Every entry of directory `id` on one brick, with its object.
pub(crate) async fn list_dir(c: &Child, id: FileId) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut cursor = DirCursor::default();
    loop {
        let page = c.readdir(id, &cursor, true).await?;
        out.extend(
            page.entries
                .into_iter()
                .filter(|d| d.name != b"." && d.name != b".." && d.entry.is_some()),
        );
        match page.next {
            Some(n) => cursor = n,
            None => return Ok(out),
        }
    }
}

pub(crate) fn entry_id(d: &DirEntry) -> Option<FileId> {
    d.entry.as_ref().map(|e| e.attr.id)
}

/// A listing's names and the ids they hold.
fn names_of(list: &[DirEntry]) -> HashMap<Vec<u8>, Option<FileId>> {
    list.iter().map(|d| (d.name.clone(), entry_id(d))).collect()
}

/// The connections a name is made over (`Replicate::add_entry`).
#[derive(Clone, Copy)]
pub(crate) enum Via {
    /// This client's own, for its own change.
    Own,
    /// The healer's; `may_move` in a heal of the directory the name is made in, holding
    /// its guard: a directory the copy has elsewhere is moved there (`crate::dirmove`).
    Healer { may_move: bool },
}

impl Replicate {
    pub(crate) fn healer(&self, i: usize) -> &Child {
        &self.healers[i].child
    }

    /// Child `i` as a heal reaches it: over the healer's connections, or, for a file open
    /// here (`gate` is its gate), over this client's own.
    fn via(&self, i: usize, gate: Option<&RwLock<()>>) -> &Child {
        match gate {
            Some(_) => &self.children[i],
            None => self.healer(i),
        }
    }

    /// Connects the healer's own connections, to the bricks that are up or (`all`) to every
    /// brick, all at once (best effort: an unreachable copy simply takes no part).
    pub(crate) async fn connect_healers(&self, all: bool) {
        let up = self.up_mask();
        let conns = (self.healers.iter().enumerate())
            .filter(|(i, _)| all || up & bit(*i) != 0)
            .filter_map(|(_, h)| h.conn.as_ref());
        join_all(conns.map(|c| c.connect())).await;
    }

    /// One pass over everything the children list as pending.
    pub(crate) async fn heal_pass(&self) -> HealReport {
        let _one = self.heal_lock.lock().await;
        // Once, before the heals that use them run side by side.
        self.connect_healers(false).await;
        let mut report = HealReport::default();
        let mut visited = HashSet::new();
        let mut later = VecDeque::new();
        for (i, c) in self.children.iter().enumerate() {
            let mut after = None;
            while c.is_up() {
                let ids = match c.list_pending(after, LIST_MAX).await {
                    Ok(ids) => ids,
                    Err(Errno::ENOSYS) => break,
                    Err(e) => {
                        tracing::debug!(child = i, "cannot list pending heals: {e}");
                        break;
                    }
                };
                let Some(&last) = ids.last() else { break };
                after = Some(last);
                let fresh: VecDeque<FileId> = ids.into_iter().filter(|id| visited.insert(*id)).collect();
                self.heal_trees(fresh, &mut visited, &mut report, Some(&mut later))
                    .await;
            }
        }
        // Directories that held one moved elsewhere, once the rest had their turn (the heal
        // of the new parent moves it): done in this pass, not 5 s later.
        if !later.is_empty() {
            self.heal_trees(later, &mut visited, &mut report, None).await;
        }
        report
    }

    /// Heals `queue`, then what their entry heals made, and so on down, `PARALLEL` at once.
    /// Directories made go first, one always under way when there is one (they heal one at
    /// a time anyway): each makes all its names, so that a copy being refilled has the whole
    /// tree of names early, and takes changes everywhere, while files' data follow.
    async fn heal_trees(
        &self,
        mut queue: VecDeque<FileId>,
        visited: &mut HashSet<FileId>,
        report: &mut HealReport,
        mut later: Option<&mut VecDeque<FileId>>,
    ) {
        let dirs = tokio::sync::Mutex::new(());
        let (dirs, mut running) = (&dirs, FuturesUnordered::new());
        let (mut dir_queue, mut dirs_running) = (VecDeque::new(), 0);
        let last_try = later.is_none();
        loop {
            while running.len() < PARALLEL {
                let next = match dirs_running {
                    0 => dir_queue.pop_front().map(|d| (d, true)),
                    _ => None,
                };
                let next = next
                    .or_else(|| queue.pop_front().map(|id| (id, false)))
                    .or_else(|| dir_queue.pop_front().map(|d| (d, true)));
                let Some((id, is_dir)) = next else { break };
                dirs_running += usize::from(is_dir);
                running.push(async move {
                    let mut made = Made {
                        last_try,
                        ..Made::default()
                    };
                    let r = self.heal_object(id, &mut made, dirs).await;
                    (id, is_dir, r, made)
                });
            }
            let Some((id, is_dir, r, made)) = running.next().await else {
                break;
            };
            dirs_running -= usize::from(is_dir);
            match r {
                Ok(Outcome::Healed) => report.healed += 1,
                Ok(Outcome::Clean | Outcome::Waiting) => {}
                Ok(Outcome::Left) if made.moving_out => match later.as_deref_mut() {
                    Some(l) => l.push_back(id),
                    None => report.left += 1,
                },
                Ok(Outcome::Left) => report.left += 1,
                Ok(Outcome::SplitBrain) => report.split_brain += 1,
                Err(e) => {
                    tracing::debug!(%id, "heal left for later: {e}");
                    report.left += 1;
                }
            }
            // (Also when listed already: that heal may have come before the entry was made.)
            visited.extend(made.dirs.iter().chain(&made.other).copied());
            dir_queue.extend(made.dirs);
            queue.extend(made.other);
        }
    }

    /// Heals one object; `dirs` is held while a directory's copies are repaired: their
    /// entry changes (names removed, made, linked) would race with one another's.
    async fn heal_object(
        &self,
        id: FileId,
        made: &mut Made,
        dirs: &tokio::sync::Mutex<()>,
    ) -> Result<Outcome> {
        let entries = join_all(self.healers.iter().map(|h| h.child.getattr(id))).await;
        let (mut present, mut absent, mut blamed) = (0u64, 0u64, 0u64);
        let mut kind = None;
        for (i, r) in entries.iter().enumerate() {
            match r {
                Ok(e) => {
                    present |= bit(i);
                    blamed |= pending_mask(e);
                    kind.get_or_insert(e.attr.kind);
                }
                Err(e) if gone(*e) => absent |= bit(i),
                Err(_) => {}
            }
        }
        blamed &= self.all();
        if blamed == 0 {
            return Ok(Outcome::Clean);
        }
        let sources: Vec<usize> = (0..self.children.len())
            .filter(|i| present & !blamed & bit(*i) != 0)
            .collect();
        if sources.is_empty() {
            tracing::warn!(%id, "split brain: every copy is marked behind by another; not healed");
            return Ok(Outcome::SplitBrain);
        }
        let sinks = blamed & present;
        if sinks == 0 {
            // Missing copies are made by the entry heal of a directory. A copy that did not
            // answer although its brick is up (this healer's connection to it failed) is
            // tried again soon, not when the brick is next seen coming back.
            return Ok(match blamed & (absent | self.up_mask()) {
                0 => Outcome::Waiting,
                _ => Outcome::Left,
            });
        }
        let _one_dir = match kind {
            Some(FileKind::Dir) => Some(dirs.lock().await),
            _ => None,
        };
        let mut outcome = Outcome::Healed;
        for s in (0..self.children.len()).filter(|s| sinks & bit(*s) != 0) {
            let held = match kind {
                Some(FileKind::File) => self.open.ticket_if_held(id, s),
                _ => None,
            };
            let r = match &held {
                Some((t, true)) => {
                    // The copy is emptied and filled again under this client's handles:
                    // they read elsewhere until it is exact (no other client reads it
                    // meanwhile: the brick lets nobody else open it while guarded).
                    self.open.missed(id, bit(s));
                    self.heal_copy(id, &sources, present, s, made, Some(t.gate()))
                        .await
                }
                // (A handle here that is not open on the stale copy writes to the others
                // alone: the healer's connections heal it unless another is open there.)
                _ => self.heal_copy(id, &sources, present, s, made, None).await,
            };
            match r {
                Ok(true) => {
                    tracing::debug!(%id, child = s, ?kind, "healed");
                }
                Ok(false) => outcome = Outcome::Left,
                Err(e) => {
                    tracing::debug!(%id, child = s, "heal left for later: {e}");
                    outcome = Outcome::Left;
                }
            }
        }
        Ok(outcome)
    }

    /// Repairs child `s`'s copy of `id` from `sources`: true when done and its markers
    /// cleared, false when it is to be tried again later. With `gate`, `id` is a file this
    /// client has open (or is changing), healed in place: through this client's own
    /// connections, so that the bricks let its handles stay open and do not count its
    /// writes as others' changes, and range by range under the file's gate, so that none of
    /// its changes lands between the reading of a range and the writing of its copy.
    async fn heal_copy(
        &self,
        id: FileId,
        sources: &[usize],
        present: u64,
        s: usize,
        made: &mut Made,
        gate: Option<&RwLock<()>>,
    ) -> Result<bool> {
        let sink = self.via(s, gate);
        match sink.heal_begin(id, true).await {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                tracing::debug!(%id, child = s, "copy busy (open there, or healed by another client)");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let mut watching = Vec::new();
        for &i in sources {
            if self.via(i, gate).heal_begin(id, false).await.is_ok() {
                watching.push(i);
            }
        }
        let r = match watching.is_empty() {
            true => Ok(false),
            false => self.copy_and_clear(id, &watching, present, s, made, gate).await,
        };
        if !matches!(r, Ok(true)) {
            // (Ending what already ended changes nothing.)
            for &i in &watching {
                let _ = self.via(i, gate).heal_end(id, false).await;
            }
            if let Err(e) = sink.heal_end(id, true).await {
                tracing::debug!(%id, child = s, "cannot end a heal guard: {e}");
            }
        }
        r
    }

    async fn copy_and_clear(
        &self,
        id: FileId,
        sources: &[usize],
        present: u64,
        s: usize,
        made: &mut Made,
        gate: Option<&RwLock<()>>,
    ) -> Result<bool> {
        // Read after the guard: the markers cleared below are those of what is copied.
        let key = pending_key(s);
        let mut counts = Vec::new();
        let mut good = None;
        for &i in sources {
            let e = self.via(i, gate).getattr(id).await?;
            counts.push((i, counter(&e, &key)));
            good.get_or_insert(e);
        }
        let e = good.ok_or(Errno::EIO)?;
        // Copies that are behind too (the other sinks of this pass) may mark this one
        // behind as well: what they saw it miss, the sources have (else a copy would mark
        // them), so once exact it has it too. Those counts go with the sources' (else the
        // two sinks, each healed, would mark each other for good: a split brain once the
        // source is lost).
        let others =
            (0..self.children.len()).filter(|i| *i != s && present & bit(*i) != 0 && !sources.contains(i));
        for i in others {
            if let Ok(o) = self.via(i, gate).getattr(id).await {
                counts.push((i, counter(&o, &key)));
            }
        }
        // What this client has noted this copy missed, as its markers were read: a later
        // miss keeps it behind for this client's handles (below).
        let misses_then = self.open.misses(id, s);
        let (from, to) = (self.via(sources[0], gate), self.via(s, gate));
        let whole = match e.attr.kind {
            FileKind::File => {
                copy_data(id, from, to, e.attr.size, gate).await?;
                true
            }
            FileKind::Dir => self.copy_entries(id, sources, s, made).await?,
            _ => true,
        };
        if !whole {
            return Ok(false);
        }
        match gate {
            Some(gate) => {
                // What this client changed meanwhile reached both copies; the attributes
                // are read again under the gate, so that none of its changes is undone.
                let _copying = gate.write().await;
                let e = from.getattr(id).await?;
                copy_meta(id, &e, from, to).await?;
            }
            None => copy_meta(id, &e, from, to).await?,
        }
        let mut changed = false;
        for &i in sources {
            changed |= self.via(i, gate).heal_end(id, false).await.unwrap_or(true);
        }
        if changed {
            tracing::debug!(%id, child = s, "changed by another client while healed: left for later");
            return Ok(false);
        }
        // Taken off while the guard is still held: another healer of this copy reads the
        // markers only once it holds the guard, so it cannot count these too and take them
        // off a second time (which would cancel the marker of a change missed later).
        self.add_counts(id, &key, &counts, -1, gate).await?;
        // The copy is exact now; from here on changes reach it again (and any it misses
        // are marked anew, on top of the counts read above).
        if to.heal_end(id, true).await.unwrap_or(true) {
            // The guard was broken (this heal stalled) or lost with its connection: the
            // copy cannot be vouched for after all, and the markers go back.
            if let Err(e) = self.add_counts(id, &key, &counts, 1, gate).await {
                tracing::error!(%id, child = s, "cannot put back the markers of a heal that cannot be vouched for: {e}");
                return Err(e);
            }
            tracing::debug!(%id, child = s, "heal guard lost: markers put back");
            return Ok(false);
        }
        // This client's handles need not avoid the copy any more, unless a change here
        // missed it since its markers were read.
        if let Some(gate) = gate {
            let _quiet = gate.write().await;
            self.open.healed(id, s, misses_then);
        }
        Ok(true)
    }

    /// Adds `sign` times each count read, `(child, n)`, to that child's marker `key` on `id`.
    pub(crate) async fn add_counts(
        &self,
        id: FileId,
        key: &str,
        counts: &[(usize, i64)],
        sign: i64,
        gate: Option<&RwLock<()>>,
    ) -> Result<()> {
        for &(i, n) in counts.iter().filter(|(_, n)| *n != 0) {
            self.via(i, gate)
                .xattr_add(id, &[(key.to_string(), sign * n)])
                .await?;
        }
        Ok(())
    }

    /// A directory's entries: names the good copies lack go, missing ones are made (with
    /// the same ids) and marked, so that their contents follow, and a directory the good
    /// copies moved elsewhere is moved (`crate::dirmove`). False when the copy is not yet
    /// as the good one lists it (a directory waits to be moved out by the heal of its new
    /// parent): the directory is healed again, at the end of the pass.
    async fn copy_entries(&self, dir: FileId, sources: &[usize], s: usize, made: &mut Made) -> Result<bool> {
        let want = list_dir(self.healer(sources[0]), dir).await?;
        let wanted = names_of(&want);
        // A second round when the first left something: a name freed by a move in the first
        // lets the next move through (a rotation: a/cur to a/old, then a/new to a/cur).
        let mut result = Ok(false);
        for round in 0..2 {
            let have = list_dir(self.healer(s), dir).await?;
            let last = made.last_try && round == 1;
            let waiting = self.drop_extra(dir, &have, &wanted, sources, s, last).await?;
            let added = self
                .add_missing(dir, &want, &names_of(&have), sources, s, made)
                .await;
            let still = self.still_here(dir, s, &waiting).await?;
            result = match added {
                Err(e) => Err(e),
                Ok(()) if still => Ok(false),
                // Moves run beside the names made: the copy is vouched for only as listed.
                Ok(()) => Ok(names_of(&list_dir(self.healer(s), dir).await?) == wanted),
            };
            if matches!(result, Ok(true)) {
                break;
            }
            if round == 1 {
                made.moving_out |= still;
            }
        }
        result
    }

    /// Removes from child `s` the names in `dir` that the good copies lack, but for the
    /// directories they have elsewhere (moved while the copy was away): those are left for
    /// the heal of their new parent to move, and returned. On the pass's `last` try, this
    /// heal moves them itself, and removes one only if it can never be moved.
    async fn drop_extra(
        &self,
        dir: FileId,
        have: &[DirEntry],
        wanted: &HashMap<Vec<u8>, Option<FileId>>,
        sources: &[usize],
        s: usize,
        last: bool,
    ) -> Result<Vec<(Vec<u8>, FileId)>> {
        let mut waiting = Vec::new();
        for d in have {
            if wanted.get(&d.name) == Some(&entry_id(d)) {
                continue;
            }
            if let Some(id) = self.moved_dir(d, sources[0]).await? {
                match last {
                    false => {
                        waiting.push((d.name.clone(), id));
                        continue;
                    }
                    true => match self.move_out(id, dir, &d.name, sources, s).await {
                        Ok(()) => continue,
                        Err(e) if crate::dirmove::cannot_move(e) => {}
                        Err(e) => {
                            tracing::debug!(%id, child = s, "a moved directory waits for a later pass: {e}");
                            waiting.push((d.name.clone(), id));
                            continue;
                        }
                    },
                }
            }
            self.remove_tree(s, dir, &d.name, d.kind, entry_id(d)).await?;
        }
        Ok(waiting)
    }

    /// The id of `d` if it is a directory that the good copy `src` has (elsewhere).
    async fn moved_dir(&self, d: &DirEntry, src: usize) -> Result<Option<FileId>> {
        let (FileKind::Dir, Some(id)) = (d.kind, entry_id(d)) else {
            return Ok(None);
        };
        match self.healer(src).getattr(id).await {
            Ok(e) if e.attr.kind == FileKind::Dir => Ok(Some(id)),
            Ok(_) => Ok(None),
            Err(e) if gone(e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes on child `s` the names in `dir` it lacks (`had` is what it has), `PARALLEL`
    /// at once; the names of one object (hard links) one after the other, so that the
    /// first makes it and the others link to it. The first error, once all were tried.
    async fn add_missing(
        &self,
        dir: FileId,
        want: &[DirEntry],
        had: &HashMap<Vec<u8>, Option<FileId>>,
        sources: &[usize],
        s: usize,
        made: &mut Made,
    ) -> Result<()> {
        let mut missing: HashMap<FileId, Vec<(&[u8], &Entry)>> = HashMap::new();
        for d in want {
            if had.get(&d.name) == Some(&entry_id(d)) {
                continue;
            }
            let Some(e) = &d.entry else { continue };
            missing.entry(e.attr.id).or_default().push((d.name.as_slice(), e));
        }
        let (mut groups, mut adding) = (missing.into_iter(), FuturesUnordered::new());
        let mut first_error = None;
        loop {
            while adding.len() < PARALLEL {
                let Some((id, names)) = groups.next() else { break };
                adding.push(self.add_names(dir, id, names, sources, s));
            }
            match adding.next().await {
                None => break,
                Some(Ok((id, true))) => made.dirs.push(id),
                Some(Ok((id, false))) => made.other.push(id),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether child `s` still has in `dir` one of the directories `waiting` to move out.
    /// (One may also be why a name failed: a new object took its old name.)
    async fn still_here(&self, dir: FileId, s: usize, waiting: &[(Vec<u8>, FileId)]) -> Result<bool> {
        for (name, id) in waiting {
            match self.healer(s).lookup(dir, name).await {
                Ok(e) if e.attr.id == *id => return Ok(true),
                Ok(_) => {}
                Err(e) if gone(e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Makes the names of one object on child `s`; the object's id, and whether it is a
    /// directory, once done.
    async fn add_names(
        &self,
        dir: FileId,
        id: FileId,
        names: Vec<(&[u8], &Entry)>,
        sources: &[usize],
        s: usize,
    ) -> Result<(FileId, bool)> {
        let is_dir = names.first().is_some_and(|(_, e)| e.attr.kind == FileKind::Dir);
        for (name, e) in names {
            self.add_entry(dir, name, e, sources, s, Via::Healer { may_move: true })
                .await?;
        }
        Ok((id, is_dir))
    }

    /// Makes `name` in `dir` on child `s`, as `e` on the good copies `sources`, over the
    /// connections `over`.
    pub(crate) async fn add_entry(
        &self,
        dir: FileId,
        name: &[u8],
        e: &Entry,
        sources: &[usize],
        s: usize,
        over: Via,
    ) -> Result<()> {
        let via = |i: usize| match over {
            Via::Own => &self.children[i],
            Via::Healer { .. } => self.healer(i),
        };
        let to = via(s);
        let id = e.attr.id;
        let node = NewNode {
            id,
            kind: e.attr.kind,
            perm: e.attr.perm,
            uid: e.attr.uid,
            gid: e.attr.gid,
            rdev: e.attr.rdev,
            meta: e.meta.iter().filter(|m| !is_marker(&m.name)).cloned().collect(),
        };
        // What is made lacks its data, entries or times: marked first, so that no client
        // reads the new copy before it is whole, and so that this pass heals it next.
        let mark = [(pending_key(s), 1)];
        for r in join_all(sources.iter().map(|&i| via(i).xattr_add(id, &mark))).await {
            r?;
        }
        let r = match e.attr.kind {
            // Another name of it is there already (a hard link).
            FileKind::File if to.getattr(id).await.is_ok() => to.link(id, dir, name).await.map(|_| ()),
            FileKind::Symlink => {
                let target = via(sources[0]).readlink(id).await?;
                to.create(dir, name, &node, Some(&target), None).await.map(|_| ())
            }
            // Still under its old name on this copy (moved while the copy was away): moved
            // here with all it holds, which then needs no copying.
            FileKind::Dir if matches!(over, Via::Healer { may_move: true }) => {
                let one = self.moves.lock().await;
                match to.dir_parent(id).await {
                    Ok((parent, old)) if (parent, old.as_slice()) != (dir, name) => {
                        let (from, at) = ((parent, old.as_slice()), (dir, name));
                        self.move_dir(via(sources[0]), to, id, from, at, dir).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) if gone(e) => {
                        drop(one);
                        to.create(dir, name, &node, None, None).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                }
            }
            _ => to.create(dir, name, &node, None, None).await.map(|_| ()),
        };
        match r {
            Ok(()) => {}
            // Made meanwhile (another healer): fine if it is this object.
            Err(Errno::EEXIST) if to.lookup(dir, name).await.is_ok_and(|e| e.attr.id == id) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Makes on child `s` the directories from `dir` up that it lacks, as the good copies
    /// `sources` have them: what a change inside `dir` needs there when a copy is being
    /// refilled (a replaced disk) and the heal has not reached `dir` yet. Names are made only
    /// in a directory whose good copies mark `s` as behind: a copy that lacks a directory
    /// because it removed it while they were away must not get it back. Each directory made
    /// is marked, so that the heal fills it in.
    pub(crate) async fn make_dirs_above(&self, dir: FileId, sources: &[usize], s: usize) -> Result<()> {
        let good = &self.children[sources[0]];
        for (parent, name, id) in self.missing_dirs(dir, sources, s).await?.into_iter().rev() {
            if pending_mask(&good.getattr(parent).await?) & bit(s) == 0 {
                return Err(Errno::EROFS);
            }
            let e = good.lookup(parent, &name).await?;
            if e.attr.id != id {
                return Err(Errno::ESTALE); // renamed meanwhile
            }
            self.add_entry(parent, &name, &e, sources, s, Via::Own).await?;
            self.wake_healer();
        }
        Ok(())
    }

    /// Makes `name` in `parent` (the object `e` of the good copies `sources`) on child `s`,
    /// with the directories above that it lacks, where the good copies mark `s` as behind
    /// in `parent` (a copy that lacks the name because it removed it must not get it back):
    /// true when made.
    pub(crate) async fn make_name(
        &self,
        parent: FileId,
        name: &[u8],
        e: &Entry,
        sources: &[usize],
        s: usize,
    ) -> Result<bool> {
        if !self.behind_in(parent, sources, s).await? {
            return Ok(false);
        }
        self.make_dirs_above(parent, sources, s).await?;
        self.add_entry(parent, name, e, sources, s, Via::Own).await?;
        // What was made is marked for its contents: a pass that went by it already would
        // otherwise leave it for the next sweep.
        self.wake_healer();
        Ok(true)
    }

    /// Makes the regular file `id` on child `s`, as `make_name`, where the good copies
    /// `sources` record it (`DirParent`): true when made.
    pub(crate) async fn make_file(&self, id: FileId, sources: &[usize], s: usize) -> Result<bool> {
        let good = &self.children[sources[0]];
        let (parent, name) = good.dir_parent(id).await?;
        let e = good.lookup(parent, &name).await?;
        if e.attr.id != id {
            return Err(Errno::ESTALE); // renamed meanwhile
        }
        self.make_name(parent, &name, &e, sources, s).await
    }

    /// The directories from `dir` up that child `s` lacks, nearest first, each with its
    /// parent and name as the good copy `sources[0]` has them.
    async fn missing_dirs(
        &self,
        dir: FileId,
        sources: &[usize],
        s: usize,
    ) -> Result<Vec<(FileId, Vec<u8>, FileId)>> {
        let (good, to) = (&self.children[sources[0]], &self.children[s]);
        let mut missing = Vec::new();
        let mut at = dir;
        while at != FileId::ROOT {
            match to.getattr(at).await {
                Ok(_) => break,
                Err(e) if gone(e) => {}
                Err(e) => return Err(e),
            }
            if missing.len() >= MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let (parent, name) = good.dir_parent(at).await?;
            missing.push((parent, name, at));
            at = parent;
        }
        Ok(missing)
    }

    /// Whether child `s` lacks what it lacks in directory `dir` because it is behind: the
    /// good copies `sources` mark it so on `dir`, or, where it lacks `dir` itself, on the
    /// nearest directory above that it has.
    pub(crate) async fn behind_in(&self, dir: FileId, sources: &[usize], s: usize) -> Result<bool> {
        let missing = self.missing_dirs(dir, sources, s).await?;
        let anchor = missing.last().map_or(dir, |(parent, _, _)| *parent);
        let (good, mine) = tokio::join!(
            self.children[sources[0]].getattr(anchor),
            self.children[s].getattr(anchor)
        );
        // Not where `s` blames them in turn (split brain: for an administrator to settle).
        let blamed_by_s = pending_mask(&mine?) & sources.iter().fold(0, |m, i| m | bit(*i));
        Ok(pending_mask(&good?) & bit(s) != 0 && blamed_by_s == 0)
    }

    /// Removes a name (and, for a directory, everything under it) from child `s` alone.
    fn remove_tree<'a>(
        &'a self,
        s: usize,
        parent: FileId,
        name: &'a [u8],
        kind: FileKind,
        id: Option<FileId>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let c = self.healer(s);
            let r = if kind == FileKind::Dir {
                if let Some(id) = id {
                    for d in list_dir(c, id).await? {
                        self.remove_tree(s, id, &d.name, d.kind, entry_id(&d)).await?;
                    }
                }
                c.rmdir(parent, name).await
            } else {
                c.unlink(parent, name).await
            };
            match r {
                Err(e) if gone(e) => Ok(()),
                r => r,
            }
        })
    }
}

/// A file's bytes, `from` one copy `to` another; runs of zeros stay holes. With `gate` (a
/// file open here, see `Replicate::heal_copy`), each range is read and written under it.
async fn copy_data(id: FileId, from: &Child, to: &Child, size: u64, gate: Option<&RwLock<()>>) -> Result<()> {
    let hs = from.open(id, libc::O_RDONLY as u32).await?;
    let hk = match to.open(id, libc::O_RDWR as u32).await {
        Ok(h) => h,
        Err(e) => {
            let _ = from.release(&hs).await;
            return Err(e);
        }
    };
    let r = copy_bytes(id, (from, &hs), (to, &hk), size, gate).await;
    let _ = from.release(&hs).await;
    let _ = to.release(&hk).await;
    r
}

async fn copy_bytes(
    id: FileId,
    (from, hs): (&Child, &Handle),
    (to, hk): (&Child, &Handle),
    size: u64,
    gate: Option<&RwLock<()>>,
) -> Result<()> {
    let copying = match gate {
        Some(g) => Some(g.write().await),
        None => None,
    };
    // The size the good copy has now (this client may have changed it since it was read).
    let size = match copying {
        Some(_) => from.getattr(id).await?.attr.size,
        None => size,
    };
    // Emptied first, so that what the good copy has as holes is a hole here too.
    for len in [0, size] {
        let set = SetAttr {
            size: Some(len),
            ..SetAttr::default()
        };
        to.setattr(id, Some(hk), &set).await?;
    }
    drop(copying);
    // Past `size`, whatever this client writes from now on reaches both copies.
    let mut off = 0;
    while off < size {
        let _copying = match gate {
            Some(g) => Some(g.write().await),
            None => None,
        };
        let data = from.read(hs, off, CHUNK).await?;
        if data.is_empty() {
            break;
        }
        for (start, end) in nonzero_runs(&data) {
            write_all(to, hk, off + start as u64, data.slice(start..end)).await?;
        }
        off += data.len() as u64;
    }
    // On disk before the markers that send readers elsewhere are cleared.
    to.fsync(hk, false).await
}

/// Attributes, xattrs and translator metadata (not the markers), `from` one copy `to`
/// another.
pub(crate) async fn copy_meta(id: FileId, e: &Entry, from: &Child, to: &Child) -> Result<()> {
    let a = &e.attr;
    let symlink = a.kind == FileKind::Symlink;
    let owner = SetAttr {
        uid: Some(a.uid),
        gid: Some(a.gid),
        ..SetAttr::default()
    };
    // The mode after the owner: a chown may clear set-id bits.
    let rest = SetAttr {
        perm: (!symlink).then_some(a.perm),
        atime: Some(TimeSet::At(a.atime)),
        mtime: Some(TimeSet::At(a.mtime)),
        ..SetAttr::default()
    };
    to.setattr(id, None, &owner).await?;
    to.setattr(id, None, &rest).await?;
    let want = from.listxattr(id).await?;
    let have = to.listxattr(id).await?;
    for n in &want {
        let v = from.getxattr(id, n).await?;
        to.setxattr(id, n, &v, 0).await?;
    }
    for n in have.iter().filter(|n| !want.contains(n)) {
        match to.removexattr(id, n).await {
            Ok(()) | Err(Errno::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    let sink = to.getattr(id).await?;
    let mut meta: Vec<(String, Option<Vec<u8>>)> = e
        .meta
        .iter()
        .filter(|m| !is_marker(&m.name) && sink.meta(&m.name) != Some(m.value.as_slice()))
        .map(|m| (m.name.clone(), Some(m.value.clone())))
        .collect();
    for m in sink.meta.iter().filter(|m| !is_marker(&m.name)) {
        if e.meta(&m.name).is_none() {
            meta.push((m.name.clone(), None));
        }
    }
    if !meta.is_empty() {
        to.set_meta(id, &meta).await?;
    }
    Ok(())
}

/// The runs of `data` (in blocks of `HOLE_BLOCK`) that hold anything but zeros.
fn nonzero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (k, block) in data.chunks(HOLE_BLOCK).enumerate() {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        let (start, end) = (k * HOLE_BLOCK, k * HOLE_BLOCK + block.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

async fn write_all(c: &Child, h: &Handle, mut off: u64, mut data: Bytes) -> Result<()> {
    while !data.is_empty() {
        let n = c.write(h, off, data.clone()).await? as usize;
        if n == 0 {
            return Err(Errno::EIO);
        }
        off += n as u64;
        data = data.slice(n.min(data.len())..);
    }
    Ok(())
}

/// Heals in the background: when a child comes back (or was reconnected, however briefly
/// it was gone), when requests meet markers, after a pass that left work, and every
/// `SWEEP_EVERY` anyway. Ends with the translator.
pub(crate) async fn keep_healing(me: Weak<Replicate>, wake: Arc<Notify>) {
    let mut last_up = 0u64;
    let mut last_gens: Vec<u64> = Vec::new();
    let mut last_pass: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut woken = false;
    loop {
        tokio::select! {
            _ = wake.notified() => woken = true,
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(r) = me.upgrade() else { return };
        let up = r.up_mask();
        let gens: Vec<u64> = r
            .healers
            .iter()
            .map(|h| h.main.as_ref().map_or(0, |c| c.generation()))
            .collect();
        let came_back = up & !last_up != 0 || (!last_gens.is_empty() && gens != last_gens);
        last_up = up;
        last_gens = gens;
        let now = Instant::now();
        let since = last_pass.map(|t| now.duration_since(t));
        let due = came_back
            || (woken && since.is_none_or(|d| d >= MIN_GAP))
            || retry_at.is_some_and(|t| now >= t)
            || since.is_none_or(|d| d >= SWEEP_EVERY);
        if !due || up.count_ones() < 2 {
            continue;
        }
        woken = false;
        let report = r.heal_pass().await;
        drop(r);
        last_pass = Some(Instant::now());
        retry_at = (report.left > 0).then(|| Instant::now() + RETRY_AFTER);
        if report != HealReport::default() {
            tracing::info!(
                healed = report.healed,
                left = report.left,
                split_brain = report.split_brain,
                "self-heal pass"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blocks_with_data_are_written() {
        let mut d = vec![0u8; 5 * HOLE_BLOCK + 100];
        d[10] = 1;
        d[HOLE_BLOCK + 5] = 1;
        d[3 * HOLE_BLOCK] = 1;
        d[5 * HOLE_BLOCK + 99] = 1;
        assert_eq!(
            nonzero_runs(&d),
            [
                (0, 2 * HOLE_BLOCK),
                (3 * HOLE_BLOCK, 4 * HOLE_BLOCK),
                (5 * HOLE_BLOCK, 5 * HOLE_BLOCK + 100)
            ]
        );
        assert!(nonzero_runs(&[0u8; 3 * HOLE_BLOCK]).is_empty());
        assert!(nonzero_runs(&[]).is_empty());
    }
}
