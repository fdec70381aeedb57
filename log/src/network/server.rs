//! The server half of Raft RPC: routes each request to its partition's Raft.
//!
//! Bad input is answered, never fatal: an unknown partition is NOT_FOUND, a request missing what
//! openraft needs (a vote, a snapshot's meta) INVALID_ARGUMENT, each with a message naming the
//! RPC and the partition. Bytes that are not protobuf at all are refused by tonic's codec.

use std::sync::Arc;

use std::pin::Pin;

use chat_proto::raft::raft_service_server::RaftService;
use chat_proto::raft::{
    append_answer, AppendAnswer, AppendAnswers, AppendBatch, AppendEntriesReply,
    AppendEntriesRequest, InstallSnapshotReply, InstallSnapshotRequest, VoteReply, VoteRequest,
};
use futures::{Stream, StreamExt};
use openraft::Raft;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::store::TypeConfig;
use crate::types::PartitionId;
use crate::wire::Wire;

/// Serves Raft RPC for every partition of a node.
#[derive(Clone)]
pub struct RaftServer {
    groups: Arc<[Raft<TypeConfig>]>,
}

impl RaftServer {
    /// `groups[p]` is the Raft instance of partition `p`.
    pub fn new(groups: Arc<[Raft<TypeConfig>]>) -> Self {
        RaftServer { groups }
    }

    /// The partition's Raft and the request in openraft's terms.
    fn route<T: Wire>(
        &self,
        rpc: &str,
        partition: u32,
        request: T::Pb,
    ) -> Result<(&Raft<TypeConfig>, T), Status> {
        let raft = self.groups.get(partition as usize).ok_or_else(|| {
            Status::not_found(format!(
                "{rpc}: partition {partition} does not exist (this node hosts partitions 0..{})",
                self.groups.len()
            ))
        })?;
        let request = T::from_pb(request).map_err(|e| {
            Status::invalid_argument(format!(
                "{rpc}: malformed payload for {}: {e}",
                PartitionId(partition)
            ))
        })?;
        Ok((raft, request))
    }

    /// Answer one call of a replication stream.
    async fn answer(&self, id: u64, request: Option<AppendEntriesRequest>) -> AppendAnswer {
        let answer = match request {
            None => append_answer::Answer::Refused("a call without a request".into()),
            Some(request) => match self.route("AppendEntries", request.partition, request) {
                Ok((raft, rpc)) => {
                    append_answer::Answer::Reply(raft.append_entries(rpc).await.to_pb())
                }
                Err(status) => append_answer::Answer::Refused(status.message().to_string()),
            },
        };
        AppendAnswer {
            id,
            answer: Some(answer),
        }
    }
}

/// Most answers packed into one stream message.
const MAX_ANSWERS: usize = 256;

#[tonic::async_trait]
impl RaftService for RaftServer {
    type ReplicateStream = Pin<Box<dyn Stream<Item = Result<AppendAnswers, Status>> + Send>>;

    /// Each call runs on its own task (partitions must not wait for each other); answers that
    /// are ready together leave in one message. The answer stream ends once the peer has closed
    /// its side and every call is answered.
    async fn replicate(
        &self,
        request: Request<Streaming<AppendBatch>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let mut incoming = request.into_inner();
        let (answers, outgoing) = mpsc::unbounded_channel();
        let server = self.clone();
        tokio::spawn(async move {
            // A malformed message or a broken connection ends the stream; the peer opens another.
            while let Ok(Some(batch)) = incoming.message().await {
                for call in batch.calls {
                    let (server, answers) = (server.clone(), answers.clone());
                    tokio::spawn(async move {
                        let _ = answers.send(server.answer(call.id, call.request).await);
                    });
                }
            }
        });
        let stream = UnboundedReceiverStream::new(outgoing)
            .ready_chunks(MAX_ANSWERS)
            .map(|answers| Ok(AppendAnswers { answers }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn append_entries(
        &self,
        request: Request<AppendEntriesRequest>,
    ) -> Result<Response<AppendEntriesReply>, Status> {
        let request = request.into_inner();
        let (raft, rpc) = self.route("AppendEntries", request.partition, request)?;
        Ok(Response::new(raft.append_entries(rpc).await.to_pb()))
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
