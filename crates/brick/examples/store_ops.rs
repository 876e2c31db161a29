//! Times the brick store's own operations, without any network: `store_ops DIR`.
use proto::{FileId, FileKind, NewNode};
use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).expect("DIR");
    std::fs::create_dir_all(&dir).unwrap();
    let s = shoal_brick::Store::open_dir(std::path::Path::new(&dir)).unwrap();
    let n = 2000;
    let t = Instant::now();
    let mut ids = vec![];
    for i in 0..n {
        let node = NewNode {
            id: FileId::random(),
            kind: FileKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            meta: vec![],
        };
        let (_, f) = s
            .create(FileId::ROOT, format!("f{i}").as_bytes(), &node, None, Some(1))
            .unwrap();
        s.close(f.unwrap());
        ids.push(node.id);
    }
    println!(
        "create+close: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for i in 0..n {
        let _ = s.lookup(FileId::ROOT, format!("nope{i}").as_bytes());
    }
    println!(
        "lookup enoent: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for i in 0..n {
        s.lookup(FileId::ROOT, format!("f{i}").as_bytes()).unwrap();
    }
    println!("lookup: {:.1} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for id in &ids {
        s.getattr(*id).unwrap();
    }
    println!("getattr: {:.1} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for i in 0..n {
        s.unlink(FileId::ROOT, format!("f{i}").as_bytes()).unwrap();
    }
    println!("unlink: {:.1} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
