//! Striping: block i of a file (stripe size bytes) lives on child i mod N at its own offset,
//! so each child's copy is a sparse file holding its share. Every child has an entry for
//! every file and directory; the file's size is the largest of its children's sizes, which
//! stays true because size changes (truncate) go to every child and writes only grow the
//! child they land on.

use crate::distribute::sum_statfs;
use crate::namelock::{self, Layer, Name};
use crate::xlator::{Child, DirCursor, DirPage, Handle, HealReport, Result, Xlator};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use proto::{Entry, Errno, FileId, FileKind, Lock, MetaXattr, NewNode, RenameFlags, SetAttr, StatFs};
use std::future::Future;

/// Internal xattr recording a file's stripe geometry (size, count) at creation, so that a
/// later change of the volume option does not scramble existing files.
pub const STRIPE_META: &str = "stripe";

/// Times a change looks its target directory up anew (another client replacing it each
/// time) before it gives up with EBUSY.
const HOLD_TRIES: usize = 16;

pub struct Stripe {
    children: Vec<Child>,
    size: u64,
}

/// Stripe's part of an open file.
pub struct StripeHandle {
    id: FileId,
    handles: Vec<Handle>,
    size: u64,
}

fn geometry(e: &Entry) -> Option<u64> {
    let v = e.meta(STRIPE_META)?;
    let size = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    (size.is_power_of_two() && size >= 4096).then_some(size)
}

impl Stripe {
    /// Holds `names` (see `crate::namelock`) for a change that every child makes.
    async fn hold(&self, names: &[(FileId, &[u8])]) -> Result<namelock::Held> {
        namelock::take(&self.children, self.names(names)).await
    }

    fn names(&self, names: &[(FileId, &[u8])]) -> Vec<Name> {
        match self.children.len() {
            1 => Vec::new(),
            _ => names
                .iter()
                .map(|(parent, name)| Name::new(Layer::Stripe, 0, *parent, layout::hash_name(*parent, name)))
                .collect(),
        }
    }

    /// Holds `names` and, when `target` is a directory, every name in it: an rmdir, or a
    /// rename over a directory, reaches the children one after another, and a change inside
    /// the directory between the two could leave it empty on one child (removed or
    /// replaced there) and not on the other (refused there).
    async fn hold_over(&self, names: &[(FileId, &[u8])], target: (FileId, &[u8])) -> Result<namelock::Held> {
        if self.children.len() == 1 {
            return self.hold(names).await;
        }
        let mut dir = None;
        // The target is looked up with its name held; held without its directory's names
        // first, it may turn out to be a directory (or another one) and is taken again.
        for _ in 0..HOLD_TRIES {
            let mut items = self.names(names);
            items.extend(dir.map(|d| Name::every(Layer::Stripe, 0, d)));
            let held = namelock::take(&self.children, items).await?;
            let now = match self.children[0].lookup(target.0, target.1).await {
                Ok(e) if e.attr.kind == FileKind::Dir => Some(e.attr.id),
                Ok(_) | Err(Errno::ENOENT) => None,
                Err(e) => {
                    held.release().await;
                    return Err(e);
                }
            };
            if now == dir {
                return Ok(held);
            }
            held.release().await;
            dir = now;
        }
        Err(Errno::EBUSY)
    }

    pub fn new(children: Vec<Child>, size: u64) -> Stripe {
        assert!(!children.is_empty() && size > 0);
        Stripe { children, size }
    }

    async fn fan<'a, T, F, Fut>(&'a self, f: F) -> Vec<Result<T>>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        join_all(self.children.iter().map(f)).await
    }

    /// Every child must succeed; the first error wins.
    fn all<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
        results.into_iter().collect()
    }

    /// One entry for the file out of its children's entries.
    fn merge(entries: Vec<Entry>) -> Result<Entry> {
        let mut it = entries.into_iter();
        let mut e = it.next().ok_or(Errno::EIO)?;
        if e.attr.kind != FileKind::File {
            return Ok(e);
        }
        for o in it {
            e.attr.size = e.attr.size.max(o.attr.size);
            e.attr.blocks += o.attr.blocks;
            e.attr.mtime = e.attr.mtime.max(o.attr.mtime);
            e.attr.ctime = e.attr.ctime.max(o.attr.ctime);
            e.attr.atime = e.attr.atime.max(o.attr.atime);
            // A write reaching some children only leaves capabilities on the others.
            e.has_caps |= o.has_caps;
        }
        Ok(e)
    }

    fn sh(h: &Handle) -> Result<&StripeHandle> {
        match h {
            Handle::Stripe(s) => Ok(s),
            _ => Err(Errno::EBADF),
        }
    }

    /// The file's size now: the largest of its children's sizes.
    async fn file_size(&self, id: FileId) -> Result<u64> {
        let entries = Self::all(self.fan(|c| c.getattr(id)).await)?;
        Ok(entries.iter().map(|e| e.attr.size).max().unwrap_or(0))
    }
}

