//! The sequencer: the entry point of every chat write on a node.
//!
//! `submit` checks a command (each command's checks, in `chat_model::commands`, also derive ids
//! and name its partition: `partition(user)` for user commands, `partition(chat)` for chat
//! commands), counts a send against its sender's rate, and proposes it on
//! this node if it leads that partition, or forwards it once to the leader over the internal
//! `chat.v1.Sequencer` service. Concurrent proposals to a partition share Raft entries (the log's
//! batcher). It retries through elections and ambiguous failures until its deadline: safe,
//! because every chat command is idempotent at apply (sends through the dedup window).
//! A reply means the command is committed on a quorum and applied.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_log::{
    CommandOutcome, Dispatch, LogNode, LogOffset, NodeId, PartitionId, ProposalOutcome,
    ProposeError, RejectCode,
};
use chat_proto::chat_v1::sequencer_client::SequencerClient;
use chat_proto::chat_v1::{self as pb, command, command_reply, ChatKind, ReceiptKind};
use chat_proto::{AttachSecret, LeaderHint};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use chat_model::commands::{self, CheckContext, CommandLimits, Invalid, CHAT_COMMAND_TAG};
use chat_model::ids::ChatSeq;
use chat_model::ids::{direct_chat_id, group_chat_id, ChatId, DeviceId, UserId};
use chat_model::StateReader;

/// Limits checked before proposing (they need not agree across nodes).
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Payload, client_msg_id and handle sizes (checked by each command, in `chat-model`).
    pub limits: CommandLimits,
    /// Sustained sends per second per user, and the burst above it.
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// How long `submit` keeps retrying through elections before answering UNAVAILABLE.
    pub submit_timeout: Duration,
    /// Most messages one history page returns.
    pub max_history_page: u32,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            limits: CommandLimits::default(),
            sends_per_second: 50,
            send_burst: 200,
            submit_timeout: Duration::from_secs(10),
            max_history_page: 1000,
        }
    }
}

/// Why a command was not applied. Maps one to one onto gRPC status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// Refused, before proposing or deterministically at apply.
    #[error("{message}")]
    Rejected { code: RejectCode, message: String },
    /// No leader could take it before the deadline; `hint` is the last leader known.
    #[error("{message}")]
    Unavailable {
        message: String,
        hint: Option<LeaderHint>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl SeqError {
    pub fn code(&self) -> Code {
        match self {
            SeqError::Rejected { code, .. } => match code {
                RejectCode::InvalidArgument => Code::InvalidArgument,
                RejectCode::NotFound => Code::NotFound,
                RejectCode::AlreadyExists => Code::AlreadyExists,
                RejectCode::PermissionDenied => Code::PermissionDenied,
                RejectCode::FailedPrecondition => Code::FailedPrecondition,
                RejectCode::ResourceExhausted => Code::ResourceExhausted,
            },
            SeqError::Unavailable { .. } => Code::Unavailable,
            SeqError::Internal(_) => Code::Internal,
        }
    }

    /// The error a forwarded call answered with, as if it had happened here.
    pub fn from_status(status: &Status) -> SeqError {
        let code = match status.code() {
            Code::InvalidArgument => RejectCode::InvalidArgument,
            Code::NotFound => RejectCode::NotFound,
            Code::AlreadyExists => RejectCode::AlreadyExists,
            Code::PermissionDenied => RejectCode::PermissionDenied,
            Code::FailedPrecondition => RejectCode::FailedPrecondition,
            Code::ResourceExhausted => RejectCode::ResourceExhausted,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                return SeqError::Unavailable {
                    message: status.message().to_string(),
                    hint: LeaderHint::from_status(status),
                }
            }
            _ => return SeqError::Internal(status.message().to_string()),
        };
        SeqError::Rejected {
            code,
            message: status.message().to_string(),
        }
    }
}

/// A command's checks refused it: INVALID_ARGUMENT.
impl From<Invalid> for SeqError {
    fn from(e: Invalid) -> SeqError {
        SeqError::Rejected {
            code: RejectCode::InvalidArgument,
            message: e.0,
        }
    }
}

