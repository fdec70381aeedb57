//! The chat command handler: applies `chat.v1.Command`s on every replica of a partition,
//! deterministically, and emits `chat.v1.ChatEvent`s.
//!
//! Everything that must agree across replicas is decided here, from partition state and the
//! proposal's leader timestamp only: chat existence, membership (so a send racing a removal is
//! decided by log order), per-chat seqs, timestamps, the dedup window, receipts monotonicity.
//! Every command is idempotent, so the sequencer may retry any of them after an ambiguous
//! failure (e.g. a leader that died after committing) without a second effect.

use chat_log::{ApplyContext, CommandHandler, CommandOutcome, LogOffset, RejectCode, StoreError};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind, ReceiptKind};
use prost::Message;

use crate::event::{self, ChatEventAt, CHAT_EVENT_KIND};
use crate::ids::{direct_chat_id, ChatId, ChatSeq, DeviceId, UserId};
use crate::state::{
    self, ChatRecord, DedupRecord, DeviceRecord, MemberRecord, ReceiptRecord, UserRecord,
};

/// The tag of chat commands in chatd's command dispatcher (`chat_log::Dispatch`).
pub const CHAT_COMMAND_TAG: u8 = 1;

/// Limits enforced at apply time. They decide what gets applied, so every node of a cluster
/// must use the same values.
#[derive(Debug, Clone)]
pub struct ApplyLimits {
    /// Most members of a group, the creator included.
    pub max_group_members: u32,
    /// How long a (device, client_msg_id) is remembered for retries.
    pub dedup_window_ms: u64,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            max_group_members: 1024,
            dedup_window_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// Most messages one ExpireMessages command expires (bounds the work of one apply).
pub const MAX_EXPIRE_PER_COMMAND: u64 = 10_000;

/// Expired dedup entries removed per applied send (keeps up with one insert per send).
const EXPIRE_PER_SEND: usize = 8;

pub struct ChatHandler {
    limits: ApplyLimits,
}

type Outcome = Result<CommandOutcome, StoreError>;

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Ok(CommandOutcome::Rejected {
        code,
        message: message.into(),
    })
}

/// An applied command: the first event's offset (if any), how many events, and the reply.
fn applied(first_offset: Option<LogOffset>, events: u32, reply: command_reply::Kind) -> Outcome {
    Ok(CommandOutcome::Applied {
        first_offset,
        events,
        reply: pb::CommandReply { kind: Some(reply) }.encode_to_vec(),
    })
}

fn emit(ctx: &mut ApplyContext<'_>, event: chat_event::Kind) -> LogOffset {
    ctx.emit_kind(CHAT_EVENT_KIND, event::encode(event))
}

fn get<T: state::Record>(
    ctx: &ApplyContext<'_>,
    what: &str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    ctx.get(key)?.map(|b| state::decode(what, &b)).transpose()
}

/// Make `user` a member of `chat` (the member key and the user's reverse index entry).
fn put_member(ctx: &mut ApplyContext<'_>, chat: ChatId, user: UserId, record: &MemberRecord) {
    ctx.put(&state::member_key(chat, user), state::encode(record));
    ctx.put(&state::user_chat_key(user, chat), Vec::new());
}

fn delete_member(ctx: &mut ApplyContext<'_>, chat: ChatId, user: UserId) {
    ctx.delete(&state::member_key(chat, user));
    ctx.delete(&state::user_chat_key(user, chat));
}

impl ChatHandler {
    pub fn new(limits: ApplyLimits) -> Self {
        ChatHandler { limits }
    }

