//! Heal benchmark: how long a replica 3 volume takes to repair a copy that was down, shoal
//! beside GlusterFS (`--with-gluster`) on the same machine.
//!
//! Each run starts a fresh volume, kills its third brick's process (as a crashed server
//! leaves it), writes through the mount either many small files (in a few directories) or
//! one big file, or moves a tree of files written before (a directory renamed into
//! another), starts the brick again on its address and times until no brick lists
//! anything as pending any more (shoal: `.shoal/pending`; GlusterFS: its heal indices under
//! `.glusterfs/indices`, with `gluster volume heal` asked for at once). Then the healed
//! brick's files are compared with the first brick's, byte for byte: a heal that is fast
//! but wrong fails the run. Medians of `--runs` runs.
//!
//! Needs root (mounts), mkfs.ext4, and for `--with-gluster` glusterd.

use anyhow::{bail, Result};
use clap::Parser;
use shoal_bench::freshfs::FreshFs;
use shoal_bench::gluster::{GlusterVolume, Glusterd};
use shoal_bench::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "shoal heal benchmark")]
struct Args {
    /// Also run GlusterFS replica 3.
    #[arg(long)]
    with_gluster: bool,
    /// Runs per row; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Small files written while the brick is down (4 KiB each, in 10 directories).
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Size of the big file written while the brick is down, MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: usize,
    /// Files of 64 KiB in the tree moved while the brick is down.
    #[arg(long, default_value_t = 2000)]
    moved: usize,
    /// Working directory (a fresh file system is made there).
    #[arg(long, default_value = "/var/tmp/shoal-bench-heal")]
    dir: PathBuf,
}

/// How long a heal may take before the run counts as failed.
const HEAL_LIMIT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy)]
enum Load {
    Small(usize),
    Big(usize),
    /// A tree of this many 64 KiB files, written with every brick up, moved.
    Moved(usize),
}

/// Writes what `load` needs there before the brick goes down.
fn prepare(dir: &Path, load: Load) -> Result<()> {
    if let Load::Moved(n) = load {
        let data: Vec<u8> = (0..64 << 10)
            .map(|k: usize| (k as u8).wrapping_mul(7) | 1)
            .collect();
        std::fs::create_dir_all(dir.join("to"))?;
        for d in 0..10 {
            std::fs::create_dir_all(dir.join(format!("from/tree/d{d}")))?;
        }
        for i in 0..n {
            std::fs::write(dir.join(format!("from/tree/d{}/f{i:06}", i % 10)), &data)?;
        }
        run("sync", &[])?;
    }
    Ok(())
}

/// A replica 3 volume of either kind, with what the benchmark does to it.
trait Subject: Backend {
    fn kill_third(&mut self) -> Result<()>;
    fn restart_third(&mut self) -> Result<()>;
    fn pending(&self) -> usize;
    fn brick(&self, i: usize) -> PathBuf;
}

impl Subject for ShoalVolume {
    fn kill_third(&mut self) -> Result<()> {
        self.kill_brick(2)
    }
    fn restart_third(&mut self) -> Result<()> {
        self.restart_brick(2)
    }
    fn pending(&self) -> usize {
        ShoalVolume::pending(self)
    }
    fn brick(&self, i: usize) -> PathBuf {
        self.brick_dir(i)
    }
}

impl Subject for GlusterVolume {
    fn kill_third(&mut self) -> Result<()> {
        self.kill_brick(2)
    }
    fn restart_third(&mut self) -> Result<()> {
        self.restart_bricks()
    }
    fn pending(&self) -> usize {
        GlusterVolume::pending(self, 3)
    }
    fn brick(&self, i: usize) -> PathBuf {
        self.brick_dir(i)
    }
}

/// Writes `load` through the mount at `dir`, on disk when it returns.
fn write_load(dir: &Path, load: Load) -> Result<()> {
    match load {
        Load::Small(n) => {
            let data = vec![0x5au8; 4096];
            for d in 0..10 {
                std::fs::create_dir_all(dir.join(format!("d{d}")))?;
            }
            for i in 0..n {
                std::fs::write(dir.join(format!("d{}/f{i:06}", i % 10)), &data)?;
            }
        }
        Load::Big(mib) => {
            let mut f = std::fs::File::create(dir.join("big"))?;
            // Bytes that differ from MiB to MiB and are never zero (no holes to skip).
            let mut block = vec![0u8; 1 << 20];
            for m in 0..mib {
                for (k, b) in block.iter_mut().enumerate() {
                    *b = (k as u8).wrapping_mul(31).wrapping_add(m as u8) | 1;
                }
                f.write_all(&block)?;
            }
            f.sync_all()?;
        }
        Load::Moved(_) => std::fs::rename(dir.join("from/tree"), dir.join("to/moved"))?,
    }
    run("sync", &[])?;
    Ok(())
}

