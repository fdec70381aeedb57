//! The device API end to end, over real loopback gRPC against a real `chatd` process, through
//! the client library: 1:1 chat, a group of five with two devices each, an offline device
//! resuming, a slow consumer, forged and revoked tokens, non-members, malformed and oversize
//! frames.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::{ChatClient, Device, DeviceEvent, DeviceOptions, DeviceStream};
use chat_proto::chat_v1::{client_frame, server_frame};
use common::{until_synced, Cluster};
use tonic::Code;

/// Generous send rate (tests send bursts) and a small push queue (so the slow-consumer path is
/// exercised without gigabytes of traffic).
const CONFIG: &str =
    "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n[gateway]\nqueue_capacity = 16\n";

const WAIT: Duration = Duration::from_secs(20);

struct User {
    handle: String,
    token: String,
    user_id: u64,
    client: ChatClient,
}

async fn register(addr: &str, handle: &str) -> User {
    let (client, token) = common::register(addr, handle).await;
    User {
        handle: handle.to_string(),
        client,
        user_id: token.split('.').next().unwrap().parse().unwrap(),
        token,
    }
}

fn device(addrs: &[String], token: &str, cursors: BTreeMap<u64, u64>) -> Device {
    let mut options = DeviceOptions::new(addrs.to_vec(), token);
    options.cursors = cursors;
    Device::start(options)
}

/// The next `n` messages the device receives.
async fn messages(device: &mut Device, n: usize) -> Vec<chat_proto::chat_v1::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, device.next_event()).await {
            Ok(Some(DeviceEvent::Message(m))) => out.push(m),
            Ok(Some(DeviceEvent::Disconnected(s))) => panic!("disconnected: {s:?}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("device stopped"),
            Err(_) => panic!("got {} of {n} messages within {WAIT:?}", out.len()),
        }
    }
    out
}

