//! Online backups of a node's database, and what a data dir restored from one may do.
//!
//! A backup is a RocksDB checkpoint: hard links to the immutable SST files and copies of the
//! small live files (manifest, options, the WAL tail), consistent across column families — the
//! Raft log, the votes, the applied state and the events as of one instant. It is taken into
//! `<data dir>/backup-checkpoints.tmp/<n>`, on the same file system so it costs no copy, read out by the admin
//! service's `Backup` stream, and deleted when the [`Checkpoint`] is dropped (or at the next
//! start, if the node stopped first).
//!
//! `chatctl restore` builds a data dir from a backup and leaves [`RESTORED_MARKER`] in it. A
//! restored node's log is rewound to the backup: as the only node of its cluster that is what a
//! restore is for, but as one voter among others it could vote twice in a term or forget
//! entries it acknowledged, so [`admit_restored`] refuses to start it then (replace the node by
//! a new id instead, which takes its replicas from the others).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use chat_proto::protocol::RESTORED_MARKER;

use crate::codec::{self, cf, StateNs};
use crate::engine::{Engine, StoreError};
use crate::placement::{read_map, NodeState};
use crate::types::{NodeId, PartitionId};

/// Where checkpoints are taken, inside the data dir; everything in it is deleted at start, so
/// the name is one an operator would not pick for backups of their own.
const BACKUPS_DIR: &str = "backup-checkpoints.tmp";

/// A checkpoint of the database on disk; deleted on drop.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// Its files, relative to `dir`, with their sizes.
    pub files: Vec<(String, u64)>,
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "a backup checkpoint was not deleted");
        }
    }
}

/// Take a checkpoint of `engine` under `data_dir` (blocking: RocksDB flushes its memtables).
pub(crate) fn checkpoint(engine: &Engine, data_dir: &Path) -> Result<Checkpoint, StoreError> {
    let parent = data_dir.join(BACKUPS_DIR);
    std::fs::create_dir_all(&parent)
        .map_err(|e| StoreError::decode(format!("create {}", parent.display()), e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = parent.join(stamp.to_string());
    rocksdb::checkpoint::Checkpoint::new(engine.db())?.create_checkpoint(&dir)?;
    let mut checkpoint = Checkpoint {
        dir,
        files: Vec::new(),
    };
    let listing = std::fs::read_dir(&checkpoint.dir)
        .map_err(|e| StoreError::decode(format!("list {}", checkpoint.dir.display()), e))?;
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::decode("a checkpoint file", e))?;
        let meta = entry
            .metadata()
            .map_err(|e| StoreError::decode("a checkpoint file", e))?;
        if meta.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            checkpoint.files.push((name, meta.len()));
        }
    }
    checkpoint.files.sort();
    Ok(checkpoint)
}

/// At start: delete checkpoints a stop left behind.
pub(crate) fn remove_leftovers(data_dir: &Path) {
    let parent = data_dir.join(BACKUPS_DIR);
    if parent.exists() {
        if let Err(e) = std::fs::remove_dir_all(&parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "old backup checkpoints not deleted");
        }
    }
}

/// At start: a data dir restored from a backup runs only as the single node of its cluster —
/// its own partition map and the configured members name no other node. Then the marker goes.
pub(crate) fn admit_restored(
    engine: &Engine,
    data_dir: &Path,
    me: NodeId,
    members: &BTreeMap<NodeId, String>,
) -> anyhow::Result<()> {
    let marker = data_dir.join(RESTORED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let key = |k: &[u8]| codec::state_key(PartitionId::META, StateNs::Handler, k);
    let map = read_map(|k| engine.get(cf::STATE, &key(k)))?;
    let mut others: Vec<NodeId> = map
        .iter()
        .flat_map(|m| m.nodes.iter())
        .filter(|(id, n)| **id != me && n.state != NodeState::Removed)
        .map(|(id, _)| *id)
        .chain(members.keys().copied().filter(|id| *id != me))
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        bail!(
            "data dir {} was restored from a backup, and node {me} has other members ({others:?}): \
             its log is rewound to the backup, so it must not vote again under its old id. \
             Replace it by a new node (`chatctl node replace {me} --by <new id> <addr>`, then start \
             that one with --join on an empty data dir); a restore is for a single-node deployment",
            data_dir.display()
        );
    }
    std::fs::remove_file(&marker)?;
    tracing::warn!(node = me, data_dir = %data_dir.display(), "starting from a restored backup: this node's data is as of the backup");
    Ok(())
}
