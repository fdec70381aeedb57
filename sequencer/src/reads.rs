//! Typed reads of the chat state from this node's replica: who a device is, which chats a user
//! is in, who is in a chat, where a device's cursor stands. The gateway serves devices from
//! these; they may lag the leader by what is not yet applied here (see
//! [`crate::Sequencer::read_barrier`] for the cases where that matters).

use std::sync::Arc;

use chat_log::{LogNode, PartitionId, StoreError};

use crate::ids::{partition_of, ChatId, DeviceId, UserId};
use crate::state::{self, ChatRecord, DeviceRecord, MemberRecord, UserRecord};

/// Most members a chat can have is bounded by the apply limits; scans stop well above it.
const SCAN_LIMIT: usize = 1 << 20;

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

    fn get<T: serde::de::DeserializeOwned>(
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

    /// Every handler key of `p` that starts with `prefix`.
    fn scan_prefix(&self, p: PartitionId, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = prefix_end(prefix);
        Ok(self
            .node
            .handler_scan(p, prefix, &end, SCAN_LIMIT)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
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
        let prefix = state::devices_prefix(user);
        let end = prefix_end(&prefix);
        self.node
            .handler_scan(self.partition(user.0), &prefix, &end, SCAN_LIMIT)?
            .into_iter()
            .map(|(k, v)| {
                let device = k
                    .get(9..17)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::decode("device key", "too short"))?;
                Ok((DeviceId(device), state::decode("device", &v)?))
            })
            .collect()
    }

    pub fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.get(chat.0, "chat", &state::chat_key(chat))
    }

    pub fn member(&self, chat: ChatId, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        self.get(chat.0, "member", &state::member_key(chat, user))
    }

    /// Every chat whose home is partition `p`, with its record.
    pub fn chats_in(&self, p: PartitionId) -> Result<Vec<(ChatId, ChatRecord)>, StoreError> {
        let prefix = [b'c'];
        let end = prefix_end(&prefix);
        self.node
            .handler_scan(p, &prefix, &end, SCAN_LIMIT)?
            .into_iter()
            .map(|(k, v)| {
                let chat = k
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::decode("chat key", "too short"))?;
                Ok((ChatId(chat), state::decode("chat", &v)?))
            })
            .collect()
    }

    /// The members of `chat`, in user id order.
    pub fn members(&self, chat: ChatId) -> Result<Vec<UserId>, StoreError> {
        let keys = self.scan_prefix(self.partition(chat.0), &state::members_prefix(chat))?;
        Ok(keys
            .iter()
            .filter_map(|k| Some(UserId(u64::from_be_bytes(k.get(9..17)?.try_into().ok()?))))
            .collect())
    }

    /// Every chat `user` is a member of: the `j` index of each partition (a chat's members are
    /// recorded in the chat's partition, so this visits all of them).
    pub fn user_chats(&self, user: UserId) -> Result<Vec<ChatId>, StoreError> {
        let prefix = state::user_chats_prefix(user);
        let mut chats = Vec::new();
        for p in 0..self.node.partition_count() {
            for key in self.scan_prefix(PartitionId(p), &prefix)? {
                chats.extend(state::parse_user_chat_key(&key));
            }
        }
        chats.sort_unstable();
        Ok(chats)
    }

    /// The user's chat list as kept in the user's own partition by follow-ups (it trails the
    /// chats' partitions by the follow-up delay).
    pub fn chat_list(&self, user: UserId) -> Result<Vec<ChatId>, StoreError> {
        let prefix = state::chat_list_prefix(user);
        let end = prefix_end(&prefix);
        Ok(self
            .node
            .handler_scan(self.partition(user.0), &prefix, &end, SCAN_LIMIT)?
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

    /// The last seq acknowledged as delivered by `device` in `chat` (0: none).
    pub fn device_cursor(
        &self,
        chat: ChatId,
        user: UserId,
        device: DeviceId,
    ) -> Result<u64, StoreError> {
        match self.node.handler_get(
            self.partition(chat.0),
            &state::device_cursor_key(chat, user, device),
        )? {
            Some(b) => state::decode_u64("device cursor", &b),
            None => Ok(0),
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(b"m\x01"), b"m\x02");
        assert_eq!(prefix_end(b"m\x01\xff"), b"m\x02");
    }
}