    fn register_user(&self, ctx: &mut ApplyContext<'_>, c: pb::RegisterUser) -> Outcome {
        let user = UserId(c.user_id);
        let first_device = (c.first_device_id != 0).then_some(DeviceId(c.first_device_id));
        let reply = |created, device_matches| {
            command_reply::Kind::User(pb::UserReply {
                user_id: user.0,
                created,
                device_matches,
            })
        };
        if let Some(existing) = get::<UserRecord>(ctx, "user", &state::user_key(user))? {
            if existing.handle != c.handle {
                return reject(
                    RejectCode::AlreadyExists,
                    format!("user id {user} belongs to another handle"),
                );
            }
            // Taken; but a retry of the registration that created it names the same device.
            let matches = match first_device {
                Some(d) => get::<DeviceRecord>(ctx, "device", &state::device_key(user, d))?
                    .is_some_and(|r| !r.revoked && r.token_sha256 == c.first_device_token_sha256),
                None => false,
            };
            return applied(None, 0, reply(false, matches));
        }
        ctx.put(
            &state::user_key(user),
            state::encode(&UserRecord {
                handle: c.handle.clone(),
            }),
        );
        let offset = emit(
            ctx,
            chat_event::Kind::UserRegistered(pb::UserRegistered {
                user_id: user.0,
                handle: c.handle,
            }),
        );
        let Some(device) = first_device else {
            return applied(Some(offset), 1, reply(true, false));
        };
        let record = DeviceRecord {
            token_sha256: c.first_device_token_sha256.clone(),
            revoked: false,
        };
        ctx.put(&state::device_key(user, device), state::encode(&record));
        emit(
            ctx,
            chat_event::Kind::DeviceAdded(pb::DeviceAdded {
                user_id: user.0,
                device_id: device.0,
                token_sha256: c.first_device_token_sha256,
            }),
        );
        applied(Some(offset), 2, reply(true, true))
    }

    fn add_device(&self, ctx: &mut ApplyContext<'_>, c: pb::AddDevice) -> Outcome {
        let (user, device) = (UserId(c.user_id), DeviceId(c.device_id));
        let reply = |changed| {
            command_reply::Kind::Device(pb::DeviceReply {
                user_id: user.0,
                device_id: device.0,
                changed,
            })
        };
        if ctx.get(&state::user_key(user))?.is_none() {
            return reject(
                RejectCode::NotFound,
                format!("user {user} is not registered"),
            );
        }
        let key = state::device_key(user, device);
        if let Some(d) = get::<DeviceRecord>(ctx, "device", &key)? {
            if !d.revoked && d.token_sha256 == c.token_sha256 {
                return applied(None, 0, reply(false));
            }
        }
        let record = DeviceRecord {
            token_sha256: c.token_sha256.clone(),
            revoked: false,
        };
        ctx.put(&key, state::encode(&record));
        let event = pb::DeviceAdded {
            user_id: user.0,
            device_id: device.0,
            token_sha256: c.token_sha256,
        };
        let offset = emit(ctx, chat_event::Kind::DeviceAdded(event));
        applied(Some(offset), 1, reply(true))
    }

    fn revoke_device(&self, ctx: &mut ApplyContext<'_>, c: pb::RevokeDevice) -> Outcome {
        let (user, device) = (UserId(c.user_id), DeviceId(c.device_id));
        let key = state::device_key(user, device);
        let Some(mut d) = get::<DeviceRecord>(ctx, "device", &key)? else {
            return reject(
                RejectCode::NotFound,
                format!("user {user} has no device {device}"),
            );
        };
        let reply = |changed| {
            command_reply::Kind::Device(pb::DeviceReply {
                user_id: user.0,
                device_id: device.0,
                changed,
            })
        };
        if d.revoked {
            return applied(None, 0, reply(false));
        }
        d.revoked = true;
        ctx.put(&key, state::encode(&d));
        let offset = emit(
            ctx,
            chat_event::Kind::DeviceRevoked(pb::DeviceRevoked {
                user_id: user.0,
                device_id: device.0,
            }),
        );
        applied(Some(offset), 1, reply(true))
    }

