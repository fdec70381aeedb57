//! The state machine of one partition: applies committed entries through the node's
//! [`CommandHandler`], writes the emitted events at dense offsets, and builds and installs
//! snapshots.
//!
//! Each `apply` call writes its events, the handler's state changes and the new applied log id in
//! one RocksDB batch, so the partition's state is always exactly "the log applied up to
//! `applied`". That batch is not synced itself: the entries it came from are already durable in
//! the Raft log (and RocksDB's single WAL is replayed as a prefix), so after a crash the state
//! either includes a batch or openraft re-applies it from the log.

use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StoredMembership,
};
use rocksdb::WriteBatch;
use tokio::sync::{watch, Mutex, MutexGuard};

use super::snapshot::{self, PartReader, SnapshotContent, SnapshotData, SnapshotMeta};
use super::storage_error;
use crate::apply::{ApplyBatch, ApplyContext, CommandHandler};
use crate::codec::{self, cf, StateNs};
use crate::engine::{DbSnapshot, Durability, Engine, StoreError};
use crate::store::{Leading, StateCache, TypeConfig};
use crate::types::{LogOffset, Node, NodeId, PartitionId, ProposalOutcome};
use crate::wire::{decode, encode, opt_log_id, opt_log_id_pb, required, Malformed, Wire};
use chat_proto::log as pb;

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, Node>;

/// The log's own state key of a partition: its [`AppliedState`].
const KEY_APPLIED: &[u8] = b"applied";
/// The log's own state key of a partition whose snapshot install is under way: the
/// [`AppliedState`] the install ends at (see [`Install`]).
const KEY_INSTALLING: &[u8] = b"installing";

/// The state machine of one partition.
pub struct PartitionStateMachine {
    engine: Arc<Engine>,
    partition: PartitionId,
    handler: Arc<dyn CommandHandler>,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    last_offset: LogOffset,
    /// Publishes the last applied offset to subscribers.
    offsets: watch::Sender<LogOffset>,
    /// Held while the partition's stored state changes (apply, install) and while a snapshot
    /// builder pins a consistent view, so a snapshot never mixes two applied states. It guards
    /// an install left unfinished at open for lack of space, which whoever locks finishes first.
    write_lock: WriteLock,
    /// Whether this node leads the partition (its applies are then not held on a full disk).
    leading: Leading,
    /// Handler state the applies read, as RocksDB holds it (see `state_cache.rs`).
    cache: StateCache,
}

/// The applied position of a partition, stored as one record so its parts change together.
#[derive(Clone, Default)]
pub(super) struct AppliedState {
    pub(super) applied: Option<LogId<NodeId>>,
    pub(super) membership: Membership,
    pub(super) last_offset: LogOffset,
}

impl Wire for AppliedState {
    type Pb = pb::AppliedState;
    fn to_pb(&self) -> pb::AppliedState {
        pb::AppliedState {
            applied: opt_log_id_pb(&self.applied),
            membership: Some(self.membership.to_pb()),
            last_offset: self.last_offset.0,
        }
    }
    fn from_pb(pb: pb::AppliedState) -> Result<Self, Malformed> {
        Ok(AppliedState {
            applied: opt_log_id(pb.applied),
            membership: Membership::from_pb(required(pb.membership, "applied membership")?)?,
            last_offset: LogOffset(pb.last_offset),
        })
    }
}

fn applied_key(p: PartitionId) -> Vec<u8> {
    codec::state_key(p, StateNs::System, KEY_APPLIED)
}

fn installing_key(p: PartitionId) -> Vec<u8> {
    codec::state_key(p, StateNs::System, KEY_INSTALLING)
}

/// Installing a received snapshot, part by part, so that memory does not grow with the
/// partition, and crash-safe through a journal:
///
/// 1. every part of the received file is checked (crc32, format, one last offset) before
///    anything is replaced, and the file is renamed to `<p>.installing` (synced);
/// 2. one synced batch deletes the partition's state and events and records `installing`
///    with the applied state the install ends at;
/// 3. each part is written in a batch of its own;
/// 4. one synced batch writes the applied state and deletes `installing`; the file goes.
///
/// A node that stops between 2 and 4 finds `installing` at the next start and does 3 and 4
/// again from the kept file ([`Install::resume`]): the parts' writes are idempotent.
pub(super) struct Install<'a> {
    pub(super) engine: &'a Engine,
    pub(super) partition: PartitionId,
}

