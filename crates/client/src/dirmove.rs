//! Replicate's heal of a directory moved while a copy was away: it is moved on that copy
//! too, with all it holds, rather than removed there and made again empty (which copies
//! every file under it once more).
//!
//! The heal of the directory it is in now moves it, from where the copy still has it. A
//! move renames on the stale brick, holding the guards of both directories (the heal's own,
//! and the other's taken without waiting: EBUSY, another heal has it, and this one is left
//! for later, so two heals never wait on each other), after checking that the old name
//! still holds it. Moves run one at a time in a client (`Replicate::moves`): a move looks a
//! name up and then renames it, and another move must not change it in between. Where the
//! new name is held on the copy by another directory that moved away too (two that traded
//! names), the two trade places there as well.
//!
//! The heal of the directory it left leaves it alone and is redone at the end of the pass;
//! if it is still there then, that heal moves it itself where the good copy has it now.
//! Only a move that cannot be (a cycle on the stale copy) removes it, for the heal to make
//! it again.

use crate::heal::gone;
use crate::replicate::Replicate;
use crate::xlator::{Child, Result};
use proto::{Errno, FileId, FileKind, RenameFlags};

impl Replicate {
    /// Moves directory `id` on the copy `to` from `from` to `at`, with `good` a good copy;
    /// this heal holds the guard of directory `held`, and takes the others' without
    /// waiting. Nothing is removed if it fails. (Under `Replicate::moves`.)
    pub(crate) async fn move_dir(
        &self,
        good: &Child,
        to: &Child,
        id: FileId,
        from: (FileId, &[u8]),
        at: (FileId, &[u8]),
        held: FileId,
    ) -> Result<()> {
        let mut guarded = Vec::new();
        for d in [from.0, at.0] {
            if d == held || guarded.contains(&d) {
                continue;
            }
            if let Err(e) = to.heal_begin(d, true).await {
                end_guards(to, &guarded).await;
                return Err(e);
            }
            guarded.push(d);
        }
        let r = self.rename_dir(good, to, id, from, at).await;
        end_guards(to, &guarded).await;
        r
    }

    /// The rename of `move_dir`, its guards held.
    async fn rename_dir(
        &self,
        good: &Child,
        to: &Child,
        id: FileId,
        from: (FileId, &[u8]),
        at: (FileId, &[u8]),
    ) -> Result<()> {
        match to.lookup(from.0, from.1).await {
            Ok(e) if e.attr.id == id => {}
            Ok(_) => return Err(Errno::ESTALE),
            Err(e) => return Err(e),
        }
        let noreplace = RenameFlags {
            noreplace: true,
            ..RenameFlags::default()
        };
        match to.rename(from.0, from.1, at.0, at.1, noreplace).await {
            Err(Errno::EEXIST) if moved_away(good, to, at).await? => {
                let swap = RenameFlags {
                    exchange: true,
                    ..RenameFlags::default()
                };
                to.rename(from.0, from.1, at.0, at.1, swap).await
            }
            r => r,
        }
    }

    /// Moves directory `id`, which child `s` still has as `name` in `dir` (whose heal this
    /// is), to where the good copies `sources` have it now: the last try of a pass, the
    /// heal of its new parent not having moved it.
    pub(crate) async fn move_out(
        &self,
        id: FileId,
        dir: FileId,
        name: &[u8],
        sources: &[usize],
        s: usize,
    ) -> Result<()> {
        let (good, to) = (self.healer(sources[0]), self.healer(s));
        let (parent, new) = good.dir_parent(id).await?;
        let _one = self.moves.lock().await;
        self.move_dir(good, to, id, (dir, name), (parent, &new), dir)
            .await
    }
}

/// Whether a failed move can never be made (a cycle on the stale copy: the directory would
/// go under itself), so that the directory is better removed and made again.
pub(crate) fn cannot_move(e: Errno) -> bool {
    matches!(e, Errno::EINVAL | Errno::ELOOP)
}

/// (Errors ending a guard change nothing: nothing was copied under it.)
async fn end_guards(to: &Child, dirs: &[FileId]) {
    for &d in dirs {
        let _ = to.heal_end(d, true).await;
    }
}

/// Whether the copy `to` has at `at` a directory that the good copy `good` has elsewhere:
/// it moved away too.
async fn moved_away(good: &Child, to: &Child, at: (FileId, &[u8])) -> Result<bool> {
    let here = match to.lookup(at.0, at.1).await {
        Ok(e) if e.attr.kind == FileKind::Dir => e.attr.id,
        Ok(_) => return Ok(false),
        Err(e) if gone(e) => return Ok(false),
        Err(e) => return Err(e),
    };
    let there = match good.lookup(at.0, at.1).await {
        Ok(e) => Some(e.attr.id),
        Err(e) if gone(e) => None,
        Err(e) => return Err(e),
    };
    match good.getattr(here).await {
        Ok(e) => Ok(e.attr.kind == FileKind::Dir && there != Some(here)),
        Err(e) if gone(e) => Ok(false),
        Err(e) => Err(e),
    }
}
