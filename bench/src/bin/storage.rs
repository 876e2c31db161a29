//! Storage benchmark: one table comparing a local directory (the physical limit), an
//! in-memory FUSE file system (`memfs`: the most any FUSE file system gets here, with no
//! network or disk behind it), each shoal volume layout through its FUSE mount, and (with `--with-gluster`) GlusterFS from Debian's
//! packages on the same machine and the same layouts.
//!
//! Columns: sequential write and read of a 1 GiB file (MiB/s), 5,000 × 4 KiB small files
//! (create, stat, read, delete: ops/s), 4 KiB random read and write (fio, O_DIRECT, IOPS),
//! and the CPU time the storage processes (mount and bricks) spent per GiB written.
//! Each figure is the median of `--runs` runs; each row's ratio to the local directory follows.
//!
//! Every row runs on one fresh ext4 file system (with a journal, as bricks have in
//! production), made in an image file on the disk under test and mounted through a loop
//! device doing direct I/O: the same starting point for every row. (This VM's root file system has no
//! journal; ext4 then steps over every inode freed in the last minutes when it allocates one,
//! so the cost of a create there depends on what the previous row deleted.) `--same-fs`
//! runs in `--dir` as it is instead.
//!
//! Needs root (mounts, drop_caches), fio, mkfs.ext4, and for `--with-gluster` glusterd.

use anyhow::{bail, Context, Result};
use clap::Parser;
use shoal_bench::freshfs::FreshFs;
use shoal_bench::gluster::{GlusterVolume, Glusterd};
use shoal_bench::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "shoal storage benchmark")]
struct Args {
    /// Also run GlusterFS on the same layouts (those it still has: not stripe).
    #[arg(long)]
    with_gluster: bool,
    /// Runs per row; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Small: 1 run, 1,000 small files, 5 s of fio per random test, a 256 MiB sequential file.
    #[arg(long)]
    quick: bool,
    /// Only these rows (comma separated): local (always), memfs (an in-memory FUSE file
    /// system: the ceiling of any FUSE file system here), dist3, stripe2, rep2, rep3, distrep2x2,
    /// diststripe2x2, rep3down1 (replica 3 with its third brick killed; not run unless asked).
    #[arg(long)]
    rows: Option<String>,
    /// Working directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/shoal-bench")]
    dir: PathBuf,
    /// Run in `--dir` as it is, instead of on a fresh file system made there.
    #[arg(long)]
    same_fs: bool,
    /// Turn the kernel's FUSE over io_uring on for the run (the fuse module's `enable_uring`,
    /// put back after): shoal's mounts and the in-memory ceiling take it up; GlusterFS cannot.
    #[arg(long)]
    fuse_uring: bool,
}

#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    bricks: usize,
    stripe: u32,
    replica: u32,
    /// Bricks killed (the last ones) once the volume is mounted: degraded service.
    down: usize,
}

const LAYOUTS: &[Layout] = &[
    Layout {
        name: "dist3",
        bricks: 3,
        stripe: 1,
        replica: 1,
        down: 0,
    },
    Layout {
        name: "stripe2",
        bricks: 2,
        stripe: 2,
        replica: 1,
        down: 0,
    },
    Layout {
        name: "rep2",
        bricks: 2,
        stripe: 1,
        replica: 2,
        down: 0,
    },
    Layout {
        name: "rep3",
        bricks: 3,
        stripe: 1,
        replica: 3,
        down: 0,
    },
    Layout {
        name: "distrep2x2",
        bricks: 4,
        stripe: 1,
        replica: 2,
        down: 0,
    },
    Layout {
        name: "diststripe2x2",
        bricks: 4,
        stripe: 2,
        replica: 1,
        down: 0,
    },
    Layout {
        name: "rep3down1",
        bricks: 3,
        stripe: 1,
        replica: 3,
        down: 1,
    },
];

struct Params {
    seq_bytes: u64,
    small_files: usize,
    fio_secs: u64,
}

#[derive(Default, Clone)]
struct Sample {
    seq_write: f64,
    seq_read: f64,
    create: f64,
    stat: f64,
    read: f64,
    delete: f64,
    rand_read: f64,
    rand_write: f64,
    cpu_per_gib: f64,
}

