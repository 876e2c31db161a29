//! Distribute's directory heal: a directory lives on every child, so a child that was down
//! (or failed) when one was made lacks it, and refuses everything in it with ESTALE (the
//! brick knows no such directory) while the others go on: one name in N made in it would
//! fail, and a directory in it that hashes there could not be looked up.
//!
//! Whatever meets ESTALE from a child makes the directories concerned again where they are
//! missing, then tries once more. Each is made with the id, owner, mode and extended
//! attributes it has on the others, the directories above it that the child lacks first.
//! Its name is held meanwhile, as mkdir and rmdir hold it, and it is made only while the
//! child its name hashes to (which answers for the name) still has it there and no child
//! has something else under that name: a heal never brings back a directory removed or
//! renamed. Name locks are taken only outside the operation's own (a heal runs after the
//! operation has let go of its names), so they keep the one order that rules out waiting
//! in a cycle.

use crate::distribute::{dir_node, Distribute};
use crate::heal::{gone, MAX_DEPTH};
use crate::xlator::Result;
use futures_util::future::join_all;
use proto::{Errno, FileId, FileKind};
use std::collections::HashSet;

impl Distribute {
    /// Runs `op`; where it fails for want of a directory on some child (ESTALE), makes
    /// `dirs` again wherever they are missing and, if every child has them then, runs it
    /// once more. (Also when nothing had to be made: the directory may have come back
    /// between the failure and the look, as a failed rmdir makes it again.)
    pub(crate) async fn healing<'a, T, F, Fut>(&'a self, dirs: &[FileId], op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let r = op().await;
        if !matches!(r, Err(Errno::ESTALE)) || self.children.len() == 1 {
            return r;
        }
        let mut dirs = dirs.to_vec();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            if !self.heal_dir_everywhere(dir).await {
                return r;
            }
        }
        op().await
    }

    /// Makes directory `dir` again on every child that lacks it: true when every child
    /// has it then.
    pub(crate) async fn heal_dir_everywhere(&self, dir: FileId) -> bool {
        if dir == FileId::ROOT {
            return true;
        }
        let found = join_all(self.children.iter().map(|c| c.getattr(dir))).await;
        if !found
            .iter()
            .any(|r| matches!(r, Ok(e) if e.attr.kind == FileKind::Dir))
        {
            return false; // gone (removed by someone else): nothing to make
        }
        let mut lacking: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_err()).collect();
        // One child at a time, twice: a child's heal takes the name on the child the name
        // hashes to, which may need its own heal first.
        for _ in 0..2 {
            let mut still = Vec::new();
            for i in lacking {
                if let Err(e) = self.heal_dir(dir, i).await {
                    tracing::debug!(child = i, %dir, "directory heal: {e}");
                    still.push(i);
                }
            }
            if still.is_empty() {
                return true;
            }
            lacking = still;
        }
        false
    }

    /// Makes directory `dir` again on child `on` if it lacks it, with the directories
    /// above it that `on` lacks too. Ok once `on` has it.
    pub(crate) async fn heal_dir(&self, dir: FileId, on: usize) -> Result<()> {
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        let mut at = dir;
        while at != FileId::ROOT {
            match self.children[on].getattr(at).await {
                Ok(_) => break,
                Err(e) if gone(e) => {}
                Err(e) => return Err(e),
            }
            // (Parents given by children caught in the middle of renames may loop.)
            if missing.len() >= MAX_DEPTH || !seen.insert(at) {
                return Err(Errno::ELOOP);
            }
            let (parent, name) = self.dir_parent_elsewhere(at, on).await?;
            missing.push((parent, name, at));
            at = parent;
        }
        for (parent, name, id) in missing.into_iter().rev() {
            self.remake_dir(parent, &name, id, on).await?;
        }
        Ok(())
    }

    /// The parent and name of directory `id` on some child other than `skip`.
    async fn dir_parent_elsewhere(&self, id: FileId, skip: usize) -> Result<(FileId, Vec<u8>)> {
        let mut err = Errno::ESTALE;
        for (i, c) in self.children.iter().enumerate().filter(|(i, _)| *i != skip) {
            match c.dir_parent(id).await {
                Ok(p) => return Ok(p),
                Err(e) if gone(e) => {}
                Err(e) => {
                    tracing::debug!(child = i, %id, "directory heal: no parent: {e}");
                    err = e;
                }
            }
        }
        Err(err)
    }

    /// Makes directory `id`, named `name` in `parent`, on child `on` as the others have
    /// it, its name held, if the name's own child still has it there and no child has
    /// anything else under that name. (A child that missed a rename of the directory keeps
    /// it under the old name: that copy alone brings nothing back.)
    async fn remake_dir(&self, parent: FileId, name: &[u8], id: FileId, on: usize) -> Result<()> {
        self.holding(&[(parent, name)], || async {
            let home = self.hashed(parent, name);
            let others: Vec<usize> = (0..self.children.len()).filter(|&i| i != on).collect();
            let found = join_all(others.iter().map(|&i| self.children[i].lookup(parent, name))).await;
            let mut source = None;
            for (&i, r) in others.iter().zip(found) {
                match r {
                    Ok(e) if e.attr.id == id && e.attr.kind == FileKind::Dir => {
                        if i == home || source.is_none() {
                            source = Some((i, e));
                        }
                    }
                    // Something else under that name: not this heal's to decide.
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(e) if gone(e) && i == home => return Err(Errno::ESTALE),
                    Err(e) if gone(e) => {}
                    Err(e) => return Err(e),
                }
            }
            let (from, e) = source.ok_or(Errno::ESTALE)?;
            match self.children[on]
                .create(parent, name, &dir_node(&e), None, None)
                .await
            {
                Ok(_) => {}
                // Made meanwhile (another client's heal); anything else under that name
                // is not this heal's to replace.
                Err(Errno::EEXIST) if self.children[on].getattr(id).await.is_ok() => return Ok(()),
                Err(e) => return Err(e),
            }
            tracing::info!(child = on, %id, "made again a directory the child lacked");
            self.copy_xattrs(id, from, on).await;
            Ok(())
        })
        .await
    }

    /// Gives directory `id` on child `to` the extended attributes it has on `from`.
    pub(crate) async fn copy_xattrs(&self, id: FileId, from: usize, to: usize) {
        let names = match self.children[from].listxattr(id).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(child = to, %id, "directory made again without its xattrs: {e}");
                return;
            }
        };
        for n in names {
            // (One removed meanwhile is simply not copied.)
            if let Ok(v) = self.children[from].getxattr(id, &n).await {
                if let Err(e) = self.children[to].setxattr(id, &n, &v, 0).await {
                    tracing::warn!(child = to, %id, "directory made again without an xattr: {e}");
                }
            }
        }
    }
}
