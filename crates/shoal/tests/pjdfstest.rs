//! The POSIX conformance suite pjdfstest against distribute and replica mounts: every test
//! that passes on a local ext4 directory must pass on the mount, or be listed in
//! docs/pjdfstest.md with the reason.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

fn pjdfstest_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return Some(p.into());
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pjdfstest"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/var/tmp/shoal-tools/bin/pjdfstest")])
        .find(|p| p.is_file())
}

/// Test name → status ("ok", "FAILED", "skipped", ...).
fn run(bin: &Path, config: &Path, dir: &Path, secondary: &Path) -> BTreeMap<String, String> {
    let _ = std::fs::remove_dir_all(secondary);
    std::fs::create_dir_all(secondary).unwrap();
    let out = Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(secondary)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pjdfstest");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) || line.starts_with("Summary") {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(first)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        let status = std::iter::once(first).chain(parts).collect::<Vec<_>>().join(" ");
        results.insert(name.to_string(), status);
    }
    assert!(
        results.len() > 300,
        "pjdfstest ran only {} tests:\n{text}",
        results.len()
    );
    results
}

/// Tests allowed to fail on a mount: the `- `name`` items of docs/pjdfstest.md.
fn known_differences() -> Vec<String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/pjdfstest.md");
    let text = std::fs::read_to_string(&doc).expect("docs/pjdfstest.md");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn pjdfstest_on_distribute_and_replica() {
    if !require_root() {
        return;
    }
    let Some(bin) = pjdfstest_bin() else {
        if std::env::var_os("SHOAL_REQUIRE_ALL").is_some() {
            panic!("pjdfstest is not installed (cargo install pjdfstest --root /var/tmp/shoal-tools)");
        }
        eprintln!("SKIPPED: pjdfstest is not installed");
        return;
    };
    let status = Command::new("id").arg("tests").output().unwrap();
    assert!(
        status.status.success(),
        "pjdfstest needs a 'tests' user (see docs/pjdfstest.md)"
    );

    let b = Bricks::start(3);
    let config = b.dir.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // The test users must reach the directories under test.
    let local = b.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    sh(&format!(
        "chmod 755 {} {}",
        b.dir.path().display(),
        local.display()
    ));
    let secondary = Path::new("/tmp").join(format!("shoal-pjdf-secondary-{}", std::process::id()));
    let baseline = run(&bin, &config, &local, &secondary);
    let known = known_differences();

    let mut report = Vec::new();
    for (label, replica) in [("distribute", 1), ("replica", 3)] {
        let m = b.mount(&b.spec(label, 1, replica), label);
        let results = run(&bin, &config, &m.dir, &secondary);
        let mut passed = 0;
        for (name, status) in &results {
            if status == "ok" {
                passed += 1;
            }
            if baseline.get(name).map(String::as_str) == Some("ok") && status != "ok" && !known.contains(name)
            {
                report.push(format!("{label}: {name}: {status} (ok on ext4)"));
            }
        }
        eprintln!("pjdfstest on {label}: {passed} of {} passed", results.len());
    }
    let _ = std::fs::remove_dir_all(&secondary);
    assert!(
        report.is_empty(),
        "pjdfstest regressions against ext4:\n{}",
        report.join("\n")
    );
}
