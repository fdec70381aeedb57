//! The elastic cluster under a steady load of sends and device streams, on real chatd processes.
//!
//! Five nodes with three replicas of each partition. While a sender keeps sending to six groups
//! and two devices of one member follow them live (on different nodes, each knowing every node's
//! address to fail over to), the cluster goes through what an operator does to it: a sixth node
//! is added and takes its share, a node is removed (its replicas move off first), a node whose
//! data dir was wiped is replaced by a new id, every partition's leadership is transferred, and
//! the node receiving a replica is killed half-way through the move. Afterwards every
//! acknowledged send is in its chat's history exactly once and in order, each device received
//! every message of every chat in order with no gap or duplicate, and the replicas of each
//! partition are byte-identical.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{Device, DeviceOptions};
use chat_proto::admin::*;
use chat_proto::log::{NodeState, PartitionMap};
use common::load::{check_delivered, start_reader, start_sender, Received};
use common::{balanced, register, settled, Cluster};

const PARTITIONS: u32 = 6;
const CHATS: usize = 6;
const CONFIG: &str = "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";
const WAIT: Duration = Duration::from_secs(90);
/// Between two sends: a steady trickle (~40/s) that every change below happens under.
const SEND_EVERY: Duration = Duration::from_millis(25);

fn state_of(map: &PartitionMap, id: u64) -> Option<i32> {
    map.nodes.get(&id).map(|n| n.state)
}

