//! `chatctl replay`: a partition's events, decoded for an SRE reading what happened. Chat
//! events (`LogEvent.kind` 1) become their type and fields; message contents are left out
//! (their size is shown), so a replay can be shared without the users' messages.

use chat_proto::chat_v1::{chat_event::Kind, ChatEvent};
use chat_proto::log::LogEvent;
use prost::Message;
use serde_json::{json, Value};

/// The kinds of `LogEvent` this decodes (see `chat_model::CHAT_EVENT_KIND`).
const RAW_KIND: u32 = 0;
const CHAT_KIND: u32 = 1;

/// One event, decoded: its type and its fields.
pub struct Decoded {
    pub what: &'static str,
    pub fields: Value,
}

/// Decode `event`; what does not decode says so rather than failing the replay.
pub fn decode(event: &LogEvent) -> Decoded {
    match event.kind {
        RAW_KIND => Decoded {
            what: "raw",
            fields: json!({"payload": String::from_utf8_lossy(&event.payload)}),
        },
        CHAT_KIND => match ChatEvent::decode(event.payload.as_ref()) {
            Ok(ChatEvent { kind: Some(kind) }) => chat(kind),
            Ok(ChatEvent { kind: None }) => Decoded {
                what: "empty",
                fields: json!({}),
            },
            Err(e) => Decoded {
                what: "undecodable",
                fields: json!({"error": e.to_string(), "bytes": event.payload.len()}),
            },
        },
        other => Decoded {
            what: "unknown",
            fields: json!({"kind": other, "bytes": event.payload.len()}),
        },
    }
}

fn chat(kind: Kind) -> Decoded {
    let (what, fields) = match kind {
        Kind::UserRegistered(e) => (
            "user_registered",
            json!({"user": e.user_id, "handle": e.handle}),
        ),
        Kind::DeviceAdded(e) => (
            "device_added",
            json!({"user": e.user_id, "device": e.device_id}),
        ),
        Kind::DeviceRevoked(e) => (
            "device_revoked",
            json!({"user": e.user_id, "device": e.device_id}),
        ),
        Kind::ChatCreated(e) => (
            "chat_created",
            json!({"chat": e.chat_id, "name": e.name, "creator": e.creator, "members": e.members}),
        ),
        Kind::MembersChanged(e) => (
            "members_changed",
            json!({"chat": e.chat_id, "by": e.by_user, "added": e.added, "removed": e.removed, "promoted": e.promoted, "demoted": e.demoted, "last_seq": e.last_seq}),
        ),
        Kind::Message(m) => (
            "message",
            json!({
                "chat": m.chat_id,
                "seq": m.seq,
                "from_user": m.sender_user,
                "from_device": m.sender_device,
                "client_msg_id": m.client_msg_id,
                "payload_bytes": m.payload.len(),
                "media": m.media.len(),
                "expired": m.expired,
                "deleted": m.deleted,
                "deletes_seq": m.deletes_seq,
            }),
        ),
        Kind::ReceiptAdvanced(e) => (
            "receipt",
            json!({"chat": e.chat_id, "user": e.user_id, "device": e.device_id, "delivered_up_to": e.delivered_up_to, "read_up_to": e.read_up_to}),
        ),
        Kind::MessagesExpired(e) => (
            "messages_expired",
            json!({"chat": e.chat_id, "up_to_seq": e.up_to_seq}),
        ),
        Kind::ChatListChanged(e) => (
            "chat_list_changed",
            json!({"user": e.user_id, "chat": e.chat_id, "joined": e.joined, "source_partition": e.source_partition, "source_offset": e.source_offset}),
        ),
        Kind::PresenceUpdated(e) => (
            "presence_updated",
            json!({"user": e.user_id, "hidden": e.hidden, "last_seen_ms": e.last_seen_ms}),
        ),
        Kind::MediaReleased(e) => (
            "media_released",
            json!({"chat": e.chat_id, "keys": e.object_keys}),
        ),
        Kind::UserDeleted(e) => (
            "user_deleted",
            json!({"user": e.user_id, "release_at_ms": e.release_at_ms}),
        ),
        Kind::MessagesHidden(e) => (
            "messages_hidden",
            json!({"chat": e.chat_id, "user": e.user, "seqs": e.seqs}),
        ),
        Kind::ChatUpdated(e) => (
            "chat_updated",
            json!({"chat": e.chat_id, "by": e.by_user, "name": e.name, "description": e.description, "icon": e.icon.map(|i| i.object_key), "disappear_after_secs": e.disappear_after_secs}),
        ),
    };
    Decoded { what, fields }
}

/// `fields` as `key=value` pairs for a table row.
pub fn format_fields(fields: &Value) -> String {
    let Some(map) = fields.as_object() else {
        return fields.to_string();
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s:?}"),
            v => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
