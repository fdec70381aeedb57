//! Snapshots of a partition: what they contain, how they are read consistently, and how they
//! travel.
//!
//! A snapshot is the partition at an applied Raft log id: the handler's state and the event log
//! up to `last_offset`, exactly as RocksDB holds them. Nothing is copied to make one: a snapshot
//! is a RocksDB point-in-time view ([`OwnedView`], O(1) to take) plus the applied position read
//! through it, and its bytes are produced from that view only when they are read — when the
//! leader sends the snapshot to a follower that is behind the purged log. Building one therefore
//! costs the same at a thousand messages as at ten million, and never holds the write path: the
//! state machine's write lock is held only while the view is taken.
//!
//! Snapshot data (what travels to a follower) is the crc32-framed protobuf `SnapshotContent`
//! (proto/proto/log.proto) carrying the sender's data format, so a snapshot damaged in transit or
//! at rest fails its checksum, and one of a format this node does not read is refused, instead of
//! being installed.

use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chat_proto::log as pb;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

pub use crate::apply::StateEntries;
use crate::codec::{self, cf, StateNs};
use crate::engine::{DbSnapshot, Engine, OwnedView, StoreError};
use crate::types::{LogOffset, Node, NodeId, PartitionId};
use crate::wire::{decode, Malformed, Wire, DATA_FORMAT};

pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// The full contents of a partition snapshot, as sent to followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContent {
    pub last_offset: LogOffset,
    /// Handler state at the snapshot.
    pub state: StateEntries,
    /// Encoded `LogEvent`s at offsets 1..=last_offset, with their offsets.
    pub events: Vec<(LogOffset, Vec<u8>)>,
}

impl SnapshotContent {
    /// The framed bytes that travel. Consumes the content: a snapshot holds the partition's whole
    /// event log, which is moved into the message rather than copied.
    pub fn into_bytes(self) -> Vec<u8> {
        codec::frame(&prost::Message::encode_to_vec(&self.into_pb()))
    }

    fn into_pb(self) -> pb::SnapshotContent {
        pb::SnapshotContent {
            format: DATA_FORMAT,
            last_offset: self.last_offset.0,
            state: state_pb(&self.state),
            events: self
                .events
                .into_iter()
                .map(|(offset, event)| pb::SnapshotEvent {
                    offset: offset.0,
                    event,
                })
                .collect(),
        }
    }

    pub fn from_bytes(partition: PartitionId, bytes: &[u8]) -> Result<Self, StoreError> {
        let payload = codec::unframe("snapshot data", &partition.0.to_be_bytes(), bytes)?;
        decode("snapshot data", payload)
    }
}