impl Install<'_> {
    /// Step 1: the received file checked and renamed; its last offset.
    pub(super) fn check_and_keep(
        &self,
        received: &std::path::Path,
    ) -> Result<LogOffset, StoreError> {
        let p = self.partition;
        let mut parts = PartReader::new(p, self.open(received)?)?;
        let mut last_offset = None;
        while let Some(part) = parts.next_part()? {
            last_offset = Some(part.last_offset);
        }
        let last_offset = last_offset
            .ok_or_else(|| StoreError::decode(format!("snapshot data of {p}"), "no parts"))?;
        let keep = snapshot::installing_path(self.engine, p);
        snapshot::rename_synced(received, &keep).map_err(|e| self.file_error(&keep, e))?;
        Ok(last_offset)
    }

    /// Step 2: the partition emptied, and the install recorded as under way.
    pub(super) fn begin_batch(&self, target: &AppliedState) -> WriteBatch {
        let p = self.partition;
        let mut batch = WriteBatch::default();
        let (start, end) = (codec::partition_start(p), codec::partition_end(p));
        self.engine
            .delete_range(&mut batch, cf::STATE, &start, &end);
        self.engine
            .delete_range(&mut batch, cf::EVENTS, &start, &end);
        self.engine
            .put_framed(&mut batch, cf::STATE, &installing_key(p), &encode(target));
        batch
    }

    /// Step 3: the kept file's parts, a batch each.
    pub(super) fn part_batches(
        &self,
    ) -> Result<impl Iterator<Item = Result<WriteBatch, StoreError>> + '_, StoreError> {
        let p = self.partition;
        let keep = snapshot::installing_path(self.engine, p);
        let mut parts = PartReader::new(p, self.open(&keep)?)?;
        Ok(std::iter::from_fn(move || parts.next_part().transpose())
            .map(move |part| part.map(|part| self.part_batch(&part))))
    }

    fn part_batch(&self, part: &SnapshotContent) -> WriteBatch {
        let p = self.partition;
        let mut batch = WriteBatch::default();
        for (key, value) in &part.state {
            let key = codec::state_key(p, StateNs::Handler, key);
            self.engine.put_framed(&mut batch, cf::STATE, &key, value);
        }
        for (offset, event) in &part.events {
            self.engine
                .put_framed(&mut batch, cf::EVENTS, &codec::event_key(p, *offset), event);
        }
        batch
    }

    /// Step 4: the applied state written, the install no longer under way.
    pub(super) fn end_batch(&self, target: &AppliedState) -> WriteBatch {
        let mut batch = WriteBatch::default();
        put_applied_state(self.engine, &mut batch, self.partition, target);
        self.engine
            .delete(&mut batch, cf::STATE, &installing_key(self.partition));
        batch
    }

    /// After step 4: the kept file is no longer needed.
    fn remove_file(&self) {
        let keep = snapshot::installing_path(self.engine, self.partition);
        if let Err(e) = std::fs::remove_file(&keep) {
            tracing::warn!(path = %keep.display(), error = %e, "an installed snapshot's file was not removed");
        }
    }

    /// At open: finish an install a stop interrupted (steps 3 and 4), and drop what an
    /// interrupted receive (or a stop between steps 1 and 2) left: the sender sends it again.
    /// With no room on the disk to finish it now, answers the install to finish later (see
    /// [`Unfinished`]): a node restarted on a full disk must still open.
    fn resume(&self, try_now: bool) -> Result<Option<AppliedState>, StoreError> {
        let p = self.partition;
        let _ = std::fs::remove_file(snapshot::receiving_path(self.engine, p));
        let Some(bytes) = self.engine.get(cf::STATE, &installing_key(p))? else {
            let _ = std::fs::remove_file(snapshot::installing_path(self.engine, p));
            return Ok(None);
        };
        let target: AppliedState = decode(&format!("{p} snapshot install"), &bytes)?;
        if !try_now || self.engine.disk().holds_growth() {
            tracing::warn!(partition = %p, "a snapshot install a stop interrupted waits for disk space: this replica serves no reads of it until then");
            return Ok(Some(target));
        }
        tracing::warn!(partition = %p, "finishing a snapshot install that a stop interrupted");
        let finished = (|| {
            for batch in self.part_batches()? {
                self.engine.write(batch?, Durability::Buffered)?;
            }
            self.engine.write(self.end_batch(&target), Durability::Sync)
        })();
        match finished {
            Ok(()) => {
                self.remove_file();
                Ok(None)
            }
            Err(StoreError::NoSpace(detail)) => {
                tracing::warn!(partition = %p, %detail, "no space to finish the interrupted snapshot install: it waits for space, and this replica serves no reads of it until then");
                Ok(Some(target))
            }
            Err(e) => Err(e),
        }
    }

    /// Steps 3 and 4, each write waiting while the disk holds growth, then the kept file removed.
    async fn finish_waiting(&self, target: &AppliedState) -> Result<(), StoreError> {
        for batch in self.part_batches()? {
            self.engine
                .write_growing(batch?, Durability::Buffered, false)
                .await?;
        }
        self.engine
            .write_growing(self.end_batch(target), Durability::Sync, false)
            .await?;
        self.remove_file();
        Ok(())
    }

    fn open(
        &self,
        path: &std::path::Path,
    ) -> Result<std::io::BufReader<std::fs::File>, StoreError> {
        std::fs::File::open(path)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| self.file_error(path, e))
    }

    fn file_error(&self, path: &std::path::Path, e: std::io::Error) -> StoreError {
        StoreError::decode(
            format!("the snapshot file {} of {}", path.display(), self.partition),
            e,
        )
    }
}

