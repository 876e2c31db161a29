//! Open directories: the kernel asks for entries by offset; translators list by cursor.
//!
//! Offsets handed to the kernel are positions in the listing (1 after ".", 2 after "..",
//! then one per entry). The state keeps the entries from the last requested position on and
//! the cursor of the next page, so sequential reading never re-lists; a seek backwards
//! (rewinddir, seekdir) starts the listing again and skips forward.

use client::{DirCursor, Xlator};
use proto::{DirEntry, Errno, FileId, FileKind};
use std::collections::VecDeque;

pub struct Item {
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub id: Option<FileId>,
}

pub struct DirState {
    pub id: FileId,
    /// Position of `items[0]` in the listing.
    base: u64,
    items: VecDeque<Item>,
    /// Where the next page starts; None once the listing is complete.
    next: Option<DirCursor>,
}

impl DirState {
    pub fn new(id: FileId) -> DirState {
        let mut s = DirState {
            id,
            base: 0,
            items: VecDeque::new(),
            next: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        self.base = 0;
        self.items.clear();
        self.items.push_back(Item {
            name: b".".to_vec(),
            kind: FileKind::Dir,
            id: Some(self.id),
        });
        self.items.push_back(Item {
            name: b"..".to_vec(),
            kind: FileKind::Dir,
            id: None,
        });
        self.next = Some(DirCursor::default());
    }

    fn push(&mut self, d: DirEntry) {
        let id = d.entry.as_ref().map(|e| e.attr.id);
        self.items.push_back(Item {
            name: d.name,
            kind: d.kind,
            id,
        });
    }

    /// Makes the entries from position `offset` on available (at least one, unless the
    /// listing ends before) and returns them with their positions.
    pub async fn at(
        &mut self,
        vol: &dyn Xlator,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, &Item)>, Errno> {
        if offset < self.base {
            self.restart();
        }
        // Drop what the kernel has moved past.
        while self.base < offset && !self.items.is_empty() {
            self.items.pop_front();
            self.base += 1;
        }
        while self.base + (self.items.len() as u64) <= offset {
            let Some(cursor) = self.next.take() else {
                break;
            };
            let page = vol.readdir(self.id, &cursor, false).await?;
            self.next = page.next;
            for d in page.entries {
                if self.base < offset {
                    self.base += 1; // skipping forward after a restart
                } else {
                    self.push(d);
                }
            }
        }
        // Have at least one page's worth beyond the offset when more exist.
        if self.items.len() < 2 {
            if let Some(cursor) = self.next.take() {
                let page = vol.readdir(self.id, &cursor, false).await?;
                self.next = page.next;
                for d in page.entries {
                    self.push(d);
                }
            }
        }
        let base = self.base;
        Ok(self
            .items
            .iter()
            .enumerate()
            .map(move |(i, it)| (base + i as u64, it)))
    }
}
