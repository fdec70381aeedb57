//! The device client library: the `chat.v1.Chat` API as a device uses it.
//!
//! - [`ChatClient`]: one connection to one node; unary calls (register, link, chats, history,
//!   presence) and [`ChatClient::open_stream`], a single device stream with no recovery.
//! - [`Device`]: a device that stays connected: it resumes from the cursors it holds after any
//!   disconnect (trying each server in turn, with backoff), resends unacknowledged sends with
//!   their original `client_msg_id` (so a retry never duplicates) and in the order they were
//!   first sent (so they keep their order in the chat), pings to keep the stream
//!   alive, and acknowledges what it receives.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::chat_v1::{self as pb, chat_client::ChatClient as ChatRpc};
use chat_proto::chat_v1::{client_frame, server_frame};
use chat_tls::Dialer;
use rand::distributions::{Alphanumeric, DistString};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

/// A fresh token secret: 43 random alphanumerics (~256 bits).
pub fn generate_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 43)
}

/// A fresh `client_msg_id`.
pub fn new_client_msg_id() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 22)
}

/// One connection to one chatd node's device API.
#[derive(Clone)]
pub struct ChatClient {
    rpc: ChatRpc<Channel>,
    token: Option<MetadataValue<Ascii>>,
}

impl ChatClient {
    /// Connect to `addr` (host:port) in plaintext.
    pub async fn connect(addr: &str) -> Result<ChatClient, Status> {
        ChatClient::connect_via(&Dialer::plain(), addr).await
    }

