//! `SetPresence`: a user's presence settings: hidden or not, and when it was last seen.
//!
//! Check: none beyond routing. Goes to the user's partition.
//!
//! Apply: an unknown user is NOT_FOUND. `hidden` is set when given; `last_seen_ms` only moves
//! forward (its home node records it each time the user's last stream closes, and two homes
//! around a membership change may report out of order). Nothing changed writes nothing.
//! Otherwise writes the user record (`u`) and emits `PresenceUpdated`. Reply:
//! `PresenceSettings` (as they are now).

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::UserId;
use crate::state::{self, UserRecord};

impl ChatCommand for pb::SetPresence {
    type Reply = pb::PresenceSettings;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.user_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let user = UserId(self.user_id);
        let key = state::user_key(user);
        let Some(mut record) = cx.get::<UserRecord>("user", &key)? else {
            return reject(RejectCode::NotFound, format!("no user {user}"));
        };
        let before = record.clone();
        if let Some(hidden) = self.hidden {
            record.presence_hidden = hidden;
        }
        record.last_seen_ms = record.last_seen_ms.max(self.last_seen_ms);
        let reply = command_reply::Kind::Presence(pb::PresenceSettings {
            hidden: record.presence_hidden,
            last_seen_ms: record.last_seen_ms,
        });
        if record == before {
            return applied(None, 0, reply);
        }
        cx.put(&key, state::encode(&record));
        let offset = cx.emit(chat_event::Kind::PresenceUpdated(pb::PresenceUpdated {
            user_id: user.0,
            hidden: record.presence_hidden,
            last_seen_ms: record.last_seen_ms,
        }));
        applied(Some(offset), 1, reply)
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::SetPresence(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::PresenceSettings, command_reply::Kind> {
        match kind {
            command_reply::Kind::Presence(r) => Ok(r),
            other => Err(other),
        }
    }
}
