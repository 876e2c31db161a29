//! Distribution: each file lives wholly on one child, chosen by a stable hash of its parent
//! id and name; directories exist on every child.
//!
//! Renaming or hard-linking never moves data. When a name hashes to a child other than the
//! one holding the data, that child gets a pointer: an empty file with mode `---------T`
//! and a `linkto` xattr naming the data's child, carrying the file's id. Lookups start at
//! the hashed child and follow a pointer when they meet one.

use crate::dirattrs::behind;
use crate::namelock::{self, Layer};
use crate::xlator::{Child, DirCursor, DirPage, Handle, HealReport, Result, Xlator};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use proto::{Entry, Errno, FileId, FileKind, Lock, MetaXattr, NewNode, RenameFlags, SetAttr, StatFs};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Internal xattr naming the child that holds a pointer's data.
pub const LINKTO: &str = "linkto";
/// Mode of a pointer entry: sticky bit only.
const POINTER_PERM: u32 = 0o1000;
/// Ids whose data child is remembered.
const CACHE_MAX: usize = 256 * 1024;
/// How long a lookup leaves alone a directory it could not make again on a child.
pub(crate) const HEAL_RETRY: Duration = Duration::from_secs(10);

pub struct Distribute {
    pub(crate) children: Vec<Child>,
    /// Which child holds each known file's data, so id-based calls go straight there.
    home: Mutex<HashMap<FileId, usize>>,
    /// When a lookup last failed to make a directory again on a child (see `whole_dir`).
    pub(crate) heal_failed: Mutex<HashMap<(FileId, usize), Instant>>,
}

/// A directory made again as `e` was (same id, owner and mode).
pub(crate) fn dir_node(e: &Entry) -> NewNode {
    NewNode {
        id: e.attr.id,
        kind: FileKind::Dir,
        perm: e.attr.perm,
        uid: e.attr.uid,
        gid: e.attr.gid,
        rdev: 0,
        meta: Vec::new(),
    }
}

/// The child a pointer entry points at, if this entry is a pointer.
pub fn pointer_target(e: &Entry) -> Option<usize> {
    if e.attr.kind != FileKind::File || e.attr.perm != POINTER_PERM {
        return None;
    }
    let v = e.meta(LINKTO)?;
    Some(u32::from_be_bytes(v.try_into().ok()?) as usize)
}

