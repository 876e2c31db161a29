//! The control plane with real daemons: a replicated configuration that survives the loss
//! of its leader and full restarts, membership changes, witnesses, keys, and CLI errors that
//! change nothing.

mod common;

use common::daemons::Daemons;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn three_nodes_agree_survive_their_leader_restart_and_change_membership() {
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let (leader, _) = c.wait_leader(0, None, Duration::from_secs(20));

    let bricks: Vec<String> = (0..3).map(|i| c.brick(i, "v1")).collect();
    let mut args = vec!["volume", "create", "v1", "replica", "3"];
    args.extend(bricks.iter().map(String::as_str));
    let r = c.ok(0, &args);
    assert!(r.stdout.contains("volume create: v1: success"), "{}", r.stdout);
    for i in [1, 2] {
        assert_eq!(c.volume_names(i), vec!["v1"], "node {i} lists the new volume");
    }
    let info = c.ok(2, &["volume", "info", "v1"]).stdout;
    assert!(
        info.contains("Type: Replicate") && info.contains("Number of Bricks: 1 x 3 = 3"),
        "{info}"
    );

    // The leader dies: another takes over within 2 s, and commands still work.
    c.kill(leader as usize);
    let other = if leader == 0 { 1 } else { 0 };
    let (new_leader, took) = c.wait_leader(other, Some(leader), Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    assert!(took < Duration::from_secs(2), "new leader after {took:?}");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader as usize).collect();
    let b2 = c.brick(survivors[0], "v2");
    c.ok(survivors[1], &["volume", "create", "v2", &b2]);
    c.ok(survivors[0], &["volume", "start", "v2"]);

    // The whole cluster restarts with its configuration.
    for i in 0..3 {
        c.kill(i);
    }
    c.start_all();
    c.wait_ready(0, 3);
    for i in 0..3 {
        assert_eq!(c.volume_names(i), vec!["v1", "v2"], "node {i} after restart");
    }
    let v2 = c.ok(1, &["volume", "info", "v2", "--json"]).json();
    assert_eq!(v2[0]["state"], "Started");

    // A fourth node joins through Raft, and leaves again.
    let j = c.add_joiner();
    c.start(j);
    let endpoint = c.endpoint(j);
    let r = c.ok(1, &["node", "add", &endpoint]);
    assert!(r.stdout.contains("success"), "{}", r.stdout);
    wait_for("4 nodes everywhere", Duration::from_secs(10), || {
        (0..4).all(|i| {
            c.cli(i, &["status", "--json"]).ok
                && c.cli(i, &["status", "--json"]).json()["nodes"]
                    .as_array()
                    .map(Vec::len)
                    == Some(4)
        })
    });
    assert_eq!(
        c.volume_names(j),
        vec!["v1", "v2"],
        "the new node has the configuration"
    );
    c.ok(2, &["node", "remove", "3"]);
    wait_for("3 nodes again", Duration::from_secs(10), || {
        c.cli(0, &["status", "--json"]).json()["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    });
    // Removing a node that holds bricks is refused.
    let r = c.cli(0, &["node", "remove", "0"]);
    assert!(
        !r.ok && r.stderr.contains("holds bricks"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn two_data_nodes_and_a_witness_keep_a_quorum() {
    let mut c = Daemons::new(3);
    c.nodes[2].witness = true;
    c.start_all();
    c.wait_ready(0, 3);
    let status = c.ok(0, &["status"]).stdout;
    assert!(status.contains("WITNESS"), "{status}");
    // A witness holds no bricks.
    let wb = c.brick(2, "w");
    let r = c.cli(0, &["volume", "create", "w", &wb]);
    assert!(!r.ok && r.stderr.contains("witness"), "{}", r.stderr);

    for dead in [0usize, 1] {
        let alive = 1 - dead;
        c.kill(dead);
        let b = c.brick(alive, &format!("after-{dead}"));
        let name = format!("after{dead}");
        c.ok(alive, &["volume", "create", &name, &b]);
        assert!(c.volume_names(alive).contains(&name));
        c.start(dead);
        wait_for("the node to catch up", Duration::from_secs(10), || {
            c.volume_names(dead).contains(&name)
        });
    }
}

#[test]
fn a_peer_with_the_wrong_key_is_refused() {
    let mut c = Daemons::new(3);
    c.use_other_key(2);
    c.start_all();
    c.wait_ready(0, 2);
    wait_for("the refusal to be logged", Duration::from_secs(10), || {
        c.log(0).contains("refused connection") || c.log(1).contains("refused connection")
    });
    // The impostor never joins: the other two see it as disconnected, it sees no leader.
    let s = c.ok(0, &["status", "--json"]).json();
    let nodes = s["nodes"].as_array().expect("nodes");
    assert!(
        nodes
            .iter()
            .all(|n| n["pnn"] != 2 || n["state"] == "DISCONNECTED"),
        "{s}"
    );
    assert_eq!(c.leader(2), None);
    // A client with the wrong key cannot reach the cluster port either.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let endpoint = c.endpoint(0);
    let refused = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(&endpoint).await.expect("connect");
        proto::auth::client(&mut s, &proto::auth::ClusterKey::generate(), "node", "intruder").await
    });
    assert!(refused.is_err());
}

#[test]
fn cli_errors_say_why_and_change_nothing() {
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let (b0, b1) = (c.brick(0, "a"), c.brick(1, "a"));
    c.ok(0, &["volume", "create", "good", &b0, &b1]);
    c.ok(0, &["volume", "start", "good"]);
    let before = c.ok(1, &["volume", "info", "--json"]).stdout;

    let missing = format!("node0:{}/does/not/exist", c.dir.path().display());
    let file = c.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let file_brick = format!("node0:{}", file.display());
    let fresh = c.brick(2, "fresh");
    let fresh2 = c.brick(1, "fresh2");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "volume".into(),
                "create".into(),
                "x".into(),
                "nosuchnode:/b".into(),
            ],
            "not a node of this cluster",
        ),
        (
            vec!["volume".into(), "create".into(), "x".into(), missing],
            "does not exist",
        ),
        (
            vec!["volume".into(), "create".into(), "x".into(), file_brick],
            "not a directory",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "x".into(),
                fresh.clone(),
                fresh.clone(),
            ],
            "more than once",
        ),
        (
            vec!["volume".into(), "create".into(), "x".into(), b0.clone()],
            "already part of volume good",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "x".into(),
                "replica".into(),
                "2".into(),
                fresh.clone(),
                fresh2.clone(),
                c.brick(0, "third"),
            ],
            "not a multiple",
        ),
        (
            vec!["volume".into(), "create".into(), "9bad!".into(), fresh.clone()],
            "invalid",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "x".into(),
                fresh.clone(),
                "node0:/proc".into(),
            ],
            "is a mount point",
        ),
        (
            vec![
                "volume".into(),
                "create".into(),
                "x".into(),
                "node0:relative".into(),
            ],
            "NODE:/absolute/path",
        ),
        (
            vec!["volume".into(), "start".into(), "good".into()],
            "already started",
        ),
        (vec!["volume".into(), "delete".into(), "good".into()], "stop it"),
        (
            vec!["volume".into(), "stop".into(), "nope".into()],
            "does not exist",
        ),
        (
            vec![
                "volume".into(),
                "set".into(),
                "good".into(),
                "no.such.option".into(),
                "1".into(),
            ],
            "does not exist",
        ),
    ];
    for (args, why) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = c.cli(0, &a);
        assert!(!r.ok, "{a:?} should fail");
        assert!(r.stderr.contains(why), "{a:?}: expected {why:?} in: {}", r.stderr);
    }
    assert_eq!(
        c.ok(1, &["volume", "info", "--json"]).stdout,
        before,
        "the configuration is unchanged"
    );
    let fresh_dir = std::path::Path::new(fresh.split_once(':').unwrap().1);
    assert!(
        !fresh_dir.join(".shoal").exists(),
        "a brick that passed its checks is not stamped when another failed"
    );

    // Without a quorum, a command says so within a bounded time.
    c.kill(1);
    c.kill(2);
    let t = Instant::now();
    let r = c.cli(0, &["volume", "stop", "good"]);
    assert!(
        !r.ok && r.stderr.contains("no quorum"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    // Read commands still answer from what the node knows.
    assert!(c.cli(0, &["status"]).ok);
    assert_eq!(c.volume_names(0), vec!["good"]);
}

#[test]
fn ping_uptime_and_listnodes_address_nodes_like_ctdb() {
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let r = c.ok(0, &["ping", "-n", "all"]);
    for i in 0..3 {
        assert!(
            r.stdout.contains(&format!("response from {i} time=")),
            "{}",
            r.stdout
        );
    }
    let r = c.ok(1, &["-n", "2", "uptime"]);
    assert!(
        r.stdout.contains("Current time of node 2") && r.stdout.contains("Daemon start time"),
        "{}",
        r.stdout
    );
    let nodes = c.ok(2, &["listnodes"]).stdout;
    assert_eq!(nodes.lines().count(), 3);
    assert_eq!(c.ok(1, &["pnn"]).stdout.trim(), "1");
    c.kill(2);
    wait_for("node 2 to be seen as down", Duration::from_secs(10), || {
        !c.cli(0, &["ping", "-n", "2"]).ok
    });
    assert!(c.cli(0, &["-n", "bogus", "ping"]).stderr.contains("PNN or 'all'"));
}

#[test]
fn a_mount_follows_its_volume_and_outlives_the_node_it_came_from() {
    if !require_root() {
        return;
    }
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    nas_replica_3(&c, "m");
    let dir = c.dir.path().join("mnt");
    let mount = || mount_nas(&c, &dir);
    let unmount = mount();
    std::fs::write(dir.join("f"), b"kept").unwrap();
    // (A brick the mount reached late missed "f": that is healed first.)
    let clean = || nothing_to_heal(&c);
    wait_for("the volume to be clean", Duration::from_secs(30), clean);

    // A brick that stops answering misses a write: `volume heal info` shows what waits for
    // it, and once it answers again the mount heals it.
    let status = c.ok(0, &["volume", "status", "nas", "--json"]).json();
    let pid = status[0]["bricks"][2]["status"]["pid"]
        .as_u64()
        .expect("brick pid") as u32;
    let stopped = stop_process(pid);
    std::fs::write(dir.join("while-stopped"), b"x").unwrap();
    let info = c.ok(0, &["volume", "heal", "nas", "info"]).stdout;
    let blocks: Vec<&str> = info.split("Brick ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 3, "{info}");
    for b in &blocks[..2] {
        assert!(b.contains("Status: Connected"), "{info}");
        // By path: the file written (its data) and the root (its new name).
        assert!(
            b.contains("\n/while-stopped\n") && b.contains("\n/\n"),
            "marked for the stopped brick: {info}"
        );
    }
    assert!(!blocks[2].contains("Connected"), "{info}");
    // With no mount left, the nodes heal it.
    drop(unmount);
    let mount_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("mount") && c.contains(&*dir.to_string_lossy())
            })
        })
    };
    wait_for("the mount process to end", Duration::from_secs(10), || {
        !mount_running()
    });
    drop(stopped);
    wait_for("the brick to be healed", Duration::from_secs(60), clean);
    let _unmount = mount();
    let r = c.cli(0, &["volume", "heal", "nas", "repair"]);
    assert!(!r.ok && r.stderr.contains("info"), "{}", r.stderr);

    c.ok(1, &["volume", "stop", "nas"]);
    wait_for(
        "the stopped volume to refuse access",
        Duration::from_secs(10),
        || std::fs::read(dir.join("g")).is_err() && std::fs::write(dir.join("h"), b"x").is_err(),
    );
    c.ok(2, &["volume", "start", "nas"]);
    // Served again once two copies take a write; all three before a node goes away below
    // (the mount reconnects to each restarted brick on its own).
    let third = std::path::PathBuf::from(c.brick_dir(2, "m"));
    let mut n = 0;
    wait_for(
        "the restarted volume to serve again, on all three bricks",
        Duration::from_secs(15),
        || {
            n += 1;
            let name = format!("back{n}");
            std::fs::read(dir.join("f")).is_ok_and(|d| d == b"kept")
                && std::fs::write(dir.join(&name), b"x").is_ok()
                && third.join(&name).exists()
        },
    );

    // The node the mount came from goes away: the mount talks to the bricks.
    c.kill(0);
    std::fs::write(dir.join("after"), b"still here").unwrap();
    assert_eq!(std::fs::read(dir.join("after")).unwrap(), b"still here");
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"kept");
}

