//! The hub: tails every partition's committed events and offers each one to the device streams
//! on this node it concerns, without ever waiting on a device.
//!
//! One tailer task per partition follows the log from where it stood when the gateway started,
//! wherever the partition is held (`chat_log::Replicas::tail`: this node's replica, or a
//! remote one's `Tail` stream, resumed elsewhere when it ends); devices that connect later read
//! what came before from the log themselves (their backlog). For each chat event the hub finds
//! the chat's members (a moka cache over the member keys, read from a replica that has applied
//! the event, and dropped whenever the chat's membership changes — such events come through the
//! same partition, in order) and `try_send`s a [`Push`] to each connected session of those
//! users. A full session queue is never waited on: the session is marked lagged and later
//! re-reads from the log what it missed (see `session.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_log::{LogNode, LogOffset, PartitionId, Replicas};
use chat_model::ids::{ChatId, ChatSeq, DeviceId, UserId};
use chat_model::{ChatEventAt, StateReader};
use chat_proto::chat_v1::{self as pb, chat_event};
use futures::StreamExt;
use moka::sync::Cache;
use tokio::sync::{mpsc, Notify};

use crate::registry::StreamChange;

/// What the hub hands a session.
#[derive(Debug, Clone)]
pub enum Push {
    Message(Arc<pb::Message>),
    /// The user became a member; messages after `after` are theirs.
    Joined {
        chat: ChatId,
        after: ChatSeq,
    },
    Left {
        chat: ChatId,
    },
    Receipt(pb::ReceiptAdvanced),
    Revoked {
        device: DeviceId,
    },
    /// The user's ticks in a chat moved.
    Ticks(pb::TickFrame),
    /// Another member started or stopped typing (ephemeral: see [`Hub::offer_ephemeral`]).
    Typing(pb::TypingNotice),
    /// A watched user came online or went offline (ephemeral).
    Presence(pb::PresenceFrame),
    /// The user deleted messages for itself (on one of its devices).
    Hidden(pb::MessagesHidden),
}

/// The hub's side of one connected device stream.
pub struct SessionHandle {
    pub id: u64,
    pub user: UserId,
    pub device: DeviceId,
    queue: mpsc::Sender<Push>,
    lagged: AtomicBool,
    /// Wakes the session when it has been marked lagged.
    pub wake: Notify,
    /// The users whose presence this stream watches (see [`Hub::watch_presence`]).
    watching: std::sync::Mutex<Vec<UserId>>,
}

impl SessionHandle {
    /// Queue `push`, or mark the session lagged if its queue is full (or it is closing).
    fn offer(&self, push: Push) {
        if self.queue.try_send(push).is_err() && !self.lagged.swap(true, Ordering::AcqRel) {
            metrics::counter!("chatd_device_queue_overflows_total").increment(1);
            tracing::info!(user = %self.user, device = %self.device,
                "device stream lagged: its queue is full, it will catch up from the log");
            self.wake.notify_one();
        }
    }

    /// Clear the lagged mark; true if it was set (the session must catch up from the log).
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
}

/// Which devices of a user have a stream open, and when its last stream closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    pub last_seen_ms: u64,
    pub devices: std::collections::BTreeSet<u64>,
}

impl Presence {
    pub fn online(&self) -> bool {
        !self.devices.is_empty()
    }

    /// Merge another node's answer.
    pub fn merge(&mut self, other: Presence) {
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.devices.extend(other.devices);
    }
}

/// Streams one device may hold open on one node at once.
pub const MAX_STREAMS_PER_DEVICE: usize = 4;

