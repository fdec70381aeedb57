//! Free space on the node's data disk, and what the node does when it runs short.
//!
//! A full disk is a condition to live through, not a crash. Three mechanisms, from the gentlest:
//!
//! - **Reserve.** Below `reserve_mib` of free space the node refuses new client writes on the
//!   partitions it leads ([`DiskGuard::admit`], answered as RESOURCE_EXHAUSTED "disk full"), and
//!   in a cluster hands its leaderships to nodes that can write (see `LogNode`'s disk watch). Raft
//!   replication, applies, snapshots and RocksDB compaction go on, so a follower keeps its copy
//!   current and space freed by compaction is won back.
//! - **Ballast.** An `EMERGENCY_BALLAST` file of `ballast_mib` holds real blocks while all is
//!   well (as CockroachDB keeps one). When free space falls below what RocksDB needs to flush
//!   (another process filled the disk), when RocksDB meets ENOSPC anyway, or when the node starts
//!   on a disk with less than the reserve free, the ballast is deleted so RocksDB has room to
//!   flush, recover and open. Client writes
//!   stay refused while the ballast is released, so its space is kept for Raft, recovery and a
//!   restart; it is made again, and writes taken again, once free space is back above the reserve
//!   plus the ballast.
//! - **Holding growth.** With the ballast gone and free space down to RocksDB's flush headroom,
//!   writes that grow the database (a follower's Raft appends and applies, snapshot installs,
//!   projections) wait
//!   ([`DiskGuard::holds_growth`], `Engine::write_growing`): that last space is kept for RocksDB's
//!   flushes and for reopening the database after a crash. A follower falls behind instead of
//!   replicating into the last block and then being unable to restart.
//! - **Waiting, not failing.** A RocksDB write that fails with ENOSPC made no change; the engine
//!   waits for space and retries it (`Engine::write_waiting`), and the group-commit syncer retries
//!   its sync, so openraft never sees a storage error (which would stop the Raft group for good).
//!   RocksDB itself leaves its read-only error state on its own once space is back (its
//!   SstFileManager polls free space and resumes the database).
//!
//! Free space is read with `statvfs` on the data dir: once a second by the node, and at once
//! after a write fails for lack of space. The state is in the admin status and in the
//! `chatd_disk_*` metrics (0 ok, 1 low, 2 full for `chatd_disk_state`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use fs4::FileExt;
use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// Free space RocksDB insists on before it flushes a memtable: its `SstFileManager` refuses with
/// less than one write buffer free (64 MiB, RocksDB's default, which the engine keeps), and once
/// its memtables are full, writes stall inside RocksDB. Below it the ballast is released so
/// flushes can go on.
pub const ROCKSDB_HEADROOM_BYTES: u64 = 64 * MIB;

/// The smallest reserve: RocksDB's flush headroom plus room for the flushes and Raft appends
/// that go on after client writes stop, so a node at its reserve does not release its ballast.
pub const MIN_RESERVE_BYTES: u64 = ROCKSDB_HEADROOM_BYTES + 64 * MIB;

/// The ballast's file name inside the data dir.
pub const BALLAST_FILE: &str = "EMERGENCY_BALLAST";

/// The `[storage]` knobs for free space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// Refuse new client writes when less than this many MiB are free on the data disk (never
    /// less than 128 MiB, RocksDB's flush headroom and some room beyond it).
    pub reserve_mib: u64,
    /// Size of the emergency ballast file in MiB (0: none).
    pub ballast_mib: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            reserve_mib: 256,
            ballast_mib: 64,
        }
    }
}

/// How the data disk is doing, from the node's point of view.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DiskState {
    /// More than the reserve is free: everything is accepted.
    Ok,
    /// Less than the reserve is free, or the ballast is released and there is no room to make it
    /// again: client writes are refused, Raft goes on.
    Low,
    /// RocksDB met ENOSPC and has not written since, or growth is held at RocksDB's headroom:
    /// writes wait for space.
    Full,
}

