//! The translator trait: one async file-system interface that bricks and every layout
//! implement, so that layouts compose (distribute over replicate, stripe over replicate,
//! disperse later) while each knows only its children.

use crate::split_brain::Settle;
use async_trait::async_trait;
use bytes::Bytes;
use proto::{DirEntry, Entry, Errno, FileId, Lock, NewNode, RenameFlags, SetAttr, StatFs};
use std::sync::Arc;

pub type Result<T> = std::result::Result<T, Errno>;

/// An open file as a translator tree sees it. Each layer adds its own shape: a brick
/// handle at the leaves, the chosen child for distribute, one handle per child for stripe,
/// per-child handles (where the child could open it) and heal bookkeeping for replicate.
pub enum Handle {
    Brick(Arc<crate::protocol::BrickFile>),
    One(usize, Box<Handle>),
    Stripe(Box<crate::stripe::StripeHandle>),
    Replica(Box<crate::replicate::ReplicaHandle>),
}

/// Where a directory listing resumes: each layer keeps its part (distribute: which child;
/// a brick: its cookie). Empty means the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirCursor(pub Vec<u64>);

/// One batch of a listing; `next` is None at the end.
#[derive(Debug, Default)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    pub next: Option<DirCursor>,
}

#[async_trait]
pub trait Xlator: Send + Sync {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry>;
    async fn getattr(&self, id: FileId) -> Result<Entry>;
    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry>;
    /// Makes a file, directory, symlink or special file. With `open` (open(2) flags) a
    /// regular file comes back open.
    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)>;
    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()>;
    /// Unlinks, unless the entry carries the internal xattr `keep`: then nothing changes and
    /// the entry comes back. ENOSYS from layers that cannot tell in one step.
    async fn unlink_unless(&self, _parent: FileId, _name: &[u8], _keep: &str) -> Result<Option<Entry>> {
        Err(Errno::ENOSYS)
    }
    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()>;
    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()>;
    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry>;
    async fn readlink(&self, id: FileId) -> Result<Vec<u8>>;
    /// A page of the listing of `id` from `cursor`. With `plus`, entries carry their objects.
    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage>;
    async fn open(&self, id: FileId, flags: u32) -> Result<Handle>;
    /// `open`, except that a brick whose copy another client is healing answers EBUSY at
    /// once instead of after the heal (replicate opens on the other copies meanwhile).
    async fn open_now(&self, id: FileId, flags: u32) -> Result<Handle> {
        self.open(id, flags).await
    }
    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes>;
    /// Several ranges of one file, each as `read` gives it (short at the end of the file).
    /// Bricks answer them in one request; by default each is a read of its own.
    async fn read_ranges(&self, h: &Handle, ranges: &[(u64, u32)]) -> Result<Vec<Bytes>> {
        read_each(self, h, ranges).await
    }
    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32>;
    /// Writes several pieces of one file, `(offset, bytes)`: how many bytes of each were
    /// written, in order, stopping after the first that fell short (an error only if none
    /// was written). Bricks take them in one request; by default each is a write of its own.
    async fn write_ranges(&self, h: &Handle, pieces: &[(u64, Bytes)]) -> Result<Vec<u32>> {
        write_each(self, h, pieces).await
    }
    /// A write that also adds `mark` to the file's internal counters on this copy once the
    /// data is written (replication marks the copies a write misses with the write itself).
    /// Only bricks can: others refuse a non-empty `mark` with ENOSYS.
    async fn write_marked(
        &self,
        h: &Handle,
        offset: u64,
        data: Bytes,
        mark: &[(String, i64)],
    ) -> Result<u32> {
        match mark.is_empty() {
            true => self.write(h, offset, data).await,
            false => Err(Errno::ENOSYS),
        }
    }
    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()>;
    /// One close(2) of the file by the process owning `lock_owner`: drops its locks.
    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()>;
    /// Lets go of a handle; returns the file's attributes as it was closed when this layer
    /// can tell them (the front end may then answer the next stat itself).
    async fn release(&self, h: &Handle) -> Result<Option<Entry>>;
    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()>;
    async fn statfs(&self) -> Result<StatFs>;
    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>>;
    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()>;
    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>>;
    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()>;
    /// Adds to internal counters (pending-heal markers) on every copy.
    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()>;
    /// Sets or removes internal xattrs on every copy.
    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()>;
    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock>;
    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()>;
    /// Whether this subtree can serve requests now (for quorum and read-child choices).
    fn is_up(&self) -> bool;
    /// Waits until every announcement of another client's change that reached this subtree
    /// has been handed on (`proto::rpc::Conn::caught_up`); false if that cannot be vouched
    /// for (a brick unreachable or slow to catch up): what is cached may then be stale.
    async fn caught_up(&self) -> bool;

    /// Bricks only: begins healing `id` here (see `proto::msg::Request::HealBegin`).
    async fn heal_begin(&self, _id: FileId, _guard: bool) -> Result<()> {
        Err(Errno::ENOSYS)
    }
    /// Bricks only: ends what `heal_begin` started; for a watch, whether another client
    /// changed the object meanwhile.
    async fn heal_end(&self, _id: FileId, _guard: bool) -> Result<bool> {
        Err(Errno::ENOSYS)
    }
    /// Bricks only: takes (waiting until granted) or gives up the write order of `id` (see
    /// `proto::msg::Request::Order`).
    async fn order(&self, _id: FileId, _take: bool) -> Result<()> {
        Err(Errno::ENOSYS)
    }
    /// Bricks only: the generation of the connection (orders taken on another are void).
    fn generation(&self) -> u64 {
        0
    }
    /// A directory's parent and its name there (bricks, and the layers that keep every
    /// directory whole on each of their children).
    async fn dir_parent(&self, _id: FileId) -> Result<(FileId, Vec<u8>)> {
        Err(Errno::ENOSYS)
    }
    /// Bricks only: objects that carry pending-heal markers, in id order after `after`.
    async fn list_pending(&self, _after: Option<FileId>, _max: u32) -> Result<Vec<FileId>> {
        Err(Errno::ENOSYS)
    }
    /// Repairs every copy this subtree knows to be behind and can reach now.
    async fn heal(&self) -> Result<HealReport> {
        Ok(HealReport::default())
    }
    /// Objects whose copies each mark another as behind (split brain), which wait for an
    /// administrator (`crate::split_brain`).
    async fn split_brains(&self) -> Result<Vec<FileId>> {
        Ok(Vec::new())
    }
    /// Settles a split brain of `id` in each replica set that holds one: what was done in
    /// each.
    async fn settle(&self, _id: FileId, _how: &Settle) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// What one pass of healing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Objects whose stale copies were repaired.
    pub healed: u64,
    /// Objects left for a later pass: open elsewhere, changed during the heal, a copy
    /// unreachable, or an error.
    pub left: u64,
    /// Objects whose copies each mark another as behind: an administrator must choose.
    pub split_brain: u64,
}

