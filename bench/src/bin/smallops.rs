//! `smallops DIR [--files N]`: the latency of each system call of the storage benchmark's
//! small-file work, one file at a time, in `DIR` (a mount or a local directory): create
//! (open with O_CREAT, write 4 KiB, close), stat, read (open, read, close) and unlink.
//! Prints a table of medians and 99th percentiles in µs, to see where a small file's time
//! goes (which call waits for a brick, which only for the FUSE round trip).

use anyhow::{Context, Result};
use clap::Parser;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "per-call latency of small-file work in a directory")]
struct Args {
    /// Where to work (a directory made for the run is removed at the end).
    dir: PathBuf,
    /// Files per phase.
    #[arg(long, default_value_t = 5000)]
    files: usize,
}

/// Durations of one kind of call.
#[derive(Default)]
struct Calls(Vec<Duration>);

impl Calls {
    fn time<T>(&mut self, f: impl FnOnce() -> std::io::Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f()?;
        self.0.push(t.elapsed());
        Ok(r)
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = args.dir.join(format!("smallops-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let names: Vec<PathBuf> = (0..args.files).map(|i| dir.join(format!("f{i:05}"))).collect();
    let data = vec![0x5au8; 4096];
    let mut rows: Vec<(&str, Calls)> = ["create: open", "create: write", "create: close", "stat"]
        .into_iter()
        .chain(["read: open", "read: read", "read: close", "unlink"])
        .map(|n| (n, Calls::default()))
        .collect();
    for p in &names {
        let mut f = rows[0].1.time(|| std::fs::File::create(p))?;
        rows[1].1.time(|| f.write_all(&data))?;
        rows[2].1.time(|| {
            drop(f);
            Ok(())
        })?;
    }
    for p in &names {
        rows[3].1.time(|| std::fs::metadata(p))?;
    }
    let mut buf = Vec::with_capacity(8192);
    for p in &names {
        let mut f = rows[4].1.time(|| std::fs::File::open(p))?;
        buf.clear();
        let n = rows[5].1.time(|| f.read_to_end(&mut buf))?;
        anyhow::ensure!(n == data.len(), "{} reads back {n} bytes", p.display());
        rows[6].1.time(|| {
            drop(f);
            Ok(())
        })?;
    }
    for p in &names {
        rows[7].1.time(|| std::fs::remove_file(p))?;
    }
    std::fs::remove_dir(&dir)?;

    println!(
        "\nsmallops in {}: {} files of 4 KiB, µs per call\n",
        args.dir.display(),
        args.files
    );
    println!("| call | median µs | p99 µs |");
    println!("|---|---|---|");
    for (name, calls) in &rows {
        println!(
            "| {name} | {:.1} | {:.1} |",
            calls.quantile(0.5),
            calls.quantile(0.99)
        );
    }
    Ok(())
}
