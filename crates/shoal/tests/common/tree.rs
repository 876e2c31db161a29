//! Comparing directory trees: kinds, permission bits, contents and link targets.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(std::path::PathBuf),
}

/// Everything under `root`, keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).expect("prefix").display().to_string();
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let perm = m.mode() & 0o7777;
        if m.file_type().is_symlink() {
            out.insert(rel, Node::Link(std::fs::read_link(&p).expect("readlink")));
        } else if m.is_dir() {
            out.insert(rel, Node::Dir(perm));
            walk(root, &p, out);
        } else {
            out.insert(rel, Node::File(perm, std::fs::read(&p).expect("read")));
        }
    }
}

/// Panics with the first difference between two trees.
pub fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (snapshot(a), snapshot(b));
    for (k, v) in &x {
        match y.get(k) {
            None => panic!("{k} is in {} but not in {}", a.display(), b.display()),
            Some(w) if w != v => panic!("{k} differs between {} and {}", a.display(), b.display()),
            _ => {}
        }
    }
    for k in y.keys() {
        assert!(
            x.contains_key(k),
            "{k} is in {} but not in {}",
            b.display(),
            a.display()
        );
    }
    assert!(!x.is_empty(), "empty tree {}", a.display());
}
