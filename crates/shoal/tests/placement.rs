//! Placement is visible on the bricks: stripes split a file's blocks, distribute puts each
//! file on exactly one brick, replicas are byte-identical plain files.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A regular file on a brick that holds data (not a distribute pointer).
fn data_file(p: &Path) -> Option<std::fs::Metadata> {
    let m = std::fs::symlink_metadata(p).ok()?;
    (m.is_file() && m.mode() & 0o7777 != 0o1000).then_some(m)
}

#[test]
fn stripe_2_halves_a_65_mib_file() {
    if !require_root() {
        return;
    }
    let b = Bricks::start(2);
    let m = b.mount(&b.spec("s", 2, 1), "a");
    let data = pattern(7, 65 << 20);
    std::fs::write(m.path("big"), &data).unwrap();
    let blocks: Vec<u64> = b
        .bricks
        .iter()
        .map(|br| std::fs::metadata(br.path.join("big")).unwrap().blocks())
        .collect();
    let total: u64 = blocks.iter().sum();
    assert!(total * 512 >= 65 << 20, "bricks hold {total} blocks in all");
    for (i, n) in blocks.iter().enumerate() {
        let share = *n as f64 / total as f64;
        assert!(
            (0.45..=0.55).contains(&share),
            "brick {i} holds {:.1}% of the blocks",
            share * 100.0
        );
    }
    // Each brick's copy is a sparse file at the file's own offsets: the longest is the file.
    let longest = b
        .bricks
        .iter()
        .map(|br| std::fs::metadata(br.path.join("big")).unwrap().len())
        .max();
    assert_eq!(longest, Some(65 << 20));
    assert!(std::fs::read(m.path("big")).unwrap() == data);
}

#[test]
fn distribute_3_puts_each_file_on_one_brick() {
    if !require_root() {
        return;
    }
    let b = Bricks::start(3);
    let m = b.mount(&b.spec("d", 1, 1), "a");
    std::fs::create_dir(m.path("many")).unwrap();
    let n = 3000;
    for i in 0..n {
        std::fs::write(m.path(&format!("many/file-{i}")), format!("{i}")).unwrap();
    }
    let mut per_brick = [0usize; 3];
    for i in 0..n {
        let on: Vec<usize> = (0..3)
            .filter(|&k| data_file(&b.bricks[k].path.join(format!("many/file-{i}"))).is_some())
            .collect();
        assert_eq!(on.len(), 1, "file-{i} is on bricks {on:?}");
        per_brick[on[0]] += 1;
    }
    for (k, c) in per_brick.iter().enumerate() {
        let share = *c as f64 / n as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "brick {k} has {:.1}% of the files",
            share * 100.0
        );
    }
    assert_eq!(std::fs::read_dir(m.path("many")).unwrap().count(), n);
}

#[test]
fn replicas_are_identical_plain_files() {
    if !require_root() {
        return;
    }
    let b = Bricks::start(3);
    let m = b.mount(&b.spec("r", 1, 3), "a");
    std::fs::create_dir_all(m.path("x/y")).unwrap();
    let files = [("a", 0usize), ("x/b", 1), ("x/y/c", 200_000), ("x/y/d", 3 << 20)];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(m.path(name), pattern(i as u64, *len)).unwrap();
    }
    for (i, (name, len)) in files.iter().enumerate() {
        let want = pattern(i as u64, *len);
        for br in &b.bricks {
            let got = std::fs::read(br.path.join(name)).unwrap();
            assert!(got == want, "{name} on {} differs", br.path.display());
        }
    }
}
