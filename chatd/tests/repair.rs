//! A replica with a damaged record, on three real processes: once a read hits the record, the
//! node stops serving that partition from its copy (the devices it serves read the healthy
//! replicas instead, and get every message intact), gives up its leadership, and says so in
//! status and metrics; `RepairPartition` rebuilds the copy from the healthy replicas while
//! writes go on, after which the three replicas are identical again and the node serves and
//! verifies clean.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::{Device, DeviceOptions};
use chat_log::LogOffset;
use chat_model::ids::partition_of;
use chat_proto::admin::{RepairPartitionRequest, VerifyRequest};
use common::{free_port, register, scrape, Cluster};

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_stops_serving_and_is_repaired_from_the_others() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let node2_metrics = metrics.clone();
    let mut cluster = Cluster::start_each(
        3,
        PARTITIONS,
        move |id| {
            let metrics = match id {
                2 => format!("metrics_listen = \"{node2_metrics}\"\n"),
                _ => String::new(),
            };
            format!("{metrics}[chat]\nsends_per_second = 100000\nsend_burst = 100000\n")
        },
        &BTreeMap::new(),
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr1 = cluster.node(1).addr.clone();
    let (mut alice, alice_token) = register(&addr1, "alice").await;
    let (_bob, bob_token) = register(&addr1, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let p = partition_of(chat, PARTITIONS);
    let sender = Device::start(DeviceOptions::new(vec![addr1.clone()], &alice_token));
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(
            sender
                .send(chat, format!("m{i}").into_bytes())
                .await
                .unwrap(),
        );
    }
    cluster
        .assert_identical_replicas(p.0, &[1, 2, 3], WAIT)
        .await;

    // Node 2 stops; a bit of the fifth message's stored event flips; node 2 starts again.
    assert!(cluster.terminate(2).success());
    chat_log::testing::corrupt_event(&cluster.node(2).data_dir, p, LogOffset(acks[4].offset));
    cluster.spawn(2);
    common::wait_for_health(&cluster.node(2).addr, common::SERVING, WAIT).await;

    // Bob reads the chat through node 2: its copy fails the check, the others answer.
    let mut bob = chat_client::ChatClient::connect(&cluster.node(2).addr)
        .await
        .unwrap()
        .with_token(&bob_token)
        .unwrap();
    let page = bob.history(chat, 0, 0, 100).await.unwrap().messages;
    let texts: Vec<String> = page
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(
        texts, sent,
        "every message, intact, from the healthy replicas"
    );

    // Node 2 says its replica is damaged, in status and metrics, and does not lead it.
    let damaged = |status: &chat_proto::admin::StatusReply| {
        status
            .partitions
            .iter()
            .find(|s| s.partition == p.0)
            .map(|s| s.damage.clone())
            .unwrap_or_default()
    };
    let status = cluster.status(2).await;
    assert!(damaged(&status).contains("crc32"), "{status:?}");
    let page = scrape(&metrics);
    assert!(
        page.contains(&format!(
            "chatd_partition_damaged{{partition=\"{}\"}} 1",
            p.0
        )),
        "{page}"
    );
    let deadline = Instant::now() + WAIT;
    while cluster.wait_for_leaders(1, WAIT).await[&p.0] == 2 {
        assert!(
            Instant::now() < deadline,
            "the damaged replica kept its leadership"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Writes go on during the repair.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let writing = writing.clone();
        async move {
            let mut sent = Vec::new();
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                let text = format!("during {i}");
                sender.send(chat, text.clone().into_bytes()).await.unwrap();
                sent.push(text);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    let reply = cluster
        .admin(2)
        .await
        .repair_partition(RepairPartitionRequest { partition: p.0 })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(reply.from_leader, 2);
    writing.store(false, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(!during.is_empty());

    // Repaired: no damage, a voter, the same bytes as the others, verified clean.
    let status = cluster.status(2).await;
    assert_eq!(damaged(&status), "", "{status:?}");
    let mine = status
        .partitions
        .iter()
        .find(|s| s.partition == p.0)
        .unwrap();
    assert!(mine.voters.contains(&2), "{mine:?}");
    cluster
        .assert_identical_replicas(p.0, &[1, 2, 3], WAIT)
        .await;
    let verify = cluster
        .admin(2)
        .await
        .verify_checksums(VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.errors.is_empty(), "{:?}", verify.errors);
    assert!(scrape(&metrics).contains(&format!(
        "chatd_partition_damaged{{partition=\"{}\"}} 0",
        p.0
    )));
    let page = bob.history(chat, 0, 0, 1000).await.unwrap().messages;
    assert_eq!(page.len(), 20 + during.len());
}
