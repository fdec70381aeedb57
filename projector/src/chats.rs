//! The `chats` projection (id 2): per chat a summary, and per member their marks, kept in
//! ordered indexes so that a receipt in a group of thousands touches a handful of small keys.
//! Inboxes (with the user's chat list from the user's partition) and ticks are read from it.
//!
//! | key | value |
//! |---|---|
//! | `c ‖ chat` | [`ChatSummary`]: kind, name, last seq, last activity, last sender |
//! | `m ‖ chat ‖ user` | [`Mark`]: the seq they joined after, their delivered/read marks, their last message |
//! | `d ‖ chat ‖ delivered ‖ user` | (empty) members by delivered mark |
//! | `r ‖ chat ‖ read ‖ user` | (empty) members by read mark |
//! | `s ‖ chat ‖ last sent ‖ user` | (empty) members by the seq of their last message |
//! | `l ‖ chat` | the two lowest entries of `d` and of `r` (what every member's ticks are made of) |
//!
//! Inboxes are fan-out-on-read: a message rewrites one small summary, not a row per member;
//! the unread count is computed when asked (last seq − the user's read mark, never counting what
//! came before the user joined; a sender's own messages count as read by them).
//!
//! Ticks: for member X, "delivered" is the lowest delivered mark among the *other* members
//! (every one of them has X's messages up to it), "read" likewise. So only the two lowest marks
//! of each kind matter: they are kept in `l`, and read again from the `d`/`r` index (from where
//! the lowest was, never over the deleted entries below it) only when one of those two members
//! moves — so a receipt of any other member reads and writes a handful of keys. When they move,
//! every member's ticks move, but a tick only tells a member about *their own* messages: the
//! change is announced to the members whose last message lies in the range that became covered
//! (found through the `s` index), not to every member. A member's receipt is O(1) writes and
//! O(senders it covers) announcements.
//!
//! Id 1 held an earlier layout (all of a chat's marks in one record, rewritten by every receipt);
//! its keys are dropped at start (see `runner.rs`) and this projection is rebuilt by replay.

use std::collections::HashSet;

use chat_log::{ReadError, StoreError};
use chat_model::ids::{ChatId, ChatSeq, UserId};
use chat_model::state::{decode, encode};
use chat_model::ChatEventAt;
use chat_proto::chat_v1::chat_event;
use chat_proto::log::LogEvent;

use crate::runner::{Change, Projection};
use crate::store::{ProjectionId, ReplicaView, Txn};

pub const CHATS_PROJECTION_ID: ProjectionId = ProjectionId(2);
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

/// One member's marks in one chat.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Mark {
    #[prost(uint64, tag = "1")]
    pub joined_after: u64,
    #[prost(uint64, tag = "2")]
    pub delivered: u64,
    #[prost(uint64, tag = "3")]
    pub read: u64,
    /// The seq of the member's last message in the chat (0: none).
    #[prost(uint64, tag = "4")]
    pub last_sent: u64,
    /// Server time of the member's join (0: a founding member, or a mark stored before this
    /// field was).
    #[prost(uint64, tag = "5")]
    pub joined_ms: u64,
}

/// A member's ticks: what every other member has delivered / read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    pub delivered: ChatSeq,
    pub read: ChatSeq,
}

const SUMMARY: u8 = b'c';
const MARK: u8 = b'm';
const BY_DELIVERED: u8 = b'd';
const BY_READ: u8 = b'r';
const BY_LAST_SENT: u8 = b's';
const LOWEST: u8 = b'l';

