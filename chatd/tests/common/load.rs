//! A steady load for cluster tests: a sender device sending round-robin to some chats, reader
//! devices following them live, and the check afterwards that nothing acknowledged was lost,
//! nothing duplicated, and every reader got every chat in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::{ChatClient, Device, DeviceEvent};

/// What the sender had acknowledged: per chat, (seq, payload) in ack order.
pub type Acked = Arc<Mutex<BTreeMap<u64, Vec<(u64, Vec<u8>)>>>>;
/// What a device received: per chat, the seqs in arrival order.
pub type Received = Arc<Mutex<BTreeMap<u64, Vec<u64>>>>;

/// Send round-robin to `chats`, one every `every`, until the returned flag is set; every send
/// is awaited until acknowledged (the device resends it across reconnects with its original
/// id). Answers the flag and what was acknowledged.
pub fn start_sender(device: Device, chats: Vec<u64>, every: Duration) -> (Arc<AtomicBool>, Acked) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let (stopped, acks) = (stop.clone(), acked.clone());
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let chat = chats[i % chats.len()];
            let payload = format!("chat {chat} send {i}").into_bytes();
            let ack = device
                .send(chat, payload.clone())
                .await
                .unwrap_or_else(|e| panic!("send {i} to chat {chat} refused: {e:?}"));
            acked
                .lock()
                .unwrap()
                .entry(chat)
                .or_default()
                .push((ack.seq, payload));
            i += 1;
            tokio::time::sleep(every).await;
        }
    });
    (stopped, acks)
}

/// Record every message `device` receives, and which nodes it was connected to.
pub fn start_reader(mut device: Device, received: Received, nodes: Arc<Mutex<Vec<u64>>>) {
    tokio::spawn(async move {
        while let Some(event) = device.next_event().await {
            match event {
                DeviceEvent::Message(m) => received
                    .lock()
                    .unwrap()
                    .entry(m.chat_id)
                    .or_default()
                    .push(m.seq),
                DeviceEvent::Connected { node_id, .. } => nodes.lock().unwrap().push(node_id),
                _ => {}
            }
        }
    });
}

/// Every message of `chat`, page by page (a page holds at most 1,000).
pub async fn whole_history(
    client: &mut ChatClient,
    chat: u64,
) -> Vec<chat_proto::chat_v1::Message> {
    let mut all: Vec<chat_proto::chat_v1::Message> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.seq);
        let page = client.history(chat, after, 0, 1000).await.unwrap().messages;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// After the sender has stopped: wait (up to `wait`) for every reader to catch up with what was
/// acknowledged, then check that each chat's history (read through `client`) holds every
/// acknowledged send once, at its acknowledged seq, and nothing else, and that each reader got
/// every chat's seqs 1..=last in order with no gap or duplicate. Answers the number of sends.
pub async fn check_delivered(
    client: &mut ChatClient,
    chats: &[u64],
    acked: &Acked,
    readers: &[Received],
    wait: Duration,
) -> usize {
    let acked = acked.lock().unwrap().clone();
    let last: BTreeMap<u64, u64> = chats
        .iter()
        .map(|c| {
            let top = acked
                .get(c)
                .map_or(0, |v| v.iter().map(|a| a.0).max().unwrap_or(0));
            (*c, top)
        })
        .collect();
    let deadline = Instant::now() + wait;
    for (i, got) in readers.iter().enumerate() {
        loop {
            let caught_up = {
                let got = got.lock().unwrap();
                last.iter()
                    .all(|(c, l)| got.get(c).and_then(|s| s.last()).copied().unwrap_or(0) >= *l)
            };
            if caught_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device {} did not catch up: {last:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    for &chat in chats {
        let history = whole_history(client, chat).await;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=last[&chat]).collect::<Vec<_>>(), "chat {chat}");
        let by_seq: BTreeMap<u64, &[u8]> = history
            .iter()
            .map(|m| (m.seq, m.payload.as_slice()))
            .collect();
        let ours = acked.get(&chat).cloned().unwrap_or_default();
        assert_eq!(
            ours.len() as u64,
            last[&chat],
            "chat {chat}: a send was duplicated"
        );
        for (seq, payload) in &ours {
            assert_eq!(by_seq[seq], payload.as_slice(), "chat {chat} seq {seq}");
        }
    }

    for (i, got) in readers.iter().enumerate() {
        let got = got.lock().unwrap();
        for &chat in chats {
            let seqs = got.get(&chat).cloned().unwrap_or_default();
            assert_eq!(
                seqs,
                (1..=last[&chat]).collect::<Vec<_>>(),
                "device {} in chat {chat}",
                i + 1
            );
        }
    }
    acked.values().map(Vec::len).sum()
}