impl Distribute {
    pub fn new(children: Vec<Child>) -> Distribute {
        assert!(!children.is_empty());
        Distribute {
            children,
            home: Mutex::new(HashMap::new()),
            heal_failed: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn hashed(&self, parent: FileId, name: &[u8]) -> usize {
        layout::pick(layout::hash_name(parent, name), self.children.len())
    }

    fn remember(&self, id: FileId, child: usize) {
        let mut home = self.home.lock().unwrap_or_else(|p| p.into_inner());
        if home.len() >= CACHE_MAX {
            home.clear();
        }
        home.insert(id, child);
    }

    fn forget(&self, id: FileId) {
        self.home.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    fn cached(&self, id: FileId) -> Option<usize> {
        self.home
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// A directory's entry as the volume sees it: its entries are spread over the children,
    /// so its times are the latest of any child's. A child found lacking it gets it again
    /// (see `crate::dirheal`). Where its home counts attribute changes that others missed,
    /// the home's mode and owner are the directory's, and the others get them
    /// (`crate::dirattrs`).
    async fn whole_dir(&self, from: usize, mut e: Entry) -> Entry {
        let id = e.attr.id;
        let others: Vec<usize> = (0..self.children.len()).filter(|i| *i != from).collect();
        let results = join_all(others.iter().map(|&i| self.children[i].getattr(id))).await;
        let mut counted = behind(&e);
        let own = (e.attr.atime, e.attr.mtime, e.attr.ctime);
        for (&i, r) in others.iter().zip(&results) {
            match r {
                Ok(o) => {
                    e.attr.mtime = e.attr.mtime.max(o.attr.mtime);
                    e.attr.ctime = e.attr.ctime.max(o.attr.ctime);
                    e.attr.atime = e.attr.atime.max(o.attr.atime);
                    counted |= behind(o);
                }
                Err(Errno::ENOENT | Errno::ESTALE) => self.heal_on_lookup(id, i).await,
                Err(_) => {}
            }
        }
        if counted {
            let mut first = e.clone();
            (first.attr.atime, first.attr.mtime, first.attr.ctime) = own;
            let copies: Vec<(usize, Entry)> = std::iter::once((from, first))
                .chain(
                    others
                        .iter()
                        .zip(results)
                        .filter_map(|(&i, r)| Some((i, r.ok()?))),
                )
                .collect();
            if let Some(h) = self.home_attrs(id, from, &copies).await {
                (e.attr.perm, e.attr.uid, e.attr.gid) = (h.perm, h.uid, h.gid);
                if let Some((atime, mtime)) = h.times {
                    (e.attr.atime, e.attr.mtime) = (atime, mtime);
                }
            }
        }
        e
    }

    /// Makes directory `id` again on child `i`, which lacks it: not again for a while
    /// after that failed, so that a directory that cannot be healed (another object
    /// under its name there) does not slow every lookup of it.
    async fn heal_on_lookup(&self, id: FileId, i: usize) {
        let lock = || self.heal_failed.lock().unwrap_or_else(|p| p.into_inner());
        if lock().get(&(id, i)).is_some_and(|t| t.elapsed() < HEAL_RETRY) {
            return;
        }
        if let Err(e) = self.heal_dir(id, i).await {
            tracing::debug!(child = i, %id, "directory heal: {e}");
            let mut failed = lock();
            if failed.len() >= CACHE_MAX {
                failed.clear();
            }
            failed.insert((id, i), Instant::now());
        }
    }

    /// Where the data of `id` lives (any child for a directory), and its entry there.
    async fn locate(&self, id: FileId) -> Result<(usize, Entry)> {
        let (c, e) = self.locate_one(id).await?;
        if e.attr.kind == FileKind::Dir && self.children.len() > 1 {
            return Ok((c, self.whole_dir(c, e).await));
        }
        Ok((c, e))
    }

    /// Runs `f` on the child holding `id`: straight on the child it was last found on (one
    /// round trip, not a getattr first), or where a search finds it when that is unknown or
    /// no longer right. For requests that change nothing and need no entry.
    async fn on_home<'a, T, F, Fut>(&'a self, id: FileId, f: F) -> Result<T>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        if let Some(c) = self.cached(id) {
            match f(&self.children[c]).await {
                Err(Errno::ENOENT | Errno::ESTALE) => self.forget(id),
                r => return r,
            }
        }
        let (c, _) = self.locate_one(id).await?;
        f(&self.children[c]).await
    }

    async fn locate_one(&self, id: FileId) -> Result<(usize, Entry)> {
        if id == FileId::ROOT {
            // On every child: the first that answers.
            let mut err = Errno::ENOTCONN;
            for (i, c) in self.children.iter().enumerate() {
                match c.getattr(id).await {
                    Ok(e) => return Ok((i, e)),
                    Err(e) if e.is_transport() => err = e,
                    Err(e) => return Err(e),
                }
            }
            return Err(err);
        }
        let mut down = None;
        if let Some(c) = self.cached(id) {
            match self.children[c].getattr(id).await {
                Ok(e) if pointer_target(&e).is_none() => return Ok((c, e)),
                Ok(_) | Err(Errno::ENOENT | Errno::ESTALE) => self.forget(id),
                // A directory is on the others too (a file's answer is this same error).
                Err(e) if e.is_transport() => down = Some((c, e)),
                Err(e) => return Err(e),
            }
        }
        let results = join_all(self.children.iter().enumerate().map(|(i, c)| async move {
            match down {
                Some((d, e)) if d == i => Err(e),
                _ => c.getattr(id).await,
            }
        }))
        .await;
        let mut err = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(e) if pointer_target(&e).is_none() => {
                    self.remember(id, i);
                    return Ok((i, e));
                }
                Ok(_) => {}
                Err(e) => {
                    if !matches!(e, Errno::ENOENT | Errno::ESTALE) || err.is_none() {
                        err = Some(e);
                    }
                }
            }
        }
        Err(err.unwrap_or(Errno::ESTALE))
    }

