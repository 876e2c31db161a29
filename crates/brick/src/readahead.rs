//! Read-ahead for strided readers.
//!
//! A striped file reaches each brick as reads of one stripe at every N-th stripe offset: the
//! holes between them belong to the other bricks. The kernel's read-ahead takes such reads
//! for random ones (the pages before each are never cached) and reads exactly what is asked,
//! one disk round trip per stripe. When a handle's reads keep the same forward step, the
//! brick asks the kernel for the next ones at once (POSIX_FADV_WILLNEED), each on its own so
//! that the holes are not filled with cached zeros. Plain sequential reads are left to the
//! kernel, which handles them well, and anything irregular (random reads) asks for nothing.

/// Bytes asked for ahead of a strided reader.
pub const WINDOW: u64 = 2 << 20;
/// Most reads asked for ahead.
const MAX_AHEAD: u64 = 16;
/// Reads in a row with the same step before it counts as a stride.
const CONFIRM: u32 = 2;

/// Reads to ask for: `count` of `len` bytes, at `from`, `from + step`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub from: u64,
    pub step: u64,
    pub len: u64,
    pub count: u64,
}

impl Ahead {
    pub fn ranges(self) -> impl Iterator<Item = (u64, u64)> {
        (0..self.count).map(move |i| (self.from + i * self.step, self.len))
    }
}

#[derive(Debug, Default)]
pub struct Stride {
    last: Option<u64>,
    step: u64,
    repeats: u32,
    /// The first read not yet asked for.
    ahead: u64,
}

impl Stride {
    /// Notes a read of `len` bytes at `offset`; returns what to read ahead, if anything.
    pub fn next(&mut self, offset: u64, len: u64) -> Option<Ahead> {
        let step = match self.last {
            Some(last) if offset > last => offset - last,
            _ => 0,
        };
        self.last = Some(offset);
        if step != 0 && step == self.step {
            self.repeats = self.repeats.saturating_add(1);
        } else {
            self.step = step;
            self.repeats = 0;
            self.ahead = 0;
        }
        // A gap between reads (a step longer than a read), seen often enough.
        if self.repeats < CONFIRM || step <= len || len == 0 {
            return None;
        }
        let reads = (WINDOW / len).clamp(1, MAX_AHEAD);
        let next = offset.checked_add(step)?;
        // Asked again once half of what was asked for is read.
        if self.ahead > next && (self.ahead - next) / step >= reads / 2 {
            return None;
        }
        let from = self.ahead.max(next);
        let until = offset.checked_add(step.checked_mul(reads + 1)?)?;
        self.ahead = until;
        Some(Ahead {
            from,
            step,
            len,
            count: (until - from) / step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K128: u64 = 128 << 10;

    /// Offsets of the reads asked for while reading `n` stripes of 128 KiB out of every 2.
    fn asked(s: &mut Stride, n: u64) -> Vec<u64> {
        (0..n)
            .filter_map(|i| s.next(i * 2 * K128, K128))
            .flat_map(|a| {
                a.ranges()
                    .map(|(o, l)| {
                        assert_eq!(l, K128);
                        o
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_steady_stride_is_read_ahead_stripe_by_stripe() {
        let mut s = Stride::default();
        let asked = asked(&mut s, 200);
        // Confirmed at the fourth read; from then on every later read was asked for first,
        // exactly once, and never a hole.
        let expected: Vec<u64> = (4..).map(|i| i * 2 * K128).take(asked.len()).collect();
        assert_eq!(asked, expected);
        assert!(*asked.last().unwrap() >= 199 * 2 * K128);
        // At most a window ahead.
        assert!(*asked.last().unwrap() <= 199 * 2 * K128 + (WINDOW / K128 + 1) * 2 * K128);
    }

    #[test]
    fn sequential_and_random_reads_ask_for_nothing() {
        let mut s = Stride::default();
        // Sequential: the kernel's own read-ahead does it.
        assert!((0..32).all(|i| s.next(i * K128, K128).is_none()));
        // Random: no step repeats.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut n = 0;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            n += s.next((x % (256 << 20)) & !4095, 4096).is_some() as u32;
        }
        assert_eq!(n, 0);
        // Nor backwards strides.
        let mut s = Stride::default();
        assert!((0..32).all(|i| s.next((64 - i) * 2 * K128, K128).is_none()));
    }

    #[test]
    fn a_broken_stride_starts_over() {
        let mut s = Stride::default();
        assert!(!asked(&mut s, 8).is_empty());
        // A jump elsewhere: nothing until the new stride is confirmed again.
        let base = 100 << 20;
        assert_eq!(s.next(base, K128), None);
        assert_eq!(s.next(base + 2 * K128, K128), None);
        assert_eq!(s.next(base + 4 * K128, K128), None);
        let a = s.next(base + 6 * K128, K128).unwrap();
        assert_eq!(a.from, base + 8 * K128);
        // Near the end of the offsets: no overflow, nothing asked past them.
        let mut s = Stride::default();
        for i in 0..8 {
            let _ = s.next(u64::MAX - (8 - i) * 2 * K128, K128);
        }
    }
}
