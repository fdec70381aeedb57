//! One device stream (`chat.v1.Chat/Connect`): authenticate, send the backlog, then live.
//!
//! The session keeps, per chat, the next seq its device must receive, and only ever emits that
//! seq. Everything else follows from that one rule:
//! - the backlog is a catch-up read of each chat from the device's cursor;
//! - a live message below the cursor is a duplicate (already sent from the backlog) and skipped;
//! - a live message above it means something was missed (the queue overflowed, or the message
//!   arrived before the event that told us about the chat), so the gap is read from the log first;
//! - a lagged session (the hub dropped pushes because its queue was full) re-reads its chat list
//!   and every chat from its cursor.
//!
//! So a device sees each chat in order with no gap and no duplicate, and a slow device costs the
//! hub nothing: it waits on its own stream, then catches up from the log (the source of truth).
//!
//! That waiting is the delivery half's alone ([`Deliveries`]). The device's own frames are read
//! by the other half ([`DeviceFrames`]) in the same task, and its answers (send acks, pongs,
//! errors) go out on a control queue ahead of the data (`outbound.rs`): a member of a busy group
//! gets its acks in the time the commit took, not after the deliveries queued before them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::ids::{ChatId, ChatSeq};
use chat_model::reads::PageEnd;
use chat_proto::chat_v1::{self as pb, client_frame, server_frame, ReceiptKind};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::auth::{authenticate, Device};
use crate::gateway::{storage, Gateway};
use crate::hub::{Push, SessionHandle};
use crate::lanes::SendLanes;
use crate::outbound::Outbound;
use crate::presence_push;
use crate::typing::Typing;

/// Messages read from the log per catch-up page.
const CATCH_UP_PAGE: u32 = 256;
/// The largest cursor a device may name: seqs are dense from 1, so no chat comes near it, and
/// the arithmetic on cursors (the next seq, the one before) never overflows.
const MAX_CURSOR: u64 = 1 << 62;
/// How long a new stream waits for its node's hub to follow every partition (at start, until
/// a replica of each answers).
const FOLLOW_WAIT: Duration = Duration::from_secs(10);

/// Serve one stream until the device leaves, the stream fails, or the device is revoked.
pub async fn serve(gw: Arc<Gateway>, inbound: Streaming<pb::ClientFrame>, out: Outbound) {
    // The stream's span: what it logs carries the stream's id, and its user and device once
    // the Hello has named them.
    let span = tracing::info_span!(
        "device_stream",
        stream = STREAM_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        user = tracing::field::Empty,
        device = tracing::field::Empty,
    );
    async move {
        if let Err(status) = run(gw, inbound, &out).await {
            tracing::debug!(code = ?status.code(), message = status.message(), "device stream ended");
            out.end(status).await;
        }
    }
    .instrument(span)
    .await
}

