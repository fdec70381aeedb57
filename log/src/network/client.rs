//! The client half of Raft RPC: openraft's [`RaftNetworkFactory`] and [`RaftNetwork`] over tonic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::raft::raft_reply::Result as ReplyResult;
use chat_proto::raft::raft_service_client::RaftServiceClient;
use chat_proto::raft::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::auth::{secret_header, with_secret};
use super::MAX_MESSAGE_BYTES;
use crate::store::TypeConfig;
use crate::types::{Node, NodeId, PartitionId};

/// The shared tonic channels to every peer node, one per (node, address).
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    secret: MetadataValue<Ascii>,
    local_ip: Option<IpAddr>,
}

impl PeerChannels {
    /// `local_ip`, if given, is the source address of outgoing connections (so fault injection
    /// can tell the links between nodes apart).
    pub fn new(secret: &str, local_ip: Option<IpAddr>) -> Result<Self, String> {
        Ok(PeerChannels {
            channels: Arc::default(),
            secret: secret_header(secret)?,
            local_ip,
        })
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("peer channel map lock");
        if let Some(ch) = channels.get(&(target, addr.to_string())) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr:?} for node {target}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .local_address(self.local_ip);
        let ch = endpoint.connect_lazy();
        channels.insert((target, addr.to_string()), ch.clone());
        Ok(ch)
    }
}

/// Creates the per-peer clients of one partition's Raft.
pub struct NetworkFactory {
    partition: PartitionId,
    peers: PeerChannels,
}

impl NetworkFactory {
    pub fn new(partition: PartitionId, peers: PeerChannels) -> Self {
        NetworkFactory { partition, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let client = self.peers.channel(target, &node.addr).map(|ch| {
            RaftServiceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerClient {
            partition: self.partition,
            target,
            client,
            secret: self.peers.secret.clone(),
        }
    }
}

/// Raft RPC to one peer for one partition.
pub struct PeerClient {
    partition: PartitionId,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    secret: MetadataValue<Ascii>,
}

#[derive(Copy, Clone, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let network = |msg: String| RPCError::Network(NetworkError::new(&Message(msg)));
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let payload =
            bincode::serialize(req).map_err(|e| network(format!("encode {rpc:?}: {e}")))?;
        let mut request = with_secret(
            RaftRequest {
                partition: self.partition.0,
                payload,
            },
            &self.secret,
        );
        request.set_timeout(ttl);
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply: RaftReply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                    "node {} unreachable: {}",
                    self.target,
                    status.message()
                )))))
            }
            Err(status) => {
                return Err(network(format!(
                    "{rpc:?} to node {}: {status}",
                    self.target
                )))
            }
        };
        match reply.result {
            Some(ReplyResult::Ok(bytes)) => bincode::deserialize(&bytes)
                .map_err(|e| network(format!("decode {rpc:?} reply: {e}"))),
            Some(ReplyResult::RaftError(bytes)) => {
                let err: RaftError<NodeId, E> = bincode::deserialize(&bytes)
                    .map_err(|e| network(format!("decode {rpc:?} error: {e}")))?;
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            None => Err(network(format!(
                "{rpc:?} reply from node {} has no result",
                self.target
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
