//! The client half of Raft RPC: openraft's [`RaftNetworkFactory`] and [`RaftNetwork`] over tonic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::protocol::is_protocol_mismatch;
use chat_proto::raft::placement_client::PlacementClient;
use chat_proto::raft::replica_client::ReplicaClient;
use chat_proto::raft::{self as pb, raft_service_client::RaftServiceClient};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::auth::{address_to, secret_header, with_secret};
use super::link::{self, PeerLink};
use super::mux::MuxError;
use super::reach::PeerReach;
use super::MAX_MESSAGE_BYTES;
use crate::store::TypeConfig;
use crate::types::{Node, NodeId, PartitionId};
use crate::wire::Wire;

/// The shared tonic channels to every peer node, one per (node, address), and the replication
/// link over each.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    links: Arc<Mutex<HashMap<(NodeId, String), PeerLink>>>,
    secret: MetadataValue<Ascii>,
    local_ip: Option<IpAddr>,
    dialer: chat_tls::Dialer,
    reach: PeerReach,
}

impl PeerChannels {
    /// `local_ip`, if given, is the source address of outgoing connections (so fault injection
    /// can tell the links between nodes apart); `dialer` says whether they go through TLS.
    pub fn new(
        secret: &str,
        local_ip: Option<IpAddr>,
        dialer: chat_tls::Dialer,
    ) -> Result<Self, String> {
        Ok(PeerChannels {
            channels: Arc::default(),
            links: Arc::default(),
            secret: secret_header(secret)?,
            local_ip,
            dialer,
            reach: PeerReach::default(),
        })
    }

    /// Which peers answer this node's Raft calls.
    pub(crate) fn reach(&self) -> &PeerReach {
        &self.reach
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
            // A peer cut off without closing the connection fails its open streams (a remote
            // `Tail`) within seconds, not after the 20 s default.
            .keep_alive_timeout(Duration::from_secs(3));
        let ch = self.dialer.lazy(endpoint, self.local_ip);
        channels.insert((target, addr.to_string()), ch.clone());
        Ok(ch)
    }

    /// A client of `target`'s placement service at `addr`, and the secret to send with each
    /// request (over the same channel as Raft).
    pub(crate) fn placement(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<(PlacementClient<Channel>, MetadataValue<Ascii>), String> {
        let client = PlacementClient::new(self.channel(target, addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok((client, self.secret.clone()))
    }

    /// A client of `target`'s replica-read service at `addr`, and the secret to send.
    pub(crate) fn replica(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<(ReplicaClient<Channel>, MetadataValue<Ascii>), String> {
        let client = ReplicaClient::new(self.channel(target, addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok((client, self.secret.clone()))
    }

    /// The replication link to `target` at `addr`, started on first use.
    fn link(&self, target: NodeId, addr: &str) -> Result<PeerLink, String> {
        let mut links = self.links.lock().expect("peer link map lock");
        if let Some(link) = links.get(&(target, addr.to_string())) {
            return Ok(link.clone());
        }
        let link = link::start(
            target,
            raft_client(self.channel(target, addr)?),
            self.secret.clone(),
        );
        links.insert((target, addr.to_string()), link.clone());
        Ok(link)
    }
}

fn raft_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Most bytes of entries one AppendEntries carries. openraft hands the network up to
/// `max_payload_entries` (300) entries at once and cancels the call after one heartbeat
/// interval; a learner catching up on a long log would be sent 300 entries of up to 4 MiB each
/// and never answer in time. The follower must append and sync this much within the deadline.
const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Keep the longest prefix of `entries` within [`MAX_APPEND_BYTES`] (at least one entry). If
/// any were cut, the log id of the last one kept: the call then answers openraft's
/// `PartialSuccess` up to it, and openraft sends the rest next.
fn bound_entries(
    entries: &mut Vec<openraft::Entry<TypeConfig>>,
) -> Option<openraft::LogId<NodeId>> {
    let mut bytes = 0;
    let keep = entries
        .iter()
        .position(|entry| {
            bytes += match &entry.payload {
                openraft::EntryPayload::Normal(p) => p.commands.iter().map(Vec::len).sum(),
                _ => 0,
            };
            bytes > MAX_APPEND_BYTES
        })
        .map(|cut| cut.max(1))?;
    if keep >= entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
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
        let client = self.peers.channel(target, &node.addr).map(raft_client);
        let link = self.peers.link(target, &node.addr);
        PeerClient {
            partition: self.partition,
            target,
            client,
            link,
            secret: self.peers.secret.clone(),
            protocol_refused: false,
            reach: self.peers.reach.clone(),
        }
    }
}

/// Raft RPC to one peer for one partition.
pub struct PeerClient {
    partition: PartitionId,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    /// AppendEntries go over the peer's shared replication stream.
    link: Result<PeerLink, String>,
    secret: MetadataValue<Ascii>,
    /// Whether the peer has refused this node's protocol version (logged once per client, not
    /// on every heartbeat).
    protocol_refused: bool,
    /// Where AppendEntries answered or not is recorded (every heartbeat is one).
    reach: PeerReach,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerClient {
    /// Send one RPC: `send` makes the tonic call; the reply is converted back to openraft's terms,
    /// and the remote Raft's refusal becomes a `RemoteError`.
    async fn call<Req, Reply, Resp, E, Fut>(
        &mut self,
        rpc: &'static str,
        req: Req,
        ttl: Duration,
        send: impl FnOnce(RaftServiceClient<Channel>, tonic::Request<Req::Pb>) -> Fut,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Wire,
        Req::Pb: WithPartition,
        Reply: Wire + Into<Result<Resp, RaftError<NodeId, E>>>,
        E: std::error::Error,
        Fut: std::future::Future<Output = Result<tonic::Response<Reply::Pb>, tonic::Status>>,
    {
        let network = |msg: String| RPCError::Network(NetworkError::new(&Message(msg)));
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let mut message = req.into_pb();
        message.set_partition(self.partition);
        let mut request = with_secret(message, &self.secret);
        address_to(&mut request, self.target);
        request.set_timeout(ttl);
        let reply = match send(client, request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                    "node {} unreachable: {}",
                    self.target,
                    status.message()
                )))))
            }
            Err(status) if is_protocol_mismatch(&status) => {
                // Retrying cannot help until one of the two nodes is upgraded: back off.
                if !std::mem::replace(&mut self.protocol_refused, true) {
                    tracing::error!(partition = %self.partition, target = self.target, "{rpc} refused: {}", status.message());
                }
                return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                    "node {} refused this node's protocol: {}",
                    self.target,
                    status.message()
                )))));
            }
            Err(status) => return Err(network(format!("{rpc} to node {}: {status}", self.target))),
        };
        let reply = Reply::from_pb(reply)
            .map_err(|e| network(format!("{rpc} reply from node {}: {e}", self.target)))?;
        reply
            .into()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A Raft request message that names its partition.
