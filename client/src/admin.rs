//! A client of a node's admin API that finds the cluster secret the way an operator expects and
//! follows "not leader" answers to the partition's leader.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_proto::admin::*;
use chat_proto::{admin_client, AdminClient, LeaderHint};
use chat_tls::Dialer;
use tonic::Code;

/// Where the secret comes from, in order: an explicit value, then `<data_dir>/cluster_secret`
/// (what a single-node chatd generates).
pub fn resolve_secret(explicit: Option<String>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(s) = explicit {
        return Ok(s);
    }
    let path = data_dir.join("cluster_secret");
    let secret = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --secret / CHATD_CLUSTER_SECRET given and cannot read {} (pass --data-dir of the node)",
            path.display()
        )
    })?;
    Ok(secret.trim().to_string())
}

/// An admin client of the node at `addr`; with a `timeout`, every call (and the connection, if
/// shorter than the usual 2 s) gives up after it.
async fn dial(
    dialer: &Dialer,
    addr: &str,
    secret: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<AdminClient> {
    let connect = Duration::from_secs(2);
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad address {addr:?}"))?
        .connect_timeout(timeout.map_or(connect, |t| t.min(connect)))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = dialer
        .connect(endpoint, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to chatd at {addr}: {}", chain(&e)))?;
    admin_client(channel, secret).map_err(|e| anyhow::anyhow!("{e}"))
}

/// An error and its sources on one line: tonic's transport error alone says only "transport
/// error", and the cause (a refused certificate, say) is what the operator needs.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// An admin connection to one node.
pub struct Admin {
    dialer: Dialer,
    addr: String,
    secret: String,
    timeout: Option<Duration>,
    client: AdminClient,
}

impl Admin {
    pub async fn connect(addr: &str, secret: &str) -> anyhow::Result<Admin> {
        Admin::connect_with(addr, secret, None).await
    }

    /// Connect; with a `timeout`, every call (and the connection) gives up after it.
    pub async fn connect_with(
        addr: &str,
        secret: &str,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Admin> {
        Admin::connect_via(&Dialer::plain(), addr, secret, timeout).await
    }

    /// [`Admin::connect_with`], dialling with `dialer` (TLS with an admin certificate of the
    /// cluster CA for a node whose internal address takes only those).
    pub async fn connect_via(
        dialer: &Dialer,
        addr: &str,
        secret: &str,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Admin> {
        let client = dial(dialer, addr, secret, timeout).await?;
        Ok(Admin {
            dialer: dialer.clone(),
            addr: addr.to_string(),
            secret: secret.to_string(),
            timeout,
            client,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn status(&mut self) -> anyhow::Result<StatusReply> {
        Ok(self.client.status(StatusRequest {}).await?.into_inner())
    }

    /// Append to `partition`, following leader hints and retrying through an election for up to
    /// `timeout`. Returns the reply and the address of the node that accepted it.
    ///
    /// A retry after a failure whose outcome is unknown (e.g. a timeout) may append twice: this
    /// raw log API has no idempotency keys (the chat write path adds them).
    pub async fn append(
        &mut self,
        partition: u32,
        records: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<(AppendReply, String)> {
        let deadline = Instant::now() + timeout;
        let mut target = self.addr.clone();
        loop {
            let mut client = if target == self.addr {
                self.client.clone()
            } else {
                dial(&self.dialer, &target, &self.secret, self.timeout)
                    .await
                    .context("the partition's leader")?
            };
            let req = AppendRequest {
                partition,
                records: records.clone(),
            };
            match client.append(req).await {
                Ok(reply) => return Ok((reply.into_inner(), target)),
                Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                    if let Some(leader) =
                        LeaderHint::from_status(&status).and_then(|h| h.leader_addr)
                    {
                        target = leader;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => bail!(
                    "append to partition {partition}: {}: {}",
                    status.code(),
                    status.message()
                ),
            }
        }
    }

    pub async fn read(
        &mut self,
        partition: u32,
        from_offset: u64,
        limit: u32,
    ) -> anyhow::Result<ReadEventsReply> {
        let req = ReadEventsRequest {
            partition,
            from_offset,
            limit,
        };
        Ok(self.client.read_events(req).await?.into_inner())
    }

    pub async fn digest(&mut self, partition: u32) -> anyhow::Result<DigestReply> {
        Ok(self
            .client
            .partition_digest(DigestRequest { partition })
            .await?
            .into_inner())
    }

    pub async fn compact(&mut self, partition: u32) -> anyhow::Result<CompactReply> {
        Ok(self
            .client
            .compact(CompactRequest { partition })
            .await?
            .into_inner())
    }

    pub async fn projections(&mut self) -> anyhow::Result<ProjectionsReply> {
        Ok(self
            .client
            .projections(ProjectionsRequest {})
            .await?
            .into_inner())
    }

    pub async fn rebuild_projection(&mut self, partition: u32, name: &str) -> anyhow::Result<()> {
        self.client
            .rebuild_projection(RebuildProjectionRequest {
                partition,
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    /// The partition map as this node has it.
    pub async fn map(&mut self) -> anyhow::Result<chat_proto::log::PartitionMap> {
        Ok(self.client.get_map(GetMapRequest {}).await?.into_inner())
    }

    pub async fn add_node(&mut self, node_id: u64, addr: &str) -> anyhow::Result<u64> {
        let req = AddNodeRequest {
            node_id,
            addr: addr.to_string(),
        };
        Ok(self.client.add_node(req).await?.into_inner().epoch)
    }

    /// Mark a node "active", "draining" or "leaving".
    pub async fn set_node_state(&mut self, node_id: u64, state: &str) -> anyhow::Result<u64> {
        let req = SetNodeStateRequest {
            node_id,
            state: state.to_string(),
        };
        Ok(self.client.set_node_state(req).await?.into_inner().epoch)
    }

    pub async fn replace_node(
        &mut self,
        old_node_id: u64,
        new_node_id: u64,
        new_addr: &str,
    ) -> anyhow::Result<u64> {
        let req = ReplaceNodeRequest {
            old_node_id,
            new_node_id,
            new_addr: new_addr.to_string(),
        };
        Ok(self.client.replace_node(req).await?.into_inner().epoch)
    }

    pub async fn move_replica(
        &mut self,
        partition: u32,
        from: u64,
        to: u64,
    ) -> anyhow::Result<u64> {
        let req = MoveReplicaRequest {
            partition,
            from_node: from,
            to_node: to,
        };
        Ok(self.client.move_replica(req).await?.into_inner().epoch)
    }

    /// Hand a partition's leadership to `to`; answers the leader after.
    pub async fn transfer_leader(&mut self, partition: u32, to: u64) -> anyhow::Result<u64> {
        let req = TransferLeaderRequest {
            partition,
            to_node: to,
        };
        Ok(self
            .client
            .transfer_leader(req)
            .await?
            .into_inner()
            .leader_id)
    }

    pub async fn set_balancing(&mut self, enabled: bool) -> anyhow::Result<u64> {
        let req = SetBalancingRequest { enabled };
        Ok(self.client.set_balancing(req).await?.into_inner().epoch)
    }

    /// A retention sweep now, over the partitions the node leads.
    pub async fn run_retention(&mut self) -> anyhow::Result<RetentionReply> {
        Ok(self
            .client
            .run_retention(RetentionRequest {})
            .await?
            .into_inner())
    }

    /// The node's backup stream (see [`crate::backup::receive`]).
    pub async fn backup(&mut self) -> anyhow::Result<tonic::Streaming<BackupChunk>> {
        Ok(self.client.backup(BackupRequest {}).await?.into_inner())
    }

    /// Rebuild this node's replica of `partition` from its healthy replicas; answers when done.
    pub async fn repair_partition(
        &mut self,
        partition: u32,
    ) -> anyhow::Result<RepairPartitionReply> {
        Ok(self
            .client
            .repair_partition(RepairPartitionRequest { partition })
            .await?
            .into_inner())
    }

    pub async fn verify(&mut self) -> anyhow::Result<VerifyReply> {
        Ok(self
            .client
            .verify_checksums(VerifyRequest {})
            .await?
            .into_inner())
    }
}

/// The status of a node as a table, one row per partition.
pub fn format_status(s: &StatusReply) -> String {
    let mut out = format!(
        "node {} — holds {} of {} partitions; partition map epoch {}\n",
        s.node_id,
        s.partitions.len(),
        s.partition_count,
        s.map_epoch
    );
    if let Some(d) = &s.disk {
        const MIB: u64 = 1024 * 1024;
        out.push_str(&format!(
            "disk {}: {} MiB free, reserve {} MiB, ballast {} MiB {}; {} writes refused, {} ENOSPC\n",
            d.state,
            d.free_bytes / MIB,
            d.reserve_bytes / MIB,
            d.ballast_bytes / MIB,
            if d.ballast_held { "held" } else { "released" },
            d.refused_writes,
            d.no_space_errors,
        ));
    }
    out.push_str("partition  role       term  leader            last_index  applied  last_offset  snapshot  purged  voters\n");
    for p in s.partitions.iter().chain(&s.meta) {
        let leader = match p.leader_id {
            0 => "-".to_string(),
            id => format!("{id} ({})", p.leader_addr),
        };
        let voters: Vec<String> = p.voters.iter().map(u64::to_string).collect();
        let name = if Some(p) == s.meta.as_ref() {
            "meta".to_string()
        } else {
            p.partition.to_string()
        };
        let learners = if p.learners.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = p.learners.iter().map(u64::to_string).collect();
            format!(" (+learners {})", ids.join(","))
        };
        let damage = if p.damage.is_empty() {
            String::new()
        } else {
            format!(
                "  DAMAGED: {} (chatctl repair --partition {})",
                p.damage, p.partition
            )
        };
        out.push_str(&format!(
            "{:<10} {:<10} {:<5} {:<17} {:<11} {:<8} {:<12} {:<9} {:<7} {}{learners}{damage}\n",
            name,
            p.role,
            p.term,
            leader,
            p.last_log_index,
            p.applied_index,
            p.last_offset,
            p.snapshot_index,
            p.purged_index,
            voters.join(",")
        ));
    }
    out
}

/// The partition map as two tables: nodes (state, replicas, leaderships) and partitions
/// (voters, a move under way, leader).
pub fn format_map(m: &chat_proto::log::PartitionMap) -> String {
    let ids = |v: &[u64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        }
    };
    let moving = m
        .replicas
        .values()
        .filter(|r| !r.learners.is_empty() || !r.leaving.is_empty())
        .count();
    let mut out = format!(
        "partition map epoch {}: {} partitions, replication {}, balancing {}, {} move(s) under way\n",
        m.epoch,
        m.partitions,
        m.replication,
        if m.balancing { "on" } else { "off" },
        moving
    );
    out.push_str("node  state     addr                   replicas  leaders\n");
    for (id, n) in &m.nodes {
        let state = chat_proto::log::NodeState::try_from(n.state)
            .map(|s| s.as_str_name().trim_start_matches("NODE_").to_lowercase())
            .unwrap_or_else(|_| format!("state {}", n.state));
        let replicas = m
            .replicas
            .values()
            .filter(|r| r.voters.contains(id))
            .count();
        let leaders = m.replicas.values().filter(|r| r.leader_hint == *id).count();
        out.push_str(&format!(
            "{id:<5} {state:<9} {:<22} {replicas:<9} {leaders}\n",
            n.addr
        ));
    }
    out.push_str("partition  leader  voters      joining  leaving\n");
    for (p, r) in &m.replicas {
        let leader = match r.leader_hint {
            0 => "-".to_string(),
            id => id.to_string(),
        };
        out.push_str(&format!(
            "{p:<10} {leader:<7} {:<11} {:<8} {}\n",
            ids(&r.voters),
            ids(&r.learners),
            ids(&r.leaving)
        ));
    }
    out
}

/// A partition's status as JSON (`chatctl -o json`).
fn partition_json(p: &PartitionStatus) -> serde_json::Value {
    serde_json::json!({
        "partition": p.partition,
        "role": p.role,
        "term": p.term,
        "leader_id": (p.leader_id != 0).then_some(p.leader_id),
        "leader_addr": (!p.leader_addr.is_empty()).then_some(&p.leader_addr),
        "last_log_index": p.last_log_index,
        "applied_index": p.applied_index,
        "last_offset": p.last_offset,
        "snapshot_index": p.snapshot_index,
        "purged_index": p.purged_index,
        "voters": p.voters,
        "learners": p.learners,
        "damage": (!p.damage.is_empty()).then_some(&p.damage),
    })
}

/// A node's status as JSON: the same fields as [`format_status`], numbers as numbers.
pub fn status_json(s: &StatusReply) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "partition_count": s.partition_count,
        "map_epoch": s.map_epoch,
        "disk": s.disk.as_ref().map(|d| serde_json::json!({
            "state": d.state,
            "free_bytes": d.free_bytes,
            "reserve_bytes": d.reserve_bytes,
            "ballast_bytes": d.ballast_bytes,
            "ballast_held": d.ballast_held,
            "refused_writes": d.refused_writes,
            "no_space_errors": d.no_space_errors,
        })),
        "partitions": s.partitions.iter().map(partition_json).collect::<Vec<_>>(),
        "meta": s.meta.as_ref().map(partition_json),
    })
}

/// The partition map as JSON: nodes with their state by name, partitions with their replicas.
pub fn map_json(m: &chat_proto::log::PartitionMap) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = m
        .nodes
        .iter()
        .map(|(id, n)| {
            let state = chat_proto::log::NodeState::try_from(n.state)
                .map(|s| s.as_str_name().trim_start_matches("NODE_").to_lowercase())
                .unwrap_or_else(|_| n.state.to_string());
            serde_json::json!({"node_id": id, "addr": n.addr, "state": state})
        })
        .collect();
    let partitions: Vec<serde_json::Value> = m
        .replicas
        .iter()
        .map(|(p, r)| {
            serde_json::json!({
                "partition": p,
                "leader": (r.leader_hint != 0).then_some(r.leader_hint),
                "voters": r.voters,
                "joining": r.learners,
                "leaving": r.leaving,
            })
        })
        .collect();
    serde_json::json!({
        "epoch": m.epoch,
        "partitions": m.partitions,
        "replication": m.replication,
        "balancing": m.balancing,
        "nodes": nodes,
        "replicas": partitions,
    })
}
