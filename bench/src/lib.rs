//! Shared pieces of the benchmarks: running tools, starting shoal volumes, reading CPU time.

pub mod ctdb;
pub mod freshfs;
pub mod gluster;

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: f64 = 1024.0 * 1024.0;

/// Something mounted to measure.
pub trait Backend {
    fn dir(&self) -> &Path;
    /// Processes doing the storage work (their CPU time is accounted).
    fn pids(&self) -> Vec<u32>;
}

/// An event script whose `monitor` fails while `flag` exists (shoal's and CTDB's scripts take
/// the event as their first argument alike).
pub fn failing_monitor(script: &Path, flag: &Path) -> Result<()> {
    std::fs::write(
        script,
        format!(
            "#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\n[ -e {} ] && exit 1\nexit 0\n",
            flag.display()
        ),
    )?;
    std::fs::set_permissions(script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn which(tool: &str) -> Result<()> {
    if run_ok("sh", &["-c", &format!("command -v {tool}")]) {
        Ok(())
    } else {
        bail!("{tool} is not installed")
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn pgrep(pattern: &str) -> Vec<u32> {
    run("pgrep", &["-f", pattern])
        .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > end {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// User plus system CPU seconds of these processes so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // Clock ticks per second: 100 on every Linux this runs on.
    const HZ: f64 = 100.0;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / HZ)
        })
        .sum()
}

pub fn drop_caches() {
    let _ = run("sync", &[]);
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs fio with JSON output.
pub fn fio(args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["--output-format=json"];
    a.extend_from_slice(args);
    let out = run("fio", &a)?;
    // fio may print notes before the JSON document.
    let start = out
        .find('{')
        .ok_or_else(|| anyhow!("fio printed no JSON: {out}"))?;
    Ok(serde_json::from_str(&out[start..])?)
}

pub fn fio_field(out: &serde_json::Value, dir: &str, field: &str) -> Result<f64> {
    out["jobs"][0][dir][field]
        .as_f64()
        .ok_or_else(|| anyhow!("fio output lacks jobs[0].{dir}.{field}"))
}

/// The `shoal` binary built beside this one.
pub fn shoal_bin() -> Result<PathBuf> {
    match std::env::var_os("SHOAL_BIN") {
        Some(p) => Ok(p.into()),
        None => sibling("shoal", "shoal"),
    }
}

/// The program `name` built next to this one (by `cargo build --release -p {package}`).
fn sibling(name: &str, package: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow!("no directory"))?;
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found: build it (cargo build --release -p {package}){}",
            p.display(),
            if name == "shoal" { " or set SHOAL_BIN" } else { "" }
        )
    }
}

/// The in-memory FUSE file system of `bench/src/bin/memfs.rs` mounted on a directory: what
/// the kernel's FUSE round trips alone allow.
pub struct MemFs {
    dir: PathBuf,
    child: Child,
}

impl MemFs {
    pub fn start(dir: &Path) -> Result<MemFs> {
        std::fs::create_dir_all(dir)?;
        let child = Command::new(sibling("memfs", "shoal-bench")?)
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut m = MemFs {
            dir: dir.to_path_buf(),
            child,
        };
        let line = first_line(&mut m.child)?;
        if line != "ready" {
            bail!("memfs failed to mount: {line}");
        }
        Ok(m)
    }
}

impl Backend for MemFs {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
}

impl Drop for MemFs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.dir.display().to_string()]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shoal volume of brick processes on 127.0.0.1 with a FUSE mount.
pub struct ShoalVolume {
    root: PathBuf,
    mount: PathBuf,
    shoal: PathBuf,
    key: PathBuf,
    /// Brick processes by position (None: killed), and their addresses.
    bricks: Vec<Option<Child>>,
    addrs: Vec<String>,
    mounter: Option<Child>,
}

