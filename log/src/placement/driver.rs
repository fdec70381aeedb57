//! The placement driver: the one actor that changes where replicas live. Every node runs the
//! loop; it acts only while its node leads the metadata group, so there is one driver at a time
//! (and a new one the moment leadership moves).
//!
//! Each tick it does one thing, the first of: propose the first map if there is none; keep
//! every node in the metadata group (learners, a few voters); carry on the move under way;
//! retire a leaving node that holds nothing; start the next move `balance` asks for; hand over
//! one leadership. A move is written into the map before any Raft step is taken (learners to
//! add, voters leaving), and each step checks what is already done, so a driver that crashes
//! mid-move is replaced by one that finishes it from the map:
//!
//! 1. the learners' nodes open the partition's group (they see themselves in the map);
//! 2. the partition's leader adds them as learners and waits until they have caught up
//!    (snapshot, then log);
//! 3. a leader that is leaving hands its leadership to a voter that stays;
//! 4. the leader makes the new voter set current with a joint change (openraft: joint
//!    config, then the new one), so the partition never drops below a quorum;
//! 5. the map records the new voters; the old replicas' nodes then delete their copies.
//!
//! One move at a time and one leader handover per tick are the rate limit.
//!
//! Nodes that have answered none of this node's Raft calls for [`DOWN_AFTER`] (see
//! `network/reach.rs`; as the metadata group's leader it calls every node each heartbeat) are
//! down to the driver: it moves no replica and hands no leadership to them, promotes none to a
//! metadata voter, and gives up a move whose new replica is on one (the group goes back to its
//! voters, the map with it), so a node that dies before it is replaced never holds placement up.
//! A learner catching up is waited for a little each tick, so a learner that dies part way is
//! seen within that wait.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tonic::Status;

use super::balance::{next_move, next_transfer};
use super::map::{MapChange, NodeState, PartitionMap};
use crate::node::LogNode;
use crate::types::{NodeId, PartitionId};

const TICK: Duration = Duration::from_secs(1);
/// How long one tick waits for a learner to catch up (a snapshot of a large partition, then
/// its log, can take many); the next tick waits again.
const CATCH_UP_WAIT: Duration = Duration::from_secs(20);
/// How long a node may leave every call unanswered before the driver counts it as down. Long
/// enough that a restart or a brief partition does not undo a move, short next to how long a
/// move onto a dead node would otherwise wait.
const DOWN_AFTER: Duration = Duration::from_secs(30);
/// How long one voter change or handover may take.
const STEP: Duration = Duration::from_secs(30);
/// Voters of the metadata group: up to this many, the rest of the nodes are learners.
const META_VOTERS: usize = 5;
/// After a leader handover the balancer asked for fails, it asks for none for this long (the
/// target may be behind, or short of disk, for a while).
const HANDOVER_BACKOFF: Duration = Duration::from_secs(10);

/// The driver loop; see the module docs.
pub(crate) async fn run(node: Weak<LogNode>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handovers_after = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.is_stopped() {
            return;
        }
        if !node.is_leader(PartitionId::META) {
            continue;
        }
        let stepped = tokio::select! {
            stepped = step(&node, &mut handovers_after) => stepped,
            // A step may wait minutes (a learner catching up): not past a shutdown.
            _ = node.until_stopped() => return,
        };
        if let Err(e) = stepped {
            tracing::warn!(code = ?e.code(), error = e.message(), "placement: will retry");
        }
    }
}