#[test]
fn a_replaced_disk_is_refused_until_reset_and_then_refilled_from_its_copies() {
    if !require_root() {
        return;
    }
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let bricks = nas_replica_3(&c, "r");
    let dir = c.dir.path().join("mnt");
    let _unmount = mount_nas(&c, &dir);
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("a/b/f{i}")), pattern(i, 1000 * i as usize)).unwrap();
    }
    std::fs::write(dir.join("a/b/c/big"), pattern(99, 3 << 20)).unwrap();
    std::os::unix::fs::symlink("b/f3", dir.join("a/link")).unwrap();
    std::fs::hard_link(dir.join("a/b/f4"), dir.join("a/hard")).unwrap();
    let before = tree::snapshot(&dir);

    // Node 2's disk is replaced while the node is down: its brick directory is empty.
    c.kill(2);
    let brick2 = std::path::PathBuf::from(c.brick_dir(2, "r"));
    std::fs::rename(&brick2, brick2.with_extension("old")).unwrap();
    std::fs::create_dir(&brick2).unwrap();
    c.start(2);
    wait_for(
        "the empty directory to be refused",
        Duration::from_secs(20),
        || {
            let status = c.ok(0, &["volume", "status", "nas"]).stdout;
            status.contains("not served") && status.contains("reset-brick")
        },
    );
    assert!(
        std::fs::read_dir(&brick2).unwrap().next().is_none(),
        "nothing was written into the refused directory"
    );
    // The two copies serve everything meanwhile.
    assert_eq!(tree::snapshot(&dir), before);
    std::fs::write(dir.join("a/b/c/while-refused"), b"new").unwrap();

    let r = c.cli(0, &["volume", "reset-brick", "nas", "node2:/nowhere"]);
    assert!(
        !r.ok && r.stderr.contains("not a brick of volume nas"),
        "{}",
        r.stderr
    );
    let r = c.cli(0, &["volume", "reset-brick", "none", &bricks[2]]);
    assert!(!r.ok && r.stderr.contains("does not exist"), "{}", r.stderr);
    // A directory with data in it is not taken for a new disk.
    std::fs::write(brick2.join("stray"), b"x").unwrap();
    let r = c.cli(0, &["volume", "reset-brick", "nas", &bricks[2]]);
    assert!(!r.ok && r.stderr.contains("not empty"), "{}", r.stderr);
    std::fs::remove_file(brick2.join("stray")).unwrap();
    let r = c.ok(0, &["volume", "reset-brick", "nas", &bricks[2]]).stdout;
    assert!(r.contains("success"), "{r}");
    assert!(online(&c, 3));
    wait_for("the new brick to be refilled", Duration::from_secs(60), || {
        nothing_to_heal(&c)
    });
    let brick0 = std::path::PathBuf::from(c.brick_dir(0, "r"));
    let refilled = brick_files(&brick2);
    assert!(refilled.contains_key("a/b/c/while-refused"));
    assert_eq!(
        refilled,
        brick_files(&brick0),
        "the refilled brick matches its copy"
    );
    let ino = |p: std::path::PathBuf| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(
        ino(brick2.join("a/hard")),
        ino(brick2.join("a/b/f4")),
        "hard links stay links"
    );

    // A disk swapped under a running brick: the reset stops the old server (on the same
    // port) and refills the new directory.
    let brick1 = std::path::PathBuf::from(c.brick_dir(1, "r"));
    std::fs::rename(&brick1, brick1.with_extension("old")).unwrap();
    std::fs::create_dir(&brick1).unwrap();
    c.ok(2, &["volume", "reset-brick", "nas", &bricks[1]]);
    wait_for("the swapped disk to be refilled", Duration::from_secs(60), || {
        nothing_to_heal(&c) && online(&c, 3)
    });
    assert_eq!(brick_files(&brick1), brick_files(&brick0));
    assert_eq!(tree::snapshot(&dir).len(), before.len() + 1);

    // A volume that is not replicated has nothing to refill a brick from.
    let plain = c.brick(1, "plain");
    c.ok(0, &["volume", "create", "solo", &plain]);
    c.ok(0, &["volume", "start", "solo"]);
    let r = c.cli(0, &["volume", "reset-brick", "solo", &plain]);
    assert!(!r.ok && r.stderr.contains("not replicated"), "{}", r.stderr);
}