fn first_line(child: &mut Child) -> Result<String> {
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

impl ShoalVolume {
    pub fn start(shoal: &Path, root: &Path, bricks: usize, stripe: u32, replica: u32) -> Result<ShoalVolume> {
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir_all(root)?;
        let key = root.join("cluster.key");
        std::fs::write(&key, proto::auth::ClusterKey::generate().to_text())?;
        let mut vol = ShoalVolume {
            root: root.into(),
            mount: root.join("mnt"),
            shoal: shoal.into(),
            key: key.clone(),
            bricks: Vec::new(),
            addrs: Vec::new(),
            mounter: None,
        };
        let mut specs = Vec::new();
        for i in 0..bricks {
            let dir = root.join(format!("b{i}"));
            let mut c = Command::new(shoal)
                .args(["brick", "--listen", "127.0.0.1:0", "--dir"])
                .arg(&dir)
                .arg("--key")
                .arg(&key)
                .stdout(Stdio::piped())
                .spawn()?;
            let line = first_line(&mut c)?;
            vol.bricks.push(Some(c));
            let addr = line
                .strip_prefix("listening on ")
                .ok_or_else(|| anyhow!("brick said {line:?}"))?;
            vol.addrs.push(addr.into());
            specs.push(layout::BrickSpec {
                node: format!("n{i}"),
                path: dir.display().to_string(),
                addr: addr.into(),
            });
        }
        let spec = layout::VolumeSpec {
            version: layout::spec::SPEC_VERSION,
            name: "bench".into(),
            id: rand::random(),
            stripe,
            replica,
            stripe_size: layout::spec::DEFAULT_STRIPE_SIZE,
            bricks: specs,
        };
        let spec_file = root.join("spec.toml");
        std::fs::write(&spec_file, toml::to_string(&spec)?)?;
        std::fs::create_dir_all(&vol.mount)?;
        let mut m = Command::new(shoal)
            .args(["mount", "-f", "--spec"])
            .arg(&spec_file)
            .arg("--key")
            .arg(&key)
            .arg("127.0.0.1:bench")
            .arg(&vol.mount)
            .env("SHOAL_MOUNT_NOTIFY", "1")
            .stdout(Stdio::piped())
            .spawn()?;
        let line = first_line(&mut m)?;
        vol.mounter = Some(m);
        if line != "ready" {
            bail!("mount failed: {line}");
        }
        Ok(vol)
    }
}

impl ShoalVolume {
    /// Kills brick `i`'s process (as a crashed server would leave it).
    pub fn kill_brick(&mut self, i: usize) -> Result<()> {
        // Its pid is no longer one of this volume's processes.
        let Some(mut c) = self.bricks.get_mut(i).and_then(Option::take) else {
            bail!("no brick {i} running");
        };
        let killed = c.kill();
        c.wait()?;
        Ok(killed?)
    }

    /// Starts brick `i` again on its address, after [`ShoalVolume::kill_brick`].
    pub fn restart_brick(&mut self, i: usize) -> Result<()> {
        let (Some(None), Some(addr)) = (self.bricks.get(i), self.addrs.get(i)) else {
            bail!("no brick {i} to restart");
        };
        let mut c = Command::new(&self.shoal)
            .args(["brick", "--listen", addr, "--dir"])
            .arg(self.brick_dir(i))
            .arg("--key")
            .arg(&self.key)
            .stdout(Stdio::piped())
            .spawn()?;
        let line = first_line(&mut c)?;
        self.bricks[i] = Some(c);
        if !line.starts_with("listening on ") {
            bail!("brick {i} said {line:?}");
        }
        Ok(())
    }

    pub fn brick_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("b{i}"))
    }

    /// Objects the bricks list as carrying pending-heal markers.
    pub fn pending(&self) -> usize {
        (0..self.bricks.len())
            .map(|i| count_entries(&self.brick_dir(i).join(".shoal/pending"), 2, |_| true))
            .sum()
    }
}

/// Entries `depth` levels under `dir` (1: its own entries) whose names pass `keep`.
pub fn count_entries(dir: &Path, depth: usize, keep: impl Fn(&str) -> bool + Copy) -> usize {
    let Ok(list) = std::fs::read_dir(dir) else {
        return 0;
    };
    list.filter_map(|e| e.ok())
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| match depth {
            0 | 1 => 1,
            _ => count_entries(&e.path(), depth - 1, keep),
        })
        .sum()
}

impl Backend for ShoalVolume {
    fn dir(&self) -> &Path {
        &self.mount
    }
    fn pids(&self) -> Vec<u32> {
        self.bricks
            .iter()
            .flatten()
            .chain(&self.mounter)
            .map(Child::id)
            .collect()
    }
}

impl Drop for ShoalVolume {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.mount.display().to_string()]);
        for c in self.mounter.iter_mut().chain(self.bricks.iter_mut().flatten()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The fuse module's switch for FUSE over io_uring (Linux 6.14 on).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns FUSE over io_uring on for the run (mounts made meanwhile take it up), and puts the
/// switch back after.
pub struct FuseUring(Option<String>);

impl FuseUring {
    pub fn set() -> Result<FuseUring> {
        let before = std::fs::read_to_string(ENABLE_URING)
            .with_context(|| format!("this kernel has no FUSE over io_uring ({ENABLE_URING})"))?;
        std::fs::write(ENABLE_URING, "Y").with_context(|| format!("cannot set {ENABLE_URING}"))?;
        Ok(FuseUring(Some(before.trim().to_string())))
    }
}

impl Drop for FuseUring {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            let _ = std::fs::write(ENABLE_URING, v);
        }
    }
}
