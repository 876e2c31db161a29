//! A fresh file system per benchmark run, so that every row starts from the same state.

use crate::{run, which};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A fresh ext4 file system in an image file, on a loop device doing direct I/O (no second
/// page cache of the image file); gone when dropped.
pub struct FreshFs {
    image: PathBuf,
    device: String,
    pub mount: PathBuf,
}

impl FreshFs {
    /// Big enough for one row at a time (1 GiB sequential file, 256 MiB random file, small
    /// files, GlusterFS's metadata); sparse, so it takes only what the rows write.
    const SIZE: &'static str = "16G";

    fn image(dir: &Path) -> PathBuf {
        dir.join("fs.img")
    }

    fn mount_point(dir: &Path) -> PathBuf {
        dir.join("fs")
    }

    /// Unmounts and detaches what an interrupted run left in `dir`.
    pub fn sweep(dir: &Path) {
        let _ = run("umount", &[&Self::mount_point(dir).display().to_string()]);
        if let Ok(list) = run("losetup", &["-j", &Self::image(dir).display().to_string()]) {
            for dev in list.lines().filter_map(|l| l.split(':').next()) {
                let _ = run("losetup", &["-d", dev]);
            }
        }
    }

    pub fn make(dir: &Path) -> Result<FreshFs> {
        which("mkfs.ext4")?;
        let (image, mount) = (Self::image(dir), Self::mount_point(dir));
        std::fs::create_dir_all(&mount)?;
        run("truncate", &["-s", Self::SIZE, &image.display().to_string()])?;
        run("mkfs.ext4", &["-q", "-F", &image.display().to_string()])?;
        let device = run(
            "losetup",
            &["--direct-io=on", "--show", "-f", &image.display().to_string()],
        )
        .context("cannot set up a loop device for the benchmark's file system")?
        .trim()
        .to_string();
        let fs = FreshFs { image, device, mount };
        run("mount", &[&fs.device, &fs.mount.display().to_string()])
            .context("cannot mount the benchmark's file system")?;
        Ok(fs)
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.mount.display().to_string()]);
        let _ = run("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
    }
}
