//! Raft RPC as `chat.raft.v1` messages: each openraft request and each reply (a response or the
//! remote Raft's error) converted both ways. The partition a request is for is set by the
//! caller after `to_pb` and read by the server before `from_pb`.
//!
//! Errors are mirrored as far as they drive behaviour: a snapshot chunk mismatch exactly (openraft
//! restarts the transfer from the expected segment), fatal errors by kind and message.

use chat_proto::raft as pb;
use openraft::error::{Fatal, Infallible, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, ErrorSubject, ErrorVerb, SnapshotSegmentId, StorageIOError, Vote};

use super::{opt_log_id, opt_log_id_pb, required, LogConfig, Malformed, Wire};
use crate::types::NodeId;

impl<C: LogConfig> Wire for AppendEntriesRequest<C> {
    type Pb = pb::AppendEntriesRequest;
    fn to_pb(&self) -> pb::AppendEntriesRequest {
        self.clone().into_pb()
    }
    fn into_pb(self) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest {
            partition: 0,
            vote: Some(self.vote.to_pb()),
            prev_log_id: opt_log_id_pb(&self.prev_log_id),
            entries: self.entries.into_iter().map(Wire::into_pb).collect(),
            leader_commit: opt_log_id_pb(&self.leader_commit),
        }
    }
    fn from_pb(pb: pb::AppendEntriesRequest) -> Result<Self, Malformed> {
        Ok(AppendEntriesRequest {
            vote: Vote::from_pb(required(pb.vote, "vote")?)?,
            prev_log_id: opt_log_id(pb.prev_log_id),
            entries: pb
                .entries
                .into_iter()
                .map(Wire::from_pb)
                .collect::<Result<_, _>>()?,
            leader_commit: opt_log_id(pb.leader_commit),
        })
    }
}

impl Wire for VoteRequest<NodeId> {
    type Pb = pb::VoteRequest;
    fn to_pb(&self) -> pb::VoteRequest {
        pb::VoteRequest {
            partition: 0,
            vote: Some(self.vote.to_pb()),
            last_log_id: opt_log_id_pb(&self.last_log_id),
        }
    }
    fn from_pb(pb: pb::VoteRequest) -> Result<Self, Malformed> {
        Ok(VoteRequest {
            vote: Vote::from_pb(required(pb.vote, "vote")?)?,
            last_log_id: opt_log_id(pb.last_log_id),
        })
    }
}

impl<C: LogConfig> Wire for InstallSnapshotRequest<C> {
    type Pb = pb::InstallSnapshotRequest;
    fn to_pb(&self) -> pb::InstallSnapshotRequest {
        self.clone().into_pb()
    }
    fn into_pb(self) -> pb::InstallSnapshotRequest {
        pb::InstallSnapshotRequest {
            partition: 0,
            vote: Some(self.vote.to_pb()),
            meta: Some(self.meta.to_pb()),
            offset: self.offset,
            data: self.data,
            done: self.done,
        }
    }
    fn from_pb(pb: pb::InstallSnapshotRequest) -> Result<Self, Malformed> {
        Ok(InstallSnapshotRequest {
            vote: Vote::from_pb(required(pb.vote, "vote")?)?,
            meta: Wire::from_pb(required(pb.meta, "snapshot meta")?)?,
            offset: pb.offset,
            data: pb.data,
            done: pb.done,
        })
    }
}

/// The API error half of a [`RaftError`]: what each RPC's remote Raft may refuse with besides a
/// fatal error.
pub(crate) trait ApiError: Sized {
    fn to_pb(&self) -> pb::raft_error::Error;
    fn from_pb(pb: pb::SnapshotMismatch) -> Result<Self, Malformed>;
}

impl ApiError for Infallible {
    fn to_pb(&self) -> pb::raft_error::Error {
        match *self {}
    }
    fn from_pb(_: pb::SnapshotMismatch) -> Result<Self, Malformed> {
        Err(Malformed(
            "a snapshot mismatch answering a non-snapshot RPC".into(),
        ))
    }
}

