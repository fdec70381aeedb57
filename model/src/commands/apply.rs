//! What the apply half of every command shares: the limits that decide what is applied
//! ([`ApplyLimits`]), the partition as a command sees it while applying ([`ChatApply`]: typed
//! records, chat events, membership writes) and the two ways an apply ends ([`reject`],
//! [`applied`]).
//!
//! Each command file's `apply` uses these; nothing here knows any command, so the command files
//! and this one never depend on each other in a circle.

use chat_log::{ApplyContext, CommandOutcome, LogOffset, RejectCode, StateEntries, StoreError};
use chat_proto::chat_v1::{self as pb, chat_event, command_reply};
use prost::Message;

use crate::event::{self, CHAT_EVENT_KIND};
use crate::ids::{ChatId, ChatSeq, UserId};
use crate::state::{self, ChatRecord, MemberRecord};

/// Far above the devices one user links.
const MAX_DEVICES_READ: usize = 1 << 16;

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

/// What applying one command answers the log: applied (with its events and reply) or rejected;
/// an error only when the partition's storage failed.
pub type Outcome = Result<CommandOutcome, StoreError>;

/// A command refused at apply; nothing it wrote is kept.
pub fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Ok(CommandOutcome::Rejected {
        code,
        message: message.into(),
    })
}

/// The refusal of a command naming a chat this partition does not have.
pub fn no_such_chat(chat: ChatId) -> Outcome {
    reject(RejectCode::NotFound, format!("chat {chat} does not exist"))
}

/// The refusal of a command by (or for) a user who is not a member of the chat.
pub fn not_a_member(user: UserId, chat: ChatId) -> Outcome {
    reject(
        RejectCode::PermissionDenied,
        format!("user {user} is not a member of chat {chat}"),
    )
}

/// An applied command: the first event's offset (if any), how many events, and the reply.
pub fn applied(
    first_offset: Option<LogOffset>,
    events: u32,
    reply: command_reply::Kind,
) -> Outcome {
    Ok(CommandOutcome::Applied {
        first_offset,
        events,
        reply: pb::CommandReply { kind: Some(reply) }.encode_to_vec(),
    })
}

/// One command's view of its partition while it is applied: the log's [`ApplyContext`] (raw
/// state, the event log, the leader's clock) and the [`ApplyLimits`], with the chat model's
/// typed reads and writes over them.
pub struct ChatApply<'a, 'c> {
    /// The log's apply context, for what the helpers below do not cover (the clock, the last
    /// offset, prefix scans, reading and rewriting stored events).
    pub ctx: &'a mut ApplyContext<'c>,
    pub limits: &'a ApplyLimits,
}

impl<'a, 'c> ChatApply<'a, 'c> {
    pub fn new(ctx: &'a mut ApplyContext<'c>, limits: &'a ApplyLimits) -> Self {
        ChatApply { ctx, limits }
    }

    /// The record under `key`, decoded (`what` names it in a decode error).
    pub fn get<T: state::Record>(&self, what: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.ctx
            .get(key)?
            .map(|b| state::decode(what, &b))
            .transpose()
    }

    /// The record of `chat`, if this partition has the chat.
    pub fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.get("chat", &state::chat_key(chat))
    }

    /// A big-endian u64 value (marks, cursors), 0 when absent.
    pub fn get_u64(&self, what: &str, key: &[u8]) -> Result<u64, StoreError> {
        match self.ctx.get(key)? {
            Some(b) => state::decode_u64(what, &b),
            None => Ok(0),
        }
    }

    pub fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.ctx.get(key)?.is_some())
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.ctx.put(key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.ctx.delete(key);
    }

    /// Append a chat event to the partition's log; its offset.
    pub fn emit(&mut self, event: chat_event::Kind) -> LogOffset {
        self.ctx.emit_kind(CHAT_EVENT_KIND, event::encode(event))
    }

    /// Tell the media stores that `keys` (of `chat`'s messages) are no longer referred to: a
    /// `MediaReleased` event, which each key's node acts on. Nothing when there are none.
    pub fn release_media(&mut self, chat: ChatId, keys: Vec<String>) {
        if !keys.is_empty() {
            self.emit(chat_event::Kind::MediaReleased(pb::MediaReleased {
                chat_id: chat.0,
                object_keys: keys,
            }));
        }
    }

    /// Make `user` a member of `chat` (the member key and the user's reverse index entry).
    pub fn put_member(&mut self, chat: ChatId, user: UserId, record: &MemberRecord) {
        self.ctx
            .put(&state::member_key(chat, user), state::encode(record));
        self.ctx.put(&state::user_chat_key(user, chat), Vec::new());
    }

    /// `user`'s member record in `chat`, if a member.
    pub fn member(&self, chat: ChatId, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        self.get("member", &state::member_key(chat, user))
    }

    /// Append `message` to `chat` (whose record is `record`) at the chat's next seq, with the
    /// timestamp max(leader clock, chat's last timestamp): emits it and writes the chat record
    /// (`c`) and the history index (`i`). The message's seq, offset and time are set here.
    /// Returns its ack (`duplicate = false`).
    pub fn append_message(
        &mut self,
        record: &mut ChatRecord,
        mut message: pb::Message,
    ) -> pb::SendAck {
        let chat = ChatId(message.chat_id);
        let seq = ChatSeq(record.last_seq + 1);
        let ts = self.ctx.timestamp_ms().max(record.last_ts_ms);
        let offset = self.ctx.last_offset().next();
        message.seq = seq.0;
        message.offset = offset.0;
        message.server_ts_ms = ts;
        let emitted = self.emit(chat_event::Kind::Message(message));
        debug_assert_eq!(emitted, offset);
        record.last_seq = seq.0;
        record.last_ts_ms = ts;
        self.put(&state::chat_key(chat), state::encode(&*record));
        self.put(
            &state::index_key(chat, seq),
            offset.0.to_be_bytes().to_vec(),
        );
        pb::SendAck {
            chat_id: chat.0,
            seq: seq.0,
            offset: offset.0,
            server_ts_ms: ts,
            duplicate: false,
        }
    }

    /// Every device record of `user`: (its key, the record).
    pub fn device_entries(&self, user: UserId) -> Result<StateEntries, StoreError> {
        self.ctx
            .scan_prefix(&state::devices_prefix(user), MAX_DEVICES_READ)
    }

    pub fn delete_member(&mut self, chat: ChatId, user: UserId) {
        self.ctx.delete(&state::member_key(chat, user));
        self.ctx.delete(&state::user_chat_key(user, chat));
    }
}
