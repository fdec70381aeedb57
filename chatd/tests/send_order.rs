//! A device's sends to a chat get seqs in the order it wrote them, also when it writes them
//! without waiting for each ack (pipelined): on one node; and on three, from a node that
//! forwards to the chat's leader while the leadership moves under the sends (the client library
//! resends what ends UNAVAILABLE, in order, and the gateway holds back what follows it).

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{Device, DeviceOptions};
use chat_proto::admin::{SetBalancingRequest, TransferLeaderRequest};
use chat_proto::chat_v1::server_frame;
use common::load::whole_history;
use common::{register, Cluster};

const WAIT: Duration = Duration::from_secs(60);
const SENDS: usize = 1000;
const PARTITIONS: u32 = 4;
const CONFIG: &str = "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";

/// The chat's messages from the test's sender, as the indices their payloads carry, in seq
/// order; and the seqs are dense from 1.
async fn payload_order(client: &mut chat_client::ChatClient, chat: u64) -> Vec<usize> {
    let history = whole_history(client, chat).await;
    for (i, m) in history.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "seqs are dense");
    }
    history
        .iter()
        .map(|m| {
            String::from_utf8(m.payload.clone())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_sends_keep_their_order_on_one_node() {
    let cluster = Cluster::start_with(1, PARTITIONS, CONFIG);
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut alice, token) = register(&addr, "alice").await;
    register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;

    let mut stream = alice
        .open_stream(&token, &Default::default())
        .await
        .unwrap();
    // Every send written before any answer is read.
    for i in 0..SENDS {
        stream
            .send(chat, &format!("m{i}"), i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seqs.len() < SENDS {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, stream.next())
            .await
            .expect("every send answered")
            .expect("the stream stays open")
            .unwrap();
        match frame {
            server_frame::Kind::SendAck(a) => {
                // Acks come back in the order of the sends.
                assert_eq!(a.client_msg_id, format!("m{}", seqs.len()));
                seqs.push(a.ack.unwrap().seq);
            }
            server_frame::Kind::SendError(e) => panic!("a send failed: {e:?}"),
            _ => {}
        }
    }
    let expected: Vec<u64> = (1..=SENDS as u64).collect();
    assert_eq!(seqs, expected, "the i-th send got seq i");
    let order = payload_order(&mut alice, chat).await;
    assert_eq!(order, (0..SENDS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_through_a_forwarding_node_keep_their_order_while_leadership_moves() {
    let cluster = Cluster::start_with(3, PARTITIONS, CONFIG);
    cluster.wait_for_leaders(1, WAIT).await;
    cluster
        .wait_for_map(1, WAIT, "a map", |m| m.epoch > 0)
        .await;
    let (mut alice, token) = register(&cluster.node(1).addr, "alice").await;
    register(&cluster.node(1).addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let p = chat_model::ids::partition_of(chat, PARTITIONS).0;
    let mut admin = cluster.admin(1).await;
    admin
        .set_balancing(SetBalancingRequest { enabled: false })
        .await
        .unwrap();
    // The device on a node that does not lead the chat's partition: its sends are forwarded.
    let leader = cluster.wait_for_leaders(1, WAIT).await[&p];
    let entry = if leader == 1 { 2 } else { 1 };
    let device = Device::start(DeviceOptions {
        max_backoff: Duration::from_millis(300),
        ..DeviceOptions::new(vec![cluster.node(entry).addr.clone()], &token)
    });

    // Leadership of the chat's partition moves round the nodes while the sends are pipelined.
    let mover = {
        let mut admin = cluster.admin(1).await;
        tokio::spawn(async move {
            let mut moved = 0;
            for to in [1, 2, 3, 1, 2, 3].into_iter().filter(|&to| to != leader) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let request = TransferLeaderRequest {
                    partition: p,
                    to_node: to,
                };
                if admin.transfer_leader(request).await.is_ok() {
                    moved += 1;
                }
            }
            moved
        })
    };
    let mut sends = Vec::new();
    for i in 0..SENDS {
        let id = chat_client::device::new_client_msg_id();
        let ack = device
            .queue_send(chat, &id, i.to_string().into_bytes())
            .await
            .unwrap();
        sends.push(ack);
    }
    let acks = tokio::time::timeout(WAIT, futures::future::join_all(sends))
        .await
        .expect("every send answered");
    let moved = mover.await.unwrap();
    eprintln!("leadership of partition {p} moved {moved} times under the sends");
    assert!(moved > 0, "no transfer went through");

    let seqs: Vec<u64> = acks
        .into_iter()
        .map(|a| a.expect("every send is acknowledged").seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "acknowledged seqs follow the send order: {seqs:?}"
    );
    let order = payload_order(&mut alice, chat).await;
    assert_eq!(
        order,
        (0..SENDS).collect::<Vec<_>>(),
        "the chat holds every send once, in send order"
    );
}
