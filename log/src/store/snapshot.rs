//! Snapshots of a partition: what they contain, how they are read consistently, and how they are
//! stored.
//!
//! A snapshot captures the partition at an applied Raft log id: the handler's state and the event
//! log up to `last_offset`. Only a small manifest (meta, last offset, handler state) is stored in
//! [`cf::SNAPSHOTS`]; the events are read from the live event log when the snapshot is sent,
//! which is correct because events at or below a snapshot's `last_offset` never change.
//!
//! Snapshot data (what travels to a follower) is `frame(bincode(SnapshotContent))`, so a snapshot
//! damaged in transit or at rest fails its crc32 instead of being installed.

use rocksdb::{IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};
use serde::{Deserialize, Serialize};

use super::{decode, encode};
use crate::codec::{self, cf, StateNs};
use crate::engine::{Engine, StoreError};
use crate::types::{LogOffset, Node, NodeId, PartitionId};

pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// Handler state as (key, value) pairs, keys without the partition/namespace prefix.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The full contents of a partition snapshot, as sent to followers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotContent {
    pub last_offset: LogOffset,
    /// Handler state at the snapshot.
    pub state: StateEntries,
    /// Encoded `LogEvent`s at offsets 1..=last_offset, with their offsets.
    pub events: Vec<(LogOffset, Vec<u8>)>,
}

impl SnapshotContent {
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::frame(&encode(self))
    }

    pub fn from_bytes(partition: PartitionId, bytes: &[u8]) -> Result<Self, StoreError> {
        let payload = codec::unframe("snapshot data", &partition.0.to_be_bytes(), bytes)?;
        decode("snapshot data", payload)
    }
}

/// What [`cf::SNAPSHOTS`] keeps of the partition's current snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub meta: SnapshotMeta,
    pub last_offset: LogOffset,
    pub state: StateEntries,
}

pub(crate) fn manifest_key(p: PartitionId) -> Vec<u8> {
    codec::partition_start(p)
}

pub(crate) fn read_manifest(
    engine: &Engine,
    p: PartitionId,
) -> Result<Option<SnapshotManifest>, StoreError> {
    engine
        .get(cf::SNAPSHOTS, &manifest_key(p))?
        .map(|bytes| decode("snapshot manifest", &bytes))
        .transpose()
}

/// Read a partition's handler state through a RocksDB snapshot.
pub(crate) fn read_handler_state(
    engine: &Engine,
    snap: &SnapshotWithThreadMode<'_, DB>,
    p: PartitionId,
) -> Result<StateEntries, StoreError> {
    let prefix = codec::state_key(p, StateNs::Handler, b"");
    let end = codec::state_key(p, StateNs::Handler.next(), b"");
    scan(engine, snap, cf::STATE, &prefix, end)
        .map(|item| item.map(|(k, v)| (k[prefix.len()..].to_vec(), v)))
        .collect()
}

/// Read a partition's events `1..=last_offset` (checked), through a RocksDB snapshot if given.
pub(crate) fn read_events_upto(
    engine: &Engine,
    snap: &SnapshotWithThreadMode<'_, DB>,
    p: PartitionId,
    last_offset: LogOffset,
) -> Result<Vec<(LogOffset, Vec<u8>)>, StoreError> {
    let from = codec::event_key(p, LogOffset(1));
    let end = codec::event_key(p, last_offset.next()).to_vec();
    scan(engine, snap, cf::EVENTS, &from, end)
        .map(|item| {
            item.map(|(k, v)| {
                (
                    LogOffset(codec::key_u64(&k).expect("event keys are 12 bytes")),
                    v,
                )
            })
        })
        .collect()
}

fn scan<'a>(
    engine: &'a Engine,
    snap: &'a SnapshotWithThreadMode<'_, DB>,
    cf_name: &'a str,
    from: &[u8],
    end: Vec<u8>,
) -> impl Iterator<Item = Result<(Box<[u8]>, Vec<u8>), StoreError>> + 'a {
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end);
    snap.iterator_cf_opt(
        engine.cf(cf_name),
        ro,
        IteratorMode::From(from, rocksdb::Direction::Forward),
    )
    .map(move |item| {
        let (k, v) = item?;
        let payload = codec::unframe(cf_name, &k, &v)?.to_vec();
        Ok((k, payload))
    })
}
