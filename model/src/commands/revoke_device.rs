//! `RevokeDevice`: revoke a user's device; its token no longer authenticates and its open
//! streams are closed (the gateway's hub does that when it sees the event).
//!
//! Check: none beyond routing. Goes to the user's partition.
//!
//! Apply: an unknown device is NOT_FOUND; an already revoked one is a retry (nothing written,
//! `changed = false`). Otherwise marks the device record (`v`) revoked and emits
//! `DeviceRevoked`. Reply: `DeviceReply`.

use chat_log::{PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, chat_event, command, command_reply};

use super::apply::{applied, reject, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::ids::{DeviceId, UserId};
use crate::state::{self, DeviceRecord};

impl ChatCommand for pb::RevokeDevice {
    type Reply = pb::DeviceReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        Ok(cx.route(self.user_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let (user, device) = (UserId(self.user_id), DeviceId(self.device_id));
        let key = state::device_key(user, device);
        let Some(mut d) = cx.get::<DeviceRecord>("device", &key)? else {
            return reject(
                RejectCode::NotFound,
                format!("user {user} has no device {device}"),
            );
        };
        let reply = |changed| {
            command_reply::Kind::Device(pb::DeviceReply {
                user_id: user.0,
                device_id: device.0,
                changed,
            })
        };
        if d.revoked {
            return applied(None, 0, reply(false));
        }
        d.revoked = true;
        cx.put(&key, state::encode(&d));
        let offset = cx.emit(chat_event::Kind::DeviceRevoked(pb::DeviceRevoked {
            user_id: user.0,
            device_id: device.0,
        }));
        applied(Some(offset), 1, reply(true))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::RevokeDevice(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::DeviceReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::Device(r) => Ok(r),
            other => Err(other),
        }
    }
}
