//! Delete for me and blocking, on three nodes through the device API:
//! - a message deleted for one member leaves that member's history, its other device (on
//!   another node) gets a MessagesHidden frame live, a device resuming from scratch gets the
//!   frame after the backlog; the other member keeps the message; hiding again hides nothing;
//! - a blocked user's sends to the blocker's direct chat are refused (the blocker's own are
//!   not, nor the blocked user's in a group they share) until the block is lifted;
//! - a deleted account leaves its chats, its devices stop working (an open stream ends), its
//!   handle is refused until the grace period ends and is then a new account that sees
//!   nothing of the old one's chats.

use crate::common;

use std::time::Duration;

use chat_client::{ChatClient, DeviceStream};
use chat_proto::chat_v1::{self as pb, server_frame};
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// A raw stream past its SyncComplete, with the frames before it.
async fn stream(addr: &str, token: &str) -> (DeviceStream, Vec<server_frame::Kind>) {
    common::synced_stream(addr, token, WAIT).await
}

/// The next frame of `s` that `pick` takes.
async fn next_of<T>(s: &mut DeviceStream, pick: impl Fn(server_frame::Kind) -> Option<T>) -> T {
    loop {
        match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
            Some(Ok(frame)) => {
                if let Some(t) = pick(frame) {
                    return t;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Send `text` on `s`: its seq, or the refusal's code.
async fn send(s: &mut DeviceStream, chat: u64, id: &str, text: &str) -> Result<u64, Code> {
    s.send(chat, id, text.as_bytes().to_vec()).await.unwrap();
    let id = id.to_string();
    next_of(s, |f| match f {
        server_frame::Kind::SendAck(a) if a.client_msg_id == id => Some(Ok(a.ack.unwrap().seq)),
        server_frame::Kind::SendError(e) if e.client_msg_id == id => {
            Some(Err(Code::from_i32(e.code)))
        }
        _ => None,
    })
    .await
}

/// The seqs of `chat`'s first page for `client`, once its last seq has reached `last`: History
/// reads a replica, which may not have applied a message another node acknowledged a moment ago.
async fn seqs_once_at(client: &mut ChatClient, chat: u64, last: u64) -> Vec<u64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let page = client.history(chat, 0, 0, 10).await.unwrap();
        if page.last_seq >= last || std::time::Instant::now() > deadline {
            return seqs(&page);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seqs(page: &pb::HistoryReply) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_for_me_leaves_only_my_history_and_devices() {
    let cluster = Cluster::start(3, 2);
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut ann, _) = register(&cluster.node(1).addr, "ann").await;
    let ann_phone = ann.link_device(2).await.unwrap().token;
    let (mut ben, ben_token) = register(&cluster.node(3).addr, "ben").await;
    let chat = ben.create_direct("ann").await.unwrap().chat_id;

    let (mut phone, _) = stream(&cluster.node(2).addr, &ann_phone).await;
    let (mut ben_stream, _) = stream(&cluster.node(3).addr, &ben_token).await;
    for i in 1..=3 {
        assert_eq!(
            send(&mut ben_stream, chat, &format!("b{i}"), "hi").await,
            Ok(i)
        );
    }
    next_of(&mut phone, |f| match f {
        server_frame::Kind::Message(m) if m.seq == 3 => Some(()),
        _ => None,
    })
    .await;

    assert_eq!(ann.delete_for_me(chat, vec![2]).await.unwrap(), 1);
    let hidden = next_of(&mut phone, |f| match f {
        server_frame::Kind::Hidden(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!((hidden.chat_id, hidden.seqs.clone()), (chat, vec![2]));
    assert_eq!(
        seqs(&ann.history(chat, 0, 0, 10).await.unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        seqs(&ann.history(chat, 0, 3, 10).await.unwrap()),
        vec![1],
        "paging back below 3"
    );
    assert_eq!(seqs_once_at(&mut ben, chat, 3).await, vec![1, 2, 3]);
    assert_eq!(ann.delete_for_me(chat, vec![2]).await.unwrap(), 0, "again");
    assert_eq!(
        ann.delete_for_me(chat, vec![99]).await.unwrap(),
        0,
        "no such seq"
    );

    // A device with no cursors gets the whole backlog, then what to drop from it.
    let (_, before) = stream(&cluster.node(1).addr, &ann_phone).await;
    let backlog: Vec<u64> = before
        .iter()
        .filter_map(|f| match f {
            server_frame::Kind::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(backlog, vec![1, 2, 3]);
    let dropped: Vec<u64> = before
        .iter()
        .filter_map(|f| match f {
            server_frame::Kind::Hidden(h) => Some(h.seqs.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(dropped, vec![2]);

    // A page made only of hidden messages is skipped, not returned empty.
    assert_eq!(ann.delete_for_me(chat, vec![3]).await.unwrap(), 1);
    assert_eq!(
        seqs(&ann.history(chat, 1, 0, 1).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(seqs(&ann.history(chat, 0, 0, 1).await.unwrap()), vec![1]);

    let stranger = register(&cluster.node(2).addr, "cat").await.0;
    let refused = { stranger }.delete_for_me(chat, vec![1]).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let empty = ann.delete_for_me(chat, vec![]).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_cannot_write_to_the_blocker() {
    let cluster = Cluster::start(3, 2);
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut ann, ann_token) = register(&cluster.node(1).addr, "ann").await;
    let (mut ben, ben_token) = register(&cluster.node(2).addr, "ben").await;
    let direct = ben.create_direct("ann").await.unwrap().chat_id;
    let group = ann
        .create_group("g", "both", &["ben".into()])
        .await
        .unwrap()
        .chat_id;
    let (mut ben_stream, _) = stream(&cluster.node(3).addr, &ben_token).await;
    let (mut ann_stream, _) = stream(&cluster.node(1).addr, &ann_token).await;
    assert_eq!(send(&mut ben_stream, direct, "b1", "hi").await, Ok(1));

    let blocked = ann.block_user("ben", true).await.unwrap();
    assert_eq!((blocked.chat_id, blocked.blocked), (direct, true));
    assert_eq!(
        send(&mut ben_stream, direct, "b2", "hello?").await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        send(&mut ben_stream, group, "g1", "in the group").await,
        Ok(1)
    );
    assert_eq!(
        send(&mut ann_stream, direct, "a1", "still mine").await,
        Ok(2)
    );
    assert_eq!(
        seqs(&ben.history(direct, 0, 0, 10).await.unwrap()),
        vec![1, 2]
    );

    // Blocking someone never talked to makes the chat that holds the block.
    register(&cluster.node(1).addr, "cat").await;
    let cat_chat = ann.block_user("cat", true).await.unwrap().chat_id;
    assert_ne!(cat_chat, direct);
    let nobody = ann.block_user("nobody", true).await.unwrap_err();
    assert_eq!(nobody.code(), Code::NotFound, "{nobody:?}");
    let itself = ann.block_user("ann", true).await.unwrap_err();
    assert_eq!(itself.code(), Code::InvalidArgument, "{itself:?}");

    ann.block_user("ben", false).await.unwrap();
    assert_eq!(send(&mut ben_stream, direct, "b3", "friends?").await, Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_everything_and_its_handle_comes_back_empty() {
    let cluster = Cluster::start_with(3, 2, "[gateway]\naccount_release_after_secs = 3\n");
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut ann, ann_token) = register(&cluster.node(1).addr, "ann").await;
    let (mut ben, ben_token) = register(&cluster.node(2).addr, "ben").await;
    register(&cluster.node(3).addr, "cat").await;
    let direct = ben.create_direct("ann").await.unwrap().chat_id;
    let group = ann
        .create_group("g", "three", &["ben".into(), "cat".into()])
        .await
        .unwrap()
        .chat_id;
    let (mut ben_stream, _) = stream(&cluster.node(2).addr, &ben_token).await;
    assert_eq!(
        send(&mut ben_stream, direct, "b1", "secret for ann").await,
        Ok(1)
    );
    let (mut ann_stream, _) = stream(&cluster.node(3).addr, &ann_token).await;

    let wrong = ann.delete_account("ben").await.unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");
    ann.delete_account("ann").await.unwrap();

    // The open stream ends, the token is refused everywhere.
    let ended = loop {
        match tokio::time::timeout(WAIT, ann_stream.next()).await.unwrap() {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&ended, Some(Err(s)) if s.code() == Code::Unauthenticated) || ended.is_none(),
        "{ended:?}"
    );
    for id in 1..=3 {
        let refused = ChatClient::connect(&cluster.node(id).addr)
            .await
            .unwrap()
            .with_token(&ann_token)
            .unwrap()
            .list_chats()
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "node {id}: {refused:?}"
        );
    }
    // It left every chat; the group got a new admin.
    let info = ben.list_chats().await.unwrap();
    let members = |chat: u64| {
        info.iter()
            .find(|c| c.chat_id == chat)
            .map(|c| {
                let mut handles = c.member_handles.clone();
                handles.sort();
                handles
            })
            .unwrap()
    };
    assert_eq!(members(group), vec!["ben".to_string(), "cat".into()]);
    assert_eq!(members(direct), vec!["ben".to_string()]);
    let gone = ben
        .create_group("g2", "x", &["ann".into()])
        .await
        .unwrap_err();
    assert_eq!(
        gone.code(),
        Code::NotFound,
        "a deleted user is nobody: {gone:?}"
    );

    // Reserved during the grace period, then a new account.
    let early = ChatClient::connect(&cluster.node(1).addr)
        .await
        .unwrap()
        .register("ann", 1)
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::AlreadyExists, "{early:?}");
    assert!(early.message().contains("registered again in"), "{early:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut new_ann, _) = register(&cluster.node(1).addr, "ann").await;
    assert!(new_ann.list_chats().await.unwrap().is_empty());
    let again = new_ann.create_direct("ben").await.unwrap();
    assert_eq!(
        again.chat_id, direct,
        "the same pair, the same direct chat id"
    );
    assert!(
        new_ann
            .history(direct, 0, 0, 10)
            .await
            .unwrap()
            .messages
            .is_empty(),
        "the new account reads nothing of the old one's chat"
    );
    assert_eq!(
        send(&mut ben_stream, direct, "b2", "hello again").await,
        Ok(2)
    );
    assert_eq!(seqs_once_at(&mut new_ann, direct, 2).await, vec![2]);
}
