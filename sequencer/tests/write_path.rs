//! The write path on one in-process node (a real RocksDB-backed log): idempotency, membership
//! decided at apply in log order, each validation error, receipts, history paging, the dedup
//! window, and state surviving a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chat_log::{Dispatch, LogNode, LogNodeConfig, PartitionId, RaftTuning, RejectCode};
use chat_model::ids::{
    group_chat_id, partition_of, user_id_for_handle, ChatId, ChatSeq, DeviceId, UserId,
};
use chat_model::{ApplyLimits, ChatHandler, CHAT_COMMAND_TAG};
use chat_proto::chat_v1::{self as pb, ReceiptKind};
use chat_sequencer::{MemberChange, SeqError, Sequencer, SequencerConfig};
use prost::Message;

const PARTITIONS: u32 = 4;

async fn start(dir: &std::path::Path, limits: ApplyLimits, config: SequencerConfig) -> Sequencer {
    let log = LogNodeConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        partitions: PARTITIONS,
        partitions_chosen: true,
        replication: 3,
        join: false,
        members: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
        cluster_secret: "s".into(),
        bind_ip: None,
        dialer: Default::default(),
        raft: RaftTuning::default(),
        disk: Default::default(),
        engine: Default::default(),
    };
    let handler = Dispatch::new().with(CHAT_COMMAND_TAG, Arc::new(ChatHandler::new(limits)));
    let node = LogNode::open(log, Arc::new(handler)).await.unwrap();
    node.initialize().await.unwrap();
    for p in 0..PARTITIONS {
        node.wait_for_leader(PartitionId(p), Duration::from_secs(10))
            .await
            .unwrap();
    }
    Sequencer::new(node, "s", config).unwrap()
}

async fn stop(seq: Sequencer) {
    let node = seq.node().clone();
    drop(seq);
    node.shutdown().await;
    let closed = node.storage_closed();
    drop(node);
    assert!(
        closed.wait(Duration::from_secs(30)).await,
        "the database is still open after shutdown"
    );
}

fn adding(users: &[UserId]) -> MemberChange<'_> {
    MemberChange {
        add: users,
        ..MemberChange::default()
    }
}

fn msg(chat: ChatId, user: UserId, device: u64, id: &str, body: &str) -> pb::SendMessage {
    pb::SendMessage {
        chat_id: chat.0,
        sender_user: user.0,
        sender_device: device,
        client_msg_id: id.into(),
        payload: body.as_bytes().to_vec(),
        media: vec![],
    }
}