/// Live presence and delivery fan-out for the device streams of one node.
pub struct Hub {
    reads: StateReader,
    sessions: RwLock<HashMap<UserId, Vec<Arc<SessionHandle>>>>,
    /// Per user, the streams here that watch its presence.
    presence_watchers: RwLock<HashMap<UserId, Vec<Arc<SessionHandle>>>>,
    members: Cache<ChatId, Arc<Vec<UserId>>>,
    /// When each user's last stream on this node closed (ms since the epoch).
    last_seen: Cache<UserId, u64>,
    next_id: AtomicU64,
    queue_capacity: usize,
    notifier: std::sync::OnceLock<mpsc::Sender<Notice>>,
    /// Where streams opening and closing are reported (the registry's announcer).
    announcer: std::sync::OnceLock<mpsc::UnboundedSender<StreamChange>>,
    /// How many partitions the hub follows yet (their tails find where to start once a replica
    /// answers), of how many.
    following: tokio::sync::watch::Sender<u32>,
    /// How many partitions' tick changes reach the hub yet (their own projector's, or a holder's
    /// stream once open; see `ticks.rs`).
    ticks_following: tokio::sync::watch::Sender<u32>,
    partitions: u32,
    /// Per partition, the offset of the last event handed out (set before it is offered).
    dispatched: Vec<AtomicU64>,
}

/// A message for the offline notifier, with the chat's members when it was sent.
pub type Notice = (Arc<pb::Message>, Arc<Vec<UserId>>);

impl Hub {
    /// Start tailing every partition of `node` from its current end, with at most
    /// `member_cache_bytes` of member lists cached.
    pub fn start(node: Arc<LogNode>, queue_capacity: usize, member_cache_bytes: u64) -> Arc<Hub> {
        // Shown as 0 until the first overflow, rather than absent.
        metrics::counter!("chatd_device_queue_overflows_total").increment(0);
        let hub = Arc::new(Hub {
            reads: StateReader::new(node.clone()),
            sessions: RwLock::default(),
            presence_watchers: RwLock::default(),
            // Weighed in bytes, not entries: a big group's list is thousands of times a direct
            // chat's, and a count cap would let a node's memory follow its groups' sizes.
            members: Cache::builder()
                .max_capacity(member_cache_bytes)
                .weigher(|_, members: &Arc<Vec<UserId>>| {
                    u32::try_from(64 + members.len() * std::mem::size_of::<UserId>())
                        .unwrap_or(u32::MAX)
                })
                .build(),
            last_seen: last_seen_cache(),
            next_id: AtomicU64::new(1),
            queue_capacity,
            notifier: std::sync::OnceLock::new(),
            announcer: std::sync::OnceLock::new(),
            following: tokio::sync::watch::Sender::new(0),
            ticks_following: tokio::sync::watch::Sender::new(0),
            partitions: node.partition_count(),
            dispatched: (0..node.partition_count())
                .map(|_| AtomicU64::new(0))
                .collect(),
        });
        // Every partition, wherever it is held: a device here may be in any chat.
        let replicas = Replicas::new(node.clone());
        for p in 0..node.partition_count() {
            tokio::spawn(tail(hub.clone(), replicas.clone(), PartitionId(p)));
        }
        tokio::spawn(publish_sizes(Arc::downgrade(&hub), Arc::downgrade(&node)));
        hub
    }

    /// Whether the hub follows every partition — its events and its tick changes — waiting up
    /// to `within` for it. A session must not read its backlog before: events between the
    /// backlog and a tail's start would reach it neither way, and tick changes announced before
    /// would reach it only through the Inbox.
    pub async fn until_following(&self, within: Duration) -> bool {
        let mut following = self.following.subscribe();
        let mut ticks = self.ticks_following.subscribe();
        let all = self.partitions;
        let both = async {
            following.wait_for(|n| *n >= all).await.is_ok()
                && ticks.wait_for(|n| *n >= all).await.is_ok()
        };
        tokio::time::timeout(within, both).await.unwrap_or(false)
    }

    /// One more partition's tick changes reach the hub (called once per partition, the first
    /// time; see `ticks.rs`).
    pub fn ticks_followed(&self) {
        self.ticks_following.send_modify(|n| *n += 1);
    }

