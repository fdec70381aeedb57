//! A client of a node's admin API that finds the cluster secret the way an operator expects and
//! follows "not leader" answers to the partition's leader.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_proto::admin::*;
use chat_proto::{connect_admin, AdminClient, LeaderHint};
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

/// An admin connection to one node.
pub struct Admin {
    addr: String,
    secret: String,
    client: AdminClient,
}

impl Admin {
    pub async fn connect(addr: &str, secret: &str) -> anyhow::Result<Admin> {
        let client = connect_admin(addr, secret)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to chatd at {addr}: {e}"))?;
        Ok(Admin {
            addr: addr.to_string(),
            secret: secret.to_string(),
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
                connect_admin(&target, &self.secret)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to leader at {target}: {e}"))?
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
    let mut out = format!("node {} — {} partitions\n", s.node_id, s.partition_count);
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
    for p in &s.partitions {
        let leader = match p.leader_id {
            0 => "-".to_string(),
            id => format!("{id} ({})", p.leader_addr),
        };
        let voters: Vec<String> = p.voters.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "{:<10} {:<10} {:<5} {:<17} {:<11} {:<8} {:<12} {:<9} {:<7} {}\n",
            p.partition,
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