fn measure(dir: &Path, pids: &[u32], p: &Params) -> Result<Sample> {
    let mut s = Sample::default();
    let seq = dir.join("seq");
    // Every row's writes start with free memory: otherwise the page reclaim they cause
    // (of what earlier rows left cached) is charged to whichever process allocates, and the
    // CPU per GiB measures the previous row as much as this one.
    drop_caches();
    let cpu0 = cpu_seconds(pids);
    let out = fio(&[
        "--name=seqw",
        &format!("--filename={}", seq.display()),
        "--rw=write",
        "--bs=1M",
        &format!("--size={}", p.seq_bytes),
        "--end_fsync=1",
        "--ioengine=psync",
    ])?;
    let cpu = cpu_seconds(pids) - cpu0;
    s.seq_write = fio_field(&out, "write", "bw_bytes")? / MIB;
    s.cpu_per_gib = cpu / (p.seq_bytes as f64 / (1u64 << 30) as f64);
    drop_caches();
    let out = fio(&[
        "--name=seqr",
        &format!("--filename={}", seq.display()),
        "--rw=read",
        "--bs=1M",
        &format!("--size={}", p.seq_bytes),
        "--ioengine=psync",
    ])?;
    s.seq_read = fio_field(&out, "read", "bw_bytes")? / MIB;
    std::fs::remove_file(&seq)?;

    let small = small_files(&dir.join("small"), p.small_files)?;
    (s.create, s.stat, s.read, s.delete) = small;

    let rand = dir.join("rand");
    for (rw, field) in [("randread", "read"), ("randwrite", "write")] {
        let out = fio(&[
            &format!("--name={rw}"),
            &format!("--filename={}", rand.display()),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--size=256M",
            "--direct=1",
            "--ioengine=psync",
            "--time_based",
            &format!("--runtime={}", p.fio_secs),
        ])?;
        let iops = fio_field(&out, field, "iops")?;
        if rw == "randread" {
            s.rand_read = iops;
        } else {
            s.rand_write = iops;
        }
    }
    std::fs::remove_file(&rand)?;
    Ok(s)
}

/// 4 KiB files: create (open, write, close), stat, read, delete; ops per second each.
fn small_files(dir: &Path, n: usize) -> Result<(f64, f64, f64, f64)> {
    use std::io::{Read, Write};
    std::fs::create_dir_all(dir)?;
    let data = vec![0x5au8; 4096];
    let names: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("f{i:05}"))).collect();
    let rate = |t: Instant| n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &names {
        std::fs::File::create(p)?.write_all(&data)?;
    }
    let create = rate(t);
    let t = Instant::now();
    for p in &names {
        std::fs::metadata(p)?;
    }
    let stat = rate(t);
    let t = Instant::now();
    let mut buf = Vec::with_capacity(8192);
    for p in &names {
        buf.clear();
        std::fs::File::open(p)?.read_to_end(&mut buf)?;
        if buf.len() != 4096 {
            bail!("{} reads back {} bytes", p.display(), buf.len());
        }
    }
    let read = rate(t);
    let t = Instant::now();
    for p in &names {
        std::fs::remove_file(p)?;
    }
    let delete = rate(t);
    std::fs::remove_dir(dir)?;
    Ok((create, stat, read, delete))
}

