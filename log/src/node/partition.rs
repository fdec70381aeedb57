//! One Raft group on a node — a data partition or the metadata group — and the registry of the
//! groups a node runs.
//!
//! Groups come and go while the node runs: a partition moved onto the node is opened when the
//! partition map gives it a replica, and closed (its data deleted) when the map has moved it
//! away. [`Groups`] is shared by the node, which opens and closes them, and the Raft server,
//! which routes each request to its group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use openraft::{Config, Raft, ServerState};
use tokio::sync::watch;

use crate::apply::CommandHandler;
use crate::batcher::{Batcher, QueueBounds};
use crate::engine::Engine;
use crate::network::{NetworkFactory, PeerChannels, RaftGroups};
use crate::store::{Leading, PartitionLogStore, PartitionStateMachine, StateCache, TypeConfig};
use crate::types::{LogOffset, NodeId, PartitionId};

use super::PartitionStatus;

/// One Raft group on this node.
pub(crate) struct Partition {
    pub(crate) id: PartitionId,
    pub(crate) raft: Raft<TypeConfig>,
    /// Whether this node leads the group (from its Raft metrics).
    pub(crate) leading: Leading,
    pub(crate) batcher: Batcher,
    pub(crate) offsets: watch::Receiver<LogOffset>,
    /// The state machine's cache, kept here to report its size.
    pub(crate) cache: StateCache,
    /// Whether the group has been let stand for election (see `tasks::open_elections`).
    pub(crate) standing: AtomicBool,
    /// When a current leader was last heard from (ms on [`clock_ms`]; 0: never), for readiness.
    pub(crate) leader_heard_ms: AtomicU64,
}

/// Milliseconds since this process first asked: a monotonic clock for `leader_heard_ms`.
pub(crate) fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl Partition {
    /// The group's voters, as its Raft metrics say (none before it is initialized).
    pub(crate) fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// The group's leader as this node knows it.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub(crate) fn status(&self) -> PartitionStatus {
        let m = self.raft.metrics().borrow().clone();
        let leader_addr = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = m.membership_config.membership().learner_ids().collect();
        PartitionStatus {
            partition: self.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index.unwrap_or_default(),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or_default(),
            last_offset: *self.offsets.borrow(),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
            damage: None,
        }
    }
}

/// What opening a group needs, whichever group and whenever it is opened.
pub(crate) struct Opener {
    pub(crate) node_id: NodeId,
    pub(crate) engine: Arc<Engine>,
    pub(crate) peers: PeerChannels,
    pub(crate) raft_config: Arc<Config>,
    pub(crate) queue: QueueBounds,
    /// The cluster's partition count: each group's state cache gets its share of the budget.
    pub(crate) partitions: u32,
    pub(crate) state_cache_mib: u64,
}

impl Opener {
    /// Start `p`'s Raft group on its stored state (none: an uninitialized group that waits for
    /// a leader to add it, or for `initialize`). It does not stand for election until told.
    pub(crate) async fn open(
        &self,
        p: PartitionId,
        handler: Arc<dyn CommandHandler>,
    ) -> anyhow::Result<Arc<Partition>> {
        let leading = Leading::default();
        let log = PartitionLogStore::new(self.engine.clone(), p, leading.clone());
        let cache = StateCache::for_one_of(self.partitions, self.state_cache_mib);
        let (sm, offsets) = PartitionStateMachine::open(
            self.engine.clone(),
            p,
            handler,
            leading.clone(),
            cache.clone(),
        )
        .with_context(|| format!("open state machine of {p}"))?;
        let network = NetworkFactory::new(p, self.peers.clone());
        let raft = Raft::new(self.node_id, self.raft_config.clone(), network, log, sm)
            .await
            .with_context(|| format!("start Raft of {p}"))?;
        raft.runtime_config().elect(false);
        tokio::spawn(track_leading(raft.metrics(), leading.clone()));
        let batcher = Batcher::spawn(p, raft.clone(), self.queue);
        Ok(Arc::new(Partition {
            id: p,
            raft,
            leading,
            batcher,
            offsets,
            cache,
            standing: AtomicBool::new(false),
            leader_heard_ms: AtomicU64::new(0),
        }))
    }
}

/// Keep `leading` equal to whether this node leads the group whose metrics these are, until
/// the group stops.
async fn track_leading(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
    leading: Leading,
) {
    loop {
        leading.set(metrics.borrow_and_update().state == ServerState::Leader);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The groups a node runs, by partition id (the metadata group included).
#[derive(Clone, Default)]
pub(crate) struct Groups(Arc<RwLock<BTreeMap<PartitionId, Arc<Partition>>>>);

impl Groups {
    pub(crate) fn get(&self, p: PartitionId) -> Option<Arc<Partition>> {
        self.0.read().expect("groups lock").get(&p).cloned()
    }

    pub(crate) fn insert(&self, part: Arc<Partition>) {
        self.0.write().expect("groups lock").insert(part.id, part);
    }

    pub(crate) fn remove(&self, p: PartitionId) -> Option<Arc<Partition>> {
        self.0.write().expect("groups lock").remove(&p)
    }

    /// Every group, in partition order (the metadata group last).
    pub(crate) fn all(&self) -> Vec<Arc<Partition>> {
        self.0
            .read()
            .expect("groups lock")
            .values()
            .cloned()
            .collect()
    }

    /// The data partitions this node runs a group of.
    pub(crate) fn data_ids(&self) -> Vec<PartitionId> {
        self.0
            .read()
            .expect("groups lock")
            .keys()
            .copied()
            .filter(|p| *p != PartitionId::META)
            .collect()
    }
}

impl RaftGroups for Groups {
    fn raft(&self, p: PartitionId) -> Option<Raft<TypeConfig>> {
        self.get(p).map(|part| part.raft.clone())
    }

    fn heard_from_leader(&self, p: PartitionId) {
        if let Some(part) = self.get(p) {
            part.leader_heard_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }
}