    /// Connect to `addr` (host:port), through TLS if `dialer` says so.
    pub async fn connect_via(dialer: &Dialer, addr: &str) -> Result<ChatClient, Status> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad server address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let channel = dialer.connect(endpoint, None).await.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            Status::unavailable(format!("cannot connect to {addr}: {e}{cause}"))
        })?;
        Ok(ChatClient {
            rpc: ChatRpc::new(channel).max_decoding_message_size(8 << 20),
            token: None,
        })
    }

    /// Authenticate later calls with `token`.
    pub fn with_token(mut self, token: &str) -> Result<ChatClient, Status> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not printable ASCII"))?;
        self.token = Some(value);
        Ok(self)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// Register `handle` with this device as its first one; the reply carries the token.
    pub async fn register(
        &mut self,
        handle: &str,
        device_id: u64,
    ) -> Result<pb::RegisterReply, Status> {
        let request = pb::RegisterRequest {
            handle: handle.to_string(),
            device_id,
            secret: generate_secret(),
        };
        Ok(self.rpc.register(request).await?.into_inner())
    }

    /// Add device `device_id` to the caller's account; the reply carries its token.
    pub async fn link_device(&mut self, device_id: u64) -> Result<pb::LinkDeviceReply, Status> {
        let request = self.request(pb::LinkDeviceRequest {
            device_id,
            secret: generate_secret(),
        });
        Ok(self.rpc.link_device(request).await?.into_inner())
    }

    pub async fn revoke_device(&mut self, device_id: u64) -> Result<(), Status> {
        let request = self.request(pb::RevokeDeviceRequest { device_id });
        self.rpc.revoke_device(request).await?;
        Ok(())
    }

    pub async fn create_direct(&mut self, with_handle: &str) -> Result<pb::ChatInfo, Status> {
        let request = self.request(pb::CreateDirectRequest {
            with_handle: with_handle.to_string(),
        });
        Ok(self.rpc.create_direct(request).await?.into_inner())
    }

    /// Create a group; the same `request_id` names the same group on a retry.
    pub async fn create_group(
        &mut self,
        request_id: &str,
        name: &str,
        member_handles: &[String],
    ) -> Result<pb::ChatInfo, Status> {
        let request = self.request(pb::CreateGroupRequest {
            request_id: request_id.to_string(),
            name: name.to_string(),
            member_handles: member_handles.to_vec(),
        });
        Ok(self.rpc.create_group(request).await?.into_inner())
    }

    pub async fn change_members(
        &mut self,
        chat_id: u64,
        add: &[String],
        remove: &[String],
    ) -> Result<pb::ChatInfo, Status> {
        let request = self.request(pb::ChangeMembersRequest {
            chat_id,
            add_handles: add.to_vec(),
            remove_handles: remove.to_vec(),
            ..Default::default()
        });
        Ok(self.rpc.change_members(request).await?.into_inner())
    }

    /// Any change of a group's members and admins (see `ChangeMembersRequest`; leaving is
    /// removing only oneself).
    pub async fn change_group(
        &mut self,
        change: pb::ChangeMembersRequest,
    ) -> Result<pb::ChatInfo, Status> {
        let request = self.request(change);
        Ok(self.rpc.change_members(request).await?.into_inner())
    }

    /// Hide this user's presence (online, last seen) from everyone else, or show it again.
    pub async fn set_presence_hidden(&mut self, hidden: bool) -> Result<bool, Status> {
        let request = self.request(pb::SetPresenceHiddenRequest { hidden });
        Ok(self
            .rpc
            .set_presence_hidden(request)
            .await?
            .into_inner()
            .hidden)
    }

    /// Delete message `seq` of `chat_id` for everyone; the tombstone's ack.
    pub async fn delete_message(&mut self, chat_id: u64, seq: u64) -> Result<pb::SendAck, Status> {
        let request = self.request(pb::DeleteMessageRequest { chat_id, seq });
        Ok(self.rpc.delete_message(request).await?.into_inner())
    }

    /// Change a chat's name, description, icon or disappearing-messages timer.
    pub async fn update_chat(
        &mut self,
        update: pb::UpdateChatRequest,
    ) -> Result<pb::ChatInfo, Status> {
        let request = self.request(update);
        Ok(self.rpc.update_chat(request).await?.into_inner())
    }

    pub async fn list_chats(&mut self) -> Result<Vec<pb::ChatInfo>, Status> {
        let request = self.request(pb::ListChatsRequest {});
        Ok(self.rpc.list_chats(request).await?.into_inner().chats)
    }

    /// Messages of `chat_id` with `after_seq < seq < before_seq` (0: unbounded), oldest first.
    pub async fn history(
        &mut self,
        chat_id: u64,
        after_seq: u64,
        before_seq: u64,
        limit: u32,
    ) -> Result<pb::HistoryReply, Status> {
        let request = self.request(pb::HistoryPageRequest {
            chat_id,
            after_seq,
            before_seq,
            limit,
        });
        Ok(self.rpc.history(request).await?.into_inner())
    }

    /// Delete the caller's account (`confirm_handle` must be its handle); when the handle is
    /// released.
    pub async fn delete_account(&mut self, confirm_handle: &str) -> Result<u64, Status> {
        let request = self.request(pb::DeleteAccountRequest {
            confirm_handle: confirm_handle.to_string(),
        });
        Ok(self
            .rpc
            .delete_account(request)
            .await?
            .into_inner()
            .release_at_ms)
    }

    /// Block (or unblock) the user with `handle`: their messages to the caller are refused.
    pub async fn block_user(
        &mut self,
        handle: &str,
        blocked: bool,
    ) -> Result<pb::BlockUserReply, Status> {
        let request = self.request(pb::BlockUserRequest {
            handle: handle.to_string(),
            blocked,
        });
        Ok(self.rpc.block_user(request).await?.into_inner())
    }

    /// Delete messages of `chat_id` for the caller only; how many were newly hidden.
    pub async fn delete_for_me(&mut self, chat_id: u64, seqs: Vec<u64>) -> Result<u32, Status> {
        let request = self.request(pb::DeleteForMeRequest { chat_id, seqs });
        Ok(self.rpc.delete_for_me(request).await?.into_inner().hidden)
    }

    /// Where to upload a blob of `size` bytes whose sha256 is `sha256`.
    pub async fn create_upload(
        &mut self,
        mime: &str,
        size: u64,
        sha256: Vec<u8>,
    ) -> Result<pb::UploadGrant, Status> {
        let request = self.request(pb::CreateUploadRequest {
            mime: mime.to_string(),
            size,
            sha256,
        });
        Ok(self.rpc.create_upload(request).await?.into_inner())
    }

    /// Where to download the blob `object_key`.
    pub async fn create_download(&mut self, object_key: &str) -> Result<pb::DownloadGrant, Status> {
        let request = self.request(pb::CreateDownloadRequest {
            object_key: object_key.to_string(),
        });
        Ok(self.rpc.create_download(request).await?.into_inner())
    }

    /// The caller's chats, most recent activity first, with unread counts and ticks.
    pub async fn inbox(&mut self) -> Result<Vec<pb::InboxEntry>, Status> {
        let request = self.request(pb::InboxRequest {});
        Ok(self.rpc.inbox(request).await?.into_inner().chats)
    }

    pub async fn presence(&mut self, handles: &[String]) -> Result<Vec<pb::UserPresence>, Status> {
        let request = self.request(pb::PresenceRequest {
            handles: handles.to_vec(),
        });
        Ok(self.rpc.presence(request).await?.into_inner().users)
    }

    /// Open a device stream: Hello with `token` and `cursors` (chat → last seq held).
    pub async fn open_stream(
        &mut self,
        token: &str,
        cursors: &BTreeMap<u64, u64>,
    ) -> Result<DeviceStream, Status> {
        // Unbounded: a write must never wait while the same task should be reading. The server
        // stops reading a stream's sends while too many are in flight and frees them only as
        // their acks are read here; a writer blocked on a full queue would stop that reading,
        // and both ends would wait on each other. What queues here is what the caller sent.
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = client_frame::Kind::Hello(pb::Hello {
            token: token.to_string(),
            cursors: cursors
                .iter()
                .map(|(&chat_id, &seq)| pb::Cursor { chat_id, seq })
                .collect(),
        });
        tx.send(pb::ClientFrame { kind: Some(hello) })
            .expect("receiver held below");
        let frames = self
            .rpc
            .connect(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(DeviceStream {
            tx: FrameSender(tx),
            frames,
        })
    }
}