fn seqs(messages: &[chat_proto::chat_v1::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn text(m: &chat_proto::chat_v1::Message) -> String {
    String::from_utf8(m.payload.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_chat_and_group_of_five_with_two_devices_each() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    let addrs = vec![addr.clone()];
    cluster.wait_for_leaders(1, WAIT).await;

    // 1:1: both sides name the same chat; both see every message in order, the sender's own
    // device included, and the sender sees its messages delivered (a tick: the receiver's
    // receipt itself goes only to the receiver's own devices).
    let mut alice = register(&addr, "alice").await;
    let mut bob = register(&addr, "bob").await;
    let chat = alice.client.create_direct("bob").await.unwrap();
    let same = bob.client.create_direct("alice").await.unwrap();
    assert_eq!(chat.chat_id, same.chat_id);
    let mut a = device(&addrs, &alice.token, BTreeMap::new());
    let mut b = device(&addrs, &bob.token, BTreeMap::new());
    assert!(until_synced(&mut a, WAIT).await.is_empty());
    assert!(until_synced(&mut b, WAIT).await.is_empty());
    for i in 1..=3 {
        let ack = a
            .send(chat.chat_id, format!("hi {i}").into_bytes())
            .await
            .unwrap();
        assert_eq!(ack.seq, i);
    }
    let got = messages(&mut b, 3).await;
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert_eq!(text(&got[2]), "hi 3");
    assert!(got.iter().all(|m| m.sender_user == alice.user_id));
    assert_eq!(seqs(&messages(&mut a, 3).await), vec![1, 2, 3]);
    let delivered = loop {
        match tokio::time::timeout(WAIT, a.next_event()).await.unwrap() {
            Some(DeviceEvent::Ticks(t)) if t.delivered_up_to == 3 => break t,
            Some(DeviceEvent::Receipt(r)) => assert_eq!(r.user_id, alice.user_id, "{r:?}"),
            Some(_) => {}
            None => panic!("device stopped"),
        }
    };
    assert_eq!(delivered.chat_id, chat.chat_id);

    // A group of five, two devices each: every device gets all 20 messages, seqs 1..20, and
    // all of them agree on what each seq holds.
    let mut users = vec![alice, bob];
    for h in ["carol", "dave", "erin"] {
        users.push(register(&addr, h).await);
    }
    let others: Vec<String> = users[1..].iter().map(|u| u.handle.clone()).collect();
    let group = users[0]
        .client
        .create_group("g1", "five", &others)
        .await
        .unwrap();
    assert_eq!(group.members.len(), 5);
    let mut handles = group.member_handles.clone();
    handles.sort();
    assert_eq!(handles, ["alice", "bob", "carol", "dave", "erin"]);
    let mut devices = Vec::new();
    for u in &mut users {
        let second = u.client.link_device(2).await.unwrap();
        devices.push(device(&addrs, &u.token, BTreeMap::new()));
        devices.push(device(&addrs, &second.token, BTreeMap::new()));
    }
    for d in &mut devices {
        until_synced(d, WAIT).await;
    }
    let mut sends = Vec::new();
    for (i, d) in devices.iter().enumerate().step_by(2) {
        for k in 0..4 {
            sends.push(d.send(group.chat_id, format!("u{i} m{k}").into_bytes()));
        }
    }
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    let mut reference: Option<Vec<String>> = None;
    for d in &mut devices {
        let got: Vec<_> = messages(d, 20)
            .await
            .into_iter()
            .filter(|m| m.chat_id == group.chat_id)
            .collect();
        assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
        let texts: Vec<String> = got.iter().map(text).collect();
        match &reference {
            None => reference = Some(texts),
            Some(r) => assert_eq!(&texts, r, "devices disagree on the chat's content"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_device_resumes_with_exactly_what_it_missed() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    let addrs = vec![addr.clone()];
    cluster.wait_for_leaders(1, WAIT).await;
    let mut alice = register(&addr, "alice").await;
    let bob = register(&addr, "bob").await;
    let chat = alice.client.create_direct("bob").await.unwrap().chat_id;
    let a = device(&addrs, &alice.token, BTreeMap::new());
    for i in 1..=5 {
        a.send(chat, format!("before {i}").into_bytes())
            .await
            .unwrap();
    }
    let mut b = device(&addrs, &bob.token, BTreeMap::new());
    assert_eq!(seqs(&until_synced(&mut b, WAIT).await), vec![1, 2, 3, 4, 5]);
    let cursors = b.cursors();
    assert_eq!(cursors.get(&chat), Some(&5));
    drop(b);

    for i in 1..=100 {
        a.send(chat, format!("while away {i}").into_bytes())
            .await
            .unwrap();
    }
    // Resuming from its cursors: exactly the 100 it missed, in order, then SyncComplete.
    let mut b = device(&addrs, &bob.token, cursors);
    let backlog = until_synced(&mut b, WAIT).await;
    assert_eq!(seqs(&backlog), (6..=105).collect::<Vec<_>>());
    assert_eq!(text(&backlog[0]), "while away 1");

    // A device that names no cursor gets everything it is owed: a newly linked device has had
    // nothing delivered, so that is the whole chat.
    let mut bob_client = ChatClient::connect(&addr)
        .await
        .unwrap()
        .with_token(&bob.token)
        .unwrap();
    let linked = bob_client.link_device(7).await.unwrap();
    let mut fresh = device(&addrs, &linked.token, BTreeMap::new());
    assert_eq!(
        seqs(&until_synced(&mut fresh, WAIT).await),
        (1..=105).collect::<Vec<_>>()
    );
    // And its history is readable page by page.
    let page = bob_client.history(chat, 100, 0, 10).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![101, 102, 103, 104, 105]);
    assert_eq!(page.last_seq, 105);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_does_not_delay_others_and_later_gets_everything() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    let addrs = vec![addr.clone()];
    cluster.wait_for_leaders(1, WAIT).await;
    let mut alice = register(&addr, "alice").await;
    let mut bob = register(&addr, "bob").await;
    let chat = alice.client.create_direct("bob").await.unwrap().chat_id;
    let slow_token = bob.client.link_device(2).await.unwrap().token;

    // The slow device opens a stream and then reads nothing at all.
    let mut slow: DeviceStream = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&slow_token, &BTreeMap::new())
        .await
        .unwrap();
    let mut fast = device(&addrs, &bob.token, BTreeMap::new());
    until_synced(&mut fast, WAIT).await;
    let a = device(&addrs, &alice.token, BTreeMap::new());

    // Far more than the slow stream's queue (16), its outbound buffer and the HTTP/2 window.
    const N: u64 = 600;
    let payload = vec![b'x'; 4096];
    let mut sends = Vec::new();
    for _ in 0..N {
        sends.push(a.send(chat, payload.clone()));
    }
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    // The fast device gets everything while the slow one has not read a frame.
    let got = messages(&mut fast, N as usize).await;
    assert_eq!(seqs(&got), (1..=N).collect::<Vec<_>>());

    // Now the slow device reads: everything, in order, no gap, no duplicate.
    let mut next = 1;
    while next <= N {
        let frame = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("slow device starved")
            .expect("stream open")
            .expect("no error");
        if let server_frame::Kind::Message(m) = frame {
            assert_eq!(m.seq, next, "gap or duplicate on the slow device");
            next += 1;
        }
    }
    // The catch-up path did run: the hub dropped pushes for the slow stream.
    assert!(
        cluster.log_of(1).contains("device stream lagged"),
        "the slow stream never overflowed its queue; the test did not test anything"
    );
}

/// A device's own frames are answered while its backlog is still on the way: the pong to its
/// ping and the ack of its send overtake the backlog's messages (control frames go ahead of
/// data) instead of waiting for the whole backlog and `SyncComplete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pongs_and_acks_overtake_a_backlog_being_delivered() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let mut alice = register(&addr, "alice").await;
    let bob = register(&addr, "bob").await;
    let chat = alice.client.create_direct("bob").await.unwrap().chat_id;
    let a = device(std::slice::from_ref(&addr), &alice.token, BTreeMap::new());
    // A backlog of 12 MiB for bob: far more than the HTTP/2 windows (2 MiB per stream, 5 MiB
    // per connection by default) and the stream's queue.
    const N: usize = 400;
    let payload = vec![b'x'; 32 * 1024];
    let sends: Vec<_> = (0..N).map(|_| a.send(chat, payload.clone())).collect();
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }

    let mut stream: DeviceStream = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&bob.token, &BTreeMap::new())
        .await
        .unwrap();
    stream
        .send_frame(client_frame::Kind::Ping(chat_proto::chat_v1::Ping {
            nonce: 7,
        }))
        .await
        .unwrap();
    stream.send(chat, "bob-1", b"hi".to_vec()).await.unwrap();
    // How many messages had arrived when each frame came.
    let (mut messages, mut pong, mut ack, mut synced) = (0usize, None, None, None);
    while pong.is_none() || ack.is_none() || synced.is_none() {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("no error");
        match frame {
            server_frame::Kind::Message(_) => messages += 1,
            server_frame::Kind::Pong(p) if p.nonce == 7 => pong = Some(messages),
            server_frame::Kind::SendAck(a) if a.client_msg_id == "bob-1" => ack = Some(messages),
            server_frame::Kind::SyncComplete(_) => synced = Some(messages),
            _ => {}
        }
    }
    let (pong, ack, synced) = (pong.unwrap(), ack.unwrap(), synced.unwrap());
    eprintln!(
        "of {N} backlog messages: pong after {pong}, ack after {ack}, SyncComplete after {synced}"
    );
    assert!(
        synced >= N,
        "the whole backlog comes before SyncComplete ({synced})"
    );
    assert!(
        pong < N && ack < N,
        "pong after {pong} and ack after {ack} of the {N} backlog messages: they waited for the backlog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_revoked_non_member_malformed_and_oversize_are_refused() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    let addrs = vec![addr.clone()];
    cluster.wait_for_leaders(1, WAIT).await;
    let mut alice = register(&addr, "alice").await;
    let mut bob = register(&addr, "bob").await;
    let mut carol = register(&addr, "carol").await;
    let chat = alice.client.create_direct("bob").await.unwrap().chat_id;

    // Taken handles and forged tokens.
    let mut anon = ChatClient::connect(&addr).await.unwrap();
    assert_eq!(
        anon.register("alice", 1).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let forged = format!("{}.1.{}", alice.user_id, "f".repeat(40));
    let mut forger = anon.clone().with_token(&forged).unwrap();
    assert_eq!(
        forger.list_chats().await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = anon
        .clone()
        .open_stream(&forged, &BTreeMap::new())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(
        anon.list_chats().await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A non-member can neither read nor send nor acknowledge.
    assert_eq!(
        carol
            .client
            .history(chat, 0, 0, 10)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let c = device(&addrs, &carol.token, BTreeMap::new());
    let err = c.send(chat, b"let me in".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        carol
            .client
            .history(999, 0, 0, 10)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Raw frames: bad ones get error frames and the stream stays usable.
    let mut raw = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&bob.token, &BTreeMap::new())
        .await
        .unwrap();
    let mut frames = Vec::new();
    let expect = |frames: &mut Vec<server_frame::Kind>, what: &str| {
        let found = frames.iter().position(|f| {
            matches!(
                (what, f),
                ("error", server_frame::Kind::Error(_))
                    | ("send_error", server_frame::Kind::SendError(_))
                    | ("pong", server_frame::Kind::Pong(_))
                    | ("sync", server_frame::Kind::SyncComplete(_))
            )
        });
        found.map(|i| frames.remove(i))
    };
    async fn next_frames(raw: &mut DeviceStream, frames: &mut Vec<server_frame::Kind>) {
        let f = tokio::time::timeout(WAIT, raw.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("no stream error");
        frames.push(f);
    }
    while expect(&mut frames, "sync").is_none() {
        next_frames(&mut raw, &mut frames).await;
    }
    raw.send_frame(client_frame::Kind::Hello(Default::default()))
        .await
        .unwrap();
    raw.send(chat, "too-big", vec![0u8; 65 * 1024])
        .await
        .unwrap();
    raw.send(chat, "", b"no id".to_vec()).await.unwrap();
    raw.ack(carol.user_id, 1).await.unwrap(); // not a chat of bob's
    raw.send_frame(client_frame::Kind::Ping(chat_proto::chat_v1::Ping {
        nonce: 9,
    }))
    .await
    .unwrap();
    let mut errors = 0;
    let mut send_errors = Vec::new();
    loop {
        next_frames(&mut raw, &mut frames).await;
        while let Some(f) = expect(&mut frames, "error") {
            errors += 1;
            drop(f);
        }
        while let Some(server_frame::Kind::SendError(e)) = expect(&mut frames, "send_error") {
            send_errors.push(e);
        }
        if errors == 2 && send_errors.len() == 2 && expect(&mut frames, "pong").is_some() {
            break;
        }
    }
    assert!(send_errors
        .iter()
        .all(|e| Code::from_i32(e.code) == Code::InvalidArgument));
    assert!(send_errors
        .iter()
        .any(|e| e.message.contains("over the limit")));

    // A frame over the gateway's frame limit ends that stream with a clear status...
    raw.send(chat, "huge", vec![0u8; 2 * 1024 * 1024])
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(WAIT, raw.next()).await.unwrap() {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("stream closed without a status"),
        }
    };
    assert!(
        matches!(end.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{end:?}"
    );
    // ...and the node keeps serving.
    let ack = device(&addrs, &alice.token, BTreeMap::new())
        .send(chat, b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);

    // Revoking a device closes its open stream and refuses its token from then on.
    let second = bob.client.link_device(2).await.unwrap();
    let mut d2 = device(&addrs, &second.token, BTreeMap::new());
    until_synced(&mut d2, WAIT).await;
    bob.client.revoke_device(2).await.unwrap();
    let status = loop {
        match tokio::time::timeout(WAIT, d2.next_event()).await.unwrap() {
            Some(DeviceEvent::Disconnected(s)) => break s,
            Some(_) => {}
            None => panic!("device stopped without a status"),
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut revoked = anon.clone().with_token(&second.token).unwrap();
    assert_eq!(
        revoked.list_chats().await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(
        bob.client.list_chats().await.is_ok(),
        "device 1 still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_streams_are_closed_and_pinging_ones_are_not() {
    let cluster = Cluster::start_with(1, 2, "[gateway]\nidle_timeout_secs = 1\n");
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let alice = register(&addr, "alice").await;

    // A device that pings keeps its stream...
    let mut options = DeviceOptions::new(vec![addr.clone()], &alice.token);
    options.ping_every = Duration::from_millis(200);
    let mut pinging = Device::start(options);
    until_synced(&mut pinging, WAIT).await;

    // ...one that goes silent is closed with DEADLINE_EXCEEDED.
    let mut silent = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&alice.token, &BTreeMap::new())
        .await
        .unwrap();
    let status = loop {
        match tokio::time::timeout(WAIT, silent.next()).await.unwrap() {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("closed without a status"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The pinging device saw no disconnect in all that time.
    while let Ok(event) =
        tokio::time::timeout(Duration::from_millis(500), pinging.next_event()).await
    {
        assert!(
            !matches!(event, Some(DeviceEvent::Disconnected(_)) | None),
            "{event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_that_are_not_a_frame_end_that_stream_only() {
    let cluster = Cluster::start_with(1, 2, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let alice = register(&addr, "alice").await;

    let mut grpc = common::raw_grpc(&addr).await;
    // A length-delimited field claiming 127 bytes that are not there: not a ClientFrame.
    let garbage = vec![0x0a, 0x7f, 0x01, 0x02];
    let frames = tokio_stream::iter(vec![garbage]);
    let path = http::uri::PathAndQuery::from_static("/chat.v1.Chat/Connect");
    let mut stream = grpc
        .streaming(
            tonic::Request::new(frames),
            path,
            common::RawCodec::<chat_proto::chat_v1::ServerFrame>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("closed without a status"),
            Err(status) => break status,
        }
    };
    assert!(
        matches!(status.code(), Code::Internal | Code::InvalidArgument),
        "{status:?}"
    );
    assert!(status.message().contains("decode"), "{status:?}");

    // The node serves on.
    let mut d = device(std::slice::from_ref(&addr), &alice.token, BTreeMap::new());
    until_synced(&mut d, WAIT).await;
}

/// A member added to a group reads nothing from before they joined, whatever they ask for:
/// History from seq 0, a stream whose Hello names cursor 0 for the chat, a stream with no
/// cursors. A cursor past any seq is refused, not wrapped around.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_added_later_reads_nothing_from_before_and_wild_cursors_are_refused() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    let addrs = vec![addr.clone()];
    cluster.wait_for_leaders(1, WAIT).await;
    let mut alice = register(&addr, "alice").await;
    let mut bob = register(&addr, "bob").await;
    let chat = alice
        .client
        .create_group("g", "before and after", &[])
        .await
        .unwrap()
        .chat_id;
    let mut sender = device(&addrs, &alice.token, BTreeMap::new());
    for i in 1..=3 {
        sender
            .send(chat, format!("before {i}").into_bytes())
            .await
            .unwrap();
    }
    alice
        .client
        .change_members(chat, &[bob.handle.clone()], &[])
        .await
        .unwrap();
    // Bob's inbox shows the chat from his join: not who spoke last before it, nor when.
    let last_before = alice.client.history(chat, 0, 0, 10).await.unwrap().messages[2].clone();
    let deadline = std::time::Instant::now() + WAIT;
    let entry = loop {
        let inbox = bob.client.inbox().await.unwrap();
        if let Some(entry) = inbox.into_iter().find(|e| e.chat_id == chat) {
            break entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chat never reached bob's inbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entry.last_sender, 0, "{entry:?}");
    assert_eq!(entry.unread, 0, "{entry:?}");
    assert!(
        entry.last_activity_ms >= last_before.server_ts_ms,
        "{entry:?}"
    );
    for i in 1..=2 {
        sender
            .send(chat, format!("after {i}").into_bytes())
            .await
            .unwrap();
    }
    messages(&mut sender, 5).await;

    // History from the start: only what came after the join.
    let page = bob.client.history(chat, 0, 0, 100).await.unwrap().messages;
    assert_eq!(seqs(&page), [4, 5], "{page:?}");
    assert!(page.iter().all(|m| text(m).starts_with("after")));
    // A range that lies wholly before the join: nothing.
    let page = bob.client.history(chat, 0, 3, 100).await.unwrap().messages;
    assert!(page.is_empty(), "{page:?}");

    // A stream naming cursor 0 for the chat, and one naming none.
    for cursors in [BTreeMap::from([(chat, 0)]), BTreeMap::new()] {
        let mut stream = ChatClient::connect(&addr)
            .await
            .unwrap()
            .open_stream(&bob.token, &cursors)
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
                Some(Ok(server_frame::Kind::Message(m))) => got.push(m),
                Some(Ok(server_frame::Kind::SyncComplete(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs(&got), [4, 5], "cursors {cursors:?}: {got:?}");
    }

    // A cursor at the top of u64: an error naming it, and the node goes on serving.
    let mut stream = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&bob.token, &BTreeMap::from([(chat, u64::MAX)]))
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(server_frame::Kind::Welcome(_))) => {}
            Some(Err(err)) => break err,
            other => panic!("a stream with a wild cursor went on: {other:?}"),
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("beyond any seq"), "{err:?}");
    let page = bob.client.history(chat, u64::MAX, 0, 10).await.unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(
        seqs(&bob.client.history(chat, 3, 0, 10).await.unwrap().messages),
        [4, 5]
    );
}