fn code(e: SeqError) -> RejectCode {
    match e {
        SeqError::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn users(seq: &Sequencer, names: &[&str]) -> Vec<UserId> {
    let mut ids = Vec::new();
    for n in names {
        let r = seq.register_user(n).await.unwrap();
        ids.push(UserId(r.user_id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_ordered_idempotent_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let seq = start(
        dir.path(),
        ApplyLimits::default(),
        SequencerConfig::default(),
    )
    .await;

    // Registration is idempotent and ids are derived from handles.
    let first = seq.register_user("alice").await.unwrap();
    assert!(first.created);
    let again = seq.register_user(" alice ").await.unwrap();
    assert_eq!((again.user_id, again.created), (first.user_id, false));
    assert_eq!(UserId(first.user_id), user_id_for_handle("alice"));
    let [alice, bob, carol] = users(&seq, &["alice", "bob", "carol"]).await[..] else {
        unreachable!()
    };

    // Devices.
    assert!(
        seq.add_device(alice, DeviceId(1), [7; 32])
            .await
            .unwrap()
            .changed
    );
    assert!(
        !seq.add_device(alice, DeviceId(1), [7; 32])
            .await
            .unwrap()
            .changed
    );
    let e = seq
        .add_device(user_id_for_handle("nobody"), DeviceId(1), [7; 32])
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::NotFound);

    // A direct chat has one id whoever creates it.
    let dm = seq.create_direct_chat(alice, bob).await.unwrap();
    assert!(dm.created);
    let dm_again = seq.create_direct_chat(bob, alice).await.unwrap();
    assert_eq!((dm_again.chat_id, dm_again.created), (dm.chat_id, false));
    let chat = ChatId(dm.chat_id);

    // Dense seqs; a retry returns the original ack and appends nothing.
    let a1 = seq.send(msg(chat, alice, 1, "m1", "hi bob")).await.unwrap();
    let b1 = seq.send(msg(chat, bob, 1, "m1", "hi alice")).await.unwrap();
    assert_eq!((a1.seq, b1.seq), (1, 2));
    assert!(!a1.duplicate && b1.offset > a1.offset && b1.server_ts_ms >= a1.server_ts_ms);
    let p = partition_of(chat.0, PARTITIONS);
    let before = seq.node().last_offset(p).unwrap();
    let retry = seq.send(msg(chat, alice, 1, "m1", "hi bob")).await.unwrap();
    assert_eq!(
        (retry.seq, retry.offset, retry.server_ts_ms),
        (a1.seq, a1.offset, a1.server_ts_ms)
    );
    assert!(retry.duplicate);
    assert_eq!(
        seq.node().last_offset(p).unwrap(),
        before,
        "a retry must append nothing"
    );
    // The same client_msg_id from another device is another message.
    assert_eq!(
        seq.send(msg(chat, alice, 2, "m1", "from my laptop"))
            .await
            .unwrap()
            .seq,
        3
    );

    // Validation, each with its code.
    let unknown = ChatId(12345);
    assert_eq!(
        code(
            seq.send(msg(unknown, alice, 1, "x", "?"))
                .await
                .unwrap_err()
        ),
        RejectCode::NotFound
    );
    assert_eq!(
        code(
            seq.send(msg(chat, carol, 1, "x", "let me in"))
                .await
                .unwrap_err()
        ),
        RejectCode::PermissionDenied
    );
    assert_eq!(
        code(seq.send(msg(chat, alice, 1, "x", "")).await.unwrap_err()),
        RejectCode::InvalidArgument
    );
    let big = pb::SendMessage {
        payload: vec![1; 64 * 1024 + 1],
        ..msg(chat, alice, 1, "big", "")
    };
    let e = seq.send(big).await.unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    assert_eq!(code(e), RejectCode::InvalidArgument);
    assert_eq!(
        code(
            seq.send(msg(chat, alice, 1, "", "no id"))
                .await
                .unwrap_err()
        ),
        RejectCode::InvalidArgument
    );

    // History by seq range through the (chat, seq) → offset index.
    for i in 4..=25 {
        assert_eq!(
            seq.send(msg(chat, bob, 1, &format!("b{i}"), &format!("n{i}")))
                .await
                .unwrap()
                .seq,
            i
        );
    }
    let page = seq.history(chat, ChatSeq(0), None, 10).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(page.last_seq, 25);
    assert_eq!(page.messages[0].payload, b"hi bob");
    let mid = seq
        .history(chat, ChatSeq(10), Some(ChatSeq(15)), 100)
        .await
        .unwrap();
    assert_eq!(
        mid.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14]
    );
    assert!(mid
        .messages
        .iter()
        .all(|m| m.chat_id == chat.0 && m.offset > 0));
    // With an upper bound the page is the newest below it (paging back), still oldest first.
    let seqs = |page: &pb::HistoryReply| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = seq
        .history(chat, ChatSeq(0), Some(ChatSeq(u64::MAX)), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&newest), (16..=25).collect::<Vec<_>>());
    let back = seq
        .history(chat, ChatSeq(0), Some(ChatSeq(16)), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&back), (6..=15).collect::<Vec<_>>());
    let first = seq
        .history(chat, ChatSeq(0), Some(ChatSeq(6)), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&first), (1..=5).collect::<Vec<_>>());
    let above = seq
        .history(chat, ChatSeq(12), Some(ChatSeq(16)), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&above), vec![13, 14, 15], "after_seq still bounds it");
    assert_eq!(
        code(
            seq.history(unknown, ChatSeq(0), None, 10)
                .await
                .unwrap_err()
        ),
        RejectCode::NotFound
    );

    // Receipts: monotonic watermarks, read implies delivered, never past the last seq.
    let r = seq
        .advance_receipt(chat, bob, DeviceId(1), ReceiptKind::Delivered, ChatSeq(5))
        .await
        .unwrap();
    assert_eq!((r.delivered_up_to, r.read_up_to), (5, 0));
    let r = seq
        .advance_receipt(chat, bob, DeviceId(1), ReceiptKind::Delivered, ChatSeq(3))
        .await
        .unwrap();
    assert_eq!(
        (r.delivered_up_to, r.read_up_to),
        (5, 0),
        "regressions are ignored"
    );
    let r = seq
        .advance_receipt(chat, bob, DeviceId(1), ReceiptKind::Read, ChatSeq(8))
        .await
        .unwrap();
    assert_eq!((r.delivered_up_to, r.read_up_to), (8, 8));
    let e = seq
        .advance_receipt(chat, bob, DeviceId(1), ReceiptKind::Read, ChatSeq(26))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::InvalidArgument);
    let e = seq
        .advance_receipt(chat, carol, DeviceId(1), ReceiptKind::Read, ChatSeq(1))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);

    // A partition the cluster does not have: NOT_FOUND, as the log maps it.
    let e = seq.read_index(PartitionId(PARTITIONS)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Restart: state and seqs continue.
    stop(seq).await;
    let seq = start(
        dir.path(),
        ApplyLimits::default(),
        SequencerConfig::default(),
    )
    .await;
    assert_eq!(
        seq.send(msg(chat, alice, 1, "after-restart", "still here"))
            .await
            .unwrap()
            .seq,
        26
    );
    assert!(
        seq.send(msg(chat, alice, 1, "m1", "hi bob"))
            .await
            .unwrap()
            .duplicate
    );
    stop(seq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_admins_limits_and_membership_at_apply() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ApplyLimits {
        max_group_members: 4,
        ..ApplyLimits::default()
    };
    let seq = start(dir.path(), limits, SequencerConfig::default()).await;
    let u = users(&seq, &["ann", "ben", "cat", "dan", "eve"]).await;
    let (ann, ben, cat, dan, eve) = (u[0], u[1], u[2], u[3], u[4]);

    let g = seq
        .create_group(ann, "req-1", "friends", &[ben, cat])
        .await
        .unwrap();
    assert!(g.created);
    assert_eq!(ChatId(g.chat_id), group_chat_id(ann, "req-1"));
    let mut members = vec![ann.0, ben.0, cat.0];
    members.sort();
    assert_eq!(g.members, members);
    // Retrying the creation names the same group.
    assert!(
        !seq.create_group(ann, "req-1", "friends", &[ben, cat])
            .await
            .unwrap()
            .created
    );
    let chat = ChatId(g.chat_id);

    // Only admins change members; the size limit holds.
    let e = seq
        .change_members(chat, ben, adding(&[dan]))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);
    seq.change_members(chat, ann, adding(&[dan])).await.unwrap();
    let e = seq
        .change_members(chat, ann, adding(&[eve]))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::FailedPrecondition);
    let e = seq
        .create_group(ann, "too-big", "x", &[ben, cat, dan, eve])
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::InvalidArgument);
    let dm = seq.create_direct_chat(ann, ben).await.unwrap();
    let e = seq
        .change_members(ChatId(dm.chat_id), ann, adding(&[cat]))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::FailedPrecondition);

    // Membership is decided at apply, in log order: the same two commands in one Raft entry give
    // opposite results depending on their order.
    let remove = pb::Command {
        kind: Some(pb::command::Kind::ChangeMembers(pb::ChangeMembers {
            chat_id: chat.0,
            by_user: ann.0,
            remove: vec![dan.0],
            ..Default::default()
        })),
    };
    let readd = pb::Command {
        kind: Some(pb::command::Kind::ChangeMembers(pb::ChangeMembers {
            chat_id: chat.0,
            by_user: ann.0,
            add: vec![dan.0],
            ..Default::default()
        })),
    };
    let send = |id: &str| pb::Command {
        kind: Some(pb::command::Kind::SendMessage(msg(
            chat, dan, 1, id, "am I in?",
        ))),
    };
    let tag = |c: &pb::Command| Dispatch::tagged(CHAT_COMMAND_TAG, &c.encode_to_vec());
    let p = partition_of(chat.0, PARTITIONS);
    let out = seq
        .node()
        .propose(p, vec![tag(&send("s1")), tag(&remove)])
        .await
        .unwrap();
    assert!(
        matches!(out.outcomes[0], chat_log::CommandOutcome::Applied { .. }),
        "{:?}",
        out.outcomes
    );
    let out = seq
        .node()
        .propose(p, vec![tag(&readd), tag(&remove), tag(&send("s2"))])
        .await
        .unwrap();
    assert!(
        matches!(
            &out.outcomes[2],
            chat_log::CommandOutcome::Rejected {
                code: RejectCode::PermissionDenied,
                ..
            }
        ),
        "{:?}",
        out.outcomes
    );
    // The removed member cannot send through the sequencer either.
    assert_eq!(
        code(seq.send(msg(chat, dan, 1, "s3", "?")).await.unwrap_err()),
        RejectCode::PermissionDenied
    );
    stop(seq).await;
}

