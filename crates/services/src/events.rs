//! Event scripts: executable files in a directory, run in name order for each event, each
//! within a timeout, as `SCRIPT EVENT [ARGS...]`.
//!
//! | event | when | arguments |
//! |---|---|---|
//! | `init` | before the node joins | |
//! | `startup` | once the node is part of the cluster | |
//! | `monitor` | periodically; a failure makes the node UNHEALTHY | |
//! | `takeip` | after a public address was added here | `IFACE IP PREFIX` |
//! | `releaseip` | after a public address was removed from here | `IFACE IP PREFIX` |
//! | `ipreallocated` | after a round of address changes on this node | |
//! | `shutdown` | when the daemon stops | |
//!
//! Files that are not executable are skipped (that is how a script is disabled). The last
//! result of each script for each event is kept for `shoal scriptstatus`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most output kept per script run.
const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Event {
    Init,
    Startup,
    Monitor,
    TakeIp,
    ReleaseIp,
    IpReallocated,
    Shutdown,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Init => "init",
            Event::Startup => "startup",
            Event::Monitor => "monitor",
            Event::TakeIp => "takeip",
            Event::ReleaseIp => "releaseip",
            Event::IpReallocated => "ipreallocated",
            Event::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    Error(i32),
    TimedOut,
    Disabled,
}

/// The last run of one script for one event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptResult {
    pub script: String,
    pub verdict: Verdict,
    pub duration: f64,
    /// Unix time the run started, seconds.
    pub started: u64,
    pub output: String,
}

pub struct EventScripts {
    dir: PathBuf,
    last: Mutex<BTreeMap<Event, Vec<ScriptResult>>>,
}

impl EventScripts {
    pub fn new(dir: &Path) -> EventScripts {
        EventScripts {
            dir: dir.to_path_buf(),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    fn scripts(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        v
    }

    /// Runs every script for `event`, in order, stopping at the first failure (as CTDB
    /// does). True when all passed.
    pub async fn run(&self, event: Event, args: &[String], timeout: Duration) -> bool {
        let mut results = Vec::new();
        let mut ok = true;
        for path in self.scripts() {
            let script = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let started = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let executable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            if !executable {
                results.push(ScriptResult {
                    script,
                    verdict: Verdict::Disabled,
                    duration: 0.0,
                    started,
                    output: String::new(),
                });
                continue;
            }
            let t = Instant::now();
            let mut cmd = tokio::process::Command::new(&path);
            cmd.arg(event.name())
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let (verdict, output) = match tokio::time::timeout(timeout, cmd.output()).await {
                Err(_) => (Verdict::TimedOut, format!("timed out after {timeout:?}")),
                Ok(Err(e)) => (Verdict::Error(-1), format!("cannot run: {e}")),
                Ok(Ok(out)) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    text.truncate(MAX_OUTPUT);
                    let v = if out.status.success() {
                        Verdict::Ok
                    } else {
                        Verdict::Error(out.status.code().unwrap_or(-1))
                    };
                    (v, text)
                }
            };
            let failed = verdict != Verdict::Ok;
            if failed {
                tracing::warn!(event = event.name(), %script, ?verdict, output = %output.trim(), "event script failed");
            }
            results.push(ScriptResult {
                script,
                verdict,
                duration: t.elapsed().as_secs_f64(),
                started,
                output,
            });
            if failed {
                ok = false;
                break;
            }
        }
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event, results);
        ok
    }

    /// The last results of an event's scripts.
    pub fn status(&self, event: Event) -> Vec<ScriptResult> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&event)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, exec: bool) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn scripts_run_in_order_and_failures_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        script(
            d.path(),
            "10.first",
            &format!("echo \"first $@\" >> {}", log.display()),
            true,
        );
        script(d.path(), "20.off", "exit 1", false);
        script(
            d.path(),
            "30.second",
            &format!(
                "echo \"second $@\" >> {}; [ \"$1\" != monitor ] || [ ! -e {}/fail ]",
                log.display(),
                d.path().display()
            ),
            true,
        );
        let ev = EventScripts::new(d.path());
        assert!(
            ev.run(
                Event::TakeIp,
                &["eth1".into(), "10.0.0.1".into(), "24".into()],
                Duration::from_secs(5)
            )
            .await
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "first takeip eth1 10.0.0.1 24\nsecond takeip eth1 10.0.0.1 24\n"
        );
        assert!(ev.run(Event::Monitor, &[], Duration::from_secs(5)).await);
        std::fs::write(d.path().join("fail"), "").unwrap();
        assert!(!ev.run(Event::Monitor, &[], Duration::from_secs(5)).await);
        let st = ev.status(Event::Monitor);
        assert_eq!(
            st.iter().map(|r| r.verdict).collect::<Vec<_>>(),
            vec![Verdict::Ok, Verdict::Disabled, Verdict::Error(1)]
        );
        script(d.path(), "40.slow", "sleep 5", true);
        std::fs::remove_file(d.path().join("fail")).unwrap();
        assert!(!ev.run(Event::Monitor, &[], Duration::from_millis(200)).await);
        assert_eq!(
            ev.status(Event::Monitor).last().map(|r| r.verdict),
            Some(Verdict::TimedOut)
        );
    }
}
