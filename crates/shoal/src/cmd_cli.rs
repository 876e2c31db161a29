//! The admin commands: sent to the local daemon over its socket, printed the way GlusterFS
//! and CTDB users know (or as JSON with `--json`).

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use cluster::admin::{AdminRequest, AdminResponse, ClusterStatus, SplitBrainOp, Target, VolumeStatusView};
use cluster::state::VolumeRecord;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

/// How the CLI reaches its daemon and prints.
pub struct Ctx {
    pub socket: std::path::PathBuf,
    pub json: bool,
    pub target: Option<Target>,
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// volume create NAME [stripe N] [replica N] [stripe-size BYTES] NODE:/path... [force]
    Create {
        name: String,
        #[arg(num_args = 1.., allow_hyphen_values = false)]
        args: Vec<String>,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Delete {
        name: String,
    },
    Info {
        name: Option<String>,
    },
    Status {
        name: Option<String>,
    },
    List,
    /// volume heal NAME info [split-brain]: what each brick lists as waiting for heal
    /// (healing itself runs by itself in every client of the volume), or the objects in
    /// split brain. volume heal NAME split-brain (bigger-file PATH | latest-mtime PATH |
    /// source-brick NODE:/path [PATH]): settle split brains, keeping the copy chosen
    Heal {
        name: String,
        #[arg(value_parser = ["info", "split-brain"])]
        what: String,
        /// `split-brain` after `info`; the policy and its arguments after `split-brain`
        args: Vec<String>,
    },
    /// volume reset-brick NAME NODE:/path [force]: take a brick of a replicated volume in
    /// again after its disk was replaced; it is refilled from its copies
    #[command(name = "reset-brick")]
    ResetBrick {
        name: String,
        brick: String,
        #[arg(value_parser = ["force"])]
        force: Option<String>,
    },
    /// volume replace-brick NAME NODE:/old NODE:/new [force]: move a brick of a replicated
    /// volume (its server or disk is lost) to an empty directory, refilled from its copies
    #[command(name = "replace-brick")]
    ReplaceBrick {
        name: String,
        old: String,
        new: String,
        #[arg(value_parser = ["force"])]
        force: Option<String>,
    },
    /// volume set NAME KEY VALUE
    Set {
        name: String,
        key: String,
        value: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Add the node whose daemon listens at ADDRESS[:PORT] (started with join = true).
    Add { endpoint: String },
    /// Remove node PNN from the cluster.
    Remove { pnn: u64 },
}

pub fn call(socket: &Path, req: &AdminRequest) -> Result<AdminResponse> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the shoal daemon at {} (is it running? set --socket or SHOAL_SOCKET)",
            socket.display()
        )
    })?;
    // Commands commit within seconds or report no quorum; never hang.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    s.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("no answer from the daemon")?;
    serde_json::from_str(&line).map_err(|e| anyhow!("unreadable answer from the daemon: {e}"))
}

