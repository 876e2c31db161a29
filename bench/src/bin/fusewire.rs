//! `fusewire`: what the kernel's FUSE transport alone costs a small file, `/dev/fuse` against
//! FUSE over io_uring, with one in-memory server behind both (`shoal_bench::wire`), and what
//! one process waking another costs on this machine, across CPUs and on one.
//!
//! Each row mounts the server afresh and times, file by file, the storage benchmark's
//! small-file work: create (open with O_CREAT, write 4 KiB, close), stat, read (open, read,
//! close) and unlink. Prints medians over the runs of each call's median, in µs, and each
//! row's ratio to `/dev/fuse`. Needs root and, for io_uring, a kernel with the fuse module's
//! `enable_uring` parameter, which it sets for the run and puts back.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shoal_bench::median;
use shoal_bench::transport::{self, Transport};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "the cost of the FUSE transport: /dev/fuse against io_uring")]
struct Args {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Files per run.
    #[arg(long, default_value_t = 3000)]
    files: usize,
    /// Runs of each row (alternating); the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to mount.
    #[arg(long, default_value = "/var/tmp/shoal-fusewire")]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Serve {
    /// (Internal) mount the in-memory server on DIR and serve it until unmounted.
    Serve {
        #[arg(long, value_enum)]
        transport: Transport,
        dir: PathBuf,
    },
}

/// The mounted server of one row; unmounted and stopped on every way out.
struct Mounted {
    dir: PathBuf,
    child: Child,
    out: Option<BufReader<std::process::ChildStdout>>,
}

impl Mounted {
    fn start(dir: &Path, t: Transport) -> Result<Mounted> {
        std::fs::create_dir_all(dir)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--transport"])
            .arg(t.arg())
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the server")?;
        let mut line = String::new();
        let mut out = child.stdout.take().map(BufReader::new);
        if let Some(out) = &mut out {
            out.read_line(&mut line)?;
        }
        let m = Mounted {
            dir: dir.into(),
            child,
            out,
        };
        if line.trim() != "ready" {
            bail!("the {t:?} server did not start");
        }
        Ok(m)
    }

    /// Unmounts; the requests the server took by io_uring.
    fn stop(mut self) -> Result<u64> {
        rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty()).context("umount")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the server did not end after its unmount");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut line = String::new();
        if let Some(out) = &mut self.out {
            out.read_line(&mut line)?;
        }
        line.trim()
            .strip_prefix("by io_uring: ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the server ended saying {line:?}"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Medians in µs of create, stat, read and unlink, one file at a time.
fn small_files(dir: &Path, files: usize) -> Result<[f64; 4]> {
    let names: Vec<PathBuf> = (0..files).map(|i| dir.join(format!("f{i:05}"))).collect();
    let data = vec![0x5au8; 4096];
    let mut t: [Vec<f64>; 4] = Default::default();
    let mut timed = |phase: usize, f: &mut dyn FnMut() -> std::io::Result<()>| -> Result<()> {
        let start = Instant::now();
        f()?;
        t[phase].push(start.elapsed().as_secs_f64() * 1e6);
        Ok(())
    };
    for p in &names {
        timed(0, &mut || std::fs::File::create(p)?.write_all(&data))?;
    }
    for p in &names {
        timed(1, &mut || std::fs::metadata(p).map(drop))?;
    }
    let mut buf = Vec::with_capacity(8192);
    for p in &names {
        buf.clear();
        timed(2, &mut || std::fs::File::open(p)?.read_to_end(&mut buf).map(drop))?;
        anyhow::ensure!(buf == data, "{} reads back other bytes", p.display());
    }
    for p in &names {
        timed(3, &mut || std::fs::remove_file(p))?;
    }
    Ok(t.map(median))
}

fn pin(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).context("sched_setaffinity")
}

/// Median µs of a 64-byte exchange with a thread on `peer_cpu` while this one is on CPU 0.
fn round_trip(peer_cpu: usize) -> Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let peer = std::thread::spawn(move || -> Result<()> {
        pin(peer_cpu)?;
        let mut m = [0u8; 64];
        while b.read_exact(&mut m).is_ok() {
            b.write_all(&m)?;
        }
        Ok(())
    });
    pin(0)?;
    let mut m = [0u8; 64];
    let mut t = Vec::new();
    for _ in 0..20_000 {
        let start = Instant::now();
        a.write_all(&m)?;
        a.read_exact(&mut m)?;
        t.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(a);
    peer.join()
        .map_err(|_| anyhow::anyhow!("the peer thread panicked"))??;
    Ok(median(t))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Serve::Serve { transport: t, dir }) = args.serve {
        transport::serve(transport::mount(&dir)?, t)?;
        println!(
            "by io_uring: {}",
            transport::BY_URING.load(std::sync::atomic::Ordering::Relaxed)
        );
        return Ok(());
    }
    if !shoal_bench::is_root() {
        bail!("fusewire mounts FUSE file systems itself: run it as root");
    }
    anyhow::ensure!(
        args.files > 0 && args.runs > 0,
        "--files and --runs must be at least 1"
    );
    let _uring = shoal_bench::FuseUring::set()?;
    let rows = [
        (
            Transport::Dev,
            "/dev/fuse, two reading threads (as shoal's mount)",
        ),
        (
            Transport::Uring,
            "io_uring, a queue per CPU, its thread pinned there",
        ),
        (
            Transport::UringUnpinned,
            "io_uring, a queue per CPU, threads not pinned",
        ),
    ];
    let mut results: Vec<Vec<[f64; 4]>> = vec![Vec::new(); rows.len()];
    let mnt = args.dir.join("mnt");
    for _ in 0..args.runs {
        for (i, (t, _)) in rows.iter().enumerate() {
            let m = Mounted::start(&mnt, *t)?;
            let r = small_files(&mnt, args.files);
            let by_uring = m.stop()?;
            // (A queue that could not register leaves every request on /dev/fuse.)
            if *t != Transport::Dev && by_uring == 0 {
                bail!("the {t:?} row's requests did not go by io_uring");
            }
            results[i].push(r?);
        }
    }
    let cross = median(
        (0..args.runs)
            .map(|_| round_trip(1))
            .collect::<Result<Vec<_>>>()?,
    );
    let same = median(
        (0..args.runs)
            .map(|_| round_trip(0))
            .collect::<Result<Vec<_>>>()?,
    );

    println!(
        "\nfusewire: {} files of 4 KiB, one at a time; medians of {} runs, µs per file (×N = time against /dev/fuse)\n",
        args.files, args.runs
    );
    println!("| transport | create (open, write 4 KiB, close) µs | stat µs | read (open, read, close) µs | unlink µs |");
    println!("|---|---|---|---|---|");
    let col = |i: usize, c: usize| median(results[i].iter().map(|r| r[c]).collect());
    for (i, (_, name)) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..4)
            .map(|c| format!("{:.1} (×{:.2})", col(i, c), col(i, c) / col(0, c)))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!("\n| a 64-byte exchange between two threads (unix socket) | µs |");
    println!("|---|---|");
    println!("| on two CPUs | {cross:.1} |");
    println!("| on one CPU | {same:.1} |");
    Ok(())
}
