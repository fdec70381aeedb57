//! How records are laid out in RocksDB: the crc32 frame around every stored value, and the key
//! encodings of each column family.
//!
//! A frame is `[version: u8][crc32(payload): u32 LE][payload]`. A value whose checksum does not
//! match is reported as a [`CorruptRecord`] naming the column family and the decoded key; it is
//! never handed to a caller as data.
//!
//! Keys start with the partition id as a big-endian u32 so that one partition's records of a
//! column family are contiguous and sort by their big-endian index/offset.

use crate::types::{LogOffset, PartitionId};

/// Version byte of the frame layout.
const FRAME_VERSION: u8 = 1;
const FRAME_HEADER: usize = 5;

/// Wrap a payload in a crc32 frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A stored value that failed its integrity check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record in column family '{cf}' at key {key}: {detail}")]
pub struct CorruptRecord {
    pub cf: String,
    pub key: String,
    pub detail: String,
}

/// Check a frame and return its payload.
pub fn unframe<'a>(cf: &str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], CorruptRecord> {
    let corrupt = |detail: String| CorruptRecord {
        cf: cf.to_string(),
        key: describe_key(cf, key),
        detail,
    };
    if value.len() < FRAME_HEADER {
        return Err(corrupt(format!(
            "value of {} bytes is shorter than a frame header",
            value.len()
        )));
    }
    if value[0] != FRAME_VERSION {
        return Err(corrupt(format!("unknown frame version {}", value[0])));
    }
    let stored = u32::from_le_bytes(value[1..FRAME_HEADER].try_into().expect("4 bytes"));
    let payload = &value[FRAME_HEADER..];
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored crc32 {stored:08x}, computed {actual:08x}"
        )));
    }
    Ok(payload)
}

/// Column family names.
pub mod cf {
    /// Raft log entries: `[partition][index u64]`.
    pub const RAFT_LOG: &str = "raft_log";
    /// Raft metadata: `[partition][tag u8]` for vote, committed and last purged log id.
    pub const RAFT_META: &str = "raft_meta";
    /// Partition event logs: `[partition][offset u64]` → `LogEvent`.
    pub const EVENTS: &str = "events";
    /// Partition state: `[partition][namespace u8][key]`: system keys (applied log id,
    /// membership, last offset) and the command handler's own keys.
    pub const STATE: &str = "state";
    /// No longer written: releases before 0.2.1 kept a copy of the handler state per snapshot
    /// here (`[partition]`), which is deleted at open. Kept so those data dirs open.
    pub const SNAPSHOTS: &str = "snapshots";
    /// Node-level records (which node and how many partitions this data dir was made for).
    pub const NODE: &str = "node";
    /// Data derived from the event log, local to each node (`derived.rs`; the name is from
    /// when only projections lived here): `[partition][namespace u8][key]`. Never part of Raft
    /// snapshots: rebuilt by replay.
    pub const PROJECTIONS: &str = "projections";

    pub const ALL: [&str; 7] = [
        RAFT_LOG,
        RAFT_META,
        EVENTS,
        STATE,
        SNAPSHOTS,
        NODE,
        PROJECTIONS,
    ];
}

/// Tags of the per-partition keys in [`cf::RAFT_META`].
#[derive(Copy, Clone, Debug)]
#[repr(u8)]
pub enum MetaTag {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
}

/// Namespaces inside [`cf::STATE`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StateNs {
    /// Keys the log itself keeps (applied log id, membership, last offset).
    System = 0,
    /// Keys owned by the command handler.
    Handler = 1,
}

impl StateNs {
    /// The namespace after this one: the exclusive upper bound of this namespace's keys.
    pub fn next(self) -> u8 {
        self as u8 + 1
    }
}

impl From<StateNs> for u8 {
    fn from(ns: StateNs) -> u8 {
        ns as u8
    }
}

/// The smallest key greater than every key starting with `prefix` (None: there is none, the
/// prefix is empty or all 0xff).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// [`prefix_successor`] as an exclusive scan bound; for a prefix with no successor, a key
/// above every key of the prefix's length.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    prefix_successor(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1])
}

/// The first key of a partition in any column family; the partition's keys are in
/// `partition_start(p)..partition_start(p + 1)`.
pub fn partition_start(p: PartitionId) -> Vec<u8> {
    p.0.to_be_bytes().to_vec()
}

