//! Reads over the wire return the file's bytes exactly, whichever way the brick sends them
//! (large reads are spliced from the file through a pipe, small ones copied), on TCP and
//! on the local Unix socket, one at a time and many at once (a full socket queues what it
//! cannot take).

mod common;

use bytes::Bytes;
use proto::auth;
use proto::frame;
use proto::msg::{Reply, Request, Response};
use proto::FileId;
use std::sync::Arc;

type Conn = proto::rpc::Conn<Request, Reply>;

/// 3 MiB and a bit: reads reach past its end.
const LEN: usize = (3 << 20) + 1234;

fn content() -> Vec<u8> {
    (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// (offset, size) pairs: small and large, aligned and not, across and past the end.
fn reads() -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for size in [1u32, 4096, 65_535, 65_536, 65_537, 131_072, 1 << 20] {
        for offset in [
            0u64,
            1,
            4095,
            4096,
            1_000_003,
            LEN as u64 - 70_000,
            LEN as u64 - 1,
            LEN as u64 + 5,
        ] {
            out.push((offset, size));
        }
    }
    out
}

fn expected(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = (start + size as usize).min(data.len());
    &data[start..end]
}

/// A brick serving a fresh directory, a connection to it (over the local socket, which it
/// prefers), and a new file `f` there, open read-write.
struct Served {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    addr: std::net::SocketAddr,
    key: auth::ClusterKey,
    conn: Arc<Conn>,
    node: proto::NewNode,
    fh: proto::msg::Fh,
}

async fn serve_with_file() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("brick");
    std::fs::create_dir(&root).unwrap();
    let (addr, key) = common::serve(&root).await;
    let conn: Arc<Conn> = Conn::new(&addr.to_string(), key.clone(), "client", "reads");
    conn.connect().await.unwrap();
    let node = common::new_file(&root);
    let create = Request::Create {
        parent: FileId::ROOT,
        name: b"f".to_vec(),
        node: node.clone(),
        symlink_target: None,
        open: Some(libc::O_RDWR as u32),
    };
    let Reply::Created { fh: Some(fh), .. } = conn.call(&create, Bytes::new()).await.unwrap().0 else {
        panic!("no handle from create");
    };
    Served {
        _dir: dir,
        root,
        addr,
        key,
        conn,
        node,
        fh,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_the_files_bytes_on_tcp_and_unix_sockets_one_by_one_and_all_at_once() {
    let Served {
        _dir,
        root,
        addr,
        key,
        conn,
        node,
        fh,
    } = serve_with_file().await;
    let data = Bytes::from(content());
    for at in (0..LEN).step_by(1 << 20) {
        let piece = data.slice(at..(at + (1 << 20)).min(LEN));
        let write = Request::Write {
            fh,
            offset: at as u64,
        };
        let (reply, _, _) = conn.call(&write, piece.clone()).await.unwrap();
        assert_eq!(
            reply,
            Reply::Written {
                size: piece.len() as u32
            }
        );
    }

    // The brick's file system splices: the large reads below take the pipe's way.
    let on_disk = std::fs::File::open(root.join("f")).unwrap();
    let piped = proto::piped::Piped::from_file(std::os::fd::AsFd::as_fd(&on_disk), 1, 65_536).unwrap();
    assert_eq!(
        piped.map(|p| p.len()),
        Some(65_536),
        "no splice from the brick's files"
    );

    // One by one on the local socket.
    for (offset, size) in reads() {
        let (reply, got, _) = conn
            .call(&Request::Read { fh, offset, size }, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply, Reply::Data);
        assert!(
            got == expected(&data, offset, size),
            "unix read of {size} at {offset}"
        );
    }

    // Many ranges in one request, small (copied) and large (spliced), some past the end.
    let all = reads();
    for ranges in [&all[..3], &all[8..20], &all[40..50]] {
        let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
        let (reply, got, _) = conn
            .call(
                &Request::ReadV {
                    fh,
                    ranges: ranges.to_vec(),
                },
                Bytes::new(),
            )
            .await
            .unwrap();
        let want: Vec<&[u8]> = ranges.iter().map(|&(o, n)| expected(&data, o, n)).collect();
        assert_eq!(
            reply,
            Reply::DataV(want.iter().map(|w| w.len() as u32).collect()),
            "{total} bytes"
        );
        assert!(got == want.concat(), "ranges of {total} bytes");
    }
    // Past the bounds: refused.
    let too_many = vec![(0u64, 1u32); proto::msg::MAX_RANGES + 1];
    let too_much = vec![(0u64, 4 << 20), (0, 1)];
    for ranges in [too_many, too_much] {
        let r = conn.call(&Request::ReadV { fh, ranges }, Bytes::new()).await;
        assert_eq!(r.err(), Some(proto::Errno::EINVAL));
    }
    // Offsets no file reaches: an error, and the connection serves on; empty ranges: empty.
    let far = vec![(u64::MAX - 10, 100u32), (0, 1)];
    let r = conn.call(&Request::ReadV { fh, ranges: far }, Bytes::new()).await;
    assert!(r.is_err(), "{r:?}");
    let empty = vec![(0u64, 0u32), (5, 0)];
    let (reply, got, _) = conn
        .call(&Request::ReadV { fh, ranges: empty }, Bytes::new())
        .await
        .unwrap();
    assert_eq!((reply, got.len()), (Reply::DataV(vec![0, 0]), 0));

    // All at once, several times over: far more than the socket buffers hold.
    let mut all = tokio::task::JoinSet::new();
    for round in 0..4 {
        for (offset, size) in reads() {
            let (conn, data) = (conn.clone(), data.clone());
            all.spawn(async move {
                let (_, got, _) = conn
                    .call(&Request::Read { fh, offset, size }, Bytes::new())
                    .await
                    .unwrap();
                assert!(
                    got == expected(&data, offset, size),
                    "round {round}: read of {size} at {offset}"
                );
            });
        }
    }
    while let Some(r) = all.join_next().await {
        r.unwrap();
    }

    // One by one on TCP, through a handle of this connection.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    auth::client(&mut tcp, &key, "client", "reads-tcp").await.unwrap();
    frame::send(
        &mut tcp,
        1,
        &Request::Open {
            id: node.id,
            flags: libc::O_RDONLY as u32,
        },
        &[],
    )
    .await
    .unwrap();
    let (_, opened, _): (u64, Response, Bytes) = frame::recv(&mut tcp).await.unwrap();
    let Ok(Reply::Opened { fh }) = opened else {
        panic!("open over TCP: {opened:?}");
    };
    for (i, (offset, size)) in reads().into_iter().enumerate() {
        let id = 2 + i as u64;
        frame::send(&mut tcp, id, &Request::Read { fh, offset, size }, &[])
            .await
            .unwrap();
        let (rid, resp, got): (u64, Response, Bytes) = frame::recv(&mut tcp).await.unwrap();
        assert_eq!((rid, resp), (id, Ok(Reply::Data)));
        assert!(
            got == expected(&data, offset, size),
            "tcp read of {size} at {offset}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_written_in_one_request_land_each_at_its_offset() {
    let Served {
        _dir, root, conn, fh, ..
    } = serve_with_file().await;
    let data = Bytes::from(content());
    let pieces = [
        (0u64, 0..100_000),
        (262_144, 100_000..231_072),
        (1 << 20, 231_072..231_073),
    ];
    let ranges: Vec<(u64, u32)> = pieces.iter().map(|(o, r)| (*o, r.len() as u32)).collect();
    let parts: Vec<Bytes> = pieces.iter().map(|(_, r)| data.slice(r.clone())).collect();
    let (reply, _, _) = conn
        .call_parts(
            &Request::WriteV {
                fh,
                ranges: ranges.clone(),
            },
            &parts,
        )
        .await
        .unwrap();
    assert_eq!(reply, Reply::WrittenV(ranges.iter().map(|r| r.1).collect()));
    let on_disk = std::fs::read(root.join("f")).unwrap();
    assert_eq!(on_disk.len(), (1 << 20) + 1);
    for ((offset, _), part) in ranges.iter().zip(&parts) {
        let at = *offset as usize;
        assert!(on_disk[at..at + part.len()] == part[..], "piece at {offset}");
    }
    assert!(
        on_disk[100_000..262_144].iter().all(|&b| b == 0),
        "a hole between pieces"
    );

    // Lengths that do not add up to the data, or too many ranges: refused, nothing written.
    let short = Request::WriteV {
        fh,
        ranges: vec![(5 << 20, 10), (6 << 20, 10)],
    };
    assert_eq!(
        conn.call(&short, Bytes::from_static(b"0123456789")).await.err(),
        Some(proto::Errno::EINVAL)
    );
    let too_many = Request::WriteV {
        fh,
        ranges: vec![(5 << 20, 0); proto::msg::MAX_RANGES + 1],
    };
    assert_eq!(
        conn.call(&too_many, Bytes::new()).await.err(),
        Some(proto::Errno::EINVAL)
    );
    assert_eq!(std::fs::metadata(root.join("f")).unwrap().len(), (1 << 20) + 1);
}
