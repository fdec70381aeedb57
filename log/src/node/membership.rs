//! What a node does for placement: it keeps its copy of the partition map, forms the cluster on
//! a first start, opens and closes the groups the map gives it and takes away, and — when it
//! leads a partition — carries out the Raft steps of a move (add a learner, change the voters,
//! hand over leadership). Which steps to take is the driver's to decide
//! (`crate::placement::driver`, run by the metadata group's leader); the steps are here because
//! they are Raft calls on this node's groups.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chat_proto::log as pb;
use chat_proto::raft::{CampaignRequest, MembershipReply, ReplicaReply};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use prost::Message;
use tonic::Status;

use super::partition::Partition;
use super::{tasks, LogNode};
use crate::codec::{self, cf, StateNs};
use crate::error::ProposeError;
use crate::placement::{read_map, MapChange, MapEpoch, NodeState, PartitionMap, PeerCalls};
use crate::store::TypeConfig;
use crate::types::{CommandOutcome, NodeId, PartitionId, RejectCode};

/// How far behind the leader's log a handover target may be when it is asked (it catches up
/// the rest while the leader holds new proposals back).
const HANDOVER_LAG: u64 = 64;

/// How long a first start asks its fellow members whether the cluster already exists.
const ASK_PEERS_FOR: Duration = Duration::from_secs(2);

impl LogNode {
    /// This node's copy of the partition map (None before the cluster has one).
    pub fn map(&self) -> Option<Arc<PartitionMap>> {
        self.map.borrow().clone()
    }

    /// Follow this node's copy of the partition map.
    pub fn watch_map(&self) -> tokio::sync::watch::Receiver<Option<Arc<PartitionMap>>> {
        self.map.subscribe()
    }

    /// The map as this node's replica of the metadata group has applied it.
    pub(super) fn stored_map(&self) -> anyhow::Result<Option<PartitionMap>> {
        let key = |k: &[u8]| codec::state_key(PartitionId::META, StateNs::Handler, k);
        Ok(read_map(|k| self.engine.get(cf::STATE, &key(k)))?)
    }

    /// Re-read the applied map and publish it if it moved.
    pub(crate) fn refresh_map(&self) -> anyhow::Result<()> {
        let Some(map) = self.stored_map()? else {
            return Ok(());
        };
        self.map.send_if_modified(|current| {
            if current.as_deref() == Some(&map) {
                return false;
            }
            *current = Some(Arc::new(map));
            true
        });
        Ok(())
    }

    /// The map the cluster forms with, computed alike on every first member. A cluster of a
    /// release before placement (every partition on every member) keeps that placement: its
    /// Raft groups have every member as a voter.
    pub(crate) fn first_map(&self) -> PartitionMap {
        let replication = if self.upgraded.load(std::sync::atomic::Ordering::Relaxed) {
            self.config.members.len() as u32
        } else {
            self.config.replication
        };
        PartitionMap::initial(&self.config.members, self.config.partitions, replication)
    }

