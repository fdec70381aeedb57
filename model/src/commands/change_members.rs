//! `ChangeMembers`: an admin adds, removes, promotes and demotes members of a group; any member
//! leaves it.
//!
//! Check: none beyond routing. Goes to the chat's partition.
//!
//! Apply: an unknown chat is NOT_FOUND; a direct chat's members cannot change but for a member
//! leaving it (FAILED_PRECONDITION; account deletion leaves them); the changer must be a member, and an admin unless it only removes
//! itself (leaving) (PERMISSION_DENIED). Only effective changes count: adding a current member
//! or removing a non-member does nothing, a user both added and removed is added, promoting an
//! admin or a non-member and demoting a non-admin do nothing. A group that would grow past
//! `max_group_members` is FAILED_PRECONDITION, and so is one that demoting would leave without
//! an admin; when its last admin leaves, the longest-standing member (earliest join, then
//! smallest id) becomes admin. With nothing effective, nothing is written. Otherwise writes the
//! new members' records (`m`, joined after the chat's last seq, so they see nothing from
//! before) and reverse index entries (`j`), the changed admin flags, deletes the removed
//! members', updates the member count in the chat record (`c`) and emits `MembersChanged` with
//! the chat's last seq. Reply: `ChatReply` (`created = false`, no members).

use std::collections::BTreeMap;

use chat_log::{PartitionId, RejectCode, StoreError};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind};

use super::apply::{applied, no_such_chat, not_a_member, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, UserId};
use crate::state::{self, ChatRecord, MemberRecord};

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
        let by = UserId(self.by_user);
        let leaving = self.remove == [by.0]
            && self.add.is_empty()
            && self.promote.is_empty()
            && self.demote.is_empty();
        if record.kind != ChatKind::Group as i32 && !leaving {
            return reject(
                RejectCode::FailedPrecondition,
                "members of a direct chat cannot change (a member may only leave it)",
            );
        }
        let Some(by_admin) = cx.member(chat, by)?.map(|m| m.admin) else {
            return not_a_member(by, chat);
        };
        if record.kind != ChatKind::Group as i32 {
            return leave_direct(cx, chat, record, by);
        }
        if !by_admin && !leaving {
            return reject(
                RejectCode::PermissionDenied,
                format!("user {by} is not an admin of chat {chat}"),
            );
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
        // Admin changes: only on members who stay, and only effective ones.
        let mut admins = Admins::read(cx, chat)?;
        let mut promoted = Vec::new();
        for &u in &self.promote {
            let member = admins.members.contains_key(&u) || added.contains(&u);
            if member && !removed.contains(&u) && !admins.is_admin(u) && !promoted.contains(&u) {
                promoted.push(u);
            }
        }
        let mut demoted = Vec::new();
        for &u in &self.demote {
            if admins.is_admin(u) && !promoted.contains(&u) && !demoted.contains(&u) {
                demoted.push(u);
            }
        }
        for &u in &removed {
            admins.members.remove(&u);
        }
        for &u in &demoted {
            if let Some(m) = admins.members.get_mut(&u) {
                m.admin = false;
            }
        }
        let left_admins = admins.count() + promoted.len();
        if left_admins == 0 && after > 0 {
            if !demoted.is_empty() {
                return reject(
                    RejectCode::FailedPrecondition,
                    format!("chat {chat} would have no admin; promote another member first"),
                );
            }
            // The last admin left: the longest-standing member takes over.
            if let Some(heir) = admins.longest_standing() {
                promoted.push(heir);
            }
        }
        let reply = |members| {
            command_reply::Kind::Chat(pb::ChatReply {
                chat_id: chat.0,
                created: false,
                members,
            })
        };
        if added.is_empty() && removed.is_empty() && promoted.is_empty() && demoted.is_empty() {
            return applied(None, 0, reply(Vec::new()));
        }
        for &u in &added {
            let member = MemberRecord {
                admin: promoted.contains(&u),
                joined_after: record.last_seq,
                joined_offset: cx.ctx.last_offset().next().0,
            };
            cx.put_member(chat, UserId(u), &member);
        }
        for &u in promoted.iter().chain(&demoted) {
            if added.contains(&u) {
                continue;
            }
            if let Some(mut m) = admins.members.remove(&u) {
                m.admin = promoted.contains(&u);
                cx.put(&state::member_key(chat, UserId(u)), state::encode(&m));
            }
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
            promoted,
            demoted,
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

/// `by` leaves the direct chat `chat` whose record is `record` (account deletion does this; a
/// `CreateChat` of the same direct chat adds it back, seeing nothing from before).
fn leave_direct(
    cx: &mut ChatApply<'_, '_>,
    chat: ChatId,
    mut record: ChatRecord,
    by: UserId,
) -> Outcome {
    cx.delete_member(chat, by);
    record.members = record.members.saturating_sub(1);
    // A block the leaver held goes with it.
    record.blocked_by.retain(|&u| u != by.0);
    cx.put(&state::chat_key(chat), state::encode(&record));
    let offset = cx.emit(chat_event::Kind::MembersChanged(pb::MembersChanged {
        chat_id: chat.0,
        by_user: by.0,
        removed: vec![by.0],
        last_seq: record.last_seq,
        ..Default::default()
    }));
    applied(
        Some(offset),
        1,
        command_reply::Kind::Chat(pb::ChatReply {
            chat_id: chat.0,
            created: false,
            members: Vec::new(),
        }),
    )
}

/// Far above any group's size (`max_group_members` bounds them; a lowered limit leaves bigger
/// groups as they were).
const MAX_MEMBERS_READ: usize = 1 << 24;

/// A group's member records, read for admin changes (a group has at most
/// `max_group_members`, so one scan).
struct Admins {
    members: BTreeMap<u64, MemberRecord>,
}

impl Admins {
    fn read(cx: &ChatApply<'_, '_>, chat: ChatId) -> Result<Admins, StoreError> {
        let entries = cx
            .ctx
            .scan_prefix(&state::members_prefix(chat), MAX_MEMBERS_READ)?;
        let mut members = BTreeMap::new();
        for (key, value) in entries {
            if let Some(user) = state::u64_at(&key, 9) {
                members.insert(user, state::decode::<MemberRecord>("member", &value)?);
            }
        }
        Ok(Admins { members })
    }

    fn is_admin(&self, user: u64) -> bool {
        self.members.get(&user).is_some_and(|m| m.admin)
    }

    fn count(&self) -> usize {
        self.members.values().filter(|m| m.admin).count()
    }

    /// The member who joined first (the smallest user id among those who joined together).
    fn longest_standing(&self) -> Option<u64> {
        self.members
            .iter()
            .min_by_key(|(user, m)| (m.joined_offset, m.joined_after, **user))
            .map(|(user, _)| *user)
    }
}
