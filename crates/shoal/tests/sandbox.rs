//! `shoal sandbox up` and `down` on a fresh directory, as root (nodes in network namespaces)
//! and as an ordinary user (nodes on loopback addresses): a working mounted volume, then
//! nothing left behind.

mod common;

use common::*;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

fn env_file(dir: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(dir.join("sandbox.env")).expect("sandbox.env");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn mounted_under(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&dir.display().to_string())
}

/// Live (not zombie) processes whose command line mentions `dir`.
fn processes_of(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let Ok(cmd) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(p.join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        if cmd.contains(&needle) && !zombie {
            out.push(cmd);
        }
    }
    out
}

fn run_as(uid: Option<(u32, u32)>, args: &[&str], env: &HashMap<String, String>) -> std::process::Output {
    let mut c = Command::new(shoal_bin());
    c.args(args).envs(env);
    if let Some((u, g)) = uid {
        c.uid(u).gid(g);
    }
    c.output().expect("run shoal")
}

fn round_trip(uid: Option<(u32, u32)>, dir: &Path) {
    let d = dir.display().to_string();
    let none = HashMap::new();
    let up = run_as(uid, &["sandbox", "up", "--dir", &d], &none);
    assert!(
        up.status.success(),
        "sandbox up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let env = env_file(dir);
    let (mnt, socket) = (env["SHOAL_MOUNT"].clone(), env["SHOAL_SOCKET"].clone());
    assert!(mounted_under(dir), "the volume is mounted");
    assert!(env["SHOAL_VOLUME"].ends_with(":nas"));
    let status = run_as(uid, &["status"], &env);
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("pnn:2"),
        "status through SHOAL_SOCKET={socket}"
    );
    // The mount works for the user who made it.
    let probe = run_as(uid, &["volume", "info", "nas"], &env);
    assert!(String::from_utf8_lossy(&probe.stdout).contains("Status: Started"));
    let w = Command::new("sh")
        .arg("-c")
        .arg(format!("echo sandboxed > {mnt}/probe && cat {mnt}/probe"))
        .uid(uid.map_or(0, |u| u.0))
        .gid(uid.map_or(0, |u| u.1))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&w.stdout).trim(),
        "sandboxed",
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );

    let down = run_as(uid, &["sandbox", "down", "--dir", &d], &none);
    assert!(
        down.status.success(),
        "sandbox down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!mounted_under(dir), "nothing stays mounted");
    assert_eq!(processes_of(dir), Vec::<String>::new(), "no process stays");
    if let Some(ns) = env.get("SHOAL_NETNS") {
        let list = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string();
        for n in ns.split_whitespace() {
            assert!(!list.contains(n), "namespace {n} remains");
        }
    }
}

#[test]
fn sandbox_up_and_down_as_root_and_as_a_user() {
    if !require_root() {
        // An ordinary user can still run the user half.
        let dir = tempfile::Builder::new()
            .prefix("shoal-sbx-")
            .tempdir_in("/var/tmp")
            .unwrap();
        round_trip(None, dir.path());
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("shoal-sbx-")
        .tempdir_in("/var/tmp")
        .unwrap();
    round_trip(None, dir.path());

    let ids = Command::new("id").args(["-u", "tests"]).output().unwrap();
    assert!(
        ids.status.success(),
        "the 'tests' user is needed (scripts/deps.sh test makes it)"
    );
    let uid: u32 = String::from_utf8_lossy(&ids.stdout).trim().parse().unwrap();
    let gid: u32 =
        String::from_utf8_lossy(&Command::new("id").args(["-g", "tests"]).output().unwrap().stdout)
            .trim()
            .parse()
            .unwrap();
    let user_dir = tempfile::Builder::new()
        .prefix("shoal-sbx-user-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::os::unix::fs::chown(user_dir.path(), Some(uid), Some(gid)).unwrap();
    round_trip(Some((uid, gid)), user_dir.path());
}
