//! What to move next. Pure functions of the map, so the placement rules are tested without a
//! cluster; the driver asks them once no move is under way (one move at a time is its rate
//! limit) and carries out what they return.
//!
//! Replicas, in this order of urgency: off nodes that are leaving; up to the replication factor
//! (or the active node count, if smaller); down to it; then evenly, moving one replica from the
//! fullest active node to the emptiest while they differ by two or more. Leaders: off nodes that
//! are not active, then evenly across each partition's voters while the node leading the most
//! leads two more than the one leading the fewest.
//!
//! Nodes the driver counts as down (`down`: they answer no Raft calls) get no replica and no
//! leadership, and are left out of the evening; they keep what they hold until an operator
//! replaces or removes them, or they come back.

use std::collections::{BTreeMap, BTreeSet};

use super::map::{MapChange, NodeState, PartitionMap, Replicas};
use crate::types::{NodeId, PartitionId};

/// The next replica change, or None when the placement is as it should be.
pub fn next_move(map: &PartitionMap, down: &BTreeSet<NodeId>) -> Option<MapChange> {
    let active: Vec<NodeId> = map.active_nodes().filter(|n| !down.contains(n)).collect();
    if active.is_empty() {
        return None;
    }
    // Draining nodes keep their replicas (it is for maintenance), so they count here.
    let holders = map
        .nodes
        .values()
        .filter(|n| matches!(n.state, NodeState::Active | NodeState::Draining))
        .count();
    let want = (map.replication as usize).clamp(1, holders.max(1));
    let counts = map.replica_counts();
    let emptiest_without = |r: &Replicas| {
        active
            .iter()
            .filter(|n| !r.holds(**n))
            .min_by_key(|n| (counts.get(n).copied().unwrap_or(0), **n))
            .copied()
    };
    let settled = || {
        map.partition_ids()
            .map(|p| (p, &map.replicas[p.0 as usize]))
            .filter(|(_, r)| !r.moving())
    };
    let leaving = |n: &NodeId| map.nodes.get(n).map(|n| n.state) == Some(NodeState::Leaving);

    for (p, r) in settled() {
        if let Some(off) = r.voters.iter().copied().find(leaving) {
            match emptiest_without(r) {
                Some(to) => return Some(move_replica(p, r, Some(off), Some(to))),
                None if r.voters.len() > 1 => return Some(move_replica(p, r, Some(off), None)),
                None => {}
            }
        }
    }
    for (p, r) in settled() {
        if r.voters.len() < want {
            if let Some(to) = emptiest_without(r) {
                return Some(move_replica(p, r, None, Some(to)));
            }
        }
    }
    for (p, r) in settled() {
        if r.voters.len() > want {
            let fullest = r
                .voters
                .iter()
                .max_by_key(|n| (counts.get(n).copied().unwrap_or(0), **n))
                .copied();
            return Some(move_replica(p, r, fullest, None));
        }
    }
    let by_load = |n: &&NodeId| (counts.get(*n).copied().unwrap_or(0), **n);
    let fullest = *active.iter().max_by_key(by_load)?;
    let emptiest = *active.iter().min_by_key(by_load)?;
    if counts[&fullest] < counts[&emptiest] + 2 {
        return None;
    }
    // Prefer a partition the fullest node does not lead: moving it needs no handover.
    let candidates = settled().filter(|(_, r)| r.voters.contains(&fullest) && !r.holds(emptiest));
    let (p, r) = candidates.min_by_key(|(_, r)| r.leader_hint.map(|(l, _)| l) == Some(fullest))?;
    Some(move_replica(p, r, Some(fullest), Some(emptiest)))
}

/// A move of `p`'s replica from `from` to `to` (either may be absent: an add or a drop).
fn move_replica(
    p: PartitionId,
    r: &Replicas,
    from: Option<NodeId>,
    to: Option<NodeId>,
) -> MapChange {
    MapChange::SetReplicas {
        partition: p,
        voters: r.voters.clone(),
        learners: to.into_iter().collect(),
        leaving: from.into_iter().collect(),
    }
}