/// Ids of the device streams this process has served, for their log spans.
static STREAM_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Hello, then two halves side by side until either ends: [`Deliveries`] (the backlog, then
/// live pushes) and [`DeviceFrames`] (what the device sends). They share only the outbound
/// queues, so a device whose connection is full of deliveries still has its frames read, its
/// sends proposed and its acks and pongs answered.
async fn run(
    gw: Arc<Gateway>,
    mut inbound: Streaming<pb::ClientFrame>,
    out: &Outbound,
) -> Result<(), Status> {
    let hello = match tokio::time::timeout(gw.config.hello_timeout, inbound.next()).await {
        Err(_) => return Err(Status::deadline_exceeded("no Hello frame in time")),
        Ok(None) => return Ok(()),
        Ok(Some(Err(status))) => return Err(status),
        Ok(Some(Ok(pb::ClientFrame {
            kind: Some(client_frame::Kind::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => return Err(Status::unauthenticated("the first frame must be Hello")),
    };
    let me = authenticate(&gw, &hello.token).await?;
    let span = tracing::Span::current();
    span.record("user", me.user.0);
    span.record("device", me.device.0);
    // Register before reading the backlog, with the hub following every partition, so nothing
    // committed from now on can be missed.
    if !gw.hub.until_following(FOLLOW_WAIT).await {
        return Err(Status::unavailable(
            "this node does not follow every partition yet; try again or another node",
        ));
    }
    let (handle, pushes) = gw.hub.register(me.user, me.device)?;
    let welcome = server_frame::Kind::Welcome(pb::Welcome {
        user_id: me.user.0,
        device_id: me.device.0,
        node_id: gw.sequencer.node().node_id(),
    });
    let mut deliveries = Deliveries {
        gw: gw.clone(),
        me,
        handle,
        out: out.clone(),
        chats: BTreeMap::new(),
        needs_recovery: false,
    };
    let mut frames = DeviceFrames::new(gw, me, out.clone(), deliveries.handle.clone());
    // The answer to Hello, so on the control queue: it is the stream's first frame whatever
    // comes after it on either queue.
    out.control(welcome).await?;
    let gw = deliveries.gw.clone();
    tokio::select! {
        ended = deliveries.run(&hello.cursors, pushes) => ended,
        ended = frames.run(inbound) => ended,
        ended = still_allowed(&gw, &hello.token) => ended,
        () = gw.until_closing() => Err(Status::unavailable(
            "this node is shutting down; resume on another node",
        )),
    }
}

/// Check the device's token again every revocation bound for as long as the stream is open;
/// ends the stream when it is refused (revoked: UNAUTHENTICATED) or cannot be confirmed (this
/// node cut off from the account's partition: UNAVAILABLE, so the device resumes elsewhere).
/// The hub's revocation push closes the stream sooner when this node hears of it.
async fn still_allowed(gw: &Gateway, token: &str) -> Result<(), Status> {
    loop {
        tokio::time::sleep(gw.config.revocation_bound).await;
        authenticate(gw, token).await?;
    }
}

/// The delivery half of a session: what the device must receive, in order per chat.
struct Deliveries {
    gw: Arc<Gateway>,
    me: Device,
    handle: Arc<SessionHandle>,
    out: Outbound,
    /// The next seq to send, per chat of the user.
    chats: BTreeMap<ChatId, ChatSeq>,
    needs_recovery: bool,
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.gw.hub.unregister(&self.handle);
    }
}

fn error_frame(code: tonic::Code, message: impl Into<String>) -> server_frame::Kind {
    server_frame::Kind::Error(pb::ErrorFrame {
        code: code as i32,
        message: message.into(),
    })
}

impl Deliveries {
    async fn emit(&self, kind: server_frame::Kind) -> Result<(), Status> {
        self.out.data(kind).await
    }

    /// The backlog, then live pushes until the hub drops the session or the device is revoked.
    async fn run(
        &mut self,
        cursors: &[pb::Cursor],
        pushes: mpsc::Receiver<Push>,
    ) -> Result<(), Status> {
        self.sync(cursors).await?;
        self.live(pushes).await
    }

    /// Where a chat starts for this device: the cursor it named, else what it acknowledged —
    /// never before the user joined (what was sent before is not theirs, whatever a client
    /// names).
    async fn start_cursor(&self, chat: ChatId, named: Option<ChatSeq>) -> Result<ChatSeq, Status> {
        let (user, device) = (self.me.user, self.me.device);
        let reads = &self.gw.reads;
        let from = async {
            match named {
                Some(seq) => Ok(seq),
                None => reads.device_cursor(chat, user, device).await,
            }
        };
        let (from, member) = futures::try_join!(from, reads.member(chat, user)).map_err(storage)?;
        Ok(from.max(member.map_or(ChatSeq::ZERO, |m| m.joined_after())))
    }

    /// The backlog: every chat from its cursor, then SyncComplete.
    async fn sync(&mut self, cursors: &[pb::Cursor]) -> Result<(), Status> {
        if let Some(c) = cursors.iter().find(|c| c.seq > MAX_CURSOR) {
            return Err(Status::invalid_argument(format!(
                "the cursor of chat {} is {}, beyond any seq",
                c.chat_id, c.seq
            )));
        }
        let given: HashMap<ChatId, ChatSeq> = cursors
            .iter()
            .map(|c| (ChatId(c.chat_id), ChatSeq(c.seq)))
            .collect();
        for chat in self
            .gw
            .reads
            .user_chats(self.me.user)
            .await
            .map_err(storage)?
        {
            let cursor = self.start_cursor(chat, given.get(&chat).copied()).await?;
            self.chats.insert(chat, cursor.next());
        }
        let chats: Vec<ChatId> = self.chats.keys().copied().collect();
        for chat in chats {
            self.catch_up(chat, None).await?;
        }
        let cursors = self
            .chats
            .iter()
            .map(|(chat, next)| pb::Cursor {
                chat_id: chat.0,
                seq: next.0 - 1,
            })
            .collect();
        self.emit(server_frame::Kind::SyncComplete(pb::SyncComplete {
            cursors,
        }))
        .await
    }

    /// Send `chat`'s messages from its cursor up to `up_to` (None: all that the replica read
    /// holds), read from a replica that has applied everything the hub has offered so far.
    async fn catch_up(&mut self, chat: ChatId, up_to: Option<ChatSeq>) -> Result<(), Status> {
        let p = self.gw.reads.partition(chat.0);
        loop {
            let Some(&next) = self.chats.get(&chat) else {
                return Ok(());
            };
            if up_to.is_some_and(|u| next > u) {
                return Ok(());
            }
            let before = up_to.map(ChatSeq::next);
            let page = self
                .gw
                .reads
                .fresh_at(p, self.gw.hub.dispatched(p))
                .history(
                    chat,
                    ChatSeq(next.0 - 1),
                    before,
                    CATCH_UP_PAGE,
                    PageEnd::Oldest,
                )
                .await
                .map_err(storage)?
                .ok_or_else(|| Status::not_found(format!("chat {chat} does not exist")))?;
            let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) else {
                return Ok(());
            };
            let (first, last) = (ChatSeq(first.seq), ChatSeq(last.seq));
            for m in page.messages {
                self.deliver(m).await?;
            }
            self.tell_hidden(chat, first, last).await?;
        }
    }

    /// After a page of backlog: which of its messages this user deleted for itself (on another
    /// device, while this one was away), so the device drops them too.
    async fn tell_hidden(
        &mut self,
        chat: ChatId,
        first: ChatSeq,
        last: ChatSeq,
    ) -> Result<(), Status> {
        let p = self.gw.reads.partition(chat.0);
        let hidden = self
            .gw
            .reads
            .fresh_at(p, self.gw.hub.dispatched(p))
            .hidden(chat, self.me.user, first, last)
            .await
            .map_err(storage)?;
        if hidden.is_empty() {
            return Ok(());
        }
        self.emit(server_frame::Kind::Hidden(pb::MessagesHidden {
            chat_id: chat.0,
            user: self.me.user.0,
            seqs: hidden.into_iter().collect(),
        }))
        .await
    }

    /// Emit `m` if it is the next seq of its chat.
    async fn deliver(&mut self, m: pb::Message) -> Result<(), Status> {
        let chat = ChatId(m.chat_id);
        match self.chats.get_mut(&chat) {
            Some(next) if next.0 == m.seq => *next = next.next(),
            _ => return Ok(()),
        }
        self.emit(server_frame::Kind::Message(m)).await
    }

    /// The live phase: pushes from the hub, and catching up from the log after a lag.
    async fn live(&mut self, mut pushes: mpsc::Receiver<Push>) -> Result<(), Status> {
        loop {
            if self.handle.take_lagged() || std::mem::take(&mut self.needs_recovery) {
                self.recover().await?;
            }
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => self.on_push(push).await?,
                    None => return Ok(()),
                },
                _ = self.handle.wake.notified() => {}
            }
        }
    }

    async fn on_push(&mut self, push: Push) -> Result<(), Status> {
        match push {
            Push::Message(m) => {
                let (chat, seq) = (ChatId(m.chat_id), ChatSeq(m.seq));
                let Some(&next) = self.chats.get(&chat) else {
                    return Ok(());
                };
                if seq > next {
                    self.catch_up(chat, Some(ChatSeq(seq.0 - 1))).await?;
                }
                match self.chats.get(&chat) {
                    Some(&next) if next == seq => self.deliver(Arc::unwrap_or_clone(m)).await,
                    Some(&next) if next < seq => {
                        // The replica had not applied the gap yet; read everything again.
                        self.needs_recovery = true;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            Push::Joined { chat, after } => {
                if self.chats.contains_key(&chat) {
                    return Ok(());
                }
                self.join(chat, after).await?;
                self.catch_up(chat, None).await
            }
            Push::Left { chat } => {
                if self.chats.remove(&chat).is_some() {
                    self.emit(chat_update(chat, false, ChatSeq::ZERO)).await?;
                }
                Ok(())
            }
            Push::Receipt(r) => {
                if !self.chats.contains_key(&ChatId(r.chat_id)) {
                    return Ok(());
                }
                let frame = server_frame::Kind::Receipt(pb::ReceiptFrame {
                    chat_id: r.chat_id,
                    user_id: r.user_id,
                    delivered_up_to: r.delivered_up_to,
                    read_up_to: r.read_up_to,
                });
                self.emit(frame).await
            }
            Push::Ticks(t) => {
                if !self.chats.contains_key(&ChatId(t.chat_id)) {
                    return Ok(());
                }
                self.emit(server_frame::Kind::Ticks(t)).await
            }
            Push::Presence(p) => self.emit(server_frame::Kind::Presence(p)).await,
            Push::Hidden(h) => {
                if !self.chats.contains_key(&ChatId(h.chat_id)) {
                    return Ok(());
                }
                self.emit(server_frame::Kind::Hidden(h)).await
            }
            Push::Typing(t) => {
                if !self.chats.contains_key(&ChatId(t.chat_id)) {
                    return Ok(());
                }
                self.emit(server_frame::Kind::Typing(t)).await
            }
            Push::Revoked { device } if device == self.me.device => Err(Status::unauthenticated(
                format!("device {device} has been revoked"),
            )),
            Push::Revoked { .. } => Ok(()),
        }
    }

    async fn join(&mut self, chat: ChatId, after: ChatSeq) -> Result<(), Status> {
        self.chats.insert(chat, after.next());
        self.emit(chat_update(chat, true, after)).await
    }

    /// After pushes were dropped: re-check the device, re-read the chat list, catch up every chat.
    async fn recover(&mut self) -> Result<(), Status> {
        let (user, device) = (self.me.user, self.me.device);
        match self.gw.reads.device(user, device).await.map_err(storage)? {
            Some(d) if !d.revoked => {}
            _ => {
                return Err(Status::unauthenticated(format!(
                    "device {device} has been revoked"
                )))
            }
        }
        let current: HashSet<ChatId> = self
            .gw
            .reads
            .user_chats(user)
            .await
            .map_err(storage)?
            .into_iter()
            .collect();
        let left: Vec<ChatId> = self
            .chats
            .keys()
            .filter(|c| !current.contains(c))
            .copied()
            .collect();
        for chat in left {
            self.chats.remove(&chat);
            self.emit(chat_update(chat, false, ChatSeq::ZERO)).await?;
        }
        for &chat in &current {
            if !self.chats.contains_key(&chat) {
                let after = self.start_cursor(chat, None).await?;
                self.join(chat, after).await?;
            }
        }
        let chats: Vec<ChatId> = self.chats.keys().copied().collect();
        for chat in chats {
            self.catch_up(chat, None).await?;
        }
        Ok(())
    }
}

/// The device's half of a session: its frames (sends, acks, reads, pings) read and answered
/// whatever the delivery half is waiting on.
struct DeviceFrames {
    gw: Arc<Gateway>,
    me: Device,
    out: Outbound,
    /// Sends of this stream being committed (a permit each).
    sends: Arc<Semaphore>,
    /// Per chat, the sends waiting for the earlier ones (`lanes.rs`).
    lanes: SendLanes,
    /// Typing frames, limited and relayed in order (`typing.rs`).
    typing: Typing,
    /// The stream's place in the hub (presence subscriptions are kept there).
    handle: Arc<SessionHandle>,
    /// Delivered/read marks received but not yet proposed (flushed `receipt_flush` after the
    /// first one arrives).
    pending_receipts: HashMap<(ChatId, ReceiptKind), ChatSeq>,
    /// Chats this user was found a member of (receipts for others are refused before they cost
    /// a proposal; a later removal is still refused when the receipt is applied).
    member_of: HashSet<ChatId>,
}

impl Drop for DeviceFrames {
    fn drop(&mut self) {
        self.flush_receipts();
    }
}

impl DeviceFrames {
    fn new(
        gw: Arc<Gateway>,
        me: Device,
        out: Outbound,
        handle: Arc<SessionHandle>,
    ) -> DeviceFrames {
        DeviceFrames {
            handle,
            sends: Arc::new(Semaphore::new(gw.config.max_sends_in_flight)),
            lanes: SendLanes::new(gw.clone(), me, out.clone()),
            typing: Typing::new(gw.clone(), me, out.clone()),
            gw,
            me,
            out,
            pending_receipts: HashMap::new(),
            member_of: HashSet::new(),
        }
    }

    /// Read frames until the device closes its side. Timers cost only when armed: the receipt
    /// flush only while marks wait, the idle check once per `idle_timeout` (it re-arms from the
    /// last frame), so an idle device wakes its session only for its pings.
    async fn run(&mut self, mut inbound: Streaming<pb::ClientFrame>) -> Result<(), Status> {
        let config = self.gw.config.clone();
        let mut last_frame = Instant::now();
        let idle = tokio::time::sleep(config.idle_timeout);
        tokio::pin!(idle);
        let flush = tokio::time::sleep(config.receipt_flush);
        tokio::pin!(flush);
        let mut flush_armed = false;
        loop {
            if !flush_armed && !self.pending_receipts.is_empty() {
                flush
                    .as_mut()
                    .reset(tokio::time::Instant::now() + config.receipt_flush);
                flush_armed = true;
            }
            tokio::select! {
                frame = inbound.next() => match frame {
                    None => return Ok(()),
                    Some(Err(status)) => return Err(status),
                    Some(Ok(frame)) => {
                        last_frame = Instant::now();
                        self.on_frame(frame).await?;
                    }
                },
                _ = &mut flush, if flush_armed => {
                    flush_armed = false;
                    self.flush_receipts();
                }
                _ = &mut idle => {
                    if last_frame.elapsed() > config.idle_timeout {
                        return Err(Status::deadline_exceeded(format!(
                            "no frame from the device for {:?}; devices ping to stay connected",
                            config.idle_timeout
                        )));
                    }
                    idle.as_mut().reset((last_frame + config.idle_timeout).into());
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: pb::ClientFrame) -> Result<(), Status> {
        use tonic::Code;
        match frame.kind {
            None => {
                self.out
                    .control(error_frame(Code::InvalidArgument, "empty frame"))
                    .await
            }
            Some(client_frame::Kind::Hello(_)) => {
                self.out
                    .control(error_frame(
                        Code::FailedPrecondition,
                        "Hello is only the first frame",
                    ))
                    .await
            }
            Some(client_frame::Kind::Ping(p)) => {
                self.out
                    .control(server_frame::Kind::Pong(pb::Pong { nonce: p.nonce }))
                    .await
            }
            Some(client_frame::Kind::PresenceSubscribe(_)) => {
                let (gw, me, out) = (self.gw.clone(), self.me, self.out.clone());
                let handle = self.handle.clone();
                tokio::spawn(async move {
                    let subscribed = presence_push::subscribe(gw, me.user, handle, out.clone());
                    if let Err(status) = subscribed.await {
                        out.try_control(error_frame(status.code(), status.message()));
                    }
                });
                Ok(())
            }
            Some(client_frame::Kind::Typing(t)) => {
                self.typing.on_frame(t);
                Ok(())
            }
            Some(client_frame::Kind::Ack(a)) => self.on_receipt(a, ReceiptKind::Delivered).await,
            Some(client_frame::Kind::Read(a)) => self.on_receipt(a, ReceiptKind::Read).await,
            Some(client_frame::Kind::Send(s)) => {
                // Bounded per stream: past the limit the device waits (its frames are not read).
                let permit = self
                    .sends
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                self.lanes.push(s, permit);
                Ok(())
            }
        }
    }

    async fn on_receipt(&mut self, a: pb::AckFrame, kind: ReceiptKind) -> Result<(), Status> {
        let chat = ChatId(a.chat_id);
        if !self.member_of.contains(&chat) {
            let member = self
                .gw
                .reads
                .member(chat, self.me.user)
                .await
                .map_err(storage)?;
            if member.is_none() {
                return self
                    .out
                    .control(error_frame(
                        tonic::Code::PermissionDenied,
                        format!("chat {chat} is not one of this user's chats"),
                    ))
                    .await;
            }
            self.member_of.insert(chat);
        }
        let mark = self.pending_receipts.entry((chat, kind)).or_default();
        *mark = (*mark).max(ChatSeq(a.up_to_seq));
        Ok(())
    }

    /// Propose the pending delivered/read marks (one command per chat and kind, however many
    /// acks arrived since the last flush).
    fn flush_receipts(&mut self) {
        for ((chat, kind), seq) in self.pending_receipts.drain() {
            let (gw, me, out) = (self.gw.clone(), self.me, self.out.clone());
            tokio::spawn(async move {
                let result = gw
                    .sequencer
                    .advance_receipt(chat, me.user, me.device, kind, seq)
                    .await;
                if let Err(e) = result {
                    out.try_control(error_frame(e.code(), e.to_string()));
                }
            });
        }
    }
}

fn chat_update(chat: ChatId, member: bool, after: ChatSeq) -> server_frame::Kind {
    server_frame::Kind::ChatUpdate(pb::ChatUpdate {
        chat_id: chat.0,
        member,
        after_seq: after.0,
    })
}
