//! The node-wide loops that run beside the Raft groups: the disk watch, the start-up election
//! grace and the heartbeat timer. Each holds the node weakly and ends when it is gone or stopped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;
use std::time::Duration;

use crate::disk::DiskState;

use super::partition::Partition;
use super::LogNode;

/// Once a second: publish what the storage engine and caches hold, re-read free space (probing
/// RocksDB after ENOSPC), and while the disk is below its reserve, step away from leading. A
/// leader that cannot take client writes should not keep its partitions: it stops sending
/// heartbeats and standing for election, so once the followers' leader lease runs out one of them
/// (with a disk that can write) is elected. When space is back, both are enabled again. A group
/// with no other voter keeps its leader (and refuses writes until space is freed).
///
/// A thread of its own, not a tokio task: when the disk fills, RocksDB may stall writes on the
/// runtime's worker threads, and this watch is what releases the ballast that ends the stall.
pub(super) fn watch_disk(node: Weak<LogNode>) {
    let mut stepped_away = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(Relaxed) {
            return;
        }
        node.publish_sizes();
        let disk = node.engine.disk();
        disk.refresh();
        if disk.waiting_for_space() {
            // Fails (and changes nothing) until RocksDB has resumed; see `Engine::probe`.
            let _ = node.engine.probe();
        }
        disk.publish_metrics();
        let low = disk.state() != DiskState::Ok;
        if low == stepped_away {
            continue;
        }
        stepped_away = low;
        let open = node.elections_open.lock().expect("elections lock");
        for part in node.groups.all() {
            if part.voters().len() < 2 || node.damaged(part.id).is_some() {
                continue;
            }
            part.raft.runtime_config().elect(!low && *open);
        }
        // Heartbeats are the node's (`send_heartbeats`): stop them all, so the followers' leases
        // run out and they elect a leader that can write.
        node.stepped_away.store(low, Relaxed);
        drop(open);
        if low {
            tracing::warn!(disk = ?disk.status(), "disk below its reserve: refusing client writes and handing leaderships to other nodes");
        } else {
            tracing::info!(disk = ?disk.status(), "disk has room again: taking client writes and standing for election");
        }
    }
}

/// How long a node that has just started waits before its groups stand for election.
pub(super) const ELECTION_GRACE: Duration = Duration::from_secs(1);

/// Let `part` stand for election if the node's grace is over and its disk has room, or at
/// once if this node is its only voter. Called for every group by `open_elections`, and for a
/// group opened later (a partition moved here) when it opens.
pub(super) fn let_stand(node: &LogNode, part: &Partition) {
    if part.standing.load(Relaxed) {
        return;
    }
    let open = node.elections_open.lock().expect("elections lock");
    let alone = part.voters() == [node.config.node_id];
    // A damaged replica with healthy peers stands for nothing (`damage.rs`).
    if !alone && node.damaged(part.id).is_some() {
        return;
    }
    // The disk watch keeps a group of one leading (it has no one to hand over to).
    if (*open && !node.stepped_away.load(Relaxed)) || alone {
        part.raft.runtime_config().elect(true);
        part.standing.store(true, Relaxed);
    }
}

/// After `grace`, let every group stand for election (unless the disk watch has stepped the
/// node away); a group whose only voter is this node, as soon as its membership is loaded.
///
/// A node that restarts while the others run has missed nothing but heartbeats, yet its election
/// timers start before its leaders have reconnected to it; if one ran out first, the node would
/// stand with a higher term and unseat a healthy leader (openraft 0.9 has no pre-vote). Waiting a
/// grace first costs nothing then: it still votes, and the leaders reach it well within the
/// grace. When the whole cluster restarts at once there is no leader to hear from, and elections
/// start `grace` later than they could. A first start initializes its groups explicitly and
/// is not delayed; a single node has nobody to unseat and is not delayed either.
pub(super) async fn open_elections(node: Weak<LogNode>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let over = tokio::time::Instant::now() >= deadline;
        {
            let Some(node) = node.upgrade() else { return };
            if over {
                *node.elections_open.lock().expect("elections lock") = true;
            }
            for part in node.groups.all() {
                let_stand(&node, &part);
            }
        }
        if over {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `every`, a heartbeat from each group this node leads, all at the same instant.
///
/// openraft can time heartbeats itself, but per group, each on its own timer: P groups then
/// send P messages per peer per interval at scattered times. Triggered together, they are ready
/// at once and the peer link (`network/mux.rs`) carries them in one frame per peer, so a node's
/// heartbeat cost per peer does not grow with its groups.
pub(super) async fn send_heartbeats(node: Weak<LogNode>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(Relaxed) {
            return;
        }
        if node.stepped_away.load(Relaxed) {
            continue;
        }
        for part in node.groups.all() {
            if !part.leading.get() || node.handing_over(part.id) {
                continue;
            }
            // Fails only once the group has stopped (shutdown or a fatal storage error).
            let _ = part.raft.trigger().heartbeat().await;
        }
    }
}

/// Keep this node's copy of the partition map current: re-read on every change the metadata
/// group applies here (and once a second). Never waits on anything else, so whoever waits for
/// the map to reach an epoch (a change just made) sees it as soon as it is applied.
pub(super) async fn publish_map(node: Weak<LogNode>) {
    let Some(mut applied) = node
        .upgrade()
        .and_then(|n| n.groups.get(crate::types::PartitionId::META))
        .map(|meta| meta.offsets.clone())
    else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = ticks.tick() => {}
        }
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(Relaxed) {
            return;
        }
        if let Err(e) = node.refresh_map() {
            tracing::error!(error = %e, "read the partition map");
        }
    }
}

/// Keep this node's groups in line with its copy of the map (`LogNode::reconcile`): on every
/// change of the map, and once a second to retry what failed.
pub(super) async fn follow_map(node: Weak<LogNode>) {
    let Some(mut map) = node.upgrade().map(|n| n.watch_map()) else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = map.changed() => if changed.is_err() { return },
            _ = ticks.tick() => {}
        }
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(Relaxed) {
            return;
        }
        tokio::select! {
            _ = node.reconcile() => {}
            _ = node.until_stopped() => return,
        }
    }
}
