//! Revocation everywhere, on three real chatd processes with a one-second revocation bound: a
//! device revoked through one node is refused by the others and its open stream on another node
//! ends; a node cut off from the rest (the others killed) cannot confirm any device's access with
//! the account's partition, so it refuses calls and ends open streams (UNAVAILABLE) instead of
//! trusting what it last knew.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{ChatClient, Device, DeviceEvent, DeviceOptions};
use common::{register, until_synced, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// The status a device's stream ends with (the device is told not to reconnect on its own
/// faster than `WAIT`).
async fn ended_with(device: &mut Device, within: Duration) -> tonic::Status {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, device.next_event()).await {
            Ok(Some(DeviceEvent::Disconnected(status))) => return status,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the device stopped"),
            Err(_) => panic!("the stream was still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_everywhere_and_a_cut_off_node_fails_closed() {
    let cluster = Cluster::start_with(
        3,
        4,
        "[gateway]\nrevocation_bound_ms = 1000\n[chat]\nsubmit_timeout_ms = 2000\n",
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = |id: u64| cluster.node(id).addr.clone();

    // Alice's phone (device 1) links a laptop (device 2); the laptop streams through node 2.
    let (mut phone, phone_token) = register(&addr(1), "alice").await;
    let laptop_token = phone.link_device(2).await.unwrap().token;
    let mut options = DeviceOptions::new(vec![addr(2)], &laptop_token);
    options.max_backoff = WAIT;
    let mut laptop = Device::start(options);
    until_synced(&mut laptop, WAIT).await;

    // The phone revokes the laptop through node 1: the stream on node 2 ends within the bound,
    // and node 3 refuses the laptop's token.
    phone.revoke_device(2).await.unwrap();
    let status = ended_with(&mut laptop, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut on_3 = ChatClient::connect(&addr(3))
        .await
        .unwrap()
        .with_token(&laptop_token)
        .unwrap();
    let err = on_3.inbox().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // The phone streams through node 2, then nodes 1 and 3 die: node 2 is cut off from every
    // leader. Its open stream ends (UNAVAILABLE: resume elsewhere) and its unary calls are
    // refused, although the phone was never revoked.
    let mut options = DeviceOptions::new(vec![addr(2)], &phone_token);
    options.max_backoff = WAIT;
    let mut phone_stream = Device::start(options);
    until_synced(&mut phone_stream, WAIT).await;
    let mut on_2 = ChatClient::connect(&addr(2))
        .await
        .unwrap()
        .with_token(&phone_token)
        .unwrap();
    on_2.inbox().await.unwrap();
    let mut cluster = cluster;
    cluster.kill9(1);
    cluster.kill9(3);
    // Within the bound plus the time a read index is waited for.
    let status = ended_with(&mut phone_stream, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = on_2.inbox().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("cannot confirm"), "{err}");
}
