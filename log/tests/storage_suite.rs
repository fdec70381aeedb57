//! openraft's own storage conformance suite (`openraft::testing::Suite`) run against the RocksDB
//! log store and state machine. Each case gets a fresh database in a temp dir; the partition id is
//! not 0, so key prefixes are exercised too.

use std::sync::Arc;

use chat_log::store::{PartitionLogStore, PartitionStateMachine};
use chat_log::types::{NodeId, PartitionId, TypeConfig};
use chat_log::{Engine, RawAppend};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, PartitionLogStore, PartitionStateMachine, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, PartitionLogStore, PartitionStateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let io =
            |e: chat_log::StoreError| StorageError::from(StorageIOError::write(AnyError::new(&e)));
        // No reserve and no ballast: the suite is about Raft storage, not free space.
        let disk = chat_log::disk::DiskGuard::open(
            dir.path(),
            chat_log::DiskConfig {
                reserve_mib: 0,
                ballast_mib: 0,
            },
        )
        .map_err(|e| StorageError::from(StorageIOError::write(AnyError::new(&e))))?;
        let engine = Engine::open(dir.path(), std::sync::Arc::new(disk)).map_err(io)?;
        let partition = PartitionId(5);
        let log = PartitionLogStore::new(engine.clone(), partition);
        let (sm, _offsets) =
            PartitionStateMachine::open(engine, partition, Arc::new(RawAppend)).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
