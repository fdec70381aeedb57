//! Delete for everyone, on three nodes: the sender deletes a message; a member online gets the
//! tombstone live, one offline gets the deleted message (no payload) and the tombstone when it
//! resumes; the payload is gone from every replica's log; a retry answers the same tombstone;
//! another member cannot delete it, a group's admin can.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::DeviceStream;
use chat_proto::chat_v1::{self as pb, server_frame};
use common::{register, Cluster};
use prost::Message as _;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const SECRET_TEXT: &str = "the-payload-to-forget";

async fn stream_on(addr: &str, token: &str) -> (DeviceStream, Vec<pb::Message>) {
    let (stream, before) = common::synced_stream(addr, token, WAIT).await;
    (stream, common::messages_of(before))
}

/// Messages of `stream` until it has seen seq `last` of `chat`.
async fn messages_up_to(stream: &mut DeviceStream, chat: u64, last: u64) -> Vec<pb::Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.last().is_none_or(|m: &pb::Message| m.seq < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(server_frame::Kind::Message(m)))) if m.chat_id == chat => got.push(m),
            Ok(Some(Ok(_))) => {}
            other => panic!("messages up to {last}: {other:?} after {got:?}"),
        }
    }
    got
}

async fn send(stream: &DeviceStream, chat: u64, id: &str, text: &str) {
    stream
        .send(chat, id, text.as_bytes().to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_for_everyone_is_gone_everywhere() {
    let cluster = Cluster::start(3, 2);
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut ann, ann_token) = register(&cluster.node(1).addr, "ann").await;
    let (mut ben, ben_token) = register(&cluster.node(2).addr, "ben").await;
    let (_, cat_token) = register(&cluster.node(3).addr, "cat").await;
    let group = ann
        .create_group("g", "deletions", &["ben".into(), "cat".into()])
        .await
        .unwrap();
    let chat = group.chat_id;

    let (ann_stream, _) = stream_on(&cluster.node(1).addr, &ann_token).await;
    let (mut ben_stream, _) = stream_on(&cluster.node(2).addr, &ben_token).await;
    send(&ann_stream, chat, "m1", "first").await;
    send(&ann_stream, chat, "m2", SECRET_TEXT).await;
    let ben_seen = messages_up_to(&mut ben_stream, chat, 2).await;
    assert_eq!(ben_seen.len(), 2);
    // Ben sends the third: ann's to delete is not his.
    send(&ben_stream, chat, "b3", "third").await;
    messages_up_to(&mut ben_stream, chat, 3).await;

    let refused = ben.delete_message(chat, 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let ack = ann.delete_message(chat, 2).await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (4, false));
    let again = ann.delete_message(chat, 2).await.unwrap();
    assert_eq!(
        (again.seq, again.duplicate),
        (4, true),
        "a retry answers the tombstone"
    );
    let missing = ann.delete_message(chat, 99).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Online: the tombstone, live.
    let live = messages_up_to(&mut ben_stream, chat, 4).await;
    let tombstone = live.last().unwrap();
    assert_eq!(
        (tombstone.seq, tombstone.deletes_seq, tombstone.sender_user),
        (4, 2, ack_sender(&group, "ann"))
    );
    assert!(tombstone.payload.is_empty());

    // Offline until now: the deleted message without its payload, then the tombstone.
    let (_, backlog) = stream_on(&cluster.node(3).addr, &cat_token).await;
    let seqs: Vec<u64> = backlog.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(
        backlog[1].deleted && backlog[1].payload.is_empty(),
        "{:?}",
        backlog[1]
    );
    assert_eq!(backlog[1].deleted_in_seq, 4);
    assert_eq!(backlog[3].deletes_seq, 2);

    // History says the same; and no replica's log holds the payload any more.
    let page = ben.history(chat, 0, 0, 10).await.unwrap().messages;
    assert!(page[1].deleted && page[1].payload.is_empty());
    assert_eq!(page[0].payload, b"first");
    let p = chat_model::ids::partition_of(chat, 2).0;
    for node in 1..=3 {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = cluster.read_all(node, p).await;
            let holds = events.iter().any(|e| {
                e.payload
                    .windows(SECRET_TEXT.len())
                    .any(|w| w == SECRET_TEXT.as_bytes())
            });
            let has_tombstone = events.iter().any(|e| {
                matches!(
                    pb::ChatEvent::decode(&e.payload[..]).map(|c| c.kind),
                    Ok(Some(pb::chat_event::Kind::Message(m))) if m.deletes_seq == 2
                )
            });
            if !holds && has_tombstone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} still holds the payload"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A group's admin deletes another member's message.
    let ack = ann.delete_message(chat, 3).await.unwrap();
    assert_eq!(ack.seq, 5);
}

fn ack_sender(group: &pb::ChatInfo, handle: &str) -> u64 {
    let at = group
        .member_handles
        .iter()
        .position(|h| h == handle)
        .unwrap();
    group.members[at]
}
