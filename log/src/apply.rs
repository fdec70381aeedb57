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

use crate::codec::{cf, state_key, StateNs};
use crate::engine::{Engine, StoreError};
use crate::types::{CommandOutcome, LogOffset, PartitionId};

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
    pub(crate) partition: PartitionId,
    pub(crate) raft_index: u64,
    pub(crate) timestamp_ms: u64,
    /// Handler-namespace writes not yet in RocksDB: `None` is a delete.
    pub(crate) overlay: &'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Events emitted so far in this batch: (offset, raft index, timestamp, payload).
    pub(crate) events: &'a mut Vec<PendingEvent>,
    pub(crate) last_offset: &'a mut LogOffset,
}

/// An event emitted while applying, written with the rest of the batch.
pub(crate) struct PendingEvent {
    pub offset: LogOffset,
    pub raft_index: u64,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

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
        *self.last_offset
    }

    /// Read a handler state key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.overlay.get(key) {
            return Ok(pending.clone());
        }
        self.engine
            .get(cf::STATE, &state_key(self.partition, StateNs::Handler, key))
    }

    /// Write a handler state key.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.overlay.insert(key.to_vec(), Some(value));
    }

    /// Delete a handler state key.
    pub fn delete(&mut self, key: &[u8]) {
        self.overlay.insert(key.to_vec(), None);
    }

    /// Append an event to the partition's event log; returns its offset.
    pub fn emit(&mut self, payload: Vec<u8>) -> LogOffset {
        let offset = self.last_offset.next();
        *self.last_offset = offset;
        self.events.push(PendingEvent {
            offset,
            raft_index: self.raft_index,
            timestamp_ms: self.timestamp_ms,
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