impl DiskState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Ok => "ok",
            DiskState::Low => "low",
            DiskState::Full => "full",
        }
    }
}

/// A point-in-time account of the data disk, for status and errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    pub state: DiskState,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    pub ballast_bytes: u64,
    /// Whether the ballast file is currently held.
    pub ballast_held: bool,
    /// Client writes refused for lack of space since the node started.
    pub refused_writes: u64,
    /// Times RocksDB met ENOSPC since the node started.
    pub no_space_errors: u64,
}

/// Why a client write was refused: the node's disk is (nearly) full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFull {
    pub status: DiskStatus,
    pub data_dir: PathBuf,
}

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.status;
        write!(
            f,
            "disk full: {} MiB free on {} (the node keeps a reserve of {} MiB{}); new writes are refused until space is freed",
            s.free_bytes / MIB,
            self.data_dir.display(),
            s.reserve_bytes / MIB,
            if s.ballast_held || s.ballast_bytes == 0 {
                String::new()
            } else {
                format!(" and needs {} MiB more for its emergency ballast", s.ballast_bytes / MIB)
            },
        )
    }
}

impl std::error::Error for DiskFull {}

/// Watches the free space of one data dir and keeps its ballast.
pub struct DiskGuard {
    data_dir: PathBuf,
    config: DiskConfig,
    free: AtomicU64,
    no_space: AtomicBool,
    /// Growing writes are held at RocksDB's headroom (see [`DiskGuard::holds_growth`]).
    holding: AtomicBool,
    ballast_held: AtomicBool,
    refused: AtomicU64,
    no_space_errors: AtomicU64,
    /// Serialises creating and deleting the ballast.
    ballast: Mutex<()>,
}

impl DiskGuard {
    /// Measure `data_dir`'s disk. If less than the reserve is free, delete the ballast now so the
    /// database has room to open and recover; otherwise make sure the ballast exists.
    pub fn open(data_dir: &Path, config: DiskConfig) -> io::Result<DiskGuard> {
        std::fs::create_dir_all(data_dir)?;
        let guard = DiskGuard {
            data_dir: data_dir.to_path_buf(),
            config,
            free: AtomicU64::new(0),
            no_space: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            ballast_held: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            no_space_errors: AtomicU64::new(0),
            ballast: Mutex::new(()),
        };
        let free = guard.measure()?;
        if free < guard.reserve_bytes() {
            guard.release_ballast("starting with less than the reserve free");
        } else if guard.ballast_bytes() == 0 {
            guard.release_ballast("the ballast is switched off (ballast_mib = 0)");
        }
        guard.ballast_held.store(
            std::fs::metadata(guard.ballast_path()).is_ok_and(|m| m.len() >= guard.ballast_bytes()),
            Ordering::Relaxed,
        );
        guard.refresh();
        Ok(guard)
    }

    fn reserve_bytes(&self) -> u64 {
        (self.config.reserve_mib * MIB).max(MIN_RESERVE_BYTES)
    }

    fn ballast_bytes(&self) -> u64 {
        self.config.ballast_mib * MIB
    }

    fn ballast_path(&self) -> PathBuf {
        self.data_dir.join(BALLAST_FILE)
    }

    fn measure(&self) -> io::Result<u64> {
        let free = fs4::statvfs(&self.data_dir)?.available_space();
        self.free.store(free, Ordering::Relaxed);
        Ok(free)
    }

