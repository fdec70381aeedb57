//! The server half of the node-to-node `Placement` RPC: each call is carried out by the node's
//! own methods (`crate::node::membership`), which answer "not the leader" with a hint when
//! another node must do it. Bad input (an unknown partition, a malformed change) is answered
//! with INVALID_ARGUMENT or NOT_FOUND, never a crash.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::log as pb;
use chat_proto::raft::placement_server::Placement;
use chat_proto::raft::{
    AddLearnerRequest, CampaignReply, CampaignRequest, ChangeMapReply, ChangeVotersRequest,
    GetMapRequest, MembershipReply, ReplicaReply, ReplicaRequest, TransferLeaderRequest,
};
use tonic::{Request, Response, Status};

use super::map::{MapChange, MapEpoch};
use crate::node::LogNode;
use crate::types::PartitionId;

/// The longest a caller may ask a membership step to take (a learner catching up on a large
/// partition is the slow one).
const MAX_STEP: Duration = Duration::from_secs(30 * 60);

/// Serves `Placement` for one node.
pub struct PlacementService {
    node: Arc<LogNode>,
}

impl PlacementService {
    pub(crate) fn new(node: Arc<LogNode>) -> Self {
        PlacementService { node }
    }

    /// `p` as a data partition of this cluster, or INVALID_ARGUMENT.
    fn partition(&self, p: u32) -> Result<PartitionId, Status> {
        if p >= self.node.partition_count() {
            return Err(Status::invalid_argument(format!(
                "partition {p} does not exist (the cluster has {})",
                self.node.partition_count()
            )));
        }
        Ok(PartitionId(p))
    }

    /// `p` as a data partition or the metadata group (whose leadership is handed over too: a
    /// node that stops hands over every group it leads).
    fn group(&self, p: u32) -> Result<PartitionId, Status> {
        if PartitionId(p) == PartitionId::META {
            return Ok(PartitionId::META);
        }
        self.partition(p)
    }
}

fn step_timeout(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(Duration::from_secs(1), MAX_STEP)
}

#[tonic::async_trait]
impl Placement for PlacementService {
    async fn get_map(
        &self,
        _request: Request<GetMapRequest>,
    ) -> Result<Response<pb::PartitionMap>, Status> {
        match self.node.map() {
            Some(map) => Ok(Response::new(map.to_pb())),
            None => Err(Status::not_found("this node has no partition map yet")),
        }
    }

    async fn change_map(
        &self,
        request: Request<pb::MetaCommand>,
    ) -> Result<Response<ChangeMapReply>, Status> {
        let command = request.into_inner();
        let change = match command.change {
            None => return Err(Status::invalid_argument("a map change without a change")),
            Some(pb::meta_command::Change::Bootstrap(_)) => {
                return Err(Status::invalid_argument(
                    "the first map is made by the cluster itself, not asked for",
                ))
            }
            Some(change) => MapChange::from_pb(change).map_err(Status::invalid_argument)?,
        };
        // Only the metadata group's leader applies it here; others answer with a redirect.
        let command = pb::MetaCommand {
            expected_epoch: command.expected_epoch,
            change: Some(change.to_pb()),
        };
        let epoch: MapEpoch = self.node.propose_meta(command).await?;
        Ok(Response::new(ChangeMapReply { epoch: epoch.0 }))
    }

    async fn replica(
        &self,
        request: Request<ReplicaRequest>,
    ) -> Result<Response<ReplicaReply>, Status> {
        let p = self.partition(request.into_inner().partition)?;
        Ok(Response::new(self.node.replica_reply(p)))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        if r.node == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "a learner needs a node id and an address",
            ));
        }
        let timeout = step_timeout(r.timeout_ms);
        let reply = self.node.add_learner(p, r.node, r.addr, timeout).await?;
        Ok(Response::new(reply))
    }

    async fn change_voters(
        &self,
        request: Request<ChangeVotersRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        let voters: BTreeSet<_> = r.voters.into_iter().collect();
        let timeout = step_timeout(r.timeout_ms);
        let reply = self.node.change_voters(p, voters, false, timeout).await?;
        Ok(Response::new(reply))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        let timeout = step_timeout(r.timeout_ms);
        let reply = self.node.transfer_leader(p, r.to, timeout).await?;
        Ok(Response::new(reply))
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        let r = request.into_inner();
        let p = self.group(r.partition)?;
        self.node.campaign(p, r.term)?;
        Ok(Response::new(CampaignReply {}))
    }
}
