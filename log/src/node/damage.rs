//! Replicas that found a damaged record, and their repair.
//!
//! A read of this node's copy of a partition that fails its check (crc32 or decoding) marks the
//! partition damaged here. A damaged replica stops serving the partition while it has healthy
//! peers: reads go to its other replicas (`remote.rs`), other nodes' reads of it are answered
//! UNAVAILABLE so they ask elsewhere, it hands its leadership away and stands for no election;
//! `status` and `chatd_partition_damaged{partition}` say so. It stays a voter, so the
//! partition's quorum is unchanged: what it appends from now on is checked like everything else.
//! A replica without healthy peers (a single node) goes on serving what it can read.
//!
//! [`LogNode::repair_partition`] rebuilds the replica from the healthy ones through Raft: the
//! leader takes this node out of the group, this node deletes its copy and opens an empty one,
//! the leader adds it back as a learner, which catches up by snapshot and log, and makes it a
//! voter again. The mark is in memory: a restart forgets it until a read hits the record again
//! (`chatctl verify` finds every damaged record at once, and marks their partitions).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tonic::Status;

use super::LogNode;
use crate::engine::StoreError;
use crate::types::{NodeId, PartitionId};

/// How long a repair waits for this node's new replica to catch up.
const CATCH_UP: Duration = Duration::from_secs(30 * 60);
/// How long one membership step of a repair may take.
const STEP: Duration = Duration::from_secs(30);

/// What this node found damaged, per partition.
#[derive(Default)]
pub(crate) struct Damage {
    partitions: Mutex<BTreeMap<PartitionId, String>>,
    /// Whether any partition is damaged: every read asks, and almost always none is, so the
    /// answer takes no lock.
    any: AtomicBool,
}

impl Damage {
    /// Mark `p` damaged by `why`; true if it was not already.
    fn mark(&self, p: PartitionId, why: &StoreError) -> bool {
        let mut damaged = self.partitions.lock().expect("damage lock");
        if damaged.contains_key(&p) {
            return false;
        }
        damaged.insert(p, why.to_string());
        self.any.store(true, Ordering::Release);
        true
    }

    pub(crate) fn get(&self, p: PartitionId) -> Option<String> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.partitions
            .lock()
            .expect("damage lock")
            .get(&p)
            .cloned()
    }

    fn clear(&self, p: PartitionId) {
        let mut damaged = self.partitions.lock().expect("damage lock");
        damaged.remove(&p);
        self.any.store(!damaged.is_empty(), Ordering::Release);
    }

    fn all(&self) -> Vec<PartitionId> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let damaged = self.partitions.lock().expect("damage lock");
        damaged.keys().copied().collect()
    }
}

/// What a repair did.
#[derive(Debug, Clone)]
pub struct RepairReport {
    /// The node whose replica the new one caught up from (the partition's leader).
    pub from_leader: NodeId,
    /// The last offset of the new replica when it became a voter again.
    pub last_offset: u64,
}

impl LogNode {
    /// Why this node's replica of `p` is damaged, if it is.
    pub fn damaged(&self, p: PartitionId) -> Option<String> {
        self.damage.get(p)
    }

    /// Whether `p` has voters other than this node, as its group here knows them.
    pub(crate) fn has_healthy_peers(&self, p: PartitionId) -> bool {
        let me = self.config.node_id;
        match self.groups.get(p) {
            Some(part) => part.voters().iter().any(|v| *v != me),
            None => false,
        }
    }

    /// Whether to serve reads of `p` from this node's replica: not while it is damaged and
    /// another replica can answer instead.
    pub fn serves_reads(&self, p: PartitionId) -> bool {
        self.damage.get(p).is_none() || !self.has_healthy_peers(p)
    }

    /// Pass `result` through, marking `p` damaged if it is a record that failed its check.
    pub(crate) fn note<T>(
        &self,
        p: PartitionId,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(e) = &result {
            // The metadata group is read through its own paths; only data partitions are
            // marked (and repaired) here.
            if p != PartitionId::META && e.is_damage() && self.damage.mark(p, e) {
                self.on_damage(p, e);
            }
        }
        result
    }

