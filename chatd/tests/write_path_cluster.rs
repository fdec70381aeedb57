//! The chat write path on three real `chatd` processes: many senders over many chats, sending to
//! random nodes (which forward to partition leaders) and retrying with the same client_msg_id on
//! any failure, while the leader of a chat's partition is killed with `kill -9` and restarted.
//! While it is down the survivors compact every partition, so it catches up through snapshots.
//! For every chat the seqs must be exactly 1..n with no gap and no duplicate, every acknowledged
//! send must be in the history exactly once at the seq it was acknowledged with, a retry through
//! the restarted node must be recognised, and every replica must end byte-identical.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_model::ids::{group_chat_id, partition_of, UserId};
use chat_proto::chat_v1::{self as pb, command, command_reply};
use common::{Cluster, SeqClient};
use tonic::Code;

const PARTITIONS: u32 = 8;
const CHATS: usize = 8;
const SENDERS_PER_CHAT: usize = 3;
const MESSAGES_PER_SENDER: usize = 25;

fn submit_request(kind: command::Kind) -> pb::SubmitRequest {
    pb::SubmitRequest {
        command: Some(pb::Command { kind: Some(kind) }),
        forwarded: false,
    }
}

/// Submit through any live node, retrying transient failures with the same command until it is
/// applied. Returns the reply and how many attempts it took.
async fn submit_until_applied(
    clients: &[SeqClient],
    alive: &Mutex<Vec<u64>>,
    kind: command::Kind,
    salt: usize,
) -> (command_reply::Kind, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = {
            let alive = alive.lock().unwrap();
            alive[(salt + attempt) % alive.len()]
        };
        let mut client = clients[node as usize - 1].clone();
        let mut request = tonic::Request::new(submit_request(kind.clone()));
        request.set_timeout(Duration::from_secs(5));
        match client.submit(request).await {
            Ok(reply) => return (reply.into_inner().kind.expect("reply kind"), attempt),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "command not applied within 60 s: {s}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("unexpected error {s} for {kind:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_with_retries_across_a_killed_leader() {
    let mut cluster = Cluster::start(3, PARTITIONS);
    cluster.wait_for_leaders(1, Duration::from_secs(30)).await;
    let clients: Vec<SeqClient> = (1..=3).map(|id| cluster.sequencer(id)).collect();
    let alive = Arc::new(Mutex::new(vec![1u64, 2, 3]));

    // Users and group chats: chat c has senders (c, 0..3).
    let mut chats = Vec::new();
    for c in 0..CHATS {
        let mut members = Vec::new();
        for s in 0..SENDERS_PER_CHAT {
            let handle = format!("user-{c}-{s}");
            let kind = command::Kind::RegisterUser(pb::RegisterUser {
                user_id: 0,
                handle,
                ..Default::default()
            });
            let (reply, _) = submit_until_applied(&clients, &alive, kind, c + s).await;
            let command_reply::Kind::User(u) = reply else {
                panic!("{reply:?}")
            };
            members.push(u.user_id);
        }
        let chat = group_chat_id(UserId(members[0]), &format!("group-{c}"));
        let kind = command::Kind::CreateChat(pb::CreateChat {
            chat_id: chat.0,
            kind: pb::ChatKind::Group as i32,
            name: format!("group {c}"),
            creator: members[0],
            members: members[1..].to_vec(),
        });
        submit_until_applied(&clients, &alive, kind, c).await;
        chats.push((chat.0, members));
    }

    // Senders: each sends its messages in order, each retried until acknowledged.
    let acks: Arc<Mutex<BTreeMap<(u64, String), u64>>> = Arc::default();
    let retried = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for (c, (chat, members)) in chats.iter().enumerate() {
        for (s, &user) in members.iter().enumerate() {
            let (clients, alive, acks, retried, chat) = (
                clients.clone(),
                alive.clone(),
                acks.clone(),
                retried.clone(),
                *chat,
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..MESSAGES_PER_SENDER {
                    let client_msg_id = format!("c{c}-s{s}-m{i}");
                    let kind = command::Kind::SendMessage(pb::SendMessage {
                        chat_id: chat,
                        sender_user: user,
                        sender_device: 1,
                        client_msg_id: client_msg_id.clone(),
                        payload: client_msg_id.clone().into_bytes(),
                        media: vec![],
                    });
                    let (reply, attempts) =
                        submit_until_applied(&clients, &alive, kind, c * 7 + s * 3 + i).await;
                    let command_reply::Kind::Send(ack) = reply else {
                        panic!("{reply:?}")
                    };
                    assert_eq!(ack.chat_id, chat);
                    *retried.lock().unwrap() += attempts - 1;
                    let previous = acks
                        .lock()
                        .unwrap()
                        .insert((chat, client_msg_id.clone()), ack.seq);
                    assert!(previous.is_none(), "{client_msg_id} acknowledged twice");
                }
            }));
        }
    }

    // Once a third of the sends are in, kill -9 the leader of chat 0's partition, keep it down
    // for a while, then restart it.
    let total = CHATS * SENDERS_PER_CHAT * MESSAGES_PER_SENDER;
    while acks.lock().unwrap().len() < total / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p0 = partition_of(chats[0].0, PARTITIONS).0;
    let victim = cluster.wait_for_leaders(1, Duration::from_secs(10)).await[&p0];
    alive.lock().unwrap().retain(|&n| n != victim);
    cluster.kill9(victim);
    let killed_at = acks.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Compact every partition on the survivors (the test config keeps no log behind a snapshot),
    // so the restarted node can only catch up by installing snapshots: chat state, the history
    // index and the dedup window must all travel inside them.
    // (Copy the list first: a guard held across the awaits below would block the senders'
    // worker threads on the mutex.)
    let survivors = alive.lock().unwrap().clone();
    for id in survivors {
        let mut admin = cluster.admin(id).await;
        for p in 0..PARTITIONS {
            admin
                .compact(chat_proto::admin::CompactRequest { partition: p })
                .await
                .unwrap_or_else(|e| panic!("compact partition {p} on node {id}: {e}"));
        }
    }
    cluster.spawn(victim);
    alive.lock().unwrap().push(victim);

    for t in tasks {
        t.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert_eq!(acks.len(), total);
    assert!(
        killed_at < total,
        "the kill must happen while sends are in flight"
    );

    // Every node converges; every chat is exactly 1..n, each acknowledged send once, at its seq.
    for (chat, _) in &chats {
        let want: BTreeMap<u64, String> = acks
            .iter()
            .filter(|((c, _), _)| c == chat)
            .map(|((_, id), seq)| (*seq, id.clone()))
            .collect();
        let n = (SENDERS_PER_CHAT * MESSAGES_PER_SENDER) as u64;
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "acked seqs of chat {chat}"
        );
        for id in 1..=3u64 {
            let deadline = Instant::now() + Duration::from_secs(30);
            let history = loop {
                let mut client = clients[id as usize - 1].clone();
                let request = pb::HistoryRequest {
                    chat_id: *chat,
                    after_seq: 0,
                    before_seq: 0,
                    limit: 1000,
                };
                match client.history(request).await {
                    Ok(h) if h.get_ref().last_seq == n => break h.into_inner(),
                    other => {
                        assert!(
                            Instant::now() < deadline,
                            "node {id} did not catch up on chat {chat}: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let got: BTreeMap<u64, String> = history
                .messages
                .iter()
                .map(|m| (m.seq, m.client_msg_id.clone()))
                .collect();
            assert_eq!(
                got.len(),
                history.messages.len(),
                "node {id}: a seq appears twice in chat {chat}"
            );
            assert_eq!(
                got, want,
                "node {id}: history of chat {chat} differs from the acknowledgements"
            );
            let ids: BTreeSet<&String> =
                history.messages.iter().map(|m| &m.client_msg_id).collect();
            assert_eq!(
                ids.len(),
                history.messages.len(),
                "node {id}: a message appears twice in chat {chat}"
            );
            assert!(history
                .messages
                .iter()
                .all(|m| m.payload == m.client_msg_id.as_bytes()));
            assert!(history
                .messages
                .windows(2)
                .all(|w| w[0].server_ts_ms <= w[1].server_ts_ms && w[0].offset < w[1].offset));
        }
    }

    assert!(
        cluster.log_of(victim).contains("installed snapshot"),
        "node {victim} caught up without installing a snapshot"
    );

    // Retries reaching the restarted node are still recognised: its dedup window came with the
    // snapshots.
    let (chat0, members0) = &chats[0];
    let retry = command::Kind::SendMessage(pb::SendMessage {
        chat_id: *chat0,
        sender_user: members0[0],
        sender_device: 1,
        client_msg_id: "c0-s0-m0".into(),
        payload: b"c0-s0-m0".to_vec(),
        media: vec![],
    });
    let only_victim = Mutex::new(vec![victim]);
    let (reply, _) = submit_until_applied(&clients, &only_victim, retry, 0).await;
    let command_reply::Kind::Send(ack) = reply else {
        panic!("{reply:?}")
    };
    assert!(
        ack.duplicate,
        "a retry through the restarted node must be recognised: {ack:?}"
    );
    assert_eq!(ack.seq, acks[&(*chat0, "c0-s0-m0".to_string())]);

    // Replicas are byte-identical.
    for p in 0..PARTITIONS {
        cluster
            .assert_identical_replicas(p, &[1, 2, 3], Duration::from_secs(10))
            .await;
    }
    eprintln!(
        "{total} sends acknowledged, {} retries, node {victim} killed after {killed_at}",
        retried.lock().unwrap()
    );
}
