//! Where projections live: the node's `projections` column family (crc-framed like every stored
//! value), per partition and projection:
//!
//! | key | value |
//! |---|---|
//! | `[p]['L'][projection]` | the live [`Cursor`]: generation and checkpoint (last offset applied) |
//! | `[p]['R'][projection]` | the cursor of a rebuild in progress, if any |
//! | `[p]['D'][projection][generation u32][key]` | the projection's own keys |
//!
//! A projection's output and its new checkpoint are written in one RocksDB write batch
//! ([`ProjectionStore::commit`]), so after a crash a projection resumes exactly after the last
//! event whose output survived: no event is applied twice or skipped, by construction. A rebuild
//! writes a new generation beside the live one and swaps the live cursor to it in one batch
//! ([`ProjectionStore::finish_rebuild`]); readers read cursor and data from one RocksDB snapshot,
//! so they see either the old or the new generation, never a mix.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_log::codec::{cf, prefix_end};
use chat_log::{Durability, Engine, PartitionId, StoreError, WriteBatch};
use chat_model::state::{decode, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const LIVE: u8 = b'L';
const REBUILD: u8 = b'R';
const DATA: u8 = b'D';

/// How far a copy of a projection has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Which generation of the data this copy writes.
    pub generation: u32,
    /// The last partition offset applied (0: none).
    pub checkpoint: u64,
}

fn meta_key(p: PartitionId, tag: u8, projection: u8) -> Vec<u8> {
    let mut k = p.0.to_be_bytes().to_vec();
    k.extend_from_slice(&[tag, projection]);
    k
}

fn data_prefix(p: PartitionId, projection: u8, generation: u32) -> Vec<u8> {
    let mut k = meta_key(p, DATA, projection);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

/// The projections of one node.
#[derive(Clone)]
pub struct ProjectionStore {
    engine: Arc<Engine>,
}

impl ProjectionStore {
    pub fn new(engine: Arc<Engine>) -> Self {
        ProjectionStore { engine }
    }

    fn cursor(
        &self,
        p: PartitionId,
        tag: u8,
        projection: u8,
    ) -> Result<Option<Cursor>, StoreError> {
        self.engine
            .get(cf::PROJECTIONS, &meta_key(p, tag, projection))?
            .map(|b| decode::<Cursor>("projection cursor", &b))
            .transpose()
    }

    /// Whether the disk is down to RocksDB's headroom: projections are derived and wait, like
    /// Raft's own growing writes, rather than eat the space kept for flushes and recovery.
    pub fn holds_growth(&self) -> bool {
        self.engine.disk().holds_growth()
    }

    /// The live copy's cursor (generation 0 at offset 0 before anything was applied).
    pub fn live(&self, p: PartitionId, projection: u8) -> Result<Cursor, StoreError> {
        Ok(self.cursor(p, LIVE, projection)?.unwrap_or_default())
    }

    /// The cursor of a rebuild in progress.
    pub fn rebuilding(&self, p: PartitionId, projection: u8) -> Result<Option<Cursor>, StoreError> {
        self.cursor(p, REBUILD, projection)
    }

    /// A transaction writing `generation` of a projection.
    pub fn txn(&self, p: PartitionId, projection: u8, generation: u32) -> Txn<'_> {
        Txn {
            store: self,
            prefix: data_prefix(p, projection, generation),
            pending: BTreeMap::new(),
        }
    }

    /// Write a transaction's output and the cursor it reached, atomically. Buffered: durable
    /// with the node's next WAL sync (a crash loses output and cursor together).
    pub fn commit(
        &self,
        txn: Txn<'_>,
        p: PartitionId,
        projection: u8,
        rebuild: bool,
        cursor: Cursor,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in txn.pending {
            let full = [txn.prefix.as_slice(), &key].concat();
            match value {
                Some(v) => self
                    .engine
                    .put_framed(&mut batch, cf::PROJECTIONS, &full, &v),
                None => batch.delete_cf(self.engine.cf(cf::PROJECTIONS), &full),
            }
        }
        let tag = if rebuild { REBUILD } else { LIVE };
        self.engine.put_framed(
            &mut batch,
            cf::PROJECTIONS,
            &meta_key(p, tag, projection),
            &encode(&cursor),
        );
        self.engine.write(batch, Durability::Buffered)
    }

    /// Start a rebuild: a fresh generation from offset 0, beside the live one.
    pub fn request_rebuild(&self, p: PartitionId, projection: u8) -> Result<Cursor, StoreError> {
        let live = self.live(p, projection)?;
        let shadow = Cursor {
            generation: live.generation.wrapping_add(1),
            checkpoint: 0,
        };
        let mut batch = WriteBatch::default();
        let prefix = data_prefix(p, projection, shadow.generation);
        // Anything left by an earlier, abandoned rebuild of that generation.
        self.engine
            .delete_range(&mut batch, cf::PROJECTIONS, &prefix, &prefix_end(&prefix));
        self.engine.put_framed(
            &mut batch,
            cf::PROJECTIONS,
            &meta_key(p, REBUILD, projection),
            &encode(&shadow),
        );
        self.engine.write(batch, Durability::Sync)?;
        Ok(shadow)
    }

    /// Make the rebuilt generation live and drop the old one, atomically.
    pub fn finish_rebuild(
        &self,
        p: PartitionId,
        projection: u8,
        shadow: Cursor,
    ) -> Result<(), StoreError> {
        let live = self.live(p, projection)?;
        let old = data_prefix(p, projection, live.generation);
        let mut batch = WriteBatch::default();
        self.engine.put_framed(
            &mut batch,
            cf::PROJECTIONS,
            &meta_key(p, LIVE, projection),
            &encode(&shadow),
        );
        batch.delete_cf(
            self.engine.cf(cf::PROJECTIONS),
            meta_key(p, REBUILD, projection),
        );
        self.engine
            .delete_range(&mut batch, cf::PROJECTIONS, &old, &prefix_end(&old));
        self.engine.write(batch, Durability::Sync)
    }

    /// Read the live copy consistently (cursor and data from one RocksDB snapshot).
    pub fn read(&self, p: PartitionId, projection: u8) -> Result<LiveView<'_>, StoreError> {
        let snapshot = self.engine.db().snapshot();
        let cursor = self
            .engine
            .get_at(
                Some(&snapshot),
                cf::PROJECTIONS,
                &meta_key(p, LIVE, projection),
            )?
            .map(|b| decode::<Cursor>("projection cursor", &b))
            .transpose()?
            .unwrap_or_default();
        Ok(LiveView {
            engine: &self.engine,
            prefix: data_prefix(p, projection, cursor.generation),
            cursor,
            snapshot,
        })
    }
}

/// (key, value) pairs of a projection, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A consistent read-only view of a projection's live copy.
pub struct LiveView<'a> {
    engine: &'a Engine,
    prefix: Vec<u8>,
    pub cursor: Cursor,
    snapshot: chat_log::engine::DbSnapshot<'a>,
}

impl LiveView<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let full = [self.prefix.as_slice(), key].concat();
        self.engine
            .get_at(Some(&self.snapshot), cf::PROJECTIONS, &full)
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let from = [self.prefix.as_slice(), prefix].concat();
        let skip = self.prefix.len();
        self.engine
            .scan_at(
                Some(&self.snapshot),
                cf::PROJECTIONS,
                &from,
                prefix_end(&from),
            )
            .map(|item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
            .collect()
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
    prefix: Vec<u8>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Txn<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        let full = [self.prefix.as_slice(), key].concat();
        self.store.engine.get(cf::PROJECTIONS, &full)
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.pending.insert(key.to_vec(), Some(value));
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }
}