    /// Resolves a name to (hashed child, data child, entry of the data).
    async fn resolve(&self, parent: FileId, name: &[u8]) -> Result<(usize, usize, Entry)> {
        let h = self.hashed(parent, name);
        let e = self.children[h].lookup(parent, name).await?;
        match pointer_target(&e) {
            None => {
                self.remember(e.attr.id, h);
                Ok((h, h, e))
            }
            Some(t) if t < self.children.len() && t != h => {
                match self.children[t].getattr(e.attr.id).await {
                    Ok(real) if pointer_target(&real).is_none() => {
                        self.remember(real.attr.id, t);
                        Ok((h, t, real))
                    }
                    Ok(_) | Err(Errno::ENOENT | Errno::ESTALE) => Err(Errno::ENOENT), // dangling pointer
                    Err(err) => Err(err),
                }
            }
            Some(t) => {
                tracing::warn!(target = t, "pointer entry with an impossible target");
                Err(Errno::EIO)
            }
        }
    }

    /// Makes `new_name` in `new_parent` on child `at` point at `id` whose data is on `data`:
    /// a hard link of an existing pointer for `id` on that child, or a new pointer.
    async fn put_pointer(
        &self,
        at: usize,
        id: FileId,
        data: usize,
        new_parent: FileId,
        new_name: &[u8],
    ) -> Result<()> {
        match self.children[at].link(id, new_parent, new_name).await {
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT | Errno::ESTALE) => {}
            Err(e) => return Err(e),
        }
        let node = NewNode {
            id,
            kind: FileKind::File,
            perm: POINTER_PERM,
            uid: 0,
            gid: 0,
            rdev: 0,
            meta: vec![MetaXattr {
                name: LINKTO.into(),
                value: (data as u32).to_be_bytes().to_vec(),
            }],
        };
        self.children[at]
            .create(new_parent, new_name, &node, None, None)
            .await
            .map(|_| ())
    }

    /// A rename, its two names held.
    async fn rename_held(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let (src_h, src_d, src) = self.resolve(parent, name).await?;
        let dst = match self.resolve(new_parent, new_name).await {
            Ok(x) => Some(x),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if flags.exchange {
            // Exchanging files across children would need both data files to swap places;
            // only same-child exchanges are atomic here. Two directories, on every child,
            // trade names on each; a directory and a file cannot (the directory would keep
            // its name on the children without the file).
            let is_dir = |e: &Entry| e.attr.kind == FileKind::Dir;
            match &dst {
                None => return Err(Errno::ENOENT),
                Some((_, _, d)) if is_dir(&src) && is_dir(d) => {
                    return self
                        .rename_dir(src_h, parent, name, new_parent, new_name, flags)
                        .await
                }
                Some((dh, dd, d))
                    if *dd == src_d && *dh == src_h && src_h == src_d && !is_dir(&src) && !is_dir(d) =>
                {
                    return self.children[src_d]
                        .rename(parent, name, new_parent, new_name, flags)
                        .await
                }
                _ => return Err(Errno::EXDEV),
            }
        }
        if let Some((_, _, d)) = &dst {
            if flags.noreplace {
                return Err(Errno::EEXIST);
            }
            if d.attr.id == src.attr.id {
                return Ok(()); // two names of one file: rename does nothing
            }
            match (src.attr.kind == FileKind::Dir, d.attr.kind == FileKind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        if src.attr.kind == FileKind::Dir {
            // (Before the target is removed below.)
            self.all_up("directory rename")?;
            if let Some((_, _, d)) = &dst {
                // Each child sees only its share of the target, and files may be made in it
                // meanwhile: it is removed first as rmdir removes it (all or nothing), so
                // that no child keeps it while the others take the new directory.
                self.rmdir_held(new_parent, new_name).await?;
                let moved = self
                    .rename_dir(src_h, parent, name, new_parent, new_name, flags)
                    .await;
                if moved.is_err() {
                    // The rename failed: the target comes back (same id).
                    let node = dir_node(d);
                    let h = self.hashed(new_parent, new_name);
                    if let Err(e) = self
                        .on_all_dirs(h, |c| c.create(new_parent, new_name, &node, None, None))
                        .await
                    {
                        tracing::warn!("cannot make again a directory a failed rename replaced: {e}");
                    }
                }
                return moved;
            }
            return self
                .rename_dir(src_h, parent, name, new_parent, new_name, flags)
                .await;
        }
        let new_h = self.hashed(new_parent, new_name);
        // 1. Where the new name hashes elsewhere, a pointer to the data, under a name of its
        //    own until the end: if it cannot be made, nothing has changed yet.
        let tmp = (new_h != src_d).then(|| format!(".shoal-rename-{}", FileId::random().to_hex()));
        if let Some(tmp) = &tmp {
            self.put_pointer(new_h, src.attr.id, src_d, new_parent, tmp.as_bytes())
                .await?;
        }
        // 2. The data file takes its new name where it is (replacing whatever had that name
        //    on that child).
        let drop_tmp = |tmp: String| async move {
            if let Err(e) = self.children[new_h].unlink(new_parent, tmp.as_bytes()).await {
                tracing::warn!("rename: cannot remove an unused pointer {tmp}: {e}");
            }
        };
        if let Err(e) = self.children[src_d]
            .rename(parent, name, new_parent, new_name, flags)
            .await
        {
            if let Some(tmp) = tmp {
                drop_tmp(tmp).await;
            }
            return Err(e);
        }
        // 3. The pointer takes the new name where it hashes (not over a file a plain create
        //    made there meanwhile, if the caller asked for no replacing).
        if let Some(tmp) = tmp {
            let placed = self.children[new_h]
                .rename(new_parent, tmp.as_bytes(), new_parent, new_name, flags)
                .await;
            if let Err(e) = placed {
                tracing::warn!("rename: cannot place pointer: {e}");
                drop_tmp(tmp).await;
                // The data goes back to its name (not over a file made there meanwhile),
                // unless its rename replaced a file there: then there is no going back.
                if dst.as_ref().is_none_or(|(_, dd, _)| *dd != src_d) {
                    let back = RenameFlags {
                        noreplace: true,
                        ..RenameFlags::default()
                    };
                    if let Err(e) = self.children[src_d]
                        .rename(new_parent, new_name, parent, name, back)
                        .await
                    {
                        tracing::warn!("rename: cannot move the data back after a failed rename: {e}");
                    }
                }
                return Err(e);
            }
        }
        // 4. The replaced file's data elsewhere goes.
        if let Some((_, dd, _)) = &dst {
            if *dd != src_d && *dd != new_h {
                let _ = self.children[*dd].unlink(new_parent, new_name).await;
            }
        }
        // 5. The old pointer goes.
        if src_h != src_d {
            let _ = self.children[src_h].unlink(parent, name).await;
        }
        Ok(())
    }

    /// A directory's rename (or exchange with another directory) on every child, all or
    /// nothing: a child left with the old name would answer for it wherever that name
    /// hashes (and in listings, from child 0), and nothing would notice. The others go
    /// first and the hashed child, which answers for the name, last; if any of them
    /// fails, those renamed go back and the rename fails, so a directory is not renamed
    /// while a child is down (GlusterFS refuses it too). A child that lacks the directory
    /// (it missed its mkdir) is left out: it is made there, under the new name, when
    /// met. One that lacks a parent answers ESTALE, which heals the parents and tries
    /// again (`healing`).
    async fn rename_dir(
        &self,
        hashed: usize,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.all_up("directory rename")?;
        let others: Vec<usize> = (0..self.children.len()).filter(|i| *i != hashed).collect();
        let results = join_all(
            others
                .iter()
                .map(|&i| self.children[i].rename(parent, name, new_parent, new_name, flags)),
        )
        .await;
        let mut renamed = Vec::new();
        let mut failure = None;
        let maybe_made = |e| crate::xlator::may_have_renamed(e, flags);
        for (&i, r) in others.iter().zip(results) {
            match r {
                Ok(()) => renamed.push(i),
                // (An exchange needs both directories on every child.)
                Err(Errno::ENOENT) if !flags.exchange => {
                    tracing::debug!(child = i, "directory rename: the child lacks it")
                }
                Err(e) => {
                    if maybe_made(e) {
                        renamed.push(i);
                    }
                    failure = failure.or(Some(e));
                }
            }
        }
        let failure = match failure {
            Some(e) => e,
            None => match self.children[hashed]
                .rename(parent, name, new_parent, new_name, flags)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if maybe_made(e) {
                        renamed.push(hashed);
                    }
                    e
                }
            },
        };
        join_all(renamed.iter().map(|&i| {
            crate::xlator::undo_rename(&self.children[i], i, parent, name, new_parent, new_name, flags)
        }))
        .await;
        Err(failure)
    }

    /// A directory's removal from every child, its name held.
    async fn rmdir_held(&self, parent: FileId, name: &[u8]) -> Result<()> {
        let h = self.hashed(parent, name);
        let e = self.children[h].lookup(parent, name).await?;
        if e.attr.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        // The others first, the hashed one (which answers for the name) last: if one is not
        // empty, the ones already removed are made again, so the directory never
        // half-disappears. (A file made in it meanwhile on a child it is gone from meets
        // ESTALE, and its heal waits on the name for this to end; see `crate::dirheal`.)
        let others: Vec<usize> = (0..self.children.len()).filter(|i| *i != h).collect();
        let results = join_all(others.iter().map(|&i| self.children[i].rmdir(parent, name))).await;
        let failure = results.iter().find_map(|r| {
            r.as_ref()
                .err()
                .filter(|e| !matches!(**e, Errno::ENOENT))
                .copied()
        });
        let failure = match failure {
            Some(e) => Some(e),
            None => self.children[h].rmdir(parent, name).await.err(),
        };
        if let Some(err) = failure {
            let node = dir_node(&e);
            for (&i, r) in others.iter().zip(&results) {
                if r.is_ok() {
                    match self.children[i].create(parent, name, &node, None, None).await {
                        Ok(_) => self.copy_xattrs(e.attr.id, h, i).await,
                        Err(e) => tracing::warn!(child = i, "cannot make again a directory not removed: {e}"),
                    }
                }
            }
            return Err(err);
        }
        Ok(())
    }

    async fn create_once(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        let h = self.hashed(parent, name);
        if node.kind == FileKind::Dir {
            // Made on every child: held against a removal or rename of the name meanwhile.
            return self
                .holding(&[(parent, name)], || {
                    self.on_all_dirs(h, |c| c.create(parent, name, node, symlink_target, None))
                })
                .await;
        }
        let (e, handle) = self.children[h]
            .create(parent, name, node, symlink_target, open)
            .await?;
        self.remember(node.id, h);
        Ok((e, handle.map(|x| Handle::One(h, Box::new(x)))))
    }

    async fn unlink_once(&self, parent: FileId, name: &[u8]) -> Result<()> {
        if self.children.len() == 1 {
            return self.children[0].unlink(parent, name).await;
        }
        // A name is most often a plain file where it hashes: removed in one step, unless it
        // turns out to be a pointer, whose data goes first.
        match self.children[self.hashed(parent, name)]
            .unlink_unless(parent, name, LINKTO)
            .await
        {
            Ok(None) => return Ok(()),
            Ok(Some(_)) | Err(Errno::ENOSYS) => {}
            Err(e) => return Err(e),
        }
        // A pointer and its data: two steps, the name held.
        self.holding(&[(parent, name)], || async {
            let (h, d, e) = self.resolve(parent, name).await?;
            if e.attr.kind == FileKind::Dir {
                return Err(Errno::EISDIR);
            }
            self.children[d].unlink(parent, name).await?;
            if h != d {
                if let Err(err) = self.children[h].unlink(parent, name).await {
                    tracing::warn!("cannot remove pointer: {err}");
                }
            }
            Ok(())
        })
        .await
    }

    async fn link_once(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        let (d, _) = self.locate_one(id).await?;
        let h = self.hashed(new_parent, new_name);
        if h == d {
            return self.children[d].link(id, new_parent, new_name).await;
        }
        // The name on the data's child and a pointer where it hashes: two steps, held.
        self.holding(&[(new_parent, new_name)], || async {
            let e = self.children[d].link(id, new_parent, new_name).await?;
            if let Err(err) = self.put_pointer(h, id, d, new_parent, new_name).await {
                let _ = self.children[d].unlink(new_parent, new_name).await;
                return Err(err);
            }
            Ok(e)
        })
        .await
    }

    async fn readdir_once(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        // Child 0 lists directories and its files; the others only their files. Pointers
        // are never listed: their data is listed where it lives.
        let (mut child, mut sub) = match cursor.0.split_first() {
            Some((c, rest)) => (*c as usize, DirCursor(rest.to_vec())),
            None => (0, DirCursor::default()),
        };
        while child < self.children.len() {
            let page = self.children[child].readdir(id, &sub, true).await?;
            let entries: Vec<_> = page
                .entries
                .into_iter()
                .filter(|d| match &d.entry {
                    Some(e) => pointer_target(e).is_none() && (child == 0 || e.attr.kind != FileKind::Dir),
                    None => child == 0 || d.kind != FileKind::Dir,
                })
                .map(|mut d| {
                    if let Some(e) = &d.entry {
                        self.remember(e.attr.id, child);
                    }
                    if !plus {
                        d.entry = None;
                    }
                    d
                })
                .collect();
            let next = match page.next {
                Some(n) => Some(DirCursor(std::iter::once(child as u64).chain(n.0).collect())),
                None if child + 1 < self.children.len() => Some(DirCursor(vec![child as u64 + 1])),
                None => None,
            };
            if !entries.is_empty() || next.is_none() {
                return Ok(DirPage { entries, next });
            }
            let n = next.unwrap_or_default();
            child = n.0.first().copied().unwrap_or(0) as usize;
            sub = DirCursor(n.0.get(1..).map(<[u64]>::to_vec).unwrap_or_default());
        }
        Ok(DirPage::default())
    }

    /// Runs `change` (of several steps) with `names` held (see `crate::namelock`).
    pub(crate) async fn holding<'a, T, F, Fut>(&'a self, names: &[(FileId, &[u8])], change: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let held = self.hold(names).await?;
        let r = change().await;
        held.release().await;
        r
    }

    async fn hold(&self, names: &[(FileId, &[u8])]) -> Result<namelock::Held> {
        let names = match self.children.len() {
            // One child makes every change in one step.
            1 => Vec::new(),
            n => names
                .iter()
                .map(|(parent, name)| {
                    let hash = layout::hash_name(*parent, name);
                    namelock::Name::new(Layer::Distribute, layout::pick(hash, n), *parent, hash)
                })
                .collect(),
        };
        namelock::take(&self.children, names).await
    }

    fn one(h: &Handle) -> Result<(usize, &Handle)> {
        match h {
            Handle::One(i, h) => Ok((*i, h)),
            _ => Err(Errno::EBADF),
        }
    }

    /// ENOTCONN if a child is down: for the changes of a directory that no heal would
    /// bring to it afterwards.
    fn all_up(&self, what: &str) -> Result<()> {
        match (0..self.children.len()).find(|&i| !self.children[i].is_up()) {
            Some(i) => {
                tracing::debug!(child = i, "{what} refused: the child is down");
                Err(Errno::ENOTCONN)
            }
            None => Ok(()),
        }
    }

    /// Runs a directory change on every child, the hashed one first (it answers for the
    /// directory), then the rest together.
    async fn on_all_dirs<'a, T, F, Fut>(&'a self, first: usize, f: F) -> Result<T>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let v = f(&self.children[first]).await?;
        let rest = join_all(
            self.children
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, c)| f(c)),
        )
        .await;
        for r in rest {
            if let Err(e) = r {
                tracing::warn!("directory change missed a child: {e}");
            }
        }
        Ok(v)
    }
}

