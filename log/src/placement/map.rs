//! The partition map: which nodes the cluster has and which of them hold each partition.
//!
//! The map is the one record of the metadata group (`handler.rs` applies changes to it); every
//! node keeps a replica of that group and routes by its copy. Everything here is plain data and
//! pure functions, so the rules (what a valid change is, where the first replicas go) are tested
//! without a cluster.
//!
//! Two kinds of change: those that move the [`MapEpoch`] (nodes joining or leaving, replicas
//! moving) carry the epoch their proposer read and are refused if the map has moved on since, so
//! two proposers never interleave; leader hints move nothing but the hint, since they change on
//! every election and routing follows a `NotLeader` redirect anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chat_proto::log as pb;

use crate::types::{NodeId, PartitionId};

/// The version of a partition map; every change of nodes or replicas moves it by one.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapEpoch(pub u64);

impl fmt::Display for MapEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// How a node stands in the cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Holds replicas and takes new ones.
    Active,
    /// Down for maintenance soon: its leaderships move to other voters and it takes no new
    /// replicas; the replicas it has stay (the others keep a quorum while it is down).
    Draining,
    /// Being emptied to leave: removed once it holds nothing.
    Leaving,
    /// Gone for good; its id is never reused.
    Removed,
}

impl NodeState {
    fn from_pb(v: i32) -> Result<Self, String> {
        match pb::NodeState::try_from(v) {
            Ok(pb::NodeState::NodeActive) => Ok(NodeState::Active),
            Ok(pb::NodeState::NodeDraining) => Ok(NodeState::Draining),
            Ok(pb::NodeState::NodeRemoved) => Ok(NodeState::Removed),
            Ok(pb::NodeState::NodeLeaving) => Ok(NodeState::Leaving),
            Err(_) => Err(format!("unknown node state {v}")),
        }
    }

    fn to_pb(self) -> pb::NodeState {
        match self {
            NodeState::Active => pb::NodeState::NodeActive,
            NodeState::Draining => pb::NodeState::NodeDraining,
            NodeState::Removed => pb::NodeState::NodeRemoved,
            NodeState::Leaving => pb::NodeState::NodeLeaving,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
            NodeState::Leaving => "leaving",
        }
    }

    /// Whether a node in this state is given new replicas.
    pub fn takes_replicas(self) -> bool {
        self == NodeState::Active
    }
}

/// A node as the map knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// Where its internal services (Raft, forwarding, replica reads) listen.
    pub addr: String,
    pub state: NodeState,
    /// The random id of the node's data dir, once the node has registered it (0: not yet).
    pub incarnation: u64,
}

/// Where one partition lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// The voters of the partition's Raft group.
    pub voters: BTreeSet<NodeId>,
    /// Replicas being added, catching up as learners before they vote.
    pub learners: BTreeSet<NodeId>,
    /// Voters that leave once the learners have joined (the other half of a move).
    pub leaving: BTreeSet<NodeId>,
    /// The last leader a replica reported, with its term.
    pub leader_hint: Option<(NodeId, u64)>,
}

impl Replicas {
    /// Whether `node` holds (or is being given) a replica.
    pub fn holds(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// The voters in the order to ask them: the hinted leader first (if it is still a voter),
    /// then the others in id order.
    pub fn voters_leader_first(&self) -> Vec<NodeId> {
        let hint = self
            .leader_hint
            .map(|(leader, _)| leader)
            .filter(|l| self.voters.contains(l));
        hint.into_iter()
            .chain(self.voters.iter().copied().filter(|v| Some(*v) != hint))
            .collect()
    }

    /// The voters once the move under way (if any) is done.
    pub fn target_voters(&self) -> BTreeSet<NodeId> {
        self.voters
            .difference(&self.leaving)
            .chain(self.learners.iter())
            .copied()
            .collect()
    }

    /// Whether a move is under way (learners to add or voters to remove).
    pub fn moving(&self) -> bool {
        !self.learners.is_empty() || !self.leaving.is_empty()
    }
}

/// Which partitions live on which nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    pub epoch: MapEpoch,
    pub partitions: u32,
    /// Replicas each partition should have (fewer while the cluster has fewer active nodes).
    pub replication: u32,
    pub nodes: BTreeMap<NodeId, ClusterNode>,
    /// Indexed by partition id: `replicas[p]`.
    pub replicas: Vec<Replicas>,
    /// Whether replicas and leaders are balanced automatically.
    pub balancing: bool,
}

