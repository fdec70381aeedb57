//! Offline notifications: for every message, the member devices (the sender's excluded) that
//! have no stream open anywhere in the cluster get a collapsed notification — per device and
//! chat, a count and the last seq, never the payload — handed to the configured [`PushSink`].
//!
//! Only the node that leads the message's partition notifies (every node sees every message;
//! one of them must speak). Messages are counted per (user, chat) as the hub sees them and
//! flushed every `flush_interval`: the flush asks the cluster which devices are online (one
//! presence round for all pending users) and hands the sink one batch. A sink that is slow or
//! down delays only notifications: batches queue behind it up to a bound, then the oldest are
//! dropped with a warning. Around a leader change a notification can be lost or doubled — they
//! are hints to open the app, not data; the messages themselves are in the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chat_log::LogNode;
use chat_model::ids::{ChatId, UserId};
use chat_model::StateReader;
use chat_proto::chat_v1 as pb;
use tokio::sync::mpsc;

pub mod sink;

pub use sink::{LogSink, Notification, PushSink, WebhookConfig, WebhookSink};

use crate::hub::{Hub, Notice};
use crate::presence::ClusterPresence;

/// Messages waiting to be counted, and batches waiting for the sink.
const MESSAGE_QUEUE: usize = 16_384;
const BATCH_QUEUE: usize = 64;

/// Start the notifier: the hub hands it every message; it flushes every `flush_interval`.
pub fn start(
    node: Arc<LogNode>,
    hub: Arc<Hub>,
    presence: Arc<ClusterPresence>,
    sink: Arc<dyn PushSink>,
    flush_interval: Duration,
) {
    let (tx, rx) = mpsc::channel(MESSAGE_QUEUE);
    hub.set_notifier(tx);
    let (batches, batch_rx) = mpsc::channel(BATCH_QUEUE);
    tokio::spawn(deliver(sink, batch_rx));
    let notifier = Notifier {
        reads: StateReader::new(node.clone()),
        node,
        presence,
        batches,
        pending: BTreeMap::new(),
    };
    tokio::spawn(notifier.run(rx, flush_interval));
}

struct Notifier {
    node: Arc<LogNode>,
    reads: StateReader,
    presence: Arc<ClusterPresence>,
    batches: mpsc::Sender<Vec<Notification>>,
    /// (user, chat) → (messages, last seq) since the last flush.
    pending: BTreeMap<(UserId, ChatId), (u64, u64)>,
}

impl Notifier {
    async fn run(mut self, mut messages: mpsc::Receiver<Notice>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                m = messages.recv() => match m {
                    Some((m, members)) => self.count(&m, &members),
                    None => return,
                },
                _ = tick.tick() => self.flush().await,
            }
        }
    }

    fn count(&mut self, m: &pb::Message, members: &[UserId]) {
        let chat = ChatId(m.chat_id);
        if !self.node.is_leader(self.reads.partition(chat.0)) {
            return;
        }
        for &user in members {
            if user.0 == m.sender_user {
                continue;
            }
            let entry = self.pending.entry((user, chat)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(m.seq);
        }
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut users: Vec<UserId> = pending.keys().map(|(u, _)| *u).collect();
        users.dedup();
        let online: HashMap<UserId, _> = users
            .iter()
            .copied()
            .zip(self.presence.lookup(&users).await)
            .collect();
        let mut batch = Vec::new();
        for ((user, chat), (count, last_seq)) in pending {
            let devices = match self.reads.devices(user).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(%user, error = %e, "reading devices for notifications");
                    continue;
                }
            };
            for (device, record) in devices {
                let connected = online
                    .get(&user)
                    .is_some_and(|p| p.devices.contains(&device.0));
                if record.revoked || connected {
                    continue;
                }
                batch.push(Notification {
                    user_id: user.0,
                    device_id: device.0,
                    chat_id: chat.0,
                    count,
                    last_seq,
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(batch)) = self.batches.try_send(batch) {
            tracing::warn!(
                dropped = batch.len(),
                "the push sink is behind; notifications dropped"
            );
        }
    }
}

async fn deliver(sink: Arc<dyn PushSink>, mut batches: mpsc::Receiver<Vec<Notification>>) {
    while let Some(batch) = batches.recv().await {
        let n = batch.len();
        match sink.deliver(batch).await {
            Ok(()) => {
                metrics::counter!("chatd_notifications_delivered_total", "sink" => sink.name())
                    .increment(n as u64)
            }
            Err(e) => {
                metrics::counter!("chatd_notifications_failed_total", "sink" => sink.name())
                    .increment(n as u64);
                tracing::error!(sink = sink.name(), notifications = n, error = %e,
                    "notifications not delivered");
            }
        }
    }
}
