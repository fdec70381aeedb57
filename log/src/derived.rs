//! Derived data: the one seam through which layers above the log keep data of their own next to
//! it (read models, today the projector's). A namespaced key-value store per partition with
//! point-in-time views and an atomic "output plus checkpoint" batch.
//!
//! Why next to the log and not in a database of its own: a read model's output and the offset it
//! has reached must be written in one atomic batch, so that after a crash it resumes exactly
//! after the last event whose output survived. Sharing the node's RocksDB (and its WAL and group
//! commit) gives that for free. The layer above never sees RocksDB, the column family or the
//! framing: it sees keys inside its own [`Namespace`] of a partition.
//!
//! Layout, in the (private) `projections` column family, every value crc-framed like every other
//! stored value: `[partition u32][namespace u8][key…]`. A marker under partition `u32::MAX`
//! records [`DERIVED_FORMAT`]; a data dir with another format (or none, with data in it) has its
//! derived data dropped at open, and the layers above rebuild it by replay — derived data is
//! never the source of truth.

use std::sync::Arc;

use crate::codec::{self, cf};
use crate::engine::{DbSnapshot, Durability, Engine, StoreError};
use crate::types::PartitionId;

/// Which layout of derived keys this release writes. 1: `[p][ns][key]`.
pub const DERIVED_FORMAT: u32 = 1;

/// A key under a partition no node ever has, holding the derived data's format.
const FORMAT_KEY: &[u8] = b"\xff\xff\xff\xffformat";

/// A layer's own key space within a partition's derived data (the projector's projection id).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(pub u8);

/// (key, value) pairs, keys relative to their namespace, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn prefix(p: PartitionId, ns: Namespace) -> Vec<u8> {
    let mut k = p.0.to_be_bytes().to_vec();
    k.push(ns.0);
    k
}

/// The derived data of one node. Cheap to clone.
#[derive(Clone)]
pub struct DerivedStore {
    engine: Arc<Engine>,
}

impl DerivedStore {
    /// The derived data in `engine`, dropped first if it was written in another format.
    pub(crate) fn open(engine: Arc<Engine>) -> Result<DerivedStore, StoreError> {
        let format = engine.get(cf::PROJECTIONS, FORMAT_KEY)?.map(|v| {
            <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .ok()
        });
        if format != Some(Some(DERIVED_FORMAT)) {
            let has_data = engine
                .scan_from(cf::PROJECTIONS, &[], codec::prefix_end(&[]))
                .next()
                .is_some();
            if has_data {
                tracing::warn!(?format, now = DERIVED_FORMAT, "derived data written in another format: dropping it, read models rebuild by replay");
            }
            let mut batch = rocksdb::WriteBatch::default();
            engine.delete_range(&mut batch, cf::PROJECTIONS, &[], FORMAT_KEY);
            engine.put_framed(
                &mut batch,
                cf::PROJECTIONS,
                FORMAT_KEY,
                &DERIVED_FORMAT.to_be_bytes(),
            );
            engine.write(batch, Durability::Sync)?;
        }
        Ok(DerivedStore { engine })
    }

    /// One value, as of now.
    pub fn get(
        &self,
        p: PartitionId,
        ns: Namespace,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let full = [prefix(p, ns).as_slice(), key].concat();
        self.engine.get(cf::PROJECTIONS, &full)
    }

    /// The (key, value) pairs whose key starts with `prefix`, from `from` on (a key at or after
    /// `prefix`), in key order, as of now, read lazily (keys relative to the namespace): for
    /// "the first few of an index" or "the rest of an index from here".
    pub fn scan<'a>(
        &'a self,
        p: PartitionId,
        ns: Namespace,
        prefix: &[u8],
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a {
        let namespace = self::prefix(p, ns);
        let skip = namespace.len();
        let end = codec::prefix_end(&[namespace.as_slice(), prefix].concat());
        let from = [namespace.as_slice(), from.max(prefix)].concat();
        self.engine
            .scan_from(cf::PROJECTIONS, &from, end)
            .map(move |item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
    }

    /// A point-in-time view of a namespace: every read through it sees the same instant.
    pub fn view(&self, p: PartitionId, ns: Namespace) -> DerivedView<'_> {
        DerivedView {
            engine: &self.engine,
            prefix: prefix(p, ns),
            snapshot: self.engine.snapshot(),
        }
    }

    /// Writes to a namespace, applied together by [`DerivedStore::commit`].
    pub fn batch(&self, p: PartitionId, ns: Namespace) -> DerivedBatch {
        DerivedBatch {
            engine: self.engine.clone(),
            prefix: prefix(p, ns),
            writes: rocksdb::WriteBatch::default(),
        }
    }

    /// Apply a batch atomically (one WAL record). `Buffered` is durable with the node's next
    /// WAL sync: a crash loses the whole batch or nothing, so output and checkpoint agree.
    pub fn commit(&self, batch: DerivedBatch, durability: Durability) -> Result<(), StoreError> {
        self.engine.write(batch.writes, durability)
    }

