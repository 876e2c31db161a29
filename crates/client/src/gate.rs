//! A gate in front of a volume: closed while the volume is stopped, so every operation
//! fails at once with "transport endpoint is not connected" instead of waiting on bricks
//! that are going away; opened again when the volume restarts.

use crate::xlator::{Child, DirCursor, DirPage, Handle, HealReport, Result, Xlator};
use async_trait::async_trait;
use bytes::Bytes;
use proto::{Entry, Errno, FileId, Lock, NewNode, RenameFlags, SetAttr, StatFs};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Gate {
    inner: Child,
    open: AtomicBool,
}

impl Gate {
    pub fn new(inner: Child, open: bool) -> Gate {
        Gate {
            inner,
            open: AtomicBool::new(open),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    fn pass(&self) -> Result<&Child> {
        if self.open.load(Ordering::SeqCst) {
            Ok(&self.inner)
        } else {
            Err(Errno::ENOTCONN)
        }
    }
}

#[async_trait]
impl Xlator for Gate {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry> {
        self.pass()?.lookup(parent, name).await
    }
    async fn getattr(&self, id: FileId) -> Result<Entry> {
        self.pass()?.getattr(id).await
    }
    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry> {
        self.pass()?.setattr(id, h, set).await
    }
    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        self.pass()?
            .create(parent, name, node, symlink_target, open)
            .await
    }
    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.pass()?.unlink(parent, name).await
    }
    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.pass()?.rmdir(parent, name).await
    }
    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.pass()?
            .rename(parent, name, new_parent, new_name, flags)
            .await
    }
    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        self.pass()?.link(id, new_parent, new_name).await
    }
    async fn readlink(&self, id: FileId) -> Result<Vec<u8>> {
        self.pass()?.readlink(id).await
    }
    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        self.pass()?.readdir(id, cursor, plus).await
    }
    async fn open(&self, id: FileId, flags: u32) -> Result<Handle> {
        self.pass()?.open(id, flags).await
    }
    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes> {
        self.pass()?.read(h, offset, size).await
    }
    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32> {
        self.pass()?.write(h, offset, data).await
    }
    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()> {
        self.pass()?.fsync(h, datasync).await
    }
    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()> {
        self.pass()?.flush(h, lock_owner).await
    }
    async fn release(&self, h: &Handle) -> Result<Option<Entry>> {
        // Handles are always let go, gate or not.
        self.inner.release(h).await
    }
    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()> {
        self.pass()?.fallocate(h, mode, offset, len).await
    }
    async fn statfs(&self) -> Result<StatFs> {
        self.pass()?.statfs().await
    }
    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>> {
        self.pass()?.getxattr(id, name).await
    }
    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.pass()?.setxattr(id, name, value, flags).await
    }
    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>> {
        self.pass()?.listxattr(id).await
    }
    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()> {
        self.pass()?.removexattr(id, name).await
    }
    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()> {
        self.pass()?.xattr_add(id, deltas).await
    }
    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        self.pass()?.set_meta(id, meta).await
    }
    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock> {
        self.pass()?.getlk(id, lock).await
    }
    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()> {
        self.pass()?.setlk(id, lock, wait).await
    }
    fn is_up(&self) -> bool {
        self.open.load(Ordering::SeqCst) && self.inner.is_up()
    }

    async fn caught_up(&self) -> bool {
        self.inner.caught_up().await
    }

    async fn heal(&self) -> Result<HealReport> {
        self.pass()?.heal().await
    }

    async fn split_brains(&self) -> Result<Vec<FileId>> {
        self.pass()?.split_brains().await
    }

    async fn settle(&self, id: FileId, how: &crate::split_brain::Settle) -> Result<Vec<String>> {
        self.pass()?.settle(id, how).await
    }
}