fn segment(s: &SnapshotSegmentId) -> pb::SnapshotSegment {
    pb::SnapshotSegment {
        snapshot_id: s.id.clone(),
        offset: s.offset,
    }
}

fn segment_from(s: Option<pb::SnapshotSegment>) -> Result<SnapshotSegmentId, Malformed> {
    let s = required(s, "snapshot segment")?;
    Ok(SnapshotSegmentId {
        id: s.snapshot_id,
        offset: s.offset,
    })
}

impl ApiError for InstallSnapshotError {
    fn to_pb(&self) -> pb::raft_error::Error {
        let InstallSnapshotError::SnapshotMismatch(m) = self;
        pb::raft_error::Error::SnapshotMismatch(pb::SnapshotMismatch {
            expect: Some(segment(&m.expect)),
            got: Some(segment(&m.got)),
        })
    }
    fn from_pb(pb: pb::SnapshotMismatch) -> Result<Self, Malformed> {
        Ok(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: segment_from(pb.expect)?,
            got: segment_from(pb.got)?,
        }))
    }
}

fn raft_error_pb<E: ApiError>(e: &RaftError<NodeId, E>) -> pb::RaftError {
    let error = match e {
        RaftError::APIError(api) => api.to_pb(),
        RaftError::Fatal(fatal) => {
            let kind = match fatal {
                Fatal::StorageError(_) => pb::FatalKind::Storage,
                Fatal::Panicked => pb::FatalKind::Panicked,
                Fatal::Stopped => pb::FatalKind::Stopped,
            };
            pb::raft_error::Error::Fatal(pb::Fatal {
                kind: kind.into(),
                message: fatal.to_string(),
            })
        }
    };
    pb::RaftError { error: Some(error) }
}

fn raft_error_from<E: ApiError>(pb: pb::RaftError) -> Result<RaftError<NodeId, E>, Malformed> {
    match required(pb.error, "raft error")? {
        pb::raft_error::Error::SnapshotMismatch(m) => Ok(RaftError::APIError(E::from_pb(m)?)),
        pb::raft_error::Error::Fatal(f) => {
            let fatal = match pb::FatalKind::try_from(f.kind) {
                Ok(pb::FatalKind::Panicked) => Fatal::Panicked,
                Ok(pb::FatalKind::Stopped) => Fatal::Stopped,
                // A remote storage error only informs this node; its message is what matters.
                _ => Fatal::StorageError(
                    StorageIOError::new(
                        ErrorSubject::Store,
                        ErrorVerb::Read,
                        AnyError::error(f.message),
                    )
                    .into(),
                ),
            };
            Ok(RaftError::Fatal(fatal))
        }
    }
}

impl Wire for Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
    type Pb = pb::AppendEntriesReply;
    fn to_pb(&self) -> pb::AppendEntriesReply {
        use pb::append_entries_reply::Result as R;
        let result = match self {
            Ok(AppendEntriesResponse::Success) => R::Success(pb::Empty {}),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                R::PartialSuccess(pb::PartialSuccess {
                    matching: opt_log_id_pb(matching),
                })
            }
            Ok(AppendEntriesResponse::Conflict) => R::Conflict(pb::Empty {}),
            Ok(AppendEntriesResponse::HigherVote(v)) => R::HigherVote(v.to_pb()),
            Err(e) => R::Error(raft_error_pb(e)),
        };
        pb::AppendEntriesReply {
            result: Some(result),
        }
    }
    fn from_pb(pb: pb::AppendEntriesReply) -> Result<Self, Malformed> {
        use pb::append_entries_reply::Result as R;
        Ok(match required(pb.result, "append-entries result")? {
            R::Success(_) => Ok(AppendEntriesResponse::Success),
            R::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id(
                p.matching,
            ))),
            R::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
            R::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(Vote::from_pb(v)?)),
            R::Error(e) => Err(raft_error_from(e)?),
        })
    }
}

