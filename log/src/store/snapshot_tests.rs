//! Snapshots as RocksDB views: taking one writes nothing, what it holds does not move when the
//! partition applies more, it travels as a stream of parts, and installing it elsewhere (even
//! across a stop part way through) gives the same partition.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tokio::io::AsyncReadExt;

use crate::apply::{ApplyContext, CommandHandler};
use crate::disk::{DiskConfig, DiskGuard};
use crate::engine::{Engine, StoreError};
use crate::store::snapshot::{PartReader, SnapshotContent, SnapshotMeta, PART_BYTES};
use crate::store::state_machine::{AppliedState, Install};
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
    apply_sized(sm, from, to, 0).await
}

/// Apply entries `from..to`, one command each, padded with `pad` bytes.
async fn apply_sized(sm: &mut PartitionStateMachine, from: u64, to: u64, pad: usize) {
    let entries = (from..to).map(|index| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            timestamp_ms: 0,
            commands: vec![format!("command {index} {}", "x".repeat(pad)).into_bytes()],
        }),
    });
    sm.apply(entries).await.unwrap();
}

/// The parts of a snapshot stream.
fn parts_of(bytes: &[u8]) -> Vec<SnapshotContent> {
    let mut reader = PartReader::new(P, bytes).unwrap();
    std::iter::from_fn(|| reader.next_part().unwrap()).collect()
}

/// A snapshot stream's parts merged into one content.
fn content_of(bytes: &[u8]) -> SnapshotContent {
    let parts = parts_of(bytes);
    let mut whole = SnapshotContent {
        last_offset: parts[0].last_offset,
        state: Vec::new(),
        events: Vec::new(),
    };
    for part in parts {
        whole.state.extend(part.state);
        whole.events.extend(part.events);
    }
    whole
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
    let content = content_of(&bytes);
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

/// A snapshot of about 4 MiB of state and 4 MiB of events (several parts each), received into
/// a partition at `dir` whose install then stopped after the partition was emptied and one part
/// written. Answers the snapshot's bytes and metadata.
async fn interrupt_an_install(dir: &std::path::Path) -> (Vec<u8>, SnapshotMeta) {
    let a = tempfile::tempdir().unwrap();
    let (_, mut source) = open(a.path());
    apply_sized(&mut source, 1, 2001, 2000).await;
    let snapshot = source.get_current_snapshot().await.unwrap().unwrap();
    let meta = snapshot.meta.clone();
    let bytes = bytes_of(snapshot).await;

    let (target_engine, mut target) = open(dir);
    apply(&mut target, 1, 11).await;
    let mut incoming = target.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut incoming, &bytes)
        .await
        .unwrap();
    let received = incoming.into_received(&target_engine, P).await.unwrap();
    let install = Install {
        engine: &target_engine,
        partition: P,
    };
    let last_offset = install.check_and_keep(&received).unwrap();
    assert_eq!(last_offset.0, 2000);
    let state = AppliedState {
        applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        last_offset,
    };
    target_engine
        .write(install.begin_batch(&state), crate::engine::Durability::Sync)
        .unwrap();
    let first = install.part_batches().unwrap().next().unwrap().unwrap();
    target_engine
        .write(first, crate::engine::Durability::Sync)
        .unwrap();
    (bytes, meta)
}

#[tokio::test]
async fn a_big_snapshot_travels_in_parts_and_an_interrupted_install_finishes_at_open() {
    let b = tempfile::tempdir().unwrap();
    let (bytes, meta) = interrupt_an_install(b.path()).await;
    let parts = parts_of(&bytes);
    assert!(parts.len() >= 6, "{} parts", parts.len());
    for part in &parts {
        let size: usize = part
            .state
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + part.events.iter().map(|(_, e)| e.len() + 8).sum::<usize>();
        assert!(size < PART_BYTES + 8 * 1024, "a part of {size} bytes");
    }
    let whole = content_of(&bytes);
    assert_eq!(whole.events.len(), 2000);
    assert_eq!(whole.state.len(), 2001);

    // The next open finishes it: the same partition as the source's, and the file is gone.
    let (target_engine, mut target) = open(b.path());
    let (applied, _) = target.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    let again = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(bytes_of(again).await, bytes);
    assert!(!crate::store::snapshot::installing_path(&target_engine, P).exists());
}

/// What a node restarted on a full disk does: the install waits, the replica opens at the
/// install's applied position but publishes offset 0 (reads naming a floor wait), and once
/// there is room the install finishes by itself, without an apply.
#[tokio::test]
async fn an_interrupted_install_with_no_room_at_open_finishes_later_by_itself() {
    let b = tempfile::tempdir().unwrap();
    let (bytes, meta) = interrupt_an_install(b.path()).await;
    let disk = DiskConfig {
        reserve_mib: 0,
        ballast_mib: 0,
    };
    let engine =
        Engine::open(b.path(), Arc::new(DiskGuard::open(b.path(), disk).unwrap())).unwrap();
    let (mut target, mut offsets) = PartitionStateMachine::open_finishing(
        engine.clone(),
        P,
        Arc::new(Indexing),
        Leading::default(),
        StateCache::for_one_of(1, 64),
        false,
    )
    .unwrap();
    let (applied, _) = target.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    assert_eq!(offsets.borrow_and_update().0, 0);
    let installing = crate::store::snapshot::installing_path(&engine, P);
    assert!(installing.exists());
    // Asked for its snapshot meanwhile (openraft asks in `Raft::new`), it answers at once, with
    // none: on a full disk, waiting there would keep the node from starting.
    assert!(target.get_current_snapshot().await.unwrap().is_none());
    assert_eq!(offsets.borrow().0, 0);

    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        offsets.wait_for(|o| o.0 == 2000),
    )
    .await
    .expect("the install finished")
    .unwrap();
    assert!(!installing.exists());
    let again = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(bytes_of(again).await, bytes);
    // And it applies on from there at the next offset.
    apply(&mut target, 2001, 2002).await;
    assert_eq!(offsets.borrow().0, 2001);
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut source) = open(a.path());
    apply(&mut source, 1, 101).await;
    let snapshot = source.get_current_snapshot().await.unwrap().unwrap();
    let meta = snapshot.meta.clone();
    let mut bytes = bytes_of(snapshot).await;
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;

    let (_, mut target) = open(b.path());
    apply(&mut target, 1, 11).await;
    let before = target.applied_state().await.unwrap().0;
    let mut incoming = target.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut incoming, &bytes)
        .await
        .unwrap();
    let err = target.install_snapshot(&meta, incoming).await.unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(target.applied_state().await.unwrap().0, before);
    apply(&mut target, 11, 12).await;
}
