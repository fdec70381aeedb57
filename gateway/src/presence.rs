//! Cluster-wide presence. A user is online when any node holds a stream of one of its devices,
//! and was last seen when its last stream on any node closed. Each node knows its own streams
//! (the hub), and, as the *home* of some users, where every stream of those users is held (the
//! connection registry, `registry.rs`). A lookup asks each user's home — one node per user,
//! batched per home, whatever the cluster's size — and merges this node's own streams in. For
//! the users whose home does not answer or may not have heard from every node yet (it just
//! started, or the node set just changed), it falls back to asking every peer for the streams
//! it holds itself (`LocalPresence`); a peer that does not answer within a short timeout is left
//! out (a down node holds no streams). Nodes are the partition map's (`chat.v1.GatewayPeer`,
//! behind the cluster secret).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_log::{LogNode, NodeId, PartitionId};
use chat_model::ids::{DeviceId, UserId};
use chat_projector::Projector;
use chat_proto::chat_v1::gateway_peer_client::GatewayPeerClient;
use chat_proto::chat_v1::gateway_peer_server::{GatewayPeer, GatewayPeerServer};
use chat_proto::chat_v1::{self as pb};
use chat_proto::AttachSecret;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::gateway::Gateway;
use crate::hub::{Hub, Presence, Push};
use crate::registry::{home_of, Registry};
use crate::ticks;

/// How long a lookup waits for a peer.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on a peer connection while a stream is open, and how long one may go unanswered:
/// a peer cut off without closing its connection (a partition, a frozen process) fails the
/// long-lived streams (`WatchTicks`) within seconds instead of leaving them open and silent.
pub(crate) const PEER_KEEPALIVE: Duration = Duration::from_secs(2);
pub(crate) const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

type PeerClient = GatewayPeerClient<InterceptedService<Channel, AttachSecret>>;

/// Presence across the cluster, and this node's side of the connection registry.
pub struct ClusterPresence {
    hub: Arc<Hub>,
    secret: AttachSecret,
    /// Whose members are asked (this node excluded), and from which source address.
    node: Arc<LogNode>,
    clients: Mutex<HashMap<String, PeerClient>>,
    /// The streams of the users homed here.
    registry: Registry,
}

impl ClusterPresence {
    pub fn new(hub: Arc<Hub>, secret: AttachSecret, node: Arc<LogNode>) -> Self {
        ClusterPresence {
            hub,
            secret,
            node,
            clients: Mutex::default(),
            registry: Registry::default(),
        }
    }

