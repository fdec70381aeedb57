//! The admin gRPC service (`chat.admin.v1.Admin`) over a [`LogNode`] and its [`Projector`]:
//! status, raw appends, reads, digests, compaction, checksum verification, backups (see
//! `backup.rs`), retention sweeps on demand, projection status
//! and rebuilds, and placement (the partition map, nodes joining and leaving, moves, leader
//! handovers). Used by `chatctl`, the benchmark and the tests; guarded by the cluster secret
//! like Raft RPC.

use std::sync::Arc;
use std::time::Duration;

use chat_log::placement::{MapChange, NodeState, PartitionMap};
use chat_log::{
    CommandOutcome, Dispatch, LogNode, LogOffset, PartitionId, StoreError, RAW_COMMAND_TAG,
};
use chat_projector::Projector;
use chat_proto::admin::admin_server::Admin;
use chat_proto::admin::*;
use chat_sequencer::workers::retention::Sweeper;
use tonic::{Request, Response, Status};

/// Most records one Append may carry, and the largest record.
pub const MAX_APPEND_RECORDS: usize = 10_000;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most events one ReadEvents returns.
pub const MAX_READ_EVENTS: u32 = 10_000;

/// The longest a raw append waits for its partition to commit.
const APPEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct AdminService {
    node: Arc<LogNode>,
    projector: Arc<Projector>,
    retention: Arc<Sweeper>,
}

impl AdminService {
    pub fn new(node: Arc<LogNode>, projector: Arc<Projector>, retention: Arc<Sweeper>) -> Self {
        AdminService {
            node,
            projector,
            retention,
        }
    }

    fn partition(&self, p: u32) -> Result<PartitionId, Status> {
        if p < self.node.partition_count() {
            Ok(PartitionId(p))
        } else {
            Err(Status::not_found(format!(
                "partition {p} does not exist (the cluster has partitions 0..{})",
                self.node.partition_count()
            )))
        }
    }

    /// `p`, if this node holds a replica of it (reads of this node's replica); otherwise a
    /// redirect to a node that does.
    fn replica(&self, p: u32) -> Result<PartitionId, Status> {
        let p = self.partition(p)?;
        self.node.replica_here(p)?;
        Ok(p)
    }

