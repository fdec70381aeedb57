//! The bytes of the log's own records, on disk and between nodes: protobuf messages of
//! `chat.log.v1` / `chat.raft.v1` (proto/proto/log.proto, raft.proto), converted from and to the
//! openraft types the log works with in memory.
//!
//! openraft's types stay what the code uses; only their encoding is ours, so an openraft upgrade
//! cannot silently change the data format, and a field can be added without breaking what an
//! older release wrote. Every conversion goes through [`Wire`]; decoding refuses a message whose
//! required fields are missing (protobuf would otherwise read them as zero), so garbage or an
//! empty payload is an error, never a default vote or log id.
//!
//! - this module: the trait, [`encode`]/[`decode`], and the stored Raft records (log ids, votes,
//!   memberships, entries, snapshot meta).
//! - [`raft`]: the Raft RPC requests and replies, errors included.

pub(crate) mod raft;

use std::collections::BTreeMap;

use chat_proto::log as pb;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, RaftTypeConfig,
    StoredMembership, Vote,
};
use prost::Message;

use crate::engine::StoreError;
use crate::types::{Node, NodeId, Proposal};

/// An openraft configuration whose entries carry the log's [`Proposal`]s: the store's
/// `TypeConfig`, named by what it carries so the data format does not depend on the storage.
pub(crate) trait LogConfig:
    RaftTypeConfig<D = Proposal, NodeId = NodeId, Node = Node, Entry = Entry<Self>>
{
}

impl<C> LogConfig for C where
    C: RaftTypeConfig<D = Proposal, NodeId = NodeId, Node = Node, Entry = Entry<C>>
{
}

/// The data format this release writes (and the only one it reads): the format of the node
/// record, the Raft log and meta, the state machine's own records and snapshots. Format 0 was the
/// bincode encoding of releases before 0.2.
pub const DATA_FORMAT: u32 = 1;

/// A message that decoded as protobuf but is not a valid record.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// A value with a protobuf form.
pub(crate) trait Wire: Sized {
    type Pb: Message + Default;
    fn to_pb(&self) -> Self::Pb;
    fn from_pb(pb: Self::Pb) -> Result<Self, Malformed>;

    /// The protobuf form, moving what it can: values that carry payloads (entries, append
    /// requests) override it so the hot paths do not copy every command once more.
    fn into_pb(self) -> Self::Pb {
        self.to_pb()
    }
}

pub(crate) fn encode<T: Wire>(value: &T) -> Vec<u8> {
    value.to_pb().encode_to_vec()
}

/// [`encode`] of a value no longer needed.
pub(crate) fn encode_owned<T: Wire>(value: T) -> Vec<u8> {
    value.into_pb().encode_to_vec()
}

/// Decode a stored `what` (named in the error).
pub(crate) fn decode<T: Wire>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let pb = T::Pb::decode(bytes).map_err(|e| StoreError::decode(what, e))?;
    T::from_pb(pb).map_err(|e| StoreError::decode(what, e))
}

/// A required message field.
pub(crate) fn required<T>(field: Option<T>, name: &str) -> Result<T, Malformed> {
    field.ok_or_else(|| Malformed(format!("missing {name}")))
}

/// An optional log id field.
pub(crate) fn opt_log_id(field: Option<pb::LogId>) -> Option<LogId<NodeId>> {
    field.map(log_id_from)
}

pub(crate) fn opt_log_id_pb(id: &Option<LogId<NodeId>>) -> Option<pb::LogId> {
    id.as_ref().map(Wire::to_pb)
}

fn log_id_from(pb: pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(pb.term, pb.leader_node), pb.index)
}

impl Wire for LogId<NodeId> {
    type Pb = pb::LogId;
    fn to_pb(&self) -> pb::LogId {
        pb::LogId {
            term: self.leader_id.term,
            index: self.index,
            leader_node: self.leader_id.node_id,
        }
    }
    fn from_pb(pb: pb::LogId) -> Result<Self, Malformed> {
        Ok(log_id_from(pb))
    }
}