    /// The registry of the users homed at this node.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The other nodes' addresses, as this node knows the cluster now.
    pub(crate) fn peers(&self) -> Vec<String> {
        let me = self.node.node_id();
        self.node
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, addr)| addr)
            .collect()
    }

    /// Node `id`'s address, if it is one of the cluster's nodes.
    pub(crate) fn node_address(&self, id: NodeId) -> Option<String> {
        self.node.members().remove(&id)
    }

    /// A client of the gateway at `addr` (one connection per peer, made on first use).
    pub(crate) fn peer(&self, addr: &str) -> Option<PeerClient> {
        let mut clients = self.clients.lock().expect("presence clients lock");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(PEER_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PEER_KEEPALIVE)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT);
        let channel = self.node.dialer().lazy(channel, self.node.bind_ip());
        let client = GatewayPeerClient::with_interceptor(channel, self.secret.clone());
        clients.insert(addr.to_string(), client.clone());
        Some(client)
    }

    /// Each user's presence: their home's answer merged with this node's own streams; for the
    /// users whose home cannot answer for sure, every peer's.
    pub async fn lookup(&self, users: &[UserId]) -> Vec<Presence> {
        let mut merged: Vec<Presence> = users.iter().map(|&u| self.hub.presence(u)).collect();
        let members = self.node.members();
        let me = self.node.node_id();
        // Request positions by home.
        let mut by_home: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (i, user) in users.iter().enumerate() {
            let home = home_of(*user, members.keys().copied()).unwrap_or(me);
            by_home.entry(home).or_default().push(i);
        }
        let asks = by_home.into_iter().map(|(home, positions)| {
            let asked: Vec<UserId> = positions.iter().map(|&i| users[i]).collect();
            let addr = members.get(&home).cloned();
            async move {
                let answer = if home == me {
                    self.registry
                        .complete()
                        .then(|| self.registry.presence(&asked))
                } else {
                    match addr {
                        Some(addr) => self.ask_home(home, &addr, &asked).await,
                        None => None,
                    }
                };
                (positions, answer)
            }
        });
        let mut unsure = Vec::new();
        for (positions, answer) in futures::future::join_all(asks).await {
            match answer {
                Some(found) => {
                    for (i, p) in positions.into_iter().zip(found) {
                        merged[i].merge(p);
                    }
                }
                None => unsure.extend(positions),
            }
        }
        if !unsure.is_empty() {
            let asked: Vec<UserId> = unsure.iter().map(|&i| users[i]).collect();
            for (i, p) in unsure.into_iter().zip(self.ask_everyone(&asked).await) {
                merged[i].merge(p);
            }
        }
        merged
    }

    /// What `home` knows of `users`, if it answers and has heard from every node.
    async fn ask_home(&self, home: NodeId, addr: &str, users: &[UserId]) -> Option<Vec<Presence>> {
        let mut client = self.peer(addr)?;
        let mut request = Request::new(pb::LocalPresenceRequest {
            user_ids: users.iter().map(|u| u.0).collect(),
        });
        request.set_timeout(PEER_TIMEOUT);
        let reply = match tokio::time::timeout(PEER_TIMEOUT, client.home_presence(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(home, %status, "presence: home did not answer; asking every node");
                return None;
            }
            Err(_) => return None,
        };
        (reply.complete && reply.users.len() == users.len())
            .then(|| reply.users.into_iter().map(presence_of).collect())
    }

    /// The streams every peer holds itself of `users`, merged (this node's own are merged by
    /// the caller).
    async fn ask_everyone(&self, users: &[UserId]) -> Vec<Presence> {
        let mut merged = vec![Presence::default(); users.len()];
        let request = pb::LocalPresenceRequest {
            user_ids: users.iter().map(|u| u.0).collect(),
        };
        let peers = self.peers();
        let asks = peers.iter().filter_map(|addr| {
            let mut client = self.peer(addr)?;
            let mut req = Request::new(request.clone());
            req.set_timeout(PEER_TIMEOUT);
            let addr = addr.clone();
            Some(async move {
                let answer = tokio::time::timeout(PEER_TIMEOUT, client.local_presence(req)).await;
                match answer {
                    Ok(Ok(reply)) => Some(reply.into_inner().users),
                    Ok(Err(status)) => {
                        tracing::debug!(peer = %addr, %status, "presence: peer did not answer");
                        None
                    }
                    Err(_) => None,
                }
            })
        });
        for answer in futures::future::join_all(asks).await.into_iter().flatten() {
            for (slot, theirs) in merged.iter_mut().zip(answer) {
                slot.merge(presence_of(theirs));
            }
        }
        merged
    }
}

fn presence_of(p: pb::UserPresence) -> Presence {
    Presence {
        last_seen_ms: p.last_seen_ms,
        devices: p.online_devices.into_iter().collect(),
    }
}

/// `p` as a peer or device reads it (handle left empty).
pub(crate) fn to_pb(user: u64, p: Presence) -> pb::UserPresence {
    pb::UserPresence {
        handle: String::new(),
        user_id: user,
        online: p.online(),
        last_seen_ms: p.last_seen_ms,
        online_devices: p.devices.into_iter().collect(),
    }
}

/// At most this many users per presence request between nodes.
const MAX_USERS_ASKED: usize = 10_000;

fn entries(list: Vec<pb::StreamEntry>) -> Vec<(UserId, DeviceId)> {
    list.into_iter()
        .map(|e| (UserId(e.user_id), DeviceId(e.device_id)))
        .collect()
}

