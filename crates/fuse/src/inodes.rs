//! Inode numbers for the kernel, mapped to shoal's 128-bit ids.
//!
//! An id keeps the low 64 bits of its value as inode number when that number is free, so
//! numbers are stable across mounts in practice; a clash (or the reserved 0 and 1) takes the
//! next free number. Entries live while the kernel holds lookups on them.

use proto::{Errno, FileId};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub const ROOT_INO: u64 = 1;

#[derive(Default)]
struct Maps {
    by_ino: HashMap<u64, (FileId, u64)>,
    by_id: HashMap<FileId, u64>,
}

pub struct Inodes {
    maps: Mutex<Maps>,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut m = Maps::default();
        m.by_ino.insert(ROOT_INO, (FileId::ROOT, 1));
        m.by_id.insert(FileId::ROOT, ROOT_INO);
        Inodes { maps: Mutex::new(m) }
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id behind an inode number the kernel holds.
    pub fn id(&self, ino: u64) -> Result<FileId, Errno> {
        self.lock()
            .by_ino
            .get(&ino)
            .map(|(id, _)| *id)
            .ok_or(Errno::ESTALE)
    }

    /// The inode number for an id the kernel is being told about (one more lookup).
    pub fn lookup(&self, id: FileId) -> u64 {
        let mut m = self.lock();
        if let Some(&ino) = m.by_id.get(&id) {
            if let Some(e) = m.by_ino.get_mut(&ino) {
                if ino != ROOT_INO {
                    e.1 += 1;
                }
            }
            return ino;
        }
        let mut ino = (id.0 as u64).max(2);
        while m.by_ino.contains_key(&ino) {
            ino = ino.wrapping_add(1).max(2);
        }
        m.by_ino.insert(ino, (id, 1));
        m.by_id.insert(id, ino);
        ino
    }

    /// The inode number of an id the kernel holds, if it holds it.
    pub fn known(&self, id: FileId) -> Option<u64> {
        self.lock().by_id.get(&id).copied()
    }

    /// Every inode number the kernel holds.
    pub fn all(&self) -> Vec<u64> {
        self.lock().by_ino.keys().copied().collect()
    }

    /// The number to show for an id in a listing, without taking a lookup.
    pub fn peek(&self, id: FileId) -> u64 {
        self.lock()
            .by_id
            .get(&id)
            .copied()
            .unwrap_or((id.0 as u64).max(2))
    }

    /// The kernel dropped `n` lookups. True when the inode is gone.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let mut m = self.lock();
        let gone = match m.by_ino.get_mut(&ino) {
            Some(e) => {
                e.1 = e.1.saturating_sub(n);
                (e.1 == 0).then_some(e.0)
            }
            None => None,
        };
        match gone {
            Some(id) => {
                m.by_ino.remove(&ino);
                m.by_id.remove(&id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_forgotten() {
        let t = Inodes::new();
        let a = FileId(0x1_0000_0000_0000_0005);
        let b = FileId(0x2_0000_0000_0000_0005); // same low 64 bits
        let ia = t.lookup(a);
        let ib = t.lookup(b);
        assert_eq!(ia, 5);
        assert_ne!(ia, ib);
        assert_eq!(t.lookup(a), ia);
        t.forget(ia, 1);
        assert_eq!(t.id(ia), Ok(a));
        t.forget(ia, 1);
        assert_eq!(t.id(ia), Err(Errno::ESTALE));
        assert_eq!(t.id(ROOT_INO), Ok(FileId::ROOT));
    }
}