fn state_pb(state: &StateEntries) -> Vec<pb::StateEntry> {
    state
        .iter()
        .map(|(key, value)| pb::StateEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn state_from(state: Vec<pb::StateEntry>) -> StateEntries {
    state.into_iter().map(|e| (e.key, e.value)).collect()
}

impl Wire for SnapshotContent {
    type Pb = pb::SnapshotContent;
    fn to_pb(&self) -> pb::SnapshotContent {
        self.clone().into_pb()
    }
    fn from_pb(pb: pb::SnapshotContent) -> Result<Self, Malformed> {
        if pb.format != DATA_FORMAT {
            return Err(Malformed(format!(
                "snapshot of data format {}; this node reads format {DATA_FORMAT}",
                pb.format
            )));
        }
        Ok(SnapshotContent {
            last_offset: LogOffset(pb.last_offset),
            state: state_from(pb.state),
            events: pb
                .events
                .into_iter()
                .map(|e| (LogOffset(e.offset), e.event))
                .collect(),
        })
    }
}

/// The bytes of a partition snapshot as openraft sees them. A snapshot this node took is
/// *deferred*: its bytes are produced from its RocksDB view the first time the data is read,
/// written or sought. A snapshot being received is plain bytes.
pub struct SnapshotData {
    state: DataState,
}

enum DataState {
    Deferred {
        engine: Arc<Engine>,
        partition: PartitionId,
        view: OwnedView,
        last_offset: LogOffset,
    },
    Bytes(Cursor<Vec<u8>>),
}

impl SnapshotData {
    /// Empty data to receive a snapshot into.
    pub fn empty() -> Self {
        SnapshotData {
            state: DataState::Bytes(Cursor::new(Vec::new())),
        }
    }

    /// The snapshot of `partition` that `view` sees, whose event log ends at `last_offset`.
    pub(crate) fn deferred(
        engine: Arc<Engine>,
        partition: PartitionId,
        view: OwnedView,
        last_offset: LogOffset,
    ) -> Self {
        SnapshotData {
            state: DataState::Deferred {
                engine,
                partition,
                view,
                last_offset,
            },
        }
    }

    /// The snapshot's bytes, reading them from storage if they are deferred.
    pub fn into_bytes(mut self) -> Result<Vec<u8>, StoreError> {
        self.materialize()?;
        match self.state {
            DataState::Bytes(cursor) => Ok(cursor.into_inner()),
            DataState::Deferred { .. } => unreachable!("materialized above"),
        }
    }

    fn materialize(&mut self) -> Result<&mut Cursor<Vec<u8>>, StoreError> {
        if let DataState::Deferred {
            engine,
            partition,
            view,
            last_offset,
        } = &self.state
        {
            let content = SnapshotContent {
                last_offset: *last_offset,
                state: read_handler_state(engine, view.at(), *partition)?,
                events: read_events_upto(engine, view.at(), *partition, *last_offset)?,
            };
            metrics::counter!("chatd_snapshots_sent_total").increment(1);
            self.state = DataState::Bytes(Cursor::new(content.into_bytes()));
        }
        match &mut self.state {
            DataState::Bytes(cursor) => Ok(cursor),
            DataState::Deferred { .. } => unreachable!("just replaced"),
        }
    }

    fn cursor(self: Pin<&mut Self>) -> io::Result<Pin<&mut Cursor<Vec<u8>>>> {
        let this = self.get_mut();
        this.materialize().map(Pin::new).map_err(io::Error::other)
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.cursor() {
            Ok(c) => c.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.cursor() {
            Ok(c) => c.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        self.cursor()?.start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.cursor() {
            Ok(c) => c.poll_complete(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Where a release before 0.2.1 kept a copy of the partition's handler state per snapshot (cf
/// `snapshots`); nothing is written there now, and a leftover copy is deleted at open.
pub(crate) fn legacy_manifest_key(p: PartitionId) -> Vec<u8> {
    codec::partition_start(p)
}

/// Read a partition's handler state as of `at`.
pub(crate) fn read_handler_state(
    engine: &Engine,
    at: &DbSnapshot<'_>,
    p: PartitionId,
) -> Result<StateEntries, StoreError> {
    let prefix = codec::state_key(p, StateNs::Handler, b"");
    let end = codec::state_key(p, StateNs::Handler.next(), b"");
    engine
        .scan_at(Some(at), cf::STATE, &prefix, end)
        .map(|item| item.map(|(k, v)| (k[prefix.len()..].to_vec(), v)))
        .collect()
}

/// Read a partition's events `1..=last_offset` (checked) as of `at`.
pub(crate) fn read_events_upto(
    engine: &Engine,
    at: &DbSnapshot<'_>,
    p: PartitionId,
    last_offset: LogOffset,
) -> Result<Vec<(LogOffset, Vec<u8>)>, StoreError> {
    let from = codec::event_key(p, LogOffset(1));
    let end = codec::event_key(p, last_offset.next()).to_vec();
    engine
        .scan_at(Some(at), cf::EVENTS, &from, end)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_snapshot_data_fails_its_checksum() {
        let content = SnapshotContent {
            last_offset: LogOffset(2),
            state: vec![(b"k".to_vec(), b"v".to_vec())],
            events: vec![
                (LogOffset(1), b"one".to_vec()),
                (LogOffset(2), b"two".to_vec()),
            ],
        };
        let mut bytes = content.clone().into_bytes();
        assert_eq!(
            SnapshotContent::from_bytes(PartitionId(4), &bytes).unwrap(),
            content
        );
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        match SnapshotContent::from_bytes(PartitionId(4), &bytes) {
            Err(StoreError::Corrupt(c)) => assert!(c.detail.contains("checksum mismatch"), "{c}"),
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_of_another_data_format_is_refused() {
        let mut pb = SnapshotContent {
            last_offset: LogOffset(0),
            state: Vec::new(),
            events: Vec::new(),
        }
        .to_pb();
        pb.format = DATA_FORMAT + 1;
        let bytes = codec::frame(&prost::Message::encode_to_vec(&pb));
        let err = SnapshotContent::from_bytes(PartitionId(0), &bytes).unwrap_err();
        assert!(
            err.to_string().contains("snapshot of data format 2"),
            "{err}"
        );
    }
}