/// The exclusive upper bound of a partition's keys.
///
/// The metadata group's id is `u32::MAX`, which has no successor: its bound is five 0xff bytes,
/// above every key it has (the byte after its id is a namespace, or the top byte of an index or
/// offset, never 0xff).
pub fn partition_end(p: PartitionId) -> Vec<u8> {
    prefix_end(&partition_start(p))
}

fn partition_u64_key(p: PartitionId, n: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&p.0.to_be_bytes());
    k[4..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn log_key(p: PartitionId, index: u64) -> [u8; 12] {
    partition_u64_key(p, index)
}

pub fn event_key(p: PartitionId, offset: LogOffset) -> [u8; 12] {
    partition_u64_key(p, offset.0)
}

pub fn meta_key(p: PartitionId, tag: MetaTag) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&p.0.to_be_bytes());
    k[4] = tag as u8;
    k
}

pub fn state_key(p: PartitionId, ns: impl Into<u8>, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.extend_from_slice(&p.0.to_be_bytes());
    k.push(ns.into());
    k.extend_from_slice(key);
    k
}

/// The u64 (index or offset) at the end of a `[partition][u64]` key.
pub fn key_u64(key: &[u8]) -> Option<u64> {
    (key.len() == 12).then(|| u64::from_be_bytes(key[4..12].try_into().expect("8 bytes")))
}

/// A human-readable rendering of a key, for error messages and `chatctl verify`.
pub fn describe_key(cf: &str, key: &[u8]) -> String {
    let partition =
        (key.len() >= 4).then(|| u32::from_be_bytes(key[..4].try_into().expect("4 bytes")));
    match (cf, partition, key_u64(key)) {
        (cf::RAFT_LOG, Some(p), Some(i)) => format!("partition {p} raft index {i}"),
        (cf::EVENTS, Some(p), Some(o)) => format!("partition {p} offset {o}"),
        (cf::RAFT_META, Some(p), _) if key.len() == 5 => {
            format!("partition {p} meta tag {}", key[4])
        }
        (cf::STATE, Some(p), _) if key.len() >= 5 => {
            format!("partition {p} state ns {} key {}", key[4], hex(&key[5..]))
        }
        (cf::SNAPSHOTS, Some(p), _) if key.len() == 4 => format!("partition {p} snapshot"),
        (cf::PROJECTIONS, Some(p), _) if key.len() >= 5 => {
            format!("partition {p} derived ns {} key {}", key[4], hex(&key[5..]))
        }
        _ => format!("0x{}", hex(key)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(b"x/"), Some(b"x0".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_end(b"m\x01\xff"), b"m\x02");
        assert_eq!(prefix_end(&[0xff]), vec![0xff, 0xff]);
    }

    #[test]
    fn frame_round_trips() {
        let f = frame(b"hello");
        assert_eq!(
            unframe(cf::EVENTS, &event_key(PartitionId(1), LogOffset(2)), &f).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn flipped_byte_names_the_key() {
        let mut f = frame(b"hello world");
        let last = f.len() - 1;
        f[last] ^= 0x01;
        let err = unframe(cf::EVENTS, &event_key(PartitionId(3), LogOffset(42)), &f).unwrap_err();
        assert_eq!(err.key, "partition 3 offset 42");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn truncated_and_unknown_versions_are_errors() {
        assert!(unframe(cf::RAFT_LOG, b"k", &[1, 2]).is_err());
        let mut f = frame(b"x");
        f[0] = 9;
        assert!(unframe(cf::RAFT_LOG, b"k", &f)
            .unwrap_err()
            .detail
            .contains("version"));
    }

    #[test]
    fn partition_keys_sort_by_partition_then_index() {
        assert!(log_key(PartitionId(0), u64::MAX) < log_key(PartitionId(1), 0));
        assert!(log_key(PartitionId(1), 255) < log_key(PartitionId(1), 256));
        assert!(
            partition_end(PartitionId(1)).as_slice() > log_key(PartitionId(1), u64::MAX).as_slice()
        );
        assert_eq!(
            partition_end(PartitionId(1)),
            partition_start(PartitionId(2))
        );
    }
}