/// A partition's write lock, and what it guards: an install a stop interrupted that the disk
/// had no room to finish at open (almost always none). Whoever takes the lock finishes it first
/// ([`lock_finished`]).
type WriteLock = Arc<Mutex<Option<Unfinished>>>;

/// An install left unfinished at open: the applied state it ends at, and where to publish its
/// last offset once done. Until then the replica publishes offset 0, so reads that name a floor
/// wait (or ask another replica) instead of seeing the partition half written.
struct Unfinished {
    target: AppliedState,
    offsets: watch::Sender<LogOffset>,
}

/// Lock `lock`, first finishing an install left unfinished (waiting for space if need be).
async fn lock_finished<'a>(
    lock: &'a Mutex<Option<Unfinished>>,
    engine: &Engine,
    partition: PartitionId,
) -> Result<MutexGuard<'a, Option<Unfinished>>, StoreError> {
    let mut guard = lock.lock().await;
    if let Some(unfinished) = guard.as_ref() {
        let install = Install { engine, partition };
        install.finish_waiting(&unfinished.target).await?;
        unfinished
            .offsets
            .send_replace(unfinished.target.last_offset);
        tracing::info!(%partition, "finished the snapshot install a stop had interrupted");
        *guard = None;
    }
    Ok(guard)
}

/// Finish an install left unfinished at open once there is room, so the replica serves again
/// without waiting for its next apply (an idle partition has none).
async fn finish_when_space(engine: Weak<Engine>, partition: PartitionId, lock: WriteLock) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if lock.lock().await.is_none() {
            return;
        }
        if engine.disk().holds_growth() {
            continue;
        }
        match lock_finished(&lock, &engine, partition).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%partition, error = %e, "the interrupted snapshot install did not finish; trying again")
            }
        }
    }
}

/// Partition `p`'s applied state as of `at` when given (nothing applied yet: the default).
fn read_applied_state(
    engine: &Engine,
    at: Option<&DbSnapshot<'_>>,
    p: PartitionId,
) -> Result<AppliedState, StoreError> {
    Ok(engine
        .get_at(at, cf::STATE, &applied_key(p))?
        .map(|bytes| decode(&format!("{p} applied state"), &bytes))
        .transpose()?
        .unwrap_or_default())
}

fn put_applied_state(
    engine: &Engine,
    batch: &mut WriteBatch,
    p: PartitionId,
    state: &AppliedState,
) {
    engine.put_framed(batch, cf::STATE, &applied_key(p), &encode(state));
}

