//! The server half of Raft RPC: routes each request to its partition's Raft.
//!
//! Bad input is answered, never fatal: an unknown partition is NOT_FOUND, a request missing what
//! openraft needs (a vote, a snapshot's meta) INVALID_ARGUMENT, each with a message naming the
//! RPC and the partition. Bytes that are not protobuf at all are refused by tonic's codec.

use std::sync::Arc;

use std::pin::Pin;

use chat_proto::raft::raft_service_server::RaftService;
use chat_proto::raft::{
    append_answer, AppendAnswer, AppendAnswers, AppendBatch, AppendCall, AppendEntriesReply,
    AppendEntriesRequest, InstallSnapshotReply, InstallSnapshotRequest, VoteReply, VoteRequest,
};
use futures::Stream;
use openraft::Raft;
use tonic::{Request, Response, Status, Streaming};

use super::mux::answer_stream;

use crate::store::TypeConfig;
use crate::types::PartitionId;
use crate::wire::Wire;

/// The Raft groups a node runs, as the server sees them: which group takes a partition's RPC.
/// Groups open and close while the node runs (partitions move), so this is asked per request.
pub trait RaftGroups: Send + Sync + 'static {
    fn raft(&self, p: PartitionId) -> Option<Raft<TypeConfig>>;
    /// A leader of `p` as current as this node's vote was just heard from (an AppendEntries
    /// taken): what readiness goes by on a follower.
    fn heard_from_leader(&self, _p: PartitionId) {}
}

/// Serves Raft RPC for every group of a node.
#[derive(Clone)]
pub struct RaftServer {
    groups: Arc<dyn RaftGroups>,
    /// The cluster's partition count, to tell a partition that does not exist from one held
    /// elsewhere.
    partitions: u32,
}

impl RaftServer {
    pub fn new(groups: Arc<dyn RaftGroups>, partitions: u32) -> Self {
        RaftServer { groups, partitions }
    }

    /// The partition's Raft and the request in openraft's terms.
    fn route<T: Wire>(
        &self,
        rpc: &str,
        partition: u32,
        request: T::Pb,
    ) -> Result<(Raft<TypeConfig>, T), Status> {
        let p = PartitionId(partition);
        let raft = self.groups.raft(p).ok_or_else(|| {
            if partition >= self.partitions && p != PartitionId::META {
                Status::not_found(format!(
                    "{rpc}: partition {partition} does not exist (the cluster has {})",
                    self.partitions
                ))
            } else {
                Status::not_found(format!("{rpc}: {p} has no replica on this node"))
            }
        })?;
        let request = T::from_pb(request).map_err(|e| {
            Status::invalid_argument(format!(
                "{rpc}: malformed payload for {}: {e}",
                PartitionId(partition)
            ))
        })?;
        Ok((raft, request))
    }

    /// Hand an AppendEntries to its group; one it takes (not refused for a stale vote) is news
    /// from a current leader.
    async fn append(
        &self,
        partition: u32,
        raft: Raft<TypeConfig>,
        rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> AppendEntriesReply {
        let result = raft.append_entries(rpc).await;
        if matches!(&result, Ok(reply) if !matches!(reply, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.groups.heard_from_leader(PartitionId(partition));
        }
        result.to_pb()
    }

    /// Answer one call of a replication stream.
    async fn answer(&self, id: u64, request: Option<AppendEntriesRequest>) -> AppendAnswer {
        let answer = match request {
            None => append_answer::Answer::Refused("a call without a request".into()),
            Some(request) => {
                let partition = request.partition;
                match self.route("AppendEntries", partition, request) {
                    Ok((raft, rpc)) => {
                        append_answer::Answer::Reply(self.append(partition, raft, rpc).await)
                    }
                    Err(status) => append_answer::Answer::Refused(status.message().to_string()),
                }
            }
        };
        AppendAnswer {
            id,
            answer: Some(answer),
        }
    }
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    type ReplicateStream = Pin<Box<dyn Stream<Item = Result<AppendAnswers, Status>> + Send>>;

    /// AppendEntries of every partition, answered as each partition's Raft finishes.
    async fn replicate(
        &self,
        request: Request<Streaming<AppendBatch>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let server = self.clone();
        Ok(Response::new(answer_stream(
            request.into_inner(),
            |batch| batch.calls,
            move |call: AppendCall| {
                let server = server.clone();
                async move { server.answer(call.id, call.request).await }
            },
            |answers| AppendAnswers { answers },
        )))
    }

    async fn append_entries(
        &self,
        request: Request<AppendEntriesRequest>,
    ) -> Result<Response<AppendEntriesReply>, Status> {
        let request = request.into_inner();
        let partition = request.partition;
        let (raft, rpc) = self.route("AppendEntries", partition, request)?;
        Ok(Response::new(self.append(partition, raft, rpc).await))
    }

    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let request = request.into_inner();
        let (raft, rpc) = self.route("Vote", request.partition, request)?;
        Ok(Response::new(raft.vote(rpc).await.to_pb()))
    }

    async fn install_snapshot(
        &self,
        request: Request<InstallSnapshotRequest>,
    ) -> Result<Response<InstallSnapshotReply>, Status> {
        let request = request.into_inner();
        let (raft, rpc) = self.route("InstallSnapshot", request.partition, request)?;
        Ok(Response::new(raft.install_snapshot(rpc).await.to_pb()))
    }
}