fn chat_prefix(tag: u8, chat: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(tag);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

fn summary_key(chat: u64) -> Vec<u8> {
    chat_prefix(SUMMARY, chat)
}

fn mark_key(chat: u64, user: u64) -> Vec<u8> {
    let mut k = chat_prefix(MARK, chat);
    k.extend_from_slice(&user.to_be_bytes());
    k
}

/// `tag ‖ chat ‖ value ‖ user`: members ordered by one of their marks.
fn index_key(tag: u8, chat: u64, value: u64, user: u64) -> Vec<u8> {
    let mut k = chat_prefix(tag, chat);
    k.extend_from_slice(&value.to_be_bytes());
    k.extend_from_slice(&user.to_be_bytes());
    k
}

/// (value, user) of an index key.
fn index_entry(key: &[u8]) -> Option<(u64, u64)> {
    let value = key.get(9..17)?.try_into().ok()?;
    let user = key.get(17..25)?.try_into().ok()?;
    Some((u64::from_be_bytes(value), u64::from_be_bytes(user)))
}

/// The index entries a mark is listed under.
fn index_keys(chat: u64, user: u64, mark: &Mark) -> [Vec<u8>; 3] {
    [
        index_key(BY_DELIVERED, chat, mark.delivered, user),
        index_key(BY_READ, chat, mark.read, user),
        index_key(BY_LAST_SENT, chat, mark.last_sent, user),
    ]
}

/// The two lowest (value, user) of an index; `None` where the chat has fewer members.
type TwoLowest = [Option<(u64, u64)>; 2];

/// The lowest delivered and read marks of a chat: all that ticks depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lowest {
    delivered: TwoLowest,
    read: TwoLowest,
    /// Members of the chat: with two or fewer, the two lowest are every member and never need
    /// reading from the index (a direct chat, by far the most common, never reads it).
    members: u64,
}

fn two_lowest(keys: Vec<Vec<u8>>) -> TwoLowest {
    let mut low = [None, None];
    for (slot, key) in low.iter_mut().zip(&keys) {
        *slot = index_entry(key);
    }
    low
}

/// [`Lowest`] as stored: each kind's (value, user) pairs, lowest first, flattened.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredLowest {
    #[prost(uint64, repeated, tag = "1")]
    delivered: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    read: Vec<u64>,
    #[prost(uint64, tag = "3")]
    members: u64,
}

fn flatten(low: &TwoLowest) -> Vec<u64> {
    low.iter().flatten().flat_map(|&(v, u)| [v, u]).collect()
}

fn unflatten(values: &[u64]) -> TwoLowest {
    let mut low = [None, None];
    for (slot, pair) in low.iter_mut().zip(values.chunks_exact(2)) {
        *slot = Some((pair[0], pair[1]));
    }
    low
}

impl Lowest {
    fn decode(bytes: &[u8]) -> Result<Lowest, StoreError> {
        let stored: StoredLowest = decode("lowest marks", bytes)?;
        Ok(Lowest {
            delivered: unflatten(&stored.delivered),
            read: unflatten(&stored.read),
            members: stored.members,
        })
    }

    fn encode(&self) -> Vec<u8> {
        encode(&StoredLowest {
            delivered: flatten(&self.delivered),
            read: flatten(&self.read),
            members: self.members,
        })
    }
}

impl Lowest {
    /// The lowest mark among the members other than `user` (0 when there is nobody else).
    fn others(low: &TwoLowest, user: u64) -> u64 {
        match low {
            [Some((_, u)), second] if *u == user => second.map_or(0, |(v, _)| v),
            [Some((v, _)), _] => *v,
            [None, _] => 0,
        }
    }

    fn ticks(&self, user: u64) -> Ticks {
        Ticks {
            delivered: ChatSeq(Self::others(&self.delivered, user)),
            read: ChatSeq(Self::others(&self.read, user)),
        }
    }

    /// The lowest members: their ticks are the second lowest marks, unlike everyone else's.
    fn named(&self) -> impl Iterator<Item = u64> + '_ {
        [self.delivered[0], self.read[0]]
            .into_iter()
            .flatten()
            .map(|(_, u)| u)
    }
}

pub struct ChatsProjection;

impl ChatsProjection {
    fn mark(txn: &Txn<'_>, chat: u64, user: u64) -> Result<Option<Mark>, StoreError> {
        txn.get(&mark_key(chat, user))?
            .map(|b| decode("chat mark", &b))
            .transpose()
    }

    /// The chat's lowest marks as last stored (none before its first member).
    fn lowest(txn: &Txn<'_>, chat: u64) -> Result<Lowest, StoreError> {
        match txn.get(&chat_prefix(LOWEST, chat))? {
            Some(bytes) => Lowest::decode(&bytes),
            None => Ok(Lowest::default()),
        }
    }

    /// The first two entries of index `tag` from `from` on (from its start when `None`).
    fn rescan(
        txn: &Txn<'_>,
        tag: u8,
        chat: u64,
        from: Option<(u64, u64)>,
    ) -> Result<TwoLowest, StoreError> {
        let prefix = chat_prefix(tag, chat);
        let start = from.map_or_else(|| prefix.clone(), |(v, u)| index_key(tag, chat, v, u));
        Ok(two_lowest(txn.keys(&prefix, &start, 2)?))
    }

