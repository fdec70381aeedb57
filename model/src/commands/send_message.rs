//! `SendMessage`: append a message to a chat, giving it the chat's next seq; and the dedup
//! window that makes a retried send return the original ack.
//!
//! Check: the payload has at most `max_payload_bytes` bytes (none only when the message carries
//! media), the client_msg_id 1 to
//! `max_client_msg_id_bytes`. Goes to the chat's partition. (The per-user send rate is the
//! sequencer's: it is counted where the send enters the cluster.)
//!
//! Apply: a (sender user, device, client_msg_id) seen within the dedup window answers the
//! original ack with `duplicate = true` and writes nothing. Otherwise an unknown chat is
//! NOT_FOUND and a sender who is not a member PERMISSION_DENIED (decided here, so a send racing
//! a removal is decided by log order), as is a send to a direct chat whose other member blocked
//! the sender. The message gets seq = last seq + 1 and the timestamp
//! max(leader clock, chat's last timestamp), never decreasing within a chat. Emits `Message`;
//! writes the chat record (`c`: last seq, last timestamp), the history index (`i`: seq →
//! offset), the dedup entry (`d`: the ack) and its expiry entry (`x`), and forgets a few dedup
//! entries that left the window, oldest first. Reply: `SendAck`.

use chat_log::{LogOffset, PartitionId, RejectCode, StoreError};
use chat_proto::chat_v1::{self as pb, command, command_reply};

use super::apply::{applied, no_such_chat, not_a_member, reject, ChatApply, Outcome};
use super::chat_command::{check_media, ChatCommand, CheckContext, Invalid};
use crate::ids::{ChatId, DeviceId, UserId};
use crate::state::{self, DedupRecord};

/// Expired dedup entries removed per applied send (keeps up with one insert per send).
const EXPIRE_PER_SEND: usize = 8;

