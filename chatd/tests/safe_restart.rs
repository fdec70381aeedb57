//! Planned restarts on real chatd processes: health tells when a node can serve, and a node
//! stopped with SIGTERM leaves nothing behind.
//!
//! - Under a steady load of sends and device streams, the node leading the most partitions is
//!   stopped with SIGTERM: its health turns NOT_SERVING, it hands every leadership it holds to
//!   another voter before it stops, its device streams end and the devices resume on the other
//!   nodes, and it exits cleanly. Restarted, it reports SERVING again. Every acknowledged send
//!   is in its chat's history once and reached every device in order.
//! - A node that cannot have a leader for its partitions (a quorum is down) answers health with
//!   NOT_SERVING, and SERVING once a quorum is back; stopping a node with nobody to hand its
//!   leaderships to still exits.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{Device, DeviceOptions};
use common::load::{check_delivered, start_reader, start_sender, Received};
use common::{health, register, wait_for_health, Cluster, NOT_SERVING, SERVING};

const PARTITIONS: u32 = 4;
const CHATS: usize = 4;
const CONFIG: &str = "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";
const WAIT: Duration = Duration::from_secs(60);
const SEND_EVERY: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_hands_over_and_its_devices_resume_elsewhere() {
    let mut cluster = Cluster::start_with(3, PARTITIONS, CONFIG);
    let map = cluster
        .wait_for_map(1, WAIT, "three replicas of each partition, each led", |m| {
            m.replicas
                .values()
                .all(|r| r.voters.len() == 3 && r.leader_hint != 0)
        })
        .await;
    for id in 1..=3 {
        wait_for_health(&cluster.node(id).addr, SERVING, WAIT).await;
    }
    // The node leading the most partitions is the one stopped.
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for r in map.replicas.values() {
        *led.entry(r.leader_hint).or_default() += 1;
    }
    let (victim, victim_leads) = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, n)| (*id, *n))
        .unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    let addr = |id: u64| cluster.node(id).addr.clone();
    let servers = |ids: &[u64]| -> Vec<String> {
        ids.iter()
            .map(|id| cluster.node(*id).addr.clone())
            .collect()
    };

    let (mut sender, sender_token) = register(&addr(others[0]), "sender").await;
    let (mut reader, reader_token) = register(&addr(others[1]), "reader").await;
    let second_token = reader.link_device(2).await.unwrap().token;
    let mut chats = Vec::new();
    for g in 0..CHATS {
        let members = ["reader".to_string()];
        let info = sender
            .create_group(&format!("g-{g}"), &format!("group {g}"), &members)
            .await
            .unwrap();
        chats.push(info.chat_id);
    }

    // The sender and one reader device start on the node that is stopped; the other reader is
    // on another node throughout.
    let on_victim_first = [victim, others[0], others[1]];
    let received: [Received; 2] = Default::default();
    let connected: [Arc<Mutex<Vec<u64>>>; 2] = Default::default();
    for (i, (token, order)) in [
        (&reader_token, on_victim_first),
        (&second_token, [others[1], others[0], victim]),
    ]
    .into_iter()
    .enumerate()
    {
        let device = Device::start(DeviceOptions {
            max_backoff: Duration::from_millis(300),
            ..DeviceOptions::new(servers(&order), token)
        });
        start_reader(device, received[i].clone(), connected[i].clone());
    }
    let sender_device = Device::start(DeviceOptions {
        max_backoff: Duration::from_millis(300),
        ..DeviceOptions::new(servers(&on_victim_first), &sender_token)
    });
    let (stop, acked) = start_sender(sender_device, chats.clone(), SEND_EVERY);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Watch the victim's health from the moment it is told to stop.
    let victim_addr = addr(victim);
    let seen: Arc<Mutex<Vec<Option<i32>>>> = Arc::default();
    let watching = {
        let seen = seen.clone();
        let victim_addr = victim_addr.clone();
        tokio::spawn(async move {
            loop {
                let now = health(&victim_addr).await;
                seen.lock().unwrap().push(now);
                if now.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let status = tokio::task::block_in_place(|| cluster.terminate(victim));
    assert!(status.success(), "node {victim} exited with {status}");
    watching.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&Some(NOT_SERVING)),
        "node {victim}'s health while it stopped: {seen:?}"
    );

    // It handed over every leadership it held before it stopped: the others know leaders that
    // are not it at once, without waiting out an election.
    let log = cluster.log_of(victim);
    let line = log
        .lines()
        .find(|l| l.contains("leaderships handed over before stopping"))
        .unwrap_or_else(|| panic!("node {victim} logged no handover:\n{log}"));
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not handed over"))
        .collect();
    assert!(line.contains("kept=0"), "{line}: {why:#?}");
    let moved: usize = line
        .split("moved=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(moved >= victim_leads, "{line}: it led {victim_leads}");
    for via in &others {
        let now = cluster.status(*via).await.leaders();
        assert!(
            now.len() == PARTITIONS as usize && now.values().all(|l| *l != victim),
            "node {via} right after node {victim} stopped: {now:?}"
        );
    }

    // The load goes on through the other nodes; the victim comes back and serves again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.spawn(victim);
    wait_for_health(&victim_addr, SERVING, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sent = check_delivered(&mut reader, &chats, &acked, &received, WAIT).await;
    assert!(sent > 50, "only {sent} sends were acknowledged");
    let first = connected[0].lock().unwrap().clone();
    assert!(
        first.first() == Some(&victim) && first.iter().any(|n| *n != victim),
        "the first reader's nodes: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_says_not_serving_until_a_quorum_elects_leaders() {
    let mut cluster = Cluster::start_with(3, 2, "");
    cluster
        .wait_for_map(1, WAIT, "each partition led", |m| {
            m.replicas.values().all(|r| r.leader_hint != 0)
        })
        .await;
    wait_for_health(&cluster.node(1).addr, SERVING, WAIT).await;

    // Nodes 2 and 3 die; node 1, whatever it led, has nobody to hand over to, and still exits.
    cluster.kill9(2);
    cluster.kill9(3);
    let status = tokio::task::block_in_place(|| cluster.terminate(1));
    assert!(status.success(), "node 1 exited with {status}");

    // Alone it can elect no leader: it answers, and says it cannot serve.
    cluster.spawn(1);
    let addr = cluster.node(1).addr.clone();
    wait_for_health(&addr, NOT_SERVING, WAIT).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health(&addr).await, Some(NOT_SERVING), "without a quorum");
    }

    // A second node back: a quorum, leaders, SERVING.
    cluster.spawn(2);
    wait_for_health(&addr, SERVING, WAIT).await;
    let now = cluster.status(1).await.leaders();
    assert_eq!(now.len(), 2, "every partition led: {now:?}");
}
