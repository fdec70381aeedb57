//! Typed reads of the chat state: who a device is, which chats a user is in, who is in a chat,
//! where a device's cursor stands, a page of a chat's history. Each read goes to the replica of
//! the partition that owns the key — this node's when it holds it, another node's otherwise
//! (`chat_log::Replicas`) — and sees what that replica has applied, which may trail the leader.
//! A reader made with [`StateReader::fresh_at`] reads one partition only from a replica that has
//! applied a given offset (a read index), for the cases where a write's effect must be seen
//! (see `chat_sequencer::Sequencer::read_index`).

use chat_log::{
    LogNode, LogOffset, PartitionId, ReadError, Replicas, Space, StateEntries, StoreError,
};
use chat_proto::chat_v1 as pb;
use prost::Message as _;
use std::sync::Arc;

use crate::event::ChatEventAt;
use crate::ids::{partition_of, ChatId, ChatSeq, DeviceId, UserId};
use crate::state::{self, ChatRecord, DeviceRecord, MemberRecord, UserRecord};

/// Most members a chat can have is bounded by the apply limits; scans stop well above it.
const SCAN_LIMIT: usize = 1 << 20;

/// Most bytes of messages in one history page: well under gRPC's default 4 MiB message limit.
/// A page of big messages stops short (the client asks again from its last seq).
const MAX_HISTORY_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Events fetched per read while a history page is filled.
const HISTORY_CHUNK: usize = 64;
/// Most hidden seqs one read returns (a history page is far smaller).
const MAX_HIDDEN_READ: usize = 4096;

#[derive(Clone)]
pub struct StateReader {
    replicas: Replicas,
    partitions: u32,
    /// Reads of this partition go only to a replica that has applied this offset.
    floor: Option<(PartitionId, LogOffset)>,
}

impl StateReader {
    pub fn new(node: Arc<LogNode>) -> Self {
        StateReader {
            partitions: node.partition_count(),
            replicas: Replicas::new(node),
            floor: None,
        }
    }

    /// This reader, reading partition `p` only from a replica that has applied `offset`.
    pub fn fresh_at(&self, p: PartitionId, offset: LogOffset) -> StateReader {
        StateReader {
            floor: Some((p, offset)),
            ..self.clone()
        }
    }

    /// The partition that owns `id`.
    pub fn partition(&self, id: u64) -> PartitionId {
        partition_of(id, self.partitions)
    }