    /// The offset of the last event of `p` the hub has offered to sessions. A session that
    /// reads its backlog at this offset or later (a floor) after registering misses nothing:
    /// what was offered before it registered is in what it reads, whichever replica answers.
    pub fn dispatched(&self, p: PartitionId) -> LogOffset {
        self.dispatched
            .get(p.0 as usize)
            .map_or(LogOffset(0), |o| LogOffset(o.load(Ordering::SeqCst)))
    }

    /// Register a device stream; it receives pushes until [`Hub::unregister`].
    /// Register a stream of `device`; RESOURCE_EXHAUSTED if the device already has
    /// [`MAX_STREAMS_PER_DEVICE`] on this node (one is what a device needs; a few cover a
    /// reconnect racing the old stream's close).
    pub fn register(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<(Arc<SessionHandle>, mpsc::Receiver<Push>), tonic::Status> {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let handle = Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            device,
            queue: tx,
            lagged: AtomicBool::new(false),
            wake: Notify::new(),
            watching: std::sync::Mutex::default(),
        });
        let mut sessions = self.sessions.write().expect("sessions lock");
        let list = sessions.entry(user).or_default();
        let open = list.iter().filter(|s| s.device == device).count();
        if open >= MAX_STREAMS_PER_DEVICE {
            metrics::counter!("chatd_device_streams_refused_total").increment(1);
            return Err(tonic::Status::resource_exhausted(format!(
                "device {device} of user {user} already has {open} streams open on this node"
            )));
        }
        let first_of_device = open == 0;
        list.push(handle.clone());
        // Under the lock, so the announcer hears of a device's streams in the order they change.
        if first_of_device {
            self.announce(user, device, true);
        }
        drop(sessions);
        Ok((handle, rx))
    }

    /// Offer `handle` the presence changes of `users` from now on (until it unregisters).
    pub fn watch_presence(&self, handle: &Arc<SessionHandle>, users: &[UserId]) {
        let mut watching = handle.watching.lock().expect("watching lock");
        let mut watchers = self.presence_watchers.write().expect("watchers lock");
        for &user in users {
            if watching.contains(&user) {
                continue;
            }
            watching.push(user);
            watchers.entry(user).or_default().push(handle.clone());
        }
    }

    /// Offer a presence change to the streams here that watch its user.
    pub fn offer_presence(&self, frame: &pb::PresenceFrame) {
        let watchers = self.presence_watchers.read().expect("watchers lock");
        for s in watchers.get(&UserId(frame.user_id)).into_iter().flatten() {
            let _ = s.queue.try_send(Push::Presence(*frame));
        }
    }

    pub fn unregister(&self, handle: &SessionHandle) {
        let watched = std::mem::take(&mut *handle.watching.lock().expect("watching lock"));
        if !watched.is_empty() {
            let mut watchers = self.presence_watchers.write().expect("watchers lock");
            for user in watched {
                if let Some(list) = watchers.get_mut(&user) {
                    list.retain(|s| s.id != handle.id);
                    if list.is_empty() {
                        watchers.remove(&user);
                    }
                }
            }
        }
        let mut sessions = self.sessions.write().expect("sessions lock");
        if let Some(list) = sessions.get_mut(&handle.user) {
            list.retain(|s| s.id != handle.id);
            if !list.iter().any(|s| s.device == handle.device) {
                self.announce(handle.user, handle.device, false);
            }
            if list.is_empty() {
                sessions.remove(&handle.user);
                self.last_seen.insert(handle.user, now_ms());
            }
        }
    }

    /// Whether `user` has a stream on this node, and when its last one closed.
    pub fn presence(&self, user: UserId) -> Presence {
        let devices = self
            .sessions
            .read()
            .expect("sessions lock")
            .get(&user)
            .map(|list| list.iter().map(|s| s.device.0).collect())
            .unwrap_or_default();
        Presence {
            last_seen_ms: self.last_seen.get(&user).unwrap_or(0),
            devices,
        }
    }

    /// Report streams opening and closing here from now on.
    pub fn set_announcer(&self, announcer: mpsc::UnboundedSender<StreamChange>) {
        let _ = self.announcer.set(announcer);
    }

    fn announce(&self, user: UserId, device: DeviceId, open: bool) {
        if let Some(announcer) = self.announcer.get() {
            let _ = announcer.send(StreamChange { user, device, open });
        }
    }

    /// Every (user, device) with a stream on this node.
    pub fn streams(&self) -> Vec<(UserId, DeviceId)> {
        let sessions = self.sessions.read().expect("sessions lock");
        let mut streams: Vec<(UserId, DeviceId)> = sessions
            .iter()
            .flat_map(|(user, list)| list.iter().map(move |s| (*user, s.device)))
            .collect();
        streams.sort_unstable();
        streams.dedup();
        streams
    }

    /// Hand message events to the offline notifier from now on.
    pub fn set_notifier(&self, notifier: mpsc::Sender<Notice>) {
        let _ = self.notifier.set(notifier);
    }

    /// Connected device streams on this node.
    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .expect("sessions lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Offer `push` to `users`' streams where their queues have room: for what is not in the
    /// log (typing), a full queue drops it rather than send the stream to catch up.
    pub fn offer_ephemeral(&self, users: &[UserId], push: &Push) {
        let sessions = self.sessions.read().expect("sessions lock");
        for user in users {
            for s in sessions.get(user).into_iter().flatten() {
                let _ = s.queue.try_send(push.clone());
            }
        }
    }

    fn offer_to_users(&self, users: &[UserId], push: &Push) {
        let sessions = self.sessions.read().expect("sessions lock");
        for user in users {
            for s in sessions.get(user).into_iter().flatten() {
                s.offer(push.clone());
            }
        }
    }

    /// Offer a tick change to `user`'s streams.
    pub fn push_ticks(&self, user: UserId, chat: ChatId, delivered: ChatSeq, read: ChatSeq) {
        let push = Push::Ticks(pb::TickFrame {
            chat_id: chat.0,
            delivered_up_to: delivered.0,
            read_up_to: read.0,
        });
        self.offer_to_users(&[user], &push);
    }

    /// The members of `chat` as of offset `at` of its partition `p` (cached; dropped on
    /// membership events). Only the partition's tailer calls it, so a miss read here is never
    /// raced by the membership event that would drop it.
    async fn chat_members(&self, p: PartitionId, at: LogOffset, chat: ChatId) -> Arc<Vec<UserId>> {
        if let Some(members) = self.members.get(&chat) {
            return members;
        }
        let members = match self.reads.fresh_at(p, at).members(chat).await {
            Ok(members) => Arc::new(members),
            Err(e) => {
                // Not cached: the next message asks again. Devices of the chat miss this push
                // and read the message from the log at their next catch-up.
                tracing::error!(%chat, error = %e, "reading chat members");
                return Arc::new(Vec::new());
            }
        };
        self.members.insert(chat, members.clone());
        members
    }

    /// Route one committed chat event of partition `p`.
    async fn dispatch(&self, p: PartitionId, event: ChatEventAt) {
        match event.kind {
            chat_event::Kind::Message(m) => {
                let chat = ChatId(m.chat_id);
                let members = self.chat_members(p, event.offset, chat).await;
                let m = Arc::new(m);
                self.offer_to_users(&members, &Push::Message(m.clone()));
                if let Some(notifier) = self.notifier.get() {
                    if notifier.try_send((m, members)).is_err() {
                        tracing::warn!(%chat, "offline notifier is behind; a notification is dropped");
                    }
                }
            }
            chat_event::Kind::ChatCreated(c) => {
                let chat = ChatId(c.chat_id);
                self.members.invalidate(&chat);
                let users: Vec<UserId> = c.members.iter().map(|&u| UserId(u)).collect();
                self.offer_to_users(
                    &users,
                    &Push::Joined {
                        chat,
                        after: ChatSeq::ZERO,
                    },
                );
            }
            chat_event::Kind::MembersChanged(c) => {
                let chat = ChatId(c.chat_id);
                self.members.invalidate(&chat);
                let added: Vec<UserId> = c.added.iter().map(|&u| UserId(u)).collect();
                let removed: Vec<UserId> = c.removed.iter().map(|&u| UserId(u)).collect();
                let after = ChatSeq(c.last_seq);
                self.offer_to_users(&added, &Push::Joined { chat, after });
                self.offer_to_users(&removed, &Push::Left { chat });
            }
            chat_event::Kind::ReceiptAdvanced(r) => {
                // To the member's own devices only (their unread counts stay in step). What it
                // means to the others reaches them as ticks, and only those whose messages it
                // covers (see chat-projector's `chats`): a frame per member to every member
                // would make a group's read receipts cost members².
                self.offer_to_users(&[UserId(r.user_id)], &Push::Receipt(r));
            }
            chat_event::Kind::DeviceRevoked(d) => {
                let push = Push::Revoked {
                    device: DeviceId(d.device_id),
                };
                self.offer_to_users(&[UserId(d.user_id)], &push);
            }
            chat_event::Kind::MessagesHidden(h) => {
                self.offer_to_users(&[UserId(h.user)], &Push::Hidden(h));
            }
            chat_event::Kind::UserRegistered(_)
            | chat_event::Kind::MediaReleased(_)
            | chat_event::Kind::UserDeleted(_)
            | chat_event::Kind::DeviceAdded(_)
            | chat_event::Kind::MessagesExpired(_)
            | chat_event::Kind::ChatListChanged(_)
            | chat_event::Kind::ChatUpdated(_)
            | chat_event::Kind::PresenceUpdated(_) => {}
        }
    }
}

