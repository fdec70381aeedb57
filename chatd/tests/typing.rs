//! Typing indicators reach the other members' streams on every node and nothing else: not the
//! typist's own stream, not a non-member's, not the log. Repeats within a second are dropped
//! (so a flood of starts costs one notice), a stop goes through and arrives after its start,
//! and a non-member's frame is refused with an error frame on its stream.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{ChatClient, DeviceStream};
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// A raw device stream on `addr`, read up to its SyncComplete.
async fn stream_on(addr: &str, token: &str) -> DeviceStream {
    let mut client = ChatClient::connect(addr)
        .await
        .unwrap()
        .with_token(token)
        .unwrap();
    let mut stream = client
        .open_stream(token, &Default::default())
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("SyncComplete in time")
            .expect("the stream stays open")
            .unwrap();
        if matches!(frame, server_frame::Kind::SyncComplete(_)) {
            return stream;
        }
    }
}

/// Every frame `stream` gets within `quiet` of the previous one (or of the call).
async fn frames_until_quiet(stream: &mut DeviceStream, quiet: Duration) -> Vec<server_frame::Kind> {
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(quiet, stream.next()).await {
        frames.push(frame.unwrap());
    }
    frames
}

fn typing_of(frames: &[server_frame::Kind]) -> Vec<(u64, bool)> {
    frames
        .iter()
        .filter_map(|f| match f {
            server_frame::Kind::Typing(t) => {
                assert_eq!(t.ttl_ms, 6000, "a start lapses after its ttl");
                Some((t.user_id, t.typing))
            }
            _ => None,
        })
        .collect()
}

fn typing(chat: u64, typing: bool) -> client_frame::Kind {
    client_frame::Kind::Typing(pb::TypingFrame {
        chat_id: chat,
        typing,
    })
}

/// Alice types in a group of alice, bob and carol, each on node `on[i]`; dave (not a member)
/// is on `on[3]`.
async fn typing_reaches_the_other_members(cluster: &Cluster, on: [u64; 4]) {
    let addr = |i: usize| cluster.node(on[i]).addr.clone();
    let (mut alice, alice_token) = register(&addr(0), "alice").await;
    let (_, bob_token) = register(&addr(1), "bob").await;
    let (_, carol_token) = register(&addr(2), "carol").await;
    let (_, dave_token) = register(&addr(3), "dave").await;
    let group = alice
        .create_group("g1", "typists", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    let chat = group.chat_id;

    let mut alice_stream = stream_on(&addr(0), &alice_token).await;
    let mut bob_stream = stream_on(&addr(1), &bob_token).await;
    let mut carol_stream = stream_on(&addr(2), &carol_token).await;
    let mut dave_stream = stream_on(&addr(3), &dave_token).await;

    // Twenty starts at once, then a stop: one start and the stop get through.
    let started = Instant::now();
    for _ in 0..20 {
        alice_stream.send_frame(typing(chat, true)).await.unwrap();
    }
    alice_stream.send_frame(typing(chat, false)).await.unwrap();
    let alice_at = group.member_handles.iter().position(|h| h == "alice");
    let alice_id = group.members[alice_at.expect("alice is a member")];
    for (who, stream) in [("bob", &mut bob_stream), ("carol", &mut carol_stream)] {
        let frames = frames_until_quiet(stream, Duration::from_secs(2)).await;
        assert_eq!(
            typing_of(&frames),
            vec![(alice_id, true), (alice_id, false)],
            "{who} sees alice start and stop typing, once each: {frames:?}"
        );
    }
    eprintln!("notices seen within {:?}", started.elapsed());
    let own = frames_until_quiet(&mut alice_stream, Duration::from_millis(500)).await;
    assert!(
        typing_of(&own).is_empty(),
        "the typist is not told: {own:?}"
    );
    let stranger = frames_until_quiet(&mut dave_stream, Duration::from_millis(500)).await;
    assert!(
        typing_of(&stranger).is_empty(),
        "a non-member is not told: {stranger:?}"
    );

    // A non-member typing in the chat is refused on its own stream, and nobody is told.
    dave_stream.send_frame(typing(chat, true)).await.unwrap();
    let refused = frames_until_quiet(&mut dave_stream, Duration::from_secs(2)).await;
    assert!(
        refused.iter().any(|f| matches!(f,
            server_frame::Kind::Error(e) if e.code == Code::PermissionDenied as i32)),
        "{refused:?}"
    );
    let frames = frames_until_quiet(&mut bob_stream, Duration::from_millis(500)).await;
    assert!(typing_of(&frames).is_empty(), "{frames:?}");

    // Nothing of it is in the log.
    let history = alice.history(chat, 0, 0, 10).await.unwrap();
    assert_eq!(history.last_seq, 0);
    assert!(history.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_on_one_node() {
    let cluster = Cluster::start(1, 2);
    cluster.wait_for_leaders(1, WAIT).await;
    typing_reaches_the_other_members(&cluster, [1, 1, 1, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_across_three_nodes() {
    let cluster = Cluster::start(3, 4);
    cluster.wait_for_leaders(1, WAIT).await;
    typing_reaches_the_other_members(&cluster, [1, 2, 3, 2]).await;
}
