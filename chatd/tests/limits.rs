//! Limits on what one client can cause, against a real chatd process: a user calling faster
//! than the call rate, one address registering accounts in a flood, oversize names and member
//! lists (refused before anything is replicated), and presence asked of strangers or of
//! handles nobody has.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{ChatClient, Device, DeviceOptions};
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_oversize_fields_and_strangers_presence_are_refused() {
    let cluster = Cluster::start_with(
        1,
        2,
        "[gateway]\ncalls_per_second = 2\ncall_burst = 20\nregisters_per_second = 1\nregister_burst = 6\n",
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut alice, _) = register(&addr, "alice").await;
    let (mut bob, _) = register(&addr, "bob").await;
    let (_carol, _) = register(&addr, "carol").await;

    // Oversize fields are INVALID_ARGUMENT, and nothing is written: the group does not exist.
    // Every partition's last offset, summed: it moves with anything written.
    let written = || async {
        let status = cluster.status(1).await;
        status.partitions.iter().map(|p| p.last_offset).sum::<u64>()
    };
    let before = written().await;
    let err = alice
        .create_group("g1", &"n".repeat(257), &["bob".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("name"), "{err}");
    let many: Vec<String> = (0..1025).map(|i| format!("u{i}")).collect();
    let err = alice.create_group("g2", "big", &many).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("member_handles"), "{err}");
    let err = alice
        .create_group(&"r".repeat(129), "g", &["bob".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let after = written().await;
    assert_eq!(before, after, "a refused command was replicated");

    // Presence: nobody's handle is NOT_FOUND; a stranger's (no shared chat) PERMISSION_DENIED.
    let err = alice.presence(&["nobody".into()]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = alice.presence(&["bob".into()]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    alice.create_direct("bob").await.unwrap();
    let deadline = Instant::now() + WAIT;
    let seen = loop {
        match alice.presence(&["bob".into()]).await {
            Ok(seen) => break seen,
            Err(e) if e.code() == Code::PermissionDenied && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(seen[0].handle, "bob");
    // Sharing a chat with bob does not open carol.
    let err = bob.presence(&["carol".into()]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // A user calling in a loop: the burst passes, then RESOURCE_EXHAUSTED; others unaffected.
    let mut refused = 0;
    for _ in 0..60 {
        match alice.inbox().await {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 30, "only {refused} of 60 calls refused");
    bob.inbox().await.unwrap();

    // One address registering accounts in a flood: refused after the burst.
    let mut refused = 0;
    for i in 0..20 {
        let mut c = chat_client::ChatClient::connect(&addr).await.unwrap();
        match c.register(&format!("flood{i}"), 1).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 10, "only {refused} of 20 registrations refused");
}

/// A client that opens a stream, says Hello and then reads nothing: once its HTTP/2 window and
/// its queues are full, the node ends the stream after the write deadline instead of holding
/// a session (its hub registration, its catch-up reads) for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_stream() {
    let port = common::free_port();
    let cluster = Cluster::start_with(
        1,
        2,
        &format!(
            "metrics_listen = \"127.0.0.1:{port}\"\n[gateway]\nwrite_deadline_ms = 1000\n[chat]\nsends_per_second = 100000\nsend_burst = 100000\n"
        ),
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let metrics = format!("127.0.0.1:{port}");
    let metric = |name: &str| {
        common::scrape(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (_bob, bob_token) = register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;

    let stalled = ChatClient::connect(&addr)
        .await
        .unwrap()
        .open_stream(&bob_token, &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while metric("chatd_registry_streams") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "bob's stream was never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 18 MB for bob: far more than the HTTP/2 windows (5 MiB per connection) and the queues.
    let sender = Device::start(DeviceOptions::new(vec![addr.clone()], &alice_token));
    let sends: Vec<_> = (0..300)
        .map(|_| sender.send(chat, vec![b'x'; 60_000]))
        .collect();
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    // Alice's own stream leaves: what stays registered would be the stalled one.
    drop(sender);
    let deadline = Instant::now() + WAIT;
    while metric("chatd_device_stream_write_timeouts_total") < 1.0
        || metric("chatd_registry_streams") > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled stream is still held: {} write timeouts, {} streams registered",
            metric("chatd_device_stream_write_timeouts_total"),
            metric("chatd_registry_streams")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

/// A stream flood: one device may hold only a few streams on a node (the next is
/// RESOURCE_EXHAUSTED), and one connection to the public address only a bounded number of
/// streams at once (the next waits until one ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_bounded_per_device_and_per_connection() {
    let public = format!("127.0.0.1:{}", common::free_port());
    let cluster = Cluster::start_with(
        1,
        2,
        &format!("public_listen = \"{public}\"\n[gateway]\nmax_streams_per_connection = 3\n"),
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let (_alice, token) = register(&public, "alice").await;

    // Per device: four streams on separate connections are served, the fifth is refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = ChatClient::connect(&public)
            .await
            .unwrap()
            .open_stream(&token, &Default::default())
            .await
            .unwrap();
        let first = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, chat_proto::chat_v1::server_frame::Kind::Welcome(_)),
            "{first:?}"
        );
        held.push(stream);
    }
    let mut fifth = ChatClient::connect(&public)
        .await
        .unwrap()
        .open_stream(&token, &Default::default())
        .await
        .unwrap();
    let refused = match tokio::time::timeout(WAIT, fifth.next()).await.unwrap() {
        Some(Err(status)) => status,
        Some(Ok(frame)) => panic!("the fifth stream was served: {frame:?}"),
        None => panic!("the fifth stream ended without a status"),
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    drop(held);

    // Per connection: three calls open at once on one connection; a fourth waits for one of
    // them to end.
    let mut one = ChatClient::connect(&public).await.unwrap();
    let mut open = Vec::new();
    while open.len() < 3 {
        // Each one served (its Welcome): the streams dropped above may still count against the
        // device's four on the node for a moment, and a stream refused for that would free its
        // place on the connection.
        let mut stream = one.open_stream(&token, &Default::default()).await.unwrap();
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(_)) => open.push(stream),
            Some(Err(status)) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("{other:?}"),
        }
    }
    let no_cursors = Default::default();
    let mut fourth = Box::pin(one.open_stream(&token, &no_cursors));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), fourth.as_mut())
            .await
            .is_err(),
        "a fourth stream opened on a connection limited to three"
    );
    drop(open.pop());
    tokio::time::timeout(WAIT, fourth)
        .await
        .expect("the fourth stream never opened")
        .unwrap();
}
