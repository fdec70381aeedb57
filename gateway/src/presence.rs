//! Cluster-wide presence. A user is online when any node holds a stream of one of its devices,
//! and was last seen when its last stream on any node closed. Each node knows only its own
//! streams (the hub), so a lookup asks every peer's gateway (`chat.v1.GatewayPeer`, behind the
//! cluster secret) and merges the answers; a peer that does not answer within a short timeout
//! is left out (a down node holds no streams). The peers are the cluster's nodes as this node
//! knows them at the lookup (the partition map's, so nodes that joined later are asked too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_log::LogNode;
use chat_model::ids::UserId;
use chat_proto::chat_v1::gateway_peer_client::GatewayPeerClient;
use chat_proto::chat_v1::gateway_peer_server::{GatewayPeer, GatewayPeerServer};
use chat_proto::chat_v1::{self as pb};
use chat_proto::AttachSecret;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::hub::{Hub, Presence};

/// How long a lookup waits for a peer.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);

type PeerClient = GatewayPeerClient<InterceptedService<Channel, AttachSecret>>;

/// Asks the other nodes' gateways.
pub struct ClusterPresence {
    hub: Arc<Hub>,
    secret: AttachSecret,
    /// Whose members are asked (this node excluded), and from which source address.
    node: Arc<LogNode>,
    clients: Mutex<HashMap<String, PeerClient>>,
}

impl ClusterPresence {
    pub fn new(hub: Arc<Hub>, secret: AttachSecret, node: Arc<LogNode>) -> Self {
        ClusterPresence {
            hub,
            secret,
            node,
            clients: Mutex::default(),
        }
    }

    /// The other nodes' addresses, as this node knows the cluster now.
    fn peers(&self) -> Vec<String> {
        let me = self.node.node_id();
        self.node
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, addr)| addr)
            .collect()
    }

    fn client(&self, addr: &str) -> Option<PeerClient> {
        let mut clients = self.clients.lock().expect("presence clients lock");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(PEER_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.node.bind_ip())
            .connect_lazy();
        let client = GatewayPeerClient::with_interceptor(channel, self.secret.clone());
        clients.insert(addr.to_string(), client.clone());
        Some(client)
    }

    /// Each user's presence, merged over this node and every peer that answers.
    pub async fn lookup(&self, users: &[UserId]) -> Vec<Presence> {
        let mut merged: Vec<Presence> = users.iter().map(|&u| self.hub.presence(u)).collect();
        let request = pb::LocalPresenceRequest {
            user_ids: users.iter().map(|u| u.0).collect(),
        };
        let peers = self.peers();
        let asks = peers.iter().filter_map(|addr| {
            let mut client = self.client(addr)?;
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
                slot.merge(Presence {
                    last_seen_ms: theirs.last_seen_ms,
                    devices: theirs.online_devices.into_iter().collect(),
                });
            }
        }
        merged
    }
}

/// Answers peers about this node's streams.
pub struct GatewayPeerService {
    hub: Arc<Hub>,
}

impl GatewayPeerService {
    pub fn server(hub: Arc<Hub>) -> GatewayPeerServer<GatewayPeerService> {
        GatewayPeerServer::new(GatewayPeerService { hub })
    }
}

#[tonic::async_trait]
impl GatewayPeer for GatewayPeerService {
    async fn local_presence(
        &self,
        request: Request<pb::LocalPresenceRequest>,
    ) -> Result<Response<pb::LocalPresenceReply>, Status> {
        let users = request
            .into_inner()
            .user_ids
            .into_iter()
            .take(10_000)
            .map(|u| {
                let p = self.hub.presence(UserId(u));
                pb::UserPresence {
                    handle: String::new(),
                    user_id: u,
                    online: p.online(),
                    last_seen_ms: p.last_seen_ms,
                    online_devices: p.devices.into_iter().collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::LocalPresenceReply { users }))
    }
}
