//! openraft's storage traits implemented on the node's [`Engine`](crate::engine::Engine): one
//! [`PartitionLogStore`] (Raft log, vote, committed) and one [`PartitionStateMachine`] (event log,
//! partition state, snapshots) per partition, all sharing the node's RocksDB.

mod log_store;
pub(crate) mod snapshot;
#[cfg(test)]
mod snapshot_tests;
mod state_cache;
mod state_machine;
#[cfg(test)]
mod suite_tests;

pub use log_store::PartitionLogStore;
pub use snapshot::SnapshotData;
pub(crate) use state_cache::{CachedWrites, StateCache};
pub use state_machine::PartitionStateMachine;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::engine::StoreError;
use crate::types::NodeId;

/// Wrap an engine error as the openraft storage error for `subject`/`verb`.
pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl Into<StoreError>,
) -> StorageError<NodeId> {
    let e: StoreError = e.into();
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Whether this node currently leads a partition, as its Raft metrics say (set by `LogNode`).
/// A leader's own appends and applies are not held at the disk's headroom: client writes are
/// refused well before it, so what a leader still writes is the bounded few in flight, and its
/// clients are waiting for them. A follower's growth is not bounded (another node's clients
/// drive it), so that is what the hold stops.
#[derive(Clone, Debug, Default)]
pub struct Leading(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Leading {
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set(&self, leading: bool) {
        self.0.store(leading, std::sync::atomic::Ordering::Relaxed)
    }
}

openraft::declare_raft_types!(
    /// The openraft configuration of every partition group. Declared here, beside the snapshot
    /// data type it names, so the ids in `types` do not depend on the storage.
    pub TypeConfig:
        D = crate::types::Proposal,
        R = crate::types::ProposalOutcome,
        NodeId = crate::types::NodeId,
        Node = crate::types::Node,
        SnapshotData = SnapshotData,
);