/// The committed log id in raft_meta, which may be absent.
impl Wire for Option<LogId<NodeId>> {
    type Pb = pb::MaybeLogId;
    fn to_pb(&self) -> pb::MaybeLogId {
        pb::MaybeLogId {
            log_id: opt_log_id_pb(self),
        }
    }
    fn from_pb(pb: pb::MaybeLogId) -> Result<Self, Malformed> {
        Ok(opt_log_id(pb.log_id))
    }
}

impl Wire for Vote<NodeId> {
    type Pb = pb::Vote;
    fn to_pb(&self) -> pb::Vote {
        pb::Vote {
            term: self.leader_id.term,
            node_id: self.leader_id.node_id,
            committed: self.committed,
        }
    }
    fn from_pb(pb: pb::Vote) -> Result<Self, Malformed> {
        Ok(Vote {
            leader_id: LeaderId::new(pb.term, pb.node_id),
            committed: pb.committed,
        })
    }
}

impl Wire for Membership<NodeId, Node> {
    type Pb = pb::Membership;
    fn to_pb(&self) -> pb::Membership {
        pb::Membership {
            configs: self
                .get_joint_config()
                .iter()
                .map(|ids| pb::NodeIds {
                    ids: ids.iter().copied().collect(),
                })
                .collect(),
            nodes: self
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }
    fn from_pb(pb: pb::Membership) -> Result<Self, Malformed> {
        if pb.configs.is_empty() {
            return Err(Malformed("membership without a config".into()));
        }
        let configs = pb
            .configs
            .into_iter()
            .map(|c| c.ids.into_iter().collect())
            .collect();
        let nodes: BTreeMap<NodeId, Node> = pb
            .nodes
            .into_iter()
            .map(|(id, addr)| (id, Node { addr }))
            .collect();
        Ok(Membership::new(configs, nodes))
    }
}

impl Wire for StoredMembership<NodeId, Node> {
    type Pb = pb::StoredMembership;
    fn to_pb(&self) -> pb::StoredMembership {
        pb::StoredMembership {
            log_id: opt_log_id_pb(self.log_id()),
            membership: Some(self.membership().to_pb()),
        }
    }
    fn from_pb(pb: pb::StoredMembership) -> Result<Self, Malformed> {
        // The initial (empty) membership has no configs at all; only a stored one must be valid.
        let membership = match pb.membership {
            Some(m) if m.configs.is_empty() && m.nodes.is_empty() => Membership::default(),
            Some(m) => Membership::from_pb(m)?,
            None => return Err(Malformed("missing membership".into())),
        };
        Ok(StoredMembership::new(opt_log_id(pb.log_id), membership))
    }
}

impl<C: LogConfig> Wire for Entry<C> {
    type Pb = pb::Entry;
    fn to_pb(&self) -> pb::Entry {
        self.clone().into_pb()
    }
    fn into_pb(self) -> pb::Entry {
        use pb::entry::Payload;
        let payload = match self.payload {
            EntryPayload::Blank => Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(p) => Payload::Normal(pb::Proposal {
                timestamp_ms: p.timestamp_ms,
                commands: p.commands,
            }),
            EntryPayload::Membership(m) => Payload::Membership(m.to_pb()),
        };
        pb::Entry {
            log_id: Some(self.log_id.to_pb()),
            payload: Some(payload),
        }
    }
    fn from_pb(pb: pb::Entry) -> Result<Self, Malformed> {
        use pb::entry::Payload;
        let log_id = log_id_from(required(pb.log_id, "entry log id")?);
        let payload = match required(pb.payload, "entry payload")? {
            Payload::Blank(_) => EntryPayload::Blank,
            Payload::Normal(p) => EntryPayload::Normal(Proposal {
                timestamp_ms: p.timestamp_ms,
                commands: p.commands,
            }),
            Payload::Membership(m) => EntryPayload::Membership(Membership::from_pb(m)?),
        };
        Ok(Entry { log_id, payload })
    }
}

impl Wire for openraft::SnapshotMeta<NodeId, Node> {
    type Pb = pb::SnapshotMeta;
    fn to_pb(&self) -> pb::SnapshotMeta {
        pb::SnapshotMeta {
            last_log_id: opt_log_id_pb(&self.last_log_id),
            last_membership: Some(self.last_membership.to_pb()),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
    fn from_pb(pb: pb::SnapshotMeta) -> Result<Self, Malformed> {
        Ok(openraft::SnapshotMeta {
            last_log_id: opt_log_id(pb.last_log_id),
            last_membership: StoredMembership::from_pb(required(
                pb.last_membership,
                "snapshot membership",
            )?)?,
            snapshot_id: pb.snapshot_id,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    openraft::declare_raft_types!(
        /// A configuration like the store's, for the records alone.
        pub(crate) TypeConfig: D = Proposal, R = (), NodeId = NodeId, Node = Node,
            SnapshotData = std::io::Cursor<Vec<u8>>,
    );

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = encode(&value);
        let back: T = decode("test record", &bytes).unwrap();
        assert_eq!(back, value);
    }

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 2), index)
    }

    fn node(n: u64) -> Node {
        Node {
            addr: format!("10.0.0.{n}:7000"),
        }
    }

    /// A joint membership with a learner, as openraft itself builds it.
    fn joint() -> Membership<NodeId, Node> {
        let nodes: BTreeMap<_, _> = (1..=5).map(|n| (n, node(n))).collect();
        Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])],
            nodes,
        )
    }

    #[test]
    fn raft_records_round_trip() {
        round_trip(id(3, 17));
        round_trip(Some(id(0, 0)));
        round_trip(None::<LogId<NodeId>>);
        round_trip(Vote::new(7, 2));
        round_trip(Vote::new_committed(7, 2));
        round_trip(Vote::<NodeId>::default());
        round_trip(joint());
        round_trip(StoredMembership::new(Some(id(2, 5)), joint()));
        round_trip(StoredMembership::<NodeId, Node>::default());
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Proposal {
                timestamp_ms: 1_700_000_000_000,
                commands: vec![b"a".to_vec(), Vec::new(), vec![0xff; 300]],
            }),
            EntryPayload::Membership(joint()),
        ] {
            round_trip(Entry::<TypeConfig> {
                log_id: id(4, 100),
                payload,
            });
        }
        round_trip(openraft::SnapshotMeta {
            last_log_id: Some(id(5, 50)),
            last_membership: StoredMembership::new(Some(id(1, 1)), joint()),
            snapshot_id: "0-5-50-40".into(),
        });
    }

    #[test]
    fn records_with_missing_fields_are_refused() {
        for bytes in [&b""[..], b"\x12\x00"] {
            let err = decode::<Entry<TypeConfig>>("raft log entry", bytes).unwrap_err();
            assert!(err.to_string().contains("missing entry"), "{err}");
        }
        assert!(decode::<Entry<TypeConfig>>("raft log entry", b"\xff\xff\xff").is_err());
        let no_config = pb::Membership::default().encode_to_vec();
        assert!(decode::<Membership<NodeId, Node>>("membership", &no_config).is_err());
    }

    #[test]
    fn the_encoding_of_a_record_is_stable() {
        // Bytes a data dir holds must not change under us (field numbers are the format).
        let entry = Entry::<TypeConfig> {
            log_id: id(2, 3),
            payload: EntryPayload::Normal(Proposal {
                timestamp_ms: 5,
                commands: vec![b"x".to_vec()],
            }),
        };
        assert_eq!(
            encode(&entry),
            [
                0x0a, 0x06, 0x08, 0x02, 0x10, 0x03, 0x18, 0x02, 0x1a, 0x05, 0x08, 0x05, 0x12, 0x01,
                b'x'
            ]
        );
    }
}