/// Follow partition `p` from its current end, wherever it is held, and dispatch its chat
/// events. Ends when the node stops.
async fn tail(hub: Arc<Hub>, replicas: Replicas, p: PartitionId) {
    // Where the partition ends now, as soon as a replica answers.
    let from = loop {
        match replicas.read_events(p, LogOffset(u64::MAX), 1).await {
            Ok((_, last)) => break last.next(),
            Err(e) => {
                if replicas.node().is_stopped() {
                    return;
                }
                tracing::debug!(%p, error = %e, "finding where to tail from; again shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut events = std::pin::pin!(replicas.tail(p, from));
    hub.following.send_modify(|n| *n += 1);
    while let Some(event) = events.next().await {
        if let Some(last) = hub.dispatched.get(p.0 as usize) {
            last.store(event.offset, Ordering::SeqCst);
        }
        match ChatEventAt::decode(&event) {
            Ok(Some(chat_event)) => hub.dispatch(p, chat_event).await,
            Ok(None) => {}
            Err(e) => tracing::error!(%p, error = %e, "skipped by the hub"),
        }
    }
}

/// When users were last seen (ms since the epoch): at most a million, each kept 30 days. The
/// hub's (its own streams) and the registry's (its users' streams anywhere) alike.
pub(crate) fn last_seen_cache() -> Cache<UserId, u64> {
    Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(Duration::from_secs(30 * 24 * 3600))
        .build()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Every few seconds, what the hub's caches hold (`chatd_member_cache_bytes`,
/// `chatd_last_seen_entries`) and how far its pushes are behind each partition this node holds
/// (`chatd_hub_lag_events`), until the hub or the node is gone. Weak handles: the node's
/// storage closes when its last handle goes.
async fn publish_sizes(hub: std::sync::Weak<Hub>, node: std::sync::Weak<LogNode>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let (Some(hub), Some(node)) = (hub.upgrade(), node.upgrade()) else {
            return;
        };
        metrics::gauge!("chatd_member_cache_bytes").set(hub.members.weighted_size() as f64);
        metrics::gauge!("chatd_last_seen_entries").set(hub.last_seen.entry_count() as f64);
        for p in node.hosted() {
            let Ok(last) = node.last_offset(p) else {
                continue;
            };
            let lag = last.0.saturating_sub(hub.dispatched(p).0);
            metrics::gauge!("chatd_hub_lag_events", "partition" => p.0.to_string()).set(lag as f64);
        }
    }
}
