//! Test harness: real brick server processes on 127.0.0.1 and real FUSE mounts, all torn
//! down on every exit path (mounts unmounted, processes killed by PID).
#![allow(dead_code)]

pub mod daemons;
pub mod ha;
pub mod tree;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn shoal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// True when running as root. Tests that need root call [`require_root`].
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// FUSE mounts and bricks with trusted xattrs need root. Without it the test is skipped
/// loudly, except where SHOAL_REQUIRE_ALL is set (CI), where that is a failure.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("SHOAL_REQUIRE_ALL").is_some() {
        panic!("this test needs root (SHOAL_REQUIRE_ALL is set)");
    }
    eprintln!("SKIPPED: this test needs root");
    false
}

/// True if every thread listed under `tasks` (`/proc/PID/task`) is stopped (and there is
/// at least one).
fn all_stopped(tasks: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(tasks) else {
        return false;
    };
    let states: Vec<bool> = dir
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        })
        .collect();
    !states.is_empty() && states.iter().all(|s| *s)
}

/// Waits for `cond` until `deadline`, polling; panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Brick {
    pub path: PathBuf,
    pub addr: String,
    child: Option<Child>,
}

/// A set of brick servers, each its own process.
pub struct Bricks {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub bricks: Vec<Brick>,
}

fn start_brick(key: &Path, path: &Path, listen: &str) -> (Child, String) {
    start_brick_with(key, path, listen, &[])
}

fn start_brick_with(key: &Path, path: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(shoal_bin())
        .args(["brick", "--dir"])
        .arg(path)
        .args(["--listen", listen, "--key"])
        .arg(key)
        .args(extra)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start brick");
    let out = child.stdout.take().expect("brick stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("brick output");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("brick said {line:?}"))
        .to_string();
    (child, addr)
}

impl Bricks {
    pub fn start(n: usize) -> Bricks {
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, proto::auth::ClusterKey::generate().to_text()).expect("key");
        let mut bricks = Vec::new();
        for i in 0..n {
            let path = dir.path().join(format!("brick{i}"));
            std::fs::create_dir_all(&path).expect("brick dir");
            let (child, addr) = start_brick(&key, &path, "127.0.0.1:0");
            bricks.push(Brick {
                path,
                addr,
                child: Some(child),
            });
        }
        Bricks { dir, key, bricks }
    }

    /// The process of brick `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.bricks[i].child.as_ref().map(Child::id)
    }

    /// SIGKILL of one brick server.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.bricks[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP of one brick server: its connections stay open but nothing answers. Returns
    /// once every thread of it has stopped: a thread the signal has not reached yet could
    /// still answer the next request.
    pub fn stop(&mut self, i: usize) {
        if let Some(c) = &self.bricks[i].child {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(c),
                rustix::process::Signal::STOP,
            );
            let tasks = format!("/proc/{}/task", c.id());
            wait_for("the brick to stop", Duration::from_secs(10), || {
                all_stopped(&tasks)
            });
        }
    }

    /// SIGCONT of a stopped brick server.
    pub fn resume(&mut self, i: usize) {
        if let Some(c) = &self.bricks[i].child {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(c),
                rustix::process::Signal::CONT,
            );
        }
    }

    /// Starts a killed brick again on its old address.
    /// One more brick, serving `path`, started with `extra` arguments.
    pub fn add(&mut self, path: &Path, extra: &[&str]) -> usize {
        let (child, addr) = start_brick_with(&self.key, path, "127.0.0.1:0", extra);
        self.bricks.push(Brick {
            path: path.to_path_buf(),
            addr,
            child: Some(child),
        });
        self.bricks.len() - 1
    }

    pub fn restart(&mut self, i: usize) {
        let b = &mut self.bricks[i];
        let (child, addr) = start_brick(&self.key, &b.path, &b.addr);
        assert_eq!(addr, b.addr);
        b.child = Some(child);
    }

    /// A spec file for these bricks grouped as given.
    pub fn spec(&self, name: &str, stripe: u32, replica: u32) -> PathBuf {
        let spec = layout::VolumeSpec {
            version: layout::spec::SPEC_VERSION,
            name: name.to_string(),
            id: rand::random(),
            stripe,
            replica,
            stripe_size: layout::spec::DEFAULT_STRIPE_SIZE,
            bricks: self
                .bricks
                .iter()
                .enumerate()
                .map(|(i, b)| layout::BrickSpec {
                    node: format!("node{i}"),
                    path: b.path.display().to_string(),
                    addr: b.addr.clone(),
                })
                .collect(),
        };
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&spec).expect("spec toml")).expect("write spec");
        path
    }

    /// Mounts the volume described by `spec` at a new directory.
    pub fn mount(&self, spec: &Path, label: &str) -> Mount {
        let dir = self.dir.path().join(format!("mnt-{label}"));
        std::fs::create_dir_all(&dir).expect("mount dir");
        Mount::new(spec, &self.key, &dir)
    }
}