fn expect_done(r: AdminResponse) -> Result<()> {
    match r {
        AdminResponse::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// What `volume create` was asked for.
struct CreateArgs {
    stripe: u32,
    replica: u32,
    stripe_size: Option<u64>,
    bricks: Vec<String>,
    force: bool,
}

/// Parses `[stripe N] [replica N] [stripe-size B] BRICK... [force]` as gluster does.
fn parse_create(args: &[String]) -> Result<CreateArgs> {
    let (mut stripe, mut replica, mut size, mut bricks, mut force) = (1u32, 1u32, None, Vec::new(), false);
    let mut it = args.iter().peekable();
    let count = |what: &str, v: Option<&String>| -> Result<u32> {
        let v = v.ok_or_else(|| anyhow!("{what} needs a count"))?;
        let n: u32 = v
            .parse()
            .map_err(|_| anyhow!("{what} count {v:?} is not a number"))?;
        if n < 2 {
            bail!("{what} count must be at least 2, got {n}");
        }
        Ok(n)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "stripe" => stripe = count("stripe", it.next())?,
            "replica" => replica = count("replica", it.next())?,
            "stripe-size" => {
                let v = it.next().ok_or_else(|| anyhow!("stripe-size needs a value"))?;
                size = Some(
                    v.parse()
                        .map_err(|_| anyhow!("stripe-size {v:?} is not a number of bytes"))?,
                );
            }
            "transport" => {
                let t = it.next().map(String::as_str);
                if t != Some("tcp") {
                    bail!("only transport tcp is supported");
                }
            }
            "force" if it.peek().is_none() => force = true,
            b => bricks.push(b.to_string()),
        }
    }
    if bricks.is_empty() {
        bail!("no bricks given: volume create NAME [stripe N] [replica N] NODE:/path... [force]");
    }
    Ok(CreateArgs {
        stripe,
        replica,
        stripe_size: size,
        bricks,
        force,
    })
}

pub fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    let req = match cmd {
        VolumeCmd::Create { name, args } => {
            let CreateArgs {
                stripe,
                replica,
                stripe_size,
                bricks,
                force,
            } = parse_create(&args)?;
            AdminRequest::VolumeCreate {
                name,
                stripe,
                replica,
                bricks,
                force,
                stripe_size,
            }
        }
        VolumeCmd::Start { name } => AdminRequest::VolumeStart { name },
        VolumeCmd::Stop { name } => AdminRequest::VolumeStop { name },
        VolumeCmd::Delete { name } => AdminRequest::VolumeDelete { name },
        VolumeCmd::Set { name, key, value } => AdminRequest::VolumeSet { name, key, value },
        VolumeCmd::ReplaceBrick {
            name,
            old,
            new,
            force,
        } => AdminRequest::VolumeReplaceBrick {
            name,
            old,
            new,
            force: force.is_some(),
        },
        VolumeCmd::ResetBrick { name, brick, force } => AdminRequest::VolumeResetBrick {
            name,
            brick,
            force: force.is_some(),
        },
        VolumeCmd::Info { name } => {
            return volume_info(ctx, call(&ctx.socket, &AdminRequest::VolumeInfo { name })?)
        }
        VolumeCmd::List => return volume_list(ctx, call(&ctx.socket, &AdminRequest::VolumeList)?),
        VolumeCmd::Status { name } => {
            return volume_status(ctx, call(&ctx.socket, &AdminRequest::VolumeStatus { name })?)
        }
        VolumeCmd::Heal { name, what, args } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let op = match (what.as_str(), args.as_slice()) {
                ("info", []) => {
                    return heal_info(ctx, call(&ctx.socket, &AdminRequest::VolumeHealInfo { name })?)
                }
                ("info", ["split-brain"]) => {
                    let req = AdminRequest::VolumeSplitBrain {
                        name,
                        op: SplitBrainOp::Info,
                    };
                    return split_brain_info(ctx, call(&ctx.socket, &req)?);
                }
                ("split-brain", ["bigger-file", path]) => SplitBrainOp::BiggerFile {
                    path: path.to_string(),
                },
                ("split-brain", ["latest-mtime", path]) => SplitBrainOp::LatestMtime {
                    path: path.to_string(),
                },
                ("split-brain", ["source-brick", brick, path @ ..]) if path.len() <= 1 => {
                    SplitBrainOp::SourceBrick {
                        brick: brick.to_string(),
                        path: path.first().map(|p| p.to_string()),
                    }
                }
                ("info", _) => bail!("usage: volume heal NAME info [split-brain]"),
                _ => bail!(
                    "usage: volume heal NAME split-brain (bigger-file PATH | latest-mtime PATH | \
                     source-brick NODE:/path [PATH])"
                ),
            };
            AdminRequest::VolumeSplitBrain { name, op }
        }
    };
    expect_done(call(&ctx.socket, &req)?)
}

