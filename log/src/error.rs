//! Why a proposal or a read barrier did not happen, and the one mapping of that onto a gRPC
//! status. Its own module so the node and its batcher share it without depending on each other.

use chat_proto::LeaderHint;
use tonic::{Code, Status};

use crate::disk::DiskFull;
use crate::types::{NodeId, PartitionId};

/// Why a proposal was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("partition {0} does not exist")]
    UnknownPartition(PartitionId),
    /// Another node leads the partition (or an election is on); the hint says which, if known.
    #[error("this node is not the leader of partition {}; {}", .0.partition, .0)]
    NotLeader(LeaderHint),
    #[error("partition {} has stopped: {message}", partition.0)]
    Stopped {
        partition: PartitionId,
        message: String,
    },
    /// The partition's proposal queue is full (it cannot commit as fast as it is asked to):
    /// nothing was proposed, so a retry is safe and a later one may get in.
    #[error("partition {} is overloaded: {message}", partition.0)]
    Overloaded {
        partition: PartitionId,
        message: String,
    },
    /// This node leads the partition but its disk is (nearly) full.
    #[error("node {node}: {full}")]
    DiskFull { node: NodeId, full: DiskFull },
}

impl ProposeError {
    /// "Not the leader of `partition`", with the leader as this node knows it.
    pub fn not_leader(
        partition: PartitionId,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    ) -> ProposeError {
        ProposeError::NotLeader(LeaderHint {
            partition: partition.0,
            leader_id,
            leader_addr,
            map_epoch: None,
        })
    }

    /// "This node does not hold `partition`": a redirect to the replica this node's partition
    /// map (of `epoch`) names, its leader when known.
    pub fn not_here(
        partition: PartitionId,
        replica: Option<(NodeId, String)>,
        epoch: u64,
    ) -> ProposeError {
        let (leader_id, leader_addr) = replica.unzip();
        ProposeError::NotLeader(LeaderHint {
            partition: partition.0,
            leader_id,
            leader_addr,
            map_epoch: Some(epoch),
        })
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            ProposeError::UnknownPartition(_) => Code::NotFound,
            ProposeError::NotLeader(_)
            | ProposeError::Stopped { .. }
            | ProposeError::Overloaded { .. } => Code::Unavailable,
            ProposeError::DiskFull { .. } => Code::ResourceExhausted,
        }
    }
}

/// "Not the leader" answers UNAVAILABLE with a [`LeaderHint`] in the error details, so a caller
/// can retry at the leader.
impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Status {
        match &e {
            ProposeError::NotLeader(hint) => hint.to_status(e.code(), e.to_string()),
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}
