//! The brick's local file operations, all by id or by (parent id, name).
//!
//! Every path the store touches is a single checked component resolved against a directory
//! descriptor with `*at()` calls and `O_NOFOLLOW`, so no request can reach outside the brick
//! directory, whatever names it carries. Namespace changes (create, unlink, rename, ...) are
//! serialised by one lock so that the id index always matches the tree.

use crate::index::{self, Index, META_DIR};
use crate::ns::{self, Namespace};
use crate::paths;
use crate::readahead::Ahead;
use crate::sys::{self, errno, proc_path, XTarget};
use proto::outbox::Body;
use proto::piped::Piped;
use proto::{
    check_name, Attr, DirEntry, Entry, Errno, FileId, FileKind, MetaXattr, NewNode, RenameFlags, SetAttr,
    StatFs, TimeSet,
};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many directory descriptors the store keeps open for id lookups.
const DIR_CACHE: usize = 4096;
/// Reads from this size on are spliced: below it, the pipe's own system calls cost more
/// than the copies they save.
const SPLICE_FROM: usize = 64 << 10;
/// Longest chain of parent links followed when resolving a directory id.
const MAX_DEPTH: usize = 4096;
/// Internal counters named so are pending-heal markers, indexed (see [`Store::pending`]).
const PENDING: &str = "pending.";

/// Why a brick directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("brick directory {path}: {err}")]
    Open { path: PathBuf, err: Errno },
    #[error("brick directory {path} has an index of an unknown format (not a shoal brick, or a newer one)")]
    Format { path: PathBuf },
}

/// A file opened on the brick.
pub struct OpenFile {
    pub id: FileId,
    pub fd: OwnedFd,
}

/// Where an object with a given id sits.
enum Loc {
    Dir(Arc<OwnedFd>),
    File(String),
    Orphan(String),
}