/// Delete the handler-state copy an earlier release kept per snapshot (see
/// [`snapshot::legacy_manifest_key`]); a data dir without one is not written to.
fn clear_legacy_manifest(engine: &Engine, p: PartitionId) -> Result<(), StoreError> {
    let key = snapshot::legacy_manifest_key(p);
    if engine
        .db()
        .get_pinned_cf(engine.cf(cf::SNAPSHOTS), &key)?
        .is_none()
    {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    engine.delete(&mut batch, cf::SNAPSHOTS, &key);
    engine.write(batch, Durability::Buffered)
}

/// The partition's snapshot as of now: a RocksDB view taken under the write lock (so it sees
/// one applied state, never half an apply) and the applied position read through it.
async fn take_snapshot(
    engine: &Arc<Engine>,
    p: PartitionId,
    write_lock: &Mutex<Option<Unfinished>>,
) -> Result<Snapshot<TypeConfig>, StoreError> {
    let view = {
        let _guard = lock_finished(write_lock, engine, p).await?;
        engine.owned_view()
    };
    let applied = read_applied_state(engine, Some(view.at()), p)?;
    let snapshot_id = match applied.applied {
        Some(id) => format!(
            "{}-{}-{}-{}",
            p.0, id.leader_id.term, id.index, applied.last_offset.0
        ),
        None => format!("{}-empty", p.0),
    };
    let meta = SnapshotMeta {
        last_log_id: applied.applied,
        last_membership: applied.membership,
        snapshot_id,
    };
    let data = SnapshotData::deferred(engine.clone(), p, view, applied.last_offset);
    Ok(Snapshot {
        meta,
        snapshot: Box::new(data),
    })
}

impl PartitionStateMachine {
    /// Open the state machine of `partition`, resuming from what is stored, with `cache` for the
    /// state its applies read. Returns it with a receiver of its last applied offset.
    pub(crate) fn open(
        engine: Arc<Engine>,
        partition: PartitionId,
        handler: Arc<dyn CommandHandler>,
        leading: Leading,
        cache: StateCache,
    ) -> Result<(Self, watch::Receiver<LogOffset>), StoreError> {
        Self::open_finishing(engine, partition, handler, leading, cache, true)
    }

    /// [`PartitionStateMachine::open`]; an interrupted install is finished at once only if
    /// `try_now` (and there is room), otherwise later.
    pub(super) fn open_finishing(
        engine: Arc<Engine>,
        partition: PartitionId,
        handler: Arc<dyn CommandHandler>,
        leading: Leading,
        cache: StateCache,
        try_now: bool,
    ) -> Result<(Self, watch::Receiver<LogOffset>), StoreError> {
        let install = Install {
            engine: &engine,
            partition,
        };
        let unfinished = install.resume(try_now)?;
        let stored = match &unfinished {
            Some(target) => target.clone(),
            None => read_applied_state(&engine, None, partition)?,
        };
        // Best effort: a node restarted on a full disk must still open (see `disk.rs`).
        if let Err(e) = clear_legacy_manifest(&engine, partition) {
            tracing::warn!(%partition, error = %e, "old snapshot manifest not deleted; tried again at the next start");
        }
        let published = match unfinished {
            Some(_) => LogOffset::default(),
            None => stored.last_offset,
        };
        let (offsets, offsets_rx) = watch::channel(published);
        let unfinished = unfinished.map(|target| Unfinished {
            target,
            offsets: offsets.clone(),
        });
        let deferred = unfinished.is_some();
        let write_lock = Arc::new(Mutex::new(unfinished));
        if deferred {
            tokio::spawn(finish_when_space(
                Arc::downgrade(&engine),
                partition,
                write_lock.clone(),
            ));
        }
        let sm = PartitionStateMachine {
            engine,
            partition,
            handler,
            applied: stored.applied,
            membership: stored.membership,
            last_offset: stored.last_offset,
            offsets,
            write_lock,
            leading,
            cache,
        };
        Ok((sm, offsets_rx))
    }

    fn apply_error(&self, log_id: LogId<NodeId>, e: StoreError) -> StorageError<NodeId> {
        storage_error(ErrorSubject::Apply(log_id), ErrorVerb::Write, e)
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotBuilder = PartitionSnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ProposalOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write_lock = self.write_lock.clone();
        let _guard = lock_finished(&write_lock, &self.engine, self.partition)
            .await
            .map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;

        let mut gathered = ApplyBatch::new(self.last_offset);
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        let mut results = Vec::new();

        for entry in entries {
            let raft_index = entry.log_id.index;
            let mut outcome = ProposalOutcome {
                raft_index,
                outcomes: Vec::new(),
            };
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(proposal) => {
                    for command in &proposal.commands {
                        let mut ctx = ApplyContext {
                            engine: &self.engine,
                            cache: &self.cache,
                            partition: self.partition,
                            raft_index,
                            timestamp_ms: proposal.timestamp_ms,
                            batch: &mut gathered,
                        };
                        let result = self.handler.apply(&mut ctx, command);
                        outcome
                            .outcomes
                            .push(result.map_err(|e| self.apply_error(entry.log_id, e))?);
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone())
                }
            }
            applied = Some(entry.log_id);
            results.push(outcome);
        }

        let Some(last_applied) = applied else {
            return Ok(results);
        };
        let p = self.partition;
        let last_offset = gathered.last_offset();
        let mut batch = WriteBatch::default();
        let cached = gathered
            .write_to(&self.engine, &self.cache, p, &mut batch)
            .map_err(|e| self.apply_error(last_applied, e))?;
        let state = AppliedState {
            applied,
            membership,
            last_offset,
        };
        put_applied_state(&self.engine, &mut batch, p, &state);
        self.engine
            .write_growing(batch, Durability::Buffered, self.leading.get())
            .await
            .map_err(|e| self.apply_error(last_applied, e))?;
        self.cache.apply(cached);

        self.applied = state.applied;
        self.membership = state.membership;
        self.last_offset = state.last_offset;
        self.offsets.send_replace(last_offset);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PartitionSnapshotBuilder {
            engine: self.engine.clone(),
            partition: self.partition,
            write_lock: self.write_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotData>> {
        let data = SnapshotData::receiving(&self.engine, self.partition)
            .await
            .map_err(|e| {
                let e = StoreError::decode("a file to receive a snapshot into", e);
                storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
            })?;
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> StorageResult<()> {
        let p = self.partition;
        let snapshot_error = |e| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let received = snapshot
            .into_received(&self.engine, p)
            .await
            .map_err(snapshot_error)?;
        // Taken first: an install left unfinished at open is finished before this one's file
        // takes the place of its file.
        let write_lock = self.write_lock.clone();
        let _guard = lock_finished(&write_lock, &self.engine, p)
            .await
            .map_err(snapshot_error)?;
        let install = Install {
            engine: &self.engine,
            partition: p,
        };
        // Checked whole before anything is replaced: a damaged snapshot changes nothing.
        let last_offset = install.check_and_keep(&received).map_err(snapshot_error)?;
        let state = AppliedState {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            last_offset,
        };

        // Whether or not the install succeeds, an empty cache is a true one.
        self.cache.clear();
        self.engine
            .write_growing(install.begin_batch(&state), Durability::Sync, false)
            .await
            .map_err(snapshot_error)?;
        install
            .finish_waiting(&state)
            .await
            .map_err(snapshot_error)?;

        metrics::counter!("chatd_snapshots_installed_total").increment(1);
        tracing::info!(partition = %p, last_log_id = ?meta.last_log_id, last_offset = %state.last_offset, "installed snapshot");
        self.applied = state.applied;
        self.membership = state.membership;
        self.last_offset = state.last_offset;
        self.offsets.send_replace(state.last_offset);
        Ok(())
    }

    /// Whatever snapshot openraft built or installed last, the current state is a snapshot at
    /// least as new, and the one a lagging follower is best sent. This runs on openraft's state
    /// machine task, between applies.
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        // With an install left unfinished for lack of space there is no whole state to offer,
        // and waiting for space here would hold up `Raft::new` (openraft asks at start): none.
        if self.write_lock.lock().await.is_some() {
            return Ok(None);
        }
        let snapshot = take_snapshot(&self.engine, self.partition, &self.write_lock)
            .await
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        // Nothing applied: no snapshot (the partition has never been initialised).
        Ok(Some(snapshot).filter(|s| s.meta.last_log_id.is_some()))
    }
}

/// Builds a snapshot of one partition: O(1), a RocksDB view (see `snapshot.rs`).
pub struct PartitionSnapshotBuilder {
    engine: Arc<Engine>,
    partition: PartitionId,
    write_lock: WriteLock,
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionSnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let p = self.partition;
        let build_error = |e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let snapshot = take_snapshot(&self.engine, p, &self.write_lock)
            .await
            .map_err(build_error)?;
        metrics::counter!("chatd_snapshots_built_total").increment(1);
        tracing::debug!(partition = %p, last_log_id = ?snapshot.meta.last_log_id, "built snapshot");
        Ok(snapshot)
    }
}