/// Leaving, admin roles and a chat's settings, as `ChangeMembers` and `UpdateChat` apply them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leave_admins_promote_and_demote_and_chats_have_settings() {
    let dir = tempfile::tempdir().unwrap();
    let seq = start(
        dir.path(),
        ApplyLimits::default(),
        SequencerConfig::default(),
    )
    .await;
    let u = users(&seq, &["ann", "ben", "cat", "dan"]).await;
    let (ann, ben, cat, dan) = (u[0], u[1], u[2], u[3]);
    let chat = ChatId(
        seq.create_group(ann, "roles", "roles", &[ben, cat])
            .await
            .unwrap()
            .chat_id,
    );
    let reads = chat_model::StateReader::new(seq.node().clone());
    let admins = || async {
        let records = reads.member_records(chat).await.unwrap();
        let mut admins: Vec<UserId> = records
            .iter()
            .filter(|(_, m)| m.admin)
            .map(|(u, _)| *u)
            .collect();
        admins.sort();
        (records.len(), admins)
    };
    assert_eq!(admins().await, (3, vec![ann]));

    // A member who is not an admin may leave, and do nothing else.
    let e = seq
        .change_members(
            chat,
            ben,
            MemberChange {
                promote: &[ben],
                ..MemberChange::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);
    let e = seq
        .change_members(
            chat,
            ben,
            MemberChange {
                remove: &[ben, cat],
                ..MemberChange::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);
    seq.change_members(
        chat,
        ben,
        MemberChange {
            remove: &[ben],
            ..MemberChange::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(admins().await, (2, vec![ann]));
    let e = seq
        .change_members(
            chat,
            ben,
            MemberChange {
                remove: &[ben],
                ..MemberChange::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied, "ben is no member");

    // An admin promotes (also someone added in the same change) and demotes.
    seq.change_members(
        chat,
        ann,
        MemberChange {
            add: &[dan],
            promote: &[cat, dan],
            ..MemberChange::default()
        },
    )
    .await
    .unwrap();
    let mut all = vec![ann, cat, dan];
    all.sort();
    assert_eq!(admins().await, (3, all));
    seq.change_members(
        chat,
        cat,
        MemberChange {
            demote: &[ann, dan],
            ..MemberChange::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(admins().await, (3, vec![cat]));
    // The last admin cannot demote itself away; leaving hands the group to the member who
    // joined first (ann, there from the start).
    let e = seq
        .change_members(
            chat,
            cat,
            MemberChange {
                demote: &[cat],
                ..MemberChange::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::FailedPrecondition);
    seq.change_members(
        chat,
        cat,
        MemberChange {
            remove: &[cat],
            ..MemberChange::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(admins().await, (2, vec![ann]));

    // Settings: admins set a group's; only the timer is a direct chat's, set by either member.
    let update = |by: UserId, chat: ChatId| pb::UpdateChat {
        chat_id: chat.0,
        by_user: by.0,
        ..Default::default()
    };
    let icon = pb::MediaRef {
        object_key: "icons/roles.png".into(),
        mime: "image/png".into(),
        size: 10,
        sha256: vec![7; 32],
        ..Default::default()
    };
    let e = seq
        .update_chat(pb::UpdateChat {
            description: Some("not mine".into()),
            ..update(dan, chat)
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);
    seq.update_chat(pb::UpdateChat {
        name: Some("renamed".into()),
        description: Some("what we talk about".into()),
        icon: Some(icon.clone()),
        disappear_after_secs: Some(3600),
        ..update(ann, chat)
    })
    .await
    .unwrap();
    let record = reads.chat(chat).await.unwrap().unwrap();
    assert_eq!(record.name, "renamed");
    assert_eq!(record.description, "what we talk about");
    assert_eq!(record.icon, Some(icon));
    assert_eq!(record.disappear_after_secs, 3600);
    // Unset fields are kept; an empty key removes the icon.
    seq.update_chat(pb::UpdateChat {
        icon: Some(pb::MediaRef::default()),
        ..update(ann, chat)
    })
    .await
    .unwrap();
    let record = reads.chat(chat).await.unwrap().unwrap();
    assert_eq!((record.icon, record.name.as_str()), (None, "renamed"));
    let e = seq.update_chat(update(ann, chat)).await.unwrap_err();
    assert_eq!(code(e), RejectCode::InvalidArgument, "nothing to update");

    let dm = ChatId(seq.create_direct_chat(ann, ben).await.unwrap().chat_id);
    let e = seq
        .update_chat(pb::UpdateChat {
            name: Some("us".into()),
            ..update(ann, dm)
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::FailedPrecondition);
    seq.update_chat(pb::UpdateChat {
        disappear_after_secs: Some(60),
        ..update(ben, dm)
    })
    .await
    .unwrap();
    assert_eq!(
        reads.chat(dm).await.unwrap().unwrap().disappear_after_secs,
        60
    );
    let e = seq
        .update_chat(pb::UpdateChat {
            disappear_after_secs: Some(60),
            ..update(cat, dm)
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::PermissionDenied);
    // The reader holds the node: let it go before the node stops.

    drop(reads);
    stop(seq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_dedup_window() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ApplyLimits {
        dedup_window_ms: 500,
        ..ApplyLimits::default()
    };
    let config = SequencerConfig {
        sends_per_second: 1,
        send_burst: 5,
        ..SequencerConfig::default()
    };
    let seq = start(dir.path(), limits, config).await;
    let u = users(&seq, &["fay", "gus"]).await;
    let chat = ChatId(seq.create_direct_chat(u[0], u[1]).await.unwrap().chat_id);

    // The burst passes, then the bucket is empty.
    for i in 0..5 {
        seq.send(msg(chat, u[0], 1, &format!("r{i}"), "x"))
            .await
            .unwrap();
    }
    let e = seq.send(msg(chat, u[0], 1, "r5", "x")).await.unwrap_err();
    assert_eq!(code(e), RejectCode::ResourceExhausted);
    // Other users have their own bucket.
    assert_eq!(
        seq.send(msg(chat, u[1], 1, "g0", "x")).await.unwrap().seq,
        6
    );

    // Inside the window a retry is a duplicate; after it, the id is a new message.
    assert!(
        seq.send(msg(chat, u[1], 1, "g0", "x"))
            .await
            .unwrap()
            .duplicate
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = seq.send(msg(chat, u[1], 1, "g0", "x")).await.unwrap();
    assert!(!after.duplicate);
    assert_eq!(after.seq, 7);
    stop(seq).await;
}
