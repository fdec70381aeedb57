//! The `chat.v1.Chat` tonic service: unary RPCs and the `Connect` stream.
//!
//! Unary calls authenticate with `authorization: Bearer <token>` (all but `Register`), act as
//! that user, and answer gRPC status codes with clear messages: UNAUTHENTICATED, NOT_FOUND (no
//! such user or chat), PERMISSION_DENIED (not a member / not an admin), INVALID_ARGUMENT,
//! ALREADY_EXISTS (a taken handle), RESOURCE_EXHAUSTED, UNAVAILABLE (no leader in time).

use std::sync::Arc;

use chat_log::RejectCode;
use chat_model::ids::{user_id_for_handle, ChatId, ChatSeq, DeviceId, UserId};
use chat_model::StateReader;
use chat_proto::chat_v1 as pb;
use chat_proto::chat_v1::chat_server::{Chat, ChatServer};
use chat_proto::token::DeviceToken;
use chat_sequencer::{MemberChange, SeqError};
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{authenticate, bearer, secret_digest, Device};
use crate::gateway::{storage, Gateway};
use crate::limits::{
    check_bytes, check_len, MAX_HANDLES_PER_CALL, MAX_NAME_BYTES, MAX_REQUEST_ID_BYTES,
};
use crate::outbound::{FrameStream, Outbound};
use crate::presence_push;
use crate::session;

/// Reads one call makes at once (a group's member records, a user's chats), each perhaps of
/// another node's replica.
const READS_AT_ONCE: usize = 32;

/// History pages in a row, all deleted for the caller, skipped before a call gives up.
const HIDDEN_PAGES_SKIPPED: usize = 16;

/// Data frames (messages, receipts, updates) queued towards one device before its session
/// waits on the transport; control frames have their own queue (see `outbound.rs`).
const OUTBOUND_FRAMES: usize = 64;

pub struct ChatService {
    gw: Arc<Gateway>,
}

impl ChatService {
    /// The service, with the gateway's frame size limit.
    pub fn server(gw: Arc<Gateway>) -> ChatServer<ChatService> {
        let limit = gw.config.max_frame_bytes;
        ChatServer::new(ChatService { gw })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit.max(4 << 20))
    }

    /// The device a call comes from, counted against its user's call rate.
    async fn caller<T>(&self, request: &Request<T>, call: &'static str) -> Result<Device, Status> {
        let device = authenticate(&self.gw, bearer(request)?).await?;
        self.gw.limits.user_call(device.user, call)?;
        Ok(device)
    }

    /// The user a handle names, which must be registered.
    async fn existing_user(&self, handle: &str) -> Result<UserId, Status> {
        let user = user_id_for_handle(handle);
        if self.user_exists(user).await? {
            Ok(user)
        } else {
            Err(Status::not_found(format!(
                "no user has the handle {handle:?}"
            )))
        }
    }

    /// Whether `user` is registered, asking the leader if this replica does not know it yet.
    async fn user_exists(&self, user: UserId) -> Result<bool, Status> {
        let found = self
            .gw
            .read_fresh(self.gw.reads.partition(user.0), |reads| async move {
                Ok(reads.user_exists(user).await?.then_some(()))
            })
            .await?;
        Ok(found.is_some())
    }

    async fn existing_users(&self, handles: &[String]) -> Result<Vec<UserId>, Status> {
        let mut users = Vec::with_capacity(handles.len());
        for h in handles {
            users.push(self.existing_user(h).await?);
        }
        Ok(users)
    }

    /// Fail unless `user` is a member of `chat` (asking again at a read index if a replica says
    /// no).
    /// The seq after which `user` may read `chat` (what was sent before they joined is not
    /// theirs), or why not at all.
    async fn require_member(&self, chat: ChatId, user: UserId) -> Result<ChatSeq, Status> {
        let member = self
            .gw
            .read_fresh(self.gw.reads.partition(chat.0), |reads| async move {
                reads.member(chat, user).await
            })
            .await?;
        if let Some(member) = member {
            return Ok(member.joined_after());
        }
        if self.gw.reads.chat(chat).await.map_err(storage)?.is_none() {
            return Err(Status::not_found(format!("chat {chat} does not exist")));
        }
        Err(Status::permission_denied(format!(
            "user {user} is not a member of chat {chat}"
        )))
    }

    /// A chat as `reads` sees it.
    async fn chat_info(&self, reads: &StateReader, chat: ChatId) -> Result<pb::ChatInfo, Status> {
        let record = reads
            .chat(chat)
            .await
            .map_err(storage)?
            .ok_or_else(|| Status::not_found(format!("chat {chat} does not exist")))?;
        let records = reads.member_records(chat).await.map_err(storage)?;
        let admins = records
            .iter()
            .filter(|(_, m)| m.admin)
            .map(|(u, _)| u.0)
            .collect();
        let members: Vec<UserId> = records.into_iter().map(|(u, _)| u).collect();
        // Each member's record is in the member's partition: read them all at once.
        let users = members.clone();
        let member_handles = futures::stream::iter(users.into_iter().map(|u| reads.user(u)))
            .buffered(READS_AT_ONCE)
            .map_ok(|r| r.map(|r| r.handle).unwrap_or_default())
            .try_collect()
            .await
            .map_err(storage)?;
        Ok(pb::ChatInfo {
            chat_id: chat.0,
            kind: record.kind,
            name: record.name,
            members: members.into_iter().map(|u| u.0).collect(),
            last_seq: record.last_seq,
            member_handles,
            admins,
            description: record.description,
            icon: record.icon,
            disappear_after_secs: record.disappear_after_secs,
        })
    }

    /// The chat after a write through the leader, from a replica that has applied it.
    async fn chat_info_after_write(&self, chat: ChatId) -> Result<pb::ChatInfo, Status> {
        let reads = self.gw.fresh(self.gw.reads.partition(chat.0)).await?;
        self.chat_info(&reads, chat).await
    }
}

