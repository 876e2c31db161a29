//! A file's life on the brick's disk: its index link, hard links, the orphan it becomes when
//! its last name goes while it is open, and that nothing of it is left once it is gone.

mod common;

use common::new_file as node;
use proto::{FileId, FileKind, NewNode, RenameFlags};
use shoal_brick::Store;
use std::path::Path;

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

fn orphans(root: &Path) -> Vec<String> {
    files(&root.join(".shoal/orphans"))
}

fn index(root: &Path) -> Vec<String> {
    files(&root.join(".shoal/ids"))
}

#[test]
fn a_file_leaves_nothing_behind_however_its_last_name_goes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Store::open_dir(root).unwrap();
    let p = FileId::ROOT;
    let rw = libc::O_RDWR as u32;

    // Created and opened at once, linked into the index and under its name.
    let a = node(root);
    let (e, f) = store.create(p, b"a", &a, None, Some(rw)).unwrap();
    assert_eq!((e.attr.id, e.attr.nlink), (a.id, 1));
    assert_eq!(index(root).len(), 1);
    let f = f.unwrap();
    store.write(&f, 0, b"kept").unwrap();

    // A second name keeps it when the first goes, open or not.
    store.link(a.id, p, b"b").unwrap();
    store.unlink(p, b"a").unwrap();
    assert!(orphans(root).is_empty());
    assert_eq!(index(root).len(), 1);

    // Its last name gone while open: an orphan, still readable, until it is closed.
    store.unlink(p, b"b").unwrap();
    assert_eq!(orphans(root).len(), 1);
    assert!(index(root).is_empty());
    assert_eq!(store.read(&f, 0, 16).unwrap(), b"kept");
    // Two handles: the first close keeps it for the second.
    let f2 = store.open(a.id, rw).unwrap();
    store.close(f);
    assert_eq!(orphans(root).len(), 1);
    store.close(f2);
    assert!(orphans(root).is_empty(), "{:?}", orphans(root));

    // Closed with its names intact: nothing is removed.
    let c = node(root);
    let (_, f) = store.create(p, b"c", &c, None, Some(rw)).unwrap();
    store.close(f.unwrap());
    assert_eq!(store.lookup(p, b"c").unwrap().attr.id, c.id);
    assert_eq!(index(root).len(), 1);

    // Replaced by a rename while open: an orphan until closed.
    let f = store.open(c.id, rw).unwrap();
    let d = node(root);
    store.create(p, b"d", &d, None, None).unwrap();
    store.rename(p, b"d", p, b"c", RenameFlags::default()).unwrap();
    assert_eq!(orphans(root).len(), 1);
    store.close(f);
    assert!(orphans(root).is_empty());

    // Replaced while closed, then unlinked: gone from the index at once.
    let e2 = node(root);
    store.create(p, b"e", &e2, None, None).unwrap();
    store.rename(p, b"e", p, b"c", RenameFlags::default()).unwrap();
    assert_eq!(index(root).len(), 1);
    store.unlink(p, b"c").unwrap();
    assert!(index(root).is_empty());
    assert!(orphans(root).is_empty());
    // An index link lost by hand (two names, no index link): unlinking one name, open or
    // not, leaves the other alone.
    let g = node(root);
    let (_, f) = store.create(p, b"g", &g, None, Some(rw)).unwrap();
    std::fs::remove_file(&index(root)[0]).unwrap();
    std::fs::hard_link(root.join("g"), root.join("h")).unwrap();
    store.unlink(p, b"g").unwrap();
    store.close(f.unwrap());
    assert_eq!(std::fs::read_to_string(root.join("h")).unwrap(), "");
    std::fs::remove_file(root.join("h")).unwrap();
    assert!(index(root).is_empty() && orphans(root).is_empty());

    let names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".shoal")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn objects_with_pending_markers_are_listed_in_pages_until_their_markers_go() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Store::open_dir(root).unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let n = node(root);
        store
            .create(FileId::ROOT, format!("f{i}").as_bytes(), &n, None, None)
            .unwrap();
        store.xattr_add(n.id, &[("pending.1".into(), 1)]).unwrap();
        ids.push(n.id);
    }
    // Other counters do not list an object.
    let other = node(root);
    store.create(FileId::ROOT, b"other", &other, None, None).unwrap();
    store.xattr_add(other.id, &[("count".into(), 3)]).unwrap();
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.pending(after, 3).unwrap();
        assert!(page.len() <= 3);
        let Some(&last) = page.last() else { break };
        seen.extend(page);
        after = Some(last);
    }
    assert_eq!(seen, ids, "every marked object, once, in id order");
    // Still listed while any marker is set; gone once none is.
    store
        .xattr_add(ids[0], &[("pending.1".into(), -1), ("pending.2".into(), 2)])
        .unwrap();
    store.xattr_add(ids[1], &[("pending.1".into(), -1)]).unwrap();
    // Taken off twice, a counter stays at zero: the next marker still counts.
    store.xattr_add(ids[1], &[("pending.1".into(), -1)]).unwrap();
    let marked = store.xattr_add(ids[1], &[("pending.1".into(), 1)]).unwrap();
    assert_eq!(marked, [("pending.1".to_string(), 1)]);
    assert!(store.pending(None, 100).unwrap().contains(&ids[1]));
    store.xattr_add(ids[1], &[("pending.1".into(), -1)]).unwrap();
    let now = store.pending(None, 100).unwrap();
    assert!(now.contains(&ids[0]) && !now.contains(&ids[1]));
    // Objects removed with their markers drop out of the list.
    for i in 0..7 {
        store.unlink(FileId::ROOT, format!("f{i}").as_bytes()).unwrap();
    }
    assert_eq!(store.pending(None, 100).unwrap(), Vec::<FileId>::new());
    assert!(files(&root.join(".shoal/pending")).is_empty());
}

