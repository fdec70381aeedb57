//! `DeleteMessage`: delete a message for everyone, through the log.
//!
//! Check: a seq is named. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND; the deleter must be a member and either the message's
//! sender or an admin of its group (PERMISSION_DENIED); a seq the chat does not have is
//! NOT_FOUND, and so is a tombstone (it has nothing to delete). A message already deleted
//! answers its tombstone (`duplicate = true`) and writes nothing. Otherwise rewrites the
//! message's event in place (payload and media removed, `deleted`, `deleted_in_seq`) — every
//! replica rewrites the same event at the same point of the log, so the payload is gone from all
//! of them — and appends the tombstone: a message from the deleter at the chat's next seq with
//! `deletes_seq`, written as a send writes a message (chat record `c`, history index `i`), so it
//! reaches every device in order, live or on resume. Reply: `SendAck` (the tombstone's).

use chat_log::{LogOffset, PartitionId, RejectCode, StoreError};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind};

use super::apply::{applied, no_such_chat, not_a_member, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::event::{self, ChatEventAt};
use crate::ids::{ChatId, ChatSeq, UserId};
use crate::state;

impl ChatCommand for pb::DeleteMessage {
    type Reply = pb::SendAck;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        if self.seq == 0 {
            return Err(Invalid::new("name the seq of the message to delete"));
        }
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let chat = ChatId(self.chat_id);
        let Some(mut record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        let by = UserId(self.by_user);
        let Some(member) = cx.member(chat, by)? else {
            return not_a_member(by, chat);
        };
        let seq = ChatSeq(self.seq);
        let missing = || {
            reject(
                RejectCode::NotFound,
                format!("chat {chat} has no message {seq}"),
            )
        };
        let Some(offset) = cx.ctx.get(&state::index_key(chat, seq))? else {
            return missing();
        };
        let offset = LogOffset(state::decode_offset(&offset)?);
        let Some(stored) = cx.ctx.read_event(offset)? else {
            return missing();
        };
        let Ok(Some(mut message)) = ChatEventAt::message(&stored) else {
            return Err(StoreError::decode(
                format!("chat {chat} seq {seq} at offset {offset}"),
                "not a message event",
            ));
        };
        if message.deletes_seq != 0 {
            return reject(
                RejectCode::NotFound,
                format!("chat {chat} message {seq} is a deletion, not a message"),
            );
        }
        if message.deleted {
            let tombstone = ChatSeq(message.deleted_in_seq);
            let at = cx.ctx.get(&state::index_key(chat, tombstone))?;
            let ack = pb::SendAck {
                chat_id: chat.0,
                seq: tombstone.0,
                offset: at
                    .map(|o| state::decode_offset(&o))
                    .transpose()?
                    .unwrap_or(0),
                server_ts_ms: 0,
                duplicate: true,
            };
            return applied(None, 0, command_reply::Kind::Send(ack));
        }
        let admin = record.kind == ChatKind::Group as i32 && member.admin;
        if message.sender_user != by.0 && !admin {
            return reject(
                RejectCode::PermissionDenied,
                format!("only its sender or a group admin deletes message {seq} of chat {chat}"),
            );
        }
        let deletion = pb::Message {
            chat_id: chat.0,
            sender_user: by.0,
            sender_device: self.by_device,
            deletes_seq: seq.0,
            ..Default::default()
        };
        let ack = cx.append_message(&mut record, deletion);
        let released = crate::media::released_by(UserId(message.sender_user), &message.media);
        message.payload.clear();
        message.media.clear();
        message.deleted = true;
        message.deleted_in_seq = ack.seq;
        cx.ctx
            .rewrite_event(offset, event::encode(chat_event::Kind::Message(message)));
        cx.release_media(chat, released);
        applied(
            Some(LogOffset(ack.offset)),
            1,
            command_reply::Kind::Send(ack),
        )
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::DeleteMessage(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::SendAck, command_reply::Kind> {
        match kind {
            command_reply::Kind::Send(r) => Ok(r),
            other => Err(other),
        }
    }
}