/// One open device stream, as the server speaks it. Ends on the first error.
pub struct DeviceStream {
    tx: FrameSender,
    frames: Streaming<pb::ServerFrame>,
}

/// The sending half of a [`DeviceStream`], for writing from another task while one reads.
#[derive(Clone)]
pub struct FrameSender(mpsc::UnboundedSender<pb::ClientFrame>);

impl DeviceStream {
    /// A handle that sends on this stream.
    pub fn sender(&self) -> FrameSender {
        self.tx.clone()
    }

    pub async fn send_frame(&self, kind: client_frame::Kind) -> Result<(), Status> {
        self.tx.send_frame(kind).await
    }

    pub async fn send(
        &self,
        chat_id: u64,
        client_msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<(), Status> {
        self.tx.send(chat_id, client_msg_id, payload).await
    }

    pub async fn ack(&self, chat_id: u64, up_to_seq: u64) -> Result<(), Status> {
        self.tx.ack(chat_id, up_to_seq).await
    }

    pub async fn read(&self, chat_id: u64, up_to_seq: u64) -> Result<(), Status> {
        self.tx.read(chat_id, up_to_seq).await
    }

    /// The next server frame; `None` when the server closed the stream cleanly.
    pub async fn next(&mut self) -> Option<Result<server_frame::Kind, Status>> {
        match self.frames.message().await {
            Ok(Some(pb::ServerFrame { kind: Some(kind) })) => Some(Ok(kind)),
            Ok(Some(pb::ServerFrame { kind: None })) => {
                Some(Err(Status::internal("the server sent an empty frame")))
            }
            Ok(None) => None,
            Err(status) => Some(Err(status)),
        }
    }
}

impl FrameSender {
    pub async fn send_frame(&self, kind: client_frame::Kind) -> Result<(), Status> {
        self.0
            .send(pb::ClientFrame { kind: Some(kind) })
            .map_err(|_| Status::unavailable("the stream is closed"))
    }