impl From<SeqError> for Status {
    fn from(e: SeqError) -> Status {
        match &e {
            SeqError::Unavailable {
                hint: Some(hint), ..
            } => hint.to_status(e.code(), e.to_string()),
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

type ForwardClient = SequencerClient<InterceptedService<Channel, AttachSecret>>;

/// The write path of one node.
pub struct Sequencer {
    node: Arc<LogNode>,
    config: SequencerConfig,
    send_limiter: DefaultKeyedRateLimiter<u64>,
    secret: AttachSecret,
    peers: Mutex<HashMap<String, ForwardClient>>,
}

impl Sequencer {
    pub fn new(
        node: Arc<LogNode>,
        cluster_secret: &str,
        config: SequencerConfig,
    ) -> Result<Self, String> {
        let rate =
            NonZeroU32::new(config.sends_per_second).ok_or("sends_per_second must be positive")?;
        let burst = NonZeroU32::new(config.send_burst).ok_or("send_burst must be positive")?;
        Ok(Sequencer {
            node,
            send_limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            secret: AttachSecret::new(cluster_secret).map_err(|e| e.to_string())?,
            config,
            peers: Mutex::default(),
        })
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    /// Validate, route and apply `command`; the reply once it is committed and applied.
    /// `forwarded` is set when another node sent it here as the partition's leader.
    pub async fn submit(
        &self,
        mut command: pb::Command,
        forwarded: bool,
    ) -> Result<pb::CommandReply, SeqError> {
        let partition = self.prepare(&mut command, forwarded)?;
        let bytes = Dispatch::tagged(CHAT_COMMAND_TAG, &command.encode_to_vec());
        let deadline = Instant::now() + self.config.submit_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let err = match self.node.propose(partition, vec![bytes.clone()]).await {
                Ok(outcome) => return reply_of(outcome),
                Err(e) => match leader_elsewhere(&e, self.node.node_id()) {
                    Some(addr) if !forwarded => match self.forward(&addr, &command, deadline).await
                    {
                        Ok(reply) => return Ok(reply),
                        Err(status) => SeqError::from_status(&status),
                    },
                    _ => SeqError::from(e),
                },
            };
            // Only "no leader could take it" is worth retrying; anything else is the answer. A
            // forwarded command is retried by the node it came from.
            let retry = matches!(err, SeqError::Unavailable { .. });
            if !retry || forwarded || Instant::now() + backoff > deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Check a command (filling in derived ids), count a send against its sender's rate, and
    /// return the partition it goes to.
    fn prepare(&self, command: &mut pb::Command, forwarded: bool) -> Result<PartitionId, SeqError> {
        let cx = CheckContext {
            limits: &self.config.limits,
            partitions: self.node.partition_count(),
        };
        let partition = commands::check(command, &cx)?;
        // Counted once, where the send entered the cluster.
        if let Some(command::Kind::SendMessage(m)) = &command.kind {
            if !forwarded && self.send_limiter.check_key(&m.sender_user).is_err() {
                return Err(SeqError::Rejected {
                    code: RejectCode::ResourceExhausted,
                    message: format!(
                        "user {} is sending faster than {} messages/s",
                        m.sender_user, self.config.sends_per_second
                    ),
                });
            }
        }
        Ok(partition)
    }

    async fn forward(
        &self,
        addr: &str,
        command: &pb::Command,
        deadline: Instant,
    ) -> Result<pb::CommandReply, Status> {
        let mut client = self.peer(addr)?;
        let mut request = tonic::Request::new(pb::SubmitRequest {
            command: Some(command.clone()),
            forwarded: true,
        });
        request.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        );
        client
            .submit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    fn peer(&self, addr: &str) -> Result<ForwardClient, Status> {
        let mut peers = self.peers.lock().expect("peer map lock");
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad leader address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .local_address(self.node.bind_ip())
            .connect_lazy();
        let client = SequencerClient::with_interceptor(channel, self.secret.clone());
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Make this node's replica of `p` reflect every write acknowledged before the call (a Raft
    /// read index, asked of the leader, then a wait for the local apply). Costs a quorum round
    /// trip: callers use it when a local read missed something that may just not be applied
    /// here yet (a device registered through another node, say).
    pub async fn read_barrier(&self, p: PartitionId) -> Result<(), SeqError> {
        // Without a quorum the leader cannot confirm its term; do not wait for ever.
        let local = tokio::time::timeout(self.config.submit_timeout, self.node.read_index(p))
            .await
            .map_err(|_| SeqError::Unavailable {
                message: format!("no quorum confirmed the leader of {p} in time"),
                hint: None,
            })?;
        let offset = match local {
            Ok(offset) => offset,
            Err(e) => match leader_elsewhere(&e, self.node.node_id()) {
                Some(addr) => {
                    let mut request = tonic::Request::new(pb::ReadIndexRequest { partition: p.0 });
                    request.set_timeout(self.config.submit_timeout);
                    let reply = self
                        .peer(&addr)
                        .map_err(|s| SeqError::from_status(&s))?
                        .read_index(request)
                        .await
                        .map_err(|s| SeqError::from_status(&s))?;
                    LogOffset(reply.into_inner().offset)
                }
                None => return Err(e.into()),
            },
        };
        if self
            .node
            .wait_for_offset(p, offset, self.config.submit_timeout)
            .await?
        {
            Ok(())
        } else {
            Err(SeqError::Unavailable {
                message: format!("this node's replica of {p} is behind offset {offset}"),
                hint: None,
            })
        }
    }

    // ---- Typed helpers over `submit`. ----

    pub async fn register_user(&self, handle: &str) -> Result<pb::UserReply, SeqError> {
        self.register_user_with_device(handle, None).await
    }

    /// Register `handle` and, if the user is created by this call, its first device (with the
    /// sha256 of the device's bearer token) in the same apply.
    pub async fn register_user_with_device(
        &self,
        handle: &str,
        first_device: Option<(DeviceId, [u8; 32])>,
    ) -> Result<pb::UserReply, SeqError> {
        let (device, token) = first_device.map_or((0, Vec::new()), |(d, t)| (d.0, t.to_vec()));
        let c = command::Kind::RegisterUser(pb::RegisterUser {
            user_id: 0,
            handle: handle.to_string(),
            first_device_id: device,
            first_device_token_sha256: token,
        });
        match self.run(c).await? {
            command_reply::Kind::User(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Register a device with the sha256 of its bearer token.
    pub async fn add_device(
        &self,
        user: UserId,
        device: DeviceId,
        token_sha256: [u8; 32],
    ) -> Result<pb::DeviceReply, SeqError> {
        let c = command::Kind::AddDevice(pb::AddDevice {
            user_id: user.0,
            device_id: device.0,
            token_sha256: token_sha256.to_vec(),
        });
        match self.run(c).await? {
            command_reply::Kind::Device(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn revoke_device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<pb::DeviceReply, SeqError> {
        let c = command::Kind::RevokeDevice(pb::RevokeDevice {
            user_id: user.0,
            device_id: device.0,
        });
        match self.run(c).await? {
            command_reply::Kind::Device(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create_direct_chat(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<pb::ChatReply, SeqError> {
        self.create_chat(direct_chat_id(a, b), ChatKind::Direct, "", a, &[b])
            .await
    }

    /// Create a group; `request_id` makes retries name the same group.
    pub async fn create_group(
        &self,
        creator: UserId,
        request_id: &str,
        name: &str,
        members: &[UserId],
    ) -> Result<pb::ChatReply, SeqError> {
        self.create_chat(
            group_chat_id(creator, request_id),
            ChatKind::Group,
            name,
            creator,
            members,
        )
        .await
    }

    async fn create_chat(
        &self,
        chat: ChatId,
        kind: ChatKind,
        name: &str,
        creator: UserId,
        members: &[UserId],
    ) -> Result<pb::ChatReply, SeqError> {
        let c = command::Kind::CreateChat(pb::CreateChat {
            chat_id: chat.0,
            kind: kind as i32,
            name: name.to_string(),
            creator: creator.0,
            members: members.iter().map(|m| m.0).collect(),
        });
        match self.run(c).await? {
            command_reply::Kind::Chat(r) => Ok(pb::ChatReply {
                chat_id: chat.0,
                ..r
            }),
            other => Err(unexpected(other)),
        }
    }

    pub async fn change_members(
        &self,
        chat: ChatId,
        by: UserId,
        add: &[UserId],
        remove: &[UserId],
    ) -> Result<pb::ChatReply, SeqError> {
        let c = command::Kind::ChangeMembers(pb::ChangeMembers {
            chat_id: chat.0,
            by_user: by.0,
            add: add.iter().map(|u| u.0).collect(),
            remove: remove.iter().map(|u| u.0).collect(),
        });
        match self.run(c).await? {
            command_reply::Kind::Chat(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn send(&self, message: pb::SendMessage) -> Result<pb::SendAck, SeqError> {
        match self.run(command::Kind::SendMessage(message)).await? {
            command_reply::Kind::Send(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn advance_receipt(
        &self,
        chat: ChatId,
        user: UserId,
        device: DeviceId,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<pb::ReceiptReply, SeqError> {
        let c = command::Kind::AdvanceReceipt(pb::AdvanceReceipt {
            chat_id: chat.0,
            user_id: user.0,
            device_id: device.0,
            kind: kind as i32,
            up_to_seq,
        });
        match self.run(c).await? {
            command_reply::Kind::Receipt(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Retention: expire `chat`'s messages up to `up_to_seq` (the reply says how far it got).
    pub async fn expire_messages(
        &self,
        chat: ChatId,
        up_to_seq: u64,
    ) -> Result<pb::ExpireReply, SeqError> {
        let c = command::Kind::ExpireMessages(pb::ExpireMessages {
            chat_id: chat.0,
            up_to_seq,
        });
        match self.run(c).await? {
            command_reply::Kind::Expire(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Submit one command and answer its reply's kind (the workers use it too).
    pub(crate) async fn run(&self, kind: command::Kind) -> Result<command_reply::Kind, SeqError> {
        let reply = self.submit(pb::Command { kind: Some(kind) }, false).await?;
        reply
            .kind
            .ok_or_else(|| SeqError::Internal("empty reply".into()))
    }

    /// Messages of `chat` with `after_seq < seq < before_seq` (0: unbounded), oldest first, from
    /// this node's replica (which may lag the leader by what is not yet applied here). `limit`
    /// is clamped to the configured page size (0: 50).
    pub fn history(
        &self,
        chat: ChatId,
        after_seq: u64,
        before_seq: u64,
        limit: u32,
    ) -> Result<pb::HistoryReply, SeqError> {
        let limit = match limit {
            0 => 50,
            n => n.min(self.config.max_history_page),
        };
        let before = (before_seq != 0).then_some(ChatSeq(before_seq));
        StateReader::new(self.node.clone())
            .history(chat, ChatSeq(after_seq), before, limit)
            .map_err(|e| SeqError::Internal(e.to_string()))?
            .ok_or_else(|| SeqError::Rejected {
                code: RejectCode::NotFound,
                message: format!("chat {chat} does not exist"),
            })
    }
}

/// The leader's address when another node leads the partition.
fn leader_elsewhere(e: &ProposeError, me: NodeId) -> Option<String> {
    match e {
        ProposeError::NotLeader(LeaderHint {
            leader_id: Some(id),
            leader_addr: Some(addr),
            ..
        }) if *id != me => Some(addr.clone()),
        _ => None,
    }
}

impl From<ProposeError> for SeqError {
    fn from(e: ProposeError) -> SeqError {
        let message = e.to_string();
        match e {
            ProposeError::NotLeader(hint) => SeqError::Unavailable {
                message,
                hint: Some(hint),
            },
            ProposeError::Stopped { .. } => SeqError::Unavailable {
                message,
                hint: None,
            },
            ProposeError::DiskFull { .. } => SeqError::Rejected {
                code: RejectCode::ResourceExhausted,
                message,
            },
            ProposeError::UnknownPartition(_) => SeqError::Internal(message),
        }
    }
}

fn reply_of(outcome: ProposalOutcome) -> Result<pb::CommandReply, SeqError> {
    match outcome.outcomes.into_iter().next() {
        Some(CommandOutcome::Applied { reply, .. }) => pb::CommandReply::decode(reply.as_slice())
            .map_err(|e| SeqError::Internal(format!("decode reply: {e}"))),
        Some(CommandOutcome::Rejected { code, message }) => {
            Err(SeqError::Rejected { code, message })
        }
        None => Err(SeqError::Internal("no outcome for the command".into())),
    }
}

fn unexpected(reply: command_reply::Kind) -> SeqError {
    SeqError::Internal(format!("unexpected reply {reply:?}"))
}
