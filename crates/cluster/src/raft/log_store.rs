//! The Raft log and vote, in a redb file of their own (redb allows one writer per file, and
//! appends must not wait on the state machine).

use super::{decode, encode, read_err, write_err, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let db = Database::create(path).map_err(write_err)?;
        let tx = db.begin_write().map_err(write_err)?;
        {
            tx.open_table(LOGS).map_err(write_err)?;
            tx.open_table(META).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(v.value())?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        let bytes = encode(v)?;
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(META).map_err(write_err)?;
            t.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for item in t.range(bounds).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOGS).map_err(read_err)?;
        let last = match t.last().map_err(read_err)? {
            Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOGS).map_err(write_err)?;
            for e in entries {
                let bytes = encode(&e)?;
                t.insert(e.log_id.index, bytes.as_slice()).map_err(write_err)?;
            }
        }
        // redb commits durably (fsync) by default: the entries are flushed once this returns.
        tx.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOGS).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(&log_id)?;
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut meta = tx.open_table(META).map_err(write_err)?;
            meta.insert(PURGED, bytes.as_slice()).map_err(write_err)?;
            let mut logs = tx.open_table(LOGS).map_err(write_err)?;
            logs.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}
