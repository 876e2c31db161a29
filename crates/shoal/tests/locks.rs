//! POSIX (fcntl) locks are held on the bricks: exclusive across two mounts, released when
//! the holder releases or dies.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A python process that takes an fcntl lock and reports on stdout.
struct Locker {
    child: Child,
    out: BufReader<ChildStdout>,
}

const SCRIPT: &str = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
mode = sys.argv[2]
kind = fcntl.LOCK_SH if mode.startswith("sh") else fcntl.LOCK_EX
if mode.endswith("-nb"):
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
        print("locked", flush=True)
    except OSError:
        print("busy", flush=True)
        sys.exit(0)
else:
    fcntl.lockf(fd, kind)
    print("locked", flush=True)
sys.stdin.read()  # hold until stdin closes
fcntl.lockf(fd, fcntl.LOCK_UN)
print("released", flush=True)
"#;

impl Locker {
    fn start(path: &std::path::Path, mode: &str) -> Locker {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(path)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Locker { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read");
        l.trim().to_string()
    }

    fn release(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one line in a thread so that a test can bound how long it waits.
fn line_within(l: &mut Locker, within: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = l.child.id() as i32;
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(l.line());
        });
        let got = rx.recv_timeout(within).ok();
        if got.is_none() {
            // Unblock the reader thread.
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        got
    })
}

#[test]
fn locks_are_exclusive_across_mounts_and_die_with_their_holder() {
    if !require_root() {
        return;
    }
    for (stripe, replica, n) in [(1, 1, 2), (1, 2, 2), (2, 1, 2)] {
        let b = Bricks::start(n);
        let spec = b.spec("l", stripe, replica);
        let ma = b.mount(&spec, "a");
        let mb = b.mount(&spec, "b");
        std::fs::write(ma.path("f"), b"lock me").unwrap();

        let mut holder = Locker::start(&ma.path("f"), "ex");
        assert_eq!(holder.line(), "locked");
        assert_eq!(
            Locker::start(&mb.path("f"), "ex-nb").line(),
            "busy",
            "exclusive lock seen through the other mount"
        );
        assert_eq!(Locker::start(&mb.path("f"), "sh-nb").line(), "busy");
        let mut waiter = Locker::start(&mb.path("f"), "ex");
        // The waiter must still be blocked once a later probe has seen the lock held.
        assert_eq!(Locker::start(&mb.path("f"), "ex-nb").line(), "busy");
        holder.release();
        assert_eq!(holder.line(), "released");
        assert_eq!(
            line_within(&mut waiter, Duration::from_secs(10)).as_deref(),
            Some("locked"),
            "waiter got the lock"
        );
        waiter.release();
        assert_eq!(waiter.line(), "released");

        // Shared locks coexist.
        let mut r1 = Locker::start(&ma.path("f"), "sh");
        assert_eq!(r1.line(), "locked");
        assert_eq!(Locker::start(&mb.path("f"), "sh-nb").line(), "locked");
        drop(r1);

        // A killed holder's lock goes with it.
        let mut doomed = Locker::start(&ma.path("f"), "ex");
        assert_eq!(doomed.line(), "locked");
        doomed.child.kill().unwrap();
        doomed.child.wait().unwrap();
        let mut after = Locker::start(&mb.path("f"), "ex");
        assert_eq!(
            line_within(&mut after, Duration::from_secs(10)).as_deref(),
            Some("locked"),
            "lock freed by the kill"
        );
        let _ = after.child.stdin.as_mut().map(|s| s.write_all(b""));
    }
}
