//! The LogNode API on one in-process node: dense offsets across proposals and partitions,
//! reads from an offset, subscriptions that catch up and then follow, restart from disk, and
//! partition-count mismatches refused.

mod common;

use std::time::Duration;

use chat_log::{
    CommandOutcome, LogNodeConfig, LogOffset, PartitionId, ProposeError, RaftTuning, RawAppend,
};
use futures::StreamExt;

fn payloads(events: &[chat_proto::log::LogEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reads_subscriptions_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::single_node(dir.path(), 3).await;
    let p = PartitionId(2);

    let out = node
        .propose(p, vec![b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap();
    let offsets: Vec<_> = out
        .outcomes
        .iter()
        .map(|o| match o {
            CommandOutcome::Applied {
                first_offset,
                events,
                ..
            } => (first_offset.unwrap(), *events),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![(LogOffset(1), 1), (LogOffset(2), 1)]);
    node.propose(p, vec![b"c".to_vec()]).await.unwrap();
    // Another partition has its own offsets.
    let other = node
        .propose(PartitionId(0), vec![b"x".to_vec()])
        .await
        .unwrap();
    assert!(matches!(
        other.outcomes[0],
        CommandOutcome::Applied {
            first_offset: Some(LogOffset(1)),
            ..
        }
    ));

    let events = node.read_events(p, LogOffset(2), 10).unwrap();
    assert_eq!(payloads(&events), ["b", "c"]);
    assert!(events
        .iter()
        .all(|e| e.timestamp_ms > 0 && e.raft_index > 0));
    assert_eq!(node.last_offset(p).unwrap(), LogOffset(3));

    // Subscribe from offset 2: catch up on b, c, then follow d, e as they are applied.
    let mut sub = node.subscribe(p, LogOffset(2)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(sub.next().await.unwrap().unwrap());
    }
    let writer = {
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.propose(p, vec![b"d".to_vec()]).await.unwrap();
            node.propose(p, vec![b"e".to_vec()]).await.unwrap();
        })
    };
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap();
        seen.push(next.unwrap().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(payloads(&seen), ["b", "c", "d", "e"]);
    assert_eq!(
        seen.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    drop(sub);

    // Unknown partitions are errors, not panics.
    assert!(matches!(
        node.propose(PartitionId(9), vec![b"z".to_vec()]).await,
        Err(ProposeError::UnknownPartition(_))
    ));

    // A compaction builds a snapshot covering what was applied.
    let snap = node.compact(p, Duration::from_secs(10)).await.unwrap();
    assert!(snap >= 4, "snapshot index {snap}");

    let (last, digest) = node.digest(p).unwrap();
    common::close(node).await;

    // Restart from disk: same events, offsets continue densely.
    let node = common::single_node(dir.path(), 3).await;
    assert_eq!(node.digest(p).unwrap(), (last, digest));
    let out = node.propose(p, vec![b"f".to_vec()]).await.unwrap();
    assert!(matches!(
        out.outcomes[0],
        CommandOutcome::Applied {
            first_offset: Some(LogOffset(6)),
            ..
        }
    ));
    common::close(node).await;

    // The data dir refuses to start with a different partition count.
    let config = LogNodeConfig {
        node_id: 1,
        data_dir: dir.path().to_path_buf(),
        partitions: 4,
        partitions_chosen: true,
        replication: 3,
        join: false,
        members: [(1, "127.0.0.1:1".to_string())].into(),
        cluster_secret: "s".into(),
        bind_ip: None,
        dialer: Default::default(),
        raft: RaftTuning::default(),
        disk: Default::default(),
        engine: Default::default(),
    };
    let err = match chat_log::LogNode::open(config, std::sync::Arc::new(RawAppend)).await {
        Ok(_) => panic!("a partition-count change must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("refusing to start"), "{err}");
}