impl Wire for Result<VoteResponse<NodeId>, RaftError<NodeId>> {
    type Pb = pb::VoteReply;
    fn to_pb(&self) -> pb::VoteReply {
        use pb::vote_reply::Result as R;
        let result = match self {
            Ok(v) => R::Ok(pb::VoteResponse {
                vote: Some(v.vote.to_pb()),
                vote_granted: v.vote_granted,
                last_log_id: opt_log_id_pb(&v.last_log_id),
            }),
            Err(e) => R::Error(raft_error_pb(e)),
        };
        pb::VoteReply {
            result: Some(result),
        }
    }
    fn from_pb(pb: pb::VoteReply) -> Result<Self, Malformed> {
        use pb::vote_reply::Result as R;
        Ok(match required(pb.result, "vote result")? {
            R::Ok(v) => Ok(VoteResponse {
                vote: Vote::from_pb(required(v.vote, "vote")?)?,
                vote_granted: v.vote_granted,
                last_log_id: opt_log_id(v.last_log_id),
            }),
            R::Error(e) => Err(raft_error_from(e)?),
        })
    }
}

impl Wire for Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
    type Pb = pb::InstallSnapshotReply;
    fn to_pb(&self) -> pb::InstallSnapshotReply {
        use pb::install_snapshot_reply::Result as R;
        let result = match self {
            Ok(r) => R::Vote(r.vote.to_pb()),
            Err(e) => R::Error(raft_error_pb(e)),
        };
        pb::InstallSnapshotReply {
            result: Some(result),
        }
    }
    fn from_pb(pb: pb::InstallSnapshotReply) -> Result<Self, Malformed> {
        use pb::install_snapshot_reply::Result as R;
        Ok(match required(pb.result, "install-snapshot result")? {
            R::Vote(v) => Ok(InstallSnapshotResponse {
                vote: Vote::from_pb(v)?,
            }),
            R::Error(e) => Err(raft_error_from(e)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError};

    use super::*;
    use crate::types::Proposal;
    use crate::wire::tests::TypeConfig;

    /// Compared through `Debug`: openraft's requests do not implement `PartialEq`.
    fn round_trip<T: Wire + std::fmt::Debug>(value: T) {
        let back = T::from_pb(value.to_pb()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
    }

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn requests_and_replies_round_trip() {
        round_trip(AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(id(3, 9)),
            entries: vec![
                Entry {
                    log_id: id(3, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: id(3, 11),
                    payload: EntryPayload::Normal(Proposal {
                        timestamp_ms: 42,
                        commands: vec![b"c".to_vec()],
                    }),
                },
            ],
            leader_commit: None,
        });
        round_trip(VoteRequest::new(Vote::new(4, 2), None));
        for reply in [
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::PartialSuccess(Some(id(2, 7)))),
            Ok(AppendEntriesResponse::PartialSuccess(None)),
            Ok(AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::HigherVote(Vote::new(8, 3))),
            Err(RaftError::Fatal(Fatal::Stopped)),
            Err(RaftError::Fatal(Fatal::Panicked)),
        ] {
            round_trip(reply);
        }
        round_trip(Ok::<_, RaftError<NodeId>>(VoteResponse {
            vote: Vote::new(4, 2),
            vote_granted: true,
            last_log_id: Some(id(4, 4)),
        }));
        round_trip(Err::<InstallSnapshotResponse<NodeId>, _>(
            RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "a".into(),
                    offset: 4096,
                },
            })),
        ));
    }

    #[test]
    fn a_remote_storage_error_keeps_its_message() {
        let storage: StorageError<NodeId> = StorageIOError::new(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            AnyError::error("disk on fire"),
        )
        .into();
        let reply: Result<VoteResponse<NodeId>, _> =
            Err(RaftError::Fatal(Fatal::StorageError(storage)));
        let back = <Result<VoteResponse<NodeId>, RaftError<NodeId>>>::from_pb(reply.to_pb());
        let err = back.unwrap().unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    #[test]
    fn a_request_without_a_vote_is_malformed() {
        let err = VoteRequest::<NodeId>::from_pb(pb::VoteRequest::default()).unwrap_err();
        assert_eq!(err.to_string(), "missing vote");
    }
}
