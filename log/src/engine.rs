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
//! Running out of disk space is survived, not fatal (see [`crate::disk`]): a write or sync that
//! fails with ENOSPC changed nothing, so [`Engine::write_waiting`] and the syncer wait for space
//! and try again instead of handing openraft a storage error, which would stop the Raft group.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

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
    pub fn decode(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Decode {
            what: what.into(),
            detail: err.to_string(),
        }
    }
}

/// A consistent point-in-time view of a node's database (a RocksDB snapshot).
pub type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

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

/// Per column family: the ones read by point lookups get bloom filters, in SST files and in
/// the memtable. Many of their lookups miss by design (a send's dedup key is new; a member
/// check for a non-member), and without a filter a miss is a skip-list search plus an index
/// and data block read in every level. The log-shaped families are read by range and get none.
fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    if matches!(name, cf::STATE | cf::PROJECTIONS | cf::RAFT_META) {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.set_memtable_whole_key_filtering(true);
    }
    opts
}

/// One node's RocksDB and its group-commit syncer.
pub struct Engine {
    db: Arc<DB>,
    /// `None` once the engine is being dropped.
    sync_tx: Mutex<Option<mpsc::Sender<SyncWaiter>>>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<SyncStats>,
    disk: Arc<DiskGuard>,
}

impl Engine {
    /// Open (or create) the node's database under `path`, on the disk `disk` watches.
    pub fn open(path: &Path, disk: Arc<DiskGuard>) -> Result<Arc<Engine>, StoreError> {
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
        let cfs = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);

        let (sync_tx, sync_rx) = mpsc::channel::<SyncWaiter>();
        let stats = Arc::new(SyncStats::default());
        let syncer = Syncer {
            db: db.clone(),
            stats: stats.clone(),
            disk: disk.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || syncer.run(sync_rx))
            .map_err(|e| StoreError::decode("wal-sync thread", e))?;

        Ok(Arc::new(Engine {
            db,
            sync_tx: Mutex::new(Some(sync_tx)),
            syncer: Mutex::new(Some(syncer)),
            stats,
            disk,
        }))
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A point-in-time view for [`Engine::get_at`] and [`Engine::scan_at`].
    pub fn snapshot(&self) -> DbSnapshot<'_> {
        self.db.snapshot()
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
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
            Err(e) => Err(e),
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

    /// Re-read every record of every column family and check its frame. Returns how many records
    /// were checked and one message per corrupt record.
    pub fn verify_all(&self) -> Result<(u64, Vec<String>), StoreError> {
        let mut checked = 0u64;
        let mut errors = Vec::new();
        for name in cf::ALL {
            for item in self.db.iterator_cf(self.cf(name), IteratorMode::Start) {
                let (k, v) = item?;
                checked += 1;
                if let Err(e) = codec::unframe(name, &k, &v) {
                    errors.push(e.to_string());
                }
            }
        }
        Ok((checked, errors))
    }
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
                    Err(e) => break Err(e.to_string()),
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
