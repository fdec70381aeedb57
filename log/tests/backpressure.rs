//! The proposal queue is bounded: while a partition cannot commit, proposals beyond the bound
//! (in count or in bytes) are refused at once with `Overloaded` instead of piling up in memory,
//! what was let in commits once the partition moves again, and the room comes back after.
//!
//! "Cannot commit" is made real by a handler that holds the apply of one command until the test
//! lets it go: the Raft write carrying it is outstanding, so later proposals queue behind it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chat_log::{
    ApplyContext, CommandHandler, CommandOutcome, PartitionId, ProposeError, RaftTuning, RawAppend,
    StoreError,
};

/// Applies like `RawAppend`, but a command `hold` waits until [`Gate::open`].
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicBool,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl CommandHandler for Gate {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        if command == b"hold" {
            self.entered.store(true, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        RawAppend.apply(ctx, command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_full_queue_refuses_at_once_and_drains_when_the_partition_moves() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let tuning = RaftTuning {
        proposal_queue: 4,
        proposal_queue_bytes: 1000,
        ..RaftTuning::default()
    };
    let node = common::single_node_tuned(dir.path(), 1, gate.clone(), tuning).await;
    let p = PartitionId(0);

    // One write is outstanding: its apply is held.
    let held = tokio::spawn({
        let node = node.clone();
        async move { node.propose(p, vec![b"hold".to_vec()]).await }
    });
    for _ in 0..500 {
        if gate.entered.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gate.entered.load(Ordering::SeqCst),
        "the held write never reached apply"
    );

    // Behind it: one proposal taken by the batcher (waiting for the write slot) and four in the
    // queue. Each is given time to be taken before the next comes.
    let mut waiting = Vec::new();
    let mut refused = Vec::new();
    for i in 0..12 {
        let node = node.clone();
        let task = tokio::spawn(async move { node.propose(p, vec![format!("w{i}").into()]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        if task.is_finished() {
            refused.push(task.await.unwrap());
        } else {
            waiting.push(task);
        }
    }
    assert_eq!(waiting.len(), 5, "1 taken + 4 queued should wait");
    assert_eq!(refused.len(), 7);
    for r in &refused {
        match r {
            Err(ProposeError::Overloaded { partition, message }) => {
                assert_eq!(*partition, p);
                assert!(message.contains("4 proposals"), "{message}");
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
    // Refused at once means nothing of them was proposed: only what waits gets offsets.
    // The bound in bytes holds too: 1000 bytes are the whole queue (the five waiting ones use 10).
    let big = node.propose(p, vec![vec![b'x'; 995]]).await;
    assert!(
        matches!(&big, Err(ProposeError::Overloaded { message, .. }) if message.contains("1000 bytes")),
        "{big:?}"
    );

    gate.open();
    held.await.unwrap().expect("the held write commits");
    for task in waiting {
        task.await.unwrap().expect("a queued proposal commits");
    }
    // The room is back, bytes included: a proposal as big as the whole byte bound gets in.
    node.propose(p, vec![vec![b'y'; 1000]])
        .await
        .expect("room again once the queue drained");
    let events = node.read_events(p, chat_log::LogOffset(1), 100).unwrap();
    let mut names: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload[..e.payload.len().min(4)]).into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["hold", "w0", "w1", "w2", "w3", "w4", "yyyy"],
        "exactly the proposals let in were committed"
    );
    common::close(node).await;
}