fn run_row(name: &str, backend: &dyn Backend, p: &Params, runs: usize) -> Result<Sample> {
    let mut samples = Vec::new();
    for i in 0..runs {
        eprint!("  {name}: run {}/{runs} ...", i + 1);
        let t = Instant::now();
        let s = measure(backend.dir(), &backend.pids(), p).with_context(|| format!("row {name}"))?;
        eprintln!(" {:.0} s", t.elapsed().as_secs_f64());
        samples.push(s);
    }
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Ok(Sample {
        seq_write: m(|s| s.seq_write),
        seq_read: m(|s| s.seq_read),
        create: m(|s| s.create),
        stat: m(|s| s.stat),
        read: m(|s| s.read),
        delete: m(|s| s.delete),
        rand_read: m(|s| s.rand_read),
        rand_write: m(|s| s.rand_write),
        cpu_per_gib: m(|s| s.cpu_per_gib),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !is_root() {
        bail!("the storage benchmark needs root (FUSE mounts, dropping caches)");
    }
    which("fio")?;
    let p = if args.quick {
        Params {
            seq_bytes: 256 << 20,
            small_files: 1000,
            fio_secs: 5,
        }
    } else {
        Params {
            seq_bytes: 1 << 30,
            small_files: 5000,
            fio_secs: 20,
        }
    };
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    let _uring = args.fuse_uring.then(shoal_bench::FuseUring::set).transpose()?;
    let wanted: Option<Vec<String>> = args.rows.map(|r| r.split(',').map(str::to_string).collect());
    let want = |n: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == n));
    FreshFs::sweep(&args.dir);
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let fresh = if args.same_fs {
        None
    } else {
        Some(FreshFs::make(&args.dir)?)
    };
    let work = fresh.as_ref().map_or(args.dir.clone(), |f| f.mount.clone());
    let shoal = shoal_bin()?;

    // A glusterd this run starts is stopped at its end (it daemonizes: found by name).
    let _glusterd = Glusterd(args.with_gluster && !run_ok("pgrep", &["-x", "glusterd"]));
    let mut rows: Vec<(String, Sample)> = Vec::new();
    let local_dir = work.join("local");
    std::fs::create_dir_all(&local_dir)?;
    eprintln!("local directory {}", local_dir.display());
    let local = LocalDir(local_dir);
    rows.push(("local directory".into(), run_row("local", &local, &p, runs)?));
    if want("memfs") {
        let label = "in-memory FUSE file system (ceiling)";
        eprintln!("{label}");
        let m = MemFs::start(&work.join("memfs"))?;
        rows.push((label.into(), run_row("memfs", &m, &p, runs)?));
    }
    // Degraded rows only when named.
    let named = |n: &str| wanted.as_ref().is_some_and(|w| w.iter().any(|x| x == n));
    for l in LAYOUTS
        .iter()
        .filter(|l| if l.down > 0 { named(l.name) } else { want(l.name) })
    {
        let label = format!("shoal {}", describe(l));
        eprintln!("{label}");
        let mut vol = ShoalVolume::start(&shoal, &work.join(l.name), l.bricks, l.stripe, l.replica)?;
        for i in (l.bricks - l.down..l.bricks).rev() {
            vol.kill_brick(i)?;
        }
        rows.push((label, run_row(l.name, &vol, &p, runs)?));
        drop(vol);
        if args.with_gluster && l.stripe == 1 {
            let label = format!("GlusterFS {}", describe(l));
            eprintln!("{label}");
            let vol =
                GlusterVolume::start(&work.join(format!("gl-{}", l.name)), l.name, l.bricks, l.replica)?;
            for i in (l.bricks - l.down..l.bricks).rev() {
                vol.kill_brick(i)?;
            }
            rows.push((label, run_row(&format!("gluster-{}", l.name), &vol, &p, runs)?));
        }
    }
    let fs = match &fresh {
        Some(_) => "a fresh ext4 file system (with journal) on a direct-I/O loop device".to_string(),
        None => format!("{} as it is", args.dir.display()),
    };
    let transport = match args.fuse_uring {
        true => "FUSE over io_uring",
        false => "FUSE over /dev/fuse",
    };
    print_table(&rows, &p, runs, &format!("{fs}; {transport}"));
    Ok(())
}

fn describe(l: &Layout) -> String {
    let (bricks, stripe, replica) = (l.bricks, l.stripe, l.replica);
    let shape = match (stripe, replica) {
        (1, 1) => format!("distribute ×{bricks}"),
        (s, 1) if s as usize == bricks => format!("stripe {s}"),
        (1, r) if r as usize == bricks => format!("replica {r}"),
        (1, r) => format!("distributed-replicate {}×{r}", bricks / r as usize),
        (s, _) => format!("distributed-stripe {}×{s}", bricks / s as usize),
    };
    match l.down {
        0 => shape,
        1 => format!("{shape}, one brick down"),
        n => format!("{shape}, {n} bricks down"),
    }
}

fn print_table(rows: &[(String, Sample)], p: &Params, runs: usize, fs: &str) {
    let Some((_, base)) = rows.first() else {
        return;
    };
    println!(
        "\nshoal storage benchmark — medians of {runs} run(s) on {fs}; sequential file {} MiB, {} small files of 4 KiB, fio {} s per random test; (×N) = ratio to the local directory\n",
        p.seq_bytes >> 20,
        p.small_files,
        p.fio_secs
    );
    println!("| row | seq write MiB/s | seq read MiB/s | create/s | stat/s | read/s | delete/s | 4K rand read IOPS | 4K rand write IOPS | CPU s per GiB written |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let cell = |v: f64, b: f64| {
        if b > 0.0 {
            format!("{v:.0} (×{:.2})", v / b)
        } else {
            format!("{v:.0}")
        }
    };
    for (name, s) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            cell(s.seq_write, base.seq_write),
            cell(s.seq_read, base.seq_read),
            cell(s.create, base.create),
            cell(s.stat, base.stat),
            cell(s.read, base.read),
            cell(s.delete, base.delete),
            cell(s.rand_read, base.rand_read),
            cell(s.rand_write, base.rand_write),
            s.cpu_per_gib
        );
    }
}

// ---- backends ----------------------------------------------------------------------------

struct LocalDir(PathBuf);

impl Backend for LocalDir {
    fn dir(&self) -> &Path {
        &self.0
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
}
