//! A partition's cache of the handler state its commands read while applying (a chat's record,
//! a membership, the dedup window's due time), so a busy chat's records are not looked up in
//! RocksDB on every send.
//!
//! It only ever holds what RocksDB holds for the partition, which is what keeps replicas
//! deterministic: a value enters it when a read inside apply went to RocksDB and found it; a
//! cached key is updated (or dropped, if deleted) only after the apply batch that wrote it is in
//! RocksDB; a snapshot install empties it. Only the partition's state machine writes its
//! handler state, and applies are sequential, so nothing else can make it stale. Absent keys are
//! not cached: a send's dedup lookup always misses, and would take a slot each time.

use std::sync::Arc;

/// A partition's share of the node's budget (`[engine] state_cache_mib`) is never less than this
/// (a node with very many partitions).
const MIN_PARTITION_CACHE_BYTES: u64 = 1024 * 1024;
/// What a cached entry typically weighs (a key and a small record), to size the table.
const TYPICAL_ENTRY_BYTES: u64 = 64;

/// quick_cache rather than moka: this cache sits on every send's apply (the chat record is
/// rewritten by every send), and moka's bookkeeping per insert cost 8 % of a send's CPU in a
/// profile against quick_cache's 2 %, for the same reads saved. Clones share the cache (the node
/// keeps one to report its size).
#[derive(Clone)]
pub(crate) struct StateCache(Arc<quick_cache::sync::Cache<Vec<u8>, Vec<u8>, ByteWeight>>);

/// Writes of an apply batch to cached keys, to make once the batch is durable in RocksDB
/// (`None`: the key was deleted).
#[derive(Default)]
pub(crate) struct CachedWrites(Vec<(Vec<u8>, Option<Vec<u8>>)>);

/// An entry weighs its key and value bytes.
#[derive(Clone)]
pub(crate) struct ByteWeight;

impl quick_cache::Weighter<Vec<u8>, Vec<u8>> for ByteWeight {
    fn weight(&self, key: &Vec<u8>, value: &Vec<u8>) -> u64 {
        // Never 0: quick_cache never evicts a weightless entry.
        (key.len() + value.len()) as u64 + 1
    }
}

impl StateCache {
    /// The cache of one of a node's `partitions` partitions (they share the node's budget of
    /// `node_mib`).
    pub(crate) fn for_one_of(partitions: u32, node_mib: u64) -> Self {
        let bytes =
            (node_mib * 1024 * 1024 / u64::from(partitions.max(1))).max(MIN_PARTITION_CACHE_BYTES);
        let entries = (bytes / TYPICAL_ENTRY_BYTES) as usize;
        StateCache(Arc::new(quick_cache::sync::Cache::with_weighter(
            entries, bytes, ByteWeight,
        )))
    }

    /// Bytes of keys and values held now.
    pub(crate) fn bytes(&self) -> u64 {
        self.0.weight()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    /// Remember a value just read from RocksDB.
    pub(crate) fn fill(&self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), value.to_vec());
    }

    /// Note a batch's write to `key` if the key is cached (an uncached key stays uncached: most
    /// writes are of keys no apply reads again, such as history index entries).
    pub(crate) fn note_write(&self, writes: &mut CachedWrites, key: &[u8], value: Option<&[u8]>) {
        if self.0.contains_key(key) {
            writes.0.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        }
    }

    /// Make a batch's writes visible, once RocksDB has them.
    pub(crate) fn apply(&self, writes: CachedWrites) {
        for (key, value) in writes.0 {
            match value {
                Some(value) => self.0.insert(key, value),
                None => {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// Forget everything (the partition's state is being replaced).
    pub(crate) fn clear(&self) {
        self.0.clear();
    }
}
