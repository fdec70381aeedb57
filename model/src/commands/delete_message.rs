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

use super::apply::{applied, no_such_chat, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::event::{self, ChatEventAt};
use crate::ids::{ChatId, ChatSeq, UserId};
use crate::state::{self, MemberRecord};

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
        let Some(member) = cx.get::<MemberRecord>("member", &state::member_key(chat, by))? else {
            return reject(
                RejectCode::PermissionDenied,
                format!("user {by} is not a member of chat {chat}"),
            );
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
        let tombstone = ChatSeq(record.last_seq + 1);
        message.payload.clear();
        message.media.clear();
        message.deleted = true;
        message.deleted_in_seq = tombstone.0;
        cx.ctx
            .rewrite_event(offset, event::encode(chat_event::Kind::Message(message)));

        let ts = cx.ctx.timestamp_ms().max(record.last_ts_ms);
        let at = cx.ctx.last_offset().next();
        let deletion = pb::Message {
            chat_id: chat.0,
            seq: tombstone.0,
            offset: at.0,
            sender_user: by.0,
            sender_device: self.by_device,
            server_ts_ms: ts,
            deletes_seq: seq.0,
            ..Default::default()
        };
        let emitted = cx.emit(chat_event::Kind::Message(deletion));
        debug_assert_eq!(emitted, at);
        record.last_seq = tombstone.0;
        record.last_ts_ms = ts;
        cx.put(&state::chat_key(chat), state::encode(&record));
        cx.put(
            &state::index_key(chat, tombstone),
            at.0.to_be_bytes().to_vec(),
        );
        let ack = pb::SendAck {
            chat_id: chat.0,
            seq: tombstone.0,
            offset: at.0,
            server_ts_ms: ts,
            duplicate: false,
        };
        applied(Some(at), 1, command_reply::Kind::Send(ack))
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
