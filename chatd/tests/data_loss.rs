//! A damaged stored message on a real chatd process: the History call and the device stream
//! that must read it answer DATA_LOSS — never INTERNAL, never a message that is not what was
//! sent — and the node goes on serving everything else.

use crate::common;

use std::time::Duration;

use chat_client::{ChatClient, Device, DeviceEvent, DeviceOptions};
use chat_log::LogOffset;
use chat_model::ids::partition_of;
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const PARTITIONS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_message_is_data_loss_on_history_and_on_streams() {
    let mut cluster = Cluster::start_with(1, PARTITIONS, "");
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (_bob, bob_token) = register(&addr, "bob").await;
    let (_carol, _) = register(&addr, "carol").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let healthy = alice.create_direct("carol").await.unwrap().chat_id;
    let sender = Device::start(DeviceOptions::new(vec![addr.clone()], &alice_token));
    sender.send(chat, b"first".to_vec()).await.unwrap();
    let damaged = sender.send(chat, b"second".to_vec()).await.unwrap();
    sender.send(healthy, b"to carol".to_vec()).await.unwrap();
    drop(sender);

    // The node stops; a bit of the second message's stored event flips; the node starts again.
    assert!(cluster.terminate(1).success());
    chat_log::testing::corrupt_event(
        &cluster.node(1).data_dir,
        partition_of(chat, PARTITIONS),
        LogOffset(damaged.offset),
    );
    cluster.spawn(1);
    cluster.wait_for_leaders(1, WAIT).await;

    let connect = |token: String| {
        let addr = addr.clone();
        async move {
            ChatClient::connect(&addr)
                .await
                .unwrap()
                .with_token(&token)
                .unwrap()
        }
    };
    let mut bob = connect(bob_token.clone()).await;
    let err = bob.history(chat, 0, 0, 10).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");

    // A stream that must deliver the damaged message ends with DATA_LOSS, after what it could
    // deliver intact.
    let mut device = Device::start(DeviceOptions::new(vec![addr.clone()], &bob_token));
    let mut delivered = Vec::new();
    let status = tokio::time::timeout(WAIT, async {
        loop {
            match device.next_event().await {
                Some(DeviceEvent::Message(m)) => delivered.push(m.payload),
                Some(DeviceEvent::Disconnected(status)) => return status,
                Some(_) => {}
                None => panic!("the device stopped"),
            }
        }
    })
    .await
    .expect("the stream neither delivered nor failed");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(delivered.iter().all(|p| p == b"first"), "{delivered:?}");

    // Everything else is served: the other chat's history, a new message in it.
    let mut alice = connect(alice_token).await;
    let page = alice.history(healthy, 0, 0, 10).await.unwrap();
    assert_eq!(page.messages[0].payload, b"to carol");
}
