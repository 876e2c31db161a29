//! File data on its way to a socket through a pipe, never copied in user space.
//!
//! A large read is spliced from the file into a pipe, which takes references to the page
//! cache's pages instead of copying them, and from the pipe into the connection's socket
//! (TCP or Unix stream), which takes the same pages again. The bytes are copied once, by
//! whoever receives them, where reading them into a buffer and writing that to the socket
//! copies them twice more on this side: on a small machine serving large reads those copies
//! are much of the CPU the brick spends.
//!
//! The pages stay the file's: if the file changes before the receiver copies them, the
//! receiver sees the newer bytes, as a read racing with a write may anyway.

use bytes::Bytes;
use rustix::io::Errno;
use rustix::pipe::{self, PipeFlags, SpliceFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The smallest pipe size refused for being above `/proc/sys/fs/pipe-max-size` (to a process
/// without the privilege to pass it): larger ones are not tried again.
static REFUSED: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The largest pipe an unprivileged process may ask for.
fn max_size() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    })
}

/// Bytes waiting in a pipe, for [`crate::outbox::Outbox::send_body`].
#[derive(Debug)]
pub struct Piped {
    rd: OwnedFd,
    len: usize,
}

impl Piped {
    /// Up to `len` bytes of `file` from `offset` (fewer at its end). `Ok(None)` when a pipe
    /// cannot take them (the pipe size limits, a file system that cannot splice): the caller
    /// then reads them the ordinary way.
    pub fn from_file(file: BorrowedFd<'_>, offset: u64, len: usize) -> std::io::Result<Option<Piped>> {
        Ok(Piped::from_ranges(file, &[(offset, len)])?.map(|(p, _)| p))
    }

    /// Like [`Piped::from_file`] for several ranges, one after the other in the pipe; with
    /// how many bytes each range gave.
    pub fn from_ranges(
        file: BorrowedFd<'_>,
        ranges: &[(u64, usize)],
    ) -> std::io::Result<Option<(Piped, Vec<usize>)>> {
        let page = rustix::param::page_size();
        // Each page a range touches takes a slot of the pipe.
        let size: usize = ranges
            .iter()
            .map(|&(offset, len)| (offset as usize % page + len).div_ceil(page) * page)
            .sum();
        if size >= REFUSED.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (rd, wr) = match pipe::pipe_with(PipeFlags::CLOEXEC) {
            Ok(ends) => ends,
            // Out of descriptors or memory for one: the ordinary read may still do.
            Err(Errno::MFILE | Errno::NFILE | Errno::NOMEM) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match pipe::fcntl_setpipe_size(&wr, size) {
            Ok(got) if got >= size => {}
            Err(Errno::PERM) => {
                // Above the size limit for good; over the user's pipe page quota (many
                // reads at once) only for now.
                if size > max_size() {
                    REFUSED.fetch_min(size, Ordering::Relaxed);
                }
                return Ok(None);
            }
            Ok(_) | Err(Errno::NOMEM | Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut lens = Vec::with_capacity(ranges.len());
        for &(offset, len) in ranges {
            let mut at = offset;
            let mut filled = 0;
            while filled < len {
                match pipe::splice(
                    file,
                    Some(&mut at),
                    &wr,
                    None,
                    len - filled,
                    SpliceFlags::NONBLOCK,
                ) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(Errno::INTR) => {}
                    // A full pipe (which the sizing above rules out) or no splice here.
                    Err(Errno::AGAIN | Errno::INVAL) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            lens.push(filled);
        }
        let len = lens.iter().sum();
        Ok(Some((Piped { rd, len }, lens)))
    }

    /// Bytes still in the pipe.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves up to `len()` bytes into `sock` without waiting: how many it took.
    pub fn splice_into(&mut self, sock: BorrowedFd<'_>) -> std::io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let n = pipe::splice(&self.rd, None, sock, None, self.len, flags)?;
        self.len -= n;
        Ok(n)
    }

    /// What is left in the pipe, copied out (for a socket that is full).
    pub fn into_bytes(self) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; self.len];
        let mut got = 0;
        while got < buf.len() {
            match rustix::io::read(&self.rd, &mut buf[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Bytes::from(buf))
    }
}

impl AsFd for Piped {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn a_piped_range_holds_the_files_bytes_and_stops_at_its_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let f = file_of(&data);
        for (offset, len) in [
            (0u64, 131_072usize),
            (1, 131_072),
            (4095, 200_000),
            (250_000, 131_072),
        ] {
            let p = Piped::from_file(f.as_fd(), offset, len)
                .unwrap()
                .expect("a pipe for 200 KB");
            let end = (offset as usize + len).min(data.len());
            assert_eq!(p.len(), end - offset as usize);
            assert_eq!(&p.into_bytes().unwrap()[..], &data[offset as usize..end]);
        }
        let past = Piped::from_file(f.as_fd(), 400_000, 4096).unwrap().unwrap();
        assert!(past.is_empty());
    }
}
