//! The chat layer's keys in partition state (the handler namespace of the log's `state` column
//! family) and the records stored under them. Everything here is part of snapshots.
//!
//! | prefix | key | record |
//! |---|---|---|
//! | `u` | user | [`UserRecord`] |
//! | `v` | user, device | [`DeviceRecord`] |
//! | `c` | chat | [`ChatRecord`] (kind, name, members count, last seq, last timestamp) |
//! | `m` | chat, user | [`MemberRecord`] |
//! | `i` | chat, seq | the partition offset of that message (the history index) |
//! | `d` | user, device, client_msg_id | [`DedupRecord`]: the ack of a send, for retries |
//! | `x` | timestamp, dedup key | (empty) expiry order of the dedup window |
//! | `r` | chat, user | [`ReceiptRecord`]: delivered/read watermarks |
//! | `j` | user, chat | (empty) the chats of a user that live in this partition |
//! | `J` | user, chat | (empty) the user's chat list, in the user's partition (follow-ups) |
//! | `F` | source partition | last source offset whose follow-ups were applied here |
//! | `P` | | this partition's follow-ups are applied up to this offset |
//! | `k` | chat, user, device | the seq delivered to that device (its resume cursor) |
//!
//! Integers are big-endian so keys sort numerically.

use chat_log::StoreError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{ChatId, ChatSeq, DeviceId, UserId};

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn user_key(u: UserId) -> Vec<u8> {
    key(b'u', &[&u.0.to_be_bytes()])
}

pub fn device_key(u: UserId, d: DeviceId) -> Vec<u8> {
    key(b'v', &[&u.0.to_be_bytes(), &d.0.to_be_bytes()])
}

/// The prefix of every `device_key` of `u`.
pub fn devices_prefix(u: UserId) -> Vec<u8> {
    key(b'v', &[&u.0.to_be_bytes()])
}

/// The prefix of every `chat_key`.
pub const CHATS_PREFIX: &[u8] = b"c";

pub fn chat_key(c: ChatId) -> Vec<u8> {
    key(CHATS_PREFIX[0], &[&c.0.to_be_bytes()])
}

pub fn member_key(c: ChatId, u: UserId) -> Vec<u8> {
    key(b'm', &[&c.0.to_be_bytes(), &u.0.to_be_bytes()])
}

/// The prefix of every `member_key` of `c`.
pub fn members_prefix(c: ChatId) -> Vec<u8> {
    key(b'm', &[&c.0.to_be_bytes()])
}

pub fn index_key(c: ChatId, seq: ChatSeq) -> Vec<u8> {
    key(b'i', &[&c.0.to_be_bytes(), &seq.0.to_be_bytes()])
}

pub fn dedup_key(u: UserId, d: DeviceId, client_msg_id: &str) -> Vec<u8> {
    key(
        b'd',
        &[
            &u.0.to_be_bytes(),
            &d.0.to_be_bytes(),
            client_msg_id.as_bytes(),
        ],
    )
}

pub const EXPIRY_PREFIX: &[u8] = b"x";

/// `x ‖ timestamp ‖ dedup key`: scanning `x` yields dedup entries oldest first.
pub fn expiry_key(ts_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    key(b'x', &[&ts_ms.to_be_bytes(), dedup_key])
}

/// Split an expiry key into (timestamp, dedup key).
pub fn parse_expiry_key(k: &[u8]) -> Option<(u64, &[u8])> {
    let ts = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    Some((ts, &k[9..]))
}

pub fn receipt_key(c: ChatId, u: UserId) -> Vec<u8> {
    key(b'r', &[&c.0.to_be_bytes(), &u.0.to_be_bytes()])
}

/// `j ‖ user ‖ chat`: kept beside every member key so a user's chats in a partition are one
/// prefix scan (the gateway scans every partition on connect).
pub fn user_chat_key(u: UserId, c: ChatId) -> Vec<u8> {
    key(b'j', &[&u.0.to_be_bytes(), &c.0.to_be_bytes()])
}

/// The prefix of every `user_chat_key` of `u`.
pub fn user_chats_prefix(u: UserId) -> Vec<u8> {
    key(b'j', &[&u.0.to_be_bytes()])
}

/// The big-endian u64 at `start` of a key (ids inside the keys above).
pub fn u64_at(key: &[u8], start: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(start..start + 8)?.try_into().ok()?,
    ))
}

/// The chat of a `user_chat_key` or a `chat_list_key` (same layout).
pub fn parse_user_chat_key(k: &[u8]) -> Option<ChatId> {
    u64_at(k, 9).map(ChatId)
}

/// `J ‖ user ‖ chat`: the user's chat list, kept in the user's partition by follow-ups.
pub fn chat_list_key(u: UserId, c: ChatId) -> Vec<u8> {
    key(b'J', &[&u.0.to_be_bytes(), &c.0.to_be_bytes()])
}

pub fn chat_list_prefix(u: UserId) -> Vec<u8> {
    key(b'J', &[&u.0.to_be_bytes()])
}

/// `F ‖ source partition`: the last source offset applied from that partition.
pub fn follow_up_mark_key(source: u32) -> Vec<u8> {
    key(b'F', &[&source.to_be_bytes()])
}

/// `P`: this partition's follow-ups are applied up to this offset.
pub const FOLLOW_UPS_SENT_KEY: &[u8] = b"P";

pub fn device_cursor_key(c: ChatId, u: UserId, d: DeviceId) -> Vec<u8> {
    key(
        b'k',
        &[&c.0.to_be_bytes(), &u.0.to_be_bytes(), &d.0.to_be_bytes()],
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub handle: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub token_sha256: Vec<u8>,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    /// `chat.v1.ChatKind` as its number.
    pub kind: i32,
    pub name: String,
    pub creator: u64,
    pub members: u32,
    pub last_seq: u64,
    /// Messages up to this seq have been expired by retention.
    pub expired_up_to: u64,
    /// Timestamp of the last message: message timestamps never go backwards within a chat, even
    /// across leaders whose clocks disagree.
    pub last_ts_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub admin: bool,
    /// The chat's last seq when the user joined: a member's devices start after it.
    pub joined_after: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub chat: u64,
    pub seq: u64,
    pub offset: u64,
    pub server_ts_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub delivered: u64,
    pub read: u64,
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    bincode::serialize(record).expect("records serialize")
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::decode(what, e))
}

pub fn decode_offset(bytes: &[u8]) -> Result<u64, StoreError> {
    decode_u64("history index entry", bytes)
}

/// A big-endian u64 value (history index entries, device cursors).
pub fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::decode(what, format!("{} bytes, want 8", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}
