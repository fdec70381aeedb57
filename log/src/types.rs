//! The vocabulary of the log: partition ids, offsets, what a Raft entry carries and what applying
//! it returns, and the openraft type configuration that ties them together.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node of the cluster. openraft wants a plain integer id; 0 is never a valid node.
pub type NodeId = u64;

/// The openraft node description: where a peer's Raft RPC endpoint listens.
pub type Node = openraft::BasicNode;

/// One partition of the log, i.e. one openraft group. Partitions are numbered `0..P`;
/// [`PartitionId::META`] is the metadata group (the partition map), kept the same way.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl PartitionId {
    /// The metadata group: a Raft group like a partition's, on the same storage and links, whose
    /// one record is the partition map (`placement`). Its keys sort after every partition's.
    pub const META: PartitionId = PartitionId(u32::MAX);
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PartitionId::META {
            return write!(f, "meta");
        }
        write!(f, "p{}", self.0)
    }
}

/// A position in a partition's event log. Offsets are dense: the first event is at 1 and every
/// applied event takes the next one. `LogOffset(0)` means "before the first event".
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LogOffset(pub u64);

impl LogOffset {
    pub const ZERO: LogOffset = LogOffset(0);

    pub fn next(self) -> LogOffset {
        LogOffset(self.0 + 1)
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// What one Raft entry carries: a batch of opaque commands and the leader's clock when it
/// proposed them. The timestamp travels inside the entry so every replica applies identical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub timestamp_ms: u64,
    pub commands: Vec<Vec<u8>>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Proposal({} commands @{}ms)",
            self.commands.len(),
            self.timestamp_ms
        )
    }
}

/// Why a command handler refused a command. These map one to one onto gRPC status codes in the
/// layers above; the log itself gives them no meaning.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    /// Made on state that has changed since (a compare-and-set lost): read again and retry.
    Aborted,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// The command was applied. It emitted `events` events starting at `first_offset`
    /// (`None` when it emitted none) and the handler answered `reply`.
    Applied {
        first_offset: Option<LogOffset>,
        events: u32,
        reply: Vec<u8>,
    },
    /// The handler refused the command deterministically; nothing was written for it.
    Rejected { code: RejectCode, message: String },
}

/// The result of applying one Raft entry: one outcome per command of its proposal (empty for
/// blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalOutcome {
    pub raft_index: u64,
    pub outcomes: Vec<CommandOutcome>,
}
