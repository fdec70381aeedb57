//! The device API on three real `chatd` processes: devices connected to different nodes share a
//! group (sends are routed to partition leaders, every gateway pushes from its own replica), and
//! when the node a device is connected to is killed (`kill -9`), the device reconnects to
//! another node and resumes with no loss and no duplicate while messages keep coming.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::{Device, DeviceEvent, DeviceOptions};
use chat_proto::chat_v1::Message;
use common::{register, Cluster};

const CONFIG: &str = "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";
const WAIT: Duration = Duration::from_secs(30);

/// A device whose servers start at `first` and go round the others.
fn device_on(addrs: &[String], first: usize, token: &str) -> Device {
    let mut servers = addrs[first..].to_vec();
    servers.extend_from_slice(&addrs[..first]);
    Device::start(DeviceOptions::new(servers, token))
}

/// Collect messages of `chat` until seq `last`, recording every (re)connection.
async fn collect(device: &mut Device, chat: u64, last: u64) -> (Vec<Message>, Vec<u64>) {
    let (mut got, mut nodes) = (Vec::new(), Vec::new());
    while got.last().map(|m: &Message| m.seq) != Some(last) {
        match tokio::time::timeout(WAIT, device.next_event()).await {
            Ok(Some(DeviceEvent::Message(m))) if m.chat_id == chat => got.push(m),
            Ok(Some(DeviceEvent::Connected { node_id, .. })) => nodes.push(node_id),
            Ok(Some(_)) => {}
            Ok(None) => panic!("device stopped"),
            Err(_) => panic!(
                "stuck at {:?} of {last} (connections: {nodes:?})",
                got.last().map(|m| m.seq)
            ),
        }
    }
    (got, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_on_different_nodes_and_a_killed_gateway_node() {
    let mut cluster = Cluster::start_with(3, 4, CONFIG);
    cluster.wait_for_leaders(1, WAIT).await;
    let addrs: Vec<String> = (1..=3).map(|i| cluster.node(i).addr.clone()).collect();

    // Each user registers through a different node; the group is created through a fourth.
    let (mut alice, alice_token) = register(&addrs[0], "alice").await;
    let (_, bob_token) = register(&addrs[1], "bob").await;
    let (_, carol_token) = register(&addrs[2], "carol").await;
    let members = vec!["bob".to_string(), "carol".to_string()];
    let chat = alice
        .create_group("cluster-group", "three nodes", &members)
        .await
        .unwrap()
        .chat_id;

    let alice_dev = device_on(&addrs, 0, &alice_token);
    let mut bob_dev = device_on(&addrs, 1, &bob_token);
    let mut carol_dev = device_on(&addrs, 2, &carol_token);
    for i in 1..=20 {
        alice_dev
            .send(chat, format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    let (bob_first, bob_nodes) = collect(&mut bob_dev, chat, 20).await;
    let (carol_first, carol_nodes) = collect(&mut carol_dev, chat, 20).await;
    assert_eq!(bob_nodes, vec![2]);
    assert_eq!(carol_nodes, vec![3]);
    for got in [&bob_first, &carol_first] {
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
    }

    // Presence asked of node 1 sees streams held by nodes 2 and 3 (alice shares the group with
    // both); a handle nobody has is NOT_FOUND.
    let handles = ["bob", "carol"].map(String::from);
    let seen = alice.presence(&handles).await.unwrap();
    let online: Vec<bool> = seen.iter().map(|p| p.online).collect();
    assert_eq!(online, vec![true, true], "{seen:?}");
    let err = alice.presence(&["nobody".into()]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Kill bob's node while alice keeps sending (through node 1, which forwards to whichever
    // node leads the chat's partition, retrying through the election).
    cluster.kill9(2);
    let sender = tokio::spawn(async move {
        for i in 21..=80 {
            alice_dev
                .send(chat, format!("m{i}").into_bytes())
                .await
                .unwrap();
        }
        alice_dev
    });
    let (bob_rest, bob_nodes) = collect(&mut bob_dev, chat, 80).await;
    let (carol_rest, _) = collect(&mut carol_dev, chat, 80).await;
    sender.await.unwrap();

    // Bob reconnected to a surviving node and resumed from his cursor: 21..=80 exactly once.
    assert!(!bob_nodes.is_empty(), "bob never reconnected");
    assert!(bob_nodes.iter().all(|&n| n != 2), "{bob_nodes:?}");
    assert_eq!(
        bob_rest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=80).collect::<Vec<_>>()
    );
    assert_eq!(
        carol_rest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=80).collect::<Vec<_>>()
    );
    let texts = |ms: &[Message]| -> Vec<Vec<u8>> { ms.iter().map(|m| m.payload.clone()).collect() };
    assert_eq!(texts(&bob_rest), texts(&carol_rest));
    assert_eq!(bob_rest[0].payload, b"m21");
    assert_eq!(bob_dev.cursors().get(&chat), Some(&80));

    // Bob leaves: offline everywhere, with a last-seen time from the node that held his stream.
    drop(bob_dev);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let bob = alice.presence(&handles[..1]).await.unwrap().remove(0);
        if !bob.online {
            assert!(bob.last_seen_ms > 0, "{bob:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob still online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The killed node comes back and serves devices again, with the whole chat (cursor 0: a
    // device that names no cursor would resume after what carol's device acknowledged).
    cluster.spawn(2);
    let mut late = Device::start(DeviceOptions {
        cursors: BTreeMap::from([(chat, 0)]),
        ..DeviceOptions::new(vec![addrs[1].clone()], &carol_token)
    });
    let (all, nodes) = collect(&mut late, chat, 80).await;
    assert_eq!(nodes.first(), Some(&2));
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
}

/// With no quorum for a chat's partition, a send that asked for a short wait
/// (`SendFrame.timeout_ms`) is answered UNAVAILABLE once that wait is over, whether its node
/// still believes it leads (a proposal that never commits) or not (no leader to take it), and
/// not after the server's own, much longer, default.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_without_a_quorum_fails_unavailable_after_the_devices_own_timeout() {
    let config = format!("{CONFIG}submit_timeout_ms = 120000\n");
    let mut cluster = Cluster::start_with(3, 4, &config);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let mut options = DeviceOptions::new(vec![addr.clone()], &alice_token);
    options.send_timeout = Some(Duration::from_millis(300));
    let device = Device::start(options);
    device.send(chat, b"with a quorum".to_vec()).await.unwrap();

    cluster.kill9(2);
    cluster.kill9(3);
    let started = std::time::Instant::now();
    let refused = device
        .send(chat, b"without one".to_vec())
        .await
        .expect_err("no quorum: nothing can commit");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // 300 ms asked for, 120 s configured: which one applied is beyond doubt at 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered after {:?}: the device's timeout was not applied",
        started.elapsed()
    );
}
