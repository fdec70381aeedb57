//! Retention end to end on a real chatd process: messages older than the window lose their
//! payload (kept as expired, seqs never reused, history and device backlogs say so), newer ones
//! stay; with delete-when-delivered, exactly what every device of every member acknowledged is
//! expired. Expiry goes through the log, so replicas and projections stay identical.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{ChatClient, DeviceStream};
use chat_proto::chat_v1::{server_frame, Message};
use common::{register, Cluster};

const WAIT: Duration = Duration::from_secs(30);

/// A raw stream, past its SyncComplete, with the backlog it was sent.
async fn stream(addr: &str, token: &str) -> (DeviceStream, Vec<Message>) {
    let (stream, before) = common::synced_stream(addr, token, WAIT).await;
    (stream, common::messages_of(before))
}

/// Send `n` messages on `s` and wait for their acks.
async fn send(s: &mut DeviceStream, chat: u64, from: usize, n: usize) {
    for i in from..from + n {
        s.send(chat, &format!("m{i}"), format!("text {i}").into_bytes())
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
            Some(Ok(server_frame::Kind::SendAck(_))) => acked += 1,
            Some(Ok(server_frame::Kind::SendError(e))) => panic!("{e:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Poll the history until `pred` holds.
async fn history_until(
    client: &mut ChatClient,
    chat: u64,
    what: &str,
    pred: impl Fn(&[Message]) -> bool,
) -> Vec<Message> {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = client.history(chat, 0, 0, 100).await.unwrap().messages;
        if pred(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "{what}: {page:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expired(page: &[Message]) -> Vec<bool> {
    page.iter().map(|m| m.expired).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_older_than_the_window_expire_and_newer_ones_stay() {
    let cluster = Cluster::start_with(1, 2, "[retention]\nexpire_after_secs = 3\nsweep_ms = 100\n");
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let (mut a, _) = stream(&addr, &alice_token).await;
    send(&mut a, chat, 1, 3).await;

    // After the window, the three are expired...
    let page = history_until(&mut alice, chat, "old messages expire", |p| {
        expired(p) == [true, true, true]
    })
    .await;
    for (i, m) in page.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert!(m.payload.is_empty() && m.media.is_empty(), "{m:?}");
        assert!(
            m.server_ts_ms > 0 && m.sender_user != 0,
            "metadata kept: {m:?}"
        );
    }
    // ...and new messages keep their seqs after them and are not expired (for the next 3 s).
    send(&mut a, chat, 4, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // several sweeps
    let page = alice.history(chat, 0, 0, 100).await.unwrap().messages;
    assert_eq!(expired(&page), [true, true, true, false, false]);
    // (Sends pipelined on one stream are committed in either order.)
    let mut newer: Vec<&[u8]> = page[3..].iter().map(|m| m.payload.as_slice()).collect();
    newer.sort();
    assert_eq!(newer, [b"text 4".as_slice(), b"text 5".as_slice()]);
    assert_eq!(page[4].seq, 5);

    // A device catching up gets every seq, the expired ones marked.
    let (_, backlog) = stream(&addr, &alice_token).await;
    assert_eq!(
        backlog.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(expired(&backlog), [true, true, true, false, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_when_delivered_expires_exactly_what_every_device_acknowledged() {
    let cluster = Cluster::start_with(
        3,
        2,
        "[retention]\ndelete_when_delivered = true\nsweep_ms = 100\n",
    );
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (mut bob, bob_token) = register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let bob2 = bob.link_device(2).await.unwrap().token;

    let (mut a, _) = stream(&addr, &alice_token).await;
    send(&mut a, chat, 1, 5).await;
    a.ack(chat, 5).await.unwrap(); // the sender's own device has them all
    let (b1, _) = stream(&addr, &bob_token).await;
    let (b2, _) = stream(&cluster.node(2).addr, &bob2).await;
    b1.ack(chat, 4).await.unwrap();
    b2.ack(chat, 2).await.unwrap();

    // Every device has 1..2: exactly those expire.
    history_until(&mut alice, chat, "acked by every device", |p| {
        expired(p) == [true, true, false, false, false]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = alice.history(chat, 0, 0, 100).await.unwrap().messages;
    assert_eq!(
        expired(&page),
        [true, true, false, false, false],
        "no further"
    );
    b2.ack(chat, 5).await.unwrap();
    history_until(&mut alice, chat, "b1 holds back 5", |p| {
        expired(p) == [true, true, true, true, false]
    })
    .await;

    // Expiry went through the log: every replica's event log is identical.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = Vec::new();
        for n in 1..=3 {
            let mut per = Vec::new();
            for p in 0..2 {
                per.push(cluster.digest(n, p).await.sha256);
            }
            all.push(per);
        }
        if all.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ after expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
