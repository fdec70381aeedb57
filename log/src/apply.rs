//! The contract between the log and whatever gives commands their meaning.
//!
//! The log stores and replicates opaque commands; a [`CommandHandler`] turns each committed
//! command into zero or more events and state changes. The handler runs inside the partition's
//! state machine on every replica, so it must be deterministic: it may read and write partition
//! state and emit events through the [`ApplyContext`], and may use the proposal's leader-assigned
//! timestamp, but nothing else (no clocks, no randomness, no I/O of its own).
//!
//! [`RawAppend`] is the handler for a bare log: every command becomes one event holding the
//! command's bytes. The chat layer provides its own handler.

use std::collections::BTreeMap;

use chat_proto::log::LogEvent;
use prost::Message;

use rocksdb::WriteBatch;

use crate::codec::{cf, describe_key, event_key, prefix_successor, state_key, StateNs};
use crate::engine::{Engine, StoreError};
use crate::store::{CachedWrites, StateCache};
use crate::types::{CommandOutcome, LogOffset, PartitionId};

/// Handler state as (key, value) pairs, keys without the partition/namespace prefix.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Applies committed commands deterministically. See the module docs for the rules.
pub trait CommandHandler: Send + Sync + 'static {
    /// Apply one command. A handler that rejects a command must not have written anything for
    /// it; a storage error is fatal for the partition (the node stops serving it rather than
    /// diverge from its peers).
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError>;
}

/// The view of a partition a [`CommandHandler`] gets while applying one command: its state (with
/// the writes of earlier commands of the same batch visible) and an event sink.
pub struct ApplyContext<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) cache: &'a StateCache,
    pub(crate) partition: PartitionId,
    pub(crate) raft_index: u64,
    pub(crate) timestamp_ms: u64,
    pub(crate) batch: &'a mut ApplyBatch,
}

/// What applying a run of committed entries writes, gathered in memory until the state machine
/// writes it to RocksDB in one batch with the new applied state: handler state changes, new
/// events at dense offsets, and rewrites of stored events.
pub(crate) struct ApplyBatch {
    /// Handler-namespace writes not yet in RocksDB: `None` is a delete.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Events emitted so far, in offset order.
    events: Vec<PendingEvent>,
    /// The offset of the last event, stored or emitted.
    last_offset: LogOffset,
    /// New payloads for events already stored (retention): offset → payload.
    rewrites: BTreeMap<LogOffset, Vec<u8>>,
}

/// An event emitted while applying, written with the rest of the batch.
#[derive(Clone)]
struct PendingEvent {
    offset: LogOffset,
    raft_index: u64,
    timestamp_ms: u64,
    kind: u32,
    payload: Vec<u8>,
}

impl PendingEvent {
    /// The event as stored (its payload moved, not copied: this is the apply's hot path).
    fn into_log_event(self) -> LogEvent {
        LogEvent {
            offset: self.offset.0,
            raft_index: self.raft_index,
            timestamp_ms: self.timestamp_ms,
            payload: self.payload.into(),
            kind: self.kind,
        }
    }
}

impl ApplyBatch {
    /// An empty batch of a partition whose last stored event is at `last_offset`.
    pub(crate) fn new(last_offset: LogOffset) -> Self {
        ApplyBatch {
            overlay: BTreeMap::new(),
            events: Vec::new(),
            last_offset,
            rewrites: BTreeMap::new(),
        }
    }

    pub(crate) fn last_offset(&self) -> LogOffset {
        self.last_offset
    }

    /// Add everything gathered to `batch` (partition `p`'s keys). A rewrite of an event that is
    /// not stored is dropped (there is nothing to remove data from). Returns the writes to keys
    /// `cache` holds, for the caller to make once `batch` is in RocksDB.
    pub(crate) fn write_to(
        self,
        engine: &Engine,
        cache: &StateCache,
        p: PartitionId,
        batch: &mut WriteBatch,
    ) -> Result<CachedWrites, StoreError> {
        let mut cached = CachedWrites::default();
        for (key, value) in self.overlay {
            cache.note_write(&mut cached, &key, value.as_deref());
            let key = state_key(p, StateNs::Handler, &key);
            match value {
                Some(v) => engine.put_framed(batch, cf::STATE, &key, &v),
                None => engine.delete(batch, cf::STATE, &key),
            }
        }
        for event in self.events {
            let key = event_key(p, event.offset);
            engine.put_framed(
                batch,
                cf::EVENTS,
                &key,
                &event.into_log_event().encode_to_vec(),
            );
        }
        for (offset, payload) in self.rewrites {
            let key = event_key(p, offset);
            let Some(stored) = engine.get(cf::EVENTS, &key)? else {
                continue;
            };
            let mut event = LogEvent::decode(stored.as_slice())
                .map_err(|e| StoreError::decode(describe_key(cf::EVENTS, &key), e))?;
            event.payload = payload.into();
            engine.put_framed(batch, cf::EVENTS, &key, &event.encode_to_vec());
        }
        Ok(cached)
    }
}

/// The event kind of raw records (see `LogEvent.kind`).
pub const RAW_EVENT_KIND: u32 = 0;