fn volumes(r: AdminResponse) -> Result<Vec<VolumeRecord>> {
    match r {
        AdminResponse::Volumes(v) => Ok(v),
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn volume_list(ctx: &Ctx, r: AdminResponse) -> Result<()> {
    let v = volumes(r)?;
    if ctx.json {
        return print_json(&v.iter().map(|v| &v.spec.name).collect::<Vec<_>>());
    }
    if v.is_empty() {
        println!("No volumes present in cluster");
    }
    for v in v {
        println!("{}", v.spec.name);
    }
    Ok(())
}

fn uuid(id: u128) -> String {
    proto::FileId(id).to_string()
}

fn volume_info(ctx: &Ctx, r: AdminResponse) -> Result<()> {
    let v = volumes(r)?;
    if ctx.json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("No volumes present");
    }
    for v in v {
        let s = &v.spec;
        println!(" ");
        println!("Volume Name: {}", s.name);
        println!("Type: {}", s.volume_type());
        println!("Volume ID: {}", uuid(s.id));
        println!("Status: {}", v.state);
        println!("Number of Bricks: {}", s.brick_count_text());
        println!("Transport-type: tcp");
        if s.stripe > 1 {
            println!("Stripe Size: {}", s.stripe_size);
        }
        println!("Bricks:");
        for (i, b) in s.bricks.iter().enumerate() {
            println!("Brick{}: {}", i + 1, b.label());
        }
        if !v.options.is_empty() {
            println!("Options Reconfigured:");
            for (k, val) in &v.options {
                println!("{k}: {val}");
            }
        }
    }
    Ok(())
}

fn volume_status(ctx: &Ctx, r: AdminResponse) -> Result<()> {
    let views: Vec<VolumeStatusView> = match r {
        AdminResponse::VolumeStatus(v) => v,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&views);
    }
    let rule = "-".repeat(78);
    for v in views {
        if v.volume.state != cluster::state::VolumeState::Started {
            println!("Volume {} is not started", v.volume.spec.name);
            continue;
        }
        println!("Status of volume: {}", v.volume.spec.name);
        println!("{:<44}{:<11}{:<8}Pid", "shoal process", "TCP Port", "Online");
        println!("{rule}");
        for b in &v.bricks {
            let (port, online, pid) = match &b.status {
                Some(s) => (
                    s.port.to_string(),
                    if s.online { "Y" } else { "N" },
                    s.pid.to_string(),
                ),
                None => ("N/A".into(), "N", "N/A".into()),
            };
            println!(
                "{:<44}{:<11}{:<8}{}",
                format!("Brick {}", b.label),
                port,
                online,
                pid
            );
            if let Some(why) = b.status.as_ref().and_then(|s| s.problem.as_ref()) {
                println!("  not served: {why}");
            }
        }
        println!(" ");
    }
    Ok(())
}

/// As `gluster volume heal NAME info`: per brick, whether it answered and the objects it
/// lists as waiting for heal (their paths, or `<id:...>` where the brick could not say).
fn heal_info(ctx: &Ctx, r: AdminResponse) -> Result<()> {
    let rows = match r {
        AdminResponse::HealInfo(v) => v,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&rows);
    }
    for r in rows {
        println!("Brick {}", r.brick);
        match r.entries {
            Ok(ids) => {
                for e in &ids {
                    match &e.path {
                        Some(p) => println!("{p}"),
                        None => println!("<id:{}>", e.id),
                    }
                }
                println!("Status: Connected");
                let more = if ids.len() >= cluster::admin::HEAL_INFO_MAX as usize {
                    " or more"
                } else {
                    ""
                };
                println!("Number of entries: {}{more}", ids.len());
            }
            Err(e) => {
                println!("Status: {e}");
                println!("Number of entries: -");
            }
        }
        println!();
    }
    Ok(())
}

/// As `gluster volume heal NAME info split-brain`: the objects in split brain, by path (or
/// `<id:...>` where no brick could say).
fn split_brain_info(ctx: &Ctx, r: AdminResponse) -> Result<()> {
    let entries = match r {
        AdminResponse::SplitBrains(v) => v,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&entries);
    }
    for e in &entries {
        match &e.path {
            Some(p) => println!("{p}"),
            None => println!("<id:{}>", e.id),
        }
    }
    println!("Number of entries in split-brain: {}", entries.len());
    Ok(())
}