    /// Data partitions with Raft state on this node (a vote, a log), whatever the map says: a
    /// replica the map has moved away is still opened at start, so it is closed (and its data
    /// deleted) the same way as while running.
    pub(super) fn partitions_with_state(&self) -> anyhow::Result<Vec<PartitionId>> {
        let mut found = BTreeSet::new();
        let end = codec::partition_end(PartitionId(self.config.partitions - 1));
        for item in self.engine.scan_from(cf::RAFT_META, &[], end) {
            let (key, _) = item?;
            if let Some(id) = key.get(..4) {
                found.insert(PartitionId(u32::from_be_bytes(
                    id.try_into().expect("4 bytes"),
                )));
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Whether group `p` (the metadata group included) has Raft state on this node.
    pub(super) fn has_raft_state(&self, p: PartitionId) -> anyhow::Result<bool> {
        let start = codec::partition_start(p);
        let end = codec::partition_end(p);
        Ok(self
            .engine
            .scan_from(cf::RAFT_META, &start, end)
            .next()
            .transpose()?
            .is_some())
    }

    /// Start `p`'s group here (a replica the map gives this node). A group with no Raft state
    /// starts from nothing: whatever an earlier replica of `p` left here is deleted first.
    pub(crate) async fn open_partition(&self, p: PartitionId) -> anyhow::Result<()> {
        if self.groups.get(p).is_some() {
            return Ok(());
        }
        if !self.has_raft_state(p)? {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || engine.drop_partition(p))
                .await
                .context("drop task")??;
        }
        let part = self.opener.open(p, self.handler.clone()).await?;
        self.groups.insert(part.clone());
        self.hosted.send_modify(|h| {
            h.insert(p);
        });
        tasks::let_stand(self, &part);
        tracing::info!(partition = %p, "replica opened");
        Ok(())
    }

    /// Stop `p`'s group and delete its data: the map has moved the replica away.
    pub(crate) async fn close_partition(&self, p: PartitionId) -> anyhow::Result<()> {
        let Some(part) = self.groups.remove(p) else {
            return Ok(());
        };
        self.hosted.send_modify(|h| {
            h.remove(&p);
        });
        if let Err(e) = part.raft.shutdown().await {
            tracing::warn!(partition = %p, error = %e, "raft shutdown");
        }
        drop(part);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.drop_partition(p))
            .await
            .context("drop task")??;
        tracing::info!(partition = %p, "replica moved away: group closed, its data deleted");
        Ok(())
    }

    /// The answer for a partition this node does not hold: where the map says it is.
    pub(super) fn redirect(&self, p: PartitionId) -> ProposeError {
        let Some(map) = self.map() else {
            return ProposeError::not_here(p, None, 0);
        };
        let target = map
            .replicas(p)
            .and_then(|r| r.voters_leader_first().first().copied());
        let with_addr = target.and_then(|id| map.addr(id).map(|a| (id, a.to_string())));
        ProposeError::not_here(p, with_addr, map.epoch.0)
    }

    /// Where `node`'s internal services listen, as the map (or the configuration) says.
    pub(crate) fn addr_of(&self, node: NodeId) -> Option<String> {
        if let Some(map) = self.map() {
            if let Some(addr) = map.addr(node) {
                return Some(addr.to_string());
            }
        }
        self.config.members.get(&node).cloned()
    }

    /// The peer nodes that have answered none of this node's Raft calls for `for_at_least`.
    pub(crate) fn silent_peers(&self, for_at_least: Duration) -> BTreeSet<NodeId> {
        self.opener.peers.reach().silent(for_at_least)
    }

    pub(crate) fn peer_calls(&self) -> PeerCalls {
        PeerCalls::new(self.opener.peers.clone())
    }

    /// Whether this node is handing `p`'s leadership over (no heartbeats, no proposals).
    pub(super) fn handing_over(&self, p: PartitionId) -> bool {
        self.handovers
            .lock()
            .expect("handovers lock")
            .contains_key(&p)
    }

    pub(super) fn refuse_while_handing_over(&self, p: PartitionId) -> Result<(), ProposeError> {
        let to = self
            .handovers
            .lock()
            .expect("handovers lock")
            .get(&p)
            .copied();
        match to {
            None => Ok(()),
            Some(to) => Err(ProposeError::not_leader(p, Some(to), self.addr_of(to))),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this node can serve clients: it knows the partition map, and every group it
    /// holds has a live leader — this node with a quorum's acknowledgement, or another that it
    /// has heard from within a lease (partitions held elsewhere are reached through the map's
    /// leader hints). A leader remembered from before a restart does not count. False once the
    /// node has stopped.
    pub fn can_serve(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.is_stopped() || self.map().is_none() {
            return false;
        }
        // About two leases: a follower hears from its leader every heartbeat.
        let live = 2 * self
            .config
            .raft
            .election_timeout_max_ms
            .max(self.config.raft.heartbeat_ms);
        let me = self.config.node_id;
        self.groups.all().iter().all(|part| {
            let m = part.raft.metrics();
            let m = m.borrow();
            match m.current_leader {
                None => false,
                Some(leader) if leader == me => {
                    let alone = m.membership_config.membership().voter_ids().eq([me]);
                    alone || m.millis_since_quorum_ack.is_some_and(|ms| ms <= live)
                }
                Some(_) => {
                    let heard = part.leader_heard_ms.load(Relaxed);
                    heard != 0 && super::partition::clock_ms().saturating_sub(heard) <= live
                }
            }
        })
    }

    /// Before a planned stop: stop standing for election (and refuse handovers to this node, so
    /// the balancer does not give leaderships back), then hand every leadership this node holds
    /// to the voter furthest along, all at once, waiting up to `within`. A leader stopping
    /// without this leaves its partitions without one for an election timeout or more; handed
    /// over, they go on after about a lease. Answers (handed over, still led here).
    pub async fn hand_over_leaderships(&self, within: Duration) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        *self.elections_open.lock().expect("elections lock") = false;
        self.stepped_away.store(true, Relaxed);
        let me = self.config.node_id;
        let mut handovers = Vec::new();
        for part in self.groups.all() {
            part.raft.runtime_config().elect(false);
            let target = {
                let m = part.raft.metrics();
                let m = m.borrow();
                if m.state != ServerState::Leader {
                    continue;
                }
                m.membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| *v != me)
                    .max_by_key(|v| matched(&m, *v).unwrap_or_default())
            };
            // A group whose only voter is this node has nobody to hand to.
            let Some(to) = target else { continue };
            let p = part.id;
            handovers.push(async move {
                let result = tokio::time::timeout(within, self.transfer_leader(p, to, within))
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("no new leader in time")));
                if let Err(e) = &result {
                    tracing::warn!(partition = %p, to, error = %e.message(), "leadership not handed over before stopping");
                }
                result.is_ok()
            });
        }
        let results = futures::future::join_all(handovers).await;
        let moved = results.iter().filter(|ok| **ok).count();
        (moved, results.len() - moved)
    }

    /// Resolves once [`LogNode::shutdown`] has begun. Tasks that hold the node while they wait
    /// on something else (a peer, a catch-up) race it, so the node's storage closes promptly.
    pub async fn until_stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Decide, before any group is opened, how this start relates to the cluster, and which
    /// partitions to open: those of the stored map; none for a node waiting to join; those of
    /// the running cluster's map for a first start that finds one (a member that started
    /// late); those of the first map when the cluster is forming. Returns them, and whether
    /// this start forms the cluster (then [`LogNode::initialize`] initializes the groups).
    ///
    /// A node whose data dir was just created asks its fellow members first: if the cluster
    /// exists and knows this node under another data dir, the node lost its data and must not
    /// vote with an empty log — it refuses to start (before it serves any Raft request).
    pub(super) async fn placement_at_start(&self) -> anyhow::Result<(Vec<PartitionId>, bool)> {
        let me = self.config.node_id;
        if let Some(map) = self.stored_map()? {
            return Ok((map.hosted_by(me), false));
        }
        if self.config.join {
            return Ok((Vec::new(), false));
        }
        if self.fresh && self.config.members.len() > 1 {
            if let Some(map) = self.ask_peers_for_map().await {
                self.check_known(&map)?;
                return Ok((map.hosted_by(me), false));
            }
        }
        Ok((self.first_map().hosted_by(me), true))
    }

    /// Refuse to start as a member the running cluster (whose map is `map`) does not know as
    /// this data dir.
    fn check_known(&self, map: &PartitionMap) -> anyhow::Result<()> {
        let me = self.config.node_id;
        match map.nodes.get(&me) {
            Some(n) if n.incarnation != 0 && n.incarnation != self.incarnation => bail!(
                "node {me} is a member of the running cluster (partition map {}) but its data \
                 dir {} is new: its data was lost. A node that lost its data must not vote again \
                 under its old id; replace it by a new node (`chatctl node replace {me} --by \
                 <new id> <addr>`) and start that one with --join",
                map.epoch,
                self.config.data_dir.display()
            ),
            Some(n) if n.state == NodeState::Removed => {
                bail!("node {me} was removed from the cluster; its id is not used again")
            }
            // A late first start: the groups' leaders bring this node up to date.
            Some(_) => Ok(()),
            None => bail!(
                "the cluster is running (partition map {}) without node {me}; start it with \
                 --join and add it with `chatctl node add {me} <addr>`",
                map.epoch
            ),
        }
    }

    /// Form the cluster if this start does (see [`LogNode::placement_at_start`]); otherwise
    /// there is nothing to do (every group has its state, or gets it from its leader).
    ///
    /// The metadata group gets every configured member as a voter; each partition the voters
    /// the first map gives it. openraft starts an election on the node that initializes, so to
    /// spread leadership the partition's first leader (as the map has it) initializes at once
    /// and the other voters only after two maximum election timeouts, and only if by then they
    /// have heard nothing (it may be down). Initializing with the same members on several
    /// nodes is safe: openraft accepts identical initial memberships.
    pub async fn initialize(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.config.node_id;
        if self.config.join && self.map().is_none() {
            tracing::info!(
                node = me,
                "waiting to be added to the cluster (`chatctl node add {me} <addr>` on any node)"
            );
        }
        if !self.forming.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let grace = Duration::from_millis((2 * self.config.raft.election_timeout_max_ms).max(3000));
        let basic = |ids: &mut dyn Iterator<Item = NodeId>| -> BTreeMap<NodeId, BasicNode> {
            ids.filter_map(|id| {
                self.config
                    .members
                    .get(&id)
                    .map(|a| (id, BasicNode::new(a)))
            })
            .collect()
        };
        let meta_voters = basic(&mut self.config.members.keys().copied());
        let meta_first = self.config.members.keys().next() == Some(&me);
        self.initialize_group(PartitionId::META, meta_voters, meta_first, grace)
            .await?;
        let first = self.first_map();
        for p in first.hosted_by(me) {
            let r = first.replicas(p).expect("hosted partitions exist");
            let voters = basic(&mut r.voters.iter().copied());
            let preferred = r.leader_hint.map(|(l, _)| l) == Some(me);
            self.initialize_group(p, voters, preferred, grace).await?;
        }
        Ok(())
    }

    /// Initialize `p`'s group with `voters` unless it has state: now if this node is the one
    /// preferred to lead it, after `grace` otherwise.
    async fn initialize_group(
        &self,
        p: PartitionId,
        voters: BTreeMap<NodeId, BasicNode>,
        preferred: bool,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let Some(part) = self.groups.get(p) else {
            return Ok(());
        };
        if part.raft.is_initialized().await? {
            return Ok(());
        }
        let raft = part.raft.clone();
        if preferred {
            return initialize_raft(&raft, voters).await;
        }
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Err(e) = initialize_raft(&raft, voters).await {
                tracing::error!(partition = %p, error = %e, "initialize");
            }
        });
        Ok(())
    }

    /// The map of the running cluster, if a fellow member has one (asked for a few seconds).
    async fn ask_peers_for_map(&self) -> Option<PartitionMap> {
        let calls = self.peer_calls();
        let deadline = tokio::time::Instant::now() + ASK_PEERS_FOR;
        let others: Vec<(NodeId, String)> = self
            .config
            .members
            .iter()
            .filter(|(id, _)| **id != self.config.node_id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        loop {
            let mut anyone_answered = false;
            for (id, addr) in &others {
                match calls.get_map(*id, addr).await {
                    Ok(Some(map)) => return Some(map),
                    Ok(None) => anyone_answered = true,
                    Err(_) => {}
                }
            }
            if anyone_answered || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Propose the first map (the metadata group's leader does, once it is elected).
    pub(crate) async fn bootstrap_map(&self) -> Result<(), Status> {
        let first = self.first_map();
        let command = pb::MetaCommand {
            expected_epoch: 0,
            change: Some(pb::meta_command::Change::Bootstrap(first.to_pb())),
        };
        match self.propose_meta(command).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(status),
        }
    }

    /// Apply `change` to the partition map (made on the map of `expected`) through the
    /// metadata group's leader, wherever it is; answers the map's new epoch once this node's
    /// copy has it.
    pub async fn change_map(
        &self,
        expected: MapEpoch,
        change: MapChange,
    ) -> Result<MapEpoch, Status> {
        let command = pb::MetaCommand {
            expected_epoch: expected.0,
            change: Some(change.to_pb()),
        };
        let epoch = match self.propose_meta(command.clone()).await {
            Err(status) if is_not_leader(&status) => {
                let Some((leader, addr)) = self.meta_leader() else {
                    return Err(Status::unavailable(
                        "the metadata group has no leader (an election is under way); retry",
                    ));
                };
                self.peer_calls().change_map(leader, &addr, command).await?
            }
            other => other?,
        };
        self.wait_for_map(epoch, Duration::from_secs(5)).await;
        Ok(epoch)
    }

    /// Propose a map change to the metadata group on this node (its leader).
    pub(crate) async fn propose_meta(&self, command: pb::MetaCommand) -> Result<MapEpoch, Status> {
        // A metadata leader without its quorum takes the change and never answers: bounded.
        let wait = Duration::from_secs(10);
        let outcome = tokio::time::timeout(
            wait,
            self.propose(PartitionId::META, vec![command.encode_to_vec()]),
        )
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "the metadata group did not commit the change within {wait:?}; it may still commit"
            ))
        })??;
        match outcome.outcomes.into_iter().next() {
            Some(CommandOutcome::Applied { reply, .. }) => {
                let bytes: [u8; 8] = reply
                    .as_slice()
                    .try_into()
                    .map_err(|_| Status::internal("a map change answered no epoch"))?;
                Ok(MapEpoch(u64::from_be_bytes(bytes)))
            }
            Some(CommandOutcome::Rejected { code, message }) => Err(match code {
                RejectCode::AlreadyExists => Status::already_exists(message),
                RejectCode::InvalidArgument => Status::invalid_argument(message),
                RejectCode::Aborted => Status::aborted(message),
                _ => Status::failed_precondition(message),
            }),
            None => Err(Status::internal("a map change had no outcome")),
        }
    }

    /// The metadata group's leader and its address, as this node knows them.
    fn meta_leader(&self) -> Option<(NodeId, String)> {
        let leader = self.groups.get(PartitionId::META)?.leader()?;
        Some((leader, self.addr_of(leader)?))
    }

    /// Wait (at most `timeout`) until this node's copy of the map has reached `epoch`.
    pub(crate) async fn wait_for_map(&self, epoch: MapEpoch, timeout: Duration) -> bool {
        let mut map = self.watch_map();
        let reached = map.wait_for(|m| m.as_ref().is_some_and(|m| m.epoch >= epoch));
        tokio::select! {
            reached = tokio::time::timeout(timeout, reached) => reached.is_ok_and(|r| r.is_ok()),
            _ = self.until_stopped() => false,
        }
    }

    /// Bring the groups on this node in line with the map: open the replicas it gives this
    /// node, close those it has moved away, register this node's data dir, and report the
    /// leaderships held here as hints. Run on every map change and once a second.
    pub(crate) async fn reconcile(self: &Arc<Self>) {
        let Some(map) = self.map() else { return };
        let me = self.config.node_id;
        match map.nodes.get(&me) {
            // Not added yet (a joining node), or the map is older than the join.
            None => return,
            Some(n) if n.state == NodeState::Removed => {
                tracing::error!(
                    node = me,
                    "this node was removed from the cluster; stopping its groups"
                );
                self.shutdown().await;
                return;
            }
            Some(n) if n.incarnation != 0 && n.incarnation != self.incarnation => {
                tracing::error!(
                    node = me,
                    "the cluster knows node {me} with another data dir: this node's data was lost. Stopping its groups; replace it by a new node id"
                );
                self.shutdown().await;
                return;
            }
            // Checked before this node registers its data dir: a joining node started with
            // another partition count would route every chat to the wrong partition. Its dir
            // is still unregistered, so it may start again on a new dir under the same id.
            Some(_) if map.partitions != self.config.partitions => {
                tracing::error!(
                    node = me,
                    "the cluster has {} partitions but this node was started with {}: stopping. \
                     Remove its data dir and start it again with --partitions {}",
                    map.partitions,
                    self.config.partitions,
                    map.partitions
                );
                self.shutdown().await;
                return;
            }
            Some(n) if n.incarnation == 0 => {
                let change = MapChange::RegisterIncarnation {
                    id: me,
                    incarnation: self.incarnation,
                };
                if let Err(e) = self.change_map(map.epoch, change).await {
                    tracing::debug!(error = %e, "registering the data dir: will retry");
                }
            }
            Some(_) => {}
        }
        for p in map.hosted_by(me) {
            if let Err(e) = self.open_partition(p).await {
                tracing::error!(partition = %p, error = %e, "open replica");
            }
        }
        for p in self.groups.data_ids() {
            let moved_away = map.replicas(p).is_some_and(|r| !r.holds(me));
            if moved_away {
                if let Err(e) = self.close_partition(p).await {
                    tracing::error!(partition = %p, error = %e, "close replica");
                }
            }
        }
        self.report_leaders(&map).await;
    }

    /// Tell the map about the partitions this node leads that it names another leader for.
    async fn report_leaders(&self, map: &PartitionMap) {
        let me = self.config.node_id;
        for part in self.groups.all() {
            if part.id == PartitionId::META || !part.leading.get() {
                continue;
            }
            let term = part.raft.metrics().borrow().current_term;
            let known = map.replicas(part.id).and_then(|r| r.leader_hint);
            if known == Some((me, term)) {
                continue;
            }
            let hint = MapChange::LeaderHint {
                partition: part.id,
                leader: me,
                term,
            };
            if let Err(e) = self.change_map(map.epoch, hint).await {
                tracing::debug!(partition = %part.id, error = %e, "leader hint: will retry");
                return;
            }
        }
    }

    /// This node's group of `p`, if it leads it; otherwise a redirect.
    fn leading(&self, p: PartitionId) -> Result<Arc<Partition>, Status> {
        let part = self.partition(p)?;
        if part.raft.metrics().borrow().state != ServerState::Leader {
            let status = part.status();
            return Err(ProposeError::not_leader(p, status.leader_id, status.leader_addr).into());
        }
        Ok(part)
    }

    /// At `p`'s leader: add `node` (at `addr`) as a learner and wait until it has caught up
    /// with the log as it stood when the wait began.
    pub(crate) async fn add_learner(
        &self,
        p: PartitionId,
        node: NodeId,
        addr: String,
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let part = self.leading(p)?;
        let already = part
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .is_some();
        if !already {
            part.raft
                .add_learner(node, BasicNode::new(addr), false)
                .await
                .map_err(|e| write_error(p, e))?;
        }
        let want = part.raft.metrics().borrow().last_log_index;
        part.raft
            .wait(Some(timeout))
            .metrics(|m| matched(m, node) >= want, "the learner has caught up")
            .await
            .map_err(|e| {
                Status::deadline_exceeded(format!(
                    "{p}: node {node} has not caught up within {timeout:?}: {e}"
                ))
            })?;
        Ok(membership_reply(&part))
    }

    /// At `p`'s leader: make `voters` the group's voters (a joint change; every new voter
    /// must be a learner that has caught up). Members not named leave the group, or with
    /// `keep_others` stay as learners (the metadata group keeps every node).
    pub(crate) async fn change_voters(
        &self,
        p: PartitionId,
        voters: BTreeSet<NodeId>,
        keep_others: bool,
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let part = self.leading(p)?;
        if voters.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{p} needs at least one voter"
            )));
        }
        let done = {
            let m = part.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            membership.get_joint_config().len() == 1
                && membership.voter_ids().collect::<BTreeSet<_>>() == voters
                && (keep_others || membership.learner_ids().next().is_none())
        };
        if !done {
            let change = part.raft.change_membership(voters.clone(), keep_others);
            tokio::time::timeout(timeout, change)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "{p}: the voter change took over {timeout:?}"
                    ))
                })?
                .map_err(|e| write_error(p, e))?;
        }
        if !keep_others {
            // Learners not made voters (a move given up) leave too.
            let learners: BTreeSet<NodeId> = part
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .learner_ids()
                .collect();
            self.remove_members(p, learners).await?;
        }
        Ok(membership_reply(&part))
    }

    /// At `p`'s leader: take `nodes` (learners, or voters of a removed node) out of the group.
    pub(crate) async fn remove_members(
        &self,
        p: PartitionId,
        nodes: BTreeSet<NodeId>,
    ) -> Result<MembershipReply, Status> {
        let part = self.leading(p)?;
        if !nodes.is_empty() {
            let remove = openraft::ChangeMembers::RemoveNodes(nodes);
            part.raft
                .change_membership(remove, false)
                .await
                .map_err(|e| write_error(p, e))?;
        }
        Ok(membership_reply(&part))
    }

    /// The voters and learners of `p`'s group as this node knows them.
    pub(crate) fn group_members(&self, p: PartitionId) -> Option<MembershipReply> {
        self.groups.get(p).map(|part| membership_reply(&part))
    }

    /// At `p`'s leader: hand its leadership to `to`, a voter that has caught up.
    ///
    /// openraft 0.9 has no leader transfer, so this makes one: the leader stops heartbeating
    /// the partition and refuses proposals for it (callers retry at `to`), and asks `to` to
    /// stand once the voters' leader lease has run out; `to` stands before any other
    /// follower's election timer fires (those wait a lease *and* a random timeout), with a log
    /// as long as anyone's, and wins. If someone else wins, the handover fails and can be
    /// asked again.
    pub(crate) async fn transfer_leader(
        &self,
        p: PartitionId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<MembershipReply, Status> {
        let part = self.leading(p)?;
        if to == self.config.node_id {
            return Ok(membership_reply(&part));
        }
        if !part.voters().contains(&to) {
            return Err(Status::failed_precondition(format!(
                "node {to} is not a voter of {p}"
            )));
        }
        let Some(addr) = self.addr_of(to) else {
            return Err(Status::failed_precondition(format!(
                "node {to} has no known address"
            )));
        };
        // Judged while the partition runs on as it is: a target that is behind (or refuses)
        // costs nothing, no heartbeat is held back for it.
        let (term, behind) = {
            let m = part.raft.metrics();
            let m = m.borrow();
            let last = m.last_log_index.unwrap_or_default();
            let matched = matched(&m, to).unwrap_or_default();
            (m.current_term, last.saturating_sub(matched))
        };
        if behind > HANDOVER_LAG {
            return Err(Status::failed_precondition(format!(
                "node {to} is {behind} entries behind on {p}; try later"
            )));
        }
        // The target checks it can lead (it holds a voter of `p`, its disk has room) and
        // stands once the lease has run out.
        let campaign = CampaignRequest {
            partition: p.0,
            term,
        };
        self.peer_calls().campaign(to, &addr, campaign).await?;
        self.handovers.lock().expect("handovers lock").insert(p, to);
        let result = async {
            part.raft
                .wait(Some(timeout))
                .metrics(|m| m.current_leader == Some(to), "the target elected")
                .await
                .map_err(|_| Status::aborted(format!("{p}: node {to} was not elected; try again")))
        }
        .await;
        self.handovers.lock().expect("handovers lock").remove(&p);
        result?;
        Ok(membership_reply(&part))
    }

    /// At a handover's target: stand for `p`'s leadership once the old leader's lease on the
    /// voters has run out, unless the partition has moved past `term` by then.
    pub(crate) fn campaign(&self, p: PartitionId, term: u64) -> Result<(), Status> {
        let part = self.partition(p)?;
        let me = self.config.node_id;
        if !part.voters().contains(&me) {
            return Err(Status::failed_precondition(format!(
                "node {me} is not a voter of {p}"
            )));
        }
        if self.stepped_away.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Status::failed_precondition(format!(
                "node {me}'s disk is below its reserve: it does not take leaderships"
            )));
        }
        if let Some(why) = self.damaged(p) {
            return Err(Status::failed_precondition(format!(
                "node {me}'s replica of {p} is damaged ({why}): it takes no leadership until repaired"
            )));
        }
        // The lease runs from the leader's last heartbeat, at most one interval before it
        // stopped them.
        let wait = Duration::from_millis(
            self.config.raft.election_timeout_max_ms + self.config.raft.heartbeat_ms / 2,
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let (current, state) = {
                let m = part.raft.metrics();
                let m = m.borrow();
                (m.current_term, m.state)
            };
            if current > term || state == ServerState::Leader {
                return;
            }
            let _ = part.raft.trigger().elect().await;
        });
        Ok(())
    }

    /// Hand `p`'s leadership to `to`, asking whichever node leads it now; answers the new
    /// leader.
    pub async fn transfer_leadership(&self, p: PartitionId, to: NodeId) -> Result<NodeId, Status> {
        let Some(map) = self.map() else {
            return Err(Status::unavailable("the cluster has no partition map yet"));
        };
        let (leader, addr) = crate::placement::driver::leader_of(self, &map, p).await?;
        if leader == to {
            return Ok(to);
        }
        let reply = self
            .peer_calls()
            .transfer_leader((leader, addr.as_str()), p, to, Duration::from_secs(10))
            .await?;
        Ok(reply.leader)
    }

    /// Ok if this node holds a replica of `p`; otherwise a redirect to one that does (reads
    /// of a partition held elsewhere must not answer from nothing).
    pub fn replica_here(&self, p: PartitionId) -> Result<(), ProposeError> {
        self.partition(p).map(drop)
    }

    /// Whether this node runs a group of `p`, and its progress there.
    pub(crate) fn replica_reply(&self, p: PartitionId) -> ReplicaReply {
        match self.groups.get(p) {
            None => ReplicaReply::default(),
            Some(part) => {
                let status = part.status();
                ReplicaReply {
                    hosted: true,
                    applied_index: status.applied_index,
                    last_offset: status.last_offset.0,
                    leader: status.leader_id.unwrap_or_default(),
                }
            }
        }
    }
}

