//! The `chats` projection (id 1): per chat a summary and every member's watermarks. Inboxes
//! (with the user's chat list from the user's partition) and ticks are read from it.
//!
//! | key | value |
//! |---|---|
//! | `c ‖ chat` | [`ChatSummary`]: kind, name, last seq, last activity, last sender |
//! | `w ‖ chat` | [`Marks`]: per member the seq they joined after and their delivered/read marks |
//!
//! Inboxes are fan-out-on-read: a message rewrites one small summary, not a row per member;
//! the unread count is computed when asked (last seq − the user's read mark, never counting what
//! came before the user joined; a sender's own messages count as read by them). Ticks: for member X, "delivered" is the lowest delivered mark
//! among the *other* members (every one of them has X's messages up to it), "read" likewise.

use std::collections::BTreeMap;

use chat_log::StoreError;
use chat_model::ids::{ChatId, ChatSeq, UserId};
use chat_model::state::{decode, encode};
use chat_model::ChatEventAt;
use chat_proto::chat_v1::chat_event;
use chat_proto::log::LogEvent;

use crate::runner::{Change, Projection};
use crate::store::{LiveView, ProjectionId, Txn};

pub const CHATS_PROJECTION_ID: ProjectionId = ProjectionId(1);
pub const CHATS_PROJECTION: &str = "chats";

// Stored as protobuf (prost derives the messages from the tags): fields can be added, tags
// never renumbered.

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChatSummary {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint64, tag = "3")]
    pub last_seq: u64,
    /// Server time of the last message (or of the creation).
    #[prost(uint64, tag = "4")]
    pub last_activity_ms: u64,
    #[prost(uint64, tag = "5")]
    pub last_sender: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Mark {
    #[prost(uint64, tag = "1")]
    pub joined_after: u64,
    #[prost(uint64, tag = "2")]
    pub delivered: u64,
    #[prost(uint64, tag = "3")]
    pub read: u64,
}

/// Every member's marks, by user id.
pub type Marks = BTreeMap<u64, Mark>;

/// [`Marks`] as stored (a BTreeMap, so every replica writes the same bytes).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredMarks {
    #[prost(btree_map = "uint64, message", tag = "1")]
    marks: Marks,
}

fn decode_marks(bytes: Option<Vec<u8>>) -> Result<Marks, StoreError> {
    Ok(match bytes {
        Some(b) => decode::<StoredMarks>("chat marks", &b)?.marks,
        None => Marks::new(),
    })
}

/// A member's ticks: what every other member has delivered / read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    pub delivered: ChatSeq,
    pub read: ChatSeq,
}

fn summary_key(chat: u64) -> Vec<u8> {
    [&[b'c'][..], &chat.to_be_bytes()].concat()
}

fn marks_key(chat: u64) -> Vec<u8> {
    [&[b'w'][..], &chat.to_be_bytes()].concat()
}

/// Each member's ticks, from the marks (O(members): the two lowest marks of each kind).
pub fn ticks(marks: &Marks) -> BTreeMap<u64, Ticks> {
    fn two_lowest(values: impl Iterator<Item = (u64, u64)>) -> [(u64, u64); 2] {
        let mut low = [(u64::MAX, 0), (u64::MAX, 0)]; // (value, user)
        for (user, v) in values {
            if v < low[0].0 {
                low[1] = low[0];
                low[0] = (v, user);
            } else if v < low[1].0 {
                low[1] = (v, user);
            }
        }
        low
    }
    let d = two_lowest(marks.iter().map(|(&u, m)| (u, m.delivered)));
    let r = two_lowest(marks.iter().map(|(&u, m)| (u, m.read)));
    let others = |low: &[(u64, u64); 2], user: u64| {
        let v = if low[0].1 == user { low[1].0 } else { low[0].0 };
        if v == u64::MAX {
            ChatSeq::ZERO // nobody else in the chat
        } else {
            ChatSeq(v)
        }
    };
    marks
        .keys()
        .map(|&u| {
            (
                u,
                Ticks {
                    delivered: others(&d, u),
                    read: others(&r, u),
                },
            )
        })
        .collect()
}

pub struct ChatsProjection;

impl ChatsProjection {
    fn marks(txn: &Txn<'_>, chat: u64) -> Result<Marks, StoreError> {
        decode_marks(txn.get(&marks_key(chat))?)
    }

    /// Store new marks and announce the members whose ticks moved.
    fn set_marks(
        txn: &mut Txn<'_>,
        chat: u64,
        before: &Marks,
        after: &Marks,
        changes: &mut Vec<Change>,
    ) {
        let (old, new) = (ticks(before), ticks(after));
        for (&user, t) in &new {
            if old.get(&user) != Some(t) {
                changes.push(Change::Ticks {
                    chat: ChatId(chat),
                    user: UserId(user),
                    delivered_up_to: t.delivered,
                    read_up_to: t.read,
                });
            }
        }
        let stored = StoredMarks {
            marks: after.clone(),
        };
        txn.put(&marks_key(chat), encode(&stored));
    }
}

