//! Round-trip latency of brick requests: `cargo run --release --example rtt -- ADDR KEYFILE`.
use bytes::Bytes;
use proto::msg::Request;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let key = proto::auth::ClusterKey::load(std::path::Path::new(&args[2])).unwrap();
    let c = shoal_client::conn::BrickConn::new(&args[1], key, "client", "rtt");
    c.connect().await.unwrap();
    for (name, req) in [
        ("ping", Request::Ping),
        (
            "getattr",
            Request::GetAttr {
                id: proto::FileId::ROOT,
            },
        ),
        (
            "lookup-enoent",
            Request::Lookup {
                parent: proto::FileId::ROOT,
                name: b"nope".to_vec(),
            },
        ),
    ] {
        let n = 20000;
        let t = Instant::now();
        for _ in 0..n {
            let _ = c.call(&req, Bytes::new()).await;
        }
        println!("{name}: {:.1} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
