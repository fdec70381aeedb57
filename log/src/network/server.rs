//! The server half of Raft RPC: routes each request to its partition's Raft instance.
//!
//! Bad input is answered, never fatal: an unknown partition is NOT_FOUND, an undecodable payload
//! INVALID_ARGUMENT, each with a message naming the RPC and the partition.

use std::sync::Arc;

use chat_proto::raft::raft_reply::Result as ReplyResult;
use chat_proto::raft::raft_service_server::RaftService;
use chat_proto::raft::{RaftReply, RaftRequest};
use openraft::error::RaftError;
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::store::TypeConfig;
use crate::types::{NodeId, PartitionId};

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

    fn route<T: DeserializeOwned>(
        &self,
        rpc: &str,
        request: Request<RaftRequest>,
    ) -> Result<(&Raft<TypeConfig>, T), Status> {
        let RaftRequest { partition, payload } = request.into_inner();
        let raft = self.groups.get(partition as usize).ok_or_else(|| {
            Status::not_found(format!(
                "{rpc}: partition {partition} does not exist (this node hosts partitions 0..{})",
                self.groups.len()
            ))
        })?;
        let decoded = bincode::deserialize(&payload).map_err(|e| {
            Status::invalid_argument(format!(
                "{rpc}: malformed payload for {} ({} bytes): {e}",
                PartitionId(partition),
                payload.len()
            ))
        })?;
        Ok((raft, decoded))
    }
}

fn reply<T: Serialize, E: Serialize>(
    result: Result<T, RaftError<NodeId, E>>,
) -> Result<Response<RaftReply>, Status> {
    let encode = |r: Result<Vec<u8>, bincode::Error>| {
        r.map_err(|e| Status::internal(format!("encode reply: {e}")))
    };
    let result = match result {
        Ok(v) => ReplyResult::Ok(encode(bincode::serialize(&v))?),
        Err(e) => ReplyResult::RaftError(encode(bincode::serialize(&e))?),
    };
    Ok(Response::new(RaftReply {
        result: Some(result),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc) = self.route("AppendEntries", request)?;
        reply(raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc) = self.route("Vote", request)?;
        reply(raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (raft, rpc) = self.route("InstallSnapshot", request)?;
        reply(raft.install_snapshot(rpc).await)
    }
}