    /// Whether the data disk is down to RocksDB's headroom: derived writes should wait, like the
    /// log's own growing writes, rather than eat the space kept for flushes and recovery.
    pub fn holds_growth(&self) -> bool {
        self.engine.disk().holds_growth()
    }
}

/// A consistent read-only view of one namespace of one partition.
pub struct DerivedView<'a> {
    engine: &'a Engine,
    prefix: Vec<u8>,
    snapshot: DbSnapshot<'a>,
}

impl DerivedView<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let full = [self.prefix.as_slice(), key].concat();
        self.engine
            .get_at(Some(&self.snapshot), cf::PROJECTIONS, &full)
    }

    /// Every (key, value) whose key starts with `prefix`, in key order, keys relative to the
    /// namespace.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.scan(prefix).collect()
    }

    /// [`DerivedView::scan_prefix`], read lazily.
    pub fn scan<'s>(
        &'s self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 's {
        let from = [self.prefix.as_slice(), prefix].concat();
        let skip = self.prefix.len();
        self.engine
            .scan_at(
                Some(&self.snapshot),
                cf::PROJECTIONS,
                &from,
                codec::prefix_end(&from),
            )
            .map(move |item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
    }
}

/// Buffered writes to one namespace of one partition, in the order they were made (a RocksDB
/// write batch, framed as it is filled).
pub struct DerivedBatch {
    engine: Arc<Engine>,
    prefix: Vec<u8>,
    writes: rocksdb::WriteBatch,
}

impl DerivedBatch {
    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let key = self.full(key);
        self.engine
            .put_framed(&mut self.writes, cf::PROJECTIONS, &key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        let key = self.full(key);
        self.engine.delete(&mut self.writes, cf::PROJECTIONS, &key);
    }

    /// Delete every key starting with `prefix` (one range tombstone: cheap for a whole
    /// generation of a read model).
    pub fn delete_prefix(&mut self, prefix: &[u8]) {
        let from = self.full(prefix);
        let to = codec::prefix_end(&from);
        self.engine
            .delete_range(&mut self.writes, cf::PROJECTIONS, &from, &to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskConfig, DiskGuard};

    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let config = DiskConfig {
            reserve_mib: 0,
            ballast_mib: 0,
        };
        Engine::open(dir, Arc::new(DiskGuard::open(dir, config).unwrap())).unwrap()
    }

    #[test]
    fn namespaces_views_batches_and_prefix_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = DerivedStore::open(engine(dir.path())).unwrap();
        let (p, a, b) = (PartitionId(2), Namespace(1), Namespace(2));
        let mut batch = store.batch(p, a);
        batch.put(b"k1", b"one");
        batch.put(b"k2", b"two");
        batch.put(b"x", b"other");
        store.commit(batch, Durability::Sync).unwrap();
        let mut batch = store.batch(p, b);
        batch.put(b"k1", b"b's");
        store.commit(batch, Durability::Sync).unwrap();

        let view = store.view(p, a);
        let mut batch = store.batch(p, a);
        batch.delete_prefix(b"k");
        store.commit(batch, Durability::Sync).unwrap();
        // The view was taken before the delete and still sees both keys, relative to `a`.
        let keys: Vec<Vec<u8>> = view
            .scan_prefix(b"k")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!(store.get(p, a, b"k1").unwrap(), None);
        assert_eq!(
            store.get(p, a, b"x").unwrap().as_deref(),
            Some(&b"other"[..])
        );
        assert_eq!(
            store.get(p, b, b"k1").unwrap().as_deref(),
            Some(&b"b's"[..])
        );
        assert_eq!(store.get(PartitionId(3), a, b"x").unwrap(), None);
    }

    #[test]
    fn data_of_another_format_is_dropped_at_open_and_this_format_kept() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        // What an older release left: projection keys, no format marker.
        let mut batch = rocksdb::WriteBatch::default();
        engine.put_framed(
            &mut batch,
            cf::PROJECTIONS,
            b"\0\0\0\x01L\x01",
            b"old cursor",
        );
        engine.write(batch, Durability::Sync).unwrap();
        let store = DerivedStore::open(engine.clone()).unwrap();
        assert!(engine
            .get(cf::PROJECTIONS, b"\0\0\0\x01L\x01")
            .unwrap()
            .is_none());

        let mut batch = store.batch(PartitionId(1), Namespace(1));
        batch.put(b"L", b"cursor");
        store.commit(batch, Durability::Sync).unwrap();
        let store = DerivedStore::open(engine).unwrap();
        assert_eq!(
            store
                .get(PartitionId(1), Namespace(1), b"L")
                .unwrap()
                .as_deref(),
            Some(&b"cursor"[..])
        );
    }
}
