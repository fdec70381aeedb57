//! Groups as people use them, through the device API on three nodes: any member leaves (and
//! reads nothing more), admins promote and demote, a group keeps an admin, a group has a
//! description and an icon that its admins set, and messages disappear after a chat's timer
//! (while a chat without one keeps them).

use crate::common;

use std::time::{Duration, Instant};

use chat_client::ChatClient;
use chat_proto::chat_v1 as pb;
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

fn handles_of(info: &pb::ChatInfo, ids: &[u64]) -> Vec<String> {
    let mut names: Vec<String> = ids
        .iter()
        .map(|id| {
            let at = info.members.iter().position(|m| m == id).unwrap();
            info.member_handles[at].clone()
        })
        .collect();
    names.sort();
    names
}

fn change(chat: u64) -> pb::ChangeMembersRequest {
    pb::ChangeMembersRequest {
        chat_id: chat,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leave_admins_change_and_groups_describe_themselves() {
    let cluster = Cluster::start(3, 4);
    cluster.wait_for_leaders(1, WAIT).await;
    // Each on a different node.
    let (mut ann, ann_token) = register(&cluster.node(1).addr, "ann").await;
    let (mut ben, _) = register(&cluster.node(2).addr, "ben").await;
    let (mut cat, _) = register(&cluster.node(3).addr, "cat").await;
    let info = ann
        .create_group("g", "plans", &["ben".into(), "cat".into()])
        .await
        .unwrap();
    let chat = info.chat_id;
    assert_eq!(handles_of(&info, &info.admins), ["ann"]);

    // A member who is not an admin cannot promote, but can leave.
    let refused = ben
        .change_group(pb::ChangeMembersRequest {
            promote_handles: vec!["ben".into()],
            ..change(chat)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let info = ben
        .change_group(pb::ChangeMembersRequest {
            remove_handles: vec!["ben".into()],
            ..change(chat)
        })
        .await
        .unwrap();
    assert_eq!(info.member_handles.len(), 2, "{info:?}");
    assert!(!info.member_handles.contains(&"ben".to_string()));
    send_text(&mut ann, &ann_token, chat, "after ben left").await;
    let gone = ben.history(chat, 0, 0, 10).await.unwrap_err();
    assert_eq!(gone.code(), Code::PermissionDenied, "{gone:?}");

    // The admin promotes cat; cat demotes ann; cat cannot demote itself as the last admin.
    let info = ann
        .change_group(pb::ChangeMembersRequest {
            promote_handles: vec!["cat".into()],
            ..change(chat)
        })
        .await
        .unwrap();
    assert_eq!(handles_of(&info, &info.admins), ["ann", "cat"]);
    let info = cat
        .change_group(pb::ChangeMembersRequest {
            demote_handles: vec!["ann".into()],
            ..change(chat)
        })
        .await
        .unwrap();
    assert_eq!(handles_of(&info, &info.admins), ["cat"]);
    let refused = cat
        .change_group(pb::ChangeMembersRequest {
            demote_handles: vec!["cat".into()],
            ..change(chat)
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Settings: only admins; everyone reads them.
    let icon = pb::MediaRef {
        object_key: "icons/plans.png".into(),
        mime: "image/png".into(),
        size: 2048,
        sha256: vec![1; 32],
        ..Default::default()
    };
    let refused = ann
        .update_chat(pb::UpdateChatRequest {
            chat_id: chat,
            description: Some("ann's".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    cat.update_chat(pb::UpdateChatRequest {
        chat_id: chat,
        name: Some("weekend plans".into()),
        description: Some("where and when".into()),
        icon: Some(icon.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let seen = ann
        .list_chats()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.chat_id == chat)
        .unwrap();
    assert_eq!(seen.name, "weekend plans");
    assert_eq!(seen.description, "where and when");
    assert_eq!(seen.icon, Some(icon));

    // The last admin leaves: the member there from the start (ann) takes over.
    cat.change_group(pb::ChangeMembersRequest {
        remove_handles: vec!["cat".into()],
        ..change(chat)
    })
    .await
    .unwrap();
    let seen = ann
        .list_chats()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.chat_id == chat)
        .unwrap();
    assert_eq!(seen.member_handles, ["ann"]);
    assert_eq!(handles_of(&seen, &seen.admins), ["ann"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_disappear_after_their_chats_timer() {
    let cluster = Cluster::start_with(3, 4, "[retention]\nsweep_ms = 200\n");
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut ann, ann_token) = register(&cluster.node(1).addr, "ann").await;
    let (mut ben, _) = register(&cluster.node(2).addr, "ben").await;
    register(&cluster.node(3).addr, "cat").await;
    let timed = ann.create_direct("ben").await.unwrap().chat_id;
    let kept = ann.create_direct("cat").await.unwrap().chat_id;

    // Either member of a direct chat sets its timer.
    let info = ben
        .update_chat(pb::UpdateChatRequest {
            chat_id: timed,
            disappear_after_secs: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.disappear_after_secs, 2);
    let refused = ann
        .update_chat(pb::UpdateChatRequest {
            chat_id: timed,
            name: Some("us".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    for i in 0..3 {
        send_text(&mut ann, &ann_token, timed, &format!("soon gone {i}")).await;
        send_text(&mut ann, &ann_token, kept, &format!("stays {i}")).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let page = ben.history(timed, 0, 0, 10).await.unwrap().messages;
        assert_eq!(page.len(), 3, "seqs stay, expired or not");
        if page.iter().all(|m| m.expired && m.payload.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages did not disappear: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = ann.history(kept, 0, 0, 10).await.unwrap().messages;
    assert!(
        page.iter().all(|m| !m.expired && !m.payload.is_empty()),
        "a chat without a timer keeps its messages: {page:?}"
    );
}

/// Send `text` on a stream of its own and wait for the ack.
async fn send_text(client: &mut ChatClient, token: &str, chat: u64, text: &str) {
    let mut stream = client
        .open_stream(token, &Default::default())
        .await
        .unwrap();
    let id = chat_client::device::new_client_msg_id();
    stream
        .send(chat, &id, text.as_bytes().to_vec())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(pb::server_frame::Kind::SendAck(_)))) => return,
            Ok(Some(Ok(pb::server_frame::Kind::SendError(e)))) => panic!("{e:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no ack: {other:?}"),
        }
    }
}