pub struct Store {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    index: Index,
    ns: Namespace,
    dirs: Mutex<HashMap<FileId, Arc<OwnedFd>>>,
    ns_lock: Mutex<()>,
    xattr_lock: Mutex<()>,
    opens: Mutex<HashMap<FileId, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_flags_dir() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Store {
    /// Opens (and on first use, initialises) the brick at `root`.
    pub fn open_dir(root: &Path) -> Result<Store, StoreError> {
        let fail = |err| StoreError::Open {
            path: root.to_path_buf(),
            err,
        };
        let root_fd = rustix::fs::open(root, open_flags_dir(), Mode::empty()).map_err(|e| fail(errno(e)))?;
        let index = Index::open(root_fd.as_fd()).map_err(|e| {
            if e == Errno::EPROTO {
                StoreError::Format {
                    path: root.to_path_buf(),
                }
            } else {
                fail(e)
            }
        })?;
        let ns = pick_namespace(&root_fd).map_err(fail)?;
        let store = Store {
            root: root.to_path_buf(),
            root_fd: Arc::new(root_fd),
            index,
            ns,
            dirs: Mutex::new(HashMap::new()),
            ns_lock: Mutex::new(()),
            xattr_lock: Mutex::new(()),
            opens: Mutex::new(HashMap::new()),
        };
        let root_t = XTarget::Fd(store.root_fd.as_fd());
        let id_name = store.ns.disk_name(ns::ID);
        match sys::get(&root_t, id_name.as_bytes()).map_err(fail)? {
            Some(v) if FileId::from_bytes(&v) == Some(FileId::ROOT) => {}
            Some(_) => return Err(fail(Errno::EEXIST)),
            None => sys::set(&root_t, id_name.as_bytes(), &FileId::ROOT.to_bytes(), 0).map_err(fail)?,
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The xattr namespace of this brick's internal attributes.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    // ---- resolution -------------------------------------------------------------------

    fn dir_fd(&self, id: FileId) -> Result<Arc<OwnedFd>, Errno> {
        if id == FileId::ROOT {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = lock(&self.dirs).get(&id) {
            return Ok(fd.clone());
        }
        // Walk parent links up to the root or a cached ancestor, then open back down.
        let mut chain = Vec::new();
        let mut cur = id;
        let base = loop {
            if cur == FileId::ROOT {
                break self.root_fd.clone();
            }
            if let Some(fd) = lock(&self.dirs).get(&cur) {
                break fd.clone();
            }
            let (parent, name) = match self.index.dir_entry(cur) {
                Ok(e) => e,
                Err(Errno::ENOENT) if chain.is_empty() => {
                    return Err(if self.index.stat_file(cur).is_ok() {
                        Errno::ENOTDIR
                    } else {
                        Errno::ESTALE
                    })
                }
                Err(Errno::ENOENT) => return Err(Errno::ESTALE),
                Err(e) => return Err(e),
            };
            chain.push((cur, name));
            if chain.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            cur = parent;
        };
        let mut fd = base;
        for (cid, name) in chain.into_iter().rev() {
            check_name(&name).map_err(|_| Errno::EIO)?;
            let next = rustix::fs::openat(fd.as_fd(), name.as_slice(), open_flags_dir(), Mode::empty())
                .map_err(|e| {
                    if e == rustix::io::Errno::NOENT {
                        Errno::ESTALE
                    } else {
                        errno(e)
                    }
                })?;
            if self.fd_id(&next)? != Some(cid) {
                return Err(Errno::ESTALE);
            }
            let next = Arc::new(next);
            self.cache_dir(cid, next.clone());
            fd = next;
        }
        Ok(fd)
    }

    fn cache_dir(&self, id: FileId, fd: Arc<OwnedFd>) {
        let mut dirs = lock(&self.dirs);
        if dirs.len() >= DIR_CACHE {
            dirs.clear();
        }
        dirs.insert(id, fd);
    }

    fn fd_id(&self, fd: &OwnedFd) -> Result<Option<FileId>, Errno> {
        let v = sys::get(&XTarget::Fd(fd.as_fd()), self.ns.disk_name(ns::ID).as_bytes())?;
        Ok(v.as_deref().and_then(FileId::from_bytes))
    }

    fn locate(&self, id: FileId) -> Result<Loc, Errno> {
        if id == FileId::ROOT {
            return Ok(Loc::Dir(self.root_fd.clone()));
        }
        if let Some(fd) = lock(&self.dirs).get(&id) {
            return Ok(Loc::Dir(fd.clone()));
        }
        if self.index.stat_file(id).is_ok() {
            return Ok(Loc::File(index::key(id)));
        }
        match self.dir_fd(id) {
            Ok(fd) => Ok(Loc::Dir(fd)),
            Err(Errno::ESTALE) if self.index.is_orphan(id) => Ok(Loc::Orphan(id.to_hex())),
            Err(e) => Err(e),
        }
    }

    fn loc_target<'a>(&self, loc: &'a Loc) -> XTarget<'a> {
        match loc {
            Loc::Dir(fd) => XTarget::Fd(fd.as_fd()),
            Loc::File(k) => XTarget::Path(proc_path(self.index.ids_fd(), Some(k.as_bytes()))),
            Loc::Orphan(h) => XTarget::Path(proc_path(self.index.orphans_fd(), Some(h.as_bytes()))),
        }
    }

    fn loc_stat(&self, loc: &Loc) -> Result<Stat, Errno> {
        match loc {
            Loc::Dir(fd) => rustix::fs::fstat(fd.as_fd()).map_err(errno),
            Loc::File(k) => {
                rustix::fs::statat(self.index.ids_fd(), k.as_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
            }
            Loc::Orphan(h) => {
                rustix::fs::statat(self.index.orphans_fd(), h.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno)
            }
        }
    }

    /// Reads the id and internal xattrs of the object at `path`.
    fn read_meta(&self, t: &XTarget<'_>) -> Result<(Option<FileId>, Vec<MetaXattr>, bool), Errno> {
        self.scan_meta(t, true)
    }

    /// The object's id (unless the caller knows it: one getxattr fewer), translator
    /// metadata, and whether it carries file capabilities.
    fn scan_meta(
        &self,
        t: &XTarget<'_>,
        want_id: bool,
    ) -> Result<(Option<FileId>, Vec<MetaXattr>, bool), Errno> {
        let mut id = None;
        let mut meta = Vec::new();
        let mut caps = false;
        for name in sys::list(t)? {
            caps |= name == b"security.capability";
            let Some(internal) = self.ns.internal(&name) else {
                continue;
            };
            if (internal == ns::ID && !want_id) || internal == ns::PARENT {
                continue;
            }
            let Some(value) = sys::get(t, &name)? else {
                continue;
            };
            if internal == ns::ID {
                id = FileId::from_bytes(&value);
            } else {
                meta.push(MetaXattr {
                    name: internal.to_string(),
                    value,
                });
            }
        }
        Ok((id, meta, caps))
    }

    fn entry_at_loc(&self, id: FileId, loc: &Loc) -> Result<Entry, Errno> {
        self.entry_from(id, &self.loc_stat(loc)?, &self.loc_target(loc))
    }

    /// The entry of the object `id` with attributes `st`, whose xattrs `t` reaches.
    fn entry_from(&self, id: FileId, st: &Stat, t: &XTarget<'_>) -> Result<Entry, Errno> {
        let (_, meta, has_caps) = self.scan_meta(t, false)?;
        Ok(Entry {
            attr: sys::attr_from_stat(id, st)?,
            meta,
            has_caps,
        })
    }

    /// The object `name` in the directory `dir` (whose id is `parent`).
    fn entry_in(&self, parent: FileId, dir: BorrowedFd<'_>, name: &[u8]) -> Result<Entry, Errno> {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        let (id, meta, has_caps) = self.read_meta(&XTarget::Path(proc_path(dir, Some(name))))?;
        let id = match id {
            Some(id) => id,
            None => self.adopt(parent, dir, name, &st)?,
        };
        Ok(Entry {
            attr: sys::attr_from_stat(id, &st)?,
            meta,
            has_caps,
        })
    }

    /// Gives an id to an object that has none (put on the brick by other means than shoal,
    /// or caught between creation and labelling): it joins the index like any other.
    fn adopt(&self, parent: FileId, dir: BorrowedFd<'_>, name: &[u8], st: &Stat) -> Result<FileId, Errno> {
        let _ns = lock(&self.ns_lock);
        let t = XTarget::Path(proc_path(dir, Some(name)));
        if let Some(id) = self.read_meta(&t)?.0 {
            return Ok(id); // labelled meanwhile
        }
        let id = FileId::random();
        sys::set(&t, self.ns.disk_name(ns::ID).as_bytes(), &id.to_bytes(), 0)?;
        if FileKind::from_mode(st.st_mode) == Some(FileKind::Dir) {
            self.index.set_dir(id, parent, name)?;
        } else {
            self.index.link_file(dir, name, id)?;
        }
        tracing::info!(brick = %self.root.display(), %id, name = %String::from_utf8_lossy(name), "adopted an object without id");
        Ok(id)
    }

    fn check_entry_name(&self, parent: FileId, name: &[u8]) -> Result<(), Errno> {
        check_name(name)?;
        if parent == FileId::ROOT && name == META_DIR.as_bytes() {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    // ---- operations -------------------------------------------------------------------

    pub fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry, Errno> {
        check_name(name)?;
        if parent == FileId::ROOT && name == META_DIR.as_bytes() {
            return Err(Errno::ENOENT);
        }
        let dir = self.dir_fd(parent)?;
        self.entry_in(parent, dir.as_fd(), name)
    }

    pub fn getattr(&self, id: FileId) -> Result<Entry, Errno> {
        let loc = self.locate(id)?;
        self.entry_at_loc(id, &loc)
    }

    pub fn setattr(&self, id: FileId, fd: Option<&OwnedFd>, set: &SetAttr) -> Result<Entry, Errno> {
        let loc = self.locate(id)?;
        let st = self.loc_stat(&loc)?;
        let kind = FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
        if set.uid.is_some() || set.gid.is_some() {
            let uid = set.uid.map(rustix::fs::Uid::from_raw);
            let gid = set.gid.map(rustix::fs::Gid::from_raw);
            match &loc {
                Loc::Dir(fd) => rustix::fs::fchown(fd.as_fd(), uid, gid),
                Loc::File(k) => rustix::fs::chownat(
                    self.index.ids_fd(),
                    k.as_str(),
                    uid,
                    gid,
                    AtFlags::SYMLINK_NOFOLLOW,
                ),
                Loc::Orphan(h) => rustix::fs::chownat(
                    self.index.orphans_fd(),
                    h.as_str(),
                    uid,
                    gid,
                    AtFlags::SYMLINK_NOFOLLOW,
                ),
            }
            .map_err(errno)?;
        }
        if let Some(perm) = set.perm {
            let mode = Mode::from_raw_mode(perm & 0o7777);
            match (&loc, kind) {
                (_, FileKind::Symlink) => {}
                (Loc::Dir(fd), _) => rustix::fs::fchmod(fd.as_fd(), mode).map_err(errno)?,
                (Loc::File(k), _) => {
                    rustix::fs::chmodat(self.index.ids_fd(), k.as_str(), mode, AtFlags::empty())
                        .map_err(errno)?
                }
                (Loc::Orphan(h), _) => {
                    rustix::fs::chmodat(self.index.orphans_fd(), h.as_str(), mode, AtFlags::empty())
                        .map_err(errno)?
                }
            }
        }
        if let Some(size) = set.size {
            match kind {
                FileKind::Dir => return Err(Errno::EISDIR),
                FileKind::File => {}
                _ => return Err(Errno::EINVAL),
            }
            match fd {
                Some(fd) => rustix::fs::ftruncate(fd, size).map_err(errno)?,
                None => {
                    let f = self.open_loc(&loc, libc::O_WRONLY as u32)?;
                    rustix::fs::ftruncate(&f, size).map_err(errno)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let conv = |t: Option<TimeSet>| match t {
                None => rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                Some(TimeSet::Now) => rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                Some(TimeSet::At(t)) => rustix::fs::Timespec {
                    tv_sec: t.sec,
                    tv_nsec: t.nsec as _,
                },
            };
            let ts = rustix::fs::Timestamps {
                last_access: conv(set.atime),
                last_modification: conv(set.mtime),
            };
            match &loc {
                Loc::Dir(fd) => rustix::fs::futimens(fd.as_fd(), &ts),
                Loc::File(k) => {
                    rustix::fs::utimensat(self.index.ids_fd(), k.as_str(), &ts, AtFlags::SYMLINK_NOFOLLOW)
                }
                Loc::Orphan(h) => rustix::fs::utimensat(
                    self.index.orphans_fd(),
                    h.as_str(),
                    &ts,
                    AtFlags::SYMLINK_NOFOLLOW,
                ),
            }
            .map_err(errno)?;
        }
        self.entry_at_loc(id, &loc)
    }

    /// Makes a new object. For regular files `open` (open(2) flags) asks for a handle too.
    pub fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<OpenFile>), Errno> {
        self.check_entry_name(parent, name)?;
        if node.id.0 <= 0xffff {
            return Err(Errno::EINVAL);
        }
        for m in &node.meta {
            ns::check_meta_name(&m.name)?;
        }
        let _ns = lock(&self.ns_lock);
        // A regular file's id taken already fails its link into the index, before its name
        // appears.
        if (node.kind != FileKind::File && self.index.stat_file(node.id).is_ok())
            || self.index.dir_entry(node.id).is_ok()
        {
            return Err(Errno::EEXIST);
        }
        let dir = self.dir_fd(parent)?;
        let dir_st = rustix::fs::fstat(dir.as_fd()).map_err(errno)?;
        let setgid_dir = dir_st.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_dir { dir_st.st_gid } else { node.gid };
        let mut perm = node.perm & 0o7777;
        if setgid_dir && node.kind == FileKind::Dir {
            perm |= libc::S_ISGID;
        }
        let mut opened = None;
        match node.kind {
            FileKind::File => {
                let fd = self.make_file(&dir, parent, name, node, gid, perm)?;
                // Made just now with what the request gave it: no need to read it back.
                let entry = Entry {
                    attr: sys::attr_from_stat(node.id, &rustix::fs::fstat(&fd).map_err(errno)?)?,
                    meta: node.meta.clone(),
                    has_caps: false,
                };
                if let Some(flags) = open {
                    let fd = match flags as i32 & libc::O_ACCMODE {
                        // The file was made read-write; a writer may as well keep that.
                        libc::O_WRONLY | libc::O_RDWR => fd,
                        _ => self.reopen(&fd, flags)?,
                    };
                    self.note_open(node.id);
                    opened = Some(OpenFile { id: node.id, fd });
                }
                return Ok((entry, opened));
            }
            FileKind::Dir => {
                rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o700)).map_err(errno)?;
                let made = (|| {
                    let fd = rustix::fs::openat(dir.as_fd(), name, open_flags_dir(), Mode::empty())
                        .map_err(errno)?;
                    self.label(&XTarget::Fd(fd.as_fd()), node)?;
                    rustix::fs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(node.uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )
                    .map_err(errno)?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm)).map_err(errno)?;
                    self.index.set_dir(node.id, parent, name)?;
                    self.cache_dir(node.id, Arc::new(fd));
                    Ok(())
                })();
                if let Err(e) = made {
                    let _ = rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::REMOVEDIR);
                    return Err(e);
                }
            }
            kind => {
                match kind {
                    FileKind::Symlink => {
                        let target = symlink_target.ok_or(Errno::EINVAL)?;
                        if target.is_empty() || target.len() > 4095 || target.contains(&0) {
                            return Err(Errno::EINVAL);
                        }
                        rustix::fs::symlinkat(target, dir.as_fd(), name).map_err(errno)?;
                    }
                    _ => {
                        let ft = match kind {
                            FileKind::Fifo => rustix::fs::FileType::Fifo,
                            FileKind::Socket => rustix::fs::FileType::Socket,
                            FileKind::CharDev => rustix::fs::FileType::CharacterDevice,
                            _ => rustix::fs::FileType::BlockDevice,
                        };
                        rustix::fs::mknodat(
                            dir.as_fd(),
                            name,
                            ft,
                            Mode::from_raw_mode(0o600),
                            node.rdev as _,
                        )
                        .map_err(errno)?;
                    }
                }
                let made = (|| {
                    self.label(&XTarget::Path(proc_path(dir.as_fd(), Some(name))), node)?;
                    let (uid, g) = (
                        Some(rustix::fs::Uid::from_raw(node.uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    );
                    rustix::fs::chownat(dir.as_fd(), name, uid, g, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(errno)?;
                    if kind != FileKind::Symlink {
                        rustix::fs::chmodat(dir.as_fd(), name, Mode::from_raw_mode(perm), AtFlags::empty())
                            .map_err(errno)?;
                    }
                    self.index.link_file(dir.as_fd(), name, node.id)
                })();
                if let Err(e) = made {
                    let _ = rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty());
                    return Err(e);
                }
            }
        }
        let entry = self.entry_in(parent, dir.as_fd(), name)?;
        Ok((entry, opened))
    }

    /// Sets the id and the creation's internal xattrs.
    fn label(&self, t: &XTarget<'_>, node: &NewNode) -> Result<(), Errno> {
        sys::set(t, self.ns.disk_name(ns::ID).as_bytes(), &node.id.to_bytes(), 0)?;
        for m in &node.meta {
            sys::set(t, self.ns.disk_name(&m.name).as_bytes(), &m.value, 0)?;
        }
        Ok(())
    }

    /// Records `parent` as the directory of the regular file `t` (see `ns::PARENT`).
    fn record_parent(&self, t: &XTarget<'_>, parent: FileId) -> Result<(), Errno> {
        sys::set(t, self.ns.disk_name(ns::PARENT).as_bytes(), &parent.to_bytes(), 0)
    }

    /// The directory recorded for the regular file `id`, and its inode number.
    fn recorded_parent(&self, id: FileId) -> Option<(FileId, u64)> {
        let k = index::key(id);
        let t = XTarget::Path(proc_path(self.index.ids_fd(), Some(k.as_bytes())));
        let v = sys::get(&t, self.ns.disk_name(ns::PARENT).as_bytes()).ok()??;
        let st = self.index.stat_file(id).ok()?;
        Some((FileId::from_bytes(&v)?, st.st_ino))
    }

    /// Where the regular file `id` is: in the directory recorded, under the name there
    /// that is this very file (same inode), if it is still there. Reads that directory.
    fn file_parent(&self, id: FileId) -> Option<(FileId, Vec<u8>)> {
        let (parent, ino) = self.recorded_parent(id)?;
        let dir = self.dir_fd(parent).ok()?;
        let wanted = HashMap::from([(ino, ())]);
        let mut found = paths::names_in(&dir, &wanted, paths::Budget::default());
        Some((parent, found.remove(&ino)?))
    }

    /// Whether `id` is a regular file (or other non-directory) here.
    pub fn is_file(&self, id: FileId) -> bool {
        self.index.stat_file(id).is_ok()
    }

    /// A regular file made whole (id, owner, mode) before its name appears: an anonymous
    /// O_TMPFILE linked in at the end, so no reader ever sees it half made.
    fn make_file(
        &self,
        dir: &OwnedFd,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        gid: u32,
        perm: u32,
    ) -> Result<OwnedFd, Errno> {
        // Unnamed until linked, so it may get its permission bits at once (the umask
        // permitting): most files then need no chmod. Always writable by its owner until
        // labelled: a brick without root labels in user.* xattrs, which need that.
        let fd = match rustix::fs::openat(
            dir,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode((perm & 0o777) | 0o600),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
                return self.make_file_named(dir, parent, name, node, gid, perm)
            }
            Err(e) => return Err(errno(e)),
        };
        self.label(&XTarget::Fd(fd.as_fd()), node)?;
        self.record_parent(&XTarget::Fd(fd.as_fd()), parent)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        if st.st_uid != node.uid || st.st_gid != gid {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(node.uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(errno)?;
        }
        // (Set-id bits are never given at creation, so a chown just made cleared none.)
        if st.st_mode & 0o7777 != perm {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm)).map_err(errno)?;
        }
        link_unnamed(&fd, self.index.ids_fd(), index::key(node.id).as_str())?;
        if let Err(e) = link_unnamed(&fd, dir.as_fd(), name) {
            let _ = self.index.remove_file(node.id);
            return Err(e);
        }
        Ok(fd)
    }

    /// The same for file systems without O_TMPFILE: made under its name, labelled at once
    /// while the namespace lock keeps lookups from adopting it.
    fn make_file_named(
        &self,
        dir: &OwnedFd,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        gid: u32,
        perm: u32,
    ) -> Result<OwnedFd, Errno> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno)?;
        let made = (|| {
            self.label(&XTarget::Fd(fd.as_fd()), node)?;
            self.record_parent(&XTarget::Fd(fd.as_fd()), parent)?;
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(node.uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(errno)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm)).map_err(errno)?;
            self.index.link_file(dir.as_fd(), name, node.id)
        })();
        if let Err(e) = made {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            return Err(e);
        }
        Ok(fd)
    }

    pub fn unlink(&self, parent: FileId, name: &[u8]) -> Result<(), Errno> {
        self.unlink_unless(parent, name, None).map(|_| ())
    }

    /// Removes a name, unless what it names carries the internal xattr `keep`: then nothing
    /// changes and its entry comes back (a translator's own entries, such as distribute's
    /// pointers, need its care).
    pub fn unlink_unless(
        &self,
        parent: FileId,
        name: &[u8],
        keep: Option<&str>,
    ) -> Result<Option<Entry>, Errno> {
        self.check_entry_name(parent, name)?;
        let _ns = lock(&self.ns_lock);
        let dir = self.dir_fd(parent)?;
        let st = rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        if FileKind::from_mode(st.st_mode) == Some(FileKind::Dir) {
            return Err(Errno::EISDIR);
        }
        let (id, meta, has_caps) = self.read_meta(&XTarget::Path(proc_path(dir.as_fd(), Some(name))))?;
        if let (Some(keep), Some(id)) = (keep, id) {
            if meta.iter().any(|m| m.name == keep) {
                return Ok(Some(Entry {
                    attr: sys::attr_from_stat(id, &st)?,
                    meta,
                    has_caps,
                }));
            }
        }
        rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()).map_err(errno)?;
        if let Some(id) = id {
            self.forget_if_unnamed(id, st.st_nlink)?;
        }
        Ok(None)
    }

    /// After a name of a non-directory went away (`links` counted it, under the namespace
    /// lock, so nothing else changed it since): if only the index link is left, the file is
    /// gone for good, or an orphan while someone has it open.
    fn forget_if_unnamed(&self, id: FileId, links: u64) -> Result<(), Errno> {
        if links > 2 {
            return Ok(());
        }
        if lock(&self.opens).get(&id).copied().unwrap_or(0) > 0 {
            self.index.orphan(id)
        } else {
            self.index.remove_file(id)
        }
    }

    pub fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<(), Errno> {
        self.check_entry_name(parent, name)?;
        let _ns = lock(&self.ns_lock);
        let dir = self.dir_fd(parent)?;
        let st = rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        if FileKind::from_mode(st.st_mode) != Some(FileKind::Dir) {
            return Err(Errno::ENOTDIR);
        }
        let id = self
            .read_meta(&XTarget::Path(proc_path(dir.as_fd(), Some(name))))?
            .0;
        rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::REMOVEDIR).map_err(errno)?;
        if let Some(id) = id {
            self.index.remove_dir(id)?;
            lock(&self.dirs).remove(&id);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.check_entry_name(parent, name)?;
        self.check_entry_name(new_parent, new_name)?;
        let _ns = lock(&self.ns_lock);
        let od = self.dir_fd(parent)?;
        let nd = self.dir_fd(new_parent)?;
        let src = rustix::fs::statat(od.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        let src_dir = FileKind::from_mode(src.st_mode) == Some(FileKind::Dir);
        let src_id = self
            .read_meta(&XTarget::Path(proc_path(od.as_fd(), Some(name))))?
            .0;
        let dst = match rustix::fs::statat(nd.as_fd(), new_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let id = self
                    .read_meta(&XTarget::Path(proc_path(nd.as_fd(), Some(new_name))))?
                    .0;
                Some((FileKind::from_mode(st.st_mode), id, st.st_nlink))
            }
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(errno(e)),
        };
        let mut rflags = rustix::fs::RenameFlags::empty();
        if flags.noreplace {
            rflags |= rustix::fs::RenameFlags::NOREPLACE;
        }
        if flags.exchange {
            rflags |= rustix::fs::RenameFlags::EXCHANGE;
        }
        rustix::fs::renameat_with(od.as_fd(), name, nd.as_fd(), new_name, rflags).map_err(errno)?;
        if let (true, Some(id)) = (src_dir, src_id) {
            self.index.set_dir(id, new_parent, new_name)?;
        }
        if new_parent != parent {
            // (Best effort: a stale record is only a path not found quickly.)
            let mut moved = Vec::new();
            if FileKind::from_mode(src.st_mode) == Some(FileKind::File) {
                moved.push((nd.as_fd(), new_name, new_parent));
            }
            if flags.exchange && matches!(dst, Some((Some(FileKind::File), _, _))) {
                moved.push((od.as_fd(), name, parent));
            }
            for (dir, at, to) in moved {
                let t = XTarget::Path(proc_path(dir, Some(at)));
                if let Err(e) = self.record_parent(&t, to) {
                    tracing::debug!("cannot record a moved file's directory: {e}");
                }
            }
        }
        match dst {
            Some((Some(FileKind::Dir), Some(id), _)) if flags.exchange => {
                self.index.set_dir(id, parent, name)?
            }
            Some((Some(FileKind::Dir), Some(id), _)) if Some(id) != src_id => {
                self.index.remove_dir(id)?;
                lock(&self.dirs).remove(&id);
            }
            Some((kind, Some(id), links))
                if kind != Some(FileKind::Dir) && !flags.exchange && Some(id) != src_id =>
            {
                self.forget_if_unnamed(id, links)?
            }
            _ => {}
        }
        Ok(())
    }

    pub fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry, Errno> {
        self.check_entry_name(new_parent, new_name)?;
        let _ns = lock(&self.ns_lock);
        match self.locate(id)? {
            Loc::File(k) => {
                let nd = self.dir_fd(new_parent)?;
                rustix::fs::linkat(
                    self.index.ids_fd(),
                    k.as_str(),
                    nd.as_fd(),
                    new_name,
                    AtFlags::empty(),
                )
                .map_err(errno)?;
                self.entry_in(new_parent, nd.as_fd(), new_name)
            }
            Loc::Dir(_) => Err(Errno::EPERM),
            Loc::Orphan(_) => Err(Errno::ENOENT),
        }
    }

    pub fn readlink(&self, id: FileId) -> Result<Vec<u8>, Errno> {
        match self.locate(id)? {
            Loc::File(k) => Ok(
                rustix::fs::readlinkat(self.index.ids_fd(), k.as_str(), Vec::new())
                    .map_err(errno)?
                    .into_bytes(),
            ),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Up to `max` entries after `cookie`, without `.`/`..` (the client adds those).
    pub fn readdir(
        &self,
        id: FileId,
        cookie: u64,
        max: u32,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, bool), Errno> {
        let dir = self.dir_fd(id)?;
        // A descriptor of our own: the listing position is per open file description.
        let fd = rustix::fs::openat(dir.as_fd(), ".", open_flags_dir(), Mode::empty()).map_err(errno)?;
        if cookie != 0 {
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(cookie)).map_err(errno)?;
        }
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut raw = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut out = Vec::new();
        let max = max.clamp(1, 4096) as usize;
        while out.len() < max {
            let Some(ent) = raw.next() else {
                return Ok((out, true));
            };
            let ent = ent.map_err(errno)?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." || (id == FileId::ROOT && name == META_DIR.as_bytes()) {
                continue;
            }
            let next = ent.next_entry_cookie();
            let entry = if plus {
                match self.entry_in(id, dir.as_fd(), name) {
                    Ok(e) => Some(e),
                    Err(Errno::ENOENT) => continue, // removed meanwhile
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let kind = match (&entry, ent.file_type()) {
                (Some(e), _) => e.attr.kind,
                (None, rustix::fs::FileType::RegularFile) => FileKind::File,
                (None, rustix::fs::FileType::Directory) => FileKind::Dir,
                (None, rustix::fs::FileType::Symlink) => FileKind::Symlink,
                (None, rustix::fs::FileType::Fifo) => FileKind::Fifo,
                (None, rustix::fs::FileType::Socket) => FileKind::Socket,
                (None, rustix::fs::FileType::CharacterDevice) => FileKind::CharDev,
                (None, rustix::fs::FileType::BlockDevice) => FileKind::BlockDev,
                (None, _) => match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?,
                    Err(_) => continue,
                },
            };
            out.push(DirEntry {
                name: name.to_vec(),
                kind,
                cookie: next,
                entry,
            });
        }
        // Full batch: tell the caller whether anything follows.
        let eof = raw.next().is_none();
        Ok((out, eof))
    }

    fn open_loc(&self, loc: &Loc, flags: u32) -> Result<OwnedFd, Errno> {
        let acc = match flags as i32 & libc::O_ACCMODE {
            libc::O_WRONLY => OFlags::WRONLY,
            libc::O_RDWR => OFlags::RDWR,
            _ => OFlags::RDONLY,
        };
        let mut of = acc | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if flags as i32 & libc::O_TRUNC != 0 {
            of |= OFlags::TRUNC;
        }
        let fd = match loc {
            Loc::Dir(_) => return Err(Errno::EISDIR),
            Loc::File(k) => rustix::fs::openat(self.index.ids_fd(), k.as_str(), of, Mode::empty()),
            Loc::Orphan(h) => rustix::fs::openat(self.index.orphans_fd(), h.as_str(), of, Mode::empty()),
        }
        .map_err(errno)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        if FileKind::from_mode(st.st_mode) != Some(FileKind::File) {
            return Err(Errno::EINVAL);
        }
        Ok(fd)
    }

    fn reopen(&self, fd: &OwnedFd, flags: u32) -> Result<OwnedFd, Errno> {
        let acc = match flags as i32 & libc::O_ACCMODE {
            libc::O_WRONLY => OFlags::WRONLY,
            libc::O_RDWR => OFlags::RDWR,
            _ => OFlags::RDONLY,
        };
        rustix::fs::open(
            proc_path(fd, None).as_c_str(),
            acc | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)
    }

    fn note_open(&self, id: FileId) {
        *lock(&self.opens).entry(id).or_insert(0) += 1;
    }

    pub fn open(&self, id: FileId, flags: u32) -> Result<OpenFile, Errno> {
        let _ns = lock(&self.ns_lock);
        let loc = self.locate(id)?;
        let fd = self.open_loc(&loc, flags)?;
        self.note_open(id);
        Ok(OpenFile { id, fd })
    }

    /// True if removing `name` in `parent` frees so little that it can be done without a
    /// hand-off to a blocking thread.
    pub fn cheap_to_remove(&self, parent: FileId, name: &[u8]) -> bool {
        self.dir_fd(parent)
            .is_ok_and(|dir| small(rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)))
    }

    /// The attributes of an open file, read through its descriptor (no path to walk), and
    /// whether closing it (which may free an unlinked file) is quick enough to do at once.
    pub fn closing(&self, file: &OpenFile) -> Result<(Entry, bool), Errno> {
        let st = rustix::fs::fstat(&file.fd).map_err(errno)?;
        let entry = self.entry_from(file.id, &st, &XTarget::Fd(file.fd.as_fd()))?;
        Ok((entry, small(Ok(st))))
    }

    /// Closes a handle; the last close of an unlinked file removes it.
    pub fn close(&self, file: OpenFile) {
        let _ns = lock(&self.ns_lock);
        let mut opens = lock(&self.opens);
        let last = match opens.get_mut(&file.id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                opens.remove(&file.id);
                true
            }
        };
        drop(opens);
        // An orphan has no link but its own in the orphan directory; a file with a name has
        // its index link too.
        let orphan = last && rustix::fs::fstat(&file.fd).is_ok_and(|st| st.st_nlink <= 1);
        drop(file.fd);
        if orphan {
            let _ = self.index.remove_orphan(file.id);
        }
    }

    pub fn read(&self, file: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let size = (size as usize).min(proto::frame::MAX_DATA);
        // Read into the spare capacity: zeroing a megabyte first would cost as much as
        // a good part of the copy.
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(&file.fd, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(size);
        Ok(buf)
    }

    /// Like [`Store::read`], for a reply: a large read goes to the socket through a pipe
    /// ([`proto::piped`]), without a copy here.
    pub fn read_body(&self, file: &OpenFile, offset: u64, size: u32) -> Result<Body, Errno> {
        let size = (size as usize).min(proto::frame::MAX_DATA);
        if size >= SPLICE_FROM {
            match Piped::from_file(file.fd.as_fd(), offset, size) {
                Ok(Some(p)) => return Ok(Body::Piped(p)),
                Ok(None) => {}
                Err(e) => return Err(Errno::from(e)),
            }
        }
        self.read(file, offset, size as u32)
            .map(|buf| Body::Bytes(buf.into()))
    }

    /// Several ranges for one reply, one after the other (see `Request::ReadV`), with how
    /// many bytes each gave; through a pipe when they are large, as [`Store::read_body`].
    /// The caller bounds the ranges.
    pub fn read_ranges(&self, file: &OpenFile, ranges: &[(u64, u32)]) -> Result<(Body, Vec<u32>), Errno> {
        let total: usize = ranges.iter().map(|r| r.1 as usize).sum();
        if total >= SPLICE_FROM {
            let wanted: Vec<(u64, usize)> = ranges.iter().map(|&(o, n)| (o, n as usize)).collect();
            match Piped::from_ranges(file.fd.as_fd(), &wanted) {
                Ok(Some((p, lens))) => {
                    return Ok((Body::Piped(p), lens.into_iter().map(|n| n as u32).collect()));
                }
                Ok(None) => {}
                Err(e) => return Err(Errno::from(e)),
            }
        }
        let mut all = Vec::with_capacity(total);
        let mut lens = Vec::with_capacity(ranges.len());
        for &(offset, size) in ranges {
            let piece = self.read(file, offset, size)?;
            lens.push(piece.len() as u32);
            all.extend_from_slice(&piece);
        }
        Ok((Body::Bytes(all.into()), lens))
    }

    /// Starts reading `ahead` into the page cache (without waiting for it).
    pub fn read_ahead(&self, file: &OpenFile, ahead: Ahead) {
        for (offset, len) in ahead.ranges() {
            let len = std::num::NonZeroU64::new(len);
            if rustix::fs::fadvise(&file.fd, offset, len, rustix::fs::Advice::WillNeed).is_err() {
                return;
            }
        }
    }

    pub fn write(&self, file: &OpenFile, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&file.fd, &data[done..], offset + done as u64) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) if done > 0 => {
                    tracing::debug!("short write: {e}");
                    break;
                }
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(done as u32)
    }

    pub fn fsync(&self, file: &OpenFile, datasync: bool) -> Result<(), Errno> {
        if datasync {
            rustix::fs::fdatasync(&file.fd).map_err(errno)
        } else {
            rustix::fs::fsync(&file.fd).map_err(errno)
        }
    }

    pub fn fallocate(&self, file: &OpenFile, mode: u32, offset: u64, len: u64) -> Result<(), Errno> {
        let flags = rustix::fs::FallocateFlags::from_bits(mode).ok_or(Errno::EOPNOTSUPP)?;
        rustix::fs::fallocate(&file.fd, flags, offset, len).map_err(errno)
    }

    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let s = rustix::fs::fstatvfs(self.root_fd.as_fd()).map_err(errno)?;
        Ok(StatFs {
            bsize: s.f_bsize as u32,
            frsize: s.f_frsize as u32,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            namemax: s.f_namemax as u32,
        })
    }

    // ---- xattrs -----------------------------------------------------------------------

    pub fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>, Errno> {
        ns::check_user_name(&self.ns, name)?;
        let loc = self.locate(id)?;
        sys::get(&self.loc_target(&loc), name)?.ok_or(Errno::ENODATA)
    }

    pub fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        ns::check_user_name(&self.ns, name)?;
        if value.len() > sys::XATTR_MAX {
            return Err(Errno::E2BIG);
        }
        let loc = self.locate(id)?;
        sys::set(&self.loc_target(&loc), name, value, flags)
    }

    pub fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>, Errno> {
        let loc = self.locate(id)?;
        let mut names = sys::list(&self.loc_target(&loc))?;
        names.retain(|n| !self.ns.is_reserved(n));
        Ok(names)
    }

    pub fn removexattr(&self, id: FileId, name: &[u8]) -> Result<(), Errno> {
        ns::check_user_name(&self.ns, name)?;
        let loc = self.locate(id)?;
        sys::remove(&self.loc_target(&loc), name)
    }

    /// Adds deltas to internal 64-bit counters, none taken below zero; a counter at zero is
    /// removed.
    pub fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<Vec<(String, i64)>, Errno> {
        for (name, _) in deltas {
            ns::check_meta_name(name)?;
        }
        let loc = self.locate(id)?;
        let t = self.loc_target(&loc);
        let _x = lock(&self.xattr_lock);
        let mut out = Vec::with_capacity(deltas.len());
        for (name, delta) in deltas {
            let disk = self.ns.disk_name(name);
            let cur = match sys::get(&t, disk.as_bytes())? {
                Some(v) => i64::from_be_bytes(v.as_slice().try_into().map_err(|_| Errno::EIO)?),
                None => 0,
            };
            // Never below zero: a heal takes off only what it counted, so taking off more
            // than is there means a count taken off twice, and a negative count would
            // cancel the marker of a change missed later.
            let new = match cur.saturating_add(*delta) {
                n if *delta < 0 => n.max(0),
                n => n,
            };
            if new == 0 {
                match sys::remove(&t, disk.as_bytes()) {
                    Ok(()) | Err(Errno::ENODATA) => {}
                    Err(e) => return Err(e),
                }
            } else {
                sys::set(&t, disk.as_bytes(), &new.to_be_bytes(), 0)?;
            }
            out.push((name.clone(), new));
        }
        if deltas.iter().any(|(name, _)| name.starts_with(PENDING)) {
            // Listed while any of its pending-heal counters is set, so that healing finds it
            // without walking the brick.
            let prefix = self.ns.disk_name(PENDING);
            let names = sys::list(&t)?;
            let any = names.iter().any(|n| n.starts_with(prefix.as_bytes()));
            self.index.set_pending(id, any)?;
        }
        Ok(out)
    }

    /// Each object's path from the brick root (`/a/b`), where it has one and, for a file,
    /// from where it is recorded (`ns::PARENT`), else where the search finds it within
    /// `budget` (see `crate::paths`).
    pub fn paths_of(&self, ids: &[FileId], budget: paths::Budget) -> Vec<Option<Vec<u8>>> {
        let mut out = vec![None; ids.len()];
        let (mut inodes, mut files) = (HashMap::new(), Vec::new());
        // Files by recorded directory, each directory read once.
        let mut by_dir: HashMap<FileId, Vec<(usize, u64)>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            match self.dir_path(*id) {
                Ok(p) => out[i] = Some(p),
                Err(_) => match self.recorded_parent(*id) {
                    Some((parent, ino)) => by_dir.entry(parent).or_default().push((i, ino)),
                    None => {
                        if let Ok(st) = self.index.stat_file(*id) {
                            inodes.insert(st.st_ino, ());
                            files.push((i, st.st_ino));
                        }
                    }
                },
            }
        }
        let deadline = std::time::Instant::now() + budget.time;
        for (parent, wanted) in by_dir {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let dir = self.dir_fd(parent).ok().zip(self.dir_path(parent).ok());
            let found = match &dir {
                Some((fd, _)) if !left.is_zero() => {
                    let inos = wanted.iter().map(|(_, ino)| (*ino, ())).collect();
                    paths::names_in(fd, &inos, paths::Budget { time: left, ..budget })
                }
                _ => HashMap::new(),
            };
            for (i, ino) in wanted {
                match (found.get(&ino), &dir) {
                    (Some(name), Some((_, p))) => {
                        let mut p = p.clone();
                        if p != b"/" {
                            p.push(b'/');
                        }
                        p.extend_from_slice(name);
                        out[i] = Some(p);
                    }
                    // Left that directory (through a hard link): searched for below.
                    _ => {
                        inodes.insert(ino, ());
                        files.push((i, ino));
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let found = paths::find_inodes(&self.root_fd, &inodes, paths::Budget { time: left, ..budget });
        for (i, ino) in files {
            out[i] = found.get(&ino).cloned();
        }
        out
    }

    /// A directory's path, up its parent links.
    fn dir_path(&self, id: FileId) -> Result<Vec<u8>, Errno> {
        if id == FileId::ROOT {
            return Ok(b"/".to_vec());
        }
        let mut names = Vec::new();
        let mut cur = id;
        while cur != FileId::ROOT {
            if names.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let (parent, name) = self.index.dir_entry(cur)?;
            names.push(name);
            cur = parent;
        }
        let mut path = Vec::new();
        for n in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(n);
        }
        Ok(path)
    }

    /// A directory's parent and its name there; for a regular file, the directory it was
    /// made in or last moved to, and its name there, if it still has one (ENOTDIR
    /// otherwise).
    pub fn dir_parent(&self, id: FileId) -> Result<(FileId, Vec<u8>), Errno> {
        if id == FileId::ROOT {
            return Err(Errno::EINVAL);
        }
        match self.index.dir_entry(id) {
            Err(Errno::ENOENT) if self.index.stat_file(id).is_ok() => {
                self.file_parent(id).ok_or(Errno::ENOTDIR)
            }
            r => r,
        }
    }

    /// Up to `max` objects that carry pending-heal counters, in id order after `after`.
    /// Objects that are gone since are dropped from the list on the way.
    pub fn pending(&self, after: Option<FileId>, max: usize) -> Result<Vec<FileId>, Errno> {
        let mut out = Vec::new();
        for id in self.index.pending(after, max)? {
            match self.locate(id) {
                Ok(_) => out.push(id),
                Err(Errno::ENOENT) | Err(Errno::ESTALE) => self.index.set_pending(id, false)?,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Handles open on `id` (by any connection).
    pub fn open_count(&self, id: FileId) -> u32 {
        lock(&self.opens).get(&id).copied().unwrap_or(0)
    }

    /// Sets (Some) or removes (None) internal xattrs.
    pub fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<(), Errno> {
        for (name, value) in meta {
            ns::check_meta_name(name)?;
            if value.as_ref().is_some_and(|v| v.len() > sys::XATTR_MAX) {
                return Err(Errno::E2BIG);
            }
        }
        let loc = self.locate(id)?;
        let t = self.loc_target(&loc);
        let _x = lock(&self.xattr_lock);
        for (name, value) in meta {
            let disk = self.ns.disk_name(name);
            match value {
                Some(v) => sys::set(&t, disk.as_bytes(), v, 0)?,
                None => match sys::remove(&t, disk.as_bytes()) {
                    Ok(()) | Err(Errno::ENODATA) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// The kind of object an id names (for lock requests, which only apply to files).
    pub fn kind(&self, id: FileId) -> Result<FileKind, Errno> {
        let loc = self.locate(id)?;
        FileKind::from_mode(self.loc_stat(&loc)?.st_mode).ok_or(Errno::EIO)
    }

    /// Attributes of an id, with the path-free form used for replies.
    pub fn attr(&self, id: FileId) -> Result<Attr, Errno> {
        Ok(self.getattr(id)?.attr)
    }
}

/// `trusted.` needs CAP_SYS_ADMIN; without it, fall back to `user.`.
fn pick_namespace(root: &OwnedFd) -> Result<Namespace, Errno> {
    let t = XTarget::Fd(root.as_fd());
    let probe = Namespace::TRUSTED.disk_name("probe");
    match sys::set(&t, probe.as_bytes(), b"1", 0) {
        Ok(()) => {
            let _ = sys::remove(&t, probe.as_bytes());
            Ok(Namespace::TRUSTED)
        }
        Err(Errno::EPERM) => Ok(Namespace::USER),
        Err(Errno::EOPNOTSUPP) => {
            tracing::error!("the brick's file system does not support extended attributes");
            Err(Errno::EOPNOTSUPP)
        }
        Err(e) => Err(e),
    }
}

/// Gives the open file `fd` the name `name` in `dir`. Straight from the descriptor if the
/// brick may (CAP_DAC_READ_SEARCH, as when run as root), else through its /proc path, whose
/// walk costs as much as the link itself.
fn link_unnamed<P: rustix::path::Arg + Copy>(
    fd: &OwnedFd,
    dir: BorrowedFd<'_>,
    name: P,
) -> Result<(), Errno> {
    match rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH) {
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path(fd, None).as_c_str(),
            dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(errno),
        r => r.map_err(errno),
    }
}

/// At most 1 MiB allocated: freeing it is quick.
fn small(st: rustix::io::Result<Stat>) -> bool {
    st.is_ok_and(|st| (st.st_blocks as u64) <= 2048)
}
