//! Helpers for in-process single-node tests of the log: a real RocksDB in a temp dir, one Raft
//! group per partition electing itself (no network needed for a single voter).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_log::{CommandHandler, LogNode, LogNodeConfig, PartitionId, RaftTuning, RawAppend};

#[allow(dead_code)] // Not every test binary uses it.
pub async fn single_node(dir: &Path, partitions: u32) -> Arc<LogNode> {
    single_node_with(dir, partitions, Arc::new(RawAppend)).await
}

/// [`single_node`] applying commands with `handler`.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn single_node_with(
    dir: &Path,
    partitions: u32,
    handler: Arc<dyn CommandHandler>,
) -> Arc<LogNode> {
    single_node_tuned(dir, partitions, handler, RaftTuning::default()).await
}

/// [`single_node_with`] with Raft tuned by `raft`.
pub async fn single_node_tuned(
    dir: &Path,
    partitions: u32,
    handler: Arc<dyn CommandHandler>,
    raft: RaftTuning,
) -> Arc<LogNode> {
    let config = LogNodeConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        partitions,
        partitions_chosen: true,
        replication: 3,
        join: false,
        members: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
        cluster_secret: "s".into(),
        bind_ip: None,
        dialer: Default::default(),
        raft,
        disk: Default::default(),
        engine: Default::default(),
    };
    let node = LogNode::open(config, handler).await.unwrap();
    node.initialize().await.unwrap();
    for p in 0..partitions {
        node.wait_for_leader(PartitionId(p), Duration::from_secs(10))
            .await
            .unwrap();
    }
    node
}

/// Shut the node down and wait until its RocksDB is closed (every handle dropped).
pub async fn close(node: Arc<LogNode>) {
    node.shutdown().await;
    let closed = node.storage_closed();
    drop(node);
    assert!(
        closed.wait(Duration::from_secs(2)).await,
        "the engine is still referenced after shutdown"
    );
}
