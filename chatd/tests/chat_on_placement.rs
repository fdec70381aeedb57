//! The device API on real `chatd` processes whose partitions are spread out: three nodes with
//! one replica of each partition (R = 1 of N = 3), so each node holds a third of the chat state
//! and every device below talks to a node that does *not* hold its user's or its chat's
//! partition. Registering, authenticating, creating a group, live pushes and ticks, a later
//! device's backlog, history, the inbox and the chat list all work through such a node: its
//! reads go to the node that holds the partition, its hub tails partitions it does not hold and
//! follows their tick changes at a node that projects them.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_client::{Device, DeviceEvent, DeviceOptions};
use chat_model::ids::{partition_of, user_id_for_handle};
use chat_proto::chat_v1::Message;
use chat_proto::log::PartitionMap;
use common::{register, until_synced, Cluster};

const PARTITIONS: u32 = 6;
const CONFIG: &str = "replication = 1\n[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";
const WAIT: Duration = Duration::from_secs(60);

/// Which node holds each partition (R = 1: its one voter).
fn holders(map: &PartitionMap) -> BTreeMap<u32, u64> {
    map.replicas
        .iter()
        .map(|(p, r)| (*p, r.voters[0]))
        .collect()
}

/// The nodes that do not hold partition `p`.
fn not_holding(holders: &BTreeMap<u32, u64>, p: u32) -> Vec<u64> {
    (1..=3).filter(|n| holders[&p] != *n).collect()
}

