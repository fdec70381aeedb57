//! The connection registry on three real `chatd` processes: every device stream is recorded at
//! its user's home node (rendezvous hashing over the nodes) and nowhere else, presence asked of
//! any node answers from the homes, and a stream that closes leaves its home at once, with a
//! last-seen time.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_client::{Device, DeviceOptions};
use chat_gateway::registry::home_of;
use chat_model::ids::user_id_for_handle;
use common::{register, scrape, until_synced, Cluster};

const WAIT: Duration = Duration::from_secs(30);

/// Node `id`'s metrics address: one port, a loopback address per node.
fn metrics_addr(port: u16, id: u64) -> String {
    format!("127.0.0.{id}:{port}")
}

/// The number of streams node `id`'s registry holds (None until it has published it).
fn registry_streams(port: u16, id: u64) -> Option<u64> {
    scrape(&metrics_addr(port, id))
        .lines()
        .find_map(|l| l.strip_prefix("chatd_registry_streams "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Wait until the registries hold `expected` streams per node.
async fn until_registries(port: u16, expected: &BTreeMap<u64, u64>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let held: BTreeMap<u64, u64> = (1..=3)
            .map(|id| (id, registry_streams(port, id).unwrap_or(u64::MAX)))
            .collect();
        if &held == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "registries hold {held:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_are_recorded_at_their_users_home_nodes() {
    let port = common::free_port();
    let config = format!(
        "metrics_listen = \"127.0.0.{{id}}:{port}\"\n[chat]\nsends_per_second = 100000\nsend_burst = 100000\n"
    );
    let cluster = Cluster::start_with(3, 4, &config);
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = |id: u64| cluster.node(id).addr.clone();

    // Six users, every device on node 1: the registry entries go to the users' homes.
    let handles: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let mut devices = Vec::new();
    let mut expected: BTreeMap<u64, u64> = (1..=3).map(|id| (id, 0)).collect();
    for handle in &handles {
        let (_, token) = register(&addr(1), handle).await;
        let mut device = Device::start(DeviceOptions::new(vec![addr(1)], &token));
        until_synced(&mut device, WAIT).await;
        devices.push(device);
        let home = home_of(user_id_for_handle(handle), [1, 2, 3]).unwrap();
        *expected.get_mut(&home).unwrap() += 1;
    }
    until_registries(port, &expected).await;

    // Presence through node 3, which holds none of the streams, asked by a user who shares a
    // group with the six (presence is only for users who share a chat).
    let (mut asker, _) = register(&addr(3), "asker").await;
    asker
        .create_group("watch", "watchers", &handles)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let seen = loop {
        match asker.presence(&handles).await {
            Ok(seen) => break seen,
            // This node's replicas of the members' partitions may not have the group yet.
            Err(e) if e.code() == tonic::Code::PermissionDenied && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let online: Vec<bool> = seen.iter().map(|p| p.online).collect();
    assert_eq!(online, vec![true; 6], "{seen:?}");
    assert!(
        seen[..6].iter().all(|p| p.online_devices == [1]),
        "{seen:?}"
    );

    // Streams close: their homes drop them at once, and know when.
    drop(devices);
    let none: BTreeMap<u64, u64> = (1..=3).map(|id| (id, 0)).collect();
    until_registries(port, &none).await;
    let seen = asker.presence(&handles).await.unwrap();
    assert!(
        seen.iter().all(|p| !p.online && p.last_seen_ms > 0),
        "{seen:?}"
    );
}