/// How far `node`'s log matches the leader's, as the leader's metrics say (0: not known).
fn matched(m: &openraft::RaftMetrics<NodeId, BasicNode>, node: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&node))
        .and_then(|l| l.as_ref())
        .map(|l| l.index)
        .or(Some(0))
}

fn membership_reply(part: &Partition) -> MembershipReply {
    let status = part.status();
    MembershipReply {
        voters: status.voters,
        learners: status.learners,
        leader: status.leader_id.unwrap_or_default(),
    }
}

fn is_not_leader(status: &Status) -> bool {
    chat_proto::LeaderHint::from_status(status).is_some()
}

/// A membership change openraft refused, as a status (a leadership lost on the way is a
/// redirect like any other).
fn write_error(
    p: PartitionId,
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let addr = f.leader_node.map(|n| n.addr);
            ProposeError::not_leader(p, f.leader_id, addr).into()
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(format!("{p}: {c}"))
        }
        RaftError::Fatal(f) => Status::unavailable(format!("{p} has stopped: {f}")),
    }
}

/// Initialize a group's Raft with `voters` unless it already has state.
async fn initialize_raft(
    raft: &openraft::Raft<TypeConfig>,
    voters: BTreeMap<NodeId, BasicNode>,
) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    match raft.initialize(voters).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