    fn on_damage(&self, p: PartitionId, why: &StoreError) {
        tracing::error!(partition = %p, error = %why, "a record of this replica failed its check: the replica stops serving the partition while others can; repair it with `chatctl repair --partition {}`", p.0);
        metrics::gauge!("chatd_partition_damaged", "partition" => p.0.to_string()).set(1.0);
        if !self.has_healthy_peers(p) {
            return;
        }
        // Its leadership goes to a healthy voter (`keep_leaderships_away`).
        if let Some(part) = self.groups.get(p) {
            part.raft.runtime_config().elect(false);
        }
    }

    /// Rebuild this node's damaged (or any) replica of `p` from its healthy replicas; see the
    /// module docs. Safe to ask again after a failure or a crash midway: each step checks what
    /// is done.
    pub async fn repair_partition(
        self: &Arc<Self>,
        p: PartitionId,
    ) -> Result<RepairReport, Status> {
        let me = self.config.node_id;
        let map = self
            .map()
            .ok_or_else(|| Status::unavailable("the cluster has no partition map yet"))?;
        let replicas = map
            .replicas(p)
            .ok_or_else(|| Status::not_found(format!("no partition {p}")))?;
        if !replicas.voters.contains(&me) {
            return Err(Status::failed_precondition(format!(
                "node {me} holds no replica of {p} in the partition map"
            )));
        }
        let others: Vec<NodeId> = replicas
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me)
            .collect();
        let Some(&heir) = others.first() else {
            return Err(Status::failed_precondition(format!(
                "{p} has no replica but this node's to repair from (restore a backup instead)"
            )));
        };
        let my_addr = map
            .addr(me)
            .ok_or_else(|| Status::internal("this node has no address in the map"))?
            .to_string();
        tracing::warn!(partition = %p, "repair: rebuilding this replica from the others");
        if self.is_leader(p) {
            self.transfer_leadership(p, heir).await?;
        }
        let calls = self.peer_calls();
        let (leader, leader_addr) = crate::placement::driver::leader_of(self, &map, p).await?;
        if leader == me {
            return Err(Status::unavailable(format!(
                "this node still leads {p}; ask again once the handover is done"
            )));
        }
        let leader_at = (leader, leader_addr.as_str());
        // Out of the group first: a voter must never come back with less than it acknowledged.
        calls
            .change_voters(leader_at, p, others.iter().copied(), STEP)
            .await?;
        self.close_partition(p)
            .await
            .map_err(|e| Status::internal(format!("delete this replica of {p}: {e:#}")))?;
        self.damage.clear(p);
        metrics::gauge!("chatd_partition_damaged", "partition" => p.0.to_string()).set(0.0);
        self.open_partition(p)
            .await
            .map_err(|e| Status::internal(format!("open a new replica of {p}: {e:#}")))?;
        tracing::info!(partition = %p, leader, "repair: this replica deleted; catching up from the leader");
        calls
            .add_learner(leader_at, p, (me, my_addr.as_str()), CATCH_UP)
            .await?;
        let voters = others.iter().copied().chain([me]);
        calls.change_voters(leader_at, p, voters, STEP).await?;
        let last_offset = self.last_offset(p).map(|o| o.0).unwrap_or_default();
        tracing::info!(partition = %p, leader, last_offset, "repair: done, a voter again");
        Ok(RepairReport {
            from_leader: leader,
            last_offset,
        })
    }
}

/// Once a second: every partition damaged here that this node leads goes to a healthy voter.
/// Ends with the node. The node is only looked at while something is damaged: this task must not
/// be what keeps a node (and its database) alive a moment after its owner let it go.
pub(super) async fn keep_leaderships_away(
    node: Weak<LogNode>,
    damage: Arc<Damage>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopping.wait_for(|stopped| *stopped) => return,
        }
        let damaged = damage.all();
        if damaged.is_empty() {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        if node.is_stopped() {
            return;
        }
        let me = node.config.node_id;
        for p in damaged {
            if !node.is_leader(p) {
                continue;
            }
            let Some(heir) = node
                .groups
                .get(p)
                .and_then(|part| part.voters().into_iter().find(|v| *v != me))
            else {
                continue;
            };
            match node.transfer_leadership(p, heir).await {
                Ok(_) => {
                    tracing::info!(partition = %p, to = heir, "damaged replica handed its leadership away")
                }
                Err(e) => {
                    tracing::warn!(partition = %p, error = %e, "damaged replica could not hand its leadership away yet")
                }
            }
        }
    }
}