impl Drop for Bricks {
    fn drop(&mut self) {
        for i in 0..self.bricks.len() {
            self.kill(i);
        }
    }
}

/// How long a mount may stay up before its test is taken as hung: no test here needs
/// a mount for nearly that long.
pub const HUNG_AFTER: Duration = Duration::from_secs(300);

/// A FUSE mount served by a `shoal mount -f` process.
pub struct Mount {
    pub dir: PathBuf,
    child: Child,
    /// Dropped with the mount, which ends its watchdog (`watch`).
    _watchdog: std::sync::mpsc::Sender<()>,
    /// Set when the watchdog took the test as hung: it fails then, whatever it saw.
    hung: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Aborts the FUSE connection of the mount at `dir` (the kernel's
/// `/sys/fs/fuse/connections/N/abort`, N being its device's minor number, read from
/// `/proc/self/mountinfo` so that nothing here waits on the mount): every request waiting
/// on it fails with ECONNABORTED, and every one after with ENOTCONN.
pub fn abort_fuse(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mounts.contains(" - fusectl ") {
        // Where no init system mounted the FUSE control file system, as on this machine.
        // (Left mounted: it is where the kernel expects it.)
        let _ = rustix::mount::mount(
            "fusectl",
            "/sys/fs/fuse/connections",
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        );
    }
    let dir = dir.to_string_lossy();
    for line in mounts.lines() {
        // id, parent id, major:minor, root, mount point, ...
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[4] == dir {
            if let Some((_, minor)) = f[2].split_once(':') {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
    }
}

/// Until `stop` is dropped, waits `after`; then takes the test as hung (sets `hung`),
/// aborts the mount's FUSE connection and kills its process (`pid`), so that its threads
/// waiting on the mount fail instead of holding the test (and the suite) up for good. (An
/// abort does not end requests the kernel already handed to a mount over FUSE io_uring;
/// the end of its process does.)
fn watch(
    dir: PathBuf,
    pid: u32,
    after: Duration,
    hung: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(after) {
            eprintln!(
                "{}: still mounted after {after:?}: the test is taken as hung, its FUSE connection \
                 aborted and its mount killed",
                dir.display()
            );
            hung.store(true, std::sync::atomic::Ordering::SeqCst);
            abort_fuse(&dir);
            // (Not reaped before the Mount is dropped, the PID cannot have been reused.)
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).expect("a mount's PID"),
                rustix::process::Signal::KILL,
            );
        }
    });
    stop
}

impl Mount {
    pub fn new(spec: &Path, key: &Path, dir: &Path) -> Mount {
        Mount::watched(spec, key, dir, HUNG_AFTER)
    }

