//! The storage engine of a node: one RocksDB instance shared by every partition, with the column
//! families of [`crate::codec::cf`], crc-checked reads, and group commit.
//!
//! Group commit: Raft appends are written to RocksDB without waiting for the disk (so they are
//! immediately readable, as openraft requires) and then queued on [`Engine::sync_then`]. One
//! syncer thread drains everything queued, syncs the write-ahead log once, and only then tells
//! each waiter its data is durable. Concurrent appends of all partitions on the node therefore
//! share one fsync. Because RocksDB has a single WAL per instance that is replayed as a prefix,
//! anything written before a completed sync is durable too, whatever its write options were.
//!
//! Memory and restart time are bounded by [`EngineConfig`]: one block cache and one memtable
//! budget shared by every column family (index and filter blocks live in that cache, so they do
//! not grow outside it with the data), and a WAL cap past which RocksDB flushes the column
//! families that hold the oldest WAL file — a family written rarely would otherwise keep every
//! WAL file since its last flush alive, and a restart replays them all.
//!
//! Running out of disk space is survived, not fatal (see [`crate::disk`]): a write or sync that
//! fails with ENOSPC changed nothing, so [`Engine::write_waiting`] and the syncer wait for space
//! and try again instead of handing openraft a storage error, which would stop the Raft group.
//!
//! Any other failed write or WAL sync (EIO, or RocksDB refusing writes after one) marks the
//! engine failed ([`Engine::failure`]): after a failed fsync nothing says what reached the disk
//! (the page cache may have dropped the data, as PostgreSQL learnt), so the node must stop
//! rather than go on acknowledging (fail-stop) and, restarted, recover from what the WAL holds.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::codec::{self, cf, CorruptRecord};
use crate::disk::DiskGuard;

/// How often a write that met ENOSPC is tried again.
const NO_SPACE_RETRY: Duration = Duration::from_millis(250);

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(rocksdb::Error),
    /// The disk is full; the write made no change and may be tried again once space is freed.
    #[error("no space left on the data disk: {0}")]
    NoSpace(String),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error("cannot decode {what}: {detail}")]
    Decode { what: String, detail: String },
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        if is_no_space(e.as_ref()) {
            StoreError::NoSpace(e.into_string())
        } else {
            StoreError::Rocks(e)
        }
    }
}

/// Whether a RocksDB status message is ENOSPC (`Status::NoSpace`, or an IO error from the OS).
fn is_no_space(message: &str) -> bool {
    message.contains("No space left on device")
}

impl StoreError {
    /// Whether this is a stored record that failed its check (crc32 or decoding): data lost on
    /// this replica, not a failure of the disk or the engine.
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Corrupt(_) | StoreError::Decode { .. })
    }

    pub fn decode(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Decode {
            what: what.into(),
            detail: err.to_string(),
        }
    }
}

/// A consistent point-in-time view of a node's database (a RocksDB snapshot).
pub type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

/// A RocksDB snapshot that keeps its database open, so it can be handed to another task and read
/// later (a Raft snapshot is taken in the state machine and read when it is sent). Taking one is
/// O(1); while it lives, RocksDB keeps the versions it sees.
pub struct OwnedView {
    // Declared before `_db`, so it is dropped (released in RocksDB) first.
    snapshot: DbSnapshot<'static>,
    _db: Arc<DB>,
}

impl OwnedView {
    fn new(db: &Arc<DB>) -> Self {
        let snapshot = db.snapshot();
        // SAFETY: the snapshot borrows the DB behind `db`. `_db` holds that same allocation (an
        // Arc never moves its contents) for as long as this struct lives, and the field order
        // drops the snapshot before `_db`, so the borrow never outlives the DB.
        let snapshot =
            unsafe { std::mem::transmute::<DbSnapshot<'_>, DbSnapshot<'static>>(snapshot) };
        OwnedView {
            snapshot,
            _db: db.clone(),
        }
    }

    /// The view, for [`Engine::get_at`] and [`Engine::scan_at`].
    pub fn at(&self) -> &DbSnapshot<'_> {
        &self.snapshot
    }
}

/// Whether a write must be on disk before [`Engine::write`] returns.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL before returning (votes, truncations, snapshot installs).
    Sync,
    /// Return once RocksDB has the write; it becomes durable with the next WAL sync.
    Buffered,
}

type SyncWaiter = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Counters of the group-commit syncer, for benchmarks and status.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// WAL syncs performed by the syncer thread.
    pub syncs: AtomicU64,
    /// Waiters completed by those syncs.
    pub waiters: AtomicU64,
}