/// Map changes go through node 1, which stays up throughout.
async fn set_state(cluster: &Cluster, id: u64, state: &str) {
    cluster
        .admin(1)
        .await
        .set_node_state(SetNodeStateRequest {
            node_id: id,
            state: state.into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_sends_and_device_streams() {
    let mut cluster = Cluster::start_with(5, PARTITIONS, CONFIG);
    cluster
        .wait_for_map(1, WAIT, "three replicas of each partition, each led", |m| {
            m.replicas
                .values()
                .all(|r| r.voters.len() == 3 && r.leader_hint != 0)
        })
        .await;
    let addr = |cluster: &Cluster, id: u64| cluster.node(id).addr.clone();
    let servers = |cluster: &Cluster, ids: &[u64]| -> Vec<String> {
        ids.iter().map(|&id| addr(cluster, id)).collect()
    };

    // The sender and the reader; six groups of the two.
    let (mut sender, sender_token) = register(&addr(&cluster, 1), "sender").await;
    let (mut reader, reader_token) = register(&addr(&cluster, 2), "reader").await;
    let second_token = reader.link_device(2).await.unwrap().token;
    let mut chats = Vec::new();
    for g in 0..CHATS {
        let info = sender
            .create_group(
                &format!("load-{g}"),
                &format!("load {g}"),
                &["reader".into()],
            )
            .await
            .unwrap();
        chats.push(info.chat_id);
    }

    // The reader's two devices: one starts on node 2, the other on node 5 (which is removed
    // below, and then on node 4, which is wiped): both must fail over and resume.
    let received: [Received; 2] = Default::default();
    let connected: [Arc<Mutex<Vec<u64>>>; 2] = Default::default();
    for (i, (token, order)) in [(&reader_token, [2u64, 3, 1]), (&second_token, [5u64, 4, 1])]
        .into_iter()
        .enumerate()
    {
        let device = Device::start(DeviceOptions {
            max_backoff: Duration::from_millis(500),
            ..DeviceOptions::new(servers(&cluster, &order), token)
        });
        start_reader(device, received[i].clone(), connected[i].clone());
    }
    let sender_device = Device::start(DeviceOptions {
        max_backoff: Duration::from_millis(500),
        ..DeviceOptions::new(servers(&cluster, &[1, 2, 3]), &sender_token)
    });
    let (stop, acked) = start_sender(sender_device, chats.clone(), SEND_EVERY);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A sixth node joins and takes its share.
    let six = cluster.add_joining(CONFIG);
    let six_addr = addr(&cluster, six);
    cluster
        .admin(1)
        .await
        .add_node(AddNodeRequest {
            node_id: six,
            addr: six_addr,
        })
        .await
        .unwrap();
    cluster
        .wait_for_map(1, WAIT, "node 6 holds its share", |m| {
            balanced(m) && m.replicas.values().any(|r| r.voters.contains(&six))
        })
        .await;

    // 2. Node 5 is removed: its replicas move off it, then the map marks it removed (and its
    //    process ends).
    set_state(&cluster, 5, "leaving").await;
    let removed = NodeState::NodeRemoved as i32;
    cluster
        .wait_for_map(1, WAIT, "node 5 emptied and removed", |m| {
            state_of(m, 5) == Some(removed) && settled(m)
        })
        .await;

    // 3. Node 4's disk dies: a new node takes its place under a new id.
    cluster.kill9(4);
    std::fs::remove_dir_all(&cluster.node(4).data_dir).unwrap();
    let seven = cluster.add_joining(CONFIG);
    let seven_addr = addr(&cluster, seven);
    cluster
        .admin(1)
        .await
        .replace_node(ReplaceNodeRequest {
            old_node_id: 4,
            new_node_id: seven,
            new_addr: seven_addr,
        })
        .await
        .unwrap();
    cluster
        .wait_for_map(1, WAIT, "node 4 replaced by node 7", |m| {
            state_of(m, 4) == Some(removed)
                && settled(m)
                && m.replicas.values().any(|r| r.voters.contains(&seven))
        })
        .await;

    // Balancing off from here, so the changes below are the only ones (and a transfer is not
    // undone, nor a move refused because the balancer started one).
    cluster
        .admin(1)
        .await
        .set_balancing(SetBalancingRequest { enabled: false })
        .await
        .unwrap();
    let map = cluster
        .wait_for_map(1, WAIT, "no move under way", settled)
        .await;

    // 4. Every partition's leadership moves to another of its voters (a handover may be
    //    refused while the target catches up under the load: asked again).
    for (p, r) in &map.replicas {
        let to = *r
            .voters
            .iter()
            .find(|v| **v != r.leader_hint)
            .expect("three voters");
        let mut tries = 0;
        let reply = loop {
            let request = TransferLeaderRequest {
                partition: *p,
                to_node: to,
            };
            match cluster.admin(1).await.transfer_leader(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(e) if tries < 10 => {
                    tries += 1;
                    eprintln!("transfer of partition {p} to node {to}: {e:?}; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("transfer of partition {p} to node {to}: {e:?}"),
            }
        };
        assert_eq!(reply.leader_id, to, "partition {p}");
    }

    // 5. A move whose receiving node is killed half-way: the move finishes once it is back.
    let map = cluster.map(1).await;
    let (p, from, to) = map
        .replicas
        .iter()
        .find_map(|(p, r)| {
            let from = *r.voters.iter().find(|v| **v != r.leader_hint)?;
            // Not node 1: map changes and checks go through it.
            let to = [2, 3, six, seven]
                .into_iter()
                .find(|n| !r.voters.contains(n))?;
            Some((*p, from, to))
        })
        .expect("a partition with a node outside it");
    cluster
        .admin(1)
        .await
        .move_replica(MoveReplicaRequest {
            partition: p,
            from_node: from,
            to_node: to,
        })
        .await
        .unwrap();
    cluster.kill9(to);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.spawn(to);
    let map = cluster
        .wait_for_map(1, WAIT, "the interrupted move finished", |m| {
            settled(m) && m.replicas[&p].voters.contains(&to)
        })
        .await;
    assert!(!map.replicas[&p].voters.contains(&from), "{map:?}");

    // The load stops; the devices catch up with everything acknowledged, which is in each
    // chat's history once, at its seq, and reached each device in order.
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = check_delivered(&mut reader, &chats, &acked, &received, WAIT).await;
    assert!(
        sent > 100,
        "only {sent} sends were acknowledged during the changes"
    );
    // The second device lost its first two nodes and went on elsewhere.
    let second = connected[1].lock().unwrap().clone();
    assert!(
        second.first() == Some(&5) && second.iter().any(|n| *n != 5),
        "the second device's nodes: {second:?}"
    );

    // The replicas of every partition are identical.
    for (p, r) in &map.replicas {
        cluster
            .assert_identical_replicas(*p, &r.voters, Duration::from_secs(30))
            .await;
    }
}
