//! openraft's own storage conformance suite (`openraft::testing::Suite`) run against the RocksDB
//! log store and state machine. Each case gets a fresh database in a temp dir; the partition id is
//! not 0, so key prefixes are exercised too.

use std::sync::Arc;

use crate::apply::RawAppend;
use crate::disk::{DiskConfig, DiskGuard};
use crate::engine::{Engine, StoreError};
use crate::store::TypeConfig;
use crate::store::{Leading, PartitionLogStore, PartitionStateMachine, StateCache};
use crate::types::{NodeId, PartitionId};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, PartitionLogStore, PartitionStateMachine, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, PartitionLogStore, PartitionStateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let io = |e: StoreError| StorageError::from(StorageIOError::write(AnyError::new(&e)));
        // No reserve and no ballast: the suite is about Raft storage, not free space.
        let disk = DiskGuard::open(
            dir.path(),
            DiskConfig {
                reserve_mib: 0,
                ballast_mib: 0,
            },
        )
        .map_err(|e| StorageError::from(StorageIOError::write(AnyError::new(&e))))?;
        let engine = Engine::open(dir.path(), std::sync::Arc::new(disk)).map_err(io)?;
        let partition = PartitionId(5);
        let log = PartitionLogStore::new(engine.clone(), partition, Leading::default());
        let (sm, _offsets) = PartitionStateMachine::open(
            engine,
            partition,
            Arc::new(RawAppend),
            Leading::default(),
            StateCache::for_one_of(1, 64),
        )
        .map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
