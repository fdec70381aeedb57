//! The contract of a chat command: [`ChatCommand`], which each command file implements on its
//! `chat.v1` message, and what the check half sees ([`CheckContext`], with the
//! [`CommandLimits`]) and answers ([`Invalid`]).
//!
//! A command has two halves. `check` runs once, on the node the command enters the cluster by
//! (and again on the leader it is forwarded to), before it is proposed: pure checks of sizes and
//! ids, ids derived from others, and the partition it goes to. Nothing in it needs to agree
//! across nodes. `apply` runs on every replica once the command is committed, from partition
//! state and the leader's clock only, so every replica decides the same.

use chat_log::PartitionId;
use chat_proto::chat_v1::{self as pb, command, command_reply};

use super::apply::{ChatApply, Outcome};
use crate::ids::partition_of;

/// Limits checked before proposing. They need not agree across nodes (what is applied is
/// decided by [`ApplyLimits`](super::apply::ApplyLimits)).
#[derive(Debug, Clone)]
pub struct CommandLimits {
    pub max_payload_bytes: usize,
    pub max_client_msg_id_bytes: usize,
    pub max_handle_bytes: usize,
    /// Media references one message may carry, and the longest object key and MIME type.
    pub max_media_refs: usize,
    pub max_media_key_bytes: usize,
    pub max_mime_bytes: usize,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits {
            max_payload_bytes: 64 * 1024,
            max_client_msg_id_bytes: 128,
            max_handle_bytes: 256,
            max_media_refs: 16,
            max_media_key_bytes: 512,
            max_mime_bytes: 128,
        }
    }
}

/// What a command's checks may consult: the limits and the cluster's partition count.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    pub limits: &'a CommandLimits,
    pub partitions: u32,
}

impl CheckContext<'_> {
    /// The partition that owns an id.
    pub fn route(&self, id: u64) -> PartitionId {
        partition_of(id, self.partitions)
    }
}

/// A command refused by its checks, before proposing (INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

/// One kind of `chat.v1.Command`, implemented on its message (`pb::SendMessage`, …).
pub trait ChatCommand: Sized {
    /// What the command answers once applied (`pb::SendAck`, `pb::ChatReply`, …).
    type Reply;

    /// Pure checks and derived ids (filled in place); the partition the command goes to.
    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid>;

    /// Apply the committed command. Deterministic: runs on every replica.
    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome;

    /// The command as the `chat.v1.Command` kind it travels as.
    fn into_kind(self) -> command::Kind;

    /// This command's reply out of a reply kind; any other kind is handed back.
    fn reply(kind: command_reply::Kind) -> Result<Self::Reply, command_reply::Kind>;
}

/// The end-to-end key material a media reference may carry.
const MAX_MEDIA_KEY_BLOB_BYTES: usize = 256;

/// A media reference's fields within `limits`: a key of 1 to `max_media_key_bytes`, a MIME type
/// of at most `max_mime_bytes`, a sha256 of 32 bytes or none, a key blob of at most 256 bytes.
pub(crate) fn check_media(m: &pb::MediaRef, limits: &CommandLimits) -> Result<(), Invalid> {
    if m.object_key.is_empty() || m.object_key.len() > limits.max_media_key_bytes {
        return Err(Invalid::new(format!(
            "a media object_key must have 1 to {} bytes",
            limits.max_media_key_bytes
        )));
    }
    if m.mime.len() > limits.max_mime_bytes {
        return Err(Invalid::new(format!(
            "a media mime type has at most {} bytes",
            limits.max_mime_bytes
        )));
    }
    if !(m.sha256.is_empty() || m.sha256.len() == 32) {
        return Err(Invalid::new("a media sha256 is 32 bytes (or left out)"));
    }
    if m.key_blob.len() > MAX_MEDIA_KEY_BLOB_BYTES {
        return Err(Invalid::new(format!(
            "a media key_blob has at most {MAX_MEDIA_KEY_BLOB_BYTES} bytes"
        )));
    }
    Ok(())
}