    fn create_chat(&self, ctx: &mut ApplyContext<'_>, c: pb::CreateChat) -> Outcome {
        let chat = ChatId(c.chat_id);
        let creator = UserId(c.creator);
        let mut members: Vec<u64> = c.members.iter().copied().chain([c.creator]).collect();
        members.sort_unstable();
        members.dedup();
        let kind = ChatKind::try_from(c.kind).unwrap_or(ChatKind::Unspecified);
        match kind {
            ChatKind::Direct => {
                if members.len() != 2 {
                    return reject(
                        RejectCode::InvalidArgument,
                        "a direct chat has exactly two different members",
                    );
                }
                let other = UserId(
                    members
                        .iter()
                        .copied()
                        .find(|&m| m != creator.0)
                        .expect("two members"),
                );
                if direct_chat_id(creator, other) != chat {
                    return reject(
                        RejectCode::InvalidArgument,
                        "a direct chat's id must be derived from its two members",
                    );
                }
            }
            ChatKind::Group => {
                if members.len() > self.limits.max_group_members as usize {
                    return reject(
                        RejectCode::InvalidArgument,
                        format!(
                            "{} members; a group has at most {}",
                            members.len(),
                            self.limits.max_group_members
                        ),
                    );
                }
            }
            ChatKind::Unspecified => {
                return reject(
                    RejectCode::InvalidArgument,
                    "chat kind must be direct or group",
                )
            }
        }
        let reply = |created, members: Vec<u64>| {
            command_reply::Kind::Chat(pb::ChatReply {
                chat_id: chat.0,
                created,
                members,
            })
        };
        if let Some(existing) = get::<ChatRecord>(ctx, "chat", &state::chat_key(chat))? {
            // A retry of the same creation (or the other side creating the same direct chat).
            if existing.kind == kind as i32
                && (kind == ChatKind::Direct || existing.creator == creator.0)
            {
                return applied(None, 0, reply(false, Vec::new()));
            }
            return reject(
                RejectCode::AlreadyExists,
                format!("chat {chat} already exists"),
            );
        }
        let record = ChatRecord {
            kind: kind as i32,
            name: c.name.clone(),
            creator: creator.0,
            members: members.len() as u32,
            last_seq: 0,
            expired_up_to: 0,
            last_ts_ms: 0,
        };
        ctx.put(&state::chat_key(chat), state::encode(&record));
        for &m in &members {
            let admin = kind == ChatKind::Group && m == creator.0;
            let member = MemberRecord {
                admin,
                joined_after: 0,
            };
            put_member(ctx, chat, UserId(m), &member);
        }
        let event = pb::ChatCreated {
            chat_id: chat.0,
            kind: kind as i32,
            name: c.name,
            creator: creator.0,
            members: members.clone(),
        };
        let offset = emit(ctx, chat_event::Kind::ChatCreated(event));
        applied(Some(offset), 1, reply(true, members))
    }

    fn change_members(&self, ctx: &mut ApplyContext<'_>, c: pb::ChangeMembers) -> Outcome {
        let chat = ChatId(c.chat_id);
        let Some(mut record) = get::<ChatRecord>(ctx, "chat", &state::chat_key(chat))? else {
            return reject(RejectCode::NotFound, format!("chat {chat} does not exist"));
        };
        if record.kind != ChatKind::Group as i32 {
            return reject(
                RejectCode::FailedPrecondition,
                "members of a direct chat cannot change",
            );
        }
        let by = UserId(c.by_user);
        match get::<MemberRecord>(ctx, "member", &state::member_key(chat, by))? {
            Some(m) if m.admin => {}
            _ => {
                return reject(
                    RejectCode::PermissionDenied,
                    format!("user {by} is not an admin of chat {chat}"),
                )
            }
        }
        let mut added = Vec::new();
        for &u in &c.add {
            if !added.contains(&u) && ctx.get(&state::member_key(chat, UserId(u)))?.is_none() {
                added.push(u);
            }
        }
        let mut removed = Vec::new();
        for &u in &c.remove {
            if !removed.contains(&u)
                && !added.contains(&u)
                && ctx.get(&state::member_key(chat, UserId(u)))?.is_some()
            {
                removed.push(u);
            }
        }
        let after = record.members as usize + added.len() - removed.len();
        if after > self.limits.max_group_members as usize {
            return reject(
                RejectCode::FailedPrecondition,
                format!(
                    "chat {chat} would have {after} members; a group has at most {}",
                    self.limits.max_group_members
                ),
            );
        }
        let reply = |members| {
            command_reply::Kind::Chat(pb::ChatReply {
                chat_id: chat.0,
                created: false,
                members,
            })
        };
        if added.is_empty() && removed.is_empty() {
            return applied(None, 0, reply(Vec::new()));
        }
        let member = MemberRecord {
            admin: false,
            joined_after: record.last_seq,
        };
        for &u in &added {
            put_member(ctx, chat, UserId(u), &member);
        }
        for &u in &removed {
            delete_member(ctx, chat, UserId(u));
        }
        record.members = after as u32;
        ctx.put(&state::chat_key(chat), state::encode(&record));
        let event = pb::MembersChanged {
            chat_id: chat.0,
            by_user: by.0,
            added,
            removed,
            last_seq: record.last_seq,
        };
        let offset = emit(ctx, chat_event::Kind::MembersChanged(event));
        applied(Some(offset), 1, reply(Vec::new()))
    }

