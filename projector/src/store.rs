//! Where projections live: each projection is one namespace of the node's derived data
//! ([`chat_log::DerivedStore`]), per partition:
//!
//! | key (inside the namespace) | value |
//! |---|---|
//! | `L` | the live [`Cursor`]: generation and checkpoint (last offset applied) |
//! | `R` | the cursor of a rebuild in progress, if any |
//! | `D[generation u32][key]` | the projection's own keys |
//!
//! A projection's output and its new checkpoint are written in one atomic batch
//! ([`ProjectionStore::commit`]), so after a crash a projection resumes exactly after the last
//! event whose output survived: no event is applied twice or skipped, by construction. A rebuild
//! writes a new generation beside the live one and swaps the live cursor to it in one batch
//! ([`ProjectionStore::finish_rebuild`]); readers read cursor and data from one point-in-time
//! view, so they see either the old or the new generation, never a mix.

use std::collections::BTreeMap;

use chat_log::{
    DerivedStore, DerivedView, Durability, LogOffset, Namespace, PartitionId, ReadError, Replicas,
    Space, StoreError,
};
use chat_model::state::{decode, encode};
use sha2::{Digest, Sha256};

const LIVE: &[u8] = b"L";
const REBUILD: &[u8] = b"R";
const DATA: u8 = b'D';

/// Which projection: its namespace in the node's derived data. Fixed per projection for the
/// life of a data dir (changing it orphans the old data and rebuilds).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionId(pub u8);

impl From<ProjectionId> for Namespace {
    fn from(id: ProjectionId) -> Namespace {
        Namespace(id.0)
    }
}

/// How far a copy of a projection has got.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Cursor {
    /// Which generation of the data this copy writes.
    #[prost(uint32, tag = "1")]
    pub generation: u32,
    /// The last partition offset applied (0: none).
    #[prost(uint64, tag = "2")]
    pub checkpoint: u64,
}

fn data_prefix(generation: u32) -> Vec<u8> {
    let mut k = vec![DATA];
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

fn decode_cursor(bytes: Option<Vec<u8>>) -> Result<Option<Cursor>, StoreError> {
    bytes
        .map(|b| decode::<Cursor>("projection cursor", &b))
        .transpose()
}

/// The projections of one node.
#[derive(Clone)]
pub struct ProjectionStore {
    derived: DerivedStore,
}

impl ProjectionStore {
    pub fn new(derived: DerivedStore) -> Self {
        ProjectionStore { derived }
    }

    fn cursor(
        &self,
        p: PartitionId,
        projection: ProjectionId,
        which: &[u8],
    ) -> Result<Option<Cursor>, StoreError> {
        decode_cursor(self.derived.get(p, projection.into(), which)?)
    }

    /// Whether the disk is down to RocksDB's headroom: projections are derived and wait, like
    /// Raft's own growing writes, rather than eat the space kept for flushes and recovery.
    pub fn holds_growth(&self) -> bool {
        self.derived.holds_growth()
    }

    /// The live copy's cursor (generation 0 at offset 0 before anything was applied).
    pub fn live(&self, p: PartitionId, projection: ProjectionId) -> Result<Cursor, StoreError> {
        Ok(self.cursor(p, projection, LIVE)?.unwrap_or_default())
    }

    /// The cursor of a rebuild in progress.
    pub fn rebuilding(
        &self,
        p: PartitionId,
        projection: ProjectionId,
    ) -> Result<Option<Cursor>, StoreError> {
        self.cursor(p, projection, REBUILD)
    }

    /// A transaction writing `generation` of a projection.
    pub fn txn(&self, p: PartitionId, projection: ProjectionId, generation: u32) -> Txn<'_> {
        Txn {
            store: self,
            partition: p,
            projection,
            prefix: data_prefix(generation),
            pending: BTreeMap::new(),
        }
    }

    /// Write a transaction's output and the cursor it reached, atomically. Buffered: durable
    /// with the node's next WAL sync (a crash loses output and cursor together).
    pub fn commit(&self, txn: Txn<'_>, rebuild: bool, cursor: Cursor) -> Result<(), StoreError> {
        let mut batch = self.derived.batch(txn.partition, txn.projection.into());
        for (key, value) in txn.pending {
            let full = [txn.prefix.as_slice(), &key].concat();
            match value {
                Some(v) => batch.put(&full, &v),
                None => batch.delete(&full),
            }
        }
        batch.put(if rebuild { REBUILD } else { LIVE }, &encode(&cursor));
        self.derived.commit(batch, Durability::Buffered)
    }

    /// Drop every key of a projection id no longer in use (one range tombstone per partition;
    /// nothing written when there was nothing there).
    pub fn drop_retired(&self, p: PartitionId, retired: ProjectionId) -> Result<bool, StoreError> {
        if self
            .derived
            .scan(p, retired.into(), &[], &[])
            .next()
            .is_none()
        {
            return Ok(false);
        }
        let mut batch = self.derived.batch(p, retired.into());
        batch.delete_prefix(&[]);
        self.derived.commit(batch, Durability::Sync)?;
        Ok(true)
    }

    /// Start a rebuild: a fresh generation from offset 0, beside the live one.
    pub fn request_rebuild(
        &self,
        p: PartitionId,
        projection: ProjectionId,
    ) -> Result<Cursor, StoreError> {
        let live = self.live(p, projection)?;
        let shadow = Cursor {
            generation: live.generation.wrapping_add(1),
            checkpoint: 0,
        };
        let mut batch = self.derived.batch(p, projection.into());
        // Anything left by an earlier, abandoned rebuild of that generation.
        batch.delete_prefix(&data_prefix(shadow.generation));
        batch.put(REBUILD, &encode(&shadow));
        self.derived.commit(batch, Durability::Sync)?;
        Ok(shadow)
    }

    /// Make the rebuilt generation live and drop the old one, atomically.
    pub fn finish_rebuild(
        &self,
        p: PartitionId,
        projection: ProjectionId,
        shadow: Cursor,
    ) -> Result<(), StoreError> {
        let live = self.live(p, projection)?;
        let mut batch = self.derived.batch(p, projection.into());
        batch.put(LIVE, &encode(&shadow));
        batch.delete(REBUILD);
        batch.delete_prefix(&data_prefix(live.generation));
        self.derived.commit(batch, Durability::Sync)
    }

    /// Read the live copy consistently (cursor and data from one point-in-time view).
    pub fn read(
        &self,
        p: PartitionId,
        projection: ProjectionId,
    ) -> Result<LiveView<'_>, StoreError> {
        let view = self.derived.view(p, projection.into());
        let cursor = decode_cursor(view.get(LIVE)?)?.unwrap_or_default();
        Ok(LiveView {
            prefix: data_prefix(cursor.generation),
            cursor,
            view,
        })
    }
}