#[test]
fn a_brick_whose_server_is_lost_moves_to_another_and_is_refilled() {
    if !require_root() {
        return;
    }
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let bricks = nas_replica_3(&c, "r");
    let dir = c.dir.path().join("mnt");
    let _unmount = mount_nas(&c, &dir);
    std::fs::create_dir_all(dir.join("x/y")).unwrap();
    for i in 0..10 {
        std::fs::write(dir.join(format!("x/y/f{i}")), pattern(i, 5000 * i as usize)).unwrap();
    }

    // Node 2's server is lost for good: its brick moves to node 1.
    c.kill(2);
    let new_dir = std::path::PathBuf::from(c.brick_dir(1, "moved"));
    let new = c.brick(1, "moved");
    std::fs::write(new_dir.join("junk"), b"x").unwrap();
    let r = c.cli(0, &["volume", "replace-brick", "nas", &bricks[2], &new]);
    assert!(!r.ok && r.stderr.contains("not empty"), "{}", r.stderr);
    std::fs::remove_file(new_dir.join("junk")).unwrap();
    let r = c.cli(0, &["volume", "replace-brick", "nas", &bricks[2], &bricks[0]]);
    assert!(
        !r.ok && r.stderr.contains("already part of volume nas"),
        "{}",
        r.stderr
    );
    let r = c.cli(0, &["volume", "replace-brick", "nas", "node1:/not/a/brick", &new]);
    assert!(
        !r.ok && r.stderr.contains("not a brick of volume nas"),
        "{}",
        r.stderr
    );
    let r = c
        .ok(0, &["volume", "replace-brick", "nas", &bricks[2], &new])
        .stdout;
    assert!(r.contains("success"), "{r}");
    let info = c.ok(1, &["volume", "info", "nas"]).stdout;
    assert!(info.contains(&new) && !info.contains(&bricks[2]), "{info}");

    // The mount follows the brick to its new server; healing refills it.
    std::fs::write(dir.join("x/after-move"), b"moved").unwrap();
    wait_for("the moved brick to be refilled", Duration::from_secs(60), || {
        let info = c.ok(0, &["volume", "heal", "nas", "info"]).stdout;
        info.matches("Status: Connected").count() == 3 && info.matches("Number of entries: 0\n").count() == 3
    });
    let brick0 = std::path::PathBuf::from(c.brick_dir(0, "r"));
    let moved = brick_files(&new_dir);
    assert!(moved.contains_key("x/after-move") && moved.contains_key("x/y/f9"));
    assert_eq!(moved, brick_files(&brick0), "the moved brick matches its copy");
    // The mount writes to the brick's new place itself (healing would take seconds).
    std::fs::write(dir.join("x/direct"), b"z").unwrap();
    assert!(new_dir.join("x/direct").exists());
}

