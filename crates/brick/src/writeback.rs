//! Early write-out of what a handle wrote.
//!
//! A file written in one go otherwise stays dirty in the page cache until the kernel's
//! background writeback gets to it (after 30 s, or past its dirty threshold) or its writer's
//! fsync or close, which then waits for all of it at the disk's pace: the brick receiving data
//! (CPU) and the disk storing it would take turns instead of working side by side. So each
//! handle starts the write-out of what it wrote every few MiB (as PostgreSQL's `*_flush_after`
//! and RocksDB's `bytes_per_sync` do; small files never get there).
//!
//! What is counted is the bytes written past the furthest write before, not blocks of the
//! file crossed: a brick of a stripe holds every N-th piece of the file, and brick 0 of a
//! stripe of 2 (say) never crossed a block boundary within a write. Writes behind the
//! furthest one (a random writer's, or a second pass over the file) count for nothing:
//! their pages would go to the disk one by one instead of gathered, and a page rewritten
//! soon after would go twice; the kernel's writeback takes them.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes a handle writes before their write-out starts.
pub const WRITE_OUT_AFTER: u64 = 8 << 20;
/// Counted writes thinner than one byte in this many over the span they cover are left to
/// the kernel too (writes that jump far ahead). A brick of a stripe of N holds one byte in
/// N of the span it is written: wider stripes are left to the kernel.
const SCATTERED: u64 = 16;

/// What a handle wrote since the last write-out it started.
#[derive(Debug, Default)]
pub struct Written {
    /// The end of the furthest write.
    high: u64,
    /// Where the span not yet written out starts.
    from: Option<u64>,
    /// Bytes written past the furthest write before them, since the last write-out.
    bytes: u64,
}

impl Written {
    /// Counts a write of `len` bytes at `offset`; true once enough was written to start
    /// a write-out.
    pub fn add(&mut self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        let new = end.saturating_sub(offset.max(self.high));
        if new == 0 {
            return false;
        }
        self.from = Some(self.from.map_or(offset, |f| f.min(offset)));
        self.high = end;
        self.bytes += new;
        self.bytes >= WRITE_OUT_AFTER
    }

    /// The span (offset, length) to write out, unless the counted writes were too thin in
    /// it; counting starts anew from the furthest write either way (a write that arrives
    /// late, behind it, is still in the next span).
    pub fn take(&mut self) -> Option<(u64, u64)> {
        let from = self.from.replace(self.high)?;
        let bytes = std::mem::take(&mut self.bytes);
        let span = self.high - from;
        (bytes > 0 && span / SCATTERED <= bytes).then_some((from, span))
    }
}

/// Starts writing `len` bytes of `file` from `offset` to disk, without waiting for them.
pub fn start(file: BorrowedFd<'_>, offset: u64, len: u64) {
    // SAFETY: a plain system call on a descriptor borrowed for its duration; no memory is
    // passed. (rustix has no sync_file_range.)
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        // Only an early start is lost: fsync and the kernel's flusher still write it.
        tracing::debug!("sync_file_range: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sequential_writer_writes_out_every_few_mib() {
        let mut w = Written::default();
        for i in 0..7 {
            assert!(!w.add(i * MIB, MIB));
        }
        assert!(w.add(7 * MIB, MIB));
        assert_eq!(w.take(), Some((0, 8 * MIB)));
        assert!(!w.add(8 * MIB, MIB), "counting starts anew");
    }

    #[test]
    fn a_stripe_brick_writes_out_its_pieces() {
        // Every other 128 KiB piece, as brick 0 of a stripe of 2 gets them.
        let piece = 128 << 10;
        let mut w = Written::default();
        let mut ready = None;
        for i in 0..64 {
            if w.add(2 * i * piece, piece) {
                ready = Some(i);
                break;
            }
        }
        assert_eq!(ready, Some(63));
        assert_eq!(w.take(), Some((0, 127 * piece)));
    }

    #[test]
    fn random_writes_are_left_to_the_kernel() {
        // 8 MiB of 4 KiB pages spread over a 32 MiB file, rewritten four times over.
        let mut w = Written::default();
        let ready = (0..4 * 2048u64)
            .filter(|&i| w.add((i * 7919 % 8192) * 4096, 4096))
            .count();
        assert_eq!(ready, 0);
        let mut w = Written::default();
        assert!((0..7).all(|i| !w.add(i * MIB, MIB)));
        assert!(
            (0..7).all(|i| !w.add(i * MIB, MIB)),
            "a second pass counts for nothing"
        );
        assert!(w.add(7 * MIB, MIB), "the first goes on");
    }

    #[test]
    fn a_write_that_jumps_far_ahead_is_left_to_the_kernel() {
        let mut w = Written::default();
        assert!(!w.add(0, 4096));
        assert!(w.add(1 << 30, 8 * MIB));
        assert_eq!(w.take(), None, "8 MiB in a span of 1 GiB");
        assert!(!w.add((1 << 30) + 8 * MIB, MIB));
    }

    #[test]
    fn late_writes_behind_the_furthest_are_in_the_next_span() {
        let mut w = Written::default();
        assert!(!w.add(MIB, 7 * MIB));
        assert!(w.add(0, 9 * MIB));
        assert_eq!(w.take(), Some((0, 9 * MIB)));
        // The next write-out starts where that one ended.
        for i in 9..16 {
            assert!(!w.add(i * MIB, MIB));
        }
        assert!(w.add(16 * MIB, MIB));
        assert_eq!(w.take(), Some((9 * MIB, 8 * MIB)));
    }

    #[test]
    fn odd_writes_count_for_nothing() {
        let mut w = Written::default();
        assert!(!w.add(u64::MAX - 5, 4096));
        assert!(!w.add(5, 0));
        assert_eq!(w.take(), None);
    }
}