/// (key, value) pairs of a projection, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A projection's live copy read key by key through [`Replicas`]: from this node's replica of
/// the partition when it holds one, otherwise from a node that does. Unlike [`LiveView`], each
/// read is its own (two keys may come from two points of the partition's history).
pub struct ReplicaView {
    replicas: Replicas,
    partition: PartitionId,
    namespace: Namespace,
    prefix: Vec<u8>,
}

impl ReplicaView {
    /// The live copy of `projection` in partition `p`, as a replica of `p` has it now.
    pub async fn open(
        replicas: Replicas,
        p: PartitionId,
        projection: ProjectionId,
    ) -> Result<ReplicaView, ReadError> {
        let namespace = Namespace::from(projection);
        let live = replicas
            .get(p, Space::Derived(namespace), LIVE, LogOffset(0))
            .await?;
        let cursor = decode_cursor(live)?.unwrap_or_default();
        Ok(ReplicaView {
            replicas,
            partition: p,
            namespace,
            prefix: data_prefix(cursor.generation),
        })
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let key = [self.prefix.as_slice(), key].concat();
        self.replicas
            .get(
                self.partition,
                Space::Derived(self.namespace),
                &key,
                LogOffset(0),
            )
            .await
    }
}

/// A consistent read-only view of a projection's live copy.
pub struct LiveView<'a> {
    prefix: Vec<u8>,
    pub cursor: Cursor,
    view: DerivedView<'a>,
}

impl LiveView<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.view.get(&[self.prefix.as_slice(), key].concat())
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let skip = self.prefix.len();
        let entries = self
            .view
            .scan_prefix(&[self.prefix.as_slice(), prefix].concat())?;
        Ok(entries
            .into_iter()
            .map(|(k, v)| (k[skip..].to_vec(), v))
            .collect())
    }

    /// sha256 over every (key, value) of this copy in key order (the generation is not part of
    /// it, so a rebuilt copy of the same events has the same digest).
    pub fn digest(&self) -> Result<[u8; 32], StoreError> {
        let mut hasher = Sha256::new();
        for (k, v) in self.scan_prefix(&[])? {
            hasher.update((k.len() as u64).to_be_bytes());
            hasher.update(&k);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(&v);
        }
        Ok(hasher.finalize().into())
    }
}

/// Writes of one batch of events to one generation of a projection; reads see the batch's own
/// earlier writes.
pub struct Txn<'a> {
    store: &'a ProjectionStore,
    partition: PartitionId,
    projection: ProjectionId,
    prefix: Vec<u8>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Txn<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        let full = [self.prefix.as_slice(), key].concat();
        self.store
            .derived
            .get(self.partition, self.projection.into(), &full)
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.pending.insert(key.to_vec(), Some(value));
    }

    /// Up to `n` keys starting with `prefix`, from `from` on (a key at or after `prefix`), in
    /// key order, as this batch leaves them (its own puts in, its own deletes out); reads only as
    /// far as it needs. Starting `from` past keys known to be gone matters for an index whose
    /// low end is deleted as it moves: RocksDB would walk every tombstone before the first live
    /// key.
    pub fn keys(&self, prefix: &[u8], from: &[u8], n: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let skip = self.prefix.len();
        let mut stored = self
            .store
            .derived
            .scan(
                self.partition,
                self.projection.into(),
                &[self.prefix.as_slice(), prefix].concat(),
                &[self.prefix.as_slice(), from].concat(),
            )
            .map(|item| item.map(|(k, _)| k[skip..].to_vec()))
            // What this batch wrote or deleted is decided by the batch, not by the store.
            .filter(|item| !matches!(item, Ok(k) if self.pending.contains_key(k)))
            .peekable();
        let mut pending = self
            .pending
            .range(from.max(prefix).to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .peekable();
        let mut keys = Vec::new();
        while keys.len() < n {
            let from_store = match (stored.peek(), pending.peek()) {
                (None, None) => break,
                (Some(Ok(a)), Some(b)) => a < *b,
                // An error is taken (and returned) from the store's side.
                (Some(_), _) => true,
                (None, Some(_)) => false,
            };
            if from_store {
                keys.push(stored.next().expect("peeked")?);
            } else {
                keys.push(pending.next().expect("peeked").clone());
            }
        }
        Ok(keys)
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }
}
