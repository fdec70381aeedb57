//! A flipped byte in a stored value is reported as a checksum error naming its key — by reads,
//! by the digest, and by the full verification scan — and is never served as data; a read or
//! the scan that meets it marks that partition's replica damaged.

mod common;

use chat_log::testing::corrupt_event;
use chat_log::{LogOffset, PartitionId, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_a_checksum_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = PartitionId(1);
    let node = common::single_node(dir.path(), 2).await;
    let records: Vec<Vec<u8>> = (0..5).map(|i| format!("record-{i}").into_bytes()).collect();
    node.propose(p, records).await.unwrap();
    common::close(node).await;

    // Flip one byte of the stored event at offset 3, behind the log's back.
    corrupt_event(dir.path(), p, LogOffset(3));

    let node = common::single_node(dir.path(), 2).await;
    // Offsets before the damage still read fine.
    let ok = node.read_events(p, LogOffset(1), 2).unwrap();
    assert_eq!(ok.len(), 2);
    // Reading across it is an error naming the key, not data.
    match node.read_events(p, LogOffset(1), 10) {
        Err(StoreError::Corrupt(c)) => {
            assert_eq!(c.cf, "events");
            assert_eq!(c.key, "partition 1 offset 3");
            assert!(c.detail.contains("checksum mismatch"), "{c}");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert!(matches!(node.digest(p), Err(StoreError::Corrupt(_))));
    // The read marked this replica of the partition damaged, and only it.
    assert!(node.damaged(p).unwrap().contains("partition 1 offset 3"));
    assert_eq!(node.damaged(PartitionId(0)), None);
    // The mark is in memory: a restart forgets it, the verification scan finds it again.
    common::close(node).await;
    let node = common::single_node(dir.path(), 2).await;
    assert_eq!(node.damaged(p), None);
    let (checked, errors) = node.verify_checksums().unwrap();
    assert!(checked > 10);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("partition 1 offset 3"), "{errors:?}");
    assert!(node.damaged(p).unwrap().contains("partition 1 offset 3"));
    assert_eq!(node.damaged(PartitionId(0)), None);

    // The other partition is untouched and the node keeps accepting writes.
    let out = node
        .propose(PartitionId(0), vec![b"fine".to_vec()])
        .await
        .unwrap();
    assert_eq!(out.outcomes.len(), 1);
    common::close(node).await;
}