#[async_trait]
impl Xlator for Distribute {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry> {
        let (h, _, e) = self.healing(&[parent], || self.resolve(parent, name)).await?;
        if e.attr.kind == FileKind::Dir && self.children.len() > 1 {
            return Ok(self.whole_dir(h, e).await);
        }
        Ok(e)
    }

    async fn getattr(&self, id: FileId) -> Result<Entry> {
        Ok(self.locate(id).await?.1)
    }

    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry> {
        if let Some(h) = h {
            let (c, ch) = Self::one(h)?;
            return self.children[c].setattr(id, Some(ch), set).await;
        }
        let (c, e) = self.locate_one(id).await?;
        if e.attr.kind == FileKind::Dir {
            // (A home lacking the directory answers ESTALE: it is made there again.)
            let times = set.atime.is_some() || set.mtime.is_some();
            return self
                .healing(&[id], || {
                    self.change_dir(id, c, times, |ch| ch.setattr(id, None, set))
                })
                .await;
        }
        self.children[c].setattr(id, None, set).await
    }

    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        self.healing(&[parent], || {
            self.create_once(parent, name, node, symlink_target, open)
        })
        .await
    }

    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.healing(&[parent], || self.unlink_once(parent, name)).await
    }

    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.healing(&[parent], || async {
            self.holding(&[(parent, name)], || self.rmdir_held(parent, name))
                .await
        })
        .await
    }

    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.healing(&[parent, new_parent], || async {
            self.holding(&[(parent, name), (new_parent, new_name)], || {
                self.rename_held(parent, name, new_parent, new_name, flags)
            })
            .await
        })
        .await
    }

    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        self.healing(&[new_parent], || self.link_once(id, new_parent, new_name))
            .await
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>> {
        self.on_home(id, |c| c.readlink(id)).await
    }

    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        self.healing(&[id], || self.readdir_once(id, cursor, plus)).await
    }

    async fn open(&self, id: FileId, flags: u32) -> Result<Handle> {
        let c = match self.cached(id) {
            Some(c) => c,
            None => self.locate_one(id).await?.0,
        };
        match self.children[c].open(id, flags).await {
            Ok(h) => Ok(Handle::One(c, Box::new(h))),
            Err(Errno::ENOENT | Errno::ESTALE) => {
                self.forget(id);
                let (c, _) = self.locate_one(id).await?;
                Ok(Handle::One(c, Box::new(self.children[c].open(id, flags).await?)))
            }
            Err(e) => Err(e),
        }
    }

    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes> {
        let (c, ch) = Self::one(h)?;
        self.children[c].read(ch, offset, size).await
    }

    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32> {
        let (c, ch) = Self::one(h)?;
        self.children[c].write(ch, offset, data).await
    }

    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()> {
        let (c, ch) = Self::one(h)?;
        self.children[c].fsync(ch, datasync).await
    }

    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()> {
        let (c, ch) = Self::one(h)?;
        self.children[c].flush(ch, lock_owner).await
    }

    async fn release(&self, h: &Handle) -> Result<Option<Entry>> {
        let (c, ch) = Self::one(h)?;
        self.children[c].release(ch).await
    }

    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()> {
        let (c, ch) = Self::one(h)?;
        self.children[c].fallocate(ch, mode, offset, len).await
    }

    async fn statfs(&self) -> Result<StatFs> {
        sum_statfs(join_all(self.children.iter().map(|c| c.statfs())).await)
    }

    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>> {
        self.on_home(id, |c| c.getxattr(id, name)).await
    }

    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let (c, e) = self.locate_one(id).await?;
        if e.attr.kind == FileKind::Dir {
            return self
                .healing(&[id], || {
                    self.change_dir(id, c, false, |ch| ch.setxattr(id, name, value, flags))
                })
                .await;
        }
        self.children[c].setxattr(id, name, value, flags).await
    }

    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>> {
        self.on_home(id, |c| c.listxattr(id)).await
    }

    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()> {
        let (c, e) = self.locate_one(id).await?;
        if e.attr.kind == FileKind::Dir {
            return self
                .healing(&[id], || {
                    self.change_dir(id, c, false, |ch| ch.removexattr(id, name))
                })
                .await;
        }
        self.children[c].removexattr(id, name).await
    }

    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()> {
        let (c, _) = self.locate_one(id).await?;
        self.children[c].xattr_add(id, deltas).await
    }

    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        let (c, _) = self.locate_one(id).await?;
        self.children[c].set_meta(id, meta).await
    }

    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock> {
        let c = match self.cached(id) {
            Some(c) => c,
            None => self.locate_one(id).await?.0,
        };
        self.children[c].getlk(id, lock).await
    }

    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()> {
        let c = match self.cached(id) {
            Some(c) => c,
            None => self.locate_one(id).await?.0,
        };
        self.children[c].setlk(id, lock, wait).await
    }

    fn is_up(&self) -> bool {
        self.children.iter().all(|c| c.is_up())
    }

    async fn caught_up(&self) -> bool {
        crate::xlator::caught_up_all(&self.children).await
    }

    async fn heal(&self) -> Result<HealReport> {
        crate::xlator::heal_all(&self.children).await
    }

    async fn split_brains(&self) -> Result<Vec<FileId>> {
        crate::xlator::split_brains_all(&self.children).await
    }

    async fn settle(&self, id: FileId, how: &crate::split_brain::Settle) -> Result<Vec<String>> {
        crate::xlator::settle_all(&self.children, id, how).await
    }
}

/// The capacity of children that each hold a part of the volume.
pub fn sum_statfs(results: Vec<Result<StatFs>>) -> Result<StatFs> {
    let mut total: Option<StatFs> = None;
    let mut err = None;
    for r in results {
        match r {
            Ok(s) => {
                let t = total.get_or_insert(StatFs {
                    bsize: s.bsize,
                    frsize: s.frsize,
                    namemax: s.namemax,
                    ..Default::default()
                });
                // Normalise to the first child's fragment size.
                let scale = |v: u64| v.saturating_mul(s.frsize.max(1) as u64) / t.frsize.max(1) as u64;
                t.blocks += scale(s.blocks);
                t.bfree += scale(s.bfree);
                t.bavail += scale(s.bavail);
                t.files += s.files;
                t.ffree += s.ffree;
                t.namemax = t.namemax.min(s.namemax);
            }
            Err(e) => err = Some(e),
        }
    }
    total.ok_or(err.unwrap_or(Errno::ENOTCONN))
}