async fn step(
    node: &Arc<LogNode>,
    handovers_after: &mut tokio::time::Instant,
) -> Result<(), Status> {
    let Some(map) = node.map() else {
        return node.bootstrap_map().await;
    };
    let down = node.silent_peers(DOWN_AFTER);
    if keep_meta_members(node, &map, &down).await? {
        return Ok(());
    }
    if let Some(p) = map
        .partition_ids()
        .find(|p| map.replicas[p.0 as usize].moving())
    {
        let r = &map.replicas[p.0 as usize];
        let gone: Vec<NodeId> = r.learners.intersection(&down).copied().collect();
        if !gone.is_empty() {
            return abandon_move(node, &map, p, &gone).await;
        }
        return continue_move(node, &map, p).await;
    }
    let emptied = map
        .nodes
        .iter()
        .find(|(id, n)| n.state == NodeState::Leaving && map.hosted_by(**id).is_empty());
    if let Some((id, _)) = emptied {
        let remove = MapChange::SetNodeState {
            id: *id,
            state: NodeState::Removed,
        };
        node.change_map(map.epoch, remove).await?;
        tracing::info!(node = id, "placement: node emptied and removed");
        return Ok(());
    }
    if !map.balancing {
        return Ok(());
    }
    if let Some(change) = next_move(&map, &down) {
        tracing::info!(?change, "placement: next move");
        metrics::counter!("chatd_placement_moves_total").increment(1);
        node.change_map(map.epoch, change).await?;
        return Ok(());
    }
    if tokio::time::Instant::now() < *handovers_after {
        return Ok(());
    }
    if let Some((p, from, to)) = next_transfer(&map, &down) {
        tracing::info!(partition = %p, from, to, "placement: handing over a leadership");
        metrics::counter!("chatd_leader_transfers_total").increment(1);
        let from_addr = addr(&map, from)?;
        let handed = node
            .peer_calls()
            .transfer_leader((from, from_addr.as_str()), p, to, STEP)
            .await;
        if handed.is_err() {
            *handovers_after = tokio::time::Instant::now() + HANDOVER_BACKOFF;
        }
        handed?;
    }
    Ok(())
}

fn addr(map: &PartitionMap, node: NodeId) -> Result<String, Status> {
    map.addr(node)
        .map(str::to_string)
        .ok_or_else(|| Status::failed_precondition(format!("node {node} has no address")))
}

/// Keep every node of the map in the metadata group — a few voters, the rest learners, removed
/// nodes out — so each holds a copy of the map. True if it changed something (one change per
/// tick). Nodes that are `down` are not made voters.
async fn keep_meta_members(
    node: &Arc<LogNode>,
    map: &PartitionMap,
    down: &BTreeSet<NodeId>,
) -> Result<bool, Status> {
    let meta = PartitionId::META;
    let Some(current) = node.group_members(meta) else {
        return Ok(false);
    };
    let members: BTreeSet<NodeId> = current
        .voters
        .iter()
        .chain(&current.learners)
        .copied()
        .collect();
    let wanted: BTreeSet<NodeId> = map
        .nodes
        .iter()
        .filter(|(_, n)| n.state != NodeState::Removed)
        .map(|(id, _)| *id)
        .collect();
    if let Some(new) = wanted.difference(&members).next() {
        let addr = addr(map, *new)?;
        node.add_learner(meta, *new, addr, STEP).await?;
        tracing::info!(node = new, "placement: node joined the metadata group");
        return Ok(true);
    }
    let can_vote = |id: &NodeId| {
        matches!(
            map.nodes.get(id).map(|n| n.state),
            Some(NodeState::Active | NodeState::Draining)
        )
    };
    let eligible = wanted.iter().filter(|id| can_vote(id)).count();
    let size = match eligible {
        n if n >= META_VOTERS => META_VOTERS,
        n if n >= 3 => 3,
        n => n.max(1),
    };
    let mut voters: BTreeSet<NodeId> = current.voters.iter().copied().filter(can_vote).collect();
    let promotable = |id: &&NodeId| can_vote(id) && !down.contains(id);
    for id in current.learners.iter().filter(promotable) {
        if voters.len() >= size {
            break;
        }
        voters.insert(*id);
    }
    if !voters.is_empty() && voters != current.voters.iter().copied().collect::<BTreeSet<_>>() {
        node.change_voters(meta, voters.clone(), true, STEP).await?;
        tracing::info!(?voters, "placement: metadata group voters changed");
        return Ok(true);
    }
    let gone: BTreeSet<NodeId> = members.difference(&wanted).copied().collect();
    if !gone.is_empty() {
        node.remove_members(meta, gone.clone()).await?;
        tracing::info!(?gone, "placement: removed nodes left the metadata group");
        return Ok(true);
    }
    Ok(false)
}

