//! Typed reads of the chat state from this node's replica: who a device is, which chats a user
//! is in, who is in a chat, where a device's cursor stands, a page of a chat's history. The
//! gateway serves devices from these; they may lag the leader by what is not yet applied here
//! (see `chat_sequencer::Sequencer::read_barrier` for the cases where that matters).

use std::sync::Arc;

use chat_log::{LogNode, LogOffset, PartitionId, StateEntries, StoreError};
use chat_proto::chat_v1 as pb;
use prost::Message as _;

use crate::event::ChatEventAt;
use crate::ids::{partition_of, ChatId, ChatSeq, DeviceId, UserId};
use crate::state::{self, ChatRecord, DeviceRecord, MemberRecord, UserRecord};

/// Most members a chat can have is bounded by the apply limits; scans stop well above it.
const SCAN_LIMIT: usize = 1 << 20;

/// Most bytes of messages in one history page: well under gRPC's default 4 MiB message limit.
/// A page of big messages stops short (the client asks again from its last seq).
const MAX_HISTORY_PAGE_BYTES: usize = 2 * 1024 * 1024;

#[derive(Clone)]
pub struct StateReader {
    node: Arc<LogNode>,
}

impl StateReader {
    pub fn new(node: Arc<LogNode>) -> Self {
        StateReader { node }
    }

    /// The partition that owns `id`.
    pub fn partition(&self, id: u64) -> PartitionId {
        partition_of(id, self.node.partition_count())
    }

    fn get<T: state::Record>(
        &self,
        owner: u64,
        what: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.node
            .handler_get(self.partition(owner), key)?
            .map(|b| state::decode(what, &b))
            .transpose()
    }

    /// Every handler entry of `p` whose key starts with `prefix`.
    fn scan_prefix(&self, p: PartitionId, prefix: &[u8]) -> Result<StateEntries, StoreError> {
        self.node.handler_scan_prefix(p, prefix, SCAN_LIMIT)
    }

    /// `scan_prefix`, with each entry's id at `id_at` of its key and its decoded record.
    fn scan_records<T: state::Record>(
        &self,
        p: PartitionId,
        prefix: &[u8],
        id_at: usize,
        what: &str,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        self.scan_prefix(p, prefix)?
            .into_iter()
            .map(|(k, v)| {
                let id = state::u64_at(&k, id_at)
                    .ok_or_else(|| StoreError::decode(format!("{what} key"), "too short"))?;
                Ok((id, state::decode(what, &v)?))
            })
            .collect()
    }