    pub async fn send(
        &self,
        chat_id: u64,
        client_msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<(), Status> {
        self.send_frame(client_frame::Kind::Send(pb::SendFrame {
            client_msg_id: client_msg_id.to_string(),
            chat_id,
            payload,
            media: Vec::new(),
            timeout_ms: 0,
        }))
        .await
    }

    pub async fn ack(&self, chat_id: u64, up_to_seq: u64) -> Result<(), Status> {
        self.send_frame(client_frame::Kind::Ack(pb::AckFrame { chat_id, up_to_seq }))
            .await
    }

    pub async fn read(&self, chat_id: u64, up_to_seq: u64) -> Result<(), Status> {
        self.send_frame(client_frame::Kind::Read(pb::AckFrame {
            chat_id,
            up_to_seq,
        }))
        .await
    }
}

/// What a [`Device`] reports.
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// A stream is open to `addr` (served by node `node_id`).
    Connected {
        addr: String,
        node_id: u64,
    },
    /// The backlog is delivered; what follows is live.
    Synced,
    Message(pb::Message),
    Receipt(pb::ReceiptFrame),
    /// This user's ticks in a chat moved (every other member delivered / read up to).
    Ticks(pb::TickFrame),
    ChatUpdate(pb::ChatUpdate),
    /// Another member started or stopped typing (a start lapses after its `ttl_ms`).
    Typing(pb::TypingNotice),
    /// A user this user shares chats with came online or went offline (after
    /// [`Device::subscribe_presence`]).
    /// This user deleted these messages for itself (on this device or another): drop them.
    Hidden(pb::MessagesHidden),
    Presence(pb::PresenceFrame),
    /// A frame the server refused (the stream stays open).
    Error(pb::ErrorFrame),
    /// The stream ended; the device reconnects unless the error is UNAUTHENTICATED.
    Disconnected(Status),
}

/// How a [`Device`] connects.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Servers tried in turn (host:port).
    pub servers: Vec<String>,
    /// Plaintext or TLS.
    pub dialer: Dialer,
    pub token: String,
    /// Last seq held per chat (resumed from).
    pub cursors: BTreeMap<u64, u64>,
    /// Acknowledge every message received (delivered marks; the server coalesces them).
    pub auto_ack: bool,
    pub ping_every: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// How long the server may try each send while its chat has no leader before answering
    /// UNAVAILABLE (`SendFrame.timeout_ms`), and then `send` fails with that status (resending
    /// with the same id is safe). `None`: the server's default, and the device resends an
    /// UNAVAILABLE send itself until it is acknowledged.
    pub send_timeout: Option<Duration>,
}

impl DeviceOptions {
    pub fn new(servers: Vec<String>, token: &str) -> DeviceOptions {
        DeviceOptions {
            servers,
            dialer: Dialer::plain(),
            token: token.to_string(),
            cursors: BTreeMap::new(),
            auto_ack: true,
            ping_every: Duration::from_secs(20),
            max_backoff: Duration::from_secs(5),
            send_timeout: None,
        }
    }
}

type SendReply = oneshot::Sender<Result<pb::SendAck, Status>>;

enum Command {
    Send {
        frame: pb::SendFrame,
        reply: SendReply,
    },
    /// Resend every unanswered send, in order (after a send ended UNAVAILABLE).
    ResendAll,
    Typing {
        chat_id: u64,
        typing: bool,
    },
    SubscribePresence,
    Read {
        chat_id: u64,
        up_to_seq: u64,
    },
}

/// A device that stays connected (see the module docs). Dropping it closes the stream.
pub struct Device {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<DeviceEvent>,
    cursors: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// `DeviceOptions::send_timeout` as the frame carries it (0: the server's default).
    send_timeout_ms: u32,
}

