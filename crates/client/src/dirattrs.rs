//! Distribute's directory attributes: a directory's mode, owner, times and extended
//! attributes are kept on every child, and the child its name hashes to (its home; the
//! first child for the root) answers for them, as the hashed child answers for the name.
//!
//! A change goes to the home first, and is refused while it is down; then to the others.
//! One that misses another child (down, or failing) is counted on the home's copy
//! (`dir-behind`, and `dir-times-behind` for a change of times). Whoever next looks the
//! directory up sees the count (a lookup asks every child for the directory anyway),
//! answers with the home's mode and owner, gives them and its extended attributes (and
//! its times, to copies whose entries did not change since) to every other child, and
//! takes the count off, the directory's name held so that two clients' givings do not
//! both take it off.
//! Without it a child that missed a `chmod 700` went on answering 0755 to whoever asked
//! it, and a missed `setfattr` was read back from it.

use crate::distribute::{Distribute, HEAL_RETRY};
use crate::heal::gone;
use crate::xlator::{Child, Result};
use futures_util::future::join_all;
use proto::{Attr, Entry, Errno, FileId, SetAttr, TimeSet, Timespec};
use std::time::Instant;

/// Changes of a directory's attributes that some child missed, counted on the home's copy.
const DIR_BEHIND: &str = "dir-behind";
/// Those of them that changed its times.
const DIR_TIMES_BEHIND: &str = "dir-times-behind";