    pub fn user_exists(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self
            .node
            .handler_get(self.partition(user.0), &state::user_key(user))?
            .is_some())
    }

    pub fn user(&self, user: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get(user.0, "user", &state::user_key(user))
    }

    pub fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.get(user.0, "device", &state::device_key(user, device))
    }

    /// Every device of `user` with its record (revoked ones included).
    pub fn devices(&self, user: UserId) -> Result<Vec<(DeviceId, DeviceRecord)>, StoreError> {
        let p = self.partition(user.0);
        Ok(self
            .scan_records(p, &state::devices_prefix(user), 9, "device")?
            .into_iter()
            .map(|(d, r)| (DeviceId(d), r))
            .collect())
    }

    pub fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.get(chat.0, "chat", &state::chat_key(chat))
    }

    pub fn member(&self, chat: ChatId, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        self.get(chat.0, "member", &state::member_key(chat, user))
    }

    /// Every chat whose home is partition `p`, with its record.
    pub fn chats_in(&self, p: PartitionId) -> Result<Vec<(ChatId, ChatRecord)>, StoreError> {
        Ok(self
            .scan_records(p, state::CHATS_PREFIX, 1, "chat")?
            .into_iter()
            .map(|(c, r)| (ChatId(c), r))
            .collect())
    }

    /// The members of `chat`, in user id order.
    pub fn members(&self, chat: ChatId) -> Result<Vec<UserId>, StoreError> {
        let entries = self.scan_prefix(self.partition(chat.0), &state::members_prefix(chat))?;
        Ok(entries
            .iter()
            .filter_map(|(k, _)| state::u64_at(k, 9).map(UserId))
            .collect())
    }

    /// Every chat `user` is a member of: the `j` index of each partition (a chat's members are
    /// recorded in the chat's partition, so this visits all of them).
    pub fn user_chats(&self, user: UserId) -> Result<Vec<ChatId>, StoreError> {
        let prefix = state::user_chats_prefix(user);
        let mut chats = Vec::new();
        for p in 0..self.node.partition_count() {
            for (key, _) in self.scan_prefix(PartitionId(p), &prefix)? {
                chats.extend(state::parse_user_chat_key(&key));
            }
        }
        chats.sort_unstable();
        Ok(chats)
    }

    /// The user's chat list as kept in the user's own partition by follow-ups (it trails the
    /// chats' partitions by the follow-up delay).
    pub fn chat_list(&self, user: UserId) -> Result<Vec<ChatId>, StoreError> {
        let p = self.partition(user.0);
        Ok(self
            .scan_prefix(p, &state::chat_list_prefix(user))?
            .into_iter()
            .filter_map(|(k, _)| state::parse_user_chat_key(&k))
            .collect())
    }

    /// How far partition `p`'s follow-ups are recorded as applied.
    pub fn follow_ups_sent(&self, p: PartitionId) -> Result<u64, StoreError> {
        match self.node.handler_get(p, state::FOLLOW_UPS_SENT_KEY)? {
            Some(b) => state::decode_u64("follow-ups sent", &b),
            None => Ok(0),
        }
    }

    /// The last seq acknowledged as delivered by `device` in `chat` (zero: none).
    pub fn device_cursor(
        &self,
        chat: ChatId,
        user: UserId,
        device: DeviceId,
    ) -> Result<ChatSeq, StoreError> {
        match self.node.handler_get(
            self.partition(chat.0),
            &state::device_cursor_key(chat, user, device),
        )? {
            Some(b) => state::decode_u64("device cursor", &b).map(ChatSeq),
            None => Ok(ChatSeq::ZERO),
        }
    }
}

impl StateReader {
    /// Up to `limit` messages of `chat` with `after < seq < before` (`None`: no upper bound),
    /// oldest first, and the chat's last seq; `None` if the chat does not exist here.
    pub fn history(
        &self,
        chat: ChatId,
        after: ChatSeq,
        before: Option<ChatSeq>,
        limit: u32,
    ) -> Result<Option<pb::HistoryReply>, StoreError> {
        let Some(record) = self.chat(chat)? else {
            return Ok(None);
        };
        let p = self.partition(chat.0);
        let from = state::index_key(chat, ChatSeq(after.0.saturating_add(1)));
        let to = state::index_key(chat, before.unwrap_or(ChatSeq(u64::MAX)));
        let mut messages = Vec::new();
        let mut page_bytes = 0;
        for (_, offset) in self.node.handler_scan(p, &from, &to, limit as usize)? {
            let offset = LogOffset(state::decode_offset(&offset)?);
            let event = self.node.read_event(p, offset)?.ok_or_else(|| {
                StoreError::decode(
                    format!("history of chat {chat}"),
                    format!("index points at missing offset {offset}"),
                )
            })?;
            let message = ChatEventAt::message(&event)
                .map_err(|e| StoreError::decode(format!("history of chat {chat}"), e))?
                .ok_or_else(|| {
                    StoreError::decode(
                        format!("history of chat {chat}"),
                        format!("offset {offset} is not a message"),
                    )
                })?;
            page_bytes += message.encoded_len();
            if page_bytes > MAX_HISTORY_PAGE_BYTES && !messages.is_empty() {
                break;
            }
            messages.push(message);
        }
        Ok(Some(pb::HistoryReply {
            messages,
            last_seq: record.last_seq,
        }))
    }
}
