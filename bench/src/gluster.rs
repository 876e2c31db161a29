//! GlusterFS volumes from Debian's packages, run beside shoal's on the same machine.

use crate::{hostname, pgrep, run, run_ok, wait_until, which, Backend};
use anyhow::{bail, Context, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Stops glusterd when dropped, if `.0` (this run started it).
pub struct Glusterd(pub bool);

impl Drop for Glusterd {
    fn drop(&mut self) {
        if self.0 {
            let _ = run("pkill", &["-x", "glusterd"]);
        }
    }
}

pub struct GlusterVolume {
    name: String,
    mount: PathBuf,
    root: PathBuf,
}

impl GlusterVolume {
    pub fn start(root: &Path, layout: &str, bricks: usize, replica: u32) -> Result<GlusterVolume> {
        which("gluster")?;
        if !run_ok("pgrep", &["-x", "glusterd"]) {
            run("glusterd", &[])?;
            wait_until(Duration::from_secs(20), || {
                run_ok("gluster", &["--mode=script", "volume", "list"])
            })
            .context("glusterd did not come up")?;
        }
        let host = hostname();
        let name = format!("bench-{layout}");
        let _ = std::fs::remove_dir_all(root);
        let mut args: Vec<String> = vec![
            "--mode=script".into(),
            "volume".into(),
            "create".into(),
            name.clone(),
        ];
        if replica > 1 {
            args.extend(["replica".into(), replica.to_string()]);
        }
        for i in 0..bricks {
            let b = root.join(format!("b{i}"));
            std::fs::create_dir_all(&b)?;
            args.push(format!("{host}:{}", b.display()));
        }
        args.push("force".into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("gluster", &a)?;
        run("gluster", &["--mode=script", "volume", "start", &name])?;
        let mount = root.join("mnt");
        std::fs::create_dir_all(&mount)?;
        run(
            "mount",
            &[
                "-t",
                "glusterfs",
                &format!("{host}:/{name}"),
                &mount.display().to_string(),
            ],
        )?;
        Ok(GlusterVolume {
            name,
            mount,
            root: root.to_path_buf(),
        })
    }
}

impl GlusterVolume {
    /// Kills brick `i`'s process (as a crashed server would leave it), and removes its
    /// PID file once it is dead: glusterd takes a brick whose PID file names a process
    /// still in /proc for running, and `volume start force` then leaves it down. A killed
    /// brick stays in /proc as a zombie until the machine's init reaps it, which here
    /// can take longer than a small load's writes (the heal benchmark's third brick
    /// never came back).
    pub fn kill_brick(&self, i: usize) -> Result<()> {
        let brick = self.root.join(format!("b{i}"));
        let pids = pgrep(&format!("glusterfsd.*{}", brick.display()));
        if pids.is_empty() {
            bail!("no glusterfsd serves {}", brick.display());
        }
        for pid in pids {
            let pidfile = pid_file_of(pid);
            run("kill", &["-9", &pid.to_string()])?;
            wait_until(Duration::from_secs(10), || dead(pid))
                .with_context(|| format!("glusterfsd {pid} still runs after kill -9"))?;
            match pidfile.map(|f| (std::fs::remove_file(&f), f)) {
                Some((Err(e), f)) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {}", f.display()))
                }
                Some(_) => {}
                None => eprintln!("glusterfsd {pid} was started without a PID file"),
            }
        }
        Ok(())
    }
}

impl GlusterVolume {
    pub fn brick_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("b{i}"))
    }

    /// Starts the bricks that are down, and asks for their heal at once (the self-heal
    /// daemon otherwise crawls every 10 minutes; it also starts on a brick coming back).
    pub fn restart_bricks(&self) -> Result<()> {
        run(
            "gluster",
            &["--mode=script", "volume", "start", &self.name, "force"],
        )?;
        // Refused until the self-heal daemon has reached the brick that came back (some
        // seconds): asked again until then, so that GlusterFS does not wait for its own
        // crawl.
        let heal = ["--mode=script", "volume", "heal", &self.name];
        if wait_until(Duration::from_secs(30), || run_ok("gluster", &heal)).is_err() {
            eprintln!("gluster volume heal {} was refused for 30 s", self.name);
        }
        Ok(())
    }

    /// Entries of the bricks' heal indices: objects with pending AFR changelogs (a
    /// directory whose entries are to heal among them) or marked dirty; the indices' own
    /// base files do not count. (Not `entry-changes`: GlusterFS 10 leaves stale names
    /// there after a heal, until the directory's next entry heal.)
    pub fn pending(&self, bricks: usize) -> usize {
        let base = |n: &str| !n.starts_with("xattrop-") && !n.starts_with("dirty-");
        (0..bricks)
            .map(|i| {
                let idx = self.brick_dir(i).join(".glusterfs/indices");
                crate::count_entries(&idx.join("xattrop"), 1, base)
                    + crate::count_entries(&idx.join("dirty"), 1, base)
            })
            .sum()
    }
}

impl Backend for GlusterVolume {
    fn dir(&self) -> &Path {
        &self.mount
    }
    fn pids(&self) -> Vec<u32> {
        let mut pids = pgrep(&format!("glusterfsd.*{}", self.name));
        pids.extend(pgrep(&format!("glusterfs .*{}", self.mount.display())));
        pids
    }
}

impl Drop for GlusterVolume {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.mount.display().to_string()]);
        let _ = run(
            "gluster",
            &["--mode=script", "volume", "stop", &self.name, "force"],
        );
        let _ = run("gluster", &["--mode=script", "volume", "delete", &self.name]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The PID file a GlusterFS process writes (its `-p` argument).
fn pid_file_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    args.by_ref().find(|a| *a == b"-p")?;
    let path = args.next()?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

/// Whether process `pid` has ended (gone, or a zombie).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}