fn count(e: &Entry, name: &str) -> i64 {
    e.meta(name)
        .and_then(|v| v.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

/// Whether an extended attribute is the user's to set on a directory through the volume,
/// and so given from the home: not the brick's own (`security.selinux` and the like,
/// which the brick's file system keeps per copy).
fn synced(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name.starts_with(b"system.posix_acl_")
}

/// Whether this copy of a directory counts changes other copies missed.
pub(crate) fn behind(e: &Entry) -> bool {
    count(e, DIR_BEHIND) > 0 || count(e, DIR_TIMES_BEHIND) > 0
}

/// What the volume answers for a directory whose home counts missed changes.
pub(crate) struct HomeAttrs {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Set when a change of times was missed: the home's, or a later one's.
    pub times: Option<(Timespec, Timespec)>,
}

impl Distribute {
    /// The home of directory `id`: where its name hashes, as child `first` (then any
    /// other) records its parent and name; with that parent and name (none for the root).
    async fn dir_home(&self, id: FileId, first: usize) -> Result<(usize, Option<(FileId, Vec<u8>)>)> {
        if id == FileId::ROOT {
            return Ok((0, None));
        }
        let order = std::iter::once(first).chain((0..self.children.len()).filter(|&i| i != first));
        let mut err = None;
        for i in order {
            match self.children[i].dir_parent(id).await {
                Ok((parent, name)) => return Ok((self.hashed(parent, &name), Some((parent, name)))),
                // Rather the reason of a child that has it than that of one that lacks it.
                Err(e) if gone(e) => err = err.or(Some(e)),
                Err(e) => err = Some(e),
            }
        }
        Err(err.unwrap_or(Errno::ESTALE))
    }

    /// A change of directory `id`'s attributes or extended attributes (found on child
    /// `found`): on its home, whose answer is the change's, then on the others. `times`:
    /// the change sets its times.
    pub(crate) async fn change_dir<'a, T, F, Fut>(
        &'a self,
        id: FileId,
        found: usize,
        times: bool,
        f: F,
    ) -> Result<T>
    where
        F: Fn(&'a Child) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let home = self.dir_home(id, found).await?.0;
        let v = f(&self.children[home]).await?;
        let others: Vec<usize> = (0..self.children.len()).filter(|&i| i != home).collect();
        let results = join_all(others.iter().map(|&i| f(&self.children[i]))).await;
        let mut missed = false;
        for (&i, r) in others.iter().zip(results) {
            match r {
                Ok(_) => {}
                // A child lacking the directory gets it made again with the home's mode,
                // owner and extended attributes (`crate::dirheal`).
                Err(e) if gone(e) => {}
                Err(e) => {
                    tracing::warn!(child = i, %id, "a directory change missed a child: {e}");
                    missed = true;
                }
            }
        }
        if missed {
            let mut counts = vec![(DIR_BEHIND.to_string(), 1)];
            if times {
                counts.push((DIR_TIMES_BEHIND.to_string(), 1));
            }
            if let Err(e) = self.children[home].xattr_add(id, &counts).await {
                tracing::error!(%id, "cannot count a directory change a child missed: {e}");
            }
        }
        Ok(v)
    }

    /// For directory `id` (found on child `found`), some of whose copies (`copies`, by
    /// child) count changes others missed: the home's attributes, which are the
    /// directory's, after giving them to the other children and taking the counts off.
    /// The giving waits while a child is down, and for a while after it failed.
    pub(crate) async fn home_attrs(
        &self,
        id: FileId,
        found: usize,
        copies: &[(usize, Entry)],
    ) -> Option<HomeAttrs> {
        let (home, named) = match self.dir_home(id, found).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%id, "no home for a directory's attributes: {e}");
                return None;
            }
        };
        // (A home down or lacking it: nothing to say better than the copies at hand.)
        let he = &copies.iter().find(|(i, _)| *i == home)?.1;
        let times_behind = count(he, DIR_TIMES_BEHIND) > 0;
        // Copies whose entries changed after the home's last change keep their times
        // (their mtime moved on since). Not their ctime: a later change of attributes
        // that reached them too would pass for one. (Each brick's own clock: the bricks'
        // clocks are taken to agree.)
        let later = |a: &Attr| a.mtime > he.attr.ctime;
        let times = times_behind.then(|| {
            copies
                .iter()
                .filter(|(_, c)| later(&c.attr))
                .fold((he.attr.atime, he.attr.mtime), |(a, m), (_, c)| {
                    (a.max(c.attr.atime), m.max(c.attr.mtime))
                })
        });
        let answer = HomeAttrs {
            perm: he.attr.perm,
            uid: he.attr.uid,
            gid: he.attr.gid,
            times,
        };
        let key = (id, usize::MAX);
        let lock = || self.heal_failed.lock().unwrap_or_else(|p| p.into_inner());
        if !self.children.iter().all(|c| c.is_up())
            || lock().get(&key).is_some_and(|t| t.elapsed() < HEAL_RETRY)
        {
            return Some(answer);
        }
        let stale: Vec<(usize, bool)> = copies
            .iter()
            .filter(|(i, _)| *i != home)
            .map(|(i, c)| (*i, times_behind && !later(&c.attr)))
            .collect();
        // One giving at a time for a directory, its name held (as a rename of it holds
        // it): two would each take the counts off, and a miss counted in between with
        // them.
        let names: Vec<(FileId, &[u8])> = named.iter().map(|(p, n)| (*p, n.as_slice())).collect();
        let given = self
            .holding(&names, || self.give_and_settle(id, home, he, copies, &stale))
            .await;
        if let Err(e) = given {
            tracing::debug!(%id, "directory attributes not given yet: {e}");
            let mut failed = lock();
            failed.retain(|_, t| t.elapsed() < HEAL_RETRY);
            failed.insert(key, Instant::now());
        }
        Some(answer)
    }

    /// Gives the home's attributes to the `stale` copies, then takes the counts `copies`
    /// carry off, if nothing changed the home's copy meanwhile (a change, or another
    /// client's giving): else these values may be stale, and the next look gives them
    /// again.
    async fn give_and_settle(
        &self,
        id: FileId,
        home: usize,
        he: &Entry,
        copies: &[(usize, Entry)],
        stale: &[(usize, bool)],
    ) -> Result<()> {
        self.give_dir_attrs(id, home, he, stale).await?;
        let now = self.children[home].getattr(id).await?;
        if now.attr.ctime != he.attr.ctime || now.meta != he.meta {
            return Err(Errno::EAGAIN);
        }
        for (i, c) in copies.iter().filter(|(_, c)| behind(c)) {
            let off: Vec<(String, i64)> = [DIR_BEHIND, DIR_TIMES_BEHIND]
                .iter()
                .map(|n| (n.to_string(), -count(c, n)))
                .filter(|(_, n)| *n != 0)
                .collect();
            if let Err(e) = self.children[*i].xattr_add(id, &off).await {
                tracing::debug!(child = i, %id, "directory attributes given, count left: {e}");
            }
        }
        tracing::info!(%id, "gave a directory's attributes to the children that missed a change");
        Ok(())
    }

    /// Gives each child in `to` (with whether to give times) the mode, owner and extended
    /// attributes directory `id` has on `home` (`he`).
    async fn give_dir_attrs(&self, id: FileId, home: usize, he: &Entry, to: &[(usize, bool)]) -> Result<()> {
        let a = &he.attr;
        let src = &self.children[home];
        let mut values = Vec::new();
        for name in src.listxattr(id).await?.into_iter().filter(|n| synced(n)) {
            match src.getxattr(id, &name).await {
                Ok(v) => values.push((name, v)),
                Err(Errno::ENODATA) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        for &(i, times) in to {
            let c = &self.children[i];
            let set = SetAttr {
                perm: Some(a.perm),
                uid: Some(a.uid),
                gid: Some(a.gid),
                size: None,
                atime: times.then_some(TimeSet::At(a.atime)),
                mtime: times.then_some(TimeSet::At(a.mtime)),
            };
            match c.setattr(id, None, &set).await {
                Ok(_) => {}
                // Lacking the directory, it is made again from the home (`crate::dirheal`).
                Err(e) if gone(e) => continue,
                Err(e) => return Err(e),
            }
            for name in c.listxattr(id).await?.into_iter().filter(|n| synced(n)) {
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
