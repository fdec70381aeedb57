//! Calls to other nodes' `Placement` service, over the node's shared peer channels, with the
//! cluster secret attached. Each call has a deadline; a "not the leader" answer comes back as
//! the status it is (with its hint) for the caller to follow.

use std::time::Duration;

use chat_proto::log as pb;
use chat_proto::raft::{
    AddLearnerRequest, CampaignRequest, ChangeVotersRequest, GetMapRequest, MembershipReply,
    ReplicaReply, ReplicaRequest, TransferLeaderRequest,
};
use tonic::{Code, Status};

use super::map::{MapEpoch, PartitionMap};
use crate::network::auth::{address_to, with_secret};
use crate::network::PeerChannels;
use crate::types::{NodeId, PartitionId};

/// Deadline of a call that answers at once.
const QUICK: Duration = Duration::from_secs(2);
/// Added to the deadline a slow call gives the other side, for the answer to travel back.
const SLACK: Duration = Duration::from_secs(2);

/// The placement calls one node makes to others.
#[derive(Clone)]
pub(crate) struct PeerCalls {
    peers: PeerChannels,
}

macro_rules! call {
    ($self:ident, $node:expr, $addr:expr, $deadline:expr, $method:ident, $message:expr) => {{
        let (mut client, secret) = $self
            .peers
            .placement($node, $addr)
            .map_err(Status::invalid_argument)?;
        let mut request = with_secret($message, &secret);
        address_to(&mut request, $node);
        request.set_timeout($deadline);
        client.$method(request).await.map(|r| r.into_inner())
    }};
}

impl PeerCalls {
    pub(crate) fn new(peers: PeerChannels) -> Self {
        PeerCalls { peers }
    }

    /// `node`'s copy of the partition map; None if it has none yet.
    pub(crate) async fn get_map(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<Option<PartitionMap>, Status> {
        match call!(self, node, addr, QUICK, get_map, GetMapRequest {}) {
            Ok(map) => PartitionMap::from_pb(map)
                .map(Some)
                .map_err(|e| Status::internal(format!("node {node} sent a broken map: {e}"))),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Ask `node` (the metadata group's leader) to apply a map change.
    pub(crate) async fn change_map(
        &self,
        node: NodeId,
        addr: &str,
        command: pb::MetaCommand,
    ) -> Result<MapEpoch, Status> {
        let deadline = QUICK + SLACK;
        call!(self, node, addr, deadline, change_map, command).map(|r| MapEpoch(r.epoch))
    }

    pub(crate) async fn replica(
        &self,
        node: NodeId,
        addr: &str,
        p: PartitionId,
    ) -> Result<ReplicaReply, Status> {
        let message = ReplicaRequest { partition: p.0 };
        call!(self, node, addr, QUICK, replica, message)
    }

    pub(crate) async fn add_learner(
        &self,
        (leader, leader_addr): (NodeId, &str),
        p: PartitionId,
        (node, addr): (NodeId, &str),
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let message = AddLearnerRequest {
            partition: p.0,
            node,
            addr: addr.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        call!(
            self,
            leader,
            leader_addr,
            timeout + SLACK,
            add_learner,
            message
        )
    }

    pub(crate) async fn change_voters(
        &self,
        (leader, leader_addr): (NodeId, &str),
        p: PartitionId,
        voters: impl IntoIterator<Item = NodeId>,
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let message = ChangeVotersRequest {
            partition: p.0,
            voters: voters.into_iter().collect(),
            timeout_ms: timeout.as_millis() as u64,
        };
        call!(
            self,
            leader,
            leader_addr,
            timeout + SLACK,
            change_voters,
            message
        )
    }

    pub(crate) async fn transfer_leader(
        &self,
        (leader, leader_addr): (NodeId, &str),
        p: PartitionId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let message = TransferLeaderRequest {
            partition: p.0,
            to,
            timeout_ms: timeout.as_millis() as u64,
        };
        call!(
            self,
            leader,
            leader_addr,
            timeout + SLACK,
            transfer_leader,
            message
        )
    }

    pub(crate) async fn campaign(
        &self,
        node: NodeId,
        addr: &str,
        message: CampaignRequest,
    ) -> Result<(), Status> {
        call!(self, node, addr, QUICK, campaign, message).map(drop)
    }
}