    fn send_message(&self, ctx: &mut ApplyContext<'_>, c: pb::SendMessage) -> Outcome {
        let (chat, user, device) = (
            ChatId(c.chat_id),
            UserId(c.sender_user),
            DeviceId(c.sender_device),
        );
        let now = ctx.timestamp_ms();
        let dedup_key = state::dedup_key(user, device, &c.client_msg_id);
        if let Some(d) = get::<DedupRecord>(ctx, "dedup", &dedup_key)? {
            if d.server_ts_ms.saturating_add(self.limits.dedup_window_ms) > now {
                let ack = pb::SendAck {
                    chat_id: d.chat,
                    seq: d.seq,
                    offset: d.offset,
                    server_ts_ms: d.server_ts_ms,
                    duplicate: true,
                };
                return applied(None, 0, command_reply::Kind::Send(ack));
            }
        }
        let Some(mut record) = get::<ChatRecord>(ctx, "chat", &state::chat_key(chat))? else {
            return reject(RejectCode::NotFound, format!("chat {chat} does not exist"));
        };
        if ctx.get(&state::member_key(chat, user))?.is_none() {
            return reject(
                RejectCode::PermissionDenied,
                format!("user {user} is not a member of chat {chat}"),
            );
        }
        let seq = ChatSeq(record.last_seq + 1);
        let ts = now.max(record.last_ts_ms);
        let offset = ctx.last_offset().next();
        let message = pb::Message {
            chat_id: chat.0,
            seq: seq.0,
            offset: offset.0,
            sender_user: user.0,
            sender_device: device.0,
            client_msg_id: c.client_msg_id,
            server_ts_ms: ts,
            payload: c.payload,
            media: c.media,
            expired: false,
        };
        let emitted = emit(ctx, chat_event::Kind::Message(message));
        debug_assert_eq!(emitted, offset);
        record.last_seq = seq.0;
        record.last_ts_ms = ts;
        ctx.put(&state::chat_key(chat), state::encode(&record));
        ctx.put(
            &state::index_key(chat, seq),
            offset.0.to_be_bytes().to_vec(),
        );
        let dedup = DedupRecord {
            chat: chat.0,
            seq: seq.0,
            offset: offset.0,
            server_ts_ms: ts,
        };
        ctx.put(&dedup_key, state::encode(&dedup));
        ctx.put(&state::expiry_key(ts, &dedup_key), Vec::new());
        self.expire_dedup(ctx, now)?;
        let ack = pb::SendAck {
            chat_id: chat.0,
            seq: seq.0,
            offset: offset.0,
            server_ts_ms: ts,
            duplicate: false,
        };
        applied(Some(offset), 1, command_reply::Kind::Send(ack))
    }

    /// Forget the oldest dedup entries that have left the window (a few per send).
    fn expire_dedup(&self, ctx: &mut ApplyContext<'_>, now: u64) -> Result<(), StoreError> {
        for (key, _) in ctx.scan_prefix(state::EXPIRY_PREFIX, EXPIRE_PER_SEND)? {
            let Some((ts, dedup_key)) = state::parse_expiry_key(&key) else {
                continue;
            };
            if ts.saturating_add(self.limits.dedup_window_ms) > now {
                break;
            }
            // Only drop the dedup entry if it is the one this expiry entry was written for.
            if let Some(d) = get::<DedupRecord>(ctx, "dedup", dedup_key)? {
                if d.server_ts_ms == ts {
                    ctx.delete(dedup_key);
                }
            }
            ctx.delete(&key);
        }
        Ok(())
    }