    /// Re-read free space, and make the ballast again once there is room for it above the
    /// reserve. Called once a second.
    pub fn refresh(&self) {
        let free = match self.measure() {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.data_dir.display(), "cannot read free space");
                return;
            }
        };
        if free < ROCKSDB_HEADROOM_BYTES && self.ballast_held() {
            // Something else took the space (our own client writes stop at the reserve): give
            // RocksDB its flush headroom back before its writes stall.
            self.release_ballast("free space fell below what RocksDB needs to flush");
            return;
        }
        let want = self.ballast_bytes();
        // Never while the database is stopped for lack of space: the ballast's blocks are what
        // it needs to resume.
        let stopped = self.no_space.load(Ordering::Relaxed);
        if want > 0 && !stopped && !self.ballast_held() && free >= self.reserve_bytes() + want {
            let _lock = self.ballast.lock().expect("ballast lock");
            match make_ballast(&self.ballast_path(), want) {
                Ok(()) => {
                    tracing::info!(mib = self.config.ballast_mib, "emergency ballast in place");
                    self.ballast_held.store(true, Ordering::Relaxed);
                    let _ = self.measure();
                }
                Err(e) => {
                    let _ = std::fs::remove_file(self.ballast_path());
                    tracing::warn!(error = %e, "cannot create the emergency ballast");
                }
            }
        }
    }

    fn ballast_held(&self) -> bool {
        self.ballast_held.load(Ordering::Relaxed)
    }

    fn release_ballast(&self, why: &str) {
        let _lock = self.ballast.lock().expect("ballast lock");
        self.ballast_held.store(false, Ordering::Relaxed);
        let path = self.ballast_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::error!(mib = self.config.ballast_mib, reason = why, "released the emergency ballast so the database can recover; client writes stay refused until space is freed");
                let _ = self.measure();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot delete the emergency ballast")
            }
        }
    }

    /// RocksDB met ENOSPC: writes wait from now on, and the ballast goes so it can recover.
    pub fn on_no_space(&self, detail: &str) {
        if !self.no_space.swap(true, Ordering::Relaxed) {
            self.no_space_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = detail, dir = %self.data_dir.display(), "disk full: writes wait for space");
            self.release_ballast("the database met ENOSPC");
        }
    }

    /// A write went through: whatever ENOSPC episode there was is over.
    pub fn on_write_ok(&self) {
        if self.no_space.load(Ordering::Relaxed) && self.no_space.swap(false, Ordering::Relaxed) {
            tracing::warn!(dir = %self.data_dir.display(), "the database writes again");
        }
    }

    /// Whether a write that grows the database must wait for space now: the ballast is gone
    /// (released or switched off) and less than RocksDB's flush headroom is free. That space is
    /// what RocksDB needs to flush memtables and, after a crash, to replay its WAL and open, so
    /// followers' Raft appends and applies, snapshot installs and projections stop short of it
    /// (see `Engine::write_growing`); deletes (log purges) and
    /// small metadata writes (votes) are not held. Cheap while the disk is fine: a `statvfs` is
    /// made only when the state is not ok.
    /// Whether RocksDB met ENOSPC and has not written since (see [`crate::engine::Engine::probe`]).
    pub fn waiting_for_space(&self) -> bool {
        self.no_space.load(Ordering::Relaxed)
    }

    pub fn holds_growth(&self) -> bool {
        if self.state() == DiskState::Ok {
            return false;
        }
        let free = match self.measure() {
            Ok(free) => free,
            Err(_) => return false,
        };
        let hold = !self.ballast_held() && free < ROCKSDB_HEADROOM_BYTES;
        if hold != self.holding.swap(hold, Ordering::Relaxed) {
            if hold {
                tracing::error!(free_mib = free / MIB, dir = %self.data_dir.display(), "disk down to RocksDB's headroom: Raft appends and applies wait for space (the node falls behind until space is freed)");
            } else {
                tracing::warn!(
                    free_mib = free / MIB,
                    "space back above RocksDB's headroom: Raft appends and applies go on"
                );
            }
        }
        hold
    }

    pub fn state(&self) -> DiskState {
        if self.no_space.load(Ordering::Relaxed) || self.holding.load(Ordering::Relaxed) {
            DiskState::Full
        } else if self.free.load(Ordering::Relaxed) < self.reserve_bytes()
            || (self.ballast_bytes() > 0 && !self.ballast_held())
        {
            DiskState::Low
        } else {
            DiskState::Ok
        }
    }

    /// Whether a new client write of `commands` commands may be taken; counts the commands
    /// refused (one proposal may carry several: a device's batched sends).
    pub fn admit(&self, commands: usize) -> Result<(), DiskFull> {
        if self.state() == DiskState::Ok {
            return Ok(());
        }
        self.refused.fetch_add(commands as u64, Ordering::Relaxed);
        Err(DiskFull {
            status: self.status(),
            data_dir: self.data_dir.clone(),
        })
    }

    /// Publish the status as metrics (`chatd_disk_*`), for whatever exporter the binary installs.
    pub fn publish_metrics(&self) {
        let s = self.status();
        let state = match s.state {
            DiskState::Ok => 0.0,
            DiskState::Low => 1.0,
            DiskState::Full => 2.0,
        };
        metrics::gauge!("chatd_disk_free_bytes").set(s.free_bytes as f64);
        metrics::gauge!("chatd_disk_reserve_bytes").set(s.reserve_bytes as f64);
        metrics::gauge!("chatd_disk_state").set(state);
        metrics::gauge!("chatd_disk_ballast_held").set(if s.ballast_held { 1.0 } else { 0.0 });
        metrics::counter!("chatd_disk_refused_writes_total").absolute(s.refused_writes);
        metrics::counter!("chatd_disk_no_space_errors_total").absolute(s.no_space_errors);
    }

    pub fn status(&self) -> DiskStatus {
        DiskStatus {
            state: self.state(),
            free_bytes: self.free.load(Ordering::Relaxed),
            reserve_bytes: self.reserve_bytes(),
            ballast_bytes: self.ballast_bytes(),
            ballast_held: self.ballast_held(),
            refused_writes: self.refused.load(Ordering::Relaxed),
            no_space_errors: self.no_space_errors.load(Ordering::Relaxed),
        }
    }
}

