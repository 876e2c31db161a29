//! `shoal mount`, `shoal umount` and the `mount.shoal` helper.
//!
//! Without `-f` the command starts itself again in the foreground as a detached child and
//! returns once that child reports the mount ready (or why it failed), as mount(8) expects.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const NOTIFY_ENV: &str = "SHOAL_MOUNT_NOTIFY";

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    /// What to mount: HOST:VOLUME.
    pub source: String,
    /// Where to mount it.
    pub dir: PathBuf,
    /// Stay in the foreground.
    #[arg(short, long)]
    pub foreground: bool,
    /// Take the volume layout from this spec file instead of asking HOST.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// The cluster key file.
    #[arg(long, env = "SHOAL_KEY", default_value = "/etc/shoal/cluster.key")]
    pub key: PathBuf,
    /// Mount options: ro, attr_timeout=SECONDS, entry_timeout=SECONDS, spec=FILE, key=FILE,
    /// log=FILE.
    #[arg(short = 'o')]
    pub options: Option<String>,
    /// Where the mount process logs once it runs in the background.
    #[arg(long)]
    pub log: Option<PathBuf>,
}

struct Resolved {
    host: String,
    volume: String,
    opts: shoal_fuse::MountOptions,
    spec: Option<PathBuf>,
    key: PathBuf,
    log: Option<PathBuf>,
}

fn parse_secs(k: &str, v: &str) -> Result<Duration> {
    let s: f64 = v
        .parse()
        .map_err(|_| anyhow!("mount option {k}={v}: not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&s) {
        bail!("mount option {k}={v}: must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn resolve(args: &MountArgs) -> Result<Resolved> {
    let (host, volume) = args
        .source
        .rsplit_once(':')
        .filter(|(h, v)| !h.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow!("{:?} is not HOST:VOLUME", args.source))?;
    layout::spec::check_volume_name(volume)?;
    let mut opts = shoal_fuse::MountOptions {
        source: args.source.clone(),
        ..Default::default()
    };
    let (mut spec, mut key, mut log) = (args.spec.clone(), args.key.clone(), args.log.clone());
    for o in args
        .options
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|o| !o.is_empty())
    {
        let (k, v) = o.split_once('=').map_or((o, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("ro", None) => opts.read_only = true,
            ("no_uring", None) => opts.uring = false,
            ("rw" | "defaults" | "auto" | "noauto" | "user" | "nouser" | "_netdev" | "nofail", None) => {}
            ("attr_timeout", Some(v)) => opts.attr_ttl = parse_secs(k, v)?,
            ("entry_timeout", Some(v)) => opts.entry_ttl = parse_secs(k, v)?,
            ("spec", Some(v)) => spec = Some(v.into()),
            ("key", Some(v)) => key = v.into(),
            ("log", Some(v)) => log = Some(v.into()),
            _ => bail!("unknown mount option {o:?}"),
        }
    }
    Ok(Resolved {
        host: host.to_string(),
        volume: volume.to_string(),
        opts,
        spec,
        key,
        log,
    })
}

pub fn run(args: MountArgs) -> Result<()> {
    let r = resolve(&args)?;
    let meta = std::fs::metadata(&args.dir).with_context(|| format!("mount point {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", args.dir.display());
    }
    if args.foreground {
        let notify = std::env::var_os(NOTIFY_ENV).is_some();
        let result = foreground(&args.dir, r, notify);
        if let (Err(e), true) = (&result, notify) {
            println!("error: {e:#}");
        }
        return result;
    }
    background(&args, r.log.as_deref())
}

fn background(args: &MountArgs, log: Option<&Path>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("-f")
        .arg(&args.source)
        .arg(&args.dir)
        .arg("--key")
        .arg(&args.key);
    if let Some(s) = &args.spec {
        cmd.arg("--spec").arg(s);
    }
    if let Some(o) = &args.options {
        cmd.arg("-o").arg(o);
    }
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("log file {}", p.display()))?,
        ),
        None => Stdio::null(),
    };
    cmd.env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; it detaches the mount from our session and
    // terminal so that it survives us.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no pipe to the mount process"))?;
    for line in BufReader::new(out).lines() {
        let line = line.unwrap_or_default();
        if line == "ready" {
            return Ok(());
        }
        if let Some(e) = line.strip_prefix("error: ") {
            let _ = child.wait();
            bail!("{e}");
        }
    }
    let status = child.wait()?;
    bail!("the mount process exited ({status}) before the mount was ready; run with -f to see why")
}

fn load_spec(path: &Path, volume: &str) -> Result<layout::VolumeSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read spec {}", path.display()))?;
    let spec: layout::VolumeSpec =
        toml::from_str(&text).with_context(|| format!("spec {}", path.display()))?;
    if spec.name != volume {
        bail!(
            "spec {} describes volume {:?}, not {:?}",
            path.display(),
            spec.name,
            volume
        );
    }
    spec.validate()?;
    Ok(spec)
}

/// `host` or `host:port` of a node's cluster endpoint.
fn endpoint(host: &str) -> String {
    let has_port = match host.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => host.matches(':').count() == 1,
    };
    if has_port {
        host.to_string()
    } else {
        cluster::state::join_host_port(
            host.trim_matches(|c| c == '[' || c == ']'),
            cluster::config::DEFAULT_CLUSTER_PORT,
        )
    }
}

async fn fetch(
    peers: &cluster::peers::Peers,
    endpoint: &str,
    req: &cluster::rpc::NodeRequest,
    wait: Duration,
) -> Result<Option<cluster::rpc::VolumeView>> {
    let conn = peers.get(endpoint);
    match conn.call_patiently(req, wait, Duration::from_secs(30)).await {
        Ok(cluster::rpc::NodeReply::Volume(v)) => Ok(v),
        Ok(other) => bail!("unexpected answer from {endpoint}: {other:?}"),
        Err(e) => bail!("cannot reach {endpoint}: {e}"),
    }
}