/// The leader of `p` as one of its replicas knows it (the map's hint asked first).
pub(crate) async fn leader_of(
    node: &LogNode,
    map: &PartitionMap,
    p: PartitionId,
) -> Result<(NodeId, String), Status> {
    let calls = node.peer_calls();
    for candidate in map.replicas[p.0 as usize].voters_leader_first() {
        let Ok(candidate_addr) = addr(map, candidate) else {
            continue;
        };
        match calls.replica(candidate, &candidate_addr, p).await {
            Ok(reply) if reply.leader != 0 => return Ok((reply.leader, addr(map, reply.leader)?)),
            _ => continue,
        }
    }
    Err(Status::unavailable(format!("{p} has no known leader")))
}

/// Take the next step of `p`'s move (see the module docs); each call does what is not done
/// yet and returns, the next tick goes on.
async fn continue_move(
    node: &Arc<LogNode>,
    map: &PartitionMap,
    p: PartitionId,
) -> Result<(), Status> {
    let r = &map.replicas[p.0 as usize];
    let calls = node.peer_calls();
    for learner in &r.learners {
        let learner_addr = addr(map, *learner)?;
        if !calls.replica(*learner, &learner_addr, p).await?.hosted {
            return Ok(());
        }
    }
    let (leader, leader_addr) = leader_of(node, map, p).await?;
    for learner in &r.learners {
        let learner_addr = addr(map, *learner)?;
        let started = tokio::time::Instant::now();
        let caught_up = calls
            .add_learner(
                (leader, leader_addr.as_str()),
                p,
                (*learner, learner_addr.as_str()),
                CATCH_UP_WAIT,
            )
            .await;
        match caught_up {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                tracing::info!(partition = %p, learner, "placement: learner still catching up");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        tracing::info!(partition = %p, learner, last_wait = ?started.elapsed(), "placement: learner caught up");
    }
    let target = r.target_voters();
    if r.leaving.contains(&leader) {
        if let Some(to) = r.voters.iter().find(|v| target.contains(v)) {
            calls
                .transfer_leader((leader, leader_addr.as_str()), p, *to, STEP)
                .await?;
            return Ok(());
        }
    }
    calls
        .change_voters(
            (leader, leader_addr.as_str()),
            p,
            target.iter().copied(),
            STEP,
        )
        .await?;
    let done = MapChange::SetReplicas {
        partition: p,
        voters: target.clone(),
        learners: BTreeSet::new(),
        leaving: BTreeSet::new(),
    };
    node.change_map(map.epoch, done).await?;
    tracing::info!(partition = %p, voters = ?target, "placement: move done");
    Ok(())
}

/// Give up `p`'s move: the nodes of new replicas `gone` do not answer. The partition's leader
/// makes the old voters the group again (dropping the learners, or the new voters if the change
/// was already made), then the map says so; the balancer then plans again without those nodes.
async fn abandon_move(
    node: &Arc<LogNode>,
    map: &PartitionMap,
    p: PartitionId,
    gone: &[NodeId],
) -> Result<(), Status> {
    let r = &map.replicas[p.0 as usize];
    let (leader, leader_addr) = leader_of(node, map, p).await?;
    node.peer_calls()
        .change_voters(
            (leader, leader_addr.as_str()),
            p,
            r.voters.iter().copied(),
            STEP,
        )
        .await?;
    let undone = MapChange::SetReplicas {
        partition: p,
        voters: r.voters.clone(),
        learners: BTreeSet::new(),
        leaving: BTreeSet::new(),
    };
    node.change_map(map.epoch, undone).await?;
    metrics::counter!("chatd_placement_moves_abandoned_total").increment(1);
    tracing::warn!(partition = %p, ?gone, down_for = ?DOWN_AFTER, "placement: move given up, its new replica's node does not answer");
    Ok(())
}
