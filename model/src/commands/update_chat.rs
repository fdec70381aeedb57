//! `UpdateChat`: a chat's settings: a group's name, description and icon, and the
//! disappearing-messages timer.
//!
//! Check: a name of 1 to `max_handle_bytes`, a description of at most
//! [`MAX_DESCRIPTION_BYTES`], an icon within the media limits (an empty key removes it), a
//! timer of at most [`MAX_DISAPPEAR_SECS`]; at least one of them. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND; the changer must be a member (PERMISSION_DENIED). Name,
//! description and icon are a group's, set by its admins (a direct chat's are
//! FAILED_PRECONDITION); the timer is set by a group's admins or either member of a direct
//! chat; a block only in a direct chat, by either member for itself (`blocked_by`; a group's is
//! FAILED_PRECONDITION). Settings equal to the current ones write nothing. Otherwise writes the
//! chat record (`c`) and emits `ChatUpdated` with the settings as they now are — except for a
//! block, which emits nothing (the blocked user is not told). The retention sweeper
//! expires what the timer says (`chat-sequencer`'s `workers/retention.rs`). Reply: `ChatReply`
//! (`created = false`).

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind};

use super::apply::{applied, no_such_chat, not_a_member, reject, ChatApply, Outcome};
use super::chat_command::{check_media, ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, UserId};
use crate::state::{self, ChatRecord};

/// The longest group description.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// The longest disappearing-messages timer: a year.
pub const MAX_DISAPPEAR_SECS: u32 = 365 * 24 * 3600;

impl ChatCommand for pb::UpdateChat {
    type Reply = pb::ChatReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        let limits = cx.limits;
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > limits.max_handle_bytes {
                return Err(Invalid::new(format!(
                    "a group name has 1 to {} bytes",
                    limits.max_handle_bytes
                )));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(Invalid::new(format!(
                "a description has at most {MAX_DESCRIPTION_BYTES} bytes"
            )));
        }
        if let Some(icon) = self.icon.as_ref().filter(|i| !i.object_key.is_empty()) {
            check_media(icon, limits)?;
        }
        if self
            .disappear_after_secs
            .is_some_and(|s| s > MAX_DISAPPEAR_SECS)
        {
            return Err(Invalid::new(format!(
                "messages disappear after at most {MAX_DISAPPEAR_SECS} seconds"
            )));
        }
        let group_settings =
            self.name.is_some() || self.description.is_some() || self.icon.is_some();
        if !group_settings && self.disappear_after_secs.is_none() && self.block.is_none() {
            return Err(Invalid::new("nothing to update"));
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
        let group = record.kind == ChatKind::Group as i32;
        let group_settings =
            self.name.is_some() || self.description.is_some() || self.icon.is_some();
        if group_settings && !group {
            return reject(
                RejectCode::FailedPrecondition,
                "a direct chat has no name, description or icon",
            );
        }
        if self.block.is_some() && group {
            return reject(
                RejectCode::FailedPrecondition,
                "blocking is between the two members of a direct chat; leave a group instead",
            );
        }
        if group && !member.admin {
            return reject(
                RejectCode::PermissionDenied,
                format!("user {by} is not an admin of chat {chat}"),
            );
        }
        let before = record.clone();
        if let Some(name) = self.name {
            record.name = name;
        }
        if let Some(description) = self.description {
            record.description = description;
        }
        if let Some(icon) = self.icon {
            record.icon = (!icon.object_key.is_empty()).then_some(icon);
        }
        if let Some(secs) = self.disappear_after_secs {
            record.disappear_after_secs = secs;
        }
        if let Some(block) = self.block {
            record.blocked_by.retain(|&u| u != by.0);
            if block {
                record.blocked_by.push(by.0);
                record.blocked_by.sort_unstable();
            }
        }
        let reply = command_reply::Kind::Chat(pb::ChatReply {
            chat_id: chat.0,
            created: false,
            members: Vec::new(),
        });
        if record == before {
            return applied(None, 0, reply);
        }
        cx.put(&state::chat_key(chat), state::encode(&record));
        // A block alone tells nobody: the blocked user is not to learn of it.
        let told = ChatRecord {
            blocked_by: before.blocked_by.clone(),
            ..record.clone()
        };
        if told == before {
            return applied(None, 0, reply);
        }
        let event = pb::ChatUpdated {
            chat_id: chat.0,
            by_user: by.0,
            name: record.name,
            description: record.description,
            icon: record.icon,
            disappear_after_secs: record.disappear_after_secs,
        };
        let offset = cx.emit(chat_event::Kind::ChatUpdated(event));
        applied(Some(offset), 1, reply)
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::UpdateChat(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::ChatReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Chat(r) => Ok(r),
            other => Err(other),
        }
    }
}
