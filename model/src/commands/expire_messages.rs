//! `ExpireMessages`: retention. Strip the payload and media of a chat's messages up to a seq,
//! rewriting their events in place; each keeps its seq, offset, sender and time, marked
//! `expired`. Proposed by the retention sweeper on the partition's leader
//! (`chat_sequencer::workers::retention`), which decides how far.
//!
//! Check: none beyond routing. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND. Expires from after the chat's `expired_up_to` to
//! min(up_to_seq, last seq), at most [`MAX_EXPIRE_PER_COMMAND`] messages per command; nothing
//! to do writes nothing. Rewrites each message event (through the history index `i`), records
//! how far in the chat record (`c`) and emits `MessagesExpired`. Every replica rewrites the same
//! events at the same point of the log, so replicas stay byte-identical. Reply: `ExpireReply`
//! (how far the chat is expired now).

use chat_log::{LogOffset, PartitionId, StoreError};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, no_such_chat, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::event::{self, ChatEventAt};
use crate::ids::{ChatId, ChatSeq, UserId};
use crate::state;

/// Most messages one ExpireMessages command expires (bounds the work of one apply).
pub const MAX_EXPIRE_PER_COMMAND: u64 = 10_000;

impl ChatCommand for pb::ExpireMessages {
    type Reply = pb::ExpireReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let chat = ChatId(self.chat_id);
        let Some(mut record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        let target = self.up_to_seq.min(record.last_seq);
        let reply = |up_to| {
            command_reply::Kind::Expire(pb::ExpireReply {
                expired_up_to: up_to,
            })
        };
        if target <= record.expired_up_to {
            return applied(None, 0, reply(record.expired_up_to));
        }
        let to = target.min(record.expired_up_to + MAX_EXPIRE_PER_COMMAND);
        let mut released = Vec::new();
        for seq in record.expired_up_to + 1..=to {
            let Some(offset) = cx.ctx.get(&state::index_key(chat, ChatSeq(seq)))? else {
                continue;
            };
            let offset = LogOffset(state::decode_offset(&offset)?);
            let Some(event) = cx.ctx.read_event(offset)? else {
                continue;
            };
            let Ok(Some(mut m)) = ChatEventAt::message(&event) else {
                return Err(StoreError::decode(
                    format!("chat {chat} seq {seq} at offset {offset}"),
                    "not a message event",
                ));
            };
            released.extend(crate::media::released_by(UserId(m.sender_user), &m.media));
            m.payload.clear();
            m.media.clear();
            m.expired = true;
            cx.ctx
                .rewrite_event(offset, event::encode(chat_event::Kind::Message(m)));
        }
        record.expired_up_to = to;
        cx.put(&state::chat_key(chat), state::encode(&record));
        let offset = cx.emit(chat_event::Kind::MessagesExpired(pb::MessagesExpired {
            chat_id: chat.0,
            up_to_seq: to,
        }));
        cx.release_media(chat, released);
        applied(Some(offset), 1, reply(to))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::ExpireMessages(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::ExpireReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Expire(r) => Ok(r),
            other => Err(other),
        }
    }
}