    /// Apply the change `make` builds from the current map; made again on the newer map if the
    /// map moved on between reading and applying it (a few times, then the refusal stands).
    async fn change_map(
        &self,
        make: impl Fn(&PartitionMap) -> Result<MapChange, Status>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let mut tries = 0;
        loop {
            let map = self
                .node
                .map()
                .ok_or_else(|| Status::unavailable("the cluster has no partition map yet"))?;
            let change = make(&map)?;
            match self.node.change_map(map.epoch, change).await {
                Ok(epoch) => return Ok(Response::new(MapChangeReply { epoch: epoch.0 })),
                // Made on a map that moved on (this node's copy may trail the metadata
                // group's leader by a moment): read it again and retry.
                Err(status) if tries < 20 && status.code() == tonic::Code::Aborted => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

fn node_state(name: &str) -> Result<NodeState, Status> {
    match name {
        "active" => Ok(NodeState::Active),
        "draining" => Ok(NodeState::Draining),
        "leaving" => Ok(NodeState::Leaving),
        other => Err(Status::invalid_argument(format!(
            "unknown node state {other:?}: use active, draining or leaving"
        ))),
    }
}

fn store_status(e: StoreError) -> Status {
    Status::data_loss(e.to_string())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let status = self.node.status();
        let to_pb = |p: chat_log::PartitionStatus| PartitionStatus {
            partition: p.partition.0,
            role: p.role.to_string(),
            term: p.term,
            leader_id: p.leader_id.unwrap_or_default(),
            leader_addr: p.leader_addr.unwrap_or_default(),
            last_log_index: p.last_log_index,
            applied_index: p.applied_index,
            last_offset: p.last_offset.0,
            snapshot_index: p.snapshot_index.unwrap_or_default(),
            purged_index: p.purged_index.unwrap_or_default(),
            voters: p.voters,
            learners: p.learners,
            damage: p.damage.unwrap_or_default(),
        };
        let partitions = status.partitions.into_iter().map(to_pb).collect();
        let disk = status.disk;
        Ok(Response::new(StatusReply {
            node_id: status.node_id,
            partition_count: self.node.partition_count(),
            partitions,
            meta: status.meta.map(to_pb),
            map_epoch: status.map_epoch.unwrap_or_default(),
            disk: Some(DiskStatus {
                state: disk.state.as_str().to_string(),
                free_bytes: disk.free_bytes,
                reserve_bytes: disk.reserve_bytes,
                ballast_bytes: disk.ballast_bytes,
                ballast_held: disk.ballast_held,
                refused_writes: disk.refused_writes,
                no_space_errors: disk.no_space_errors,
            }),
        }))
    }

    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendReply>, Status> {
        let AppendRequest { partition, records } = request.into_inner();
        let p = self.partition(partition)?;
        if records.is_empty() {
            return Err(Status::invalid_argument(
                "an append needs at least one record",
            ));
        }
        if records.len() > MAX_APPEND_RECORDS {
            return Err(Status::invalid_argument(format!(
                "{} records in one append; the limit is {MAX_APPEND_RECORDS}",
                records.len()
            )));
        }
        if let Some((i, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() > MAX_RECORD_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "record {i} is {} bytes; the limit is {MAX_RECORD_BYTES}",
                r.len()
            )));
        }
        let commands = records
            .iter()
            .map(|r| Dispatch::tagged(RAW_COMMAND_TAG, r))
            .collect();
        // Bounded like a device's write: a partition without a quorum takes the proposal and
        // never answers, and an admin call must not hang on it.
        let outcome = tokio::time::timeout(APPEND_TIMEOUT, self.node.propose(p, commands))
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "partition {p} did not commit the append within {APPEND_TIMEOUT:?}; it may still commit"
                ))
            })?
            .map_err(Status::from)?;
        let offsets = outcome
            .outcomes
            .iter()
            .map(|o| match o {
                CommandOutcome::Applied {
                    first_offset: Some(offset),
                    ..
                } => Ok(offset.0),
                other => Err(Status::internal(format!("raw append produced {other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(AppendReply {
            offsets,
            raft_index: outcome.raft_index,
        }))
    }

    async fn read_events(
        &self,
        request: Request<ReadEventsRequest>,
    ) -> Result<Response<ReadEventsReply>, Status> {
        let req = request.into_inner();
        let p = self.partition(req.partition)?;
        let limit = match req.limit {
            0 => 100,
            n => n.min(MAX_READ_EVENTS),
        };
        // From this node's replica, or one the partition map names if it holds none.
        let (events, last) = self
            .node
            .replicas()
            .read_events(p, LogOffset(req.from_offset), limit as usize)
            .await?;
        Ok(Response::new(ReadEventsReply {
            events,
            last_offset: last.0,
        }))
    }

    async fn partition_digest(
        &self,
        request: Request<DigestRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        let p = self.replica(request.into_inner().partition)?;
        let node = self.node.clone();
        let (last, digest) = tokio::task::spawn_blocking(move || node.digest(p))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        let applied_index = self
            .node
            .status()
            .partitions
            .iter()
            .find(|s| s.partition == p)
            .map(|s| s.applied_index)
            .unwrap_or_default();
        Ok(Response::new(DigestReply {
            last_offset: last.0,
            sha256: digest.to_vec(),
            applied_index,
        }))
    }

    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactReply>, Status> {
        let p = self.replica(request.into_inner().partition)?;
        let snapshot_index = self
            .node
            .compact(p, Duration::from_secs(60))
            .await
            .map_err(|e| Status::unavailable(format!("compaction of partition {}: {e:#}", p.0)))?;
        Ok(Response::new(CompactReply { snapshot_index }))
    }

    async fn verify_checksums(
        &self,
        _: Request<VerifyRequest>,
    ) -> Result<Response<VerifyReply>, Status> {
        let node = self.node.clone();
        let (records_checked, errors) =
            tokio::task::spawn_blocking(move || node.verify_checksums())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(store_status)?;
        Ok(Response::new(VerifyReply {
            records_checked,
            errors,
        }))
    }

    async fn run_retention(
        &self,
        _: Request<RetentionRequest>,
    ) -> Result<Response<RetentionReply>, Status> {
        let report = self.retention.sweep_led().await;
        Ok(Response::new(RetentionReply {
            partitions: report.partitions.iter().map(|p| p.0).collect(),
            chats_expired: report.chats_expired,
            messages_expired: report.messages_expired,
            errors: report.errors,
        }))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(
        &self,
        _: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        Ok(Response::new(crate::backup::stream(self.node.clone())))
    }

    async fn projections(
        &self,
        _: Request<ProjectionsRequest>,
    ) -> Result<Response<ProjectionsReply>, Status> {
        let internal = |e: String| Status::internal(e);
        let mut projections = Vec::new();
        for st in self
            .projector
            .status()
            .map_err(|e| internal(e.to_string()))?
        {
            let (_, digest) = self
                .projector
                .digest(st.partition, st.projection)
                .map_err(internal)?;
            projections.push(ProjectionStatus {
                partition: st.partition.0,
                name: st.projection.to_string(),
                checkpoint: st.checkpoint,
                generation: st.generation,
                rebuilding: st.rebuilding.is_some(),
                rebuild_checkpoint: st.rebuilding.unwrap_or_default(),
                digest: hex::encode(digest),
            });
        }
        Ok(Response::new(ProjectionsReply { projections }))
    }

    async fn rebuild_projection(
        &self,
        request: Request<RebuildProjectionRequest>,
    ) -> Result<Response<RebuildProjectionReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        self.projector
            .rebuild(p, &r.name)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(RebuildProjectionReply {}))
    }

    async fn get_map(
        &self,
        _: Request<GetMapRequest>,
    ) -> Result<Response<chat_proto::log::PartitionMap>, Status> {
        match self.node.map() {
            Some(map) => Ok(Response::new(map.to_pb())),
            None => Err(Status::unavailable("the cluster has no partition map yet")),
        }
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let r = request.into_inner();
        check_addr(&r.addr)?;
        self.change_map(|_| {
            Ok(MapChange::AddNode {
                id: r.node_id,
                addr: r.addr.clone(),
            })
        })
        .await
    }

    async fn set_node_state(
        &self,
        request: Request<SetNodeStateRequest>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let r = request.into_inner();
        let state = node_state(&r.state)?;
        self.change_map(|_| {
            Ok(MapChange::SetNodeState {
                id: r.node_id,
                state,
            })
        })
        .await
    }

    async fn replace_node(
        &self,
        request: Request<ReplaceNodeRequest>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let r = request.into_inner();
        check_addr(&r.new_addr)?;
        let known = self
            .node
            .map()
            .is_some_and(|m| m.nodes.contains_key(&r.new_node_id));
        if !known {
            self.change_map(|_| {
                Ok(MapChange::AddNode {
                    id: r.new_node_id,
                    addr: r.new_addr.clone(),
                })
            })
            .await?;
        }
        self.change_map(|_| {
            Ok(MapChange::SetNodeState {
                id: r.old_node_id,
                state: NodeState::Leaving,
            })
        })
        .await
    }

    async fn move_replica(
        &self,
        request: Request<MoveReplicaRequest>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        self.change_map(|map| {
            let replicas = map.replicas(p).expect("checked partition");
            if replicas.moving() {
                return Err(Status::failed_precondition(format!(
                    "a move of {p} is under way; wait for it (chatctl map)"
                )));
            }
            if !replicas.voters.contains(&r.from_node) {
                return Err(Status::failed_precondition(format!(
                    "node {} holds no replica of {p}",
                    r.from_node
                )));
            }
            if replicas.holds(r.to_node) {
                return Err(Status::failed_precondition(format!(
                    "node {} already holds {p}",
                    r.to_node
                )));
            }
            Ok(MapChange::SetReplicas {
                partition: p,
                voters: replicas.voters.clone(),
                learners: [r.to_node].into(),
                leaving: [r.from_node].into(),
            })
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        let r = request.into_inner();
        let p = self.partition(r.partition)?;
        let leader_id = self.node.transfer_leadership(p, r.to_node).await?;
        Ok(Response::new(TransferLeaderReply { leader_id }))
    }

    async fn repair_partition(
        &self,
        request: Request<RepairPartitionRequest>,
    ) -> Result<Response<RepairPartitionReply>, Status> {
        let p = self.partition(request.into_inner().partition)?;
        let report = self.node.repair_partition(p).await?;
        Ok(Response::new(RepairPartitionReply {
            from_leader: report.from_leader,
            last_offset: report.last_offset,
        }))
    }

    async fn set_balancing(
        &self,
        request: Request<SetBalancingRequest>,
    ) -> Result<Response<MapChangeReply>, Status> {
        let enabled = request.into_inner().enabled;
        self.change_map(|_| Ok(MapChange::SetBalancing(enabled)))
            .await
    }
}

/// A node address must be host:port (it is dialled as `http://{addr}`).
fn check_addr(addr: &str) -> Result<(), Status> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "node address {addr:?} is not host:port"
        )))
    }
}