/// Messages of `chat` pushed to `device` until seq `last`; panics with the nodes' logs if they
/// stop coming.
async fn collect(cluster: &Cluster, device: &mut Device, chat: u64, last: u64) -> Vec<Message> {
    let mut got = Vec::new();
    while got.last().map(|m: &Message| m.seq) != Some(last) {
        let stuck = match tokio::time::timeout(WAIT, device.next_event()).await {
            Ok(Some(DeviceEvent::Message(m))) if m.chat_id == chat => {
                got.push(m);
                continue;
            }
            Ok(Some(DeviceEvent::Disconnected(s))) => format!("disconnected: {s:?}"),
            Ok(Some(_)) => continue,
            Ok(None) => "device stopped".to_string(),
            Err(_) => format!("stuck at {:?} of {last}", got.last().map(|m| m.seq)),
        };
        let logs: String = (1..=3)
            .map(|id| format!("--- node {id}\n{}", cluster.log_of(id)))
            .collect();
        panic!("{stuck}\n{logs}");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_use_nodes_that_do_not_hold_their_partitions() {
    let cluster = Cluster::start_with(3, PARTITIONS, CONFIG);
    let map = cluster
        .wait_for_map(1, WAIT, "one replica of each partition, each led", |m| {
            m.replicas.len() == PARTITIONS as usize
                && m.replicas
                    .values()
                    .all(|r| r.voters.len() == 1 && r.leader_hint == r.voters[0])
        })
        .await;
    let holders = holders(&map);
    for id in 1..=3 {
        let held = holders.values().filter(|n| **n == id).count();
        assert_eq!(
            held, 2,
            "node {id} holds two of six partitions: {holders:?}"
        );
    }
    let addr = |id: u64| cluster.node(id).addr.clone();
    let away_from = |handle: &str| {
        let p = partition_of(user_id_for_handle(handle).0, PARTITIONS).0;
        not_holding(&holders, p)[0]
    };

    // Each user registers through a node without the user's partition, and then calls through
    // it: the device record it authenticates against is on another node.
    let (mut alice, alice_token) = register(&addr(away_from("alice")), "alice").await;
    let (mut bob, bob_token) = register(&addr(away_from("bob")), "bob").await;
    let (_, carol_token) = register(&addr(away_from("carol")), "carol").await;
    let members = ["bob".to_string(), "carol".to_string()];
    let info = alice
        .create_group("spread-group", "spread out", &members)
        .await
        .unwrap();
    let chat = info.chat_id;
    let mut handles = info.member_handles.clone();
    handles.sort();
    assert_eq!(handles, ["alice", "bob", "carol"], "{info:?}");

    // Bob's and Carol's devices on the two nodes without the chat's partition: every push they
    // get comes through a hub tailing a partition its node does not hold.
    let chat_p = partition_of(chat, PARTITIONS).0;
    let away = not_holding(&holders, chat_p);
    let device =
        |node: u64, token: &str| Device::start(DeviceOptions::new(vec![addr(node)], token));
    let mut alice_dev = device(away[0], &alice_token);
    let mut bob_dev = device(away[0], &bob_token);
    let mut carol_dev = device(away[1], &carol_token);
    for dev in [&mut bob_dev, &mut carol_dev] {
        assert!(until_synced(dev, WAIT).await.is_empty());
    }
    for i in 1..=30 {
        alice_dev
            .send(chat, format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    let expected: Vec<Vec<u8>> = (1..=30).map(|i| format!("m{i}").into_bytes()).collect();
    for dev in [&mut bob_dev, &mut carol_dev] {
        let got = collect(&cluster, dev, chat, 30).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|m| m.payload).collect();
        assert_eq!(payloads, expected);
    }

    // Ticks live on a node that does not project the chat's partition: Bob and Carol read
    // everything, and Alice's device (on such a node) hears that her messages are read.
    bob_dev.read(chat, 30).await;
    carol_dev.read(chat, 30).await;
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, alice_dev.next_event()).await {
            Ok(Some(DeviceEvent::Ticks(t))) if t.chat_id == chat => {
                seen.push((t.delivered_up_to, t.read_up_to));
                if (t.delivered_up_to, t.read_up_to) == (30, 30) {
                    break;
                }
            }
            Ok(Some(_)) => continue,
            other => {
                let logs: String = (1..=3)
                    .map(|id| format!("--- node {id}\n{}", cluster.log_of(id)))
                    .collect();
                panic!("alice's ticks stopped at {seen:?}: {other:?}\n{logs}")
            }
        }
    }

    // A device that connects later gets the backlog: its chats from every partition, their
    // messages from the chat's (from the start: bob's device has acknowledged them all, and a
    // device naming no cursor would resume after that).
    let mut late = Device::start(DeviceOptions {
        cursors: BTreeMap::from([(chat, 0)]),
        ..DeviceOptions::new(vec![addr(away[1])], &bob_token)
    });
    let backlog = until_synced(&mut late, WAIT).await;
    assert_eq!(
        backlog.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );

    // History, the chat list and the inbox, each through a node without the partitions read.
    let page = bob.history(chat, 10, 0, 100).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(page.last_seq, 30);
    let chats = bob.list_chats().await.unwrap();
    assert_eq!(chats.len(), 1, "{chats:?}");
    assert_eq!((chats[0].chat_id, chats[0].last_seq), (chat, 30));
    // The inbox follows the projection and the chat list, which trail the log a little.
    let deadline = Instant::now() + WAIT;
    loop {
        let inbox = bob.inbox().await.unwrap();
        if let Some(entry) = inbox.iter().find(|e| e.chat_id == chat && e.last_seq == 30) {
            // Bob has read everything, and his ticks say the others have not read his nothing.
            assert_eq!(entry.unread, 0, "{entry:?}");
            assert_eq!(
                (entry.delivered_up_to, entry.read_up_to),
                (30, 30),
                "{entry:?}"
            );
            assert_eq!(entry.name, "spread out");
            break;
        }
        assert!(Instant::now() < deadline, "bob's inbox: {inbox:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A chat nobody can see is still NOT_FOUND, and a stranger is refused, through any node.
    let (mut dave, _) = register(&addr(away_from("dave")), "dave").await;
    let refused = dave.history(chat, 0, 0, 10).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let missing = dave.history(chat + 1, 0, 0, 10).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}
