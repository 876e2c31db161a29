//! Hostile input at the brick's network face: absurd frames, unknown operations, cut-off
//! frames, names that try to escape, peers without the key. Each gets an error (or a closed
//! connection) and the server stays up and unchanged.

mod common;

use bytes::Bytes;
use proto::auth::{self, ClusterKey};
use proto::frame;
use proto::msg::{Reply, Request, Response};
use proto::{Errno, FileId, FileKind, NewNode};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Server {
    addr: std::net::SocketAddr,
    key: ClusterKey,
    dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let brick = dir.path().join("brick");
    std::fs::create_dir(&brick).unwrap();
    let (addr, key) = common::serve(&brick).await;
    Server { addr, key, dir }
}

async fn connect(s: &Server) -> TcpStream {
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    auth::client(&mut c, &s.key, "client", "test").await.unwrap();
    c
}

async fn call(c: &mut TcpStream, id: u64, req: &Request) -> Response {
    frame::send(c, id, req, &[]).await.unwrap();
    let (rid, resp, _): (u64, Response, Bytes) = frame::recv(c).await.unwrap();
    assert_eq!(rid, id);
    resp
}

async fn alive(s: &Server) {
    let mut c = connect(s).await;
    assert_eq!(call(&mut c, 1, &Request::Ping).await, Ok(Reply::Ok));
}

/// True once the server has closed the connection.
async fn closed(c: &mut TcpStream) -> bool {
    let r = tokio::time::timeout(Duration::from_secs(5), frame::read_frame(c)).await;
    matches!(r, Ok(Ok(None)) | Ok(Err(_)))
}

fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

#[tokio::test]
async fn absurd_lengths_close_the_connection_and_nothing_else() {
    let s = server().await;
    let mut c = connect(&s).await;
    let mut bad = Vec::new();
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    bad.extend_from_slice(&[0u8; 12]);
    c.write_all(&bad).await.unwrap();
    assert!(closed(&mut c).await);
    alive(&s).await;

    // A header length larger than the frame.
    let mut c = connect(&s).await;
    let mut bad = Vec::new();
    bad.extend_from_slice(&16u32.to_le_bytes());
    bad.extend_from_slice(&7u64.to_le_bytes());
    bad.extend_from_slice(&1000u32.to_le_bytes());
    bad.extend_from_slice(&[0u8; 4]);
    c.write_all(&bad).await.unwrap();
    assert!(closed(&mut c).await);
    alive(&s).await;
}

#[tokio::test]
async fn unknown_operations_get_an_error_and_the_connection_goes_on() {
    let s = server().await;
    let mut c = connect(&s).await;
    // A well-framed header whose operation number does not exist.
    frame::write_frame(&mut c, 9, &[250, 1, 2, 3], &[]).await.unwrap();
    c.flush().await.unwrap();
    let (id, resp, _): (u64, Response, Bytes) = frame::recv(&mut c).await.unwrap();
    assert_eq!(id, 9);
    assert_eq!(resp, Err(Errno::ENOSYS));
    // Garbage inside a known operation.
    frame::write_frame(&mut c, 10, &[1, 0xff, 0xff], &[])
        .await
        .unwrap();
    c.flush().await.unwrap();
    let (id, resp, _): (u64, Response, Bytes) = frame::recv(&mut c).await.unwrap();
    assert_eq!(id, 10);
    assert!(resp.is_err());
    assert_eq!(call(&mut c, 11, &Request::Ping).await, Ok(Reply::Ok));
}

#[tokio::test]
async fn truncated_frames_and_strangers_leave_the_server_up() {
    let s = server().await;
    let mut c = connect(&s).await;
    let header = frame::encode_header(&Request::Ping).unwrap();
    let mut buf = frame::prefix(1, header.len(), 100).unwrap().to_vec();
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&[0u8; 10]); // 90 bytes short
    c.write_all(&buf).await.unwrap();
    drop(c);
    alive(&s).await;

    // No handshake at all.
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(closed(&mut raw).await);
    // The wrong key.
    let mut wrong = TcpStream::connect(s.addr).await.unwrap();
    assert!(
        auth::client(&mut wrong, &ClusterKey::generate(), "client", "intruder")
            .await
            .is_err()
    );
    alive(&s).await;
}

#[tokio::test]
async fn names_never_escape_the_brick() {
    let s = server().await;
    let outside_before = tree(s.dir.path());
    let mut c = connect(&s).await;
    let node = |id: u128| NewNode {
        id: FileId(id),
        kind: FileKind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        meta: vec![],
    };
    let long = vec![b'a'; 256];
    let bad_names: Vec<(&[u8], Errno)> = vec![
        (b"..", Errno::EINVAL),
        (b".", Errno::EINVAL),
        (b"../escape", Errno::EINVAL),
        (b"a/b", Errno::EINVAL),
        (b"/etc", Errno::EINVAL),
        (b"nul\0byte", Errno::EINVAL),
        (b"", Errno::EINVAL),
        (&long, Errno::ENAMETOOLONG),
        (b".shoal", Errno::EPERM),
    ];
    for (i, (name, want)) in bad_names.iter().enumerate() {
        let req = Request::Create {
            parent: FileId::ROOT,
            name: name.to_vec(),
            node: node(0x100000 + i as u128),
            symlink_target: None,
            open: None,
        };
        assert_eq!(
            call(&mut c, 100 + i as u64, &req).await,
            Err(*want),
            "create {name:?}"
        );
        let req = Request::Lookup {
            parent: FileId::ROOT,
            name: name.to_vec(),
        };
        assert!(
            call(&mut c, 200 + i as u64, &req).await.is_err(),
            "lookup {name:?}"
        );
        let req = Request::Rename {
            parent: FileId::ROOT,
            name: b"nothing".to_vec(),
            new_parent: FileId::ROOT,
            new_name: name.to_vec(),
            flags: Default::default(),
        };
        assert!(
            call(&mut c, 300 + i as u64, &req).await.is_err(),
            "rename to {name:?}"
        );
    }
    // Ids that name nothing, and reserved xattr names.
    assert!(call(
        &mut c,
        400,
        &Request::GetAttr {
            id: FileId(0xdead_beef_0000)
        }
    )
    .await
    .is_err());
    let req = Request::SetXattr {
        id: FileId::ROOT,
        name: b"trusted.shoal.id".to_vec(),
        value: vec![1],
        flags: 0,
    };
    assert!(call(&mut c, 401, &req).await.is_err());
    let req = Request::SetMeta {
        id: FileId::ROOT,
        meta: vec![("id".into(), Some(vec![0; 16]))],
    };
    assert_eq!(call(&mut c, 402, &req).await, Err(Errno::EINVAL));
    let req = Request::Read {
        fh: 12345,
        offset: 0,
        size: u32::MAX,
    };
    assert_eq!(call(&mut c, 403, &req).await, Err(Errno::EBADF));

    assert_eq!(
        tree(s.dir.path()),
        outside_before,
        "nothing appeared beside the brick"
    );
    assert_eq!(
        tree(&s.dir.path().join("brick")),
        vec![".shoal".to_string()],
        "nothing appeared in the brick"
    );
    alive(&s).await;
}