/// The token a client's (device, secret) make for `user`, checked for shape.
fn device_token(user: UserId, device_id: u64, secret: String) -> Result<DeviceToken, Status> {
    format!("{}.{device_id}.{secret}", user.0)
        .parse::<DeviceToken>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Chat for ChatService {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let (out, frames) = Outbound::new(OUTBOUND_FRAMES);
        let out = out.with_write_deadline(self.gw.config.write_deadline);
        tokio::spawn(session::serve(self.gw.clone(), request.into_inner(), out));
        Ok(Response::new(frames))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        self.gw
            .limits
            .register(request.remote_addr().map(|a| a.ip()))?;
        let r = request.into_inner();
        let handle = r.handle.trim().to_string();
        let token = device_token(user_id_for_handle(&handle), r.device_id, r.secret)?;
        let device = DeviceId(token.device_id);
        let reply = self
            .gw
            .sequencer
            .register_user_with_device(&handle, Some((device, secret_digest(&token.secret))))
            .await?;
        if !(reply.created || reply.device_matches) {
            return Err(Status::already_exists(format!(
                "the handle {handle:?} is taken; link new devices from one of its devices"
            )));
        }
        Ok(Response::new(pb::RegisterReply {
            user_id: reply.user_id,
            device_id: device.0,
            token: token.to_string(),
        }))
    }

    async fn link_device(
        &self,
        request: Request<pb::LinkDeviceRequest>,
    ) -> Result<Response<pb::LinkDeviceReply>, Status> {
        let me = self.caller(&request, "LinkDevice").await?;
        let r = request.into_inner();
        let token = device_token(me.user, r.device_id, r.secret)?;
        let device = DeviceId(token.device_id);
        if let Some(existing) = self
            .gw
            .reads
            .device(me.user, device)
            .await
            .map_err(storage)?
        {
            if existing.token_sha256 != secret_digest(&token.secret) {
                return Err(Status::already_exists(format!(
                    "user {} already has a device {device}; pick another id",
                    me.user
                )));
            }
        }
        self.gw
            .sequencer
            .add_device(me.user, device, secret_digest(&token.secret))
            .await?;
        Ok(Response::new(pb::LinkDeviceReply {
            user_id: me.user.0,
            device_id: device.0,
            token: token.to_string(),
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::LinkDeviceReply>, Status> {
        let me = self.caller(&request, "RevokeDevice").await?;
        let device = DeviceId(request.into_inner().device_id);
        self.gw.sequencer.revoke_device(me.user, device).await?;
        Ok(Response::new(pb::LinkDeviceReply {
            user_id: me.user.0,
            device_id: device.0,
            token: String::new(),
        }))
    }

    async fn create_direct(
        &self,
        request: Request<pb::CreateDirectRequest>,
    ) -> Result<Response<pb::ChatInfo>, Status> {
        let me = self.caller(&request, "CreateDirect").await?;
        let other = self
            .existing_user(&request.into_inner().with_handle)
            .await?;
        if other == me.user {
            return Err(Status::invalid_argument("a direct chat needs another user"));
        }
        let reply = self.gw.sequencer.create_direct_chat(me.user, other).await?;
        let info = self.chat_info_after_write(ChatId(reply.chat_id)).await?;
        Ok(Response::new(info))
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::ChatInfo>, Status> {
        let me = self.caller(&request, "CreateGroup").await?;
        let r = request.into_inner();
        if r.request_id.is_empty() {
            return Err(Status::invalid_argument(
                "request_id names the group for retries; it cannot be empty",
            ));
        }
        check_bytes("request_id", &r.request_id, MAX_REQUEST_ID_BYTES)?;
        check_bytes("name", &r.name, MAX_NAME_BYTES)?;
        check_len(
            "member_handles",
            r.member_handles.len(),
            MAX_HANDLES_PER_CALL,
        )?;
        let members = self.existing_users(&r.member_handles).await?;
        let reply = self
            .gw
            .sequencer
            .create_group(me.user, &r.request_id, &r.name, &members)
            .await?;
        let info = self.chat_info_after_write(ChatId(reply.chat_id)).await?;
        Ok(Response::new(info))
    }

    async fn change_members(
        &self,
        request: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChatInfo>, Status> {
        let me = self.caller(&request, "ChangeMembers").await?;
        let r = request.into_inner();
        let chat = ChatId(r.chat_id);
        for (what, list) in [
            ("add_handles", &r.add_handles),
            ("remove_handles", &r.remove_handles),
            ("promote_handles", &r.promote_handles),
            ("demote_handles", &r.demote_handles),
        ] {
            check_len(what, list.len(), MAX_HANDLES_PER_CALL)?;
        }
        let add = self.existing_users(&r.add_handles).await?;
        // Handles of users who may be gone: their ids are derived, never looked up.
        let ids = |handles: &[String]| handles.iter().map(|h| user_id_for_handle(h)).collect();
        let remove: Vec<UserId> = ids(&r.remove_handles);
        let promote: Vec<UserId> = ids(&r.promote_handles);
        let demote: Vec<UserId> = ids(&r.demote_handles);
        let change = MemberChange {
            add: &add,
            remove: &remove,
            promote: &promote,
            demote: &demote,
        };
        self.gw
            .sequencer
            .change_members(chat, me.user, change)
            .await?;
        let info = self.chat_info_after_write(chat).await?;
        Ok(Response::new(info))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::SendAck>, Status> {
        let me = self.caller(&request, "DeleteMessage").await?;
        let r = request.into_inner();
        let chat = ChatId(r.chat_id);
        self.require_member(chat, me.user).await?;
        let ack = self
            .gw
            .sequencer
            .delete_message(chat, me.user, me.device, ChatSeq(r.seq))
            .await?;
        Ok(Response::new(ack))
    }

    async fn update_chat(
        &self,
        request: Request<pb::UpdateChatRequest>,
    ) -> Result<Response<pb::ChatInfo>, Status> {
        let me = self.caller(&request, "UpdateChat").await?;
        let r = request.into_inner();
        if let Some(name) = &r.name {
            check_bytes("name", name, MAX_NAME_BYTES)?;
        }
        let chat = ChatId(r.chat_id);
        self.require_member(chat, me.user).await?;
        self.gw
            .sequencer
            .update_chat(pb::UpdateChat {
                chat_id: r.chat_id,
                by_user: me.user.0,
                name: r.name,
                description: r.description,
                icon: r.icon,
                disappear_after_secs: r.disappear_after_secs,
                block: None,
            })
            .await?;
        let info = self.chat_info_after_write(chat).await?;
        Ok(Response::new(info))
    }

    async fn list_chats(
        &self,
        request: Request<pb::ListChatsRequest>,
    ) -> Result<Response<pb::ListChatsReply>, Status> {
        let me = self.caller(&request, "ListChats").await?;
        let reads = &self.gw.reads;
        let chats = reads.user_chats(me.user).await.map_err(storage)?;
        let chats = futures::stream::iter(chats.into_iter().map(|c| self.chat_info(reads, c)))
            .buffered(READS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(Response::new(pb::ListChatsReply { chats }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryPageRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let me = self.caller(&request, "History").await?;
        let r = request.into_inner();
        let chat = ChatId(r.chat_id);
        let joined_after = self.require_member(chat, me.user).await?;
        // Clamped at the server: a member added later reads nothing from before.
        let after = ChatSeq(r.after_seq).max(joined_after);
        let (mut after, mut before) = (after, ChatSeq::bound(r.before_seq));
        // What the caller deleted for itself is left out; a page it emptied is followed by the
        // next one in the same direction, so an empty page still means the end.
        for _ in 0..HIDDEN_PAGES_SKIPPED {
            let mut page = self
                .gw
                .sequencer
                .history(chat, after, before, r.limit)
                .await?;
            let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) else {
                return Ok(Response::new(page));
            };
            let (first, last) = (ChatSeq(first.seq), ChatSeq(last.seq));
            // At the partition's last confirmed read index when there is one (see
            // `delete_for_me`), from any replica otherwise.
            let p = self.gw.reads.partition(chat.0);
            let reads = match self.gw.recent_read_index(p) {
                Some(offset) => self.gw.reads.fresh_at(p, offset),
                None => self.gw.reads.clone(),
            };
            let hidden = reads
                .hidden(chat, me.user, first, last)
                .await
                .map_err(storage)?;
            page.messages.retain(|m| !hidden.contains(&m.seq));
            if !page.messages.is_empty() {
                return Ok(Response::new(page));
            }
            match before {
                Some(_) => before = Some(first),
                None => after = last,
            }
        }
        Err(Status::resource_exhausted(format!(
            "more than {HIDDEN_PAGES_SKIPPED} pages in a row of chat {chat} are deleted for you; \
             page on from after_seq/before_seq"
        )))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountReply>, Status> {
        let me = self.caller(&request, "DeleteAccount").await?;
        let confirm = &request.get_ref().confirm_handle;
        if user_id_for_handle(confirm) != me.user {
            return Err(Status::invalid_argument(
                "confirm_handle must be the handle of the account being deleted",
            ));
        }
        // Every chat first, while the caller's devices still work: a deletion cut off half way
        // is finished by calling again. Then the account, which revokes every device.
        let chats = self
            .gw
            .read_fresh(self.gw.reads.partition(me.user.0), |reads| async move {
                Ok(Some(reads.user_chats(me.user).await?))
            })
            .await?
            .unwrap_or_default();
        let me_only = [me.user];
        for chat in chats {
            let change = MemberChange {
                add: &[],
                remove: &me_only,
                promote: &[],
                demote: &[],
            };
            match self
                .gw
                .sequencer
                .change_members(chat, me.user, change)
                .await
            {
                Ok(_) => {}
                // Left already (a retry): nothing to leave.
                Err(SeqError::Rejected {
                    code: RejectCode::PermissionDenied | RejectCode::NotFound,
                    ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let deleted = self
            .gw
            .sequencer
            .delete_user(me.user, self.gw.config.account_release_after)
            .await?;
        tracing::info!(user = %me.user, release_at_ms = deleted.release_at_ms, "account deleted");
        Ok(Response::new(pb::DeleteAccountReply {
            release_at_ms: deleted.release_at_ms,
        }))
    }

    async fn block_user(
        &self,
        request: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserReply>, Status> {
        let me = self.caller(&request, "BlockUser").await?;
        let r = request.into_inner();
        let other = self.existing_user(&r.handle).await?;
        if other == me.user {
            return Err(Status::invalid_argument("a user cannot block itself"));
        }
        // The block is kept on the direct chat, made if the two never talked: the send's apply
        // then refuses the blocked user's messages in log order.
        let chat = self.gw.sequencer.create_direct_chat(me.user, other).await?;
        self.gw
            .sequencer
            .update_chat(pb::UpdateChat {
                chat_id: chat.chat_id,
                by_user: me.user.0,
                block: Some(r.blocked),
                ..Default::default()
            })
            .await?;
        Ok(Response::new(pb::BlockUserReply {
            chat_id: chat.chat_id,
            blocked: r.blocked,
        }))
    }

    async fn delete_for_me(
        &self,
        request: Request<pb::DeleteForMeRequest>,
    ) -> Result<Response<pb::DeleteForMeReply>, Status> {
        let me = self.caller(&request, "DeleteForMe").await?;
        let r = request.into_inner();
        let chat = ChatId(r.chat_id);
        self.require_member(chat, me.user).await?;
        let reply = self
            .gw
            .sequencer
            .hide_messages(chat, me.user, r.seqs)
            .await?;
        // A read index confirmed now covers the hide, and History reads what it hides at the
        // last one: the caller's next page through this node leaves the messages out even when
        // this node's replica has not applied the write yet.
        let p = self.gw.reads.partition(chat.0);
        if let Err(e) = self.gw.fresh(p).await {
            tracing::debug!(%chat, error = %e, "no read index after a hide; History may trail it");
        }
        Ok(Response::new(pb::DeleteForMeReply {
            hidden: reply.hidden,
        }))
    }

    async fn inbox(
        &self,
        request: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxReply>, Status> {
        let me = self.caller(&request, "Inbox").await?;
        // The user's chat list lives in the user's partition (kept by follow-ups); each chat's
        // summary and marks in the chat's partition's projection.
        let mut by_partition: std::collections::BTreeMap<_, Vec<ChatId>> = Default::default();
        for chat in self.gw.reads.chat_list(me.user).await.map_err(storage)? {
            by_partition
                .entry(self.gw.reads.partition(chat.0))
                .or_default()
                .push(chat);
        }
        let replicas = chat_log::Replicas::new(self.gw.sequencer.node().clone());
        let mut entries = Vec::new();
        for (p, chats) in by_partition {
            let view = chat_projector::store::ReplicaView::open(
                replicas.clone(),
                p,
                chat_projector::chats::CHATS_PROJECTION_ID,
            )
            .await
            .map_err(storage)?;
            let view = &view;
            let found: Vec<_> = futures::stream::iter(
                chats
                    .into_iter()
                    .map(|chat| chat_projector::chats::inbox_entry(view, me.user.0, chat.0)),
            )
            .buffered(READS_AT_ONCE)
            .try_collect()
            .await
            .map_err(storage)?;
            entries.extend(found.into_iter().flatten());
        }
        // Most recent activity first; ties by chat id so the order is stable.
        entries.sort_by(|a, b| {
            b.summary
                .last_activity_ms
                .cmp(&a.summary.last_activity_ms)
                .then(a.chat.cmp(&b.chat))
        });
        let chats = entries
            .into_iter()
            .map(|e| pb::InboxEntry {
                chat_id: e.chat,
                kind: e.summary.kind,
                name: e.summary.name,
                last_seq: e.summary.last_seq,
                last_activity_ms: e.summary.last_activity_ms,
                last_sender: e.summary.last_sender,
                unread: e.unread,
                delivered_up_to: e.mark.delivered,
                read_up_to: e.mark.read,
                ticks_delivered: e.ticks.delivered.0,
                ticks_read: e.ticks.read.0,
            })
            .collect();
        Ok(Response::new(pb::InboxReply { chats }))
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceReply>, Status> {
        let me = self.caller(&request, "Presence").await?;
        let handles = request.into_inner().handles;
        check_len("handles", handles.len(), MAX_HANDLES_PER_CALL)?;
        // An unknown handle is NOT_FOUND; a user who shares no chat with the caller is not
        // theirs to watch (PERMISSION_DENIED), so presence cannot be used to track strangers.
        let ids = self.existing_users(&handles).await?;
        let mine: std::collections::HashSet<ChatId> = self
            .gw
            .reads
            .user_chats(me.user)
            .await
            .map_err(storage)?
            .into_iter()
            .collect();
        for (handle, &user) in handles.iter().zip(&ids) {
            if user == me.user {
                continue;
            }
            let theirs = self.gw.reads.user_chats(user).await.map_err(storage)?;
            if !theirs.iter().any(|c| mine.contains(c)) {
                return Err(Status::permission_denied(format!(
                    "you share no chat with {handle:?}: their presence is not yours to see"
                )));
            }
        }
        let found = presence_push::as_seen_by(&self.gw, me.user, &ids).await?;
        let users = handles
            .into_iter()
            .zip(ids)
            .zip(found)
            .map(|((handle, user), p)| pb::UserPresence {
                handle,
                ..crate::presence::to_pb(user.0, p.unwrap_or_default())
            })
            .collect();
        Ok(Response::new(pb::PresenceReply { users }))
    }

    async fn create_upload(
        &self,
        request: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::UploadGrant>, Status> {
        let device = self.caller(&request, "CreateUpload").await?;
        let grant = self
            .gw
            .media
            .grant_upload(device.user, request.get_ref())
            .await?;
        Ok(Response::new(grant))
    }

    async fn create_download(
        &self,
        request: Request<pb::CreateDownloadRequest>,
    ) -> Result<Response<pb::DownloadGrant>, Status> {
        self.caller(&request, "CreateDownload").await?;
        let grant = self
            .gw
            .media
            .grant_download(&request.get_ref().object_key, &self.gw.presence)
            .await?;
        Ok(Response::new(grant))
    }

    async fn set_presence_hidden(
        &self,
        request: Request<pb::SetPresenceHiddenRequest>,
    ) -> Result<Response<pb::SetPresenceHiddenReply>, Status> {
        let me = self.caller(&request, "SetPresenceHidden").await?;
        let hidden = request.into_inner().hidden;
        let settings = self
            .gw
            .sequencer
            .set_presence(me.user, Some(hidden), 0)
            .await?;
        Ok(Response::new(pb::SetPresenceHiddenReply {
            hidden: settings.hidden,
        }))
    }
}
