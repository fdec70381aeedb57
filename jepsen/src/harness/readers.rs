//! Device-stream readers: devices (several per reader account) that follow every chat over
//! `chat.v1.Chat/Connect`, from a random node, for a random while, then disconnect and connect
//! again (to another random node):
//! usually resuming from the cursors they hold, sometimes naming none ("everything I am owed",
//! which resumes from what the server recorded as delivered — possibly behind what the device
//! saw, so that is a new process for the checkers). They acknowledge and read at random.
//!
//! Each delivered message is a `poll` operation (`resumed_from` on a chat's first message after
//! a resume); each receipt frame a `receipt` operation, under a process per connection (a new
//! connection may land on a node whose replica is behind the last one).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::devices::Device;
use super::workload::Workload;
use crate::history::{OpType, Seen, Value, F};

/// Where a reader device stands when the workload ends: its process and cursors, from which
/// [`catch_up`] goes on.
pub struct ReaderEnd {
    pub process: u64,
    pub cursors: BTreeMap<u64, u64>,
}

/// Reader device `r` until `deadline`.
pub async fn run(
    w: Arc<Workload>,
    r: usize,
    reader: Device,
    n: u64,
    seed: u64,
    deadline: Instant,
) -> ReaderEnd {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x5eed_0000 + r as u64));
    let base = 2_000_000 + r as u64 * 10_000;
    let mut process = base;
    let mut connection = 0u64;
    let mut cursors: BTreeMap<u64, u64> = w.chats.iter().map(|&c| (c, 0)).collect();
    while Instant::now() < deadline {
        let node = rng.gen_range(1..=n);
        let resume = rng.gen_bool(0.8);
        if !resume {
            process += 1; // resuming from the server's record: a new observer
        }
        connection += 1;
        let until =
            (Instant::now() + Duration::from_millis(rng.gen_range(500..5000))).min(deadline);
        let session = Session {
            w: &w,
            node,
            process,
            receipts_process: 4_000_000 + r as u64 * 10_000 + connection,
            resume,
            reader: &reader,
        };
        session.follow(&mut cursors, until, None, &mut rng).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..200))).await;
    }
    ReaderEnd { process, cursors }
}

/// After the drains: reader device `r` resumes from where it stood until it holds each chat up
/// to `last[chat]` (the drains' last seq), reconnecting through failures until `timeout`. What
/// it gets is recorded like any poll, so a device that never receives a message shows in the
/// checkers (`devices`).
pub async fn catch_up(
    w: &Workload,
    r: usize,
    reader: &Device,
    mut end: ReaderEnd,
    last: &BTreeMap<u64, u64>,
    n: u64,
    timeout: Duration,
) {
    let mut rng = StdRng::seed_from_u64(0xca7c_0000 + r as u64);
    let deadline = Instant::now() + timeout;
    let caught_up = |c: &BTreeMap<u64, u64>| {
        last.iter()
            .all(|(chat, &l)| c.get(chat).copied().unwrap_or(0) >= l)
    };
    for attempt in 0u64.. {
        if caught_up(&end.cursors) || Instant::now() >= deadline {
            return;
        }
        let session = Session {
            w,
            node: (r as u64 + attempt) % n + 1,
            process: end.process,
            receipts_process: 5_000_000 + r as u64 * 10_000 + attempt,
            resume: true,
            reader,
        };
        session
            .follow(&mut end.cursors, deadline, Some(last), &mut rng)
            .await;
    }
}

struct Session<'a> {
    w: &'a Workload,
    node: u64,
    process: u64,
    receipts_process: u64,
    resume: bool,
    reader: &'a Device,
}

impl Session<'_> {
    fn ok(&self, process: u64, f: F, value: Value) {
        self.w.record(
            process,
            OpType::Invoke,
            f.clone(),
            Value::of_chat(value.chat),
            self.node,
            None,
        );
        self.w
            .record(process, OpType::Ok, f, value, self.node, None);
    }

    /// One connection until `until`, the stream fails, or (with `target`) every chat's cursor
    /// reached its target.
    async fn follow(
        &self,
        cursors: &mut BTreeMap<u64, u64>,
        until: Instant,
        target: Option<&BTreeMap<u64, u64>>,
        rng: &mut StdRng,
    ) {
        let reader = self.reader;
        let hello = pb::Hello {
            token: reader.token.clone(),
            cursors: if self.resume {
                cursors
                    .iter()
                    .map(|(&chat_id, &seq)| pb::Cursor { chat_id, seq })
                    .collect()
            } else {
                Vec::new()
            },
        };
        let Some((tx, mut frames)) = super::devices::connect(self.node, hello).await else {
            return;
        };
        // Chats whose first message on this connection has not come yet, with the cursor the
        // connection resumed from.
        let mut first: HashMap<u64, u64> = if self.resume {
            cursors.iter().map(|(&c, &s)| (c, s)).collect()
        } else {
            HashMap::new()
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let reached = target.is_some_and(|t| {
                t.iter()
                    .all(|(chat, &l)| cursors.get(chat).copied().unwrap_or(0) >= l)
            });
            if left.is_zero() || reached {
                return;
            }
            let frame = match tokio::time::timeout(left, frames.message()).await {
                Ok(Ok(Some(pb::ServerFrame { kind: Some(kind) }))) => kind,
                _ => return, // ended, failed or timed out: reconnect
            };
            match frame {
                server_frame::Kind::Message(m) => {
                    let chat = m.chat_id;
                    let value = Value {
                        chat,
                        messages: vec![Seen {
                            seq: m.seq,
                            id: m.client_msg_id.clone(),
                            ts: None,
                        }],
                        resumed_from: first.remove(&chat),
                        user: Some(reader.user),
                        device: Some(reader.label()),
                        ..Value::default()
                    };
                    self.ok(self.process, F::Poll, value);
                    let cursor = cursors.entry(chat).or_default();
                    *cursor = (*cursor).max(m.seq);
                    let kind = if rng.gen_bool(0.05) {
                        Some(client_frame::Kind::Ack(pb::AckFrame {
                            chat_id: chat,
                            up_to_seq: m.seq,
                        }))
                    } else if rng.gen_bool(0.02) {
                        Some(client_frame::Kind::Read(pb::AckFrame {
                            chat_id: chat,
                            up_to_seq: rng.gen_range(1..=m.seq),
                        }))
                    } else {
                        None
                    };
                    if let Some(kind) = kind {
                        let _ = tx.try_send(pb::ClientFrame { kind: Some(kind) });
                    }
                }
                server_frame::Kind::Receipt(rf) => {
                    let value = Value {
                        chat: rf.chat_id,
                        user: Some(rf.user_id),
                        delivered: Some(rf.delivered_up_to),
                        read: Some(rf.read_up_to),
                        ..Value::default()
                    };
                    self.ok(self.receipts_process, F::Receipt, value);
                }
                _ => {}
            }
        }
    }
}