/// A change the map refuses, and why: FAILED_PRECONDITION for the proposer, or ABORTED when
/// it was made on an older map (`stale`: read the map again and retry).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
    pub stale: bool,
}

fn refuse<T>(message: impl Into<String>) -> Result<T, Refused> {
    Err(Refused {
        message: message.into(),
        stale: false,
    })
}

/// One change to the map (see the module docs for the two kinds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapChange {
    AddNode {
        id: NodeId,
        addr: String,
    },
    SetNodeState {
        id: NodeId,
        state: NodeState,
    },
    SetReplicas {
        partition: PartitionId,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        leaving: BTreeSet<NodeId>,
    },
    RegisterIncarnation {
        id: NodeId,
        incarnation: u64,
    },
    LeaderHint {
        partition: PartitionId,
        leader: NodeId,
        term: u64,
    },
    SetBalancing(bool),
}

impl PartitionMap {
    /// The first map of a cluster formed by `members`: partition `p`'s `replication` replicas are
    /// the members that follow one another in id order from member `p mod N`, so every member
    /// holds the same number of replicas (± 1) and computes the same map without talking to the
    /// others. The first of them is the leader it starts with.
    pub fn initial(
        members: &BTreeMap<NodeId, String>,
        partitions: u32,
        replication: u32,
    ) -> PartitionMap {
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let r = (replication as usize).clamp(1, ids.len().max(1));
        let replicas = (0..partitions as usize)
            .map(|p| {
                let voters = (0..r).map(|k| ids[(p + k) % ids.len()]).collect();
                Replicas {
                    voters,
                    leader_hint: Some((ids[p % ids.len()], 0)),
                    ..Replicas::default()
                }
            })
            .collect();
        PartitionMap {
            epoch: MapEpoch(1),
            partitions,
            replication,
            nodes: members
                .iter()
                .map(|(id, addr)| {
                    let node = ClusterNode {
                        addr: addr.clone(),
                        state: NodeState::Active,
                        incarnation: 0,
                    };
                    (*id, node)
                })
                .collect(),
            replicas,
            balancing: true,
        }
    }

    /// Where partition `p` lives (None: no such partition).
    pub fn replicas(&self, p: PartitionId) -> Option<&Replicas> {
        self.replicas.get(p.0 as usize)
    }

    /// The partitions `node` holds or is being given, in id order.
    pub fn hosted_by(&self, node: NodeId) -> Vec<PartitionId> {
        self.partition_ids()
            .filter(|p| self.replicas[p.0 as usize].holds(node))
            .collect()
    }

    pub fn partition_ids(&self) -> impl Iterator<Item = PartitionId> {
        (0..self.partitions).map(PartitionId)
    }