    /// How many partitions the chat state is spread over.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn floor(&self, p: PartitionId) -> LogOffset {
        match self.floor {
            Some((q, offset)) if q == p => offset,
            _ => LogOffset(0),
        }
    }

    async fn get_raw(&self, p: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.replicas.get(p, Space::State, key, self.floor(p)).await
    }

    async fn get<T: state::Record>(
        &self,
        owner: u64,
        what: &str,
        key: &[u8],
    ) -> Result<Option<T>, ReadError> {
        Ok(self
            .get_raw(self.partition(owner), key)
            .await?
            .map(|b| state::decode(what, &b))
            .transpose()?)
    }

    /// Every handler entry of `p` whose key starts with `prefix`.
    async fn scan_prefix(&self, p: PartitionId, prefix: &[u8]) -> Result<StateEntries, ReadError> {
        self.replicas
            .scan_state_prefix(p, prefix, SCAN_LIMIT, self.floor(p))
            .await
    }

    /// `scan_prefix`, with each entry's id at `id_at` of its key and its decoded record.
    async fn scan_records<T: state::Record>(
        &self,
        p: PartitionId,
        prefix: &[u8],
        id_at: usize,
        what: &str,
    ) -> Result<Vec<(u64, T)>, ReadError> {
        self.scan_prefix(p, prefix)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let id = state::u64_at(&k, id_at)
                    .ok_or_else(|| StoreError::decode(format!("{what} key"), "too short"))?;
                Ok((id, state::decode(what, &v)?))
            })
            .collect()
    }

    /// Whether `user` is registered (a deleted account is not).
    pub async fn user_exists(&self, user: UserId) -> Result<bool, ReadError> {
        Ok(self.user(user).await?.is_some_and(|u| u.deleted_at_ms == 0))
    }

    pub async fn user(&self, user: UserId) -> Result<Option<UserRecord>, ReadError> {
        self.get(user.0, "user", &state::user_key(user)).await
    }

    pub async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, ReadError> {
        self.get(user.0, "device", &state::device_key(user, device))
            .await
    }

    /// Every device of `user` with its record (revoked ones included).
    pub async fn devices(&self, user: UserId) -> Result<Vec<(DeviceId, DeviceRecord)>, ReadError> {
        let p = self.partition(user.0);
        Ok(self
            .scan_records(p, &state::devices_prefix(user), 9, "device")
            .await?
            .into_iter()
            .map(|(d, r)| (DeviceId(d), r))
            .collect())
    }

    pub async fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, ReadError> {
        self.get(chat.0, "chat", &state::chat_key(chat)).await
    }

    pub async fn member(
        &self,
        chat: ChatId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, ReadError> {
        self.get(chat.0, "member", &state::member_key(chat, user))
            .await
    }

    /// Every chat whose home is partition `p`, with its record.
    pub async fn chats_in(&self, p: PartitionId) -> Result<Vec<(ChatId, ChatRecord)>, ReadError> {
        Ok(self
            .scan_records(p, state::CHATS_PREFIX, 1, "chat")
            .await?
            .into_iter()
            .map(|(c, r)| (ChatId(c), r))
            .collect())
    }

    /// The members of `chat`, in user id order.
    pub async fn members(&self, chat: ChatId) -> Result<Vec<UserId>, ReadError> {
        let entries = self
            .scan_prefix(self.partition(chat.0), &state::members_prefix(chat))
            .await?;
        Ok(entries
            .iter()
            .filter_map(|(k, _)| state::u64_at(k, 9).map(UserId))
            .collect())
    }

    /// The members of `chat` with their records (admin or not, since when), in user id order.
    pub async fn member_records(
        &self,
        chat: ChatId,
    ) -> Result<Vec<(UserId, state::MemberRecord)>, ReadError> {
        let entries = self
            .scan_prefix(self.partition(chat.0), &state::members_prefix(chat))
            .await?;
        let mut members = Vec::with_capacity(entries.len());
        for (k, v) in &entries {
            if let Some(user) = state::u64_at(k, 9) {
                members.push((UserId(user), state::decode("member", v)?));
            }
        }
        Ok(members)
    }

    /// Every chat `user` is a member of: the `j` index of each partition (a chat's members are
    /// recorded in the chat's partition, so this visits all of them, at once).
    pub async fn user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        let prefix = state::user_chats_prefix(user);
        let scans = (0..self.partitions).map(|p| self.scan_prefix(PartitionId(p), &prefix));
        let mut chats = Vec::new();
        for entries in futures::future::try_join_all(scans).await? {
            for (key, _) in entries {
                chats.extend(state::parse_user_chat_key(&key));
            }
        }
        chats.sort_unstable();
        Ok(chats)
    }

    /// The user's chat list as kept in the user's own partition by follow-ups (it trails the
    /// chats' partitions by the follow-up delay).
    pub async fn chat_list(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        let p = self.partition(user.0);
        Ok(self
            .scan_prefix(p, &state::chat_list_prefix(user))
            .await?
            .into_iter()
            .filter_map(|(k, _)| state::parse_user_chat_key(&k))
            .collect())
    }

    /// How far partition `p`'s follow-ups are recorded as applied.
    pub async fn follow_ups_sent(&self, p: PartitionId) -> Result<u64, ReadError> {
        match self.get_raw(p, state::FOLLOW_UPS_SENT_KEY).await? {
            Some(b) => Ok(state::decode_u64("follow-ups sent", &b)?),
            None => Ok(0),
        }
    }

    /// The last seq acknowledged as delivered by `device` in `chat` (zero: none).
    pub async fn device_cursor(
        &self,
        chat: ChatId,
        user: UserId,
        device: DeviceId,
    ) -> Result<ChatSeq, ReadError> {
        let key = state::device_cursor_key(chat, user, device);
        match self.get_raw(self.partition(chat.0), &key).await? {
            Some(b) => Ok(state::decode_u64("device cursor", &b).map(ChatSeq)?),
            None => Ok(ChatSeq::ZERO),
        }
    }

    /// The seqs of `chat` in `from..=to` that `user` deleted for itself (`HideMessages`).
    pub async fn hidden(
        &self,
        chat: ChatId,
        user: UserId,
        from: ChatSeq,
        to: ChatSeq,
    ) -> Result<std::collections::BTreeSet<u64>, ReadError> {
        if from > to {
            return Ok(Default::default());
        }
        let p = self.partition(chat.0);
        let start = state::hidden_key(chat, user, from);
        let end = state::hidden_key(chat, user, ChatSeq(to.0.saturating_add(1)));
        let span =
            usize::try_from(to.0 - from.0 + 1).map_or(MAX_HIDDEN_READ, |n| n.min(MAX_HIDDEN_READ));
        let entries = self
            .replicas
            .scan_state(p, &start, &end, span, self.floor(p))
            .await?;
        Ok(entries
            .iter()
            .filter_map(|(k, _)| state::u64_at(k, 17))
            .collect())
    }
}

