//! Handler state as applies see it: a command reads what earlier commands wrote, whether they
//! were in the same batch, an earlier batch (served from the partition's state cache once read)
//! or before a restart (from RocksDB), and a deleted key reads as absent afterwards.

mod common;

use std::sync::Arc;

use chat_log::{ApplyContext, CommandHandler, CommandOutcome, LogOffset, PartitionId, StoreError};

/// `+`: read the counter, add one, write it back and emit the new value.
/// `0`: delete the counter (it then counts from zero again).
struct Counter;

const KEY: &[u8] = b"counter";

impl CommandHandler for Counter {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        if command == b"0" {
            ctx.delete(KEY);
            return Ok(CommandOutcome::Applied {
                first_offset: None,
                events: 0,
                reply: Vec::new(),
            });
        }
        let n = match ctx.get(KEY)? {
            Some(bytes) => u64::from_be_bytes(bytes.try_into().expect("8 bytes")),
            None => 0,
        } + 1;
        ctx.put(KEY, n.to_be_bytes().to_vec());
        let offset = ctx.emit(n.to_string().into_bytes());
        Ok(CommandOutcome::Applied {
            first_offset: Some(offset),
            events: 1,
            reply: Vec::new(),
        })
    }
}

fn counted(node: &chat_log::LogNode, p: PartitionId) -> Vec<u64> {
    node.read_events(p, LogOffset(1), 1000)
        .unwrap()
        .iter()
        .map(|e| std::str::from_utf8(&e.payload).unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_read_what_earlier_applies_wrote_across_batches_deletes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let p = PartitionId(0);
    let node = common::single_node_with(dir.path(), 1, Arc::new(Counter)).await;

    // One proposal of three commands (one batch), then single commands (one batch each, so
    // the later ones read the counter from the cache the first one filled).
    node.propose(p, vec![b"+".to_vec(); 3]).await.unwrap();
    for _ in 0..5 {
        node.propose(p, vec![b"+".to_vec()]).await.unwrap();
    }
    assert_eq!(counted(&node, p), (1..=8).collect::<Vec<_>>());

    // A delete in its own batch, then counting again from zero.
    node.propose(p, vec![b"0".to_vec()]).await.unwrap();
    node.propose(p, vec![b"+".to_vec()]).await.unwrap();
    node.propose(p, vec![b"+".to_vec()]).await.unwrap();
    // A delete and increments in one batch.
    node.propose(p, vec![b"+".to_vec(), b"0".to_vec(), b"+".to_vec()])
        .await
        .unwrap();
    let mut expected: Vec<u64> = (1..=8).collect();
    expected.extend([1, 2, 3, 1]);
    assert_eq!(counted(&node, p), expected);
    assert_eq!(
        node.handler_get(p, KEY).unwrap(),
        Some(1u64.to_be_bytes().to_vec()),
        "RocksDB holds what the applies wrote"
    );

    // After a restart (an empty cache) the count goes on from what is stored.
    common::close(node).await;
    let node = common::single_node_with(dir.path(), 1, Arc::new(Counter)).await;
    node.propose(p, vec![b"+".to_vec()]).await.unwrap();
    node.propose(p, vec![b"+".to_vec()]).await.unwrap();
    expected.extend([2, 3]);
    assert_eq!(counted(&node, p), expected);
    common::close(node).await;
}
