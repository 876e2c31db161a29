//! `volume heal NAME split-brain ...` and `info split-brain`, done with a client of the
//! volume (`client::split_brain` says how a split brain is settled).

use client::split_brain::Settle;
use client::xlator::Child;
use cluster::{SettleBy, SplitBrainWork};
use layout::VolumeSpec;
use proto::{Errno, FileId};

/// Lists the split brains (ids in hex) or settles them as `work` says: a line per object.
pub async fn run(root: &Child, spec: &VolumeSpec, work: SplitBrainWork) -> Result<Vec<String>, String> {
    let (path, by) = match work {
        SplitBrainWork::List => {
            let ids = root
                .split_brains()
                .await
                .map_err(|e| format!("cannot list them: {e}"))?;
            let max = cluster::admin::HEAL_INFO_MAX as usize;
            return Ok(ids.iter().take(max).map(|id| id.to_hex()).collect());
        }
        SplitBrainWork::Settle { path, by } => (path, by),
    };
    let how = match by {
        SettleBy::Brick(i) => Settle::Source(spec.bricks.get(i).ok_or("no such brick")?.addr.clone()),
        SettleBy::BiggerFile => Settle::BiggerFile,
        SettleBy::LatestMtime => Settle::LatestMtime,
    };
    let Some(path) = path else {
        // Every split brain of the named brick's replica set (others settle to nothing).
        let ids = root
            .split_brains()
            .await
            .map_err(|e| format!("cannot list them: {e}"))?;
        let mut lines = Vec::new();
        for id in ids {
            match root.settle(id, &how).await {
                Ok(done) => lines.extend(done.into_iter().map(|d| format!("<id:{id}>: {d}"))),
                Err(e) => lines.push(format!("<id:{id}>: {}", why(e, &how))),
            }
        }
        if lines.is_empty() {
            lines.push("no split brain in that brick's replica set".into());
        }
        return Ok(lines);
    };
    let id = resolve(root, &path).await?;
    match root.settle(id, &how).await {
        Ok(done) if done.is_empty() => Err(match how {
            Settle::Source(_) => format!("{path} is not in split brain where that brick holds a copy"),
            _ => format!("{path} is not in split brain"),
        }),
        Ok(done) => Ok(done.into_iter().map(|d| format!("{path}: {d}")).collect()),
        Err(e) => Err(format!("{path}: {}", why(e, &how))),
    }
}

/// What an error settling means for the administrator.
fn why(e: Errno, how: &Settle) -> String {
    match (e, how) {
        (Errno::EAGAIN, _) => "the copies are alike by that measure: name a source brick".into(),
        (Errno::ENOENT, Settle::Source(_)) => "that brick holds no copy of it".into(),
        (e, _) if e.is_transport() => {
            "not every copy of it answered: try again once its bricks are up".into()
        }
        (e, _) => e.to_string(),
    }
}

/// The object at `path` (from the volume's root).
async fn resolve(root: &Child, path: &str) -> Result<FileId, String> {
    let mut id = FileId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(format!("{path}: a path in the volume may not go up with .."));
        }
        id = root
            .lookup(id, part.as_bytes())
            .await
            .map_err(|e| format!("{path}: {e}"))?
            .attr
            .id;
    }
    Ok(id)
}