/// Write the ballast with real blocks (not a sparse file) and sync it.
fn make_ballast(path: &Path, bytes: u64) -> io::Result<()> {
    let file: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.allocate(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_is_made_with_room_and_released_on_no_space() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::open(
            dir.path(),
            DiskConfig {
                reserve_mib: 1,
                ballast_mib: 1,
            },
        )
        .unwrap();
        assert_eq!(guard.status().reserve_bytes, MIN_RESERVE_BYTES, "floor");
        let ballast = dir.path().join(BALLAST_FILE);
        assert_eq!(std::fs::metadata(&ballast).unwrap().len(), MIB);
        assert_eq!(guard.state(), DiskState::Ok);
        assert!(guard.admit(1).is_ok());

        guard.on_no_space("IO error: No space left on device");
        assert!(!ballast.exists(), "ballast released");
        guard.refresh();
        assert!(
            !ballast.exists(),
            "not made again while the database is stopped"
        );
        assert_eq!(guard.state(), DiskState::Full);
        let refused = guard.admit(1).unwrap_err();
        assert!(refused.to_string().contains("disk full"), "{refused}");
        assert_eq!(guard.status().refused_writes, 1);
        assert_eq!(guard.status().no_space_errors, 1);

        guard.on_write_ok();
        assert_eq!(
            guard.state(),
            DiskState::Low,
            "refused until the ballast is back"
        );
        assert!(guard
            .admit(1)
            .unwrap_err()
            .to_string()
            .contains("emergency ballast"));
        guard.refresh();
        assert!(ballast.exists(), "ballast made again once there is room");
        assert_eq!(guard.state(), DiskState::Ok);
        assert!(guard.admit(1).is_ok());
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_refuses_writes_and_holds_no_ballast() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BALLAST_FILE), b"old").unwrap();
        let guard = DiskGuard::open(
            dir.path(),
            DiskConfig {
                reserve_mib: u64::MAX / MIB / 2,
                ballast_mib: 1,
            },
        )
        .unwrap();
        assert!(!dir.path().join(BALLAST_FILE).exists());
        assert_eq!(guard.state(), DiskState::Low);
        assert!(guard.admit(1).is_err());
    }
}