const MIB: u64 = 1024 * 1024;

/// The `[engine]` knobs: what RocksDB and the cache in front of it may hold, in MiB. Every
/// figure is a cap for the whole node, whatever its number of partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// WAL files kept before RocksDB flushes the column families holding the oldest one. A
    /// restart after a crash replays at most this much.
    pub wal_max_mib: u64,
    /// Memtables of all column families together.
    pub memtables_mib: u64,
    /// RocksDB's block cache (data, index and filter blocks), shared by all column families.
    pub block_cache_mib: u64,
    /// The state caches the applies read through, over all partitions (`store/state_cache.rs`).
    pub state_cache_mib: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // Replayed at ~150 MiB/s on the benchmark VM: a restart well under the 2 s target.
            wal_max_mib: 128,
            memtables_mib: 64,
            block_cache_mib: 64,
            state_cache_mib: 64,
        }
    }
}

impl EngineConfig {
    /// The values RocksDB needs to work at all, or a message naming the knob.
    pub fn check(&self) -> Result<(), String> {
        for (name, value, least) in [
            ("wal_max_mib", self.wal_max_mib, 16),
            ("memtables_mib", self.memtables_mib, 8),
            ("block_cache_mib", self.block_cache_mib, 8),
            ("state_cache_mib", self.state_cache_mib, 1),
        ] {
            if value < least {
                return Err(format!(
                    "[engine] {name} = {value} is below its least useful value, {least}"
                ));
            }
        }
        Ok(())
    }
}

