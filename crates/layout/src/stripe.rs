//! Stripe arithmetic: block i of a file lives on child i mod N, at its own offset in that
//! child's (sparse) file, so each brick's share is visible to `du`.

/// A piece of an I/O request that falls on one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Which child holds these bytes.
    pub child: usize,
    /// Offset in the file (the same in the child's file).
    pub offset: u64,
    pub len: u64,
    /// Where these bytes sit in the caller's buffer.
    pub buf_offset: u64,
}

/// Splits `[offset, offset+len)` into per-child pieces, in file order.
pub fn chunks(offset: u64, len: u64, stripe_size: u64, n: usize) -> Vec<Chunk> {
    assert!(stripe_size > 0 && n > 0);
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset.saturating_add(len);
    while pos < end {
        let block = pos / stripe_size;
        let block_end = (block + 1).saturating_mul(stripe_size);
        let piece = block_end.min(end) - pos;
        out.push(Chunk {
            child: (block % n as u64) as usize,
            offset: pos,
            len: piece,
            buf_offset: pos - offset,
        });
        pos += piece;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_on_block_boundaries() {
        let c = chunks(100, 300, 128, 2);
        assert_eq!(
            c,
            vec![
                Chunk {
                    child: 0,
                    offset: 100,
                    len: 28,
                    buf_offset: 0
                },
                Chunk {
                    child: 1,
                    offset: 128,
                    len: 128,
                    buf_offset: 28
                },
                Chunk {
                    child: 0,
                    offset: 256,
                    len: 128,
                    buf_offset: 156
                },
                Chunk {
                    child: 1,
                    offset: 384,
                    len: 16,
                    buf_offset: 284
                },
            ]
        );
        assert!(chunks(5, 0, 128, 2).is_empty());
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range(offset in 0u64..1<<40, len in 0u64..1<<22, size in 1u64..1<<20, n in 1usize..8) {
            let c = chunks(offset, len, size, n);
            let mut pos = offset;
            for ch in &c {
                prop_assert_eq!(ch.offset, pos);
                prop_assert_eq!(ch.buf_offset, pos - offset);
                prop_assert!(ch.len > 0 && ch.len <= size);
                prop_assert_eq!(ch.child as u64, (ch.offset / size) % n as u64);
                // A piece never crosses a block boundary.
                prop_assert_eq!(ch.offset / size, (ch.offset + ch.len - 1) / size);
                pos += ch.len;
            }
            prop_assert_eq!(pos, offset + len);
        }
    }
}
