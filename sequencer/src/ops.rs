//! The typed helpers over [`Sequencer::submit_typed`]: one per thing the gateway, the workers
//! and the tests ask of the write path (`send`, `create_group`, …), each building its command's
//! message; and the history read.

use chat_log::RejectCode;
use chat_model::ids::{direct_chat_id, group_chat_id, ChatId, ChatSeq, DeviceId, UserId};
use chat_model::reads::PageEnd;
use chat_model::StateReader;
use chat_proto::chat_v1::{
    self as pb, command, command_reply, send_batch_item, ChatKind, ReceiptKind,
};

use crate::error::{from_refusal, SeqError};
use crate::sequencer::Sequencer;

/// What a `ChangeMembers` does: users added, removed, made admins, no longer admins.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberChange<'a> {
    pub add: &'a [UserId],
    pub remove: &'a [UserId],
    pub promote: &'a [UserId],
    pub demote: &'a [UserId],
}

impl Sequencer {
    pub async fn register_user(&self, handle: &str) -> Result<pb::UserReply, SeqError> {
        self.register_user_with_device(handle, None).await
    }

    /// Register `handle` and, if the user is created by this call, its first device (with the
    /// sha256 of the device's bearer token) in the same apply.
    pub async fn register_user_with_device(
        &self,
        handle: &str,
        first_device: Option<(DeviceId, [u8; 32])>,
    ) -> Result<pb::UserReply, SeqError> {
        let (device, token) = first_device.map_or((0, Vec::new()), |(d, t)| (d.0, t.to_vec()));
        self.submit_typed(pb::RegisterUser {
            user_id: 0,
            handle: handle.to_string(),
            first_device_id: device,
            first_device_token_sha256: token,
        })
        .await
    }

    /// Register a device with the sha256 of its bearer token.
    pub async fn add_device(
        &self,
        user: UserId,
        device: DeviceId,
        token_sha256: [u8; 32],
    ) -> Result<pb::DeviceReply, SeqError> {
        self.submit_typed(pb::AddDevice {
            user_id: user.0,
            device_id: device.0,
            token_sha256: token_sha256.to_vec(),
        })
        .await
    }

    pub async fn revoke_device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<pb::DeviceReply, SeqError> {
        self.submit_typed(pb::RevokeDevice {
            user_id: user.0,
            device_id: device.0,
        })
        .await
    }

