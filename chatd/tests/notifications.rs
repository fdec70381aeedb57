//! Offline notifications end to end: a real chatd process with the webhook sink pointed at a
//! real HTTP server in the test, which fails the first delivery. Devices with a stream get
//! nothing; the sender gets nothing; each offline device gets collapsed counts, never payloads;
//! the failed delivery is retried. And the log sink (the default) writes them to the log.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chat_client::{Device, DeviceOptions};
use common::{register, until_synced, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Receiver {
    calls: AtomicU32,
    notifications: Mutex<Vec<Value>>,
}

async fn webhook_server() -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route(
            "/push",
            post(
                |State(r): State<Arc<Receiver>>, body: axum::body::Bytes| async move {
                    if r.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        return StatusCode::SERVICE_UNAVAILABLE; // the first delivery fails
                    }
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    let list = body["notifications"].as_array().unwrap().clone();
                    r.notifications.lock().unwrap().extend(list);
                    StatusCode::OK
                },
            ),
        )
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/push"), receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_devices_get_collapsed_notifications_through_a_retried_webhook() {
    let (url, receiver) = webhook_server().await;
    let config = format!(
        "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n[notifications]\nsink = \"webhook\"\nwebhook_url = \"{url}\"\nflush_ms = 300\nfirst_backoff_ms = 50\n"
    );
    let cluster = Cluster::start_with(1, 2, &config);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (mut bob, bob_token) = register(&addr, "bob").await;
    let bob_user: u64 = bob_token.split('.').next().unwrap().parse().unwrap();
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    // Bob's device 2 is connected; his device 1 is not.
    let second = bob.link_device(2).await.unwrap();
    let mut online = Device::start(DeviceOptions::new(vec![addr.clone()], &second.token));
    until_synced(&mut online, WAIT).await;

    let a = Device::start(DeviceOptions::new(vec![addr.clone()], &alice_token));
    for i in 0..3 {
        a.send(chat, format!("secret text {i}").into_bytes())
            .await
            .unwrap();
    }

    // Collapsed: device 1's counts add up to the 3 messages, the last seq is 3.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = receiver.notifications.lock().unwrap().clone();
        let total: u64 = got.iter().map(|n| n["count"].as_u64().unwrap()).sum();
        if total >= 3 {
            break got;
        }
        assert!(Instant::now() < deadline, "notifications so far: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        receiver.calls.load(Ordering::SeqCst) >= 2,
        "the failed first delivery was not retried"
    );
    assert!(got.len() <= 3, "not collapsed: {got:?}");
    for n in &got {
        assert_eq!(n["device_id"], 1, "only the offline device: {n}");
        assert_eq!(n["chat_id"], chat);
        assert!(
            n.get("payload").is_none() && !n.to_string().contains("secret"),
            "{n}"
        );
    }
    assert_eq!(
        got.iter().map(|n| n["last_seq"].as_u64().unwrap()).max(),
        Some(3)
    );
    // Nothing for the sender: every notification is bob's.
    assert!(got.iter().all(|n| n["user_id"] == bob_user), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_sink_is_the_default() {
    // At its default level the sink writes at debug, which the test nodes' filter hides.
    let cluster = Cluster::start_with(
        1,
        2,
        "[notifications]\nflush_ms = 100\nlog_level = \"info\"\n",
    );
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let a = Device::start(DeviceOptions::new(vec![addr.clone()], &alice_token));
    a.send(chat, b"hello".to_vec()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !cluster.log_of(1).contains("offline notification") {
        assert!(Instant::now() < deadline, "no notification in the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cluster.log_of(1);
    let line = log
        .lines()
        .find(|l| l.contains("offline notification"))
        .unwrap();
    assert!(
        line.contains(&format!("chat={chat}")) && line.contains("count=1"),
        "{line}"
    );
}
