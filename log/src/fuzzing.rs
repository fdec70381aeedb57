//! Every decoder of the log that takes bytes from outside the process, callable on arbitrary
//! bytes by the fuzz tests (`log/tests/fuzz.rs`): what a disk gives back (a stored value behind
//! its crc32 frame, and the payload behind a frame that happens to check), what another node
//! sends (the Raft RPC requests and replies), and what a snapshot stream carries. Each answers
//! `Ok` or an error; a panic, a hang, or memory the input does not justify is what a fuzzer
//! looks for. Only with the `testing` feature.

use chat_proto::log::LogEvent;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;

use crate::codec::{self, cf};
use crate::store::snapshot::{PartReader, SnapshotContent, STREAM_MAGIC};
use crate::store::TypeConfig;
use crate::types::{LogOffset, NodeId, PartitionId, Proposal};
use crate::wire::{decode, encode};

/// What a fuzz input is decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A stored Raft log entry, as read back: frame, then entry.
    RaftLogValue,
    /// A stored vote or log id (Raft meta), as read back.
    RaftMetaValue,
    /// A stored event, as read back.
    EventValue,
    /// An AppendEntries request from another node.
    AppendEntries,
    /// A Vote request.
    Vote,
    /// An InstallSnapshot request.
    InstallSnapshot,
    /// The replies to those three, as the sender reads them.
    Replies,
    /// A snapshot stream as a follower receives it.
    SnapshotStream,
}

impl Target {
    /// Whether the target is a stored value (a crc32 frame around a payload).
    pub fn is_framed(self) -> bool {
        matches!(
            self,
            Target::RaftLogValue | Target::RaftMetaValue | Target::EventValue
        )
    }

    pub const ALL: [Target; 8] = [
        Target::RaftLogValue,
        Target::RaftMetaValue,
        Target::EventValue,
        Target::AppendEntries,
        Target::Vote,
        Target::InstallSnapshot,
        Target::Replies,
        Target::SnapshotStream,
    ];
}

/// Decode `bytes` as `target`.
pub fn decode_as(target: Target, bytes: &[u8]) -> Result<(), String> {
    let err = |e: crate::engine::StoreError| e.to_string();
    match target {
        Target::RaftLogValue => {
            let payload = unframe(cf::RAFT_LOG, bytes)?;
            decode::<Entry<TypeConfig>>("raft log entry", payload).map_err(err)?;
        }
        Target::RaftMetaValue => {
            let payload = unframe(cf::RAFT_META, bytes)?;
            let vote = decode::<Vote<NodeId>>("vote", payload).map(drop);
            let log_id = decode::<Option<LogId<NodeId>>>("log id", payload).map(drop);
            vote.or(log_id).map_err(err)?;
        }
        Target::EventValue => {
            let payload = unframe(cf::EVENTS, bytes)?;
            LogEvent::decode(payload).map_err(|e| e.to_string())?;
        }
        Target::AppendEntries => {
            decode::<AppendEntriesRequest<TypeConfig>>("append entries", bytes).map_err(err)?;
        }
        Target::Vote => {
            decode::<VoteRequest<NodeId>>("vote request", bytes).map_err(err)?;
        }
        Target::InstallSnapshot => {
            decode::<InstallSnapshotRequest<TypeConfig>>("install snapshot", bytes).map_err(err)?;
        }
        Target::Replies => {
            let append = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(
                "append reply",
                bytes,
            )
            .map(drop);
            let vote =
                decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>("vote reply", bytes)
                    .map(drop);
            let install = decode::<
                Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
            >("install reply", bytes)
            .map(drop);
            append.or(vote).or(install).map_err(err)?;
        }
        Target::SnapshotStream => {
            let mut reader = PartReader::new(PartitionId(0), bytes).map_err(err)?;
            while reader.next_part().map_err(err)?.is_some() {}
        }
    }
    Ok(())
}

/// `payload` in the crc32 frame every stored value has: a fuzz input whose frame checks, so
/// the decoder behind it is reached (random bytes almost never pass a crc32).
pub fn framed(payload: &[u8]) -> Vec<u8> {
    codec::frame(payload)
}

fn unframe<'a>(family: &str, value: &'a [u8]) -> Result<&'a [u8], String> {
    codec::unframe(family, b"fuzz", value).map_err(|e| e.to_string())
}

/// A valid encoding of each target, to start mutations from; for the stored values
/// ([`Target::is_framed`]) the payload without its frame.
pub fn seed(target: Target) -> Vec<u8> {
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
    let entry = Entry::<TypeConfig> {
        log_id,
        payload: EntryPayload::Normal(Proposal {
            timestamp_ms: 1_700_000_000_000,
            commands: vec![b"one".to_vec(), vec![1, 0, 2, 0xff]],
        }),
    };
    match target {
        Target::RaftLogValue => encode(&entry),
        Target::RaftMetaValue => encode(&Vote::<NodeId>::new(3, 1)),
        Target::EventValue => LogEvent {
            offset: 7,
            raft_index: 42,
            timestamp_ms: 1_700_000_000_000,
            payload: b"hello".to_vec().into(),
            ..Default::default()
        }
        .encode_to_vec(),
        Target::AppendEntries => encode(&AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41)),
            entries: vec![entry],
            leader_commit: Some(log_id),
        }),
        Target::Vote => encode(&VoteRequest::<NodeId>::new(Vote::new(4, 2), Some(log_id))),
        Target::InstallSnapshot => {
            let content = SnapshotContent {
                last_offset: LogOffset(9),
                state: Default::default(),
                events: vec![(LogOffset(9), b"event".to_vec())],
            };
            encode(&InstallSnapshotRequest::<TypeConfig> {
                vote: Vote::new_committed(3, 1),
                meta: openraft::SnapshotMeta {
                    last_log_id: Some(log_id),
                    last_membership: Default::default(),
                    snapshot_id: "3-1-42".into(),
                },
                offset: 0,
                data: content.into_frame(),
                done: true,
            })
        }
        Target::Replies => encode(&Ok::<_, RaftError<NodeId>>(VoteResponse::<NodeId>::new(
            Vote::new(4, 2),
            Some(log_id),
            true,
        ))),
        Target::SnapshotStream => {
            let part = SnapshotContent {
                last_offset: LogOffset(2),
                state: vec![(b"k".to_vec(), b"v".to_vec())],
                events: vec![(LogOffset(1), b"a".to_vec()), (LogOffset(2), b"b".to_vec())],
            }
            .into_frame();
            let mut stream = STREAM_MAGIC.to_vec();
            stream.extend_from_slice(&(part.len() as u32).to_le_bytes());
            stream.extend_from_slice(&part);
            stream.extend_from_slice(&[0; 4]);
            stream
        }
    }
}
