//! `HideMessages`: delete for me. Messages of a chat hidden from one member's history and
//! devices; the other members keep them.
//!
//! Check: 1 to [`MAX_HIDDEN_PER_COMMAND`] seqs. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND; the user must be a member (PERMISSION_DENIED). Each seq
//! of an existing message (1 to the chat's last seq) not hidden yet gets a `h` key
//! (chat, user, seq); if any did, emits `MessagesHidden` with those seqs (the hub sends it to
//! the user's own devices). Hiding again is a no-op, so a retry changes nothing. Reply:
//! `HiddenReply`.

use chat_log::PartitionId;
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, no_such_chat, not_a_member, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, ChatSeq, UserId};
use crate::state;

/// Most seqs one command hides.
pub const MAX_HIDDEN_PER_COMMAND: usize = 256;

impl ChatCommand for pb::HideMessages {
    type Reply = pb::HiddenReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        if self.seqs.is_empty() || self.seqs.len() > MAX_HIDDEN_PER_COMMAND {
            return Err(Invalid::new(format!(
                "delete for me takes 1 to {MAX_HIDDEN_PER_COMMAND} seqs"
            )));
        }
        Ok(cx.route(self.chat_id))
    }

    fn apply(mut self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let (chat, user) = (ChatId(self.chat_id), UserId(self.user));
        let Some(record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        if cx.member(chat, user)?.is_none() {
            return not_a_member(user, chat);
        }
        self.seqs.sort_unstable();
        self.seqs.dedup();
        let mut hidden = Vec::new();
        for seq in self.seqs {
            if seq == 0 || seq > record.last_seq {
                continue;
            }
            let key = state::hidden_key(chat, user, ChatSeq(seq));
            if !cx.exists(&key)? {
                cx.put(&key, Vec::new());
                hidden.push(seq);
            }
        }
        let reply = command_reply::Kind::Hidden(pb::HiddenReply {
            hidden: hidden.len() as u32,
        });
        if hidden.is_empty() {
            return applied(None, 0, reply);
        }
        let offset = cx.emit(chat_event::Kind::MessagesHidden(pb::MessagesHidden {
            chat_id: chat.0,
            user: user.0,
            seqs: hidden,
        }));
        applied(Some(offset), 1, reply)
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::HideMessages(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::HiddenReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Hidden(r) => Ok(r),
            other => Err(other),
        }
    }
}