    pub async fn create_direct_chat(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<pb::ChatReply, SeqError> {
        self.create_chat(direct_chat_id(a, b), ChatKind::Direct, "", a, &[b])
            .await
    }

    /// Create a group; `request_id` makes retries name the same group.
    pub async fn create_group(
        &self,
        creator: UserId,
        request_id: &str,
        name: &str,
        members: &[UserId],
    ) -> Result<pb::ChatReply, SeqError> {
        self.create_chat(
            group_chat_id(creator, request_id),
            ChatKind::Group,
            name,
            creator,
            members,
        )
        .await
    }

    async fn create_chat(
        &self,
        chat: ChatId,
        kind: ChatKind,
        name: &str,
        creator: UserId,
        members: &[UserId],
    ) -> Result<pb::ChatReply, SeqError> {
        let reply = self
            .submit_typed(pb::CreateChat {
                chat_id: chat.0,
                kind: kind as i32,
                name: name.to_string(),
                creator: creator.0,
                members: members.iter().map(|m| m.0).collect(),
            })
            .await?;
        Ok(pb::ChatReply {
            chat_id: chat.0,
            ..reply
        })
    }

    /// Add, remove, promote and demote members of a group (see `ChangeMembers`).
    pub async fn change_members(
        &self,
        chat: ChatId,
        by: UserId,
        change: MemberChange<'_>,
    ) -> Result<pb::ChatReply, SeqError> {
        let ids = |users: &[UserId]| users.iter().map(|u| u.0).collect();
        self.submit_typed(pb::ChangeMembers {
            chat_id: chat.0,
            by_user: by.0,
            add: ids(change.add),
            remove: ids(change.remove),
            promote: ids(change.promote),
            demote: ids(change.demote),
        })
        .await
    }

    /// Delete message `seq` of `chat` for everyone (see `DeleteMessage`); the tombstone's ack.
    pub async fn delete_message(
        &self,
        chat: ChatId,
        by: UserId,
        device: DeviceId,
        seq: ChatSeq,
    ) -> Result<pb::SendAck, SeqError> {
        self.submit_typed(pb::DeleteMessage {
            chat_id: chat.0,
            by_user: by.0,
            by_device: device.0,
            seq: seq.0,
        })
        .await
    }

    /// Set `user`'s presence hidden (when `hidden` is given) and raise its last seen to
    /// `last_seen_ms` (see `SetPresence`).
    pub async fn set_presence(
        &self,
        user: UserId,
        hidden: Option<bool>,
        last_seen_ms: u64,
    ) -> Result<pb::PresenceSettings, SeqError> {
        self.submit_typed(pb::SetPresence {
            user_id: user.0,
            hidden,
            last_seen_ms,
        })
        .await
    }

    /// Delete `user`'s account (see `DeleteUser`): its devices revoked, its handle released
    /// after `release_after`.
    pub async fn delete_user(
        &self,
        user: UserId,
        release_after: std::time::Duration,
    ) -> Result<pb::AccountDeleted, SeqError> {
        self.submit_typed(pb::DeleteUser {
            user_id: user.0,
            release_after_ms: release_after.as_millis() as u64,
        })
        .await
    }

    /// Hide messages of `chat` from `user` alone (delete for me, see `HideMessages`).
    pub async fn hide_messages(
        &self,
        chat: ChatId,
        user: UserId,
        seqs: Vec<u64>,
    ) -> Result<pb::HiddenReply, SeqError> {
        self.submit_typed(pb::HideMessages {
            chat_id: chat.0,
            user: user.0,
            seqs,
        })
        .await
    }

    /// Change a chat's settings (see `UpdateChat`).
    pub async fn update_chat(&self, update: pb::UpdateChat) -> Result<pb::ChatReply, SeqError> {
        self.submit_typed(update).await
    }

    pub async fn send(&self, message: pb::SendMessage) -> Result<pb::SendAck, SeqError> {
        self.submit_typed(message).await
    }

    /// [`Sequencer::send`], answering UNAVAILABLE after `within` (the configured
    /// `submit_timeout` when `None`) if no leader has taken it by then.
    pub async fn send_within(
        &self,
        message: pb::SendMessage,
        within: Option<std::time::Duration>,
    ) -> Result<pb::SendAck, SeqError> {
        self.submit_typed_within(message, within).await
    }

    /// A device's sends to one chat, given seqs in this order (see `submit_batch`): each
    /// message's ack or error, in the same order. An error for the whole batch (a malformed one)
    /// is every message's.
    pub async fn send_batch_within(
        &self,
        messages: Vec<pb::SendMessage>,
        within: Option<std::time::Duration>,
    ) -> Vec<Result<pb::SendAck, SeqError>> {
        let n = messages.len();
        let command = pb::Command {
            kind: Some(command::Kind::SendBatch(pb::SendBatch { messages })),
        };
        let reply = match self.submit_within(command, false, within).await {
            Ok(reply) => reply,
            Err(e) => return vec![Err(e); n],
        };
        let items = match reply.kind {
            Some(command_reply::Kind::SendBatch(r)) if r.items.len() == n => r.items,
            other => {
                let e = SeqError::Internal(format!("a SendBatch of {n} answered {other:?}"));
                return vec![Err(e); n];
            }
        };
        items
            .into_iter()
            .map(|item| match item.result {
                Some(send_batch_item::Result::Ack(ack)) => Ok(ack),
                Some(send_batch_item::Result::Refused(r)) => Err(from_refusal(r)),
                None => Err(SeqError::Internal("an empty SendBatch item".into())),
            })
            .collect()
    }

    pub async fn advance_receipt(
        &self,
        chat: ChatId,
        user: UserId,
        device: DeviceId,
        kind: ReceiptKind,
        up_to: ChatSeq,
    ) -> Result<pb::ReceiptReply, SeqError> {
        self.submit_typed(pb::AdvanceReceipt {
            chat_id: chat.0,
            user_id: user.0,
            device_id: device.0,
            kind: kind as i32,
            up_to_seq: up_to.0,
        })
        .await
    }

    /// Retention: expire `chat`'s messages up to `up_to` (the reply says how far it got).
    pub async fn expire_messages(
        &self,
        chat: ChatId,
        up_to: ChatSeq,
    ) -> Result<pb::ExpireReply, SeqError> {
        self.submit_typed(pb::ExpireMessages {
            chat_id: chat.0,
            up_to_seq: up_to.0,
        })
        .await
    }

    /// Messages of `chat` with `after < seq < before` (no `before`: unbounded), oldest first:
    /// the newest of the range when `before` is given, the oldest otherwise; from a replica of the chat's partition (this node's if it holds it; it may lag the
    /// leader by what it has not applied yet). `limit` is clamped to the configured page size
    /// (0: 50).
    pub async fn history(
        &self,
        chat: ChatId,
        after: ChatSeq,
        before: Option<ChatSeq>,
        limit: u32,
    ) -> Result<pb::HistoryReply, SeqError> {
        let limit = match limit {
            0 => 50,
            n => n.min(self.config.max_history_page),
        };
        // Paging back when it names an upper bound (the newest page below it), forward
        // otherwise.
        let end = match before {
            Some(_) => PageEnd::Newest,
            None => PageEnd::Oldest,
        };
        StateReader::new(self.node.clone())
            .history(chat, after, before, limit, end)
            .await
            .map_err(SeqError::from)?
            .ok_or_else(|| SeqError::Rejected {
                code: RejectCode::NotFound,
                message: format!("chat {chat} does not exist"),
            })
    }
}