    /// The address of `node`'s internal services.
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// Nodes that take new replicas.
    pub fn active_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state.takes_replicas())
            .map(|(id, _)| *id)
    }

    /// Replicas per node that is not removed once the moves under way are done (zero for a
    /// node with none).
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.state != NodeState::Removed)
            .map(|(id, _)| (*id, 0))
            .collect();
        for r in &self.replicas {
            for node in r.target_voters() {
                *counts.entry(node).or_default() += 1;
            }
        }
        counts
    }

    /// Apply `change` if it is valid against this map and was made on `expected` (leader hints
    /// are not checked against the epoch). Every change but a leader hint moves the epoch.
    pub fn apply(&mut self, expected: MapEpoch, change: MapChange) -> Result<(), Refused> {
        if let MapChange::LeaderHint {
            partition,
            leader,
            term,
        } = change
        {
            return self.set_leader_hint(partition, leader, term);
        }
        if expected != self.epoch {
            return Err(Refused {
                message: format!(
                    "the partition map is at {}, the change was made on {expected}; read it again",
                    self.epoch
                ),
                stale: true,
            });
        }
        match change {
            MapChange::AddNode { id, addr } => self.add_node(id, addr)?,
            MapChange::SetNodeState { id, state } => self.set_node_state(id, state)?,
            MapChange::SetReplicas {
                partition,
                voters,
                learners,
                leaving,
            } => self.set_replicas(partition, voters, learners, leaving)?,
            MapChange::RegisterIncarnation { id, incarnation } => {
                self.register_incarnation(id, incarnation)?
            }
            MapChange::SetBalancing(on) => self.balancing = on,
            MapChange::LeaderHint { .. } => unreachable!("handled above"),
        }
        self.epoch = MapEpoch(self.epoch.0 + 1);
        Ok(())
    }

    fn add_node(&mut self, id: NodeId, addr: String) -> Result<(), Refused> {
        if id == 0 {
            return refuse("node id 0 is not valid");
        }
        if addr.trim().is_empty() {
            return refuse(format!("node {id} needs an address"));
        }
        if let Some(known) = self.nodes.get(&id) {
            return refuse(format!(
                "node id {id} is already known ({}, {}); a node that lost its data joins under \
                 a new id",
                known.addr,
                known.state.name()
            ));
        }
        self.nodes.insert(
            id,
            ClusterNode {
                addr,
                state: NodeState::Active,
                incarnation: 0,
            },
        );
        Ok(())
    }

    fn register_incarnation(&mut self, id: NodeId, incarnation: u64) -> Result<(), Refused> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return refuse(format!("node {id} is not in the cluster"));
        };
        if node.state == NodeState::Removed {
            return refuse(format!("node {id} was removed from the cluster"));
        }
        if incarnation == 0 {
            return refuse("an incarnation is never 0");
        }
        if node.incarnation != 0 && node.incarnation != incarnation {
            return refuse(format!(
                "node {id} runs on another data dir than the one it registered: its data was \
                 lost; a node that lost its data joins under a new id"
            ));
        }
        node.incarnation = incarnation;
        Ok(())
    }

    fn set_node_state(&mut self, id: NodeId, state: NodeState) -> Result<(), Refused> {
        let holds = self.hosted_by(id).len();
        let Some(node) = self.nodes.get_mut(&id) else {
            return refuse(format!("node {id} is not in the cluster"));
        };
        if node.state == NodeState::Removed {
            return refuse(format!("node {id} was removed; its id is not used again"));
        }
        if state == NodeState::Removed && holds > 0 {
            return refuse(format!(
                "node {id} still holds {holds} replicas; mark it leaving first (its replicas \
                 move away, then it is removed)"
            ));
        }
        node.state = state;
        Ok(())
    }

    fn set_replicas(
        &mut self,
        p: PartitionId,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        leaving: BTreeSet<NodeId>,
    ) -> Result<(), Refused> {
        let Some(current) = self.replicas.get(p.0 as usize) else {
            return refuse(format!(
                "{p} does not exist (the cluster has {} partitions)",
                self.partitions
            ));
        };
        if voters.is_empty() {
            return refuse(format!("{p} needs at least one voter"));
        }
        if let Some(both) = voters.intersection(&learners).next() {
            return refuse(format!(
                "node {both} cannot be both voter and learner of {p}"
            ));
        }
        if let Some(stranger) = leaving.difference(&voters).next() {
            return refuse(format!(
                "node {stranger} cannot leave {p}: it is not a voter"
            ));
        }
        if leaving.len() == voters.len() && learners.is_empty() {
            return refuse(format!("{p} would be left without a voter"));
        }
        for node in voters.union(&learners) {
            match self.nodes.get(node) {
                None => return refuse(format!("node {node} is not in the cluster")),
                Some(n) if n.state == NodeState::Removed => {
                    return refuse(format!("node {node} was removed"))
                }
                // A draining node keeps what it has until it moves away; it gets nothing new.
                Some(n) if !n.state.takes_replicas() && !current.holds(*node) => {
                    return refuse(format!(
                        "node {node} is {} and takes no new replicas",
                        n.state.name()
                    ))
                }
                Some(_) => {}
            }
        }
        let hint = current.leader_hint.filter(|(l, _)| voters.contains(l));
        self.replicas[p.0 as usize] = Replicas {
            voters,
            learners,
            leaving,
            leader_hint: hint,
        };
        Ok(())
    }

    fn set_leader_hint(
        &mut self,
        p: PartitionId,
        leader: NodeId,
        term: u64,
    ) -> Result<(), Refused> {
        let Some(r) = self.replicas.get_mut(p.0 as usize) else {
            return refuse(format!("{p} does not exist"));
        };
        // An older term's report arriving late changes nothing.
        if r.leader_hint.is_some_and(|(_, t)| t > term) {
            return Ok(());
        }
        r.leader_hint = Some((leader, term));
        Ok(())
    }
}

