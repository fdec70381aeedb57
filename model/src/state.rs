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

/// `h`: message `seq` of `c` deleted for `u` only (HideMessages); the value is empty.
pub fn hidden_key(c: ChatId, u: UserId, seq: ChatSeq) -> Vec<u8> {
    key(
        b'h',
        &[&c.0.to_be_bytes(), &u.0.to_be_bytes(), &seq.0.to_be_bytes()],
    )
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

/// `X`: the leader timestamp (ms) before which no dedup entry of this partition leaves its
/// window, so a send looks at the expiry index only once something is due (absent: now).
pub const EXPIRY_DUE_KEY: &[u8] = b"X";

/// `P`: this partition's follow-ups are applied up to this offset.
pub const FOLLOW_UPS_SENT_KEY: &[u8] = b"P";

pub fn device_cursor_key(c: ChatId, u: UserId, d: DeviceId) -> Vec<u8> {
    key(
        b'k',
        &[&c.0.to_be_bytes(), &u.0.to_be_bytes(), &d.0.to_be_bytes()],
    )
}

// The records are protobuf messages (prost derives them from the field tags below): a release can
// add a field (a new tag) and still read what the one before it wrote, and one before it ignores
// what it does not know. Tags are the format: never renumber or reuse one. Values must encode
// identically on every replica (they go into snapshots and replica digests); prost writes fields
// in tag order, so they do.

/// Anything stored under one of the keys above.
pub trait Record: prost::Message + Default {}
impl<T: prost::Message + Default> Record for T {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UserRecord {
    #[prost(string, tag = "1")]
    pub handle: String,
    /// Presence (online, last seen) hidden from everyone else (`SetPresence`).
    #[prost(bool, tag = "2")]
    pub presence_hidden: bool,
    /// When the user's last stream anywhere closed, as its home node recorded it.
    #[prost(uint64, tag = "3")]
    pub last_seen_ms: u64,
    /// When the account was deleted (`DeleteUser`; 0: it was not), and when its handle may be
    /// registered again.
    #[prost(uint64, tag = "4")]
    pub deleted_at_ms: u64,
    #[prost(uint64, tag = "5")]
    pub release_at_ms: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub token_sha256: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub revoked: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChatRecord {
    /// `chat.v1.ChatKind` as its number.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint64, tag = "3")]
    pub creator: u64,
    #[prost(uint32, tag = "4")]
    pub members: u32,
    #[prost(uint64, tag = "5")]
    pub last_seq: u64,
    /// Messages up to this seq have been expired by retention.
    #[prost(uint64, tag = "6")]
    pub expired_up_to: u64,
    /// Timestamp of the last message: message timestamps never go backwards within a chat, even
    /// across leaders whose clocks disagree.
    #[prost(uint64, tag = "7")]
    pub last_ts_ms: u64,
    /// A group's description and icon (`UpdateChat`).
    #[prost(string, tag = "8")]
    pub description: String,
    #[prost(message, optional, tag = "9")]
    pub icon: Option<chat_proto::chat_v1::MediaRef>,
    /// Messages older than this are expired by retention (0: off).
    #[prost(uint32, tag = "10")]
    pub disappear_after_secs: u32,
    /// A direct chat's members who blocked the other one (`UpdateChat.block`): the other's
    /// sends are refused.
    #[prost(uint64, repeated, tag = "11")]
    pub blocked_by: Vec<u64>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberRecord {
    #[prost(bool, tag = "1")]
    pub admin: bool,
    /// The chat's last seq when the user joined: a member's devices start after it.
    #[prost(uint64, tag = "2")]
    pub joined_after: u64,
    /// The offset of the event that made the user a member (0 for members recorded before
    /// this was kept): who has been a member longest.
    #[prost(uint64, tag = "3")]
    pub joined_offset: u64,
}

impl ChatRecord {
    pub fn last_seq(&self) -> ChatSeq {
        ChatSeq(self.last_seq)
    }
}

impl MemberRecord {
    pub fn joined_after(&self) -> ChatSeq {
        ChatSeq(self.joined_after)
    }
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DedupRecord {
    #[prost(uint64, tag = "1")]
    pub chat: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    #[prost(uint64, tag = "4")]
    pub server_ts_ms: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReceiptRecord {
    #[prost(uint64, tag = "1")]
    pub delivered: u64,
    #[prost(uint64, tag = "2")]
    pub read: u64,
}

pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    record.encode_to_vec()
}

pub fn decode<T: Record>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::decode(what, e))
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