    /// The lowest marks after `moved` members' marks changed, from `before`: unchanged unless
    /// one of the two lowest moved, an entry was added below the second lowest, or there were
    /// fewer than two — then read again from the index, from the second lowest on. A receipt of
    /// any other member (nearly every receipt in a big group) reads nothing.
    fn next_lowest(
        txn: &Txn<'_>,
        chat: u64,
        before: &Lowest,
        moved: &[(u64, Option<Mark>)],
        members: u64,
    ) -> Result<Lowest, StoreError> {
        // With two members or fewer before and after, the old lowest entries were every member
        // and the moved members' new entries are all that changed: nothing to read.
        let complete = before.members <= 2 && members <= 2;
        let kind =
            |low: &TwoLowest, tag: u8, value: fn(&Mark) -> u64| -> Result<TwoLowest, StoreError> {
                // Where the moved members' entries are now.
                let new_keys = moved
                    .iter()
                    .filter_map(|(user, mark)| mark.map(|m| (value(&m), *user)));
                let was_low = |user: &u64| low.iter().flatten().any(|(_, u)| u == user);
                let touched = low[1].is_none()
                    || moved.iter().any(|(user, _)| was_low(user))
                    || new_keys.clone().any(|key| Some(key) < low[1]);
                if !touched {
                    return Ok(*low);
                }
                // Before the move no live entry lay below the second lowest but the lowest; now
                // the candidates are those two (if they did not move), the moved members' new
                // entries, and the first entries from the second lowest on. Reading only from
                // there never walks the entries deleted below it (in a chat where one member
                // reads nothing, every message of the other would otherwise walk all of its old
                // entries).
                let mut candidates: Vec<(u64, u64)> = low
                    .iter()
                    .flatten()
                    .filter(|(_, u)| !moved.iter().any(|(m, _)| m == u))
                    .copied()
                    .chain(new_keys)
                    .collect();
                if !complete {
                    let from = low[1].or(low[0]);
                    candidates.extend(Self::rescan(txn, tag, chat, from)?.into_iter().flatten());
                }
                candidates.sort_unstable();
                candidates.dedup();
                Ok([candidates.first().copied(), candidates.get(1).copied()])
            };
        Ok(Lowest {
            delivered: kind(&before.delivered, BY_DELIVERED, |m| m.delivered)?,
            read: kind(&before.read, BY_READ, |m| m.read)?,
            members,
        })
    }

    /// Replace `user`'s mark (`None`: no longer a member), keeping the indexes in step.
    fn put_mark(
        txn: &mut Txn<'_>,
        chat: u64,
        user: u64,
        before: Option<&Mark>,
        after: Option<&Mark>,
    ) {
        if before == after {
            return;
        }
        let old = before.map(|m| index_keys(chat, user, m));
        let new = after.map(|m| index_keys(chat, user, m));
        for (i, key) in old.iter().flatten().enumerate() {
            if new.as_ref().is_none_or(|n| n[i] != *key) {
                txn.delete(key);
            }
        }
        for (i, key) in new.iter().flatten().enumerate() {
            if old.as_ref().is_none_or(|o| o[i] != *key) {
                txn.put(key, Vec::new());
            }
        }
        match after {
            Some(m) => txn.put(&mark_key(chat, user), encode(m)),
            None => txn.delete(&mark_key(chat, user)),
        }
    }

