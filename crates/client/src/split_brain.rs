//! Settling split brains. An object whose copies each mark another as behind has no good
//! copy for the heal to start from: it is left for an administrator, who says how to settle
//! it (`shoal volume heal NAME split-brain`, as in GlusterFS).
//!
//! A file (or symlink) keeps one copy, chosen by brick, by size or by modification time:
//! the markers against that copy are taken off every copy, and it marks the others as
//! behind, so that the heal copies it over them. A directory is merged instead, whatever
//! the choice: the names only some copies have are made on the others (with their ids, and
//! marked, so that their contents follow), nothing is removed, and its markers go. A name
//! that stands for different objects on different copies cannot be merged: it is reported,
//! and the directory stays in split brain until one of them is renamed or removed on its
//! brick.

use crate::heal::{copy_meta, counter, entry_id, gone, list_dir, Via, LIST_MAX};
use crate::replicate::{bit, pending_key, pending_mask, Replicate};
use crate::xlator::Result;
use futures_util::future::join_all;
use proto::{Entry, Errno, FileId, FileKind};
use std::collections::{BTreeSet, HashMap};

/// Most objects listed per brick when looking for split brains.
const LIST_LIMIT: usize = 100_000;

/// Which copy of a file in split brain is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// The copy on the brick at this address.
    Source(String),
    /// The largest copy.
    BiggerFile,
    /// The copy modified last.
    LatestMtime,
}

impl Replicate {
    /// Each child's copy of `id` (`None` where it has none), and which copies the others
    /// mark as behind; an error if a child did not answer while another has a copy (then
    /// nothing can be said; with no copy among those that answered, there is none here).
    async fn copies(&self, id: FileId) -> Result<(Vec<Option<Entry>>, u64)> {
        let (mut entries, mut unanswered) = (Vec::new(), None);
        for r in join_all(self.healers.iter().map(|h| h.child.getattr(id))).await {
            entries.push(match r {
                Ok(e) => Some(e),
                Err(e) if gone(e) => None,
                Err(e) => {
                    unanswered.get_or_insert(e);
                    None
                }
            });
        }
        match unanswered {
            Some(e) if entries.iter().any(Option::is_some) => return Err(e),
            _ => {}
        }
        let blamed = entries.iter().flatten().fold(0, |m, e| m | pending_mask(e)) & self.all();
        Ok((entries, blamed))
    }

    /// Whether no copy of `id` is free of blame (and some copy is blamed).
    fn split(entries: &[Option<Entry>], blamed: u64) -> bool {
        let present = (0..entries.len())
            .filter(|i| entries[*i].is_some())
            .fold(0, |m, i| m | bit(i));
        blamed != 0 && present != 0 && present & !blamed == 0
    }

