//! Distribute's directory attributes: a directory's mode, owner, times and extended
//! attributes are kept on every child, and the child its name hashes to (its home; the
//! first child for the root) answers for them, as the hashed child answers for the name.
//!
//! A change goes to the home first, and is refused while it is down; then to the others.
//! One that misses another child (down, or failing) is counted on the home's copy
//! (`dir-behind`). Whoever next looks the directory up sees the count in the home's entry
//! (a lookup asks every child for the directory anyway), answers with the home's
//! attributes, gives them and its extended attributes to every other child, and takes
//! the count off. Without it a child that missed a `chmod 700` went on answering 0755 to
//! whoever asked it, and a missed `setfattr` was read back from it.

use crate::distribute::Distribute;
use crate::heal::gone;
use crate::xlator::{Child, Result};
use futures_util::future::join_all;
use proto::{Entry, Errno, FileId, SetAttr, TimeSet};

/// Changes of a directory's attributes that some child missed, counted on the home's copy.
pub(crate) const DIR_BEHIND: &str = "dir-behind";

/// The count of changes other children missed that `e` (a directory's copy) carries.
pub(crate) fn behind(e: &Entry) -> i64 {
    e.meta(DIR_BEHIND)
        .and_then(|v| v.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

impl Distribute {
    /// The home of directory `id`: where its name hashes, as child `first` (then any
    /// other) records its parent and name.
    async fn dir_home(&self, id: FileId, first: usize) -> Result<usize> {
        if id == FileId::ROOT {
            return Ok(0);
        }
        let order = std::iter::once(first).chain((0..self.children.len()).filter(|&i| i != first));
        let mut err = None;
        for i in order {
            match self.children[i].dir_parent(id).await {
                Ok((parent, name)) => return Ok(self.hashed(parent, &name)),
                // Rather the reason of a child that has it than that of one that lacks it.
                Err(e) if gone(e) => err = err.or(Some(e)),
                Err(e) => err = Some(e),
            }
        }
        Err(err.unwrap_or(Errno::ESTALE))
    }

    /// A change of directory `id`'s attributes or extended attributes (found on child
    /// `found`): on its home, whose answer is the change's, then on the others.
    pub(crate) async fn change_dir<'a, T, F, Fut>(&'a self, id: FileId, found: usize, f: F) -> Result<T>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let home = self.dir_home(id, found).await?;
        let v = f(&self.children[home]).await?;
        let others: Vec<usize> = (0..self.children.len()).filter(|&i| i != home).collect();
        let results = join_all(others.iter().map(|&i| f(&self.children[i]))).await;
        let mut missed = false;
        for (&i, r) in others.iter().zip(results) {
            match r {
                Ok(_) => {}
                // A child lacking the directory gets it made again as the home has it.
                Err(e) if gone(e) => {}
                Err(e) => {
                    tracing::warn!(child = i, %id, "a directory change missed a child: {e}");
                    missed = true;
                }
            }
        }
        if missed {
            if let Err(e) = self.children[home]
                .xattr_add(id, &[(DIR_BEHIND.to_string(), 1)])
                .await
            {
                tracing::error!(%id, "cannot count a directory change a child missed: {e}");
            }
        }
        Ok(v)
    }

    /// Gives every other child the attributes and extended attributes directory `id` has
    /// on `home` (`he`, which counts changes they missed), then takes the count off. Not
    /// while a child is down (it could not be given them, and the count would stay).
    pub(crate) async fn heal_dir_attrs(&self, id: FileId, home: usize, he: &Entry) {
        if !self.children.iter().all(|c| c.is_up()) {
            return;
        }
        if let Err(e) = self.give_dir_attrs(id, home, he).await {
            tracing::debug!(%id, "directory attributes not healed yet: {e}");
            return;
        }
        if let Err(e) = self.children[home]
            .xattr_add(id, &[(DIR_BEHIND.to_string(), -behind(he))])
            .await
        {
            tracing::debug!(%id, "directory attributes healed, count left: {e}");
        }
        tracing::info!(%id, "gave a directory's attributes to the children that missed a change");
    }

    async fn give_dir_attrs(&self, id: FileId, home: usize, he: &Entry) -> Result<()> {
        let a = &he.attr;
        let set = SetAttr {
            perm: Some(a.perm),
            uid: Some(a.uid),
            gid: Some(a.gid),
            size: None,
            atime: Some(TimeSet::At(a.atime)),
            mtime: Some(TimeSet::At(a.mtime)),
        };
        let src = &self.children[home];
        let mut values = Vec::new();
        for name in src.listxattr(id).await? {
            match src.getxattr(id, &name).await {
                Ok(v) => values.push((name, v)),
                Err(Errno::ENODATA) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        for (i, c) in self.children.iter().enumerate().filter(|(i, _)| *i != home) {
            match c.setattr(id, None, &set).await {
                Ok(_) => {}
                // Lacking the directory, it is made again from the home (`crate::dirheal`).
                Err(e) if gone(e) => continue,
                Err(e) => return Err(e),
            }
            for name in c.listxattr(id).await? {
                if !values.iter().any(|(n, _)| *n == name) {
                    match c.removexattr(id, &name).await {
                        Ok(()) | Err(Errno::ENODATA) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            for (name, v) in &values {
                if c.getxattr(id, name).await.ok().as_ref() != Some(v) {
                    c.setxattr(id, name, v, 0).await?;
                }
            }
            tracing::debug!(child = i, %id, "directory attributes given");
        }
        Ok(())
    }
}
