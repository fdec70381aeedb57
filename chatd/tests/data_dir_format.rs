//! A data dir written in this release's data format opens and serves in this release.
//!
//! `tests/fixtures/datadir-format1/` is a committed data dir of one node with two partitions,
//! written by [`write_the_fixture`] (run by hand, `--ignored`): three users, a direct chat of 50
//! messages and a group of 5, both partitions compacted (a snapshot manifest, a purged Raft log)
//! after the first 40 direct messages. The test copies it, starts chatd on the copy and reads
//! everything back through the public API: the stored users, devices, chats, members, history
//! index, events, Raft log, snapshot and projections must all decode as this release reads them.
//!
//! When the data format changes (`chat_log::DATA_FORMAT`), the next release keeps this fixture
//! (it must still open it, or refuse it by name) and adds one of its own format.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_proto::chat_v1::chat_client::ChatClient as RawChatClient;
use chat_proto::chat_v1::{self as pb, command, command_reply};
use common::Cluster;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/datadir-format1"
);
const WAIT: Duration = Duration::from_secs(20);
/// No ballast, so the fixture holds only RocksDB's files.
const STORAGE: &str = "[storage]\nreserve_mib = 0\nballast_mib = 0\n";
/// The reader's config. The dedup window (default 24 h) and retention (default 30 days) are
/// measured against the messages' stored timestamps, so with the defaults the fixture's retry
/// would be a new send a day after it was written, and its payloads would expire a month later.
/// Ten years of each keeps this test about the format, not the fixture's age.
const READER: &str = "[storage]\nreserve_mib = 0\nballast_mib = 0\n\
    [chat]\ndedup_window_secs = 315360000\n[retention]\nexpire_after_secs = 315360000\n";
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const DIRECT_MESSAGES: u64 = 50;
const GROUP_MESSAGES: u64 = 5;

/// The device secret of `handle` (fixed, so the test can authenticate as the fixture's devices).
fn secret(handle: &str) -> String {
    format!("fixture-device-secret-of-{handle}-0123456789")
}

fn payload(chat: &str, i: u64) -> Vec<u8> {
    format!("{chat} message {i}").into_bytes()
}

async fn raw_client(addr: &str) -> RawChatClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RawChatClient::new(channel)
}

/// A client authenticated as `handle`'s device 1 (user ids derive from handles).
async fn client_of(addr: &str, handle: &str) -> chat_client::ChatClient {
    let user = chat_model::ids::user_id_for_handle(handle).0;
    let token = format!("{user}.1.{}", secret(handle));
    chat_client::ChatClient::connect(addr)
        .await
        .unwrap()
        .with_token(&token)
        .unwrap()
}

async fn send(cluster: &Cluster, chat: u64, handle: &str, id: &str, payload: Vec<u8>) -> u64 {
    let user = chat_model::ids::user_id_for_handle(handle).0;
    let request = pb::SubmitRequest {
        command: Some(pb::Command {
            kind: Some(command::Kind::SendMessage(pb::SendMessage {
                chat_id: chat,
                sender_user: user,
                sender_device: 1,
                client_msg_id: id.into(),
                payload,
                media: vec![],
            })),
        }),
        forwarded: false,
    };
    let reply = cluster
        .sequencer(1)
        .submit(request)
        .await
        .unwrap()
        .into_inner();
    match reply.kind {
        Some(command_reply::Kind::Send(ack)) => ack.seq,
        other => panic!("send answered {other:?}"),
    }
}

/// Direct messages `seqs`, alice and bob taking turns.
async fn send_direct(cluster: &Cluster, chat: u64, seqs: std::ops::RangeInclusive<u64>) {
    for i in seqs {
        let from = if i % 2 == 1 { "alice" } else { "bob" };
        send(cluster, chat, from, &format!("d{i}"), payload("direct", i)).await;
    }
}