impl PartitionMap {
    pub fn to_pb(&self) -> pb::PartitionMap {
        pb::PartitionMap {
            epoch: self.epoch.0,
            partitions: self.partitions,
            replication: self.replication,
            nodes: self
                .nodes
                .iter()
                .map(|(id, n)| {
                    let node = pb::ClusterNode {
                        id: *id,
                        addr: n.addr.clone(),
                        state: n.state.to_pb() as i32,
                        incarnation: n.incarnation,
                    };
                    (*id, node)
                })
                .collect(),
            replicas: self
                .replicas
                .iter()
                .enumerate()
                .map(|(p, r)| (p as u32, replicas_to_pb(r)))
                .collect(),
            balancing: self.balancing,
        }
    }

    /// The map a record describes; a record that breaks the map's shape is refused by name.
    pub fn from_pb(m: pb::PartitionMap) -> Result<PartitionMap, String> {
        let mut nodes = BTreeMap::new();
        for (id, n) in m.nodes {
            if id != n.id || id == 0 {
                return Err(format!("node entry {id} names node {}", n.id));
            }
            let state = NodeState::from_pb(n.state)?;
            nodes.insert(
                id,
                ClusterNode {
                    addr: n.addr,
                    state,
                    incarnation: n.incarnation,
                },
            );
        }
        if m.replicas.len() != m.partitions as usize {
            return Err(format!(
                "{} partitions but {} replica entries",
                m.partitions,
                m.replicas.len()
            ));
        }
        let mut replicas = Vec::with_capacity(m.partitions as usize);
        for (i, (p, r)) in m.replicas.into_iter().enumerate() {
            if p as usize != i {
                return Err(format!("replica entries skip partition {i}"));
            }
            replicas.push(Replicas {
                voters: r.voters.into_iter().collect(),
                learners: r.learners.into_iter().collect(),
                leaving: r.leaving.into_iter().collect(),
                leader_hint: (r.leader_hint != 0).then_some((r.leader_hint, r.leader_term)),
            });
        }
        Ok(PartitionMap {
            epoch: MapEpoch(m.epoch),
            partitions: m.partitions,
            replication: m.replication,
            nodes,
            replicas,
            balancing: m.balancing,
        })
    }
}

fn replicas_to_pb(r: &Replicas) -> pb::PartitionReplicas {
    let (leader, term) = r.leader_hint.unwrap_or((0, 0));
    pb::PartitionReplicas {
        voters: r.voters.iter().copied().collect(),
        learners: r.learners.iter().copied().collect(),
        leaving: r.leaving.iter().copied().collect(),
        leader_hint: leader,
        leader_term: term,
    }
}

impl MapChange {
    /// The change a command carries, or why it is not one.
    pub fn from_pb(change: pb::meta_command::Change) -> Result<MapChange, String> {
        use pb::meta_command::Change;
        Ok(match change {
            Change::Bootstrap(_) => return Err("a bootstrap is not a change".into()),
            Change::AddNode(n) => MapChange::AddNode {
                id: n.id,
                addr: n.addr,
            },
            Change::SetNodeState(s) => MapChange::SetNodeState {
                id: s.node,
                state: NodeState::from_pb(s.state)?,
            },
            Change::SetReplicas(r) => MapChange::SetReplicas {
                partition: PartitionId(r.partition),
                voters: r.voters.into_iter().collect(),
                learners: r.learners.into_iter().collect(),
                leaving: r.leaving.into_iter().collect(),
            },
            Change::RegisterIncarnation(r) => MapChange::RegisterIncarnation {
                id: r.node,
                incarnation: r.incarnation,
            },
            Change::LeaderHint(h) => MapChange::LeaderHint {
                partition: PartitionId(h.partition),
                leader: h.leader,
                term: h.term,
            },
            Change::SetBalancing(b) => MapChange::SetBalancing(b.enabled),
        })
    }

