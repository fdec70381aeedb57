//! `DeleteUser`: account deletion. Every device of the user revoked and the account marked
//! deleted; its handle is released after a grace period (`RegisterUser` then makes a new
//! account under it). Leaving the user's chats is the gateway's part, before this command,
//! since chats live in other partitions.
//!
//! Check: none beyond routing. Goes to the user's partition.
//!
//! Apply: an unknown user is NOT_FOUND. An account already deleted answers its release time
//! and writes nothing (a retry). Otherwise each device not yet revoked is revoked (its record,
//! and `DeviceRevoked`, which ends its streams), the user record gets `deleted_at_ms` (the
//! leader's time) and `release_at_ms`, and `UserDeleted` is emitted. Reply: `AccountDeleted`.

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::UserId;
use crate::state::{self, DeviceRecord, UserRecord};

impl ChatCommand for pb::DeleteUser {
    type Reply = pb::AccountDeleted;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.user_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let user = UserId(self.user_id);
        let key = state::user_key(user);
        let Some(mut record) = cx.get::<UserRecord>("user", &key)? else {
            return reject(RejectCode::NotFound, format!("no user {user}"));
        };
        let reply = |release_at_ms| {
            command_reply::Kind::AccountDeleted(pb::AccountDeleted { release_at_ms })
        };
        if record.deleted_at_ms != 0 {
            return applied(None, 0, reply(record.release_at_ms));
        }
        let mut events = 0;
        for (device_key, value) in cx.device_entries(user)? {
            let mut device: DeviceRecord = state::decode("device", &value)?;
            let Some(device_id) = state::u64_at(&device_key, 9) else {
                continue;
            };
            if device.revoked {
                continue;
            }
            device.revoked = true;
            cx.put(&device_key, state::encode(&device));
            cx.emit(chat_event::Kind::DeviceRevoked(pb::DeviceRevoked {
                user_id: user.0,
                device_id,
            }));
            events += 1;
        }
        let now = cx.ctx.timestamp_ms();
        record.deleted_at_ms = now.max(1);
        record.release_at_ms = now.saturating_add(self.release_after_ms);
        cx.put(&key, state::encode(&record));
        let offset = cx.emit(chat_event::Kind::UserDeleted(pb::UserDeleted {
            user_id: user.0,
            release_at_ms: record.release_at_ms,
        }));
        applied(Some(offset), events + 1, reply(record.release_at_ms))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::DeleteUser(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::AccountDeleted, command_reply::Kind> {
        match kind {
            command_reply::Kind::AccountDeleted(r) => Ok(r),
            other => Err(other),
        }
    }
}
