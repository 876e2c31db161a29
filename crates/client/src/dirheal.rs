//! Distribute's directory heal: a directory lives on every child, so a child that was down
//! (or failed) when one was made lacks it, and refuses everything in it with ESTALE (the
//! brick knows no such directory) while the others go on: a third of the names made in it
//! would fail, and a directory in it that hashes there could not be looked up.
//!
//! Whatever meets ESTALE from a child makes the directories concerned again where they are
//! missing, then tries once more. Each is made with the id, owner, mode and extended
//! attributes it has on the others, the directories above it that the child lacks first.
//! Its name is held meanwhile, as mkdir and rmdir hold it, and it is made only while it is
//! still there under that name: a heal never brings back a directory removed or renamed.
//! Name locks are taken only outside the operation's own (a heal runs after the operation
//! has let go of its names), so they keep the one order that rules out waiting in a cycle.

use crate::distribute::{dir_node, Distribute};
use crate::xlator::Result;
use futures_util::future::join_all;
use proto::{Errno, FileId, FileKind};

/// Deepest chain of missing directories made again at once.
const MAX_DEPTH: usize = 4096;

impl Distribute {
    /// Runs `op`; where it fails for want of a directory on some child (ESTALE), makes
    /// `dirs` again wherever they are missing and runs it once more.
    pub(crate) async fn healing<'a, T, F, Fut>(&'a self, dirs: &[FileId], op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let r = op().await;
        if !matches!(r, Err(Errno::ESTALE)) || self.children.len() == 1 {
            return r;
        }
        let mut made = false;
        for &dir in dirs {
            made |= self.heal_dir_everywhere(dir).await;
        }
        match made {
            true => op().await,
            false => r,
        }
    }

    /// Makes directory `dir` again on every child that lacks it: true when one was made.
    pub(crate) async fn heal_dir_everywhere(&self, dir: FileId) -> bool {
        let results = join_all((0..self.children.len()).map(|i| self.heal_dir(dir, i))).await;
        let mut made = false;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(m) => made |= m,
                Err(e) => tracing::debug!(child = i, %dir, "directory heal: {e}"),
            }
        }
        made
    }

    /// Makes directory `dir` again on child `on` if it lacks it, with the directories
    /// above it that `on` lacks too: true when something was made.
    pub(crate) async fn heal_dir(&self, dir: FileId, on: usize) -> Result<bool> {
        let mut missing = Vec::new();
        let mut at = dir;
        while at != FileId::ROOT {
            match self.children[on].getattr(at).await {
                Ok(_) => break,
                Err(Errno::ENOENT | Errno::ESTALE) => {}
                Err(e) => return Err(e),
            }
            if missing.len() >= MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let (parent, name) = self.dir_parent_elsewhere(at, on).await?;
            missing.push((parent, name, at));
            at = parent;
        }
        let made = !missing.is_empty();
        for (parent, name, id) in missing.into_iter().rev() {
            self.remake_dir(parent, &name, id, on).await?;
        }
        Ok(made)
    }

    /// The parent and name of directory `id` on some child other than `skip`.
    async fn dir_parent_elsewhere(&self, id: FileId, skip: usize) -> Result<(FileId, Vec<u8>)> {
        let mut err = Errno::ESTALE;
        for (i, c) in self.children.iter().enumerate().filter(|(i, _)| *i != skip) {
            match c.dir_parent(id).await {
                Ok(p) => return Ok(p),
                Err(e @ (Errno::ENOENT | Errno::ESTALE)) => {
                    if err == Errno::ESTALE {
                        err = e;
                    }
                }
                Err(e) => {
                    tracing::debug!(child = i, %id, "directory heal: no parent: {e}");
                    err = e;
                }
            }
        }
        Err(err)
    }

    /// Makes directory `id`, named `name` in `parent`, on child `on` as the others have it,
    /// its name held, if it is still there.
    async fn remake_dir(&self, parent: FileId, name: &[u8], id: FileId, on: usize) -> Result<()> {
        let held = self.hold(&[(parent, name)]).await?;
        let r = async {
            let mut source = None;
            for (i, c) in self.children.iter().enumerate().filter(|(i, _)| *i != on) {
                match c.lookup(parent, name).await {
                    Ok(e) if e.attr.id == id && e.attr.kind == FileKind::Dir => {
                        source = Some((i, e));
                        break;
                    }
                    Ok(_) | Err(Errno::ENOENT | Errno::ESTALE) => {}
                    Err(e) => return Err(e),
                }
            }
            // Removed or renamed meanwhile: nothing to make.
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
        }
        .await;
        held.release().await;
        r
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
