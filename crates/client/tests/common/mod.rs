//! What the client tests share: bricks served in the test's process, volume specs, new
//! objects.
#![allow(dead_code)]

use layout::spec::{BrickSpec, VolumeSpec, DEFAULT_STRIPE_SIZE, SPEC_VERSION};
use proto::{FileId, FileKind, NewNode};
use std::path::Path;
use tokio::sync::watch;

/// Serves the brick in `dir` on `listener` until the returned sender says stop.
pub fn serve_brick(
    dir: &Path,
    listener: tokio::net::TcpListener,
    config: brick::ServerConfig,
) -> watch::Sender<bool> {
    let store = brick::Store::open_dir(dir).unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(brick::BrickServer::new(store, config).serve(listener, rx));
    stop
}

/// A volume over bricks at `addrs`, all copies of one another (one brick: no replication).
pub fn spec(addrs: &[&str]) -> VolumeSpec {
    VolumeSpec {
        version: SPEC_VERSION,
        name: "test".into(),
        id: 7,
        stripe: 1,
        replica: addrs.len() as u32,
        stripe_size: DEFAULT_STRIPE_SIZE,
        bricks: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| BrickSpec {
                node: format!("n{i}"),
                path: format!("/b{i}"),
                addr: a.to_string(),
            })
            .collect(),
    }
}

/// A new object with a fresh id, owned by root.
pub fn node(kind: FileKind, perm: u32) -> NewNode {
    NewNode {
        id: FileId::random(),
        kind,
        perm,
        uid: 0,
        gid: 0,
        rdev: 0,
        meta: Vec::new(),
    }
}