impl ApplyContext<'_> {
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The Raft log index of the entry being applied.
    pub fn raft_index(&self) -> u64 {
        self.raft_index
    }

    /// The leader's clock when the command was proposed (ms since the Unix epoch).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The offset of the last event applied so far (including this batch).
    pub fn last_offset(&self) -> LogOffset {
        self.batch.last_offset
    }

    /// Read a handler state key: this batch's pending write, else the partition's cache, else
    /// RocksDB.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.batch.overlay.get(key) {
            return Ok(pending.clone());
        }
        if let Some(cached) = self.cache.get(key) {
            return Ok(Some(cached));
        }
        let stored = self
            .engine
            .get(cf::STATE, &state_key(self.partition, StateNs::Handler, key))?;
        if let Some(value) = &stored {
            self.cache.fill(key, value);
        }
        Ok(stored)
    }

    /// Write a handler state key.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.batch.overlay.insert(key.to_vec(), Some(value));
    }

    /// Delete a handler state key.
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.overlay.insert(key.to_vec(), None);
    }

    /// Read up to `limit` handler state entries whose keys start with `prefix`, in key order,
    /// with this batch's pending writes applied.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<StateEntries, StoreError> {
        let end = prefix_successor(prefix);
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = match &end {
            Some(end) => self
                .batch
                .overlay
                .range(prefix.to_vec()..end.clone())
                .collect(),
            None => self.batch.overlay.range(prefix.to_vec()..).collect(),
        };
        // Pending deletes may hide stored keys; read enough stored keys that `limit` survive.
        let hidden = pending.iter().filter(|(_, v)| v.is_none()).count();
        let from = state_key(self.partition, StateNs::Handler, prefix);
        let to = match &end {
            Some(end) => state_key(self.partition, StateNs::Handler, end),
            None => state_key(self.partition, StateNs::Handler.next(), b""),
        };
        let skip = from.len() - prefix.len();
        let mut merged = BTreeMap::new();
        for item in self
            .engine
            .scan_from(cf::STATE, &from, to)
            .take(limit + hidden)
        {
            let (key, value) = item?;
            merged.insert(key[skip..].to_vec(), Some(value));
        }
        for (key, value) in pending {
            merged.insert(key.clone(), value.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// Read an event of this partition as it stands in this batch (pending events and
    /// rewrites included).
    pub fn read_event(&self, offset: LogOffset) -> Result<Option<LogEvent>, StoreError> {
        let mut event = match self.batch.events.iter().find(|e| e.offset == offset) {
            Some(e) => Some(e.clone().into_log_event()),
            None => match self
                .engine
                .get(cf::EVENTS, &event_key(self.partition, offset))?
            {
                Some(bytes) => Some(LogEvent::decode(bytes.as_slice()).map_err(|e| {
                    StoreError::decode(format!("partition {} offset {offset}", self.partition), e)
                })?),
                None => None,
            },
        };
        if let (Some(e), Some(payload)) = (event.as_mut(), self.batch.rewrites.get(&offset)) {
            e.payload = payload.clone().into();
        }
        Ok(event)
    }

    /// Replace the payload of an event already in the log (its offset, kind, Raft index and
    /// timestamp stay). Only for removing data (retention): the log stays dense, every replica
    /// rewrites the same event at the same point of the log, so replicas stay identical; readers
    /// that already consumed the event are not told.
    pub fn rewrite_event(&mut self, offset: LogOffset, payload: Vec<u8>) {
        if let Some(pending) = self.batch.events.iter_mut().find(|e| e.offset == offset) {
            pending.payload = payload;
        } else {
            self.batch.rewrites.insert(offset, payload);
        }
    }

    /// Append a raw event to the partition's event log; returns its offset.
    pub fn emit(&mut self, payload: Vec<u8>) -> LogOffset {
        self.emit_kind(RAW_EVENT_KIND, payload)
    }

    /// Append an event of a handler-defined `kind`; returns its offset. The offset it will get is
    /// `last_offset().next()`, so a handler can write it into the payload.
    pub fn emit_kind(&mut self, kind: u32, payload: Vec<u8>) -> LogOffset {
        let offset = self.batch.last_offset.next();
        self.batch.last_offset = offset;
        self.batch.events.push(PendingEvent {
            offset,
            raft_index: self.raft_index,
            timestamp_ms: self.timestamp_ms,
            kind,
            payload,
        });
        offset
    }
}

/// The bare-log handler: each command is stored as one event, unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawAppend;

impl CommandHandler for RawAppend {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        let offset = ctx.emit(command.to_vec());
        Ok(CommandOutcome::Applied {
            first_offset: Some(offset),
            events: 1,
            reply: Vec::new(),
        })
    }
}

/// Routes each command by its first byte (a tag) to one of several handlers, so one partition
/// can apply commands of different layers (e.g. raw records and chat commands). The tag is
/// stripped before the handler sees the command.
#[derive(Default, Clone)]
pub struct Dispatch {
    handlers: BTreeMap<u8, std::sync::Arc<dyn CommandHandler>>,
}

/// The tag of raw-record commands in a [`Dispatch`].
pub const RAW_COMMAND_TAG: u8 = 0;

impl Dispatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Route commands tagged `tag` to `handler`.
    pub fn with(mut self, tag: u8, handler: std::sync::Arc<dyn CommandHandler>) -> Self {
        self.handlers.insert(tag, handler);
        self
    }

    /// A command for the handler registered under `tag`.
    pub fn tagged(tag: u8, command: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(command.len() + 1);
        out.push(tag);
        out.extend_from_slice(command);
        out
    }
}

impl CommandHandler for Dispatch {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        let Some((tag, rest)) = command.split_first() else {
            return Ok(CommandOutcome::Rejected {
                code: crate::types::RejectCode::InvalidArgument,
                message: "empty command".into(),
            });
        };
        match self.handlers.get(tag) {
            Some(handler) => handler.apply(ctx, rest),
            None => Ok(CommandOutcome::Rejected {
                code: crate::types::RejectCode::InvalidArgument,
                message: format!("no handler for command tag {tag}"),
            }),
        }
    }
}
