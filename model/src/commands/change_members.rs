//! `ChangeMembers`: an admin adds members to a group and removes members from it.
//!
//! Check: none beyond routing. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND; a direct chat's members cannot change
//! (FAILED_PRECONDITION); only an admin may change them (PERMISSION_DENIED). Only effective
//! changes count: adding a current member or removing a non-member does nothing, and a user
//! both added and removed is added. A group that would grow past `max_group_members` is
//! FAILED_PRECONDITION. With nothing effective, nothing is written. Otherwise writes the new
//! members' records (`m`, joined after the chat's last seq, so they see nothing from before)
//! and reverse index entries (`j`), deletes the removed ones', updates the member count in the
//! chat record (`c`) and emits `MembersChanged` with the chat's last seq. Reply: `ChatReply`
//! (`created = false`, no members).

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind};

use super::apply::{applied, no_such_chat, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, UserId};
use crate::state::{self, MemberRecord};

impl ChatCommand for pb::ChangeMembers {
    type Reply = pb::ChatReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let chat = ChatId(self.chat_id);
        let Some(mut record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        if record.kind != ChatKind::Group as i32 {
            return reject(
                RejectCode::FailedPrecondition,
                "members of a direct chat cannot change",
            );
        }
        let by = UserId(self.by_user);
        match cx.get::<MemberRecord>("member", &state::member_key(chat, by))? {
            Some(m) if m.admin => {}
            _ => {
                return reject(
                    RejectCode::PermissionDenied,
                    format!("user {by} is not an admin of chat {chat}"),
                )
            }
        }
        let mut added = Vec::new();
        for &u in &self.add {
            if !added.contains(&u) && !cx.exists(&state::member_key(chat, UserId(u)))? {
                added.push(u);
            }
        }
        let mut removed = Vec::new();
        for &u in &self.remove {
            if !removed.contains(&u)
                && !added.contains(&u)
                && cx.exists(&state::member_key(chat, UserId(u)))?
            {
                removed.push(u);
            }
        }
        let after = record.members as usize + added.len() - removed.len();
        let max = cx.limits.max_group_members;
        if after > max as usize {
            return reject(
                RejectCode::FailedPrecondition,
                format!("chat {chat} would have {after} members; a group has at most {max}"),
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
            cx.put_member(chat, UserId(u), &member);
        }
        for &u in &removed {
            cx.delete_member(chat, UserId(u));
        }
        record.members = after as u32;
        cx.put(&state::chat_key(chat), state::encode(&record));
        let event = pb::MembersChanged {
            chat_id: chat.0,
            by_user: by.0,
            added,
            removed,
            last_seq: record.last_seq,
        };
        let offset = cx.emit(chat_event::Kind::MembersChanged(event));
        applied(Some(offset), 1, reply(Vec::new()))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::ChangeMembers(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::ChatReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Chat(r) => Ok(r),
            other => Err(other),
        }
    }
}