/// Follows the volume's state from any node that answers: a stopped (or deleted) volume
/// closes the gate, a started one opens it, and a brick replaced on another server is
/// reached there.
async fn follow(
    peers: cluster::peers::Peers,
    first: String,
    mut view: cluster::rpc::VolumeView,
    gate: Arc<client::gate::Gate>,
    vol: Arc<client::Volume>,
) {
    let name = view.record.spec.name.clone();
    let mut endpoints = vec![first];
    loop {
        for n in &view.nodes {
            let ep = n.endpoint();
            if !endpoints.contains(&ep) {
                endpoints.push(ep);
            }
        }
        let mut progressed = false;
        for ep in endpoints.clone() {
            let req = cluster::rpc::NodeRequest::WatchVolume {
                name: name.clone(),
                revision: view.revision,
            };
            match fetch(&peers, &ep, &req, Duration::ZERO).await {
                Ok(Some(v)) => {
                    let open = v.record.state == cluster::state::VolumeState::Started;
                    if open != gate.is_open() {
                        tracing::warn!(volume = %name, state = %v.record.state, "volume state changed");
                    }
                    gate.set_open(open);
                    let bricks = &v.record.spec.bricks;
                    if bricks.len() == vol.conns.len() {
                        for (i, b) in bricks.iter().enumerate() {
                            vol.move_brick(i, &b.addr);
                        }
                    }
                    view = v;
                    progressed = true;
                    break;
                }
                Ok(None) => {
                    tracing::warn!(volume = %name, "volume was deleted");
                    gate.set_open(false);
                    progressed = true;
                    break;
                }
                Err(e) => tracing::debug!("watch via {ep}: {e:#}"),
            }
        }
        if !progressed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn foreground(dir: &Path, mut r: Resolved, notify: bool) -> Result<()> {
    crate::logging::init("warn");
    let key = proto::auth::ClusterKey::load(&r.key)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let (spec, follow_from) = match &r.spec {
        Some(path) => (load_spec(path, &r.volume)?, None),
        None => {
            let peers = cluster::peers::Peers::new(key.clone(), &name, "client");
            let ep = endpoint(&r.host);
            let req = cluster::rpc::NodeRequest::GetVolume {
                name: r.volume.clone(),
            };
            let view = rt
                .block_on(fetch(&peers, &ep, &req, Duration::from_secs(5)))?
                .ok_or_else(|| anyhow!("volume {} does not exist on {}", r.volume, r.host))?;
            if view.record.state != cluster::state::VolumeState::Started {
                bail!(
                    "volume {} is not started (state: {})",
                    r.volume,
                    view.record.state
                );
            }
            apply_options(&mut r.opts, &view.record.options);
            (view.record.spec.clone(), Some((peers, ep, view)))
        }
    };
    let vol = Arc::new(rt.block_on(client::Volume::connect(spec, key, &name, Duration::from_secs(5)))?);
    let gate = Arc::new(client::gate::Gate::new(vol.root.clone(), true));
    if let Some((peers, ep, view)) = follow_from {
        rt.spawn(follow(peers, ep, view, gate.clone(), vol.clone()));
    }
    let mut session = shoal_fuse::mount(gate, dir, &r.opts, rt.handle().clone(), &|f| vol.on_stale(f))
        .with_context(|| format!("cannot mount on {}", dir.display()))?;
    // (Through fusermount3 when that mounted it.)
    let mut unmounter = session.unmount_callable();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount on signal: {e}");
        }
    });
    if notify {
        println!("ready");
        // Nobody reads our output once the starter has gone.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = rustix::stdio::dup2_stdout(&null);
        }
    }
    session.run().context("mount session")?;
    drop(vol);
    Ok(())
}

/// Volume options that shape a mount, unless the mount's own options said otherwise.
fn apply_options(opts: &mut shoal_fuse::MountOptions, options: &std::collections::BTreeMap<String, String>) {
    let secs = |k: &str| {
        options
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
    };
    if let Some(t) = secs("performance.attr-timeout") {
        opts.attr_ttl = t;
    }
    if let Some(t) = secs("performance.entry-timeout") {
        opts.entry_ttl = t;
    }
}

pub fn umount(dir: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let st = cmd.arg(dir).status().context("cannot run fusermount3")?;
            if st.success() {
                Ok(())
            } else {
                bail!("fusermount3 -u {} failed", dir.display())
            }
        }
        Err(e) => Err(anyhow!(
            "cannot unmount {}: {}",
            dir.display(),
            std::io::Error::from(e)
        )),
    }
}

/// `mount.shoal SOURCE DIR [-o OPTIONS] [-f] [-n] [-s] [-v]`, as mount(8) calls it.
pub fn mount_helper(args: Vec<OsString>) -> Result<()> {
    let mut pos = Vec::new();
    let mut options = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => options = it.next().and_then(|o| o.into_string().ok()),
            Some("-f" | "-n" | "-s" | "-v") => {}
            Some(s) if s.starts_with('-') => bail!("mount.shoal: unknown flag {s}"),
            _ => pos.push(a),
        }
    }
    let [source, dir] = <[OsString; 2]>::try_from(pos)
        .map_err(|_| anyhow!("usage: mount.shoal HOST:VOLUME DIR [-o OPTIONS]"))?;
    let args = MountArgs {
        source: source.into_string().map_err(|_| anyhow!("source is not UTF-8"))?,
        dir: dir.into(),
        foreground: false,
        spec: None,
        key: std::env::var_os("SHOAL_KEY")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/etc/shoal/cluster.key".into()),
        options,
        log: None,
    };
    run(args)
}