pub fn node(ctx: &Ctx, cmd: NodeCmd) -> Result<()> {
    let req = match cmd {
        NodeCmd::Add { endpoint } => AdminRequest::NodeAdd { endpoint },
        NodeCmd::Remove { pnn } => AdminRequest::NodeRemove { pnn },
    };
    expect_done(call(&ctx.socket, &req)?)
}

pub fn status(ctx: &Ctx) -> Result<()> {
    let s: ClusterStatus = match call(&ctx.socket, &AdminRequest::Status)? {
        AdminResponse::Status(s) => s,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&s);
    }
    println!("Number of nodes:{}", s.nodes.len());
    for n in &s.nodes {
        let mut state = n.state.clone();
        if n.witness {
            state.push_str(" (WITNESS)");
        }
        if n.this {
            state.push_str(" (THIS NODE)");
        }
        println!("pnn:{} {:<16} {}", n.pnn, n.address, state);
    }
    println!("Generation:{}", s.generation);
    println!("Size:{}", s.nodes.len());
    match s.leader {
        Some(l) => println!("Leader:{l}"),
        None => println!("Leader:UNKNOWN (no quorum)"),
    }
    Ok(())
}

pub fn listnodes(ctx: &Ctx) -> Result<()> {
    let nodes = match call(&ctx.socket, &AdminRequest::ListNodes)? {
        AdminResponse::Nodes(n) => n,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&nodes);
    }
    for n in nodes {
        println!("{}", n.address);
    }
    Ok(())
}

