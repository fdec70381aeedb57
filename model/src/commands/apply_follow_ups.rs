//! `ApplyFollowUps`: a cross-partition follow-up. Membership changes of a chat, made in the
//! chat's partition, applied to the members' own chat lists in their partitions. Sent by the
//! source partition's leader in offset order (`chat_sequencer::workers::followups`).
//!
//! Check: at least one entry, and every entry's user routes to the same partition, which is
//! where the command goes.
//!
//! Apply: the target keeps, per source partition, the last source offset applied (`F`); a
//! follow-up at or below it is a redelivery and writes nothing (`applied = false`), so
//! at-least-once delivery has an exactly-once effect. Otherwise records the new mark and, per
//! entry that changes something, adds or removes the user's chat list entry (`J`) and emits
//! `ChatListChanged`. Reply: `FollowUpReply`.

use chat_log::PartitionId;
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, UserId};
use crate::state;

impl ChatCommand for pb::ApplyFollowUps {
    type Reply = pb::FollowUpReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        let first = self
            .entries
            .first()
            .ok_or_else(|| Invalid::new("a follow-up needs at least one entry"))?;
        let target = cx.route(first.user_id);
        if self.entries.iter().any(|e| cx.route(e.user_id) != target) {
            return Err(Invalid::new(
                "every entry of a follow-up must route to the same partition",
            ));
        }
        Ok(target)
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let mark_key = state::follow_up_mark_key(self.source_partition);
        let mark = cx.get_u64("follow-up mark", &mark_key)?;
        let reply = |applied| command_reply::Kind::FollowUp(pb::FollowUpReply { applied });
        if self.source_offset <= mark {
            return applied(None, 0, reply(false)); // a redelivery
        }
        cx.put(&mark_key, self.source_offset.to_be_bytes().to_vec());
        let mut first = None;
        let mut events = 0;
        for e in self.entries {
            let key = state::chat_list_key(UserId(e.user_id), ChatId(e.chat_id));
            let present = cx.exists(&key)?;
            if present == e.joined {
                continue; // already so (e.g. created and re-added)
            }
            if e.joined {
                cx.put(&key, Vec::new());
            } else {
                cx.delete(&key);
            }
            let offset = cx.emit(chat_event::Kind::ChatListChanged(pb::ChatListChanged {
                user_id: e.user_id,
                chat_id: e.chat_id,
                joined: e.joined,
                source_partition: self.source_partition,
                source_offset: self.source_offset,
            }));
            first.get_or_insert(offset);
            events += 1;
        }
        applied(first, events, reply(true))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::ApplyFollowUps(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::FollowUpReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::FollowUp(r) => Ok(r),
            other => Err(other),
        }
    }
}