    /// Retention: strip the payload and media of messages up to `up_to_seq` (at most
    /// [`MAX_EXPIRE_PER_COMMAND`] per command), rewriting their events in place.
    fn expire_messages(&self, ctx: &mut ApplyContext<'_>, c: pb::ExpireMessages) -> Outcome {
        let chat = ChatId(c.chat_id);
        let Some(mut record) = get::<ChatRecord>(ctx, "chat", &state::chat_key(chat))? else {
            return reject(RejectCode::NotFound, format!("chat {chat} does not exist"));
        };
        let target = c.up_to_seq.min(record.last_seq);
        let reply = |up_to| {
            command_reply::Kind::Expire(pb::ExpireReply {
                expired_up_to: up_to,
            })
        };
        if target <= record.expired_up_to {
            return applied(None, 0, reply(record.expired_up_to));
        }
        let to = target.min(record.expired_up_to + MAX_EXPIRE_PER_COMMAND);
        for seq in record.expired_up_to + 1..=to {
            let Some(offset) = ctx.get(&state::index_key(chat, ChatSeq(seq)))? else {
                continue;
            };
            let offset = LogOffset(state::decode_offset(&offset)?);
            let Some(event) = ctx.read_event(offset)? else {
                continue;
            };
            let Ok(Some(mut m)) = ChatEventAt::message(&event) else {
                return Err(StoreError::decode(
                    format!("chat {chat} seq {seq} at offset {offset}"),
                    "not a message event",
                ));
            };
            m.payload.clear();
            m.media.clear();
            m.expired = true;
            ctx.rewrite_event(offset, event::encode(chat_event::Kind::Message(m)));
        }
        record.expired_up_to = to;
        ctx.put(&state::chat_key(chat), state::encode(&record));
        let offset = emit(
            ctx,
            chat_event::Kind::MessagesExpired(pb::MessagesExpired {
                chat_id: chat.0,
                up_to_seq: to,
            }),
        );
        applied(Some(offset), 1, reply(to))
    }

    /// Apply a membership follow-up to users' chat lists, once per (source partition, offset).
    fn apply_follow_ups(&self, ctx: &mut ApplyContext<'_>, c: pb::ApplyFollowUps) -> Outcome {
        let mark_key = state::follow_up_mark_key(c.source_partition);
        let mark = match ctx.get(&mark_key)? {
            Some(b) => state::decode_u64("follow-up mark", &b)?,
            None => 0,
        };
        let reply = |applied| command_reply::Kind::FollowUp(pb::FollowUpReply { applied });
        if c.source_offset <= mark {
            return applied(None, 0, reply(false)); // a redelivery
        }
        ctx.put(&mark_key, c.source_offset.to_be_bytes().to_vec());
        let mut first = None;
        let mut events = 0;
        for e in c.entries {
            let key = state::chat_list_key(UserId(e.user_id), ChatId(e.chat_id));
            let present = ctx.get(&key)?.is_some();
            if present == e.joined {
                continue; // already so (e.g. created and re-added)
            }
            if e.joined {
                ctx.put(&key, Vec::new());
            } else {
                ctx.delete(&key);
            }
            let offset = emit(
                ctx,
                chat_event::Kind::ChatListChanged(pb::ChatListChanged {
                    user_id: e.user_id,
                    chat_id: e.chat_id,
                    joined: e.joined,
                    source_partition: c.source_partition,
                    source_offset: c.source_offset,
                }),
            );
            first.get_or_insert(offset);
            events += 1;
        }
        applied(first, events, reply(true))
    }

    /// Record how far this partition's follow-ups have been applied (monotonic).
    fn follow_ups_sent(&self, ctx: &mut ApplyContext<'_>, c: pb::FollowUpsSent) -> Outcome {
        let current = match ctx.get(state::FOLLOW_UPS_SENT_KEY)? {
            Some(b) => state::decode_u64("follow-ups sent", &b)?,
            None => 0,
        };
        if c.up_to_offset > current {
            ctx.put(
                state::FOLLOW_UPS_SENT_KEY,
                c.up_to_offset.to_be_bytes().to_vec(),
            );
        }
        let reply = command_reply::Kind::FollowUp(pb::FollowUpReply {
            applied: c.up_to_offset > current,
        });
        applied(None, 0, reply)
    }

