//! Early write-out of what a handle wrote.
//!
//! A file written in one go otherwise stays dirty in the page cache until the kernel's
//! background writeback gets to it (after 30 s, or past its dirty threshold) or its writer's
//! fsync or close, which then waits for all of it at the disk's pace: the brick receiving data
//! (CPU) and the disk storing it would take turns instead of working side by side. So each
//! handle starts the write-out of what it wrote every few MiB (as PostgreSQL's `*_flush_after`
//! and RocksDB's `bytes_per_sync` do; small files never get there).
//!
//! What is counted is the bytes written and the span they cover, not blocks of the file: a
//! brick of a stripe holds every N-th piece of the file, so its writes never cross a block
//! boundary the way a sequential writer's do, and a handle that writes a file twice over
//! starts the second pass's write-out as well.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes a handle writes before their write-out starts.
pub const WRITE_OUT_AFTER: u64 = 8 << 20;
/// Writes thinner than one byte in this many over the span they cover are left to the
/// kernel: starting the write-out of a random writer's pages would send them to the disk
/// one by one instead of gathered, and a page rewritten soon after would go twice. (A brick
/// of a stripe of N holds one byte in N of the span it is written: wider stripes are left
/// to the kernel too.)
const SCATTERED: u64 = 16;

/// What a handle wrote since the last write-out it started.
#[derive(Debug, Default)]
pub struct Written {
    from: u64,
    to: u64,
    bytes: u64,
}

impl Written {
    /// Counts a write of `len` bytes at `offset`; true once enough was written to start
    /// its write-out.
    pub fn add(&mut self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        if self.bytes == 0 {
            (self.from, self.to) = (offset, end);
        } else {
            self.from = self.from.min(offset);
            self.to = self.to.max(end);
        }
        self.bytes = self.bytes.saturating_add(len);
        self.bytes >= WRITE_OUT_AFTER
    }

    /// The span (offset, length) to write out, if the writes were dense enough; counting
    /// starts anew either way.
    pub fn take(&mut self) -> Option<(u64, u64)> {
        let w = std::mem::take(self);
        let span = w.to - w.from;
        (w.bytes > 0 && span / SCATTERED <= w.bytes).then_some((w.from, span))
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
    fn scattered_writes_are_left_to_the_kernel() {
        let mut w = Written::default();
        let mut ready = false;
        for i in 0..2048u64 {
            // 4 KiB pages spread over 1 GiB.
            ready = w.add((i * 7919 % 262_144) * 4096, 4096);
        }
        assert!(ready);
        assert_eq!(w.take(), None);
        assert!(!w.add(0, 4096), "counting starts anew");
    }

    #[test]
    fn odd_writes_count_for_nothing() {
        let mut w = Written::default();
        assert!(!w.add(u64::MAX - 5, 4096));
        assert!(!w.add(5, 0));
        assert_eq!(w.take(), None);
    }
}
