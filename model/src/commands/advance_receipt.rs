//! `AdvanceReceipt`: a device has received (delivered) or read a chat's messages up to a seq.
//!
//! Check: none beyond routing. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND, a user who is not a member PERMISSION_DENIED, a seq
//! beyond the chat's last message or a kind other than delivered/read INVALID_ARGUMENT. Moves
//! the device's own cursor (`k`, its server-side resume point) forward, even when another device
//! of the user already moved the user's marks. Watermarks only move forward, and reading
//! implies delivery: when the user's delivered/read marks (`r`) move, writes them and emits
//! `ReceiptAdvanced`; a repeat or a regression emits nothing. Reply: `ReceiptReply` (the marks
//! after the command).

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ReceiptKind};

use super::apply::{applied, no_such_chat, not_a_member, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, DeviceId, UserId};
use crate::state::{self, ReceiptRecord};

impl ChatCommand for pb::AdvanceReceipt {
    type Reply = pb::ReceiptReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let (chat, user) = (ChatId(self.chat_id), UserId(self.user_id));
        let Some(record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        if !cx.exists(&state::member_key(chat, user))? {
            return not_a_member(user, chat);
        }
        if self.up_to_seq > record.last_seq {
            return reject(
                RejectCode::InvalidArgument,
                format!(
                    "seq {} is beyond the last message of chat {chat} ({})",
                    self.up_to_seq, record.last_seq
                ),
            );
        }
        let key = state::receipt_key(chat, user);
        let before: ReceiptRecord = cx.get("receipt", &key)?.unwrap_or_default();
        let mut after = before.clone();
        match ReceiptKind::try_from(self.kind).unwrap_or(ReceiptKind::Unspecified) {
            ReceiptKind::Delivered => after.delivered = after.delivered.max(self.up_to_seq),
            ReceiptKind::Read => {
                // Reading implies delivery.
                after.read = after.read.max(self.up_to_seq);
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
        let cursor_key = state::device_cursor_key(chat, user, DeviceId(self.device_id));
        let cursor = cx.get_u64("device cursor", &cursor_key)?;
        if self.up_to_seq > cursor {
            cx.put(&cursor_key, self.up_to_seq.to_be_bytes().to_vec());
        }
        let reply = command_reply::Kind::Receipt(pb::ReceiptReply {
            delivered_up_to: after.delivered,
            read_up_to: after.read,
        });
        if after == before {
            return applied(None, 0, reply); // a regression or a repeat: ignored
        }
        cx.put(&key, state::encode(&after));
        let event = pb::ReceiptAdvanced {
            chat_id: chat.0,
            user_id: user.0,
            device_id: self.device_id,
            delivered_up_to: after.delivered,
            read_up_to: after.read,
        };
        let offset = cx.emit(chat_event::Kind::ReceiptAdvanced(event));
        applied(Some(offset), 1, reply)
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::AdvanceReceipt(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::ReceiptReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Receipt(r) => Ok(r),
            other => Err(other),
        }
    }
}
