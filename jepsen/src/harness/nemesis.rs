//! Faults, following Jepsen's fault model, all inside the run's private network namespace:
//!
//! - `kill`: SIGKILL and restart on the same data dir — one node, the leader of a partition, or
//!   every node at once;
//! - `pause`: SIGSTOP … SIGCONT — one node or the leader of a partition;
//! - `partition`: nftables drop rules between node addresses — isolate one node, isolate a
//!   partition's leader, a one-way cut (a node that can send but not hear), a bridge (two halves
//!   that only one node connects), and on 5+ nodes a majorities ring;
//! - `clock`: the realtime clock of one node shifted with libfaketime (monotonic time is not
//!   touched): a bump (one jump, held, then back) or a strobe (flipping back and forth);
//! - `compact`: a snapshot + Raft-log purge of a partition on a node, under load;
//! - `slow`: delay (with jitter) and loss on the links of one node or on one link, through the
//!   harness's per-link proxy (`proxy.rs`), since this kernel has no netem;
//! - `membership`: the partition map changed under load — a leadership transferred, a replica
//!   moved to a node that does not hold the partition (with more nodes than replicas, e.g.
//!   `--nodes 5`), a node drained of its leaderships for a while, a node replaced by a wiped one
//!   (its disk lost: killed, data dir removed, started again under a new id and put in the old
//!   one's place with `ReplaceNode`), or a node removed while it runs (`leaving` until its
//!   replicas have moved off) and a new one added in its place (`AddNode`). Mixed with the
//!   others, a move meets kills, pauses and cuts half-way.
//!
//! - `power`: a power loss — one node, a minority, or every node at once killed and everything
//!   they wrote but had not fsynced dropped by their disks (`disks.rs`), then restarted;
//! - `disk`: one node's disk fails for a while: every write or every fsync answers EIO or
//!   ENOSPC. The node must stop acknowledging what it cannot make durable; a node that stopped
//!   itself (fail-stop) is restarted once the disk is healthy again, as a supervisor would;
//! - `bitflip`: one bit of a random SST file of one node's database flipped on its disk, as bit
//!   rot would. RocksDB's block checksums and the records' crc32 must catch it: the damaged
//!   data is never served, and the node fences itself (fail-stop, or the damaged partition
//!   stops serving from it). At heal the harness repairs such a node as an operator would: it
//!   replaces it by a wiped one (see `replace`).
//!
//! Faults pick *slots* (see `nodes.rs`); node ids read from the cluster are turned into slots.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use chat_proto::admin::{
    AddNodeRequest, CompactRequest, GetMapRequest, MoveReplicaRequest, ReplaceNodeRequest,
    SetNodeStateRequest, StatusRequest, TransferLeaderRequest,
};
use chat_proto::log::{NodeState, PartitionMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::nodes::{addr, admin, ip, Nodes};
use super::proxy::{LinkFault, Links};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    Clock,
    Compact,
    Slow,
    Membership,
    Power,
    Disk,
    Bitflip,
}

impl Fault {
    /// Whether the fault needs the nodes' data dirs on faultfs mounts.
    pub fn needs_disks(self) -> bool {
        matches!(self, Fault::Power | Fault::Disk | Fault::Bitflip)
    }
}