/// Answers peers about this node's streams, and streams the tick changes of the partitions it
/// projects (see `ticks.rs`).
pub struct GatewayPeerService {
    hub: Arc<Hub>,
    presence: Arc<ClusterPresence>,
    node: Arc<LogNode>,
    projector: Arc<Projector>,
    gateway: std::sync::Weak<Gateway>,
}

impl GatewayPeerService {
    pub fn server(gateway: &Arc<Gateway>) -> GatewayPeerServer<GatewayPeerService> {
        GatewayPeerServer::new(GatewayPeerService {
            hub: gateway.hub.clone(),
            presence: gateway.presence.clone(),
            node: gateway.sequencer.node().clone(),
            projector: gateway.projector.clone(),
            gateway: Arc::downgrade(gateway),
        })
    }
}

#[tonic::async_trait]
impl GatewayPeer for GatewayPeerService {
    type WatchTicksStream = ReceiverStream<Result<pb::TickChange, Status>>;

    async fn watch_ticks(
        &self,
        request: Request<pb::WatchTicksRequest>,
    ) -> Result<Response<Self::WatchTicksStream>, Status> {
        let p = PartitionId(request.into_inner().partition);
        ticks::serve(self.node.clone(), &self.projector, p).map(Response::new)
    }

    async fn local_presence(
        &self,
        request: Request<pb::LocalPresenceRequest>,
    ) -> Result<Response<pb::LocalPresenceReply>, Status> {
        let users = request
            .into_inner()
            .user_ids
            .into_iter()
            .take(MAX_USERS_ASKED)
            .map(|u| to_pb(u, self.hub.presence(UserId(u))))
            .collect();
        Ok(Response::new(pb::LocalPresenceReply { users }))
    }

    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceReply>, Status> {
        let r = request.into_inner();
        self.presence.registry().announce(
            r.node_id,
            &entries(r.opened),
            &entries(r.closed),
            r.full,
        );
        Ok(Response::new(pb::AnnounceReply {}))
    }

    async fn presence_changed(
        &self,
        request: Request<pb::PresenceFrame>,
    ) -> Result<Response<pb::PresenceChangedReply>, Status> {
        self.hub.offer_presence(&request.into_inner());
        Ok(Response::new(pb::PresenceChangedReply {}))
    }

    async fn typing(
        &self,
        request: Request<pb::TypingRelay>,
    ) -> Result<Response<pb::TypingRelayReply>, Status> {
        let r = request.into_inner();
        let notice = r
            .notice
            .ok_or_else(|| Status::invalid_argument("a typing relay needs its notice"))?;
        let users: Vec<UserId> = r
            .to_users
            .into_iter()
            .take(crate::typing::MAX_RELAYED_USERS)
            .map(UserId)
            .collect();
        self.hub.offer_ephemeral(&users, &Push::Typing(notice));
        Ok(Response::new(pb::TypingRelayReply {}))
    }

    async fn sign_download(
        &self,
        request: Request<pb::CreateDownloadRequest>,
    ) -> Result<Response<pb::DownloadGrant>, Status> {
        let gateway = self
            .gateway
            .upgrade()
            .ok_or_else(|| Status::unavailable("this node is stopping"))?;
        let key = chat_model::media::ObjectKey::parse(&request.into_inner().object_key)
            .map_err(Status::invalid_argument)?;
        gateway.media.sign_download(&key).await.map(Response::new)
    }

    async fn home_presence(
        &self,
        request: Request<pb::LocalPresenceRequest>,
    ) -> Result<Response<pb::HomePresenceReply>, Status> {
        let ids: Vec<u64> = request
            .into_inner()
            .user_ids
            .into_iter()
            .take(MAX_USERS_ASKED)
            .collect();
        let registry = self.presence.registry();
        let users: Vec<UserId> = ids.iter().map(|&u| UserId(u)).collect();
        let found = registry.presence(&users);
        Ok(Response::new(pb::HomePresenceReply {
            users: ids
                .into_iter()
                .zip(found)
                .map(|(u, p)| to_pb(u, p))
                .collect(),
            complete: registry.complete(),
        }))
    }
}