    /// Change some members' marks (`None`: removed) and announce the ticks that moved to the
    /// members whose messages they cover, and to `joined` (their first ticks) — looking at the
    /// members changed, the lowest members before and after, and, when the lowest marks moved,
    /// the members whose last message lies past where they were (the `s` index).
    fn change_marks(
        txn: &mut Txn<'_>,
        chat: u64,
        updates: &[(u64, Option<Mark>)],
        joined: &[u64],
        changes: &mut Vec<Change>,
    ) -> Result<(), StoreError> {
        let before = Self::lowest(txn, chat)?;
        let mut members = before.members;
        for (user, after) in updates {
            let was = Self::mark(txn, chat, *user)?;
            Self::put_mark(txn, chat, *user, was.as_ref(), after.as_ref());
            members =
                (members + u64::from(after.is_some())).saturating_sub(u64::from(was.is_some()));
        }
        let after = Self::next_lowest(txn, chat, &before, updates, members)?;
        if after != before {
            txn.put(&chat_prefix(LOWEST, chat), after.encode());
        }
        let joined: HashSet<u64> = joined.iter().copied().collect();
        // A member hears of a tick move only if it covers a message of theirs (their last
        // message lies past the lower end of a range that moved), or when they just joined.
        let announce = |user: u64, last_sent: u64, changes: &mut Vec<Change>| {
            let (was, now) = (before.ticks(user), after.ticks(user));
            let joined = joined.contains(&user);
            let mut from = u64::MAX;
            if was.delivered != now.delivered {
                from = from.min(was.delivered.0.min(now.delivered.0));
            }
            if was.read != now.read {
                from = from.min(was.read.0.min(now.read.0));
            }
            if joined || (from != u64::MAX && last_sent > from) {
                changes.push(Change::Ticks {
                    chat: ChatId(chat),
                    user: UserId(user),
                    delivered_up_to: now.delivered,
                    read_up_to: now.read,
                });
            }
        };
        // The members whose ticks are not simply the lowest marks (the lowest members see the
        // second lowest), the members changed, and those who joined: each looked at in turn.
        let mut told: HashSet<u64> = HashSet::new();
        let named = updates
            .iter()
            .map(|(u, _)| *u)
            .chain(joined.iter().copied())
            .chain(before.named())
            .chain(after.named());
        for user in named {
            if !told.insert(user) {
                continue;
            }
            // Only members still in the chat hear about it.
            if let Some(mark) = Self::mark(txn, chat, user)? {
                announce(user, mark.last_sent, changes);
            }
        }
        // Everyone else's ticks are the lowest marks' values: if those moved, the members to tell
        // are those with a message past the lower of the old and new value, in the `s` index.
        let moved_from = |low_before: &TwoLowest, low_after: &TwoLowest| {
            let (b, a) = (low_before[0].map(|(v, _)| v), low_after[0].map(|(v, _)| v));
            (b != a).then(|| b.unwrap_or(0).min(a.unwrap_or(0)))
        };
        let from = [
            moved_from(&before.delivered, &after.delivered),
            moved_from(&before.read, &after.read),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(from) = from {
            let start = index_key(BY_LAST_SENT, chat, from.saturating_add(1), 0);
            let prefix = chat_prefix(BY_LAST_SENT, chat);
            for key in txn.keys(&prefix, &start, usize::MAX)? {
                let Some((last_sent, user)) = index_entry(&key) else {
                    continue;
                };
                if told.insert(user) {
                    announce(user, last_sent, changes);
                }
            }
        }
        Ok(())
    }

    /// Move `user`'s marks with `update`; announce what moved.
    fn update_mark(
        txn: &mut Txn<'_>,
        chat: u64,
        user: u64,
        changes: &mut Vec<Change>,
        update: impl FnOnce(&mut Mark),
    ) -> Result<(), StoreError> {
        let Some(before) = Self::mark(txn, chat, user)? else {
            return Ok(()); // not (or no longer) a member
        };
        let mut after = before;
        update(&mut after);
        if after != before {
            Self::change_marks(txn, chat, &[(user, Some(after))], &[], changes)?;
        }
        Ok(())
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
                let updates: Vec<(u64, Option<Mark>)> = c
                    .members
                    .iter()
                    .map(|&u| (u, Some(Mark::default())))
                    .collect();
                Self::change_marks(txn, c.chat_id, &updates, &c.members, changes)?;
            }
            chat_event::Kind::MembersChanged(c) => {
                // Nothing before the join is theirs: it counts as delivered and read.
                let joined = Mark {
                    joined_after: c.last_seq,
                    delivered: c.last_seq,
                    read: c.last_seq,
                    last_sent: 0,
                    joined_ms: event.timestamp_ms,
                };
                let updates: Vec<(u64, Option<Mark>)> = c
                    .added
                    .iter()
                    .map(|&u| (u, Some(joined)))
                    .chain(c.removed.iter().map(|&u| (u, None)))
                    .collect();
                Self::change_marks(txn, c.chat_id, &updates, &c.added, changes)?;
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
                Self::update_mark(txn, m.chat_id, m.sender_user, changes, |mark| {
                    mark.delivered = mark.delivered.max(m.seq);
                    mark.read = mark.read.max(m.seq);
                    mark.last_sent = mark.last_sent.max(m.seq);
                })?;
            }
            chat_event::Kind::ReceiptAdvanced(r) => {
                Self::update_mark(txn, r.chat_id, r.user_id, changes, |mark| {
                    mark.delivered = mark.delivered.max(r.delivered_up_to);
                    mark.read = mark.read.max(r.read_up_to);
                })?;
            }
            chat_event::Kind::UserRegistered(_)
            | chat_event::Kind::DeviceAdded(_)
            | chat_event::Kind::DeviceRevoked(_)
            | chat_event::Kind::MessagesExpired(_)
            | chat_event::Kind::ChatListChanged(_)
            | chat_event::Kind::ChatUpdated(_)
            | chat_event::Kind::PresenceUpdated(_)
            | chat_event::Kind::MediaReleased(_)
            | chat_event::Kind::UserDeleted(_)
            | chat_event::Kind::MessagesHidden(_) => {}
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

/// The summary as a member who joined after the chat's last message may see it: who sent that
/// message and when are not theirs, so the chat shows no sender and the time of the join (0 for
/// a mark stored before joins had a time).
fn from_the_join(mut summary: ChatSummary, mark: &Mark) -> ChatSummary {
    let added_later = mark.joined_after > 0 || mark.joined_ms > 0;
    if added_later && summary.last_seq <= mark.joined_after {
        summary.last_sender = 0;
        summary.last_activity_ms = mark.joined_ms;
    }
    summary
}

/// `user`'s inbox entry for `chat`, from the partition `view` reads (the chat's). Its three
/// keys are read at once.
pub async fn inbox_entry(
    view: &ReplicaView,
    user: u64,
    chat: u64,
) -> Result<Option<InboxEntry>, ReadError> {
    let keys = [
        summary_key(chat),
        mark_key(chat, user),
        chat_prefix(LOWEST, chat),
    ];
    let (summary, mark, lowest) =
        futures::try_join!(view.get(&keys[0]), view.get(&keys[1]), view.get(&keys[2]))?;
    let summary: ChatSummary = match summary {
        Some(b) => decode("chat summary", &b)?,
        None => return Ok(None),
    };
    let Some(mark) = mark else {
        return Ok(None); // not (or no longer) a member
    };
    let mark: Mark = decode("chat mark", &mark)?;
    let lowest = match lowest {
        Some(bytes) => Lowest::decode(&bytes)?,
        None => Lowest::default(),
    };
    let seen = mark.read.max(mark.joined_after);
    let summary = from_the_join(summary, &mark);
    Ok(Some(InboxEntry {
        chat,
        unread: summary.last_seq.saturating_sub(seen),
        ticks: lowest.ticks(user),
        summary,
        mark,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low(entries: &[(u64, u64)]) -> TwoLowest {
        two_lowest(
            entries
                .iter()
                .map(|&(v, u)| index_key(BY_DELIVERED, 9, v, u))
                .collect(),
        )
    }

    #[test]
    fn ticks_are_the_lowest_mark_among_the_others() {
        // Members 1, 2, 3 with delivered 10, 7, 9 and read 5, 7, 2: the indexes list them in
        // mark order, and only the first two entries are read.
        let lowest = Lowest {
            delivered: low(&[(7, 2), (9, 3)]),
            read: low(&[(2, 3), (5, 1)]),
            members: 3,
        };
        let t = |d, r| Ticks {
            delivered: ChatSeq(d),
            read: ChatSeq(r),
        };
        assert_eq!(lowest.ticks(1), t(7, 2));
        assert_eq!(lowest.ticks(2), t(9, 2));
        assert_eq!(lowest.ticks(3), t(7, 5));
        let alone = Lowest {
            delivered: low(&[(3, 1)]),
            read: low(&[(3, 1)]),
            members: 1,
        };
        assert_eq!(alone.ticks(1), Ticks::default());
    }

    #[test]
    fn index_keys_order_by_mark_then_user_and_decode_back() {
        let a = index_key(BY_READ, 5, 255, 2);
        let b = index_key(BY_READ, 5, 256, 1);
        let c = index_key(BY_READ, 5, 256, 3);
        assert!(a < b && b < c, "mark first (big-endian), then user");
        assert_eq!(index_entry(&b), Some((256, 1)));
        assert!(index_key(BY_READ, 5, u64::MAX, u64::MAX) < chat_prefix(BY_READ, 6));
    }
}