impl Projection for ChatsProjection {
    fn id(&self) -> ProjectionId {
        CHATS_PROJECTION_ID
    }

    fn name(&self) -> &'static str {
        CHATS_PROJECTION
    }

    fn apply(
        &self,
        event: &LogEvent,
        txn: &mut Txn<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<(), StoreError> {
        // The log layer already verified the frame; an undecodable payload has nothing to project.
        let Ok(Some(ChatEventAt { kind, .. })) = ChatEventAt::decode(event) else {
            return Ok(());
        };
        match kind {
            chat_event::Kind::ChatCreated(c) => {
                let summary = ChatSummary {
                    kind: c.kind,
                    name: c.name,
                    last_seq: 0,
                    last_activity_ms: event.timestamp_ms,
                    last_sender: 0,
                };
                txn.put(&summary_key(c.chat_id), encode(&summary));
                let marks: Marks = c.members.iter().map(|&u| (u, Mark::default())).collect();
                Self::set_marks(txn, c.chat_id, &Marks::new(), &marks, changes);
            }
            chat_event::Kind::MembersChanged(c) => {
                let before = Self::marks(txn, c.chat_id)?;
                let mut after = before.clone();
                for &u in &c.added {
                    // Nothing before the join is theirs: it counts as delivered and read.
                    let mark = Mark {
                        joined_after: c.last_seq,
                        delivered: c.last_seq,
                        read: c.last_seq,
                    };
                    after.insert(u, mark);
                }
                for &u in &c.removed {
                    after.remove(&u);
                }
                Self::set_marks(txn, c.chat_id, &before, &after, changes);
            }
            chat_event::Kind::Message(m) => {
                let key = summary_key(m.chat_id);
                let mut summary: ChatSummary = match txn.get(&key)? {
                    Some(b) => decode("chat summary", &b)?,
                    None => ChatSummary::default(),
                };
                summary.last_seq = m.seq;
                summary.last_activity_ms = m.server_ts_ms;
                summary.last_sender = m.sender_user;
                txn.put(&key, encode(&summary));
                // A sender has delivered and read their own message.
                let before = Self::marks(txn, m.chat_id)?;
                let mut after = before.clone();
                if let Some(mark) = after.get_mut(&m.sender_user) {
                    mark.delivered = mark.delivered.max(m.seq);
                    mark.read = mark.read.max(m.seq);
                }
                if after != before {
                    Self::set_marks(txn, m.chat_id, &before, &after, changes);
                }
            }
            chat_event::Kind::ReceiptAdvanced(r) => {
                let before = Self::marks(txn, r.chat_id)?;
                let mut after = before.clone();
                if let Some(mark) = after.get_mut(&r.user_id) {
                    mark.delivered = mark.delivered.max(r.delivered_up_to);
                    mark.read = mark.read.max(r.read_up_to);
                }
                if after != before {
                    Self::set_marks(txn, r.chat_id, &before, &after, changes);
                }
            }
            chat_event::Kind::UserRegistered(_)
            | chat_event::Kind::DeviceAdded(_)
            | chat_event::Kind::DeviceRevoked(_)
            | chat_event::Kind::MessagesExpired(_)
            | chat_event::Kind::ChatListChanged(_) => {}
        }
        Ok(())
    }
}

/// One chat of a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub chat: u64,
    pub summary: ChatSummary,
    pub mark: Mark,
    pub unread: u64,
    pub ticks: Ticks,
}

/// `user`'s inbox entry for `chat`, from the partition `view` reads (the chat's).
pub fn inbox_entry(
    view: &LiveView<'_>,
    user: u64,
    chat: u64,
) -> Result<Option<InboxEntry>, StoreError> {
    let summary: ChatSummary = match view.get(&summary_key(chat))? {
        Some(b) => decode("chat summary", &b)?,
        None => return Ok(None),
    };
    let marks = decode_marks(view.get(&marks_key(chat))?)?;
    let Some(mark) = marks.get(&user).copied() else {
        return Ok(None); // not (or no longer) a member
    };
    let seen = mark.read.max(mark.joined_after);
    Ok(Some(InboxEntry {
        chat,
        unread: summary.last_seq.saturating_sub(seen),
        ticks: ticks(&marks).get(&user).copied().unwrap_or_default(),
        summary,
        mark,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_the_lowest_mark_among_the_others() {
        let m = |d, r| Mark {
            joined_after: 0,
            delivered: d,
            read: r,
        };
        let marks: Marks = [(1, m(10, 5)), (2, m(7, 7)), (3, m(9, 2))].into();
        let t = ticks(&marks);
        assert_eq!(
            t[&1],
            Ticks {
                delivered: ChatSeq(7),
                read: ChatSeq(2)
            }
        );
        assert_eq!(
            t[&2],
            Ticks {
                delivered: ChatSeq(9),
                read: ChatSeq(2)
            }
        );
        assert_eq!(
            t[&3],
            Ticks {
                delivered: ChatSeq(7),
                read: ChatSeq(5)
            }
        );
        let alone: Marks = [(1, m(3, 3))].into();
        assert_eq!(ticks(&alone)[&1], Ticks::default());
    }
}