/// What the engine holds, for metrics and status (bytes).
#[derive(Clone, Debug, Default)]
pub struct EngineSizes {
    /// Live SST bytes per column family.
    pub sst: Vec<(&'static str, u64)>,
    /// Memtable bytes per column family.
    pub memtables: Vec<(&'static str, u64)>,
    pub block_cache: u64,
    /// Memory the open SST files' readers hold outside the block cache (the pinned top-level
    /// index and filter partitions), summed over column families: grows with the number of SST
    /// files, so it is reported beside the capped caches.
    pub table_readers: u64,
    /// The WAL files on disk.
    pub wal: u64,
}

/// Per column family. All share one block cache, with index and filter blocks inside it, so
/// table readers' memory is capped by the cache instead of growing with the data. Those blocks
/// are *partitioned* (a small pinned top level over 4 KiB partitions): a whole-file filter of a
/// large SST is megabytes, more than one shard of the cache (1/64 of it), so it would never stay
/// cached and every lookup would read and checksum it from the file again (measured: 70 % of a
/// node's CPU, p50 ack 2 → 55 ms, before partitioning). The families read by point lookups get
/// bloom filters, in SST files and in the memtable: many of their lookups miss by design (a
/// send's dedup key is new; a member check for a non-member), and without a filter a miss is a
/// skip-list search plus an index and data block read in every level. The log-shaped families are
/// read by range and get none.
fn cf_options(name: &str, config: &EngineConfig, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if matches!(name, cf::STATE | cf::PROJECTIONS | cf::RAFT_META) {
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.set_memtable_whole_key_filtering(true);
    }
    opts.set_block_based_table_factory(&table);
    // A quarter of the node's memtable budget per memtable: the shared budget (set on the DB)
    // flushes the largest when the total is reached, so several busy families fit in it.
    opts.set_write_buffer_size(((config.memtables_mib * MIB) / 4).max(2 * MIB) as usize);
    opts
}

/// One node's RocksDB and its group-commit syncer.
pub struct Engine {
    db: Arc<DB>,
    path: PathBuf,
    block_cache: Cache,
    /// `None` once the engine is being dropped.
    sync_tx: Mutex<Option<mpsc::Sender<SyncWaiter>>>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<SyncStats>,
    disk: Arc<DiskGuard>,
    failure: Arc<Failure>,
}

/// Why the engine failed: `None` while it is healthy; set once, by the first failure.
type Failure = tokio::sync::watch::Sender<Option<String>>;

/// Whether a failed write or sync means the disk failed: RocksDB's I/O errors (also the ones it
/// answers after an earlier failure, "Writer has previous error") and corruption it met while
/// writing. Not a closing database ("Shutdown in progress") nor a full disk.
fn is_disk_failure(e: &StoreError) -> bool {
    match e {
        StoreError::Rocks(e) => matches!(
            e.kind(),
            rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Corruption
        ),
        _ => false,
    }
}

/// Mark the engine failed by `why` (the first failure is the one kept).
fn fail(failure: &Failure, why: &str) {
    failure.send_if_modified(|f| {
        if f.is_some() {
            return false;
        }
        tracing::error!(
            error = why,
            "a write or WAL sync failed: the storage engine has failed"
        );
        *f = Some(why.to_string());
        true
    });
}

impl Engine {
    /// Open (or create) the node's database under `path`, on the disk `disk` watches, with the
    /// default [`EngineConfig`].
    #[cfg(test)]
    pub fn open(path: &Path, disk: Arc<DiskGuard>) -> Result<Arc<Engine>, StoreError> {
        Self::open_with(path, disk, &EngineConfig::default())
    }

    /// [`Engine::open`] with the given sizes.
    pub fn open_with(
        path: &Path,
        disk: Arc<DiskGuard>,
        config: &EngineConfig,
    ) -> Result<Arc<Engine>, StoreError> {
        // Reopening after a crash replays the WAL into memtables without writing new SST files:
        // a node killed on a full disk needs no free space beyond a new MANIFEST and WAL to come
        // back (the memtables are flushed later, once there is room). The crate has no setter
        // for this DB option, so it goes through RocksDB's options-string parser.
        let mut opts =
            Options::default().get_options_from_string("avoid_flush_during_recovery=true")?;
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Verify RocksDB's own block checksums on every read as well as our record frames.
        opts.set_paranoid_checks(true);
        opts.increase_parallelism(2);
        // Writers waiting for the RocksDB write group spin and sched_yield by default; with a
        // handful of cores that spinning takes CPU from the threads doing the work (measured:
        // see docs/benchmarks.md), so waiters block instead.
        opts.set_enable_write_thread_adaptive_yield(false);
        // RocksDB's own LOG: warnings and errors only (at its default level it dumps every
        // option and periodic stats, megabytes a day), in files rotated at 16 MiB, 5 kept.
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts.set_max_log_file_size(16 * 1024 * 1024);
        opts.set_keep_log_file_num(5);
        opts.set_max_total_wal_size(config.wal_max_mib * MIB);
        // Compaction is background work that grows with the data (more levels to merge as a
        // node fills); on a machine of a few cores it competes with the threads that append,
        // apply and push. Its threads run at the lowest CPU priority, so the scheduler gives it
        // the cores the serving path leaves idle; flushes (the high-priority pool) keep normal
        // priority, because a memtable that cannot be flushed stalls writes. SST files are
        // written back a megabyte at a time rather than in one burst at the end, so a
        // compaction's final sync does not queue the WAL's fsync behind hundreds of dirty MiB.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        opts.set_env(&env);
        opts.set_bytes_per_sync(MIB);
        opts.set_db_write_buffer_size((config.memtables_mib * MIB) as usize);
        let block_cache = Cache::new_lru_cache((config.block_cache_mib * MIB) as usize);
        let cfs = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, config, &block_cache)));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);

        let (sync_tx, sync_rx) = mpsc::channel::<SyncWaiter>();
        let stats = Arc::new(SyncStats::default());
        let failure = Arc::new(Failure::new(None));
        let syncer = Syncer {
            db: db.clone(),
            stats: stats.clone(),
            disk: disk.clone(),
            failure: failure.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || syncer.run(sync_rx))
            .map_err(|e| StoreError::decode("wal-sync thread", e))?;

        Ok(Arc::new(Engine {
            db,
            path: path.to_path_buf(),
            block_cache,
            sync_tx: Mutex::new(Some(sync_tx)),
            syncer: Mutex::new(Some(syncer)),
            stats,
            disk,
            failure,
        }))
    }

    /// Why the engine failed, once a write or WAL sync failed for another reason than a full
    /// disk (see the module docs): `None` while it is healthy. The channel closes when the
    /// engine is dropped; the receiver does not keep it open.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A point-in-time view for [`Engine::get_at`] and [`Engine::scan_at`].
    pub fn snapshot(&self) -> DbSnapshot<'_> {
        self.db.snapshot()
    }

    /// A point-in-time view that may outlive this call (see [`OwnedView`]).
    pub fn owned_view(&self) -> OwnedView {
        OwnedView::new(&self.db)
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// What the engine holds now: SST and memtable bytes per column family, the block cache's
    /// use, and the WAL files' size.
    pub fn sizes(&self) -> EngineSizes {
        let property = |name: &str, property: &str| {
            self.db
                .property_int_value_cf(self.cf(name), property)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        EngineSizes {
            sst: cf::ALL
                .iter()
                .map(|&name| (name, property(name, "rocksdb.live-sst-files-size")))
                .collect(),
            memtables: cf::ALL
                .iter()
                .map(|&name| (name, property(name, "rocksdb.cur-size-all-mem-tables")))
                .collect(),
            block_cache: self.block_cache.get_usage() as u64,
            table_readers: cf::ALL
                .iter()
                .map(|&name| property(name, "rocksdb.estimate-table-readers-mem"))
                .sum(),
            wal: wal_bytes(&self.path),
        }
    }

    /// Publish [`Engine::sizes`] as metrics (`chatd_rocksdb_*`).
    pub fn publish_metrics(&self) {
        let sizes = self.sizes();
        for (cf_name, bytes) in &sizes.sst {
            metrics::gauge!("chatd_rocksdb_sst_bytes", "cf" => *cf_name).set(*bytes as f64);
        }
        for (cf_name, bytes) in &sizes.memtables {
            metrics::gauge!("chatd_rocksdb_memtable_bytes", "cf" => *cf_name).set(*bytes as f64);
        }
        metrics::gauge!("chatd_rocksdb_block_cache_bytes").set(sizes.block_cache as f64);
        metrics::gauge!("chatd_rocksdb_table_readers_bytes").set(sizes.table_readers as f64);
        metrics::gauge!("chatd_rocksdb_wal_bytes").set(sizes.wal as f64);
        let syncs = self.stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("chatd_wal_syncs_total").absolute(syncs);
    }

    /// The free-space watch of the disk this database is on.
    pub fn disk(&self) -> &Arc<DiskGuard> {
        &self.disk
    }

    /// A column family handle. Every name of [`cf::ALL`] exists once the engine is open.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }

    /// Read a framed value and check its crc32.
    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_at(None, cf_name, key)
    }

    /// [`Engine::get`], as of a point-in-time view when `at` is given.
    pub fn get_at(
        &self,
        at: Option<&DbSnapshot<'_>>,
        cf_name: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut ro = ReadOptions::default();
        if let Some(snapshot) = at {
            ro.set_snapshot(snapshot);
        }
        match self.db.get_pinned_cf_opt(self.cf(cf_name), key, &ro)? {
            None => Ok(None),
            Some(v) => Ok(Some(codec::unframe(cf_name, key, &v)?.to_vec())),
        }
    }

    /// Frame `value` and add it to `batch`.
    pub fn put_framed(&self, batch: &mut WriteBatch, cf_name: &str, key: &[u8], value: &[u8]) {
        batch.put_cf(self.cf(cf_name), key, codec::frame(value));
    }

    /// Add a delete of `key` to `batch`.
    pub fn delete(&self, batch: &mut WriteBatch, cf_name: &str, key: &[u8]) {
        batch.delete_cf(self.cf(cf_name), key);
    }

    /// Add a delete of every key in `from..to` of a column family to `batch`.
    pub fn delete_range(&self, batch: &mut WriteBatch, cf_name: &str, from: &[u8], to: &[u8]) {
        batch.delete_range_cf(self.cf(cf_name), from, to);
    }

    /// Apply a write batch atomically. Fails with [`StoreError::NoSpace`] when the disk is full.
    pub fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Sync);
        match self.db.write_opt(batch, &opts).map_err(StoreError::from) {
            Ok(()) => {
                self.disk.on_write_ok();
                Ok(())
            }
            Err(StoreError::NoSpace(detail)) => {
                self.disk.on_no_space(&detail);
                Err(StoreError::NoSpace(detail))
            }
            Err(e) => {
                if is_disk_failure(&e) {
                    fail(&self.failure, &e.to_string());
                }
                Err(e)
            }
        }
    }

    /// [`Engine::write`], but a full disk is waited out: the write is tried again until space is
    /// freed and RocksDB has resumed. For writes that must not fail for lack of space, such as
    /// Raft's own (openraft stops a group on any storage error).
    pub async fn write_waiting(
        &self,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), StoreError> {
        // RocksDB consumes the batch even when the write fails, so keep the bytes for a retry
        // (one copy of the batch; small beside RocksDB's own copies into WAL and memtable).
        let bytes = batch.data().to_vec();
        let mut result = self.write(batch, durability);
        while let Err(StoreError::NoSpace(_)) = result {
            tokio::time::sleep(NO_SPACE_RETRY).await;
            self.disk.refresh();
            result = self.write(WriteBatch::from_data(&bytes), durability);
        }
        result
    }

    /// [`Engine::write_waiting`] for a write that grows the database: while the disk is down to
    /// RocksDB's headroom with the ballast gone ([`DiskGuard::holds_growth`]) it waits before
    /// writing, so the last space stays for RocksDB's flushes and for reopening after a crash.
    /// A partition leader's own writes pass (`leader`): they are the bounded few in flight when
    /// client writes stopped at the reserve, and clients wait on them.
    pub async fn write_growing(
        &self,
        batch: WriteBatch,
        durability: Durability,
        leader: bool,
    ) -> Result<(), StoreError> {
        while !leader && self.disk.holds_growth() {
            tokio::time::sleep(NO_SPACE_RETRY).await;
        }
        self.write_waiting(batch, durability).await
    }

    /// Call `waiter` once everything written so far is durable (group commit).
    pub fn sync_then(&self, waiter: impl FnOnce(io::Result<()>) + Send + 'static) {
        let waiter: SyncWaiter = Box::new(waiter);
        let rejected = match self.sync_tx.lock().expect("sync sender lock").as_ref() {
            Some(tx) => tx.send(waiter).err().map(|mpsc::SendError(w)| w),
            None => Some(waiter),
        };
        if let Some(waiter) = rejected {
            waiter(Err(io::Error::other("wal-sync thread has stopped")));
        }
    }

    /// Iterate over framed records of a column family in key order, from `from` (inclusive) to
    /// `end` (exclusive), checking each frame.
    pub fn scan_from<'a>(
        &'a self,
        cf_name: &'a str,
        from: &[u8],
        end: Vec<u8>,
    ) -> impl Iterator<Item = Result<(Box<[u8]>, Vec<u8>), StoreError>> + 'a {
        self.scan_at(None, cf_name, from, end)
    }

    /// [`Engine::scan_from`], as of a point-in-time view when `at` is given.
    pub fn scan_at<'a>(
        &'a self,
        at: Option<&'a DbSnapshot<'_>>,
        cf_name: &'a str,
        from: &[u8],
        end: Vec<u8>,
    ) -> impl Iterator<Item = Result<(Box<[u8]>, Vec<u8>), StoreError>> + 'a {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        if let Some(snapshot) = at {
            ro.set_snapshot(snapshot);
        }
        self.db
            .iterator_cf_opt(
                self.cf(cf_name),
                ro,
                IteratorMode::From(from, rocksdb::Direction::Forward),
            )
            .map(move |item| {
                let (k, v) = item?;
                let payload = codec::unframe(cf_name, &k, &v)?.to_vec();
                Ok((k, payload))
            })
    }

    /// Write one small synced record (key `disk-probe` of cf `node`), to learn whether RocksDB
    /// writes again after ENOSPC: the disk guard clears its "no space" state only on a write that
    /// went through, and while it is set the node takes no client writes, so without a probe a
    /// node with nothing else to write would refuse writes for good after space is freed.
    pub fn probe(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let now = crate::batcher::now_ms();
        self.put_framed(&mut batch, cf::NODE, b"disk-probe", &now.to_be_bytes());
        self.write(batch, Durability::Sync)
    }

    /// Compact partition `p`'s range of the Raft log, so the entries a purge deleted (a range
    /// tombstone) give their space back now rather than when RocksDB next compacts there.
    pub fn compact_raft_log(&self, p: crate::types::PartitionId) {
        let (start, end) = (codec::partition_start(p), codec::partition_end(p));
        self.db
            .compact_range_cf(self.cf(cf::RAFT_LOG), Some(&start), Some(&end));
    }

    /// Delete everything partition `p` has in every column family (its replica moved away),
    /// durably, then compact the ranges so the space is returned.
    pub fn drop_partition(&self, p: crate::types::PartitionId) -> Result<(), StoreError> {
        let (start, end) = (codec::partition_start(p), codec::partition_end(p));
        // Every cf but the node's own records (whose keys are not partition-prefixed).
        let cfs = cf::ALL.into_iter().filter(|name| *name != cf::NODE);
        let mut batch = WriteBatch::default();
        for name in cfs.clone() {
            self.delete_range(&mut batch, name, &start, &end);
        }
        self.write(batch, Durability::Sync)?;
        for name in cfs {
            self.db
                .compact_range_cf(self.cf(name), Some(&start), Some(&end));
        }
        Ok(())
    }

    /// Re-read every record of every column family and check its frame. Returns how many records
    /// were checked and one message per corrupt record.
    /// Each damaged record comes with the partition its key names (None for the node record).
    pub fn verify_all(&self) -> Result<(u64, Vec<Damaged>), StoreError> {
        let mut checked = 0u64;
        let mut errors = Vec::new();
        for name in cf::ALL {
            for item in self.db.iterator_cf(self.cf(name), IteratorMode::Start) {
                let (k, v) = item?;
                checked += 1;
                if let Err(e) = codec::unframe(name, &k, &v) {
                    let partition = (name != cf::NODE && k.len() >= 4).then(|| {
                        crate::types::PartitionId(u32::from_be_bytes(
                            k[..4].try_into().expect("4 bytes"),
                        ))
                    });
                    errors.push((partition, e));
                }
            }
        }
        Ok((checked, errors))
    }
}

