//! Identifiers of the chat layer and how they are derived and routed.
//!
//! Ids are derived, not allocated, so every node (and every retry) computes the same id for the
//! same request without coordination:
//! - a user id is derived from the handle (phone number or name) it registers;
//! - a direct (1:1) chat's id from its two user ids, in either order;
//! - a group's id from its creator and the client's request id.
//!
//! Routing (`partition_of`) maps an id to a partition with a fixed mixing function. It must never
//! change once data exists: the test vectors below pin it.

use chat_log::PartitionId;
use sha2::{Digest, Sha256};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A user (an account), derived from its handle.
    UserId
);
id_type!(
    /// One device of a user (chosen by the registering client, unique per user).
    DeviceId
);
id_type!(
    /// A chat: direct or group.
    ChatId
);
id_type!(
    /// A message's position in its chat: 1, 2, 3, … with no gap. `ChatSeq(0)` is "before the
    /// first message" (a cursor or mark that has seen nothing).
    ChatSeq
);

impl ChatSeq {
    pub const ZERO: ChatSeq = ChatSeq(0);

    pub fn next(self) -> ChatSeq {
        ChatSeq(self.0 + 1)
    }

    /// A bound as the wire carries it, where 0 means "none".
    pub fn bound(wire: u64) -> Option<ChatSeq> {
        (wire != 0).then_some(ChatSeq(wire))
    }
}

/// The first 8 bytes of sha256(domain ‖ 0x00 ‖ parts…) as a big-endian u64, never 0.
fn derive(domain: &str, parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0u8]);
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

/// The user id of a handle. Handles are compared as given (trimmed); normalising phone numbers is
/// the client's job.
pub fn user_id_for_handle(handle: &str) -> UserId {
    UserId(derive("chat/user", &[handle.trim().as_bytes()]))
}

/// The id of the direct chat between `a` and `b` (the same for both orders).
pub fn direct_chat_id(a: UserId, b: UserId) -> ChatId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    ChatId(derive(
        "chat/direct",
        &[&lo.0.to_be_bytes(), &hi.0.to_be_bytes()],
    ))
}

/// The id of the group `creator` creates with `request_id` (a retry names the same group).
pub fn group_chat_id(creator: UserId, request_id: &str) -> ChatId {
    ChatId(derive(
        "chat/group",
        &[&creator.0.to_be_bytes(), request_id.as_bytes()],
    ))
}

/// The partition that owns `id`: splitmix64's finaliser (a fixed bijective mix) modulo P.
pub fn partition_of(id: u64, partitions: u32) -> PartitionId {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    PartitionId((z % u64::from(partitions)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if any of these change, data written by an older build is routed to the
    /// wrong partition. Never update them; add a new scheme instead.
    #[test]
    fn routing_test_vectors() {
        assert_eq!(partition_of(0, 8), PartitionId(7));
        assert_eq!(partition_of(1, 8), PartitionId(1));
        assert_eq!(partition_of(42, 8), PartitionId(5));
        assert_eq!(partition_of(u64::MAX, 8), PartitionId(0));
        assert_eq!(partition_of(42, 3), PartitionId(1));
        assert_eq!(
            user_id_for_handle("+15551234567"),
            UserId(0x4d38_0259_8e69_cdfe)
        );
        assert_eq!(
            user_id_for_handle("  +15551234567 "),
            user_id_for_handle("+15551234567")
        );
        assert_eq!(
            direct_chat_id(UserId(1), UserId(2)),
            ChatId(0xf18f_654e_f488_ef3d)
        );
        assert_eq!(
            group_chat_id(UserId(1), "r1"),
            ChatId(0x72e6_fb57_2ed8_83c4)
        );
    }

    #[test]
    fn direct_chat_ids_are_symmetric_and_distinct_from_groups() {
        let (a, b) = (user_id_for_handle("alice"), user_id_for_handle("bob"));
        assert_eq!(direct_chat_id(a, b), direct_chat_id(b, a));
        assert_ne!(
            direct_chat_id(a, b),
            direct_chat_id(a, user_id_for_handle("carol"))
        );
        assert_ne!(group_chat_id(a, "x"), group_chat_id(b, "x"));
    }

    #[test]
    fn routing_spreads_ids() {
        let mut counts = [0u32; 8];
        for i in 0..8000u64 {
            counts[partition_of(user_id_for_handle(&format!("user{i}")).0, 8).0 as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