/// `f` of each chunk, gathered per child (of `n`), in file order.
fn per_child<T>(chunks: &[layout::Chunk], n: usize, f: impl Fn(&layout::Chunk) -> T) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for ch in chunks {
        out[ch.child].push(f(ch));
    }
    out
}

#[async_trait]
impl Xlator for Stripe {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry> {
        Self::merge(Self::all(self.fan(|c| c.lookup(parent, name)).await)?)
    }

    async fn getattr(&self, id: FileId) -> Result<Entry> {
        Self::merge(Self::all(self.fan(|c| c.getattr(id)).await)?)
    }

    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry> {
        let sh = h.map(Self::sh).transpose()?;
        let results = join_all(self.children.iter().enumerate().map(|(i, c)| {
            let ch = sh.and_then(|s| s.handles.get(i));
            c.setattr(id, ch, set)
        }))
        .await;
        Self::merge(Self::all(results)?)
    }

    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        let held = self.hold(&[(parent, name)]).await?;
        let r = async {
            let mut node = node.clone();
            if node.kind == FileKind::File {
                let mut g = self.size.to_be_bytes().to_vec();
                g.extend_from_slice(&(self.children.len() as u32).to_be_bytes());
                node.meta.push(MetaXattr {
                    name: STRIPE_META.into(),
                    value: g,
                });
            }
            let node = &node;
            let results = self
                .fan(|c| c.create(parent, name, node, symlink_target, open))
                .await;
            if results.iter().any(Result::is_err) {
                // Undo on the children that made it, so that the name is all or nothing.
                let err = results
                    .iter()
                    .find_map(|r| r.as_ref().err().copied())
                    .unwrap_or(Errno::EIO);
                let mut undo = Vec::new();
                for (c, r) in self.children.iter().zip(results) {
                    if let Ok((_, h)) = r {
                        if let Some(h) = h {
                            let _ = c.release(&h).await;
                        }
                        undo.push(c);
                    }
                }
                for c in undo {
                    let _ = if node.kind == FileKind::Dir {
                        c.rmdir(parent, name).await
                    } else {
                        c.unlink(parent, name).await
                    };
                }
                return Err(err);
            }
            let mut entries = Vec::new();
            let mut handles = Vec::new();
            for r in results.into_iter().flatten() {
                entries.push(r.0);
                if let Some(h) = r.1 {
                    handles.push(h);
                }
            }
            let handle = (open.is_some() && handles.len() == self.children.len()).then(|| {
                Handle::Stripe(Box::new(StripeHandle {
                    id: node.id,
                    handles,
                    size: self.size,
                }))
            });
            Ok((Self::merge(entries)?, handle))
        }
        .await;
        held.release().await;
        r
    }

    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()> {
        let held = self.hold(&[(parent, name)]).await?;
        let r = async { Self::all(self.fan(|c| c.unlink(parent, name)).await).map(|_| ()) }.await;
        held.release().await;
        r
    }

    async fn unlink_unless(&self, parent: FileId, name: &[u8], keep: &str) -> Result<Option<Entry>> {
        let held = self.hold(&[(parent, name)]).await?;
        let r = async {
            // Every child holds a piece under the name, all marked alike.
            let kept = Self::all(self.fan(|c| c.unlink_unless(parent, name, keep)).await)?;
            Ok(kept.into_iter().flatten().next())
        }
        .await;
        held.release().await;
        r
    }

    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()> {
        let held = self.hold_over(&[(parent, name)], (parent, name)).await?;
        let r = async {
            // The first child decides (it may say ENOTEMPTY); the others follow.
            self.children[0].rmdir(parent, name).await?;
            let rest = join_all(self.children[1..].iter().map(|c| c.rmdir(parent, name))).await;
            Self::all(rest).map(|_| ())
        }
        .await;
        held.release().await;
        r
    }

    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let held = self
            .hold_over(&[(parent, name), (new_parent, new_name)], (new_parent, new_name))
            .await?;
        let r = async {
            // Every child holds a share of the object under its name: a rename on some
            // only would split it. None starts while a child is down; the first decides
            // (it may refuse); if another then fails, the ones renamed go back.
            if !self.is_up() {
                return Err(Errno::ENOTCONN);
            }
            self.children[0]
                .rename(parent, name, new_parent, new_name, flags)
                .await?;
            let rest = join_all(
                self.children[1..]
                    .iter()
                    .map(|c| c.rename(parent, name, new_parent, new_name, flags)),
            )
            .await;
            let Some(failure) = rest.iter().find_map(|r| r.as_ref().err().copied()) else {
                return Ok(());
            };
            // A rename whose answer was lost may have been made: taken back too.
            let made = |r: &Result<()>| {
                r.as_ref()
                    .map_or_else(|e| crate::xlator::may_have_renamed(*e, flags), |_| true)
            };
            let renamed = std::iter::once(0).chain((1..self.children.len()).filter(|&i| made(&rest[i - 1])));
            for i in renamed {
                crate::xlator::undo_rename(&self.children[i], i, parent, name, new_parent, new_name, flags)
                    .await;
            }
            Err(failure)
        }
        .await;
        held.release().await;
        r
    }

    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        let held = self.hold(&[(new_parent, new_name)]).await?;
        let r = async {
            let results = self.fan(|c| c.link(id, new_parent, new_name)).await;
            if let Some(err) = results.iter().find_map(|r| r.as_ref().err().copied()) {
                // The file's last name removed meanwhile (a link goes by id, not by a held
                // name) can reach the children before or after the link: the new name is
                // taken back where it was made, so that it is all or nothing.
                for (c, r) in self.children.iter().zip(&results) {
                    if r.is_ok() {
                        if let Err(e) = c.unlink(new_parent, new_name).await {
                            tracing::warn!("cannot take back a link made on some children only: {e}");
                        }
                    }
                }
                return Err(err);
            }
            Self::merge(Self::all(results)?)
        }
        .await;
        held.release().await;
        r
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>> {
        self.children[0].readlink(id).await
    }

    async fn dir_parent(&self, id: FileId) -> Result<(FileId, Vec<u8>)> {
        // (A directory is on every child; the first answers for its names.)
        self.children[0].dir_parent(id).await
    }

    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        let mut page = self.children[0].readdir(id, cursor, plus).await?;
        if plus && self.children.len() > 1 {
            // Child 0 only knows its share of each file's size: complete files' entries
            // from the other children.
            let files: Vec<usize> = page
                .entries
                .iter()
                .enumerate()
                .filter(|(_, d)| d.entry.as_ref().is_some_and(|e| e.attr.kind == FileKind::File))
                .map(|(i, _)| i)
                .collect();
            let others = join_all(files.iter().map(|&i| {
                let fid = page.entries[i].entry.as_ref().map(|e| e.attr.id).unwrap_or(id);
                join_all(self.children[1..].iter().map(move |c| c.getattr(fid)))
            }))
            .await;
            for (i, rest) in files.into_iter().zip(others) {
                let d = &mut page.entries[i];
                match (d.entry.take(), Self::all(rest)) {
                    (Some(first), Ok(rest)) => {
                        d.entry = Some(Self::merge(std::iter::once(first).chain(rest).collect())?)
                    }
                    // Gone meanwhile or unreachable: list the name, let a lookup decide.
                    _ => d.entry = None,
                }
            }
        }
        Ok(page)
    }

    async fn open(&self, id: FileId, flags: u32) -> Result<Handle> {
        let (opens, first) = tokio::join!(self.fan(|c| c.open(id, flags)), self.children[0].getattr(id));
        if opens.iter().any(Result::is_err) {
            let err = opens
                .iter()
                .find_map(|r| r.as_ref().err().copied())
                .unwrap_or(Errno::EIO);
            for (c, r) in self.children.iter().zip(opens) {
                if let Ok(h) = r {
                    let _ = c.release(&h).await;
                }
            }
            return Err(err);
        }
        let size = first.ok().as_ref().and_then(geometry).unwrap_or(self.size);
        let handles = opens.into_iter().flatten().collect();
        Ok(Handle::Stripe(Box::new(StripeHandle { id, handles, size })))
    }

    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes> {
        let sh = Self::sh(h)?;
        let chunks = layout::chunks(offset, size as u64, sh.size, sh.handles.len());
        // Each child's pieces in one request to it.
        let ranges = per_child(&chunks, sh.handles.len(), |ch| (ch.offset, ch.len as u32));
        let asked = ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(c, r)| async move {
                let pieces = self.children[c].read_ranges(&sh.handles[c], r).await?;
                match pieces.len() == r.len() {
                    true => Ok((c, pieces.into_iter())),
                    false => Err(Errno::EIO),
                }
            });
        let mut got: Vec<std::vec::IntoIter<Bytes>> = vec![Vec::new().into_iter(); sh.handles.len()];
        for (c, pieces) in Self::all(join_all(asked).await)? {
            got[c] = pieces;
        }
        // Back in file order (a child answers its pieces in the order asked).
        let parts: Vec<Bytes> = chunks
            .iter()
            .map(|ch| got[ch.child].next().unwrap_or_default())
            .collect();
        let short = chunks.iter().zip(&parts).any(|(ch, p)| (p.len() as u64) < ch.len);
        if !short {
            if parts.len() == 1 {
                return Ok(parts.into_iter().next().unwrap_or_default());
            }
            let mut buf = BytesMut::with_capacity(size as usize);
            for p in parts {
                buf.extend_from_slice(&p);
            }
            return Ok(buf.freeze());
        }
        // A short piece is a hole or the end of the file: the file ends at the largest child
        // size, and everything before that reads as written or as zeros.
        let eof = self.file_size(sh.id).await?;
        let len = eof.saturating_sub(offset).min(size as u64) as usize;
        let mut buf = BytesMut::zeroed(len);
        for (ch, p) in chunks.iter().zip(parts) {
            let at = ch.buf_offset as usize;
            if at >= len {
                break;
            }
            let n = p.len().min(len - at);
            buf[at..at + n].copy_from_slice(&p[..n]);
        }
        Ok(buf.freeze())
    }

    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32> {
        let sh = Self::sh(h)?;
        let chunks = layout::chunks(offset, data.len() as u64, sh.size, sh.handles.len());
        // Each child's pieces in one request to it.
        let pieces = per_child(&chunks, sh.handles.len(), |ch| {
            let piece = data.slice(ch.buf_offset as usize..(ch.buf_offset + ch.len) as usize);
            (ch.offset, piece)
        });
        let asked = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(c, p)| async move {
                let written = self.children[c].write_ranges(&sh.handles[c], p).await;
                (c, written.map(Vec::into_iter))
            });
        let mut got: Vec<Result<std::vec::IntoIter<u32>>> = (0..sh.handles.len())
            .map(|_| Ok(Vec::new().into_iter()))
            .collect();
        for (c, written) in join_all(asked).await {
            got[c] = written;
        }
        // In file order: the write is as long as its pieces were written without a gap.
        let mut done = 0u64;
        for ch in &chunks {
            let n = match &mut got[ch.child] {
                Ok(written) => written.next().unwrap_or(0) as u64,
                Err(e) if done == 0 => return Err(*e),
                Err(_) => 0,
            };
            if n < ch.len {
                return Ok((ch.buf_offset + n) as u32);
            }
            done += n;
        }
        Ok(done as u32)
    }

    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()> {
        let sh = Self::sh(h)?;
        Self::all(
            join_all(
                self.children
                    .iter()
                    .zip(&sh.handles)
                    .map(|(c, ch)| c.fsync(ch, datasync)),
            )
            .await,
        )
        .map(|_| ())
    }

    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()> {
        let sh = Self::sh(h)?;
        Self::all(
            join_all(
                self.children
                    .iter()
                    .zip(&sh.handles)
                    .map(|(c, ch)| c.flush(ch, lock_owner)),
            )
            .await,
        )
        .map(|_| ())
    }

    async fn release(&self, h: &Handle) -> Result<Option<Entry>> {
        let sh = Self::sh(h)?;
        let results = join_all(self.children.iter().zip(&sh.handles).map(|(c, ch)| c.release(ch))).await;
        // Pieced together as getattr does, when every child told.
        let entries: Option<Vec<Entry>> = results.into_iter().map(|r| r.ok().flatten()).collect();
        Ok(entries.and_then(|e| Self::merge(e).ok()))
    }

    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()> {
        let sh = Self::sh(h)?;
        // Each child allocates only its own blocks of the range.
        let chunks = layout::chunks(offset, len, sh.size, sh.handles.len());
        for group in chunks.chunks(64) {
            let results =
                join_all(group.iter().map(|ch| {
                    self.children[ch.child].fallocate(&sh.handles[ch.child], mode, ch.offset, ch.len)
                }))
                .await;
            Self::all(results)?;
        }
        Ok(())
    }

    async fn statfs(&self) -> Result<StatFs> {
        sum_statfs(self.fan(|c| c.statfs()).await)
    }

    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>> {
        self.children[0].getxattr(id, name).await
    }

    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        Self::all(self.fan(|c| c.setxattr(id, name, value, flags)).await).map(|_| ())
    }

    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>> {
        self.children[0].listxattr(id).await
    }

    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()> {
        Self::all(self.fan(|c| c.removexattr(id, name)).await).map(|_| ())
    }

    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()> {
        Self::all(self.fan(|c| c.xattr_add(id, deltas)).await).map(|_| ())
    }

    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        Self::all(self.fan(|c| c.set_meta(id, meta)).await).map(|_| ())
    }

    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock> {
        self.children[0].getlk(id, lock).await
    }

    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()> {
        self.children[0].setlk(id, lock, wait).await
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