impl Device {
    pub fn start(options: DeviceOptions) -> Device {
        let (commands, command_rx) = mpsc::channel(256);
        let (event_tx, events) = mpsc::channel(4096);
        let cursors = Arc::new(Mutex::new(options.cursors.clone()));
        let send_timeout_ms = options.send_timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        });
        let actor = Actor {
            options,
            commands: command_rx,
            resend: commands.clone(),
            events: event_tx,
            cursors: cursors.clone(),
            pending: Pending::default(),
            resend_due: false,
            presence_subscribed: false,
            attempt: 0,
        };
        tokio::spawn(actor.run());
        Device {
            commands,
            events,
            cursors,
            send_timeout_ms,
        }
    }

    /// Send `payload` to `chat_id`; resolves with the server's ack (retried across reconnects
    /// with the same `client_msg_id`) or the error it refused the send with.
    pub async fn send(&self, chat_id: u64, payload: Vec<u8>) -> Result<pb::SendAck, Status> {
        self.send_with_id(chat_id, &new_client_msg_id(), payload)
            .await
    }

    pub async fn send_with_id(
        &self,
        chat_id: u64,
        client_msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<pb::SendAck, Status> {
        self.queue_send(chat_id, client_msg_id, payload)
            .await?
            .await
    }

    /// Send a message with media (uploaded first, see [`crate::media`]); the payload may be
    /// empty when there is media.
    pub async fn send_media(
        &self,
        chat_id: u64,
        payload: Vec<u8>,
        media: Vec<pb::MediaRef>,
    ) -> Result<pb::SendAck, Status> {
        self.queue_send_media(chat_id, &new_client_msg_id(), payload, media)
            .await?
            .await
    }

    /// Queue a send behind the device's earlier ones and return without waiting for its ack:
    /// the returned future resolves with it. Sends to one chat get seqs in the order they were
    /// queued, so a device can pipeline them.
    pub async fn queue_send(
        &self,
        chat_id: u64,
        client_msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<impl std::future::Future<Output = Result<pb::SendAck, Status>>, Status> {
        self.queue_send_media(chat_id, client_msg_id, payload, Vec::new())
            .await
    }

    /// [`Device::queue_send`] with media references.
    pub async fn queue_send_media(
        &self,
        chat_id: u64,
        client_msg_id: &str,
        payload: Vec<u8>,
        media: Vec<pb::MediaRef>,
    ) -> Result<impl std::future::Future<Output = Result<pb::SendAck, Status>>, Status> {
        let (reply, answer) = oneshot::channel();
        let frame = pb::SendFrame {
            client_msg_id: client_msg_id.to_string(),
            chat_id,
            payload,
            media,
            timeout_ms: self.send_timeout_ms,
        };
        self.commands
            .send(Command::Send { frame, reply })
            .await
            .map_err(|_| Status::cancelled("the device has stopped"))?;
        Ok(async move {
            answer
                .await
                .map_err(|_| Status::cancelled("the device has stopped"))?
        })
    }

    /// Get [`DeviceEvent::Presence`] for the users this user shares chats with (their current
    /// presence first, then changes), on this stream and the ones after a reconnect.
    pub async fn subscribe_presence(&self) {
        let _ = self.commands.send(Command::SubscribePresence).await;
    }

    /// Tell `chat_id`'s other members this user started (`true`) or stopped typing. Not
    /// resent after a reconnect: repeat a start every few seconds while typing.
    pub async fn typing(&self, chat_id: u64, typing: bool) {
        let _ = self
            .commands
            .send(Command::Typing { chat_id, typing })
            .await;
    }

    /// Mark `chat_id` read up to `up_to_seq`.
    pub async fn read(&self, chat_id: u64, up_to_seq: u64) {
        let _ = self
            .commands
            .send(Command::Read { chat_id, up_to_seq })
            .await;
    }

    /// The next event; `None` once the device has stopped (revoked token, or dropped).
    pub async fn next_event(&mut self) -> Option<DeviceEvent> {
        self.events.recv().await
    }

    /// The last seq received per chat (what a reconnect resumes from).
    pub fn cursors(&self) -> BTreeMap<u64, u64> {
        self.cursors.lock().expect("cursor lock").clone()
    }
}

/// Sends not yet answered, in the order they were first sent.
#[derive(Default)]
struct Pending {
    next: u64,
    by_order: BTreeMap<u64, (pb::SendFrame, SendReply)>,
    order_of: HashMap<String, u64>,
}

impl Pending {
    /// A send with the id of one still pending replaces it (the earlier caller hears nothing
    /// more) and takes its place at the end.
    fn insert(&mut self, frame: pb::SendFrame, reply: SendReply) {
        self.remove(&frame.client_msg_id);
        self.next += 1;
        self.order_of.insert(frame.client_msg_id.clone(), self.next);
        self.by_order.insert(self.next, (frame, reply));
    }

    fn remove(&mut self, client_msg_id: &str) -> Option<(pb::SendFrame, SendReply)> {
        let order = self.order_of.remove(client_msg_id)?;
        self.by_order.remove(&order)
    }

    fn frames(&self) -> impl Iterator<Item = &pb::SendFrame> {
        self.by_order.values().map(|(frame, _)| frame)
    }
}

struct Actor {
    options: DeviceOptions,
    commands: mpsc::Receiver<Command>,
    resend: mpsc::Sender<Command>,
    events: mpsc::Sender<DeviceEvent>,
    cursors: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// Sends not yet answered: resent, in order, on every new stream.
    pending: Pending,
    /// A `ResendAll` is on its way.
    resend_due: bool,
    /// The device asked for presence: every new stream subscribes again.
    presence_subscribed: bool,
    /// Reconnection attempts since the last successful one (for backoff).
    attempt: u32,
}

/// Why a stream ended.
enum Ended {
    /// The owner dropped the device.
    Dropped,
    Failed(Status),
}

/// Why a stream whose write just failed with `write_error` ended. A write fails once the server
/// has ended the stream, and the server's own status (say UNAUTHENTICATED for a revoked device,
/// which must stop the device rather than reconnect) is still to be read: read it, briefly.
async fn why_closed(stream: &mut DeviceStream, write_error: Status) -> Status {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(_))) => continue, // frames sent before the end; the stream is over
            Ok(Some(Err(status))) => return status,
            Ok(None) | Err(_) => return write_error,
        }
    }
}