/// A record that failed its check, with the partition its key names (None: the node record).
pub(crate) type Damaged = (Option<crate::types::PartitionId>, CorruptRecord);

/// Bytes of the WAL files (`*.log`) in a RocksDB directory (0 if it cannot be read: a metric,
/// not a check).
fn wal_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension() == Some("log".as_ref()))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

impl Drop for Engine {
    /// Stop the syncer and wait for it, so the database is closed (and its lock released) when
    /// the last handle to the engine is gone.
    fn drop(&mut self) {
        self.sync_tx.lock().expect("sync sender lock").take();
        if let Some(handle) = self.syncer.lock().expect("syncer lock").take() {
            let _ = handle.join();
        }
    }
}

/// The group-commit thread.
struct Syncer {
    db: Arc<DB>,
    stats: Arc<SyncStats>,
    disk: Arc<DiskGuard>,
    failure: Arc<Failure>,
}

impl Syncer {
    /// Wait for one waiter, take every other one already queued, sync the WAL once, complete
    /// them all. A sync that fails for lack of space is tried again (waiters stay pending) until
    /// it succeeds or the engine closes: RocksDB resumes by itself once space is freed, and on
    /// resuming it flushes its memtables, so what the failed sync did not make durable is.
    fn run(self, rx: mpsc::Receiver<SyncWaiter>) {
        let mut group = Vec::new();
        while let Ok(first) = rx.recv() {
            group.push(first);
            group.extend(rx.try_iter());
            let result = loop {
                match self.db.flush_wal(true).map_err(StoreError::from) {
                    Ok(()) => {
                        self.disk.on_write_ok();
                        break Ok(());
                    }
                    Err(StoreError::NoSpace(detail)) => {
                        self.disk.on_no_space(&detail);
                        // Waiters that arrive meanwhile join this group's retry.
                        std::thread::sleep(NO_SPACE_RETRY);
                        self.disk.refresh();
                        match rx.try_recv() {
                            Ok(w) => group.push(w),
                            Err(mpsc::TryRecvError::Empty) => {}
                            Err(mpsc::TryRecvError::Disconnected) => {
                                break Err(format!("closing with the disk full: {detail}"))
                            }
                        }
                        group.extend(rx.try_iter());
                    }
                    Err(e) => {
                        if is_disk_failure(&e) {
                            fail(&self.failure, &e.to_string());
                        }
                        break Err(e.to_string());
                    }
                }
            };
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .waiters
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for waiter in group.drain(..) {
                waiter(result.clone().map_err(io::Error::other));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskConfig;

    fn sst_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("sst".as_ref()))
            .count()
    }

    /// A node restarted on a full disk must open without room for new SST files.
    #[test]
    fn reopening_replays_the_wal_without_flushing() {
        let dir = tempfile::tempdir().unwrap();
        let config = DiskConfig {
            reserve_mib: 0,
            ballast_mib: 0,
        };
        let open = || {
            let disk = Arc::new(DiskGuard::open(dir.path(), config.clone()).unwrap());
            Engine::open(dir.path(), disk).unwrap()
        };
        let engine = open();
        let mut batch = WriteBatch::default();
        engine.put_framed(&mut batch, cf::STATE, b"key", b"value");
        engine.write(batch, Durability::Sync).unwrap();
        drop(engine);
        assert_eq!(
            sst_files(dir.path()),
            0,
            "nothing flushed before the restart"
        );

        let engine = open();
        assert_eq!(sst_files(dir.path()), 0, "recovery wrote no SST");
        assert_eq!(
            engine.get(cf::STATE, b"key").unwrap().as_deref(),
            Some(&b"value"[..])
        );
    }
}