fn nft(script: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .arg(script)
        .output()
        .context("run nft (apt-get install nftables)")?;
    anyhow::ensure!(
        out.status.success(),
        "nft {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Drop packets from `from` to `to` (one way).
fn drop_link(from: u64, to: u64) -> anyhow::Result<()> {
    nft(&format!(
        "add rule inet jepsen out ip saddr {} ip daddr {} drop",
        ip(from),
        ip(to)
    ))
}

fn table() -> anyhow::Result<()> {
    nft("add table inet jepsen")?;
    nft("add chain inet jepsen out { type filter hook output priority 0; }")
}

/// Cut every link between the two groups, both ways.
fn cut(a: &[u64], b: &[u64]) -> anyhow::Result<()> {
    table()?;
    for &x in a {
        for &y in b {
            drop_link(x, y)?;
            drop_link(y, x)?;
        }
    }
    Ok(())
}

/// The directed links a majorities ring drops: every pair that is not adjacent on the ring.
pub fn ring_cuts(ring: &[u64]) -> Vec<(u64, u64)> {
    let len = ring.len();
    let mut cuts = Vec::new();
    for i in 0..len {
        for j in 0..len {
            let d = (i + len - j) % len;
            if d > 1 && d < len - 1 {
                cuts.push((ring[i], ring[j]));
            }
        }
    }
    cuts
}

pub fn heal_network() -> anyhow::Result<()> {
    // Deleting a table that does not exist is an error; flushing the whole ruleset of our private
    // namespace is not.
    nft("flush ruleset")
}

/// The slot of the node leading a random partition, as a running node reports it.
async fn some_leader(nodes: &std::sync::Mutex<Nodes>, n: u64, rng: &mut StdRng) -> Option<u64> {
    let candidates: Vec<u64> = {
        let nodes = nodes.lock().unwrap();
        (1..=n)
            .filter(|&i| nodes.is_running(i) && !nodes.nodes[i as usize - 1].paused)
            .collect()
    };
    let ask = *candidates.choose(rng)?;
    let mut client = admin(ask).ok()?;
    let mut request = tonic::Request::new(StatusRequest {});
    request.set_timeout(Duration::from_secs(1));
    let status = client.status(request).await.ok()?.into_inner();
    let leaders: Vec<u64> = status.leaders().into_values().collect();
    let leader = leaders.choose(rng).copied()?;
    nodes.lock().unwrap().slot_of(leader)
}

/// The slots running and not paused.
fn running(nodes: &std::sync::Mutex<Nodes>, n: u64) -> Vec<u64> {
    let nodes = nodes.lock().unwrap();
    (1..=n)
        .filter(|&i| nodes.is_running(i) && !nodes.nodes[i as usize - 1].paused)
        .collect()
}

/// The partition map as a running node (not paused) has it.
async fn current_map(nodes: &std::sync::Mutex<Nodes>, n: u64) -> Option<(u64, PartitionMap)> {
    for ask in running(nodes, n) {
        let Ok(mut client) = admin(ask) else { continue };
        let mut request = tonic::Request::new(GetMapRequest {});
        request.set_timeout(Duration::from_secs(1));
        if let Ok(map) = client.get_map(request).await {
            return Some((ask, map.into_inner()));
        }
    }
    None
}

/// Set `node`'s state in the map through any running node, a few tries; a description.
async fn set_node_state(nodes: &std::sync::Mutex<Nodes>, n: u64, node: u64, state: &str) -> String {
    let mut last = String::from("no running node answered");
    for _ in 0..5 {
        if let Some((ask, _)) = current_map(nodes, n).await {
            let mut client = match admin(ask) {
                Ok(c) => c,
                Err(e) => return format!("{state}: {e}"),
            };
            let mut request = tonic::Request::new(SetNodeStateRequest {
                node_id: node,
                state: state.into(),
            });
            request.set_timeout(Duration::from_secs(5));
            match client.set_node_state(request).await {
                Ok(r) => return format!("{state} (epoch {})", r.into_inner().epoch),
                Err(e) => last = e.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    format!("{state}: {last}")
}

/// One change of the partition map: a leadership transferred, a replica moved, a node drained
/// for a while and made active again, or a node replaced by a wiped one.
async fn change_membership(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let Some((ask, map)) = current_map(nodes, n).await else {
        return Ok("membership: no node answered with a map".into());
    };
    let p = rng.gen_range(0..map.partitions.max(1));
    let Some(replicas) = map.replicas.get(&p) else {
        return Ok(format!("membership: the map has no partition {p}"));
    };
    let holds = |id: &u64| {
        replicas.voters.contains(id)
            || replicas.learners.contains(id)
            || replicas.leaving.contains(id)
    };
    let active = NodeState::NodeActive as i32;
    let outside: Vec<u64> = map
        .nodes
        .iter()
        .filter(|(id, node)| node.state == active && !holds(id))
        .map(|(id, _)| *id)
        .collect();
    let mut client = admin(ask)?;
    match rng.gen_range(0..5) {
        3 => replace_wiped(nodes, n, &map, rng).await,
        4 => remove_then_add(nodes, n, &map, rng).await,
        1 if !outside.is_empty() && !replicas.voters.is_empty() => {
            let from = *replicas.voters.choose(rng).expect("voters");
            let to = *outside.choose(rng).expect("outside");
            let mut request = tonic::Request::new(MoveReplicaRequest {
                partition: p,
                from_node: from,
                to_node: to,
            });
            request.set_timeout(Duration::from_secs(5));
            let answer = match client.move_replica(request).await {
                Ok(r) => format!("epoch {}", r.into_inner().epoch),
                Err(e) => e.message().to_string(),
            };
            // The move goes on in the background while the load and other faults go on.
            hold(rng, 2000..5000).await;
            Ok(format!(
                "move partition {p} from node {from} to node {to}: {answer}"
            ))
        }
        2 => {
            let slot = rng.gen_range(1..=n);
            let node = nodes.lock().unwrap().nodes[slot as usize - 1].id;
            let drained = set_node_state(nodes, n, node, "draining").await;
            hold(rng, 2000..5000).await;
            let back = set_node_state(nodes, n, node, "active").await;
            Ok(format!("drain node {node}: {drained}; back: {back}"))
        }
        _ => {
            let others: Vec<u64> = replicas
                .voters
                .iter()
                .copied()
                .filter(|v| *v != replicas.leader_hint)
                .collect();
            let Some(&to) = others.choose(rng) else {
                return Ok(format!("transfer: partition {p} has one voter"));
            };
            let mut request = tonic::Request::new(TransferLeaderRequest {
                partition: p,
                to_node: to,
            });
            request.set_timeout(Duration::from_secs(5));
            let answer = match client.transfer_leader(request).await {
                Ok(r) => format!("leader now node {}", r.into_inner().leader_id),
                Err(e) => e.message().to_string(),
            };
            Ok(format!(
                "transfer leadership of partition {p} to node {to}: {answer}"
            ))
        }
    }
}

/// Replace a random slot's node by a wiped one under a new id, as when a disk dies and a new
/// machine takes its place: the node is killed, its data dir removed, a node with the next unused
/// id started there joining the cluster, and `ReplaceNode` (old → new) asked of another node;
/// the old node's replicas then move to the new one in the background, under the other faults.
///
/// Skipped while a node is leaving or a replica is moving: an operator replaces one node at a
/// time, since wiping a second before the first is rebuilt can take two of a partition's three
/// copies, which no consensus protocol survives.
async fn replace_wiped(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    map: &PartitionMap,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    if busy(map) {
        return Ok("replace: skipped, a node is leaving or a replica moving".into());
    }
    let slot = rng.gen_range(1..=n);
    let Some(&via) = running(nodes, n)
        .iter()
        .filter(|&&s| s != slot)
        .collect::<Vec<_>>()
        .choose(rng)
        .copied()
    else {
        return Ok("replace: no other node running".into());
    };
    let done = replace_slot(nodes, n, map, slot, via).await?;
    hold(rng, 2000..5000).await;
    Ok(done)
}

/// Replace slot `slot`'s node by a wiped one under the next unused id: the node killed, its
/// data dir emptied, the new node started joining, and `ReplaceNode` old → new asked (of `via`
/// first, then of any running node, for up to a minute) until it lands.
async fn replace_slot(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    map: &PartitionMap,
    slot: u64,
    via: u64,
) -> anyhow::Result<String> {
    let new_id = next_id(map, n);
    let old_id = {
        let mut nodes = nodes.lock().unwrap();
        let old_id = nodes.nodes[slot as usize - 1].id;
        nodes.replace_wiped(slot, new_id)?;
        old_id
    };
    // Until ReplaceNode lands, the old id is a dead voter in its partitions (and the balancer
    // may move replicas onto it): keep asking, any running node (the one asked first may be
    // the next one killed), for up to a minute.
    let mut answer = String::from("no answer");
    for _ in 0..60 {
        let ask = match current_map(nodes, n).await {
            Some((ask, _)) => ask,
            None => via,
        };
        let mut request = tonic::Request::new(ReplaceNodeRequest {
            old_node_id: old_id,
            new_node_id: new_id,
            new_addr: addr(slot),
        });
        request.set_timeout(Duration::from_secs(5));
        match admin(ask)?.replace_node(request).await {
            Ok(r) => {
                answer = format!("epoch {}", r.into_inner().epoch);
                break;
            }
            Err(e) => answer = e.message().to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(format!(
        "replace node {old_id} (slot {slot}) by wiped node {new_id}: {answer}"
    ))
}

/// After the faults: repair, as an operator would, each node whose disk had a bit flipped — its
/// database can no longer be trusted as a whole (a flipped SST block may hold any partition's
/// data), so it is replaced by a wiped node that rebuilds from its peers. One at a time, each
/// waited on until the map settles. What was done, for the report.
pub async fn repair_flipped(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    within: Duration,
) -> Vec<String> {
    let flipped: Vec<u64> = std::mem::take(&mut nodes.lock().unwrap().flipped)
        .into_iter()
        .collect();
    let mut done = Vec::new();
    for slot in flipped {
        let Some((_, map)) = current_map(nodes, n).await else {
            done.push(format!("repair slot {slot}: no running node answered"));
            continue;
        };
        let Some(via) = running(nodes, n).into_iter().find(|&s| s != slot) else {
            done.push(format!("repair slot {slot}: no other node running"));
            continue;
        };
        match replace_slot(nodes, n, &map, slot, via).await {
            Ok(what) => done.push(what),
            Err(e) => done.push(format!("repair slot {slot}: {e:#}")),
        }
        if let Err(moving) = settle(nodes, n, within).await {
            done.push(format!(
                "repair slot {slot}: the map did not settle: {moving}"
            ));
        }
    }
    done
}

/// The id a new node takes: one above every id the map has known (removed nodes stay in it, so
/// an id is never used twice).
fn next_id(map: &PartitionMap, n: u64) -> u64 {
    map.nodes.keys().max().copied().unwrap_or(n) + 1
}

/// Whether a node is leaving or a replica moving (see [`replace_wiped`] for why that matters).
fn busy(map: &PartitionMap) -> bool {
    let leaving = NodeState::NodeLeaving as i32;
    map.nodes.values().any(|node| node.state == leaving)
        || map
            .replicas
            .values()
            .any(|r| !r.learners.is_empty() || !r.leaving.is_empty())
}

/// Remove a random slot's node the way an operator retires a machine — `leaving` while it runs,
/// so its replicas move off it first and the map marks it removed once it holds nothing — then
/// add a new node (wiped, next unused id) in the slot with `AddNode`, which balancing fills.
/// Waits up to 2 minutes for the removal (other faults wait meanwhile; between faults a small
/// partition moves in seconds); if it has not finished by then the node is left to finish
/// leaving and nothing is added (the removed node's process ends by itself, and the final
/// drain reports that slot as failing).
async fn remove_then_add(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    map: &PartitionMap,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    if busy(map) {
        return Ok("remove: skipped, a node is leaving or a replica moving".into());
    }
    let slot = rng.gen_range(1..=n);
    let old_id = nodes.lock().unwrap().nodes[slot as usize - 1].id;
    let left = set_node_state(nodes, n, old_id, "leaving").await;
    let removed = NodeState::NodeRemoved as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let gone = current_map(nodes, n)
            .await
            .is_some_and(|(_, m)| m.nodes.get(&old_id).is_some_and(|x| x.state == removed));
        if gone {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Ok(format!(
                "remove node {old_id} (slot {slot}): {left}; not removed within 2 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some((via, map)) = current_map(nodes, n).await else {
        return Ok(format!(
            "remove node {old_id} (slot {slot}): removed; no map to add"
        ));
    };
    let new_id = next_id(&map, n);
    nodes.lock().unwrap().replace_wiped(slot, new_id)?;
    let mut request = tonic::Request::new(AddNodeRequest {
        node_id: new_id,
        addr: addr(slot),
    });
    request.set_timeout(Duration::from_secs(5));
    let added = match admin(via)?.add_node(request).await {
        Ok(r) => format!("epoch {}", r.into_inner().epoch),
        Err(e) => e.message().to_string(),
    };
    hold(rng, 1000..3000).await;
    Ok(format!(
        "remove node {old_id} (slot {slot}): {left}, removed; add node {new_id} there: {added}"
    ))
}

/// Cut the power of one node, a minority or every node: each killed, its unsynced writes
/// dropped, and started again after 1–4 s.
async fn power_loss(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let mut slots: Vec<u64> = (1..=n).collect();
    slots.shuffle(rng);
    let (count, what) = match rng.gen_range(0..3) {
        0 => (1, "node"),
        1 => (((n - 1) / 2).max(1) as usize, "minority"),
        _ => (n as usize, "every node"),
    };
    slots.truncate(count);
    slots.sort();
    let mut dropped = 0;
    {
        let mut nodes = nodes.lock().unwrap();
        for &slot in &slots {
            nodes.kill(slot)?;
            dropped += nodes.disks()?.power_loss(slot)?;
        }
    }
    hold(rng, 1000..4000).await;
    for &slot in &slots {
        nodes.lock().unwrap().start(slot)?;
    }
    Ok(format!(
        "power loss ({what}) {slots:?}: {dropped} unsynced bytes dropped, restart"
    ))
}

/// Make slot `slot`'s disk fail every write or fsync with EIO or ENOSPC for 2–5 s; then heal
/// it, and start the node again if it stopped itself meanwhile.
async fn disk_failure(
    nodes: &std::sync::Mutex<Nodes>,
    slot: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let failure = *["write eio", "fsync eio", "write enospc", "fsync enospc"]
        .choose(rng)
        .expect("not empty");
    nodes
        .lock()
        .unwrap()
        .disks()?
        .command(slot, &format!("fail {failure}"))?;
    hold(rng, 2000..5000).await;
    let mut nodes = nodes.lock().unwrap();
    nodes.disks()?.command(slot, "fail clear")?;
    let stopped = nodes.exited(slot);
    if stopped {
        nodes.start(slot)?;
    }
    Ok(format!(
        "disk of node {slot}: every {failure}{}",
        if stopped {
            "; the node stopped itself, restarted"
        } else {
            ""
        }
    ))
}

/// Flip one bit at a random place of a random SST file of slot `slot`'s database, on disk —
/// or of the node flipped already, if there is one: rot stays on one replica (a minority) until
/// the node is replaced at heal, as with independent disks.
fn bit_flip(
    nodes: &std::sync::Mutex<Nodes>,
    slot: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let mut nodes = nodes.lock().unwrap();
    let slot = nodes.flipped.first().copied().unwrap_or(slot);
    let db = nodes.nodes[slot as usize - 1].data_dir().join("db");
    let mut ssts: Vec<(String, u64)> = std::fs::read_dir(&db)
        .with_context(|| format!("list {}", db.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            (name.ends_with(".sst") && len > 0).then_some((name, len))
        })
        .collect();
    ssts.sort();
    let Some((name, len)) = ssts.choose(rng).cloned() else {
        return Ok(format!("bit flip: node {slot} has no SST file yet"));
    };
    let (offset, bit) = (rng.gen_range(0..len), rng.gen_range(0..8u8));
    let reply = nodes
        .disks()?
        .command(slot, &format!("flip db/{name} {offset} {bit}"))?;
    nodes.flipped.insert(slot);
    Ok(format!(
        "bit flip on node {slot}: db/{name} ({len} bytes) byte {offset} bit {bit} ({reply})"
    ))
}

async fn hold(rng: &mut StdRng, ms: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(ms))).await;
}

/// One fault, applied and then undone; returns a description for the report.
pub async fn strike(
    fault: Fault,
    nodes: &std::sync::Mutex<Nodes>,
    links: &Links,
    n: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let all: Vec<u64> = (1..=n).collect();
    let random = rng.gen_range(1..=n);
    match fault {
        Fault::Kill => {
            let choice = rng.gen_range(0..10);
            let (targets, what) = if choice < 2 {
                (all.clone(), "every node".to_string())
            } else if choice < 6 {
                match some_leader(nodes, n, rng).await {
                    Some(l) => (vec![l], format!("leader node {l}")),
                    None => (vec![random], format!("node {random}")),
                }
            } else {
                (vec![random], format!("node {random}"))
            };
            for &t in &targets {
                nodes.lock().unwrap().kill(t)?;
            }
            hold(rng, 1000..4000).await;
            for &t in &targets {
                nodes.lock().unwrap().start(t)?;
            }
            Ok(format!("kill -9 {what}, restart"))
        }
        Fault::Pause => {
            let target = if rng.gen_bool(0.5) {
                some_leader(nodes, n, rng).await.unwrap_or(random)
            } else {
                random
            };
            nodes.lock().unwrap().pause(target)?;
            hold(rng, 1000..4000).await;
            nodes.lock().unwrap().resume(target)?;
            Ok(format!("pause node {target}"))
        }
        Fault::Partition => {
            let what = match rng.gen_range(0..4) {
                0 => {
                    let others: Vec<u64> = all.iter().copied().filter(|&o| o != random).collect();
                    cut(&[random], &others)?;
                    format!("isolate node {random}")
                }
                1 => {
                    let leader = some_leader(nodes, n, rng).await.unwrap_or(random);
                    let others: Vec<u64> = all.iter().copied().filter(|&o| o != leader).collect();
                    cut(&[leader], &others)?;
                    format!("isolate leader node {leader}")
                }
                2 => {
                    // Node `random` sends but hears nothing.
                    table()?;
                    for o in all.iter().copied().filter(|&o| o != random) {
                        drop_link(o, random)?;
                    }
                    format!("one-way: nothing reaches node {random}")
                }
                _ if n >= 5 && rng.gen_bool(0.5) => {
                    // Majorities ring: each node sees only its neighbour on each side (itself and
                    // two others: a majority of 5, but a different one for every node).
                    let mut ring = all.clone();
                    ring.shuffle(rng);
                    table()?;
                    for (from, to) in ring_cuts(&ring) {
                        drop_link(from, to)?;
                    }
                    format!("majorities ring {ring:?}")
                }
                _ => {
                    // Bridge: two halves, only `random` talks to both.
                    let mut others: Vec<u64> =
                        all.iter().copied().filter(|&o| o != random).collect();
                    others.shuffle(rng);
                    let (a, b) = others.split_at(others.len() / 2);
                    cut(a, b)?;
                    format!("bridge: {a:?} | node {random} | {b:?}")
                }
            };
            hold(rng, 2000..5000).await;
            heal_network()?;
            Ok(what)
        }
        Fault::Clock => {
            let secs = rng.gen_range(2..60) as i64 * if rng.gen_bool(0.5) { 1 } else { -1 };
            let offset = format!("{secs:+}s");
            if rng.gen_bool(0.5) {
                nodes.lock().unwrap().set_clock(random, &offset)?;
                hold(rng, 2000..5000).await;
                nodes.lock().unwrap().set_clock(random, "+0")?;
                Ok(format!("clock bump {offset} on node {random}"))
            } else {
                for i in 0..rng.gen_range(3..7) {
                    let now = if i % 2 == 0 { offset.as_str() } else { "+0" };
                    nodes.lock().unwrap().set_clock(random, now)?;
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                }
                nodes.lock().unwrap().set_clock(random, "+0")?;
                Ok(format!("clock strobe 0/{offset} on node {random}"))
            }
        }
        Fault::Slow => {
            let fault = LinkFault {
                delay: Duration::from_millis(rng.gen_range(20..300)),
                jitter: Duration::from_millis(rng.gen_range(0..100)),
                loss: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            };
            let what = if rng.gen_bool(0.5) {
                for o in all.iter().copied().filter(|&o| o != random) {
                    links.set(random, o, fault);
                    links.set(o, random, fault);
                }
                format!("slow links of node {random}")
            } else {
                let other = all
                    .iter()
                    .copied()
                    .filter(|&o| o != random)
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .copied()
                    .unwrap_or(random);
                links.set(random, other, fault);
                format!("slow link {random}->{other}")
            };
            hold(rng, 2000..6000).await;
            links.clear();
            Ok(format!(
                "{what}: delay {:?} jitter {:?} loss {}",
                fault.delay, fault.jitter, fault.loss
            ))
        }
        Fault::Membership => change_membership(nodes, n, rng).await,
        Fault::Power => power_loss(nodes, n, rng).await,
        Fault::Disk => disk_failure(nodes, random, rng).await,
        Fault::Bitflip => bit_flip(nodes, random, rng),
        Fault::Compact => {
            let p = rng.gen_range(0..4u32);
            let running = nodes.lock().unwrap().is_running(random);
            if !running {
                return Ok(format!("compact: node {random} is down"));
            }
            let mut client = admin(random)?;
            let mut request = tonic::Request::new(CompactRequest { partition: p });
            request.set_timeout(Duration::from_secs(10));
            match client.compact(request).await {
                Ok(r) => Ok(format!(
                    "compact partition {p} on node {random} (snapshot at {})",
                    r.into_inner().snapshot_index
                )),
                Err(e) => Ok(format!(
                    "compact partition {p} on node {random}: {}",
                    e.message()
                )),
            }
        }
    }
}

/// After the faults have healed: wait up to `within` for the partition map to settle (no node
/// leaving, no replica moving). A membership change that never finishes is a liveness failure
/// the history checks cannot see: the 30-minute membership run of 2026-11-25 passed them all
/// while one move was stuck for 25 minutes. Answers how long settling took, or what was still
/// under way.
pub async fn settle(
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    within: Duration,
) -> Result<Duration, String> {
    let started = std::time::Instant::now();
    let mut last = String::from("no running node answered");
    while started.elapsed() < within {
        if let Some((_, map)) = current_map(nodes, n).await {
            if !busy(&map) {
                return Ok(started.elapsed());
            }
            let moving: Vec<String> = map
                .replicas
                .iter()
                .filter(|(_, r)| !r.learners.is_empty() || !r.leaving.is_empty())
                .map(|(p, r)| format!("p{p} {:?} -> {:?}", r.leaving, r.learners))
                .collect();
            last = format!("map epoch {}: {}", map.epoch, moving.join(", "));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::ring_cuts;

    #[test]
    fn a_majorities_ring_leaves_each_node_a_different_majority() {
        let ring = [3, 1, 4, 5, 2];
        let cuts = ring_cuts(&ring);
        for (i, &node) in ring.iter().enumerate() {
            let cut_from: Vec<u64> = cuts.iter().filter(|c| c.0 == node).map(|c| c.1).collect();
            assert_eq!(
                cut_from.len(),
                2,
                "node {node} must reach itself and 2 others"
            );
            let (left, right) = (ring[(i + 4) % 5], ring[(i + 1) % 5]);
            assert!(!cut_from.contains(&left) && !cut_from.contains(&right));
            // Symmetric: whatever node cannot send to, cannot send to node.
            for &other in &cut_from {
                assert!(cuts.contains(&(other, node)));
            }
        }
    }
}
