//! `CreateChat`: create a direct chat (two users) or a group (a creator, members and a name).
//!
//! Check: a direct chat without an id gets the id derived from its two members
//! (`direct_chat_id`); a group must come with its id (derived from creator and request id by the
//! caller, `group_chat_id`). Goes to the chat's partition.
//!
//! Apply: the members are the given ones plus the creator, sorted, without repeats. A direct
//! chat has exactly two, and its id must be the one derived from them; a group has at most
//! `max_group_members`; any other kind is INVALID_ARGUMENT. A chat that exists with the same kind
//! (and, for a group, the same creator) is a retry, or the other side creating the same direct
//! chat: nothing is written (`created = false`) — unless a member left that direct chat (account
//! deletion), who then joins it again after its last seq (`MembersChanged`). Another chat under
//! that id is ALREADY_EXISTS. Otherwise writes the chat record (`c`), a member record (`m`, the group's creator is its
//! admin) and reverse index entry (`j`) per member, and emits `ChatCreated` with the sorted
//! members. Reply: `ChatReply`.

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply, ChatKind};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{direct_chat_id, ChatId, UserId};
use crate::state::{self, ChatRecord, MemberRecord};

impl ChatCommand for pb::CreateChat {
    type Reply = pb::ChatReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        if self.kind == ChatKind::Direct as i32 && self.chat_id == 0 {
            let other = self.members.first().copied().unwrap_or_default();
            self.chat_id = direct_chat_id(UserId(self.creator), UserId(other)).0;
        }
        if self.chat_id == 0 {
            return Err(Invalid::new(
                "a group's chat_id must be given (derived from creator and request id)",
            ));
        }
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let chat = ChatId(self.chat_id);
        let creator = UserId(self.creator);
        let mut members: Vec<u64> = self.members.iter().copied().chain([self.creator]).collect();
        members.sort_unstable();
        members.dedup();
        let kind = ChatKind::try_from(self.kind).unwrap_or(ChatKind::Unspecified);
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
                let max = cx.limits.max_group_members;
                if members.len() > max as usize {
                    return reject(
                        RejectCode::InvalidArgument,
                        format!("{} members; a group has at most {max}", members.len()),
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
        if let Some(existing) = cx.chat(chat)? {
            // A direct chat one side left (its account was deleted): whoever is missing comes
            // back, seeing nothing from before.
            if existing.kind == kind as i32 && kind == ChatKind::Direct {
                return rejoin_direct(cx, chat, existing, &members, creator);
            }
            // A retry of the same creation (or the other side creating the same direct chat).
            if existing.kind == kind as i32 && existing.creator == creator.0 {
                return applied(None, 0, reply(false, Vec::new()));
            }
            return reject(
                RejectCode::AlreadyExists,
                format!("chat {chat} already exists"),
            );
        }
        let record = ChatRecord {
            kind: kind as i32,
            name: self.name.clone(),
            creator: creator.0,
            members: members.len() as u32,
            last_seq: 0,
            expired_up_to: 0,
            last_ts_ms: 0,
            ..ChatRecord::default()
        };
        cx.put(&state::chat_key(chat), state::encode(&record));
        for &m in &members {
            let admin = kind == ChatKind::Group && m == creator.0;
            let member = MemberRecord {
                admin,
                joined_after: 0,
                joined_offset: cx.ctx.last_offset().next().0,
            };
            cx.put_member(chat, UserId(m), &member);
        }
        let event = pb::ChatCreated {
            chat_id: chat.0,
            kind: kind as i32,
            name: self.name,
            creator: creator.0,
            members: members.clone(),
        };
        let offset = cx.emit(chat_event::Kind::ChatCreated(event));
        applied(Some(offset), 1, reply(true, members))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::CreateChat(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::ChatReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Chat(r) => Ok(r),
            other => Err(other),
        }
    }
}

/// `members` of the existing direct chat `chat` who are not members any more (they left it)
/// join it again after its last seq; nothing is written when both are members (a retry, or the
/// other side creating the same chat).
fn rejoin_direct(
    cx: &mut ChatApply<'_, '_>,
    chat: ChatId,
    mut record: ChatRecord,
    members: &[u64],
    by: UserId,
) -> Outcome {
    let mut added = Vec::new();
    for &u in members {
        if !cx.exists(&state::member_key(chat, UserId(u)))? {
            added.push(u);
        }
    }
    let reply = command_reply::Kind::Chat(pb::ChatReply {
        chat_id: chat.0,
        created: false,
        members: Vec::new(),
    });
    if added.is_empty() {
        return applied(None, 0, reply);
    }
    let member = MemberRecord {
        admin: false,
        joined_after: record.last_seq,
        joined_offset: cx.ctx.last_offset().next().0,
    };
    for &u in &added {
        cx.put_member(chat, UserId(u), &member);
    }
    record.members += added.len() as u32;
    cx.put(&state::chat_key(chat), state::encode(&record));
    let offset = cx.emit(chat_event::Kind::MembersChanged(pb::MembersChanged {
        chat_id: chat.0,
        by_user: by.0,
        added,
        last_seq: record.last_seq,
        ..Default::default()
    }));
    applied(Some(offset), 1, reply)
}
