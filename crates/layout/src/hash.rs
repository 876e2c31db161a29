//! Stable name hashing for the distribute translator.
//!
//! A name's home is `pick(hash_name(parent, name), n)`. Both functions are frozen: changing
//! either moves files, so a new scheme would need a new volume format version.

use proto::FileId;
use xxhash_rust::xxh3::xxh3_64_with_seed;

const SEED: u64 = 0x5348_4f41_4c5f_4431; // "SHOAL_D1"

/// The hash of a directory entry: the parent's id and the name, so that equal names in
/// different directories spread independently.
pub fn hash_name(parent: FileId, name: &[u8]) -> u64 {
    let mut buf = Vec::with_capacity(16 + name.len());
    buf.extend_from_slice(&parent.to_bytes());
    buf.extend_from_slice(name);
    xxh3_64_with_seed(&buf, SEED)
}

/// Jump consistent hash (Lamping & Veach, 2014): maps a key to one of `n` buckets, evenly,
/// and moves only 1/(n+1) of the keys when a bucket is added at the end. Written out here
/// because it is a dozen lines and the exact arithmetic is part of the on-disk format.
pub fn pick(mut key: u64, n: usize) -> usize {
    assert!(n > 0, "pick from an empty set");
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1i64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HELLO: u64 = 9043652389700695658;

    #[test]
    fn frozen_values() {
        // These pin the format: if they change, existing volumes lose their files.
        assert_eq!(pick(0, 1), 0);
        assert_eq!(hash_name(FileId::ROOT, b"hello"), HELLO);
        let spread: Vec<usize> = (0..8u64).map(|k| pick(k, 5)).collect();
        assert_eq!(spread, vec![0, 0, 3, 3, 1, 4, 2, 0]);
    }

    #[test]
    fn spreads_evenly() {
        let n = 3;
        let mut counts = vec![0usize; n];
        for i in 0..30_000u32 {
            counts[pick(hash_name(FileId::ROOT, format!("file-{i}").as_bytes()), n)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{c}");
        }
    }

    proptest! {
        #[test]
        fn in_range_and_stable_under_growth(key: u64, n in 1usize..200) {
            let a = pick(key, n);
            prop_assert!(a < n);
            let b = pick(key, n + 1);
            // Growth either keeps the key where it was or moves it to the new bucket.
            prop_assert!(b == a || b == n);
        }
    }
}
