//! Presence pushed to subscribed streams, across nodes: a device that subscribes gets the
//! presence of the users it shares chats with, then a frame when one comes online or goes
//! offline (wherever its streams are), and nothing of strangers. Last seen survives a restart
//! of the whole cluster (recorded in the user's partition), and a user who hides its presence
//! is shown offline and never seen, and pushes nothing.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{ChatClient, DeviceStream};
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use common::{register, Cluster};

const WAIT: Duration = Duration::from_secs(30);

async fn stream_on(addr: &str, token: &str) -> DeviceStream {
    common::synced_stream(addr, token, WAIT).await.0
}

/// The next presence frame on `stream` within `within`, if any.
async fn next_presence(stream: &mut DeviceStream, within: Duration) -> Option<pb::PresenceFrame> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(server_frame::Kind::Presence(p)))) => return Some(p),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("{other:?}"),
        }
    }
}

async fn presence_of(client: &mut ChatClient, handle: &str) -> pb::UserPresence {
    client
        .presence(&[handle.to_string()])
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_changes_last_seen_survives_restarts_and_hidden_users_show_nothing() {
    let mut cluster = Cluster::start(3, 4);
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = |cluster: &Cluster, id: u64| cluster.node(id).addr.clone();
    let (mut ann, ann_token) = register(&addr(&cluster, 1), "ann").await;
    let (mut ben, ben_token) = register(&addr(&cluster, 2), "ben").await;
    let (_, cat_token) = register(&addr(&cluster, 3), "cat").await;
    ann.create_direct("ben").await.unwrap();
    let chat = ben.list_chats().await.unwrap().remove(0);
    let at = chat.member_handles.iter().position(|h| h == "ben").unwrap();
    let ben_id = chat.members[at];

    // Ann subscribes: ben as he is now (never seen), then his changes.
    let mut ann_stream = stream_on(&addr(&cluster, 1), &ann_token).await;
    ann_stream
        .send_frame(client_frame::Kind::PresenceSubscribe(
            pb::PresenceSubscribe {},
        ))
        .await
        .unwrap();
    let first = next_presence(&mut ann_stream, WAIT)
        .await
        .expect("ben's presence");
    assert_eq!(
        (first.user_id, first.online, first.last_seen_ms),
        (ben_id, false, 0)
    );

    let ben_stream = stream_on(&addr(&cluster, 2), &ben_token).await;
    let online = next_presence(&mut ann_stream, WAIT)
        .await
        .expect("ben online");
    assert_eq!((online.user_id, online.online), (ben_id, true));
    let before_close = chat_now_ms();
    drop(ben_stream);
    let offline = next_presence(&mut ann_stream, WAIT)
        .await
        .expect("ben offline");
    assert_eq!((offline.user_id, offline.online), (ben_id, false));
    assert!(offline.last_seen_ms >= before_close, "{offline:?}");

    // A stranger coming online is not ann's to see.
    let _cat_stream = stream_on(&addr(&cluster, 3), &cat_token).await;
    assert_eq!(
        next_presence(&mut ann_stream, Duration::from_secs(2)).await,
        None
    );
    drop(ann_stream);

    // Last seen is recorded in ben's partition: it outlives every node's memory.
    let deadline = Instant::now() + WAIT;
    loop {
        // The home proposes it when ben goes offline: wait until it is there.
        let seen = presence_of(&mut ann, "ben").await;
        if seen.last_seen_ms == offline.last_seen_ms {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in 1..=3 {
        cluster.terminate(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leaders(1, WAIT).await;
    let mut ann = ChatClient::connect(&addr(&cluster, 1))
        .await
        .unwrap()
        .with_token(&ann_token)
        .unwrap();
    // Right after the restart a node may not confirm the caller yet (UNAVAILABLE): ask again.
    let deadline = Instant::now() + WAIT;
    let seen = loop {
        match ann.presence(&["ben".to_string()]).await {
            Ok(mut users) => break users.remove(0),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    assert!(!seen.online);
    assert_eq!(
        seen.last_seen_ms, offline.last_seen_ms,
        "last seen after a restart"
    );

    // Ben hides his presence: ann sees nothing of him, and his coming online pushes nothing.
    let mut ben = ChatClient::connect(&addr(&cluster, 2))
        .await
        .unwrap()
        .with_token(&ben_token)
        .unwrap();
    assert!(ben.set_presence_hidden(true).await.unwrap());
    let hidden = presence_of(&mut ann, "ben").await;
    assert_eq!(
        (hidden.online, hidden.last_seen_ms),
        (false, 0),
        "{hidden:?}"
    );
    let mut ann_stream = stream_on(&addr(&cluster, 1), &ann_token).await;
    ann_stream
        .send_frame(client_frame::Kind::PresenceSubscribe(
            pb::PresenceSubscribe {},
        ))
        .await
        .unwrap();
    let _ben_stream = stream_on(&addr(&cluster, 2), &ben_token).await;
    assert_eq!(
        next_presence(&mut ann_stream, Duration::from_secs(3)).await,
        None
    );
    let hidden = presence_of(&mut ann, "ben").await;
    assert!(!hidden.online, "{hidden:?}");
    // He still sees himself.
    assert!(presence_of(&mut ben, "ben").await.online);
}

fn chat_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
