//! `RegisterUser`: create a user for a handle, optionally with its first device.
//!
//! Check: the handle, trimmed, has 1 to `max_handle_bytes` bytes; the user id is derived from
//! it (a given non-zero id must be that one); a first device needs a 32-byte token digest.
//! Goes to the user's partition.
//!
//! Apply: a user id taken by another handle is ALREADY_EXISTS. Taken by the same handle, nothing
//! is written and the reply says whether the named first device is there with that token (a
//! retry of the registration that created it). The handle of a deleted account (`DeleteUser`)
//! is ALREADY_EXISTS until its release time, and after it is registered as a new account: the
//! old device records are deleted first. Otherwise writes the user record (`u`) and emits
//! `UserRegistered`; with a first device, also its device record (`v`) and `DeviceAdded`, in the
//! same apply, so a handle cannot be taken over by registering it again. Reply: `UserReply`.

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{user_id_for_handle, DeviceId, UserId};
use crate::state::{self, DeviceRecord, UserRecord};

impl ChatCommand for pb::RegisterUser {
    type Reply = pb::UserReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        let handle = self.handle.trim();
        if handle.is_empty() || handle.len() > cx.limits.max_handle_bytes {
            return Err(Invalid::new(format!(
                "a handle has 1 to {} bytes",
                cx.limits.max_handle_bytes
            )));
        }
        let derived = user_id_for_handle(handle);
        if self.user_id != 0 && self.user_id != derived.0 {
            return Err(Invalid::new(
                "user_id must be derived from the handle (or 0)",
            ));
        }
        if self.first_device_id != 0 && self.first_device_token_sha256.len() != 32 {
            return Err(Invalid::new(
                "first_device_token_sha256 must be a sha256 digest (32 bytes)",
            ));
        }
        self.handle = handle.to_string();
        self.user_id = derived.0;
        Ok(cx.route(self.user_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let user = UserId(self.user_id);
        let first_device = (self.first_device_id != 0).then_some(DeviceId(self.first_device_id));
        let reply = |created, device_matches| {
            command_reply::Kind::User(pb::UserReply {
                user_id: user.0,
                created,
                device_matches,
            })
        };
        let existing = cx.get::<UserRecord>("user", &state::user_key(user))?;
        if let Some(deleted) = existing.as_ref().filter(|u| u.deleted_at_ms != 0) {
            let now = cx.ctx.timestamp_ms();
            if now < deleted.release_at_ms {
                return reject(
                    RejectCode::AlreadyExists,
                    format!(
                        "the handle {:?} belonged to an account deleted {} s ago; it can be \
                         registered again in {} s",
                        self.handle,
                        now.saturating_sub(deleted.deleted_at_ms) / 1000,
                        (deleted.release_at_ms - now).div_ceil(1000)
                    ),
                );
            }
            // Released: a new account under the same id. The old one's devices go (they were
            // revoked); its chats were left when it was deleted.
            for (key, _) in cx.device_entries(user)? {
                cx.delete(&key);
            }
        } else if let Some(existing) = existing {
            if existing.handle != self.handle {
                return reject(
                    RejectCode::AlreadyExists,
                    format!("user id {user} belongs to another handle"),
                );
            }
            // Taken; but a retry of the registration that created it names the same device.
            let matches = match first_device {
                Some(d) => cx
                    .get::<DeviceRecord>("device", &state::device_key(user, d))?
                    .is_some_and(|r| {
                        !r.revoked && r.token_sha256 == self.first_device_token_sha256
                    }),
                None => false,
            };
            return applied(None, 0, reply(false, matches));
        }
        cx.put(
            &state::user_key(user),
            state::encode(&UserRecord {
                handle: self.handle.clone(),
                ..UserRecord::default()
            }),
        );
        let offset = cx.emit(chat_event::Kind::UserRegistered(pb::UserRegistered {
            user_id: user.0,
            handle: self.handle,
        }));
        let Some(device) = first_device else {
            return applied(Some(offset), 1, reply(true, false));
        };
        let record = DeviceRecord {
            token_sha256: self.first_device_token_sha256.clone(),
            revoked: false,
        };
        cx.put(&state::device_key(user, device), state::encode(&record));
        cx.emit(chat_event::Kind::DeviceAdded(pb::DeviceAdded {
            user_id: user.0,
            device_id: device.0,
            token_sha256: self.first_device_token_sha256,
        }));
        applied(Some(offset), 2, reply(true, true))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::RegisterUser(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::UserReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::User(r) => Ok(r),
            other => Err(other),
        }
    }
}