    fn advance_receipt(&self, ctx: &mut ApplyContext<'_>, c: pb::AdvanceReceipt) -> Outcome {
        let (chat, user) = (ChatId(c.chat_id), UserId(c.user_id));
        let Some(record) = get::<ChatRecord>(ctx, "chat", &state::chat_key(chat))? else {
            return reject(RejectCode::NotFound, format!("chat {chat} does not exist"));
        };
        if ctx.get(&state::member_key(chat, user))?.is_none() {
            return reject(
                RejectCode::PermissionDenied,
                format!("user {user} is not a member of chat {chat}"),
            );
        }
        if c.up_to_seq > record.last_seq {
            return reject(
                RejectCode::InvalidArgument,
                format!(
                    "seq {} is beyond the last message of chat {chat} ({})",
                    c.up_to_seq, record.last_seq
                ),
            );
        }
        let key = state::receipt_key(chat, user);
        let before: ReceiptRecord = get(ctx, "receipt", &key)?.unwrap_or_default();
        let mut after = before.clone();
        match ReceiptKind::try_from(c.kind).unwrap_or(ReceiptKind::Unspecified) {
            ReceiptKind::Delivered => after.delivered = after.delivered.max(c.up_to_seq),
            ReceiptKind::Read => {
                // Reading implies delivery.
                after.read = after.read.max(c.up_to_seq);
                after.delivered = after.delivered.max(after.read);
            }
            ReceiptKind::Unspecified => {
                return reject(
                    RejectCode::InvalidArgument,
                    "receipt kind must be delivered or read",
                )
            }
        }
        // The device's own cursor moves even when another device already moved the user's marks.
        let cursor_key = state::device_cursor_key(chat, user, DeviceId(c.device_id));
        let cursor = match ctx.get(&cursor_key)? {
            Some(b) => state::decode_u64("device cursor", &b)?,
            None => 0,
        };
        if c.up_to_seq > cursor {
            ctx.put(&cursor_key, c.up_to_seq.to_be_bytes().to_vec());
        }
        let reply = command_reply::Kind::Receipt(pb::ReceiptReply {
            delivered_up_to: after.delivered,
            read_up_to: after.read,
        });
        if after == before {
            return applied(None, 0, reply); // a regression or a repeat: ignored
        }
        ctx.put(&key, state::encode(&after));
        let event = pb::ReceiptAdvanced {
            chat_id: chat.0,
            user_id: user.0,
            device_id: c.device_id,
            delivered_up_to: after.delivered,
            read_up_to: after.read,
        };
        let offset = emit(ctx, chat_event::Kind::ReceiptAdvanced(event));
        applied(Some(offset), 1, reply)
    }
}

impl CommandHandler for ChatHandler {
    fn apply(&self, ctx: &mut ApplyContext<'_>, bytes: &[u8]) -> Outcome {
        let command = match pb::Command::decode(bytes) {
            Ok(c) => c,
            Err(e) => {
                return reject(
                    RejectCode::InvalidArgument,
                    format!("malformed chat command: {e}"),
                )
            }
        };
        match command.kind {
            Some(command::Kind::RegisterUser(c)) => self.register_user(ctx, c),
            Some(command::Kind::AddDevice(c)) => self.add_device(ctx, c),
            Some(command::Kind::RevokeDevice(c)) => self.revoke_device(ctx, c),
            Some(command::Kind::CreateChat(c)) => self.create_chat(ctx, c),
            Some(command::Kind::ChangeMembers(c)) => self.change_members(ctx, c),
            Some(command::Kind::ExpireMessages(c)) => self.expire_messages(ctx, c),
            Some(command::Kind::ApplyFollowUps(c)) => self.apply_follow_ups(ctx, c),
            Some(command::Kind::FollowUpsSent(c)) => self.follow_ups_sent(ctx, c),
            Some(command::Kind::SendMessage(c)) => self.send_message(ctx, c),
            Some(command::Kind::AdvanceReceipt(c)) => self.advance_receipt(ctx, c),
            None => reject(RejectCode::InvalidArgument, "empty chat command"),
        }
    }
}
