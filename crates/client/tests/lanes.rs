//! Lanes (`proto::lane`): calls made on a thread that serves one CPU go on a connection of
//! that CPU which joins the client's session on the brick, and end with it.

mod common;

use common::{node, serve_brick, spec};
use proto::auth::ClusterKey;
use proto::{FileId, FileKind};
use shoal_client::conn::BrickConn;
use shoal_client::Volume;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Runs `f` on a thread of its own that serves CPU `cpu` with a runtime of its own, as a FUSE
/// over io_uring queue's thread does.
fn on_cpu_thread<T: Send + 'static>(cpu: usize, f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        proto::lane::serve_here(cpu, rt.handle().clone());
        rt.block_on(f)
    })
    .join()
    .unwrap()
}

/// Waits until `conn` has `want` (lanes up, lanes refused), calling from this thread
/// meanwhile (a call from a CPU's thread asks for its lane if there is none).
async fn lanes_become(conn: &BrickConn, want: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = proto::msg::Request::GetAttr { id: FileId::ROOT };
        conn.call(&asked, bytes::Bytes::new()).await.unwrap();
        if conn.lanes() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lanes stayed {:?}, not {want:?}",
            conn.lanes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cpu_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("brick-cpu"))
        .collect()
}

/// A brick served here on a directory of its own: its key, address, directory and stop.
async fn brick() -> (
    ClusterKey,
    String,
    tempfile::TempDir,
    tokio::sync::watch::Sender<bool>,
) {
    let key = ClusterKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = serve_brick(dir.path(), listener, brick::ServerConfig::new(key.clone()));
    (key, addr, dir, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpus_calls_go_on_its_lane_in_the_clients_session_and_the_lane_ends_with_it() {
    let (key, addr, _dir, stop) = brick().await;
    let v = Volume::connect(spec(&[&addr]), key, "lanes", Duration::from_secs(5))
        .await
        .unwrap();
    let conn = v.conns[0].clone();
    assert_eq!(conn.lanes(), (0, 0), "no lane before a CPU's thread calls");

    let cpu = rustix::thread::sched_getcpu();
    let (c, root, shared) = (conn.clone(), v.root.clone(), tokio::runtime::Handle::current());
    tokio::task::block_in_place(|| {
        on_cpu_thread(cpu, async move {
            lanes_become(&c, (1, 0)).await;
            // A file opened on the lane is the session's: written through the main
            // connection (from a thread that serves no CPU), read back on the lane.
            let file = node(FileKind::File, 0o644);
            let made = root.create(FileId::ROOT, b"f", &file, None, Some(libc::O_RDWR as u32));
            let h = std::sync::Arc::new(made.await.unwrap().1.expect("created open"));
            let (r, h2) = (root.clone(), h.clone());
            let wrote =
                shared.spawn(async move { r.write(&h2, 0, bytes::Bytes::from_static(b"lane")).await });
            assert_eq!(wrote.await.unwrap(), Ok(4));
            assert_eq!(root.read(&h, 0, 16).await.unwrap().as_ref(), b"lane");
            assert_eq!(c.lanes(), (1, 0), "the lane carried it all");
        })
    });
    assert!(
        cpu_threads().contains(&format!("brick-cpu{cpu}")),
        "the brick serves the lane on a thread of CPU {cpu}: {:?}",
        cpu_threads()
    );
    // The thread and its runtime are gone: so is the lane they read.
    assert_eq!(conn.lanes(), (0, 0));
    let lane_thread = conn.clone();
    tokio::task::block_in_place(|| {
        on_cpu_thread(cpu, async move { lanes_become(&lane_thread, (1, 0)).await })
    });

    // The connection ends (the brick stops): its lanes go with it.
    stop.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while conn.lanes() != (0, 0) || conn.is_up() {
        assert!(
            Instant::now() < deadline,
            "lanes {:?} outlived their connection",
            conn.lanes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_naming_no_session_is_refused_and_calls_keep_to_the_connection() {
    let (key, addr, _dir, _stop) = brick().await;
    // A bare connection that never tells the brick its session.
    let conn = BrickConn::new(&addr, key, "client", "bare");
    conn.connect().await.unwrap();
    conn.use_lanes(FileId::random().0);
    let c = conn.clone();
    tokio::task::block_in_place(|| on_cpu_thread(0, async move { lanes_become(&c, (0, 1)).await }));
    assert!(conn.is_up());
}