pub fn pnn(ctx: &Ctx) -> Result<()> {
    match call(&ctx.socket, &AdminRequest::Pnn)? {
        AdminResponse::Pnn(p) if ctx.json => print_json(&p),
        AdminResponse::Pnn(p) => {
            println!("{p}");
            Ok(())
        }
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub fn ping(ctx: &Ctx) -> Result<()> {
    let rows = match call(
        &ctx.socket,
        &AdminRequest::Ping {
            target: ctx.target.unwrap_or(Target::This),
        },
    )? {
        AdminResponse::Pings(r) => r,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&rows);
    }
    let mut failed = false;
    for r in rows {
        match r.result {
            Ok(t) => println!("response from {} time={t:.6} sec", r.pnn),
            Err(e) => {
                failed = true;
                println!("no response from {}: {e}", r.pnn)
            }
        }
    }
    if failed {
        bail!("some nodes did not answer");
    }
    Ok(())
}

fn fmt_time(unix: u64) -> String {
    // Local time formatting without a time crate: UTC in the ctdb layout.
    let days = unix / 86400;
    let secs = unix % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WD[(days % 7) as usize],
        MO[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        y
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn span(secs: u64) -> String {
    format!(
        "({:03} {:02}:{:02}:{:02})",
        secs / 86400,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn uptime(ctx: &Ctx) -> Result<()> {
    let rows = match call(
        &ctx.socket,
        &AdminRequest::Uptime {
            target: ctx.target.unwrap_or(Target::This),
        },
    )? {
        AdminResponse::Uptimes(r) => r,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&rows);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in rows {
        match r {
            Ok(s) => {
                println!(
                    "Current time of node {:<10}:                {}",
                    s.pnn,
                    fmt_time(now)
                );
                println!(
                    "Daemon start time             : {} {}",
                    span(now.saturating_sub(s.started)),
                    fmt_time(s.started)
                );
                println!(
                    "Time of last leader change    : {} {}",
                    span(now.saturating_sub(s.last_leader_change)),
                    fmt_time(s.last_leader_change)
                );
            }
            Err((pnn, e)) => println!("node {pnn}: {e}"),
        }
    }
    Ok(())
}

/// Sends a command that answers with a message.
pub fn done(ctx: &Ctx, req: &AdminRequest) -> Result<()> {
    expect_done(call(&ctx.socket, req)?)
}

pub fn flags(
    ctx: &Ctx,
    disabled: Option<bool>,
    stopped: Option<bool>,
    ban: Option<cluster::admin::BanChange>,
) -> Result<()> {
    let target = ctx.target.unwrap_or(Target::This);
    done(
        ctx,
        &AdminRequest::Flags {
            target,
            disabled,
            stopped,
            ban,
        },
    )
}

pub fn addip(ctx: &Ctx, address: &str, interfaces: &str) -> Result<()> {
    let line = format!("{address} {interfaces}");
    let p = cluster::config::parse_public_address(&line).map_err(|e| anyhow!("addip: {e}"))?;
    done(
        ctx,
        &AdminRequest::AddIp {
            ip: p.addr,
            prefix: p.prefix,
            interfaces: p.interfaces,
        },
    )
}

pub fn ip(ctx: &Ctx, verbose: bool) -> Result<()> {
    let target = ctx.target.unwrap_or(Target::All);
    let rows = match call(&ctx.socket, &AdminRequest::Ip { target })? {
        AdminResponse::Ips(r) => r,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&rows);
    }
    match target {
        Target::Pnn(p) => println!("Public IPs on node {p}"),
        _ => println!("Public IPs on ALL nodes"),
    }
    for r in rows {
        let pnn = match (r.pnn, r.releasing) {
            (Some(p), false) => p.to_string(),
            (Some(p), true) => format!("{p} (releasing)"),
            (None, _) => "-1".into(),
        };
        if verbose {
            let active = if r.releasing || r.pnn.is_none() {
                String::new()
            } else {
                r.interfaces.first().cloned().unwrap_or_default()
            };
            println!(
                "{} node[{pnn}] active[{active}] configured[{}]",
                r.ip,
                r.interfaces.join(",")
            );
        } else {
            println!("{} {pnn}", r.ip);
        }
    }
    Ok(())
}

pub fn vars(ctx: &Ctx, name: Option<String>) -> Result<()> {
    let req = match name {
        Some(name) => AdminRequest::GetVar { name },
        None => AdminRequest::ListVars,
    };
    let vars = match call(&ctx.socket, &req)? {
        AdminResponse::Vars(v) => v,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&vars);
    }
    for (n, v) in vars {
        println!("{n:<26} = {v}");
    }
    Ok(())
}

pub fn scriptstatus(ctx: &Ctx) -> Result<()> {
    let target = ctx.target.unwrap_or(Target::This);
    let nodes = match call(&ctx.socket, &AdminRequest::ScriptStatus { target })? {
        AdminResponse::Scripts(s) => s,
        AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if ctx.json {
        return print_json(&nodes);
    }
    for (pnn, rows) in nodes {
        if nodes_many(target) {
            println!("node {pnn}:");
        }
        match rows {
            Ok(rows) if rows.is_empty() => println!("no event scripts have run"),
            Ok(rows) => {
                for r in rows {
                    println!(
                        "{:<14} {:<20} {:<10} {:.3} {}",
                        r.event,
                        r.script,
                        r.status,
                        r.duration,
                        fmt_time(r.started)
                    );
                    if r.status != "OK" && r.status != "DISABLED" {
                        for l in r.output.lines().take(5) {
                            println!("  OUTPUT: {l}");
                        }
                    }
                }
            }
            Err(e) => println!("no answer: {e}"),
        }
    }
    Ok(())
}

fn nodes_many(t: Target) -> bool {
    t == Target::All
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_arguments_parse_like_gluster() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse_create(&a(&["stripe", "2", "n1:/a", "n2:/b"])).unwrap();
        assert_eq!((c.stripe, c.replica, c.bricks.len(), c.force), (2, 1, 2, false));
        let c = parse_create(&a(&["replica", "3", "n1:/a", "n2:/a", "n3:/a", "force"])).unwrap();
        assert_eq!((c.replica, c.bricks.len(), c.force), (3, 3, true));
        assert!(parse_create(&a(&["replica", "1", "n1:/a"])).is_err());
        assert!(parse_create(&a(&["replica", "x", "n1:/a"])).is_err());
        assert!(parse_create(&a(&["force"])).is_err());
    }

    #[test]
    fn times_print_like_ctdb() {
        assert_eq!(fmt_time(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(fmt_time(1_795_000_000), "Wed Nov 18 11:06:40 2026");
        assert_eq!(span(90061), "(001 01:01:01)");
    }
}