/// Volume `nas`, replica 3 over bricks `name` of nodes 0, 1 and 2, started and served.
fn nas_replica_3(c: &Daemons, name: &str) -> Vec<String> {
    let bricks: Vec<String> = (0..3).map(|i| c.brick(i, name)).collect();
    let mut args = vec!["volume", "create", "nas", "replica", "3"];
    args.extend(bricks.iter().map(String::as_str));
    c.ok(0, &args);
    c.ok(0, &["volume", "start", "nas"]);
    wait_for("bricks online", Duration::from_secs(10), || online(c, 3));
    bricks
}

/// Whether `volume heal nas info` shows three bricks with nothing waiting for heal.
fn nothing_to_heal(c: &Daemons) -> bool {
    let info = c.ok(0, &["volume", "heal", "nas", "info"]).stdout;
    info.matches("Number of entries: 0\n").count() == 3
}

/// Whether `volume status nas` shows `n` bricks online.
fn online(c: &Daemons, n: usize) -> bool {
    c.ok(0, &["volume", "status", "nas"])
        .stdout
        .matches(" Y ")
        .count()
        == n
}

/// Mounts `nas` (from node 0) on `dir`.
fn mount_nas(c: &Daemons, dir: &std::path::Path) -> Unmount {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new(shoal_bin())
        .args(["mount", "--key"])
        .arg(&c.key)
        .arg(format!("{}:nas", c.endpoint(0)))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Unmount(dir.to_path_buf())
}

