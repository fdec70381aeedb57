//! `AddDevice`: link a device to a registered user, with the sha256 of its bearer token (the
//! token itself is never stored).
//!
//! Check: the token digest has 32 bytes. Goes to the user's partition.
//!
//! Apply: an unknown user is NOT_FOUND. The same device, not revoked and with the same token,
//! is a retry: nothing is written (`changed = false`). Otherwise writes the device record (`v`;
//! a revoked device is linked again, a changed token replaces the old one) and emits
//! `DeviceAdded`. Reply: `DeviceReply`.

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{DeviceId, UserId};
use crate::state::{self, DeviceRecord};

impl ChatCommand for pb::AddDevice {
    type Reply = pb::DeviceReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        if self.token_sha256.len() != 32 {
            return Err(Invalid::new(
                "token_sha256 must be a sha256 digest (32 bytes)",
            ));
        }
        Ok(cx.route(self.user_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let (user, device) = (UserId(self.user_id), DeviceId(self.device_id));
        let reply = |changed| {
            command_reply::Kind::Device(pb::DeviceReply {
                user_id: user.0,
                device_id: device.0,
                changed,
            })
        };
        if !cx.exists(&state::user_key(user))? {
            return reject(
                RejectCode::NotFound,
                format!("user {user} is not registered"),
            );
        }
        let key = state::device_key(user, device);
        if let Some(d) = cx.get::<DeviceRecord>("device", &key)? {
            if !d.revoked && d.token_sha256 == self.token_sha256 {
                return applied(None, 0, reply(false));
            }
        }
        let record = DeviceRecord {
            token_sha256: self.token_sha256.clone(),
            revoked: false,
        };
        cx.put(&key, state::encode(&record));
        let event = pb::DeviceAdded {
            user_id: user.0,
            device_id: device.0,
            token_sha256: self.token_sha256,
        };
        let offset = cx.emit(chat_event::Kind::DeviceAdded(event));
        applied(Some(offset), 1, reply(true))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::AddDevice(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::DeviceReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Device(r) => Ok(r),
            other => Err(other),
        }
    }
}