impl std::ops::AddAssign for HealReport {
    fn add_assign(&mut self, o: HealReport) {
        self.healed += o.healed;
        self.left += o.left;
        self.split_brain += o.split_brain;
    }
}

/// Shorthand for a shared translator.
pub type Child = Arc<dyn Xlator>;

/// Heals each child in turn and adds up what they did.
pub async fn heal_all(children: &[Child]) -> Result<HealReport> {
    let mut total = HealReport::default();
    for c in children {
        total += c.heal().await?;
    }
    Ok(total)
}

/// `Xlator::read_ranges` as a read per range, all at once.
pub async fn read_each<X: Xlator + ?Sized>(x: &X, h: &Handle, ranges: &[(u64, u32)]) -> Result<Vec<Bytes>> {
    let reads = ranges.iter().map(|&(offset, size)| x.read(h, offset, size));
    futures_util::future::join_all(reads).await.into_iter().collect()
}

/// `Xlator::write_ranges` as a write per piece, all at once.
pub async fn write_each<X: Xlator + ?Sized>(x: &X, h: &Handle, pieces: &[(u64, Bytes)]) -> Result<Vec<u32>> {
    let writes = pieces
        .iter()
        .map(|(offset, data)| x.write(h, *offset, data.clone()));
    written_in_order(pieces, futures_util::future::join_all(writes).await)
}

/// What `Xlator::write_ranges` answers, out of each piece's own write.
fn written_in_order(pieces: &[(u64, Bytes)], results: Vec<Result<u32>>) -> Result<Vec<u32>> {
    let mut written = Vec::with_capacity(pieces.len());
    for ((_, data), r) in pieces.iter().zip(results) {
        match r {
            Ok(n) => {
                written.push(n);
                if (n as usize) < data.len() {
                    break;
                }
            }
            Err(e) if written.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(written)
}

/// Waits for every child to catch up (see [`Xlator::caught_up`]).
pub async fn caught_up_all(children: &[Child]) -> bool {
    let all = futures_util::future::join_all(children.iter().map(|c| c.caught_up())).await;
    all.into_iter().all(|c| c)
}

/// The split brains of every child, each object once.
pub async fn split_brains_all(children: &[Child]) -> Result<Vec<FileId>> {
    let mut all = std::collections::BTreeSet::new();
    for c in children {
        all.extend(c.split_brains().await?);
    }
    Ok(all.into_iter().collect())
}

/// Settles `id` in every child that holds a split brain of it. A child that cannot tell
/// does not keep the others from settling theirs; its error is the answer only if none did.
pub async fn settle_all(children: &[Child], id: FileId, how: &Settle) -> Result<Vec<String>> {
    let (mut done, mut failed) = (Vec::new(), None);
    for c in children {
        match c.settle(id, how).await {
            Ok(d) => done.extend(d),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) if done.is_empty() => Err(e),
        _ => Ok(done),
    }
}

/// How long the undo of a rename waits for a child whose connection failed.
const UNDO_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a child's rename that failed with `e` may have been made all the same (its
/// answer lost with the connection), and is to be taken back too: not an exchange, which
/// made twice would undo itself.
pub(crate) fn may_have_renamed(e: Errno, flags: RenameFlags) -> bool {
    e.is_transport() && !flags.exchange
}

/// Takes back on child `i` the rename of `name` in `parent` to `new_name` in
/// `new_parent` (made with `flags`) that failed on another child; nothing to do where it
/// was not made (ENOENT: its answer was lost). A lost connection fails every request in
/// flight at once, so one that fails for want of the child is sent again once it is
/// reachable, for a while. What cannot be taken back is logged.
pub(crate) async fn undo_rename(
    c: &Child,
    i: usize,
    parent: FileId,
    name: &[u8],
    new_parent: FileId,
    new_name: &[u8],
    flags: RenameFlags,
) {
    // An exchange is undone by itself; a rename back must not replace anything.
    let back = match flags.exchange {
        true => flags,
        false => RenameFlags {
            noreplace: true,
            ..RenameFlags::default()
        },
    };
    let deadline = std::time::Instant::now() + UNDO_PATIENCE;
    loop {
        match c.rename(new_parent, new_name, parent, name, back).await {
            Err(e) if e.is_transport() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Ok(()) | Err(Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!(
                    child = i,
                    "cannot take back a rename that failed on another child: {e}"
                );
                return;
            }
        }
    }
}