/// Which end of a range of seqs a history page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    Oldest,
    Newest,
}

impl StateReader {
    /// Up to `limit` messages of `chat` with `after < seq < before` (`None`: no upper bound),
    /// oldest first, and the chat's last seq; `None` if the chat does not exist (as the replica
    /// read knows it). `end` says which end of the range the page is taken from: the oldest
    /// (paging forward) or the newest (paging back; seqs are dense, so the newest `limit`
    /// below `before` are the ones from `before - limit`).
    pub async fn history(
        &self,
        chat: ChatId,
        after: ChatSeq,
        before: Option<ChatSeq>,
        limit: u32,
        end: PageEnd,
    ) -> Result<Option<pb::HistoryReply>, ReadError> {
        let Some(record) = self.chat(chat).await? else {
            return Ok(None);
        };
        let p = self.partition(chat.0);
        let lowest = after.0.saturating_add(1);
        let newest_first = end == PageEnd::Newest;
        let mut highest = before.map_or(u64::MAX, |b| b.0);
        let from = if newest_first {
            // Counted down from the last seq when the bound lies above it.
            highest = highest.min(record.last_seq.saturating_add(1));
            highest.saturating_sub(u64::from(limit)).max(lowest)
        } else {
            lowest
        };
        if from >= highest {
            return Ok(Some(pb::HistoryReply {
                messages: Vec::new(),
                last_seq: record.last_seq,
            }));
        }
        let from = state::index_key(chat, ChatSeq(from));
        let to = state::index_key(chat, ChatSeq(highest));
        let index = self
            .replicas
            .scan_state(p, &from, &to, limit as usize, self.floor(p))
            .await?;
        let mut offsets = index
            .iter()
            .map(|(_, offset)| state::decode_offset(offset).map(LogOffset))
            .collect::<Result<Vec<_>, _>>()?;
        // A page cut short by its size keeps the end it is taken from.
        if newest_first {
            offsets.reverse();
        }
        let context = || format!("history of chat {chat}");
        let mut messages = Vec::new();
        let mut page_bytes = 0;
        // A few events per read: a page stops at MAX_HISTORY_PAGE_BYTES, so most of a page of
        // big messages is never fetched.
        'page: for chunk in offsets.chunks(HISTORY_CHUNK) {
            let events = self.replicas.events_at(p, chunk, self.floor(p)).await?;
            let mut events = events.into_iter();
            for &offset in chunk {
                let Some(event) = events.next().filter(|e| e.offset == offset.0) else {
                    return Err(StoreError::decode(
                        context(),
                        format!("index points at missing offset {offset}"),
                    )
                    .into());
                };
                let message = ChatEventAt::message(&event)
                    .map_err(|e| StoreError::decode(context(), e))?
                    .ok_or_else(|| {
                        StoreError::decode(context(), format!("offset {offset} is not a message"))
                    })?;
                page_bytes += message.encoded_len();
                if page_bytes > MAX_HISTORY_PAGE_BYTES && !messages.is_empty() {
                    break 'page;
                }
                messages.push(message);
            }
        }
        if newest_first {
            messages.reverse();
        }
        Ok(Some(pb::HistoryReply {
            messages,
            last_seq: record.last_seq,
        }))
    }
}