    /// A mount whose test is taken as hung after `hung_after` (see [`HUNG_AFTER`]).
    pub fn watched(spec: &Path, key: &Path, dir: &Path, hung_after: Duration) -> Mount {
        let name = std::fs::read_to_string(spec)
            .ok()
            .and_then(|t| toml::from_str::<layout::VolumeSpec>(&t).ok())
            .map(|s| s.name)
            .expect("spec name");
        let mut child = Command::new(shoal_bin())
            .args(["mount", "-f", "--spec"])
            .arg(spec)
            .arg("--key")
            .arg(key)
            .arg(format!("127.0.0.1:{name}"))
            .arg(dir)
            .env("SHOAL_MOUNT_NOTIFY", "1")
            // SHOAL_TEST_MOUNT_LOG: the mounts' log filter, to see what they did.
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_TEST_MOUNT_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mount");
        let out = child.stdout.take().expect("mount stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("mount output");
        let hung = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pid = child.id();
        let m = Mount {
            dir: dir.to_path_buf(),
            child,
            _watchdog: watch(dir.to_path_buf(), pid, hung_after, hung.clone()),
            hung,
        };
        assert_eq!(line.trim(), "ready", "mount failed: {line}");
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the watchdog took the test as hung; the test then no longer fails for it.
    pub fn taken_as_hung(&self) -> bool {
        self.hung.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this mount's process has a connection up to the brick listening on `addr`
    /// (an IPv4 `host:port`): over TCP, or over the Unix socket a server of this host
    /// also listens on (`proto::transport`). The mount's socket inodes (`/proc/PID/fd`)
    /// are looked for among the established TCP connections to `addr` (`/proc/net/tcp`)
    /// and among the peers of the brick's ends of Unix connections (`ss`).
    pub fn connected_to(&self, addr: &str) -> bool {
        let Ok(std::net::SocketAddr::V4(v4)) = addr.parse() else {
            panic!("not an IPv4 address: {addr}");
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return false;
        };
        let mine: std::collections::HashSet<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect();
        // The kernel prints the address as the hex of its bytes in memory order.
        let tcp_peer = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let by_tcp = tcp.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01: established), socket inode
            f.len() > 9 && f[2] == tcp_peer && f[3] == "01" && mine.contains(f[9])
        });
        let unix = sh("ss -xH state established");
        let brick_end = format!("@shoal:{addr}");
        by_tcp
            || unix.lines().any(|line| {
                // type, receive and send queues, local name and inode, peer name and inode
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 6 && f[3] == brick_end && mine.contains(f[6])
            })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Unmount first so that nothing is left answering "transport endpoint is not
        // connected", then make sure the process is gone.
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        // (A test that gets on once its mount is aborted may see nothing wrong.)
        if self.hung.load(std::sync::atomic::Ordering::SeqCst) && !std::thread::panicking() {
            panic!("{}: the test hung (see above)", self.dir.display());
        }
    }
}

/// A barrier that a participant's panic breaks: the others then panic too instead of
/// waiting for it for ever (`std::sync::Barrier` would hold them, and the suite, up). Each
/// participant holds a [`Meet::member`] guard while it takes part.
pub struct Meet {
    n: usize,
    /// Arrived in this round, rounds completed, broken.
    state: std::sync::Mutex<(usize, u64, bool)>,
    turned: std::sync::Condvar,
}

pub struct Member<'a>(&'a Meet);

impl Drop for Member<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.break_up();
        }
    }
}

impl Meet {
    pub fn new(n: usize) -> Meet {
        Meet {
            n,
            state: std::sync::Mutex::new((0, 0, false)),
            turned: std::sync::Condvar::new(),
        }
    }

    /// A guard that breaks the meeting if this thread panics while holding it.
    pub fn member(&self) -> Member<'_> {
        Member(self)
    }

    /// Waits until all `n` have arrived; panics if the meeting was broken.
    pub fn wait(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!s.2, "another thread of this test failed");
        let round = s.1;
        s.0 += 1;
        if s.0 == self.n {
            (s.0, s.1) = (0, round + 1);
            self.turned.notify_all();
            return;
        }
        while s.1 == round && !s.2 {
            s = self.turned.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        assert!(s.1 != round, "another thread of this test failed");
    }

    /// Ends the meeting: whoever waits, or comes to wait, panics.
    pub fn break_up(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
        self.turned.notify_all();
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops process `pid` (SIGSTOP) until the returned guard is dropped, on every exit path.
/// Returns once every thread of it is stopped: `kill` only queues the signal, and a busy
/// machine may let another of its threads serve a request or two before the one woken for
/// the signal gets to stop them all.
pub fn stop_process(pid: u32) -> Stopped {
    signal(pid, rustix::process::Signal::STOP).expect("stop the process");
    let stopped = Stopped(pid);
    let tasks = format!("/proc/{pid}/task");
    wait_for("the process to stop", Duration::from_secs(10), || {
        all_stopped(&tasks)
    });
    stopped
}

pub struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.0, rustix::process::Signal::CONT);
    }
}

fn signal(pid: u32, s: rustix::process::Signal) -> rustix::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::kill_process(pid, s)
}

/// Objects the brick at `path` lists as waiting for heal (`.shoal/pending/ab/<id>`).
pub fn pending_heals(path: &Path) -> usize {
    let fans = std::fs::read_dir(path.join(".shoal/pending")).expect("pending index");
    fans.map(|f| {
        std::fs::read_dir(f.expect("fan-out folder").path())
            .expect("fan-out folder")
            .count()
    })
    .sum()
}

/// The value of xattr `name` of `p` (not following a symlink), if it has one.
pub fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}
