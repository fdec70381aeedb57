//! The admin gRPC service (`chat.admin.v1.Admin`) over a [`LogNode`] and its [`Projector`]:
//! status, raw appends, reads, digests, compaction, checksum verification, projection status
//! and rebuilds. Used by `chatctl`, the benchmark and the
//! tests; guarded by the cluster secret like Raft RPC.

use std::sync::Arc;
use std::time::Duration;

use chat_log::{
    CommandOutcome, Dispatch, LogNode, LogOffset, PartitionId, StoreError, RAW_COMMAND_TAG,
};
use chat_projector::Projector;
use chat_proto::admin::admin_server::Admin;
use chat_proto::admin::*;
use tonic::{Request, Response, Status};

/// Most records one Append may carry, and the largest record.
pub const MAX_APPEND_RECORDS: usize = 10_000;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most events one ReadEvents returns.
pub const MAX_READ_EVENTS: u32 = 10_000;

pub struct AdminService {
    node: Arc<LogNode>,
    projector: Arc<Projector>,
}

impl AdminService {
    pub fn new(node: Arc<LogNode>, projector: Arc<Projector>) -> Self {
        AdminService { node, projector }
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
}

fn store_status(e: StoreError) -> Status {
    Status::data_loss(e.to_string())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let status = self.node.status();
        let partitions = status
            .partitions
            .into_iter()
            .map(|p| PartitionStatus {
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
            })
            .collect();
        let disk = status.disk;
        Ok(Response::new(StatusReply {
            node_id: status.node_id,
            partition_count: self.node.partition_count(),
            partitions,
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
        let outcome = self.node.propose(p, commands).await.map_err(Status::from)?;
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
        let events = self
            .node
            .read_events(p, LogOffset(req.from_offset), limit as usize)
            .map_err(store_status)?;
        let last_offset = self.node.last_offset(p).map_err(Status::from)?.0;
        Ok(Response::new(ReadEventsReply {
            events,
            last_offset,
        }))
    }

    async fn partition_digest(
        &self,
        request: Request<DigestRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        let p = self.partition(request.into_inner().partition)?;
        let node = self.node.clone();
        let (last, digest) = tokio::task::spawn_blocking(move || node.digest(p))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        let applied_index = self.node.status().partitions[p.0 as usize].applied_index;
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
        let p = self.partition(request.into_inner().partition)?;
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
}