impl Actor {
    async fn run(mut self) {
        for addr in self.options.servers.clone().iter().cycle() {
            match self.session(addr).await {
                Ended::Dropped => return,
                Ended::Failed(status) => {
                    let fatal = status.code() == Code::Unauthenticated;
                    if self
                        .events
                        .send(DeviceEvent::Disconnected(status))
                        .await
                        .is_err()
                        || fatal
                    {
                        return;
                    }
                }
            }
            let backoff = Duration::from_millis(50 * 2u64.pow(self.attempt.min(10)));
            tokio::time::sleep(backoff.min(self.options.max_backoff)).await;
            self.attempt += 1;
            if self.events.is_closed() {
                return;
            }
        }
    }

    /// One stream to `addr`, until it ends.
    async fn session(&mut self, addr: &str) -> Ended {
        let cursors = self.cursors.lock().expect("cursor lock").clone();
        let opened = match ChatClient::connect_via(&self.options.dialer, addr).await {
            Ok(mut client) => client.open_stream(&self.options.token, &cursors).await,
            Err(status) => Err(status),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(status) => return Ended::Failed(status),
        };
        if self.presence_subscribed {
            let subscribe = client_frame::Kind::PresenceSubscribe(pb::PresenceSubscribe {});
            if let Err(status) = stream.send_frame(subscribe).await {
                return Ended::Failed(why_closed(&mut stream, status).await);
            }
        }
        for frame in self.pending.frames() {
            if let Err(status) = stream
                .send_frame(client_frame::Kind::Send(frame.clone()))
                .await
            {
                return Ended::Failed(why_closed(&mut stream, status).await);
            }
        }
        let mut ping = tokio::time::interval(self.options.ping_every);
        let mut nonce = 0;
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(status)) => return Ended::Failed(status),
                        None => return Ended::Failed(Status::unavailable("the server closed the stream")),
                    };
                    match self.on_frame(addr, &stream, frame).await {
                        Ok(()) => {}
                        Err(Ended::Failed(status)) => {
                            return Ended::Failed(why_closed(&mut stream, status).await)
                        }
                        Err(ended) => return ended,
                    }
                }
                // The owner dropped the device (the command channel never closes: the actor
                // holds a sender of its own for resends).
                _ = self.events.closed() => return Ended::Dropped,
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Dropped };
                    if let Err(status) = self.on_command(&stream, command).await {
                        return Ended::Failed(why_closed(&mut stream, status).await);
                    }
                }
                _ = ping.tick() => {
                    nonce += 1;
                    let ping = client_frame::Kind::Ping(pb::Ping { nonce });
                    if let Err(status) = stream.send_frame(ping).await {
                        return Ended::Failed(why_closed(&mut stream, status).await);
                    }
                }
            }
        }
    }

    async fn emit(&self, event: DeviceEvent) -> Result<(), Ended> {
        self.events.send(event).await.map_err(|_| Ended::Dropped)
    }

    async fn on_frame(
        &mut self,
        addr: &str,
        stream: &DeviceStream,
        frame: server_frame::Kind,
    ) -> Result<(), Ended> {
        match frame {
            server_frame::Kind::Welcome(w) => {
                self.attempt = 0;
                self.emit(DeviceEvent::Connected {
                    addr: addr.to_string(),
                    node_id: w.node_id,
                })
                .await
            }
            server_frame::Kind::SyncComplete(_) => self.emit(DeviceEvent::Synced).await,
            server_frame::Kind::Message(m) => {
                let (chat, seq) = (m.chat_id, m.seq);
                {
                    let mut cursors = self.cursors.lock().expect("cursor lock");
                    let cursor = cursors.entry(chat).or_default();
                    *cursor = (*cursor).max(seq);
                }
                self.emit(DeviceEvent::Message(m)).await?;
                if self.options.auto_ack {
                    stream.ack(chat, seq).await.map_err(Ended::Failed)?;
                }
                Ok(())
            }
            server_frame::Kind::SendAck(a) => {
                if let Some((_, reply)) = self.pending.remove(&a.client_msg_id) {
                    let ack = a
                        .ack
                        .ok_or_else(|| Status::internal("a send ack without its ack"));
                    let _ = reply.send(ack);
                }
                Ok(())
            }
            server_frame::Kind::SendError(e) => {
                let code = Code::from_i32(e.code);
                // No leader in time. With no timeout of its own the device tries again shortly
                // with the same id (it cannot be applied twice); with one, the caller decides.
                // Everything unanswered goes again, in order: the server keeps a device's sends
                // to a chat in the order it receives them, and refuses the ones behind a send
                // whose outcome is unknown until that one comes again.
                if code == Code::Unavailable && self.options.send_timeout.is_none() {
                    if !self.resend_due {
                        self.resend_due = true;
                        let resend = self.resend.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = resend.send(Command::ResendAll).await;
                        });
                    }
                } else if let Some((_, reply)) = self.pending.remove(&e.client_msg_id) {
                    let _ = reply.send(Err(Status::new(code, e.message)));
                }
                Ok(())
            }
            server_frame::Kind::Receipt(r) => self.emit(DeviceEvent::Receipt(r)).await,
            server_frame::Kind::Ticks(t) => self.emit(DeviceEvent::Ticks(t)).await,
            server_frame::Kind::ChatUpdate(u) => {
                if u.member {
                    let mut cursors = self.cursors.lock().expect("cursor lock");
                    let cursor = cursors.entry(u.chat_id).or_default();
                    *cursor = (*cursor).max(u.after_seq);
                }
                self.emit(DeviceEvent::ChatUpdate(u)).await
            }
            server_frame::Kind::Typing(t) => self.emit(DeviceEvent::Typing(t)).await,
            server_frame::Kind::Presence(p) => self.emit(DeviceEvent::Presence(p)).await,
            server_frame::Kind::Hidden(h) => self.emit(DeviceEvent::Hidden(h)).await,
            server_frame::Kind::Error(e) => self.emit(DeviceEvent::Error(e)).await,
            server_frame::Kind::Pong(_) => Ok(()),
        }
    }

    async fn on_command(&mut self, stream: &DeviceStream, command: Command) -> Result<(), Status> {
        match command {
            Command::Send { frame, reply } => {
                self.pending.insert(frame.clone(), reply);
                stream.send_frame(client_frame::Kind::Send(frame)).await
            }
            Command::ResendAll => {
                self.resend_due = false;
                for frame in self.pending.frames() {
                    stream
                        .send_frame(client_frame::Kind::Send(frame.clone()))
                        .await?;
                }
                Ok(())
            }
            Command::Read { chat_id, up_to_seq } => stream.read(chat_id, up_to_seq).await,
            Command::SubscribePresence => {
                self.presence_subscribed = true;
                stream
                    .send_frame(client_frame::Kind::PresenceSubscribe(
                        pb::PresenceSubscribe {},
                    ))
                    .await
            }
            Command::Typing { chat_id, typing } => {
                let frame = pb::TypingFrame { chat_id, typing };
                stream.send_frame(client_frame::Kind::Typing(frame)).await
            }
        }
    }
}