trait WithPartition {
    fn set_partition(&mut self, p: PartitionId);
}

macro_rules! with_partition {
    ($($t:ty),*) => {$(
        impl WithPartition for $t {
            fn set_partition(&mut self, p: PartitionId) {
                self.partition = p.0;
            }
        }
    )*};
}
with_partition!(pb::VoteRequest, pb::InstallSnapshotRequest);

type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
type VoteReply = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
type SnapshotReply =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// How long a leader waits before trying an unreachable peer again. openraft's default is
/// 500 ms; a peer that was down and has just restarted must hear from its leaders before its own
/// election timeout (a few hundred ms) runs out, or it starts an election that unseats them.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(100);
/// The same, for a peer that refused our protocol version: only an upgrade changes that.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

impl RaftNetwork<TypeConfig> for PeerClient {
    fn backoff(&self) -> Backoff {
        let every = if self.protocol_refused {
            REFUSED_RETRY
        } else {
            UNREACHABLE_RETRY
        };
        Backoff::new(std::iter::repeat(every))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let network = |msg: String| RPCError::Network(NetworkError::new(&Message(msg)));
        let unreachable = |msg: String| RPCError::Unreachable(Unreachable::new(&Message(msg)));
        let link = self.link.clone().map_err(unreachable)?;
        let sent_up_to = bound_entries(&mut rpc.entries);
        let mut request = rpc.into_pb();
        request.partition = self.partition.0;
        let Ok(answer) = tokio::time::timeout(option.hard_ttl(), link.call(request)).await else {
            self.reach.unanswered(self.target);
            return Err(network(format!(
                "AppendEntries to node {} timed out after {:?}",
                self.target,
                option.hard_ttl()
            )));
        };
        let reply = match answer {
            Ok(reply) => {
                self.reach.answered(self.target);
                reply
            }
            Err(MuxError::Unreachable(why)) => {
                self.reach.unanswered(self.target);
                return Err(unreachable(why));
            }
            Err(MuxError::ProtocolRefused(why)) => return Err(unreachable(why)),
            Err(MuxError::Refused(status)) => {
                return Err(network(format!(
                    "AppendEntries refused by node {}: {}",
                    self.target,
                    status.message()
                )))
            }
        };
        let reply = AppendReply::from_pb(reply).map_err(|e| {
            network(format!(
                "AppendEntries reply from node {}: {e}",
                self.target
            ))
        })?;
        let reply = reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        Ok(match (reply, sent_up_to) {
            // The follower took what was sent, which is not all openraft asked for.
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (reply, _) => reply,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call::<_, SnapshotReply, _, _, _>(
            "InstallSnapshot",
            rpc,
            option.hard_ttl(),
            |mut c, r| async move { c.install_snapshot(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call::<_, VoteReply, _, _, _>("Vote", rpc, option.hard_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }
}
