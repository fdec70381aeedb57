//! The Prometheus endpoint scraped under load, as a scraper would: per-call gRPC counts by
//! method and code with their time histograms, rate-limit refusals, and per partition the Raft
//! role and lags, the hub's and the projector's lag.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::{Device, DeviceOptions};
use common::{register, scrape, Cluster};

const WAIT: Duration = Duration::from_secs(30);

/// The value of the sample whose line starts with `series` (name and labels as rendered).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_page_under_load() {
    let port = common::free_port();
    let metrics = format!("127.0.0.1:{port}");
    // A low send rate, so that a burst is partly refused.
    let config =
        format!("metrics_listen = \"{metrics}\"\n[chat]\nsends_per_second = 20\nsend_burst = 20\n");
    let cluster = Cluster::start_with(1, 2, &config);
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();

    let (mut sender, token) = register(&addr, "sender").await;
    let (mut reader, reader_token) = register(&addr, "reader").await;
    let chat = sender
        .create_group("g", "g", &["reader".into()])
        .await
        .unwrap()
        .chat_id;
    let device = Device::start(DeviceOptions::new(vec![addr.clone()], &token));
    let _reading = Device::start(DeviceOptions::new(vec![addr.clone()], &reader_token));

    // A burst of 60 sends at once: the first 20 or so go through, the rest are refused.
    let sends = (0..60).map(|i| device.send(chat, format!("m{i}").into_bytes()));
    let results = futures::future::join_all(sends).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    let taken = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(refused + taken, 60, "{results:?}");
    assert!(refused > 0 && taken > 0, "taken {taken}, refused {refused}");

    // Three history reads, and one of a chat that does not exist.
    for _ in 0..3 {
        reader.history(chat, 0, 0, 100).await.unwrap();
    }
    let missing = reader
        .history(chat + 1_000_000, 0, 0, 100)
        .await
        .unwrap_err();
    let missing_code = format!("{:?}", missing.code());

    // Every series the Grafana dashboard in docs/ asks for.
    let dashboard = include_str!("../../docs/grafana/chatd.json");
    let mut asked: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("chatd_"))
        .collect();
    asked.sort_unstable();
    asked.dedup();

    // The page as a scraper sees it, once the gauges (published every few seconds) show the
    // partitions caught up and every series the dashboard asks for is there.
    let history = "method=\"/chat.v1.Chat/History\"";
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let page = scrape(&metrics);
        let missing: Vec<&&str> = asked
            .iter()
            .filter(|name| !page.lines().any(|l| l.starts_with(**name)))
            .collect();
        let caught_up = (0..2).all(|p| {
            sample(&page, &format!("chatd_hub_lag_events{{partition=\"{p}\"}}")) == Some(0.0)
                && sample(
                    &page,
                    &format!(
                        "chatd_projection_lag_events{{partition=\"{p}\",projection=\"chats\"}}"
                    ),
                ) == Some(0.0)
        });
        if caught_up && missing.is_empty() {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard series missing: {missing:?}; {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    assert_eq!(
        sample(
            &page,
            &format!("chatd_grpc_requests_total{{{history},code=\"OK\"}}")
        ),
        Some(3.0),
        "{page}"
    );
    let failed = page
        .lines()
        .filter(|l| l.starts_with("chatd_grpc_requests_total") && l.contains(history))
        .find(|l| !l.contains("code=\"OK\""))
        .unwrap_or_else(|| panic!("no failed History call ({missing_code}) counted: {page}"));
    assert!(failed.ends_with(" 1"), "{failed}");
    assert_eq!(
        sample(
            &page,
            &format!("chatd_grpc_request_seconds_bucket{{{history},le=\"+Inf\"}}")
        ),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "chatd_sends_rate_limited_total"),
        Some(refused as f64),
        "{page}"
    );
    // The node leads both partitions and the metadata group, and has applied what it appended.
    for p in ["0", "1", "meta"] {
        let role = format!("chatd_raft_role{{partition=\"{p}\"}}");
        assert_eq!(sample(&page, &role), Some(2.0), "{role}: {page}");
        let lag = format!("chatd_raft_apply_lag_entries{{partition=\"{p}\"}}");
        assert!(sample(&page, &lag).is_some(), "{lag}: {page}");
        let since = format!("chatd_raft_entries_since_snapshot{{partition=\"{p}\"}}");
        assert!(sample(&page, &since).is_some(), "{since}: {page}");
    }

    // The Grafana dashboard in docs/ asks only for series this page has (checked in the wait
    // above: the memory gauges are published every 10 s).
    assert!(asked.len() > 10, "{asked:?}");

    // Calls are followed to their end: the History calls ended with their codes, and both
    // devices' streams are open, on connections that are open.
    assert_eq!(
        sample(
            &page,
            &format!("chatd_grpc_calls_ended_total{{{history},code=\"OK\"}}")
        ),
        Some(3.0),
        "{page}"
    );
    let connect = "chatd_grpc_open_calls{method=\"/chat.v1.Chat/Connect\"}";
    assert_eq!(sample(&page, connect), Some(2.0), "{page}");
    let connections = sample(&page, "chatd_connections_open").unwrap();
    assert!(connections >= 2.0, "{page}");
    // A third stream, then its client vanishes (its connection cut, as a phone that loses its
    // network: no end of stream is ever sent): it is open, then ended (CANCELLED). The client
    // goes through a relay here so the test can cut the connection under it.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let server = addr.clone();
    let cut = tokio::spawn(async move {
        let (mut client, _) = relay.accept().await.unwrap();
        let mut upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    let _stream = chat_client::ChatClient::connect(&relay_addr)
        .await
        .unwrap()
        .open_stream(&reader_token, &std::collections::BTreeMap::new())
        .await
        .unwrap();
    let until = |want: f64, what: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let page = scrape(&metrics);
            if sample(&page, connect) == Some(want) {
                return page;
            }
            assert!(Instant::now() < deadline, "{what}: {page}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until(3.0, "a third stream open");
    cut.abort();
    let _ = cut.await;
    let page = until(2.0, "the third stream ended");
    let ended = "chatd_grpc_calls_ended_total{method=\"/chat.v1.Chat/Connect\",code=\"CANCELLED\"}";
    assert_eq!(sample(&page, ended), Some(1.0), "{page}");
    assert!(
        sample(
            &page,
            "chatd_grpc_call_seconds_count{method=\"/chat.v1.Chat/Connect\"}"
        ) == Some(1.0),
        "{page}"
    );
}
