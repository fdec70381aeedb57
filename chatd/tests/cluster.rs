//! Three real `chatd` processes on loopback: appends to every partition, `kill -9` of a
//! partition's leader, writes through the re-election, restart and catch-up (through a snapshot,
//! since the Raft log is purged behind frequent snapshots), and byte-identical event logs on every
//! replica of every partition.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chat_proto::admin::AppendRequest;
use chat_proto::LeaderHint;
use common::Cluster;

const PARTITIONS: u32 = 8;
const T: Duration = Duration::from_secs(30);

fn records(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_restart_and_identical_replicas() {
    let mut cluster = Cluster::start(3, PARTITIONS);
    let leaders = cluster.wait_for_leaders(1, T).await;
    let all = [1, 2, 3];
    // First formation spreads leadership (each partition's preferred node initializes first).
    let distinct: BTreeSet<u64> = leaders.values().copied().collect();
    assert!(
        distinct.len() >= 2,
        "every partition is led by the same node: {leaders:?}"
    );

    // Every partition takes a batch; offsets are dense from 1.
    for p in 0..PARTITIONS {
        let reply = cluster
            .append(&all, p, records(&format!("first-p{p}"), 10), T)
            .await;
        assert_eq!(
            reply.offsets,
            (1..=10).collect::<Vec<u64>>(),
            "partition {p}"
        );
    }

    // A follower answers an append with UNAVAILABLE and the leader in the standard error
    // details, which is what clients retry with.
    let follower = *all.iter().find(|&&n| n != leaders[&0]).unwrap();
    let refused = cluster
        .admin(follower)
        .await
        .append(AppendRequest {
            partition: 0,
            records: records("to-a-follower", 1),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let hint = LeaderHint::from_status(&refused).expect("a leader hint in the error details");
    assert_eq!(hint.partition, 0);
    assert_eq!(hint.leader_id, Some(leaders[&0]));
    assert_eq!(
        hint.leader_addr.as_deref(),
        Some(cluster.node(leaders[&0]).addr.as_str())
    );

    // Kill -9 the leader of partition 0.
    let victim = leaders[&0];
    cluster.kill9(victim);
    let alive: Vec<u64> = all.iter().copied().filter(|&n| n != victim).collect();

    // Writes to every partition succeed again once the survivors elect leaders; partition 0 gets
    // enough single-record entries to trigger snapshots and purge the log behind them.
    for i in 0..150 {
        let reply = cluster
            .append(&alive, 0, vec![format!("after-kill-{i}").into_bytes()], T)
            .await;
        assert_eq!(reply.offsets, vec![11 + i as u64]);
    }
    for p in 1..PARTITIONS {
        let reply = cluster
            .append(&alive, p, records(&format!("second-p{p}"), 5), T)
            .await;
        assert_eq!(
            reply.offsets,
            (11..=15).collect::<Vec<u64>>(),
            "partition {p}"
        );
    }
    let new_leader = cluster.wait_for_leaders(alive[0], T).await[&0];
    assert_ne!(
        new_leader, victim,
        "partition 0 must have elected a surviving leader"
    );
    // openraft purges behind a snapshot in the background, after building it.
    let deadline = Instant::now() + T;
    loop {
        let survivor_status = cluster.status(alive[0]).await;
        if survivor_status.partitions[0].purged_index > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partition 0's log should have been purged behind a snapshot: {:?}",
            survivor_status.partitions[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Restart the killed node on its data dir: it catches up on every partition.
    cluster.spawn(victim);
    let expected_last = |p: u32| if p == 0 { 160 } else { 15 };
    let deadline = Instant::now() + T;
    loop {
        let status = cluster.status(victim).await;
        let behind: Vec<_> = status
            .partitions
            .iter()
            .filter(|s| s.last_offset != expected_last(s.partition))
            .map(|s| (s.partition, s.last_offset))
            .collect();
        if behind.is_empty() {
            // Partition 0 could only be caught up by installing a snapshot.
            assert!(
                status.partitions[0].snapshot_index > 0,
                "{:?}",
                status.partitions[0]
            );
            assert!(
                cluster.log_of(victim).contains("installed snapshot"),
                "node {victim} caught up without installing a snapshot"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} did not catch up: {behind:?}\n{}",
            cluster.log_of(victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every replica of every partition holds the same bytes.
    for p in 0..PARTITIONS {
        let mut digests = BTreeSet::new();
        for id in all {
            let d = cluster.digest(id, p).await;
            assert_eq!(d.last_offset, expected_last(p), "node {id} partition {p}");
            digests.insert(d.sha256);
        }
        assert_eq!(digests.len(), 1, "replicas of partition {p} differ");
    }

    // And the content is what was acknowledged, in order.
    let events = cluster.read_all(victim, 0).await;
    let payloads: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    let mut want: Vec<String> = (0..10).map(|i| format!("first-p0-{i}")).collect();
    want.extend((0..150).map(|i| format!("after-kill-{i}")));
    assert_eq!(payloads, want);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.offset == i as u64 + 1));
}