fn copy_dir(from: &Path, to: &Path, skip: impl Fn(&str) -> bool + Copy) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if skip(&name) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name), skip);
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Writes `tests/fixtures/datadir-format1/` anew. Run by hand when the fixture must be remade:
/// `cargo test --release -p chatd --test all -- --ignored data_dir_format::write_the_fixture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the committed fixture; run by hand"]
async fn write_the_fixture() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("n1");
    let mut cluster = Cluster::start_on(1, 2, STORAGE, &BTreeMap::from([(1, data.clone())]));
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();

    for handle in USERS {
        raw_client(&addr)
            .await
            .register(pb::RegisterRequest {
                handle: handle.into(),
                device_id: 1,
                secret: secret(handle),
            })
            .await
            .unwrap();
    }
    let mut alice = client_of(&addr, "alice").await;
    let direct = alice.create_direct("bob").await.unwrap().chat_id;
    let group = alice
        .create_group("fixture-group", "fixture", &["bob".into(), "carol".into()])
        .await
        .unwrap()
        .chat_id;
    send_direct(&cluster, direct, 1..=40).await;
    for i in 1..=GROUP_MESSAGES {
        let from = USERS[i as usize % 3];
        send(&cluster, group, from, &format!("g{i}"), payload("group", i)).await;
    }
    let mut admin = cluster.admin(1).await;
    for p in 0..2 {
        admin
            .compact(chat_proto::admin::CompactRequest { partition: p })
            .await
            .unwrap();
    }
    send_direct(&cluster, direct, 41..=DIRECT_MESSAGES).await;
    assert!(cluster.terminate(1).success());

    let fixture = PathBuf::from(FIXTURE);
    let _ = std::fs::remove_dir_all(&fixture);
    copy_dir(&data, &fixture, |name| {
        name.starts_with("LOG") || name == "LOCK" || name == "EMERGENCY_BALLAST"
    });
    println!("wrote {}", fixture.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_this_format_opens_and_serves() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("n1");
    copy_dir(Path::new(FIXTURE), &data, |_| false);
    let cluster = Cluster::start_on(1, 2, READER, &BTreeMap::from([(1, data)]));
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();

    // Every stored record is intact, and the compaction happened before the fixture was taken.
    let mut admin = cluster.admin(1).await;
    let verify = admin
        .verify_checksums(chat_proto::admin::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.errors.is_empty(), "{:?}", verify.errors);
    let status = cluster.status(1).await;
    assert!(
        status.partitions.iter().all(|p| p.snapshot_index > 0),
        "{status:?}"
    );

    // Users and devices: each authenticates with the fixture's token; chats and members: the
    // chat list and the history; the history index and events: every message, in order.
    let mut lists = Vec::new();
    for handle in USERS {
        lists.push(client_of(&addr, handle).await.list_chats().await.unwrap());
    }
    let [alice, bob, carol] = lists.try_into().unwrap();
    assert_eq!((alice.len(), bob.len(), carol.len()), (2, 2, 1));
    let group = carol[0].clone();
    let direct = alice
        .into_iter()
        .find(|c| c.chat_id != group.chat_id)
        .unwrap();
    assert_eq!(group.name, "fixture");
    assert_eq!(direct.last_seq, DIRECT_MESSAGES);
    assert_eq!(group.last_seq, GROUP_MESSAGES);
    assert_eq!(group.member_handles.len(), 3, "{group:?}");
    let mut bob = client_of(&addr, "bob").await;
    let history = bob
        .history(direct.chat_id, 0, 0, 100)
        .await
        .unwrap()
        .messages;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=DIRECT_MESSAGES).collect::<Vec<_>>());
    for m in &history {
        assert_eq!(m.payload, payload("direct", m.seq), "seq {}", m.seq);
    }
    let history = bob
        .history(group.chat_id, 0, 0, 100)
        .await
        .unwrap()
        .messages;
    assert_eq!(history.len() as u64, GROUP_MESSAGES);

    // The projections: carol's inbox knows the group and its unread messages.
    let inbox = client_of(&addr, "carol").await.inbox().await.unwrap();
    let entry = inbox
        .iter()
        .find(|e| e.chat_id == group.chat_id)
        .expect("the group in carol's inbox");
    assert_eq!(entry.last_seq, GROUP_MESSAGES, "{entry:?}");

    // The dedup window: a retry of a stored send is recognised, a new send takes the next seq.
    assert_eq!(
        send(
            &cluster,
            direct.chat_id,
            "bob",
            "d50",
            payload("direct", 50)
        )
        .await,
        DIRECT_MESSAGES
    );
    assert_eq!(
        send(&cluster, direct.chat_id, "alice", "new", b"after".to_vec()).await,
        DIRECT_MESSAGES + 1
    );
}
