//! openraft's storage traits implemented on the node's [`Engine`](crate::engine::Engine): one
//! [`PartitionLogStore`] (Raft log, vote, committed) and one [`PartitionStateMachine`] (event log,
//! partition state, snapshots) per partition, all sharing the node's RocksDB.

mod log_store;
mod snapshot;
mod state_machine;

pub use log_store::PartitionLogStore;
pub use snapshot::{SnapshotContent, SnapshotData};
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

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode serialization of in-memory values cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::decode(what, e))
}