    pub fn to_pb(&self) -> pb::meta_command::Change {
        use pb::meta_command::Change;
        match self {
            MapChange::AddNode { id, addr } => Change::AddNode(pb::ClusterNode {
                id: *id,
                addr: addr.clone(),
                state: pb::NodeState::NodeActive as i32,
                incarnation: 0,
            }),
            MapChange::RegisterIncarnation { id, incarnation } => {
                Change::RegisterIncarnation(pb::IncarnationChange {
                    node: *id,
                    incarnation: *incarnation,
                })
            }
            MapChange::SetNodeState { id, state } => Change::SetNodeState(pb::NodeStateChange {
                node: *id,
                state: state.to_pb() as i32,
            }),
            MapChange::SetReplicas {
                partition,
                voters,
                learners,
                leaving,
            } => Change::SetReplicas(pb::ReplicasChange {
                partition: partition.0,
                voters: voters.iter().copied().collect(),
                learners: learners.iter().copied().collect(),
                leaving: leaving.iter().copied().collect(),
            }),
            MapChange::LeaderHint {
                partition,
                leader,
                term,
            } => Change::LeaderHint(pb::LeaderHint {
                partition: partition.0,
                leader: *leader,
                term: *term,
            }),
            MapChange::SetBalancing(on) => {
                Change::SetBalancing(pb::BalancingChange { enabled: *on })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> BTreeMap<NodeId, String> {
        (1..=n)
            .map(|id| (id, format!("10.0.0.{id}:7000")))
            .collect()
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_first_map_spreads_replicas_and_leaders_evenly() {
        let map = PartitionMap::initial(&members(5), 64, 3);
        assert_eq!(map.epoch, MapEpoch(1));
        assert!(map.replicas.iter().all(|r| r.voters.len() == 3));
        let counts = map.replica_counts();
        let (min, max) = (counts.values().min(), counts.values().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{counts:?}");
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for r in &map.replicas {
            let (leader, _) = r.leader_hint.unwrap();
            assert!(r.voters.contains(&leader));
            *leaders.entry(leader).or_default() += 1;
        }
        assert_eq!(leaders.len(), 5);
        assert!(leaders.values().max().unwrap() - leaders.values().min().unwrap() <= 1);
        // Computed again, the same: members agree without talking.
        assert_eq!(map, PartitionMap::initial(&members(5), 64, 3));
    }

    #[test]
    fn fewer_nodes_than_replicas_gives_every_node_every_partition() {
        let map = PartitionMap::initial(&members(2), 8, 3);
        assert!(map.replicas.iter().all(|r| r.voters == set(&[1, 2])));
        let single = PartitionMap::initial(&members(1), 8, 1);
        assert_eq!(single.hosted_by(1).len(), 8);
    }

    #[test]
    fn changes_made_on_an_old_map_are_refused() {
        let mut map = PartitionMap::initial(&members(3), 8, 3);
        let add = MapChange::AddNode {
            id: 4,
            addr: "10.0.0.4:7000".into(),
        };
        map.apply(MapEpoch(1), add.clone()).unwrap();
        assert_eq!(map.epoch, MapEpoch(2));
        let err = map.apply(MapEpoch(1), MapChange::SetBalancing(false));
        assert!(err.unwrap_err().message.contains("at epoch 2"));
        // Leader hints are not epoch-checked and do not move the epoch.
        let hint = MapChange::LeaderHint {
            partition: PartitionId(0),
            leader: 2,
            term: 5,
        };
        map.apply(MapEpoch(0), hint).unwrap();
        assert_eq!(map.epoch, MapEpoch(2));
        assert_eq!(map.replicas[0].leader_hint, Some((2, 5)));
        // A late hint of an older term changes nothing.
        let old = MapChange::LeaderHint {
            partition: PartitionId(0),
            leader: 3,
            term: 4,
        };
        map.apply(MapEpoch(0), old).unwrap();
        assert_eq!(map.replicas[0].leader_hint, Some((2, 5)));
    }

    #[test]
    fn a_node_registers_one_data_dir() {
        let mut map = PartitionMap::initial(&members(3), 4, 3);
        let register = |incarnation| MapChange::RegisterIncarnation { id: 2, incarnation };
        map.apply(map.epoch, register(77)).unwrap();
        map.apply(map.epoch, register(77)).unwrap();
        let err = map.apply(map.epoch, register(78)).unwrap_err();
        assert!(err.message.contains("its data was lost"), "{err}");
        assert_eq!(map.nodes[&2].incarnation, 77);
    }

    #[test]
    fn a_node_id_is_never_used_twice() {
        let mut map = PartitionMap::initial(&members(3), 4, 3);
        let again = MapChange::AddNode {
            id: 2,
            addr: "10.0.0.9:7000".into(),
        };
        let err = map.apply(MapEpoch(1), again).unwrap_err();
        assert!(err.message.contains("joins under a new id"), "{err}");
    }

    #[test]
    fn a_node_is_removed_only_once_it_holds_nothing() {
        let mut map = PartitionMap::initial(&members(3), 4, 3);
        let remove = MapChange::SetNodeState {
            id: 3,
            state: NodeState::Removed,
        };
        let err = map.apply(MapEpoch(1), remove.clone()).unwrap_err();
        assert!(err.message.contains("mark it leaving first"), "{err}");
        for p in 0..4 {
            let change = MapChange::SetReplicas {
                partition: PartitionId(p),
                voters: set(&[1, 2]),
                learners: BTreeSet::new(),
                leaving: BTreeSet::new(),
            };
            map.apply(map.epoch, change).unwrap();
        }
        map.apply(map.epoch, remove).unwrap();
        assert_eq!(map.nodes[&3].state, NodeState::Removed);
        // Removed is final.
        let back = MapChange::SetNodeState {
            id: 3,
            state: NodeState::Active,
        };
        assert!(map.apply(map.epoch, back).is_err());
    }

    #[test]
    fn replica_sets_are_checked() {
        let mut map = PartitionMap::initial(&members(3), 4, 3);
        let none = BTreeSet::new;
        let cases = [
            (PartitionId(9), set(&[1]), none(), none(), "does not exist"),
            (
                PartitionId(0),
                set(&[]),
                set(&[1]),
                none(),
                "at least one voter",
            ),
            (
                PartitionId(0),
                set(&[1, 2]),
                set(&[2]),
                none(),
                "both voter and learner",
            ),
            (
                PartitionId(0),
                set(&[1, 7]),
                none(),
                none(),
                "node 7 is not in the cluster",
            ),
            (
                PartitionId(0),
                set(&[1, 2]),
                none(),
                set(&[3]),
                "3 cannot leave",
            ),
            (
                PartitionId(0),
                set(&[1]),
                none(),
                set(&[1]),
                "without a voter",
            ),
        ];
        for (partition, voters, learners, leaving, why) in cases {
            let change = MapChange::SetReplicas {
                partition,
                voters,
                learners,
                leaving,
            };
            let err = map.apply(map.epoch, change).unwrap_err();
            assert!(err.message.contains(why), "{err} should say {why}");
        }
        assert_eq!(map.epoch, MapEpoch(1));
        let drain = MapChange::SetNodeState {
            id: 3,
            state: NodeState::Draining,
        };
        map.apply(map.epoch, drain).unwrap();
        map.apply(
            map.epoch,
            MapChange::AddNode {
                id: 4,
                addr: "a:1".into(),
            },
        )
        .unwrap();
        // Node 3 already holds partition 0: it may stay; node 4 is new and active.
        let keep = MapChange::SetReplicas {
            partition: PartitionId(0),
            voters: set(&[1, 2, 3]),
            learners: set(&[4]),
            leaving: set(&[3]),
        };
        map.apply(map.epoch, keep).unwrap();
        assert!(map.replicas[0].holds(4));
        assert_eq!(map.replicas[0].target_voters(), set(&[1, 2, 4]));
        // The draining node is not given a partition it does not hold.
        let give = MapChange::SetReplicas {
            partition: PartitionId(1),
            voters: set(&[1, 2]),
            learners: set(&[]),
            leaving: set(&[]),
        };
        map.apply(map.epoch, give).unwrap();
        let back = MapChange::SetReplicas {
            partition: PartitionId(1),
            voters: set(&[1, 2]),
            learners: set(&[3]),
            leaving: set(&[]),
        };
        let err = map.apply(map.epoch, back).unwrap_err();
        assert!(err.message.contains("node 3 is draining"), "{err}");
    }

    #[test]
    fn the_map_survives_its_record() {
        let mut map = PartitionMap::initial(&members(4), 16, 3);
        map.apply(
            map.epoch,
            MapChange::SetNodeState {
                id: 4,
                state: NodeState::Draining,
            },
        )
        .unwrap();
        let back = PartitionMap::from_pb(map.to_pb()).unwrap();
        assert_eq!(back, map);
        let mut broken = map.to_pb();
        broken.replicas.remove(&3);
        assert!(PartitionMap::from_pb(broken)
            .unwrap_err()
            .contains("16 partitions"));
    }
}
