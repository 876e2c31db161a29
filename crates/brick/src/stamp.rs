//! Which volume a brick directory belongs to: `.shoal/volume-id`, written when the volume is
//! created (and when a replaced disk is taken in). Nodes serve a brick only from a directory
//! that carries its volume's stamp, so that the empty mount point of a disk that failed to
//! mount is never served, and filled, in the disk's place (GlusterFS's volume-id xattr).

use crate::index::{FORMAT_FILE, META_DIR};
use std::io::Write;
use std::path::{Path, PathBuf};

const STAMP_FILE: &str = "volume-id";

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a volume id")]
    Garbled { path: PathBuf },
}

/// What a directory says about its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Neither a stamp nor a brick: a new directory, or an unmounted disk's mount point.
    Missing,
    /// A brick made before stamps existed.
    Unstamped,
    Volume(u128),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StampError + '_ {
    move |source| StampError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `root` holds a brick's data (an index made by serving it).
pub fn holds_brick(root: &Path) -> bool {
    root.join(META_DIR).join(FORMAT_FILE).exists()
}

/// What `root` says about its volume.
pub fn read(root: &Path) -> Result<Stamp, StampError> {
    // A missing brick directory is an error, not a missing stamp.
    std::fs::metadata(root).map_err(io(root))?;
    let path = root.join(META_DIR).join(STAMP_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => u128::from_str_radix(text.trim(), 16)
            .map(Stamp::Volume)
            .map_err(|_| StampError::Garbled { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(if holds_brick(root) {
            Stamp::Unstamped
        } else {
            Stamp::Missing
        }),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Stamps `root` as a brick of volume `id`, durably (replacing any stamp it had).
pub fn write(root: &Path, id: u128) -> Result<(), StampError> {
    let meta = root.join(META_DIR);
    // As private as the index makes it.
    let made = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&meta);
    match made {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&meta)(e)),
    }
    let tmp = meta.join(format!("{STAMP_FILE}.new"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(format!("{id:032x}\n").as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    let path = meta.join(STAMP_FILE);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(&meta)
        .and_then(|d| d.sync_all())
        .map_err(io(&meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_back_and_bricks_without_one_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), Stamp::Missing);
        write(d.path(), 0xabc).unwrap();
        assert_eq!(read(d.path()).unwrap(), Stamp::Volume(0xabc));
        write(d.path(), 7).unwrap();
        assert_eq!(read(d.path()).unwrap(), Stamp::Volume(7));
        // A stamp alone does not make a brick; a served one does.
        assert!(!holds_brick(d.path()));
        let old = tempfile::tempdir().unwrap();
        drop(crate::Store::open_dir(old.path()).unwrap());
        assert!(holds_brick(old.path()));
        assert_eq!(read(old.path()).unwrap(), Stamp::Unstamped);
        std::fs::write(old.path().join(META_DIR).join(STAMP_FILE), "zz\n").unwrap();
        assert!(matches!(read(old.path()), Err(StampError::Garbled { .. })));
        assert!(matches!(
            read(&d.path().join("absent")),
            Err(StampError::Io { .. })
        ));
    }
}
