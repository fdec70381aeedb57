//! Durability under `kill -9`: appends acknowledged by a single-node chatd survive the process
//! being killed mid-load and restarted on the same data dir, at the offsets they were acknowledged
//! with, and the offsets stay dense.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::admin::AppendRequest;
use common::Cluster;

const PARTITIONS: u32 = 4;

/// (partition, offset) → the record acknowledged at it.
type Acked = BTreeMap<(u32, u64), Vec<u8>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let mut cluster = Cluster::start(1, PARTITIONS);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;

    // Writers append unique records as fast as they can; every acknowledgement is recorded.
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let mut client = cluster.admin(1).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let p = (w + i as u32) % PARTITIONS;
                let records: Vec<Vec<u8>> = (0..4)
                    .map(|j| format!("w{w}-{i}-{j}").into_bytes())
                    .collect();
                let req = AppendRequest {
                    partition: p,
                    records: records.clone(),
                };
                match client.append(req).await {
                    Ok(reply) => {
                        let mut acked = acked.lock().unwrap();
                        for (offset, record) in reply.into_inner().offsets.into_iter().zip(records)
                        {
                            acked.insert((p, offset), record);
                        }
                    }
                    Err(_) => return, // the node is gone
                }
            }
        }));
    }
    // Let load build up, then kill the process without warning.
    while acked.lock().unwrap().len() < 2000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill9(1);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 2000);

    cluster.spawn(1);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;
    for p in 0..PARTITIONS {
        let events = cluster.read_all(1, p).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.offset,
                i as u64 + 1,
                "partition {p}: offsets must be dense"
            );
        }
        for ((_, offset), record) in acked.range((p, 0)..(p + 1, 0)) {
            let event = events.get(*offset as usize - 1).unwrap_or_else(|| {
                panic!(
                    "partition {p}: acknowledged offset {offset} lost ({} events after restart)",
                    events.len()
                )
            });
            assert_eq!(
                &event.payload[..],
                &record[..],
                "partition {p} offset {offset}"
            );
        }
    }

    // A clean stop (SIGTERM) exits with success.
    assert!(cluster.terminate(1).success());
}
