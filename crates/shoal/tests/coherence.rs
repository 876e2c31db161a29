//! Two mounts of one volume see each other's changes at once, although each lets its kernel
//! keep names, attributes and data for 10 s: the bricks announce changes to the clients that
//! may cache them. Every wait here is far below those 10 s, so only the announcements can
//! make the changes show.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::Duration;

/// Far below the mounts' cache lifetime (10 s).
const PROMPTLY: Duration = Duration::from_secs(2);

fn size(p: &std::path::Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

#[test]
fn changes_through_one_mount_show_at_once_through_another() {
    if !require_root() {
        return;
    }
    for (stripe, replica, n) in [(1, 1, 2), (1, 2, 2), (2, 1, 2)] {
        let layout = format!("stripe {stripe} replica {replica} over {n}");
        let b = Bricks::start(n);
        let spec = b.spec("c", stripe, replica);
        let (a, bm) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
        std::fs::create_dir(a.path("d")).unwrap();
        std::fs::write(a.path("d/f"), b"one").unwrap();

        // B looks: it now caches the name, the attributes, the pages and an absent name.
        assert_eq!(std::fs::read(bm.path("d/f")).unwrap(), b"one", "{layout}");
        assert_eq!(size(&bm.path("d/f")), Some(3));
        assert!(!bm.path("d/g").exists());
        let mut held = std::fs::File::open(bm.path("d/f")).unwrap();

        // Data and size.
        std::fs::write(a.path("d/f"), b"two-two").unwrap();
        wait_for(&format!("{layout}: new size seen"), PROMPTLY, || {
            size(&bm.path("d/f")) == Some(7)
        });
        // Same size, new bytes: the pages B holds for its open file must go.
        std::fs::write(a.path("d/f"), b"TWO-TWO").unwrap();
        wait_for(
            &format!("{layout}: new bytes through an open file"),
            PROMPTLY,
            || {
                let mut buf = Vec::new();
                held.seek(SeekFrom::Start(0)).unwrap();
                held.read_to_end(&mut buf).unwrap();
                buf == b"TWO-TWO"
            },
        );
        drop(held);

        // A name B saw absent appears; a name it saw goes; a rename shows both ways.
        std::fs::write(a.path("d/g"), b"g").unwrap();
        wait_for(&format!("{layout}: created name seen"), PROMPTLY, || {
            bm.path("d/g").exists()
        });
        std::fs::remove_file(a.path("d/f")).unwrap();
        wait_for(&format!("{layout}: removed name gone"), PROMPTLY, || {
            !bm.path("d/f").exists()
        });
        std::fs::rename(a.path("d/g"), a.path("d/h")).unwrap();
        wait_for(&format!("{layout}: rename seen"), PROMPTLY, || {
            !bm.path("d/g").exists() && bm.path("d/h").exists()
        });

        // Attributes.
        std::fs::set_permissions(a.path("d/h"), std::fs::Permissions::from_mode(0o600)).unwrap();
        wait_for(&format!("{layout}: mode seen"), PROMPTLY, || {
            std::fs::metadata(bm.path("d/h")).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600)
        });

        // A name removed elsewhere takes a link from the file B looks at.
        std::fs::hard_link(a.path("d/h"), a.path("d/h2")).unwrap();
        let links = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| m.nlink());
        wait_for(&format!("{layout}: two links seen"), PROMPTLY, || {
            links(&bm.path("d/h")) == Some(2)
        });
        std::fs::remove_file(a.path("d/h2")).unwrap();
        wait_for(&format!("{layout}: link count drop seen"), PROMPTLY, || {
            links(&bm.path("d/h")) == Some(1)
        });

        // A file opened read-only (reaching the bricks only at its first uncached read)
        // stays readable after this mount unlinks it, as POSIX wants.
        std::fs::write(a.path("u"), b"still here").unwrap();
        let mut open = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(a.path("u"))
            .unwrap();
        std::fs::remove_file(a.path("u")).unwrap();
        let mut buf = Vec::new();
        open.read_to_end(&mut buf).unwrap();
        assert_eq!(
            buf, b"still here",
            "{layout}: unlinked file read through an open handle"
        );

        // And the other way round, in a directory B made (whose names B knows all of).
        std::fs::create_dir(bm.path("e")).unwrap();
        assert!(!bm.path("e/x").exists());
        std::fs::write(a.path("e/x"), b"from a").unwrap();
        wait_for(
            &format!("{layout}: name made by another mount in a made directory"),
            PROMPTLY,
            || std::fs::read(bm.path("e/x")).is_ok_and(|d| d == b"from a"),
        );
        // B creating the same name without O_EXCL opens A's file, as on a local disk.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(bm.path("e/x"))
            .unwrap();
        assert_eq!(std::fs::read(a.path("e/x")).unwrap(), b"from a");
    }
}
