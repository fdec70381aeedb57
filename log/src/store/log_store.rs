//! The Raft log of one partition: entries in [`cf::RAFT_LOG`] keyed `[partition][index]`, and the
//! vote / committed / last-purged log ids in [`cf::RAFT_META`].
//!
//! Appends are written buffered and become durable through the engine's group commit; openraft is
//! told they are flushed only from the syncer. Votes and truncations are synced before returning.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageError, Vote};
use rocksdb::WriteBatch;

use super::storage_error;
use crate::codec::{self, cf, MetaTag};
use crate::engine::{Durability, Engine, StoreError};
use crate::store::{Leading, TypeConfig};
use crate::types::{NodeId, PartitionId};
use crate::wire::{decode, encode, encode_owned, Wire};

/// The Raft log store of one partition. Cheap to clone; clones are the log readers openraft's
/// replication tasks use.
#[derive(Clone)]
pub struct PartitionLogStore {
    engine: Arc<Engine>,
    partition: PartitionId,
    leading: Leading,
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

impl PartitionLogStore {
    pub fn new(engine: Arc<Engine>, partition: PartitionId, leading: Leading) -> Self {
        PartitionLogStore {
            engine,
            partition,
            leading,
        }
    }

    fn read_meta<T: Wire>(&self, tag: MetaTag) -> Result<Option<T>, StoreError> {
        let key = codec::meta_key(self.partition, tag);
        self.engine
            .get(cf::RAFT_META, &key)?
            .map(|bytes| decode(&format!("{} {tag:?}", self.partition), &bytes))
            .transpose()
    }

    fn meta_batch<T: Wire>(&self, tag: MetaTag, value: &T) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let key = codec::meta_key(self.partition, tag);
        self.engine
            .put_framed(&mut batch, cf::RAFT_META, &key, &encode(value));
        batch
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let mut iter = self.engine.db().iterator_cf(
            self.engine.cf(cf::RAFT_LOG),
            rocksdb::IteratorMode::From(
                &codec::partition_end(self.partition),
                rocksdb::Direction::Reverse,
            ),
        );
        // The reverse seek lands on the last key <= the partition's end bound; it belongs to this
        // partition only if its prefix matches.
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, value) = item?;
        if !key.starts_with(&codec::partition_start(self.partition)) || key.len() != 12 {
            return Ok(None);
        }
        let payload = codec::unframe(cf::RAFT_LOG, &key, &value)?;
        let entry: Entry<TypeConfig> = decode("raft log entry", payload)?;
        Ok(Some(entry.log_id))
    }

    fn read_entries(
        &self,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        if start >= end_exclusive {
            return Ok(Vec::new());
        }
        let from = codec::log_key(self.partition, start);
        let end = codec::log_key(self.partition, end_exclusive).to_vec();
        let mut entries = Vec::new();
        for item in self.engine.scan_from(cf::RAFT_LOG, &from, end) {
            let (key, payload) = item?;
            let entry: Entry<TypeConfig> = decode("raft log entry", &payload)?;
            // The range may begin before the first entry still present (after a purge), but what
            // is returned must be consecutive.
            let expected = entries
                .last()
                .map(|e: &Entry<TypeConfig>| e.log_id.index + 1)
                .unwrap_or(entry.log_id.index);
            if codec::key_u64(&key) != Some(expected) || entry.log_id.index != expected {
                // A hole would silently shorten replication; openraft must never cause one.
                return Err(StoreError::decode(
                    format!("{} raft log", self.partition),
                    format!(
                        "hole in log: expected index {expected}, found key {}",
                        codec::describe_key(cf::RAFT_LOG, &key)
                    ),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for PartitionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = range_to_bounds(&range);
        self.read_entries(start, end)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for PartitionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<_, StoreError> {
            let last_purged: Option<LogId<NodeId>> = self.read_meta(MetaTag::LastPurged)?;
            let last = self.last_entry_log_id()?.or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let batch = self.meta_batch(MetaTag::Vote, vote);
        self.engine
            .write_waiting(batch, Durability::Sync)
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(MetaTag::Vote)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Buffered: losing it only means re-applying committed entries found in the log.
        let batch = self.meta_batch(MetaTag::Committed, &committed);
        self.engine
            .write_waiting(batch, Durability::Buffered)
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.read_meta::<Option<LogId<NodeId>>>(MetaTag::Committed)
            .map(Option::flatten)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let key = codec::log_key(self.partition, entry.log_id.index);
            self.engine
                .put_framed(&mut batch, cf::RAFT_LOG, &key, &encode_owned(entry));
        }
        self.engine
            .write_growing(batch, Durability::Buffered, self.leading.get())
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.engine
            .sync_then(move |result| callback.log_io_completed(result));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        let from = codec::log_key(self.partition, log_id.index);
        batch.delete_range_cf(
            self.engine.cf(cf::RAFT_LOG),
            &from[..],
            &codec::partition_end(self.partition)[..],
        );
        self.engine
            .write_waiting(batch, Durability::Sync)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point and delete in one batch, so the log never has a hole that the
        // recorded last-purged id does not explain.
        let mut batch = self.meta_batch(MetaTag::LastPurged, &log_id);
        let from = codec::log_key(self.partition, 0);
        let to = codec::log_key(self.partition, log_id.index + 1);
        batch.delete_range_cf(self.engine.cf(cf::RAFT_LOG), &from[..], &to[..]);
        self.engine
            .write_waiting(batch, Durability::Buffered)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
