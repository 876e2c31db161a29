//! What the brick tests share: a server for a brick directory, new files' attributes.
#![allow(dead_code)]

use proto::auth::ClusterKey;
use proto::{FileId, FileKind, NewNode};
use shoal_brick as brick;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Serves the brick in `root` on a loopback port (and the Unix socket beside it) for the rest
/// of the test; returns where, and the key its clients need.
pub async fn serve(root: &Path) -> (std::net::SocketAddr, ClusterKey) {
    let key = ClusterKey::generate();
    let store = brick::Store::open_dir(root).unwrap();
    let srv = brick::BrickServer::new(store, brick::ServerConfig::new(key.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // (With its sender gone, the shutdown signal never comes.)
    let (_, never) = tokio::sync::watch::channel(false);
    tokio::spawn(srv.serve(listener, never));
    (addr, key)
}

/// A new file owned as `root` is (by whoever runs the test: a brick not run as root can give
/// no other owner).
pub fn new_file(root: &Path) -> NewNode {
    let me = std::fs::metadata(root).unwrap();
    NewNode {
        id: FileId::random(),
        kind: FileKind::File,
        perm: 0o644,
        uid: me.uid(),
        gid: me.gid(),
        rdev: 0,
        meta: Vec::new(),
    }
}