/// The user files under a brick directory (not its own metadata), by path: size and bytes.
fn brick_files(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name();
            if d == dir && (name == ".shoal" || name == ".glusterfs") {
                continue;
            }
            let (path, kind) = (e.path(), e.file_type()?);
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(dir)?.to_path_buf();
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

/// One run: seconds from the brick's restart to nothing pending.
fn heal_once(vol: &mut dyn Subject, load: Load) -> Result<f64> {
    prepare(vol.dir(), load)?;
    vol.kill_third()?;
    write_load(vol.dir(), load)?;
    if vol.pending() == 0 {
        bail!("nothing is marked pending after writing with a brick down");
    }
    let start = Instant::now();
    vol.restart_third()?;
    wait_until(HEAL_LIMIT, || vol.pending() == 0)?;
    let secs = start.elapsed().as_secs_f64();
    let (good, healed) = (brick_files(&vol.brick(0))?, brick_files(&vol.brick(2))?);
    if good.is_empty() || good != healed {
        let missing = good.keys().filter(|k| healed.get(*k) != good.get(*k)).count();
        bail!(
            "the healed brick differs from the first: {missing} of {} files missing or different",
            good.len()
        );
    }
    Ok(secs)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !is_root() {
        bail!("the heal benchmark needs root (FUSE mounts, loop devices)");
    }
    let runs = args.runs.max(1);
    FreshFs::sweep(&args.dir);
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let fs = FreshFs::make(&args.dir)?;
    let shoal = shoal_bin()?;
    let _glusterd = Glusterd(args.with_gluster && !run_ok("pgrep", &["-x", "glusterd"]));
    let loads = [
        Load::Small(args.files),
        Load::Big(args.big_mib),
        Load::Moved(args.moved),
    ];
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let kinds: &[&str] = if args.with_gluster {
        &["shoal", "GlusterFS"]
    } else {
        &["shoal"]
    };
    for kind in kinds {
        let mut medians = Vec::new();
        for load in loads {
            let mut times = Vec::new();
            for r in 0..runs {
                let root = fs.mount.join(format!("{kind}-{r}"));
                let mut vol: Box<dyn Subject> = match *kind {
                    "shoal" => Box::new(ShoalVolume::start(&shoal, &root, 3, 1, 3)?),
                    _ => Box::new(GlusterVolume::start(&root, "heal", 3, 3)?),
                };
                let t = heal_once(vol.as_mut(), load)?;
                eprintln!("{kind} {}: healed in {t:.2} s", describe(load));
                times.push(t);
            }
            medians.push(median(times));
        }
        rows.push((kind, medians));
    }
    println!(
        "\nshoal heal benchmark — replica 3, third brick killed, written to, started again; medians of {runs} run(s) on a fresh ext4 file system (with journal) on a direct-I/O loop device\n"
    );
    // Rates (files/s, MiB/s, files/s), and their ratio to GlusterFS's when it ran.
    let rates: Vec<(&str, [f64; 3])> = rows
        .iter()
        .map(|(kind, m)| {
            let r = [
                args.files as f64 / m[0],
                args.big_mib as f64 / m[1],
                args.moved as f64 / m[2],
            ];
            (*kind, r)
        })
        .collect();
    let peer = rates.iter().find(|(k, _)| *k == "GlusterFS").map(|(_, r)| *r);
    let cell = |r: [f64; 3], k: usize| match peer {
        Some(p) => format!("{:.0} (×{:.1})", r[k], r[k] / p[k]),
        None => format!("{:.0}", r[k]),
    };
    let ratio = if peer.is_some() { " (×GlusterFS)" } else { "" };
    println!(
        "| row | {} s | files/s{ratio} | {} s | MiB/s{ratio} | {} s | files/s{ratio} |",
        describe(loads[0]),
        describe(loads[1]),
        describe(loads[2])
    );
    println!("|---|---|---|---|---|---|---|");
    for ((kind, m), (_, r)) in rows.iter().zip(&rates) {
        println!(
            "| {kind} replica 3 | {:.1} | {} | {:.1} | {} | {:.1} | {} |",
            m[0],
            cell(*r, 0),
            m[1],
            cell(*r, 1),
            m[2],
            cell(*r, 2)
        );
    }
    Ok(())
}

fn describe(load: Load) -> String {
    match load {
        Load::Small(n) => format!("heal of {n} × 4 KiB files"),
        Load::Big(mib) => format!("heal of one {mib} MiB file"),
        Load::Moved(n) => format!("heal of a moved tree of {n} × 64 KiB files"),
    }
}
