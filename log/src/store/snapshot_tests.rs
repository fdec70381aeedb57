//! Snapshots as RocksDB views: taking one writes nothing, what it holds does not move when the
//! partition applies more, and installing it elsewhere gives the same partition.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tokio::io::AsyncReadExt;

use crate::apply::{ApplyContext, CommandHandler};
use crate::disk::{DiskConfig, DiskGuard};
use crate::engine::{Engine, StoreError};
use crate::store::{Leading, PartitionStateMachine, StateCache, TypeConfig};
use crate::types::{CommandOutcome, PartitionId, Proposal};

/// Keeps handler state that grows with the commands (an entry per command, like a chat's
/// history index) and one that is rewritten by each (a counter), and emits each as an event.
struct Indexing;

impl CommandHandler for Indexing {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        let offset = ctx.emit(command.to_vec());
        ctx.put(
            format!("index/{:08}", offset.0).as_bytes(),
            command.to_vec(),
        );
        ctx.put(b"count", offset.0.to_be_bytes().to_vec());
        Ok(CommandOutcome::Applied {
            first_offset: Some(offset),
            events: 1,
            reply: Vec::new(),
        })
    }
}

const P: PartitionId = PartitionId(3);

fn open(dir: &std::path::Path) -> (Arc<Engine>, PartitionStateMachine) {
    let config = DiskConfig {
        reserve_mib: 0,
        ballast_mib: 0,
    };
    let disk = Arc::new(DiskGuard::open(dir, config).unwrap());
    let engine = Engine::open(dir, disk).unwrap();
    let (sm, _offsets) = PartitionStateMachine::open(
        engine.clone(),
        P,
        Arc::new(Indexing),
        Leading::default(),
        StateCache::for_one_of(1, 64),
    )
    .unwrap();
    (engine, sm)
}

/// Apply entries `from..to`, one command each.
async fn apply(sm: &mut PartitionStateMachine, from: u64, to: u64) {
    let entries = (from..to).map(|index| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            timestamp_ms: 0,
            commands: vec![format!("command {index}").into_bytes()],
        }),
    });
    sm.apply(entries).await.unwrap();
}

async fn bytes_of(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
    let mut data = snapshot.snapshot;
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[tokio::test]
async fn building_a_snapshot_writes_nothing_and_its_view_stays_put() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut sm) = open(dir.path());
    apply(&mut sm, 1, 501).await;

    let before = engine.db().latest_sequence_number();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(
        engine.db().latest_sequence_number(),
        before,
        "building a snapshot wrote to RocksDB"
    );
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(500));

    // The partition moves on; the snapshot still shows the point it was taken at.
    apply(&mut sm, 501, 601).await;
    let bytes = bytes_of(snapshot).await;
    let content = super::snapshot::SnapshotContent::from_bytes(P, &bytes).unwrap();
    assert_eq!(content.last_offset.0, 500);
    assert_eq!(content.events.len(), 500);
    let count = content.state.iter().find(|(k, _)| k == b"count").unwrap();
    assert_eq!(count.1, 500u64.to_be_bytes());
    assert_eq!(
        content.state.len(),
        501,
        "500 index entries and the counter"
    );

    // The current snapshot is the state now.
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(600));
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_gives_the_same_partition() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut source) = open(a.path());
    let (target_engine, mut target) = open(b.path());
    apply(&mut source, 1, 301).await;
    apply(&mut target, 1, 11).await; // something to be replaced

    let snapshot = source.get_current_snapshot().await.unwrap().unwrap();
    let meta = snapshot.meta.clone();
    let bytes = bytes_of(snapshot).await;
    let mut incoming = target.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut incoming, &bytes)
        .await
        .unwrap();
    target.install_snapshot(&meta, incoming).await.unwrap();

    let (applied, _) = target.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    // Its own current snapshot is byte for byte the one it was sent.
    let again = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(again.meta.last_log_id, meta.last_log_id);
    assert_eq!(bytes_of(again).await, bytes);
    // And it applies on from there at the next offset.
    apply(&mut target, 301, 302).await;
    let key = crate::codec::event_key(P, crate::types::LogOffset(301));
    assert!(target_engine
        .get(crate::codec::cf::EVENTS, &key)
        .unwrap()
        .is_some());
}