impl ChatCommand for pb::SendMessage {
    type Reply = pb::SendAck;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        let limits = cx.limits;
        if self.payload.is_empty() && self.media.is_empty() {
            return Err(Invalid::new("a message needs a payload or media"));
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(Invalid::new(format!(
                "payload of {} bytes is over the limit of {}",
                self.payload.len(),
                limits.max_payload_bytes
            )));
        }
        if self.client_msg_id.is_empty()
            || self.client_msg_id.len() > limits.max_client_msg_id_bytes
        {
            return Err(Invalid::new(format!(
                "client_msg_id must have 1 to {} bytes",
                limits.max_client_msg_id_bytes
            )));
        }
        if self.media.len() > limits.max_media_refs {
            return Err(Invalid::new(format!(
                "{} media references, at most {}",
                self.media.len(),
                limits.max_media_refs
            )));
        }
        for m in &self.media {
            check_media(m, limits)?;
        }
        Ok(cx.route(self.chat_id))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let (chat, user, device) = (
            ChatId(self.chat_id),
            UserId(self.sender_user),
            DeviceId(self.sender_device),
        );
        let now = cx.ctx.timestamp_ms();
        let dedup_key = state::dedup_key(user, device, &self.client_msg_id);
        if let Some(d) = cx.get::<DedupRecord>("dedup", &dedup_key)? {
            if d.server_ts_ms.saturating_add(cx.limits.dedup_window_ms) > now {
                let ack = pb::SendAck {
                    chat_id: d.chat,
                    seq: d.seq,
                    offset: d.offset,
                    server_ts_ms: d.server_ts_ms,
                    duplicate: true,
                };
                return applied(None, 0, command_reply::Kind::Send(ack));
            }
        }
        let Some(mut record) = cx.chat(chat)? else {
            return no_such_chat(chat);
        };
        if !cx.exists(&state::member_key(chat, user))? {
            return not_a_member(user, chat);
        }
        if record.blocked_by.iter().any(|&u| u != user.0) {
            return reject(
                RejectCode::PermissionDenied,
                format!(
                    "the other member of chat {chat} does not accept messages from user {user}"
                ),
            );
        }
        let message = pb::Message {
            chat_id: chat.0,
            sender_user: user.0,
            sender_device: device.0,
            client_msg_id: self.client_msg_id,
            payload: self.payload,
            media: self.media,
            ..Default::default()
        };
        let ack = cx.append_message(&mut record, message);
        let dedup = DedupRecord {
            chat: chat.0,
            seq: ack.seq,
            offset: ack.offset,
            server_ts_ms: ack.server_ts_ms,
        };
        cx.put(&dedup_key, state::encode(&dedup));
        cx.put(&state::expiry_key(ack.server_ts_ms, &dedup_key), Vec::new());
        expire_dedup(cx, now)?;
        let offset = LogOffset(ack.offset);
        applied(Some(offset), 1, command_reply::Kind::Send(ack))
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::SendMessage(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::SendAck, command_reply::Kind> {
        match kind {
            command_reply::Kind::Send(r) => Ok(r),
            other => Err(other),
        }
    }
}

/// Forget the oldest dedup entries that have left the window (a few per send).
///
/// The expiry index is scanned only when its oldest entry is due: the scan also records when
/// the next one will be (`EXPIRY_DUE_KEY`), and until then a send reads that one key instead of
/// opening an iterator over the index (which also had to step over the tombstones of every
/// entry removed before). Deterministic: it depends on the log and the leader's timestamps only.
fn expire_dedup(cx: &mut ChatApply<'_, '_>, now: u64) -> Result<(), StoreError> {
    let window = cx.limits.dedup_window_ms;
    if cx.get_u64("expiry due", state::EXPIRY_DUE_KEY)? > now {
        return Ok(());
    }
    // Entries written after the scan leave their window no earlier than this.
    let mut due = now.saturating_add(window);
    for (key, _) in cx.ctx.scan_prefix(state::EXPIRY_PREFIX, EXPIRE_PER_SEND)? {
        let Some((ts, dedup_key)) = state::parse_expiry_key(&key) else {
            continue;
        };
        if ts.saturating_add(window) > now {
            due = ts.saturating_add(window);
            break;
        }
        // More may be due than one scan takes: look again at the next send.
        due = now;
        // Only drop the dedup entry if it is the one this expiry entry was written for.
        if let Some(d) = cx.get::<DedupRecord>("dedup", dedup_key)? {
            if d.server_ts_ms == ts {
                cx.delete(dedup_key);
            }
        }
        cx.delete(&key);
    }
    cx.put(state::EXPIRY_DUE_KEY, due.to_be_bytes().to_vec());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::chat_command::CommandLimits;

    fn send(media: Vec<pb::MediaRef>) -> pb::SendMessage {
        pb::SendMessage {
            chat_id: 7,
            sender_user: 1,
            sender_device: 1,
            client_msg_id: "m1".into(),
            payload: b"hi".to_vec(),
            media,
        }
    }

    fn media(key: &str, sha256: usize) -> pb::MediaRef {
        pb::MediaRef {
            object_key: key.into(),
            mime: "image/jpeg".into(),
            size: 10,
            sha256: vec![0; sha256],
            ..Default::default()
        }
    }

    #[test]
    fn media_references_are_bounded_before_proposing() {
        let limits = CommandLimits::default();
        let cx = CheckContext {
            limits: &limits,
            partitions: 4,
        };
        send(vec![media("a/b", 32), media("c", 0)])
            .check(&cx)
            .unwrap();
        let too_many = (0..17).map(|i| media(&format!("k{i}"), 32)).collect();
        for (bad, want) in [
            (send(too_many), "17 media references"),
            (send(vec![media(&"k".repeat(513), 32)]), "object_key"),
            (send(vec![media("", 32)]), "object_key"),
            (send(vec![media("k", 31)]), "sha256"),
        ] {
            let err = bad.clone().check(&cx).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