/// What a brick holds for clients (its `.shoal` left out).
fn brick_files(p: &std::path::Path) -> std::collections::BTreeMap<String, tree::Node> {
    let mut t = tree::snapshot(p);
    t.retain(|k, _| !k.starts_with(".shoal"));
    t
}

/// Unmounts on every exit path.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new(shoal_bin())
            .arg("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

/// Removes a file on every exit path.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn mount_helper_and_fstab_lines_work() {
    if !require_root() {
        return;
    }
    let mut c = Daemons::new(2);
    c.start_all();
    c.wait_ready(0, 2);
    let (b0, b1) = (c.brick(0, "h"), c.brick(1, "h"));
    c.ok(0, &["volume", "create", "web", &b0, &b1]);
    c.ok(0, &["volume", "start", "web"]);
    // mount(8) runs /sbin/mount.shoal: install it for this test if it is not there.
    let helper = std::path::Path::new("/sbin/mount.shoal");
    let _installed = RemoveOnDrop(if helper.exists() {
        None
    } else {
        std::os::unix::fs::symlink(shoal_bin(), helper).unwrap();
        Some(helper.to_path_buf())
    });
    let dir = c.dir.path().join("helper-mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let source = format!("{}:web", c.endpoint(0));
    let key = format!("key={}", c.key.display());
    let st = std::process::Command::new("mount")
        .args(["-t", "shoal", "-o", &key, &source])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t shoal");
    let _unmount = Unmount(dir.clone());
    std::fs::write(dir.join("via-helper"), b"1").unwrap();
    assert!(std::process::Command::new("umount")
        .arg(&dir)
        .status()
        .unwrap()
        .success());

    // An fstab line (a private fstab, so the system's is left alone).
    let fstab = c.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("{source} {} shoal defaults,_netdev,{key} 0 0\n", dir.display()),
    )
    .unwrap();
    let st = std::process::Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount from an fstab line");
    assert_eq!(std::fs::read(dir.join("via-helper")).unwrap(), b"1");
}