/// The next leadership to hand over — (partition, from, to) — or None when leaders are spread
/// as evenly as the replicas allow. Judged on the leader hints the leaders report.
pub fn next_transfer(
    map: &PartitionMap,
    down: &BTreeSet<NodeId>,
) -> Option<(PartitionId, NodeId, NodeId)> {
    let active: BTreeSet<NodeId> = map.active_nodes().filter(|n| !down.contains(n)).collect();
    let mut leads: BTreeMap<NodeId, usize> = active.iter().map(|n| (*n, 0)).collect();
    let mut led = Vec::new();
    for p in map.partition_ids() {
        let r = &map.replicas[p.0 as usize];
        if let Some((leader, _)) = r.leader_hint.filter(|(l, _)| r.voters.contains(l)) {
            *leads.entry(leader).or_default() += 1;
            led.push((p, r, leader));
        }
    }
    let fewest_among = |r: &Replicas, but: NodeId| {
        r.voters
            .iter()
            .filter(|n| **n != but && active.contains(n))
            .min_by_key(|n| (leads.get(n).copied().unwrap_or(0), **n))
            .copied()
    };
    // Leaders on nodes that are not active go first.
    for (p, r, leader) in &led {
        if !active.contains(leader) {
            if let Some(to) = fewest_among(r, *leader) {
                return Some((*p, *leader, to));
            }
        }
    }
    let fullest = leads
        .iter()
        .filter(|(n, _)| active.contains(n))
        .max_by_key(|(n, c)| (**c, **n))
        .map(|(n, c)| (*n, *c))?;
    let fewest = leads
        .iter()
        .filter(|(n, _)| active.contains(n))
        .map(|(_, c)| *c)
        .min()?;
    if fullest.1 < fewest + 2 {
        return None;
    }
    led.iter()
        .filter(|(_, _, leader)| *leader == fullest.0)
        .filter_map(|(p, r, leader)| fewest_among(r, *leader).map(|to| (*p, *leader, to)))
        .find(|(_, _, to)| leads[to] + 2 <= fullest.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::map::MapEpoch;

    fn cluster(n: u64, partitions: u32, replication: u32) -> PartitionMap {
        let members = (1..=n).map(|id| (id, format!("n{id}:1"))).collect();
        PartitionMap::initial(&members, partitions, replication)
    }

    /// Apply `next_move` and settle each move (as the driver does) until there is none.
    fn settle(map: &mut PartitionMap) -> usize {
        let mut moves = 0;
        while let Some(change) = next_move(map, &BTreeSet::new()) {
            map.apply(map.epoch, change).unwrap();
            for p in 0..map.partitions as usize {
                let r = &map.replicas[p];
                if r.moving() {
                    let done = MapChange::SetReplicas {
                        partition: PartitionId(p as u32),
                        voters: r.target_voters(),
                        learners: BTreeSet::new(),
                        leaving: BTreeSet::new(),
                    };
                    map.apply(map.epoch, done).unwrap();
                }
            }
            moves += 1;
            assert!(moves < 1000, "the balancer does not converge");
        }
        moves
    }

    fn spread(map: &PartitionMap) -> usize {
        let counts: Vec<usize> = map
            .replica_counts()
            .into_iter()
            .filter(|(n, _)| map.nodes[n].state == NodeState::Active)
            .map(|(_, c)| c)
            .collect();
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    #[test]
    fn a_balanced_first_map_needs_nothing() {
        let map = cluster(5, 64, 3);
        assert_eq!(next_move(&map, &BTreeSet::new()), None);
        assert_eq!(next_transfer(&map, &BTreeSet::new()), None);
    }

    #[test]
    fn a_new_node_gets_its_share() {
        let mut map = cluster(5, 64, 3);
        let add = MapChange::AddNode {
            id: 6,
            addr: "n6:1".into(),
        };
        map.apply(map.epoch, add).unwrap();
        let moves = settle(&mut map);
        // 192 replicas over 6 nodes: 32 each; the new node took about that many.
        let counts = map.replica_counts();
        assert!(counts[&6] >= 31, "{counts:?}");
        assert!(moves <= 33, "{moves} moves");
        assert!(spread(&map) <= 1);
        assert!(map.replicas.iter().all(|r| r.voters.len() == 3));
    }

    #[test]
    fn a_leaving_node_is_emptied_and_replication_kept() {
        let mut map = cluster(4, 16, 3);
        let leave = MapChange::SetNodeState {
            id: 2,
            state: NodeState::Leaving,
        };
        map.apply(map.epoch, leave).unwrap();
        settle(&mut map);
        assert!(map.hosted_by(2).is_empty());
        assert!(map.replicas.iter().all(|r| r.voters.len() == 3));
        let remove = MapChange::SetNodeState {
            id: 2,
            state: NodeState::Removed,
        };
        map.apply(map.epoch, remove).unwrap();
    }

    #[test]
    fn fewer_nodes_than_replicas_keeps_what_it_can() {
        let mut map = cluster(3, 8, 3);
        let leave = MapChange::SetNodeState {
            id: 3,
            state: NodeState::Leaving,
        };
        map.apply(map.epoch, leave).unwrap();
        settle(&mut map);
        // Two active nodes: every partition on both, none on the leaving one.
        assert!(map.hosted_by(3).is_empty());
        assert!(map.replicas.iter().all(|r| r.voters.len() == 2));
    }

    #[test]
    fn leaders_spread_over_voters() {
        let mut map = cluster(3, 12, 3);
        // Every partition reports node 1 as its leader.
        for p in 0..12 {
            let hint = MapChange::LeaderHint {
                partition: PartitionId(p),
                leader: 1,
                term: 2,
            };
            map.apply(MapEpoch(0), hint).unwrap();
        }
        let mut transfers = 0;
        while let Some((p, from, to)) = next_transfer(&map, &BTreeSet::new()) {
            assert_eq!(from, 1);
            let hint = MapChange::LeaderHint {
                partition: p,
                leader: to,
                term: 3,
            };
            map.apply(MapEpoch(0), hint).unwrap();
            transfers += 1;
            assert!(transfers <= 12);
        }
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        for r in &map.replicas {
            *leads.entry(r.leader_hint.unwrap().0).or_default() += 1;
        }
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }

    #[test]
    fn leaders_leave_a_draining_node() {
        let mut map = cluster(3, 6, 3);
        let drain = MapChange::SetNodeState {
            id: 1,
            state: NodeState::Draining,
        };
        map.apply(map.epoch, drain).unwrap();
        let (p, from, to) =
            next_transfer(&map, &BTreeSet::new()).expect("node 1 leads partitions 0 and 3");
        assert_eq!(from, 1);
        assert_ne!(to, 1);
        assert!(p == PartitionId(0) || p == PartitionId(3));
        // Its replicas stay: draining is for maintenance.
        assert_eq!(next_move(&map, &BTreeSet::new()), None);
    }

    #[test]
    fn a_node_that_is_down_gets_no_replica_and_no_leadership() {
        let mut map = cluster(4, 8, 3);
        let add = MapChange::AddNode {
            id: 5,
            addr: "n5:1".into(),
        };
        map.apply(map.epoch, add).unwrap();
        let down = BTreeSet::from([5]);
        // The new node would be the emptiest; down, it is left out and the rest is even.
        while let Some(change) = next_move(&map, &down) {
            let MapChange::SetReplicas { learners, .. } = &change else {
                panic!("{change:?}")
            };
            assert!(!learners.contains(&5), "{change:?}");
            map.apply(map.epoch, change).unwrap();
            let p = map.replicas.iter().position(|r| r.moving()).unwrap();
            let done = MapChange::SetReplicas {
                partition: PartitionId(p as u32),
                voters: map.replicas[p].target_voters(),
                learners: BTreeSet::new(),
                leaving: BTreeSet::new(),
            };
            map.apply(map.epoch, done).unwrap();
        }
        assert!(map.hosted_by(5).is_empty());
        // Back up, it gets its share.
        assert!(next_move(&map, &BTreeSet::new()).is_some());

        // A leadership that would go to node 2 goes elsewhere while node 2 is down.
        let mut map = cluster(3, 6, 3);
        for p in 0..6 {
            let hint = MapChange::LeaderHint {
                partition: PartitionId(p),
                leader: 1,
                term: 2,
            };
            map.apply(MapEpoch(0), hint).unwrap();
        }
        let (_, from, to) = next_transfer(&map, &BTreeSet::from([2])).unwrap();
        assert_eq!((from, to), (1, 3));
    }
}
