//! Compacting a partition gives the Raft log's space back: after `compact`, the entries behind
//! the snapshot are gone from RocksDB (memtable and SST files), not only covered by a range
//! tombstone that waits for some later compaction, while the events they produced stay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_log::{LogOffset, PartitionId, RaftTuning, RawAppend};

const RECORD: usize = 1024;
const PROPOSALS: usize = 2000;

/// Bytes the Raft log column family holds (SST files and memtables).
fn raft_log_bytes(node: &chat_log::LogNode) -> u64 {
    let sizes = node.storage_sizes();
    let of = |list: &[(&str, u64)]| {
        list.iter()
            .find(|(cf, _)| *cf == "raft_log")
            .map(|(_, b)| *b)
            .expect("raft_log is a column family")
    };
    of(&sizes.sst) + of(&sizes.memtables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_returns_the_raft_logs_space() {
    let dir = tempfile::tempdir().unwrap();
    let raft = RaftTuning {
        // Only the explicit compaction below snapshots; nothing is kept behind it.
        snapshot_after_logs: 1_000_000,
        logs_kept_after_snapshot: 0,
        ..RaftTuning::default()
    };
    let node = common::single_node_tuned(dir.path(), 1, Arc::new(RawAppend), raft).await;
    let p = PartitionId(0);
    for i in 0..PROPOSALS {
        let record = vec![(i % 251) as u8; RECORD];
        node.propose(p, vec![record]).await.unwrap();
    }
    let before = raft_log_bytes(&node);
    assert!(
        before > (PROPOSALS * RECORD) as u64 / 2,
        "the Raft log holds the proposals: {before} bytes"
    );

    node.compact(p, Duration::from_secs(30)).await.unwrap();

    let after = raft_log_bytes(&node);
    assert!(
        after < before / 10,
        "the Raft log still holds {after} of {before} bytes after compact"
    );
    // The events are the log of record: all still there.
    let events = node.read_events(p, LogOffset(1), PROPOSALS + 10).unwrap();
    assert_eq!(events.len(), PROPOSALS);
    assert_eq!(events[PROPOSALS - 1].payload.len(), RECORD);
    common::close(node).await;
}
