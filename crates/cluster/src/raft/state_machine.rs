//! The state machine: the [`ClusterState`] built by applying committed commands, persisted
//! in redb with the last applied log id and membership, and published to the rest of the
//! node through a watch channel.

use super::{decode, encode, read_err, write_err, NodeId, RaftNode, StorageError, TypeConfig};
use crate::state::{ClusterState, Outcome};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const STATE: &str = "state";
const APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "last_membership";
const SNAP_META: &str = "snapshot_meta";
const SNAP_DATA: &str = "snapshot_data";

type Membership = StoredMembership<NodeId, RaftNode>;

pub struct StateMachineStore {
    db: Arc<Database>,
    state: ClusterState,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    publish: watch::Sender<Arc<ClusterState>>,
}

/// Builds snapshots from a consistent read of the database.
pub struct SnapshotBuilder {
    db: Arc<Database>,
}

fn get<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match t.get(key).map_err(read_err)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(v.value())?)),
    }
}

impl StateMachineStore {
    /// Opens the store; the returned receiver always holds the latest applied state.
    pub fn open(
        path: &Path,
    ) -> Result<(StateMachineStore, watch::Receiver<Arc<ClusterState>>), StorageError> {
        let db = Database::create(path).map_err(write_err)?;
        let tx = db.begin_write().map_err(write_err)?;
        {
            tx.open_table(META).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)?;
        let (state, applied, membership) = {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(META).map_err(read_err)?;
            (
                get::<ClusterState>(&t, STATE)?.unwrap_or_default(),
                get::<Option<LogId<NodeId>>>(&t, APPLIED)?.flatten(),
                get::<Membership>(&t, MEMBERSHIP)?.unwrap_or_default(),
            )
        };
        let (publish, rx) = watch::channel(Arc::new(state.clone()));
        Ok((
            StateMachineStore {
                db: Arc::new(db),
                state,
                applied,
                membership,
                publish,
            },
            rx,
        ))
    }

    fn persist(
        &self,
        snapshot: Option<(&SnapshotMeta<NodeId, RaftNode>, &[u8])>,
    ) -> Result<(), StorageError> {
        let state = encode(&self.state)?;
        let applied = encode(&self.applied)?;
        let membership = encode(&self.membership)?;
        let mut tx = self.db.begin_write().map_err(write_err)?;
        if snapshot.is_none() {
            // Applied state need not reach the disk at once: the log is durable and entries
            // applied since the last durable commit are applied again after a crash. Building
            // or installing a snapshot commits durably, and so persists this too.
            tx.set_durability(redb::Durability::None).map_err(write_err)?;
        }
        {
            let mut t = tx.open_table(META).map_err(write_err)?;
            t.insert(STATE, state.as_slice()).map_err(write_err)?;
            t.insert(APPLIED, applied.as_slice()).map_err(write_err)?;
            t.insert(MEMBERSHIP, membership.as_slice()).map_err(write_err)?;
            if let Some((meta, data)) = snapshot {
                t.insert(SNAP_META, encode(meta)?.as_slice()).map_err(write_err)?;
                t.insert(SNAP_DATA, data).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, applied, membership) = {
            let tx = self.db.begin_read().map_err(read_err)?;
            let t = tx.open_table(META).map_err(read_err)?;
            let data = t
                .get(STATE)
                .map_err(read_err)?
                .map(|v| v.value().to_vec())
                .unwrap_or(encode(&ClusterState::default())?);
            (
                data,
                get::<Option<LogId<NodeId>>>(&t, APPLIED)?.flatten(),
                get::<Membership>(&t, MEMBERSHIP)?.unwrap_or_default(),
            )
        };
        let snapshot_id = match applied {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".into(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(META).map_err(write_err)?;
            t.insert(SNAP_META, encode(&meta)?.as_slice())
                .map_err(write_err)?;
            t.insert(SNAP_DATA, data.as_slice()).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Outcome::Done),
                EntryPayload::Normal(cmd) => replies.push(match self.state.apply(&cmd) {
                    Ok(()) => Outcome::Done,
                    Err(why) => Outcome::Refused(why),
                }),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Outcome::Done);
                }
            }
        }
        self.persist(None)?;
        self.publish.send_replace(Arc::new(self.state.clone()));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = (*snapshot).into_inner();
        self.state = decode(&data)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.persist(Some((meta, &data)))?;
        self.publish.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        let meta: Option<SnapshotMeta<NodeId, RaftNode>> = get(&t, SNAP_META)?;
        let data = t.get(SNAP_DATA).map_err(read_err)?.map(|v| v.value().to_vec());
        Ok(match (meta, data) {
            (Some(meta), Some(data)) => Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
            _ => None,
        })
    }
}