#[test]
fn split_brains_are_listed_and_settled_from_the_cli() {
    if !require_root() {
        return;
    }
    let mut c = Daemons::new(3);
    c.start_all();
    c.wait_ready(0, 3);
    let bricks = nas_replica_3(&c, "s");
    let dir = c.dir.path().join("mnt");
    let _unmount = mount_nas(&c, &dir);
    std::fs::write(dir.join("f"), b"same").unwrap();
    wait_for("the volume to be clean", Duration::from_secs(30), || {
        nothing_to_heal(&c)
    });

    // Each copy gets bytes of its own and marks the next copy as behind: none is good.
    let status = c.ok(0, &["volume", "status", "nas", "--json"]).stdout;
    let views: Vec<cluster::admin::VolumeStatusView> = serde_json::from_str(&status).expect("status");
    let spec = views[0].volume.spec.clone();
    let key = proto::auth::ClusterKey::load(std::path::Path::new(&c.key)).expect("key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        for (i, b) in spec.bricks.iter().enumerate() {
            let alone = layout::VolumeSpec {
                replica: 1,
                bricks: vec![b.clone()],
                ..spec.clone()
            };
            let v = client::Volume::connect(alone, key.clone(), "test", Duration::from_secs(5))
                .await
                .expect("brick");
            let id = v.root.lookup(proto::FileId::ROOT, b"f").await.expect("f").attr.id;
            let blame = [(client::replicate::pending_key((i + 1) % 3), 1)];
            v.root.xattr_add(id, &blame).await.expect("marker");
        }
    });
    let on_brick = |i: usize| std::path::Path::new(&c.brick_dir(i, "s")).join("f");
    for i in 0..3 {
        std::fs::write(on_brick(i), format!("copy {i}")).unwrap();
    }
    let info = c.ok(0, &["volume", "heal", "nas", "info", "split-brain"]).stdout;
    assert!(info.contains("\n/f\n") || info.starts_with("/f\n"), "{info}");
    assert!(info.contains("Number of entries in split-brain: 1"), "{info}");

    // Refused, changing nothing: copies of one size, a brick of no copy, bad usage.
    let r = c.cli(0, &["volume", "heal", "nas", "split-brain", "bigger-file", "/f"]);
    assert!(!r.ok && r.stderr.contains("name a source brick"), "{}", r.stderr);
    let stranger = c.brick(0, "elsewhere");
    let r = c.cli(
        0,
        &[
            "volume",
            "heal",
            "nas",
            "split-brain",
            "source-brick",
            &stranger,
            "/f",
        ],
    );
    assert!(!r.ok, "{}", r.stdout);
    let r = c.cli(0, &["volume", "heal", "nas", "split-brain", "newest", "/f"]);
    assert!(!r.ok && r.stderr.contains("usage"), "{}", r.stderr);
    let r = c.cli(
        0,
        &["volume", "heal", "nas", "split-brain", "latest-mtime", "/nothing"],
    );
    assert!(!r.ok && r.stderr.contains("/nothing"), "{}", r.stderr);
    for i in 0..3 {
        assert_eq!(
            std::fs::read(on_brick(i)).unwrap(),
            format!("copy {i}").as_bytes()
        );
    }
    assert!(c
        .ok(0, &["volume", "heal", "nas", "info", "split-brain"])
        .stdout
        .contains("/f"));

    // The second brick's copy is kept, and healed over the others.
    let r = c.ok(
        2,
        &[
            "volume",
            "heal",
            "nas",
            "split-brain",
            "source-brick",
            &bricks[1],
            "/f",
        ],
    );
    assert!(
        r.stdout.contains(&format!("/f: kept the copy on {}", bricks[1])),
        "{}",
        r.stdout
    );
    wait_for(
        "the kept copy to be healed over the others",
        Duration::from_secs(30),
        || nothing_to_heal(&c) && (0..3).all(|i| std::fs::read(on_brick(i)).is_ok_and(|d| d == b"copy 1")),
    );
    let info = c.ok(0, &["volume", "heal", "nas", "info", "split-brain"]).stdout;
    assert!(info.contains("Number of entries in split-brain: 0"), "{info}");
}