    /// The objects in split brain among those the reachable children list as pending.
    pub(crate) async fn find_split_brains(&self) -> Result<Vec<FileId>> {
        self.connect_healers(true).await;
        let mut ids = BTreeSet::new();
        for h in &self.healers {
            let (mut after, mut seen) = (None, 0);
            while seen < LIST_LIMIT {
                let page = match h.child.list_pending(after, LIST_MAX).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!("cannot list pending heals: {e}");
                        break;
                    }
                };
                let Some(&last) = page.last() else { break };
                seen += page.len();
                after = Some(last);
                ids.extend(page);
            }
        }
        let mut out = Vec::new();
        for id in ids {
            match self.copies(id).await {
                Ok((entries, blamed)) if Self::split(&entries, blamed) => out.push(id),
                Ok(_) => {}
                // A copy that cannot be asked now may be the good one.
                Err(e) => tracing::debug!(%id, "cannot ask every copy: {e}"),
            }
        }
        Ok(out)
    }

    /// Settles a split brain of `id` in this replica set: what was done, or None when no
    /// copy here is in split brain.
    pub(crate) async fn settle_here(&self, id: FileId, how: &Settle) -> Result<Option<String>> {
        if let Settle::Source(addr) = how {
            if !(0..self.healers.len()).any(|i| self.brick_name(i) == *addr) {
                return Ok(None); // another replica set's business
            }
        }
        self.connect_healers(true).await;
        let (entries, blamed) = self.copies(id).await?;
        if !Self::split(&entries, blamed) {
            return Ok(None);
        }
        let kind = entries.iter().flatten().map(|e| e.attr.kind).next();
        let done = match kind {
            Some(FileKind::Dir) => {
                // Its attributes come from the copy named, else from the one changed last.
                let keep = match how {
                    Settle::Source(_) => self.chosen(&entries, how)?,
                    _ => match self.chosen(&entries, &Settle::LatestMtime) {
                        Ok(i) => i,
                        Err(_) => entries.iter().position(Option::is_some).ok_or(Errno::ENOENT)?,
                    },
                };
                self.merge_dir(id, &entries, keep).await?
            }
            _ => {
                let keep = self.chosen(&entries, how)?;
                self.keep_copy(id, &entries, keep).await?;
                format!("kept the copy on {}", self.brick_name(keep))
            }
        };
        self.wake_healer();
        Ok(Some(done))
    }

    fn brick_name(&self, i: usize) -> String {
        match &self.healers[i].conn {
            Some(c) => c.addr(),
            None => format!("child {i}"),
        }
    }

    /// The copy `how` keeps.
    fn chosen(&self, entries: &[Option<Entry>], how: &Settle) -> Result<usize> {
        let present = || (0..entries.len()).filter_map(|i| entries[i].as_ref().map(|e| (i, e)));
        let best = |key: &dyn Fn(&Entry) -> (i64, u32)| {
            let top = present().map(|(_, e)| key(e)).max().ok_or(Errno::ENOENT)?;
            let mut at = present().filter(|(_, e)| key(e) == top).map(|(i, _)| i);
            match (at.next(), at.next()) {
                (Some(i), None) => Ok(i),
                // A tie says nothing about which copy is right: a brick must be named.
                _ => Err(Errno::EAGAIN),
            }
        };
        match how {
            Settle::Source(addr) => present()
                .map(|(i, _)| i)
                .find(|i| self.brick_name(*i) == *addr)
                .ok_or(Errno::ENOENT),
            Settle::BiggerFile => best(&|e| (e.attr.size as i64, 0)),
            Settle::LatestMtime => best(&|e| (e.attr.mtime.sec, e.attr.mtime.nsec)),
        }
    }

    /// Makes copy `keep` the good one: no copy marks it as behind any more, and it marks
    /// every other copy as behind.
    async fn keep_copy(&self, id: FileId, entries: &[Option<Entry>], keep: usize) -> Result<()> {
        let key = pending_key(keep);
        let counts: Vec<(usize, i64)> = (entries.iter().enumerate())
            .map(|(i, e)| (i, e.as_ref().map_or(0, |e| counter(e, &key))))
            .collect();
        self.add_counts(id, &key, &counts, -1, None).await?;
        let kept = entries[keep].as_ref().ok_or(Errno::ENOENT)?;
        let marks: Vec<(String, i64)> = (0..entries.len())
            .filter(|k| *k != keep && entries[*k].is_some() && counter(kept, &pending_key(*k)) == 0)
            .map(|k| (pending_key(k), 1))
            .collect();
        if !marks.is_empty() {
            self.healers[keep].child.xattr_add(id, &marks).await?;
        }
        Ok(())
    }

    /// Merges the copies of directory `dir`: each copy gets the names only others have;
    /// then, unless a name stands for different objects on different copies, they all
    /// take the attributes of copy `keep`, and the markers go.
    async fn merge_dir(&self, dir: FileId, entries: &[Option<Entry>], keep: usize) -> Result<String> {
        let present: Vec<usize> = (0..entries.len()).filter(|i| entries[*i].is_some()).collect();
        let mut listings = Vec::new();
        for &i in &present {
            listings.push(list_dir(&self.healers[i].child, dir).await?);
        }
        // Each copy's names, with what they stand for, as it will be once merged.
        let mut names: Vec<HashMap<Vec<u8>, Option<FileId>>> = listings
            .iter()
            .map(|l| l.iter().map(|d| (d.name.clone(), entry_id(d))).collect())
            .collect();
        let (mut made, mut clashes) = (0, BTreeSet::new());
        for (b, &j) in present.iter().enumerate() {
            for d in &listings[b] {
                for (a, &i) in present.iter().enumerate() {
                    match (names[a].get(&d.name), &d.entry) {
                        (Some(id), _) if *id == entry_id(d) => {}
                        (Some(_), _) => {
                            clashes.insert(String::from_utf8_lossy(&d.name).into_owned());
                        }
                        (None, Some(e)) => {
                            let over = Via::Healer { may_move: false };
                            self.add_entry(dir, &d.name, e, &[j], i, over).await?;
                            names[a].insert(d.name.clone(), entry_id(d));
                            made += 1;
                        }
                        (None, None) => return Err(Errno::EIO),
                    }
                }
            }
        }
        if !clashes.is_empty() {
            let names: Vec<String> = clashes.into_iter().collect();
            return Ok(format!(
                "made {made} missing names; still in split brain: {} names stand for different \
                 objects on different copies (rename or remove one of each on its brick): {}",
                names.len(),
                names.join(", ")
            ));
        }
        let from = &self.healers[keep].child;
        let kept = from.getattr(dir).await?;
        for &i in present.iter().filter(|i| **i != keep) {
            copy_meta(dir, &kept, from, &self.healers[i].child).await?;
        }
        for &i in &present {
            let Some(e) = &entries[i] else { continue };
            let clear: Vec<(String, i64)> = (0..entries.len())
                .map(|k| (pending_key(k), counter(e, &pending_key(k))))
                .filter(|(_, n)| *n != 0)
                .map(|(k, n)| (k, -n))
                .collect();
            if !clear.is_empty() {
                self.healers[i].child.xattr_add(dir, &clear).await?;
            }
        }
        Ok(format!("merged the copies ({made} missing names made)"))
    }
}