#[test]
fn objects_are_named_by_path_and_directories_by_parent_after_renames() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let store = Store::open_dir(root).unwrap();
    let dir = |n: &Path| NewNode {
        kind: FileKind::Dir,
        perm: 0o755,
        ..node(n)
    };
    let (a, b) = (dir(root), dir(root));
    store.create(FileId::ROOT, b"a", &a, None, None).unwrap();
    store.create(a.id, b"b", &b, None, None).unwrap();
    let f = node(root);
    store.create(b.id, b"f", &f, None, None).unwrap();
    let gone = FileId::random();

    assert_eq!(store.dir_parent(b.id).unwrap(), (a.id, b"b".to_vec()));
    assert_eq!(store.dir_parent(FileId::ROOT), Err(proto::Errno::EINVAL));
    // A regular file's parent is the one recorded where it was made.
    assert_eq!(store.dir_parent(f.id).unwrap(), (b.id, b"f".to_vec()));
    let budget = shoal_brick::paths::Budget::default();
    let paths = |ids: &[FileId]| -> Vec<Option<String>> {
        store
            .paths_of(ids, budget)
            .into_iter()
            .map(|p| p.map(|p| String::from_utf8(p).unwrap()))
            .collect()
    };
    let want =
        |v: &[Option<&str>]| -> Vec<Option<String>> { v.iter().map(|p| p.map(String::from)).collect() };
    assert_eq!(
        paths(&[FileId::ROOT, b.id, f.id, gone]),
        want(&[Some("/"), Some("/a/b"), Some("/a/b/f"), None])
    );

    // Moved: the directory's parent link and everything's path follow.
    store
        .rename(a.id, b"b", FileId::ROOT, b"moved", RenameFlags::default())
        .unwrap();
    assert_eq!(store.dir_parent(b.id).unwrap(), (FileId::ROOT, b"moved".to_vec()));
    assert_eq!(paths(&[b.id, f.id]), want(&[Some("/moved"), Some("/moved/f")]));

    // A renamed file's record follows it.
    store
        .rename(b.id, b"f", a.id, b"g", RenameFlags::default())
        .unwrap();
    assert_eq!(store.dir_parent(f.id).unwrap(), (a.id, b"g".to_vec()));
    assert_eq!(paths(&[f.id]), want(&[Some("/a/g")]));
    // Its recorded name removed, another link left: the record no longer holds, and the
    // path comes from a search of the brick.
    store.link(f.id, FileId::ROOT, b"h").unwrap();
    store.unlink(a.id, b"g").unwrap();
    assert_eq!(store.dir_parent(f.id), Err(proto::Errno::ENOTDIR));
    assert_eq!(paths(&[f.id]), want(&[Some("/h")]));
    // Nor may a client write the record.
    let forged = [("parent".to_string(), Some(b.id.to_bytes().to_vec()))];
    assert_eq!(store.set_meta(f.id, &forged), Err(proto::Errno::EINVAL));
}
