//! `chat-log`: the replicated, partitioned log at the bottom of the chat system.
//!
//! A cluster has P partitions, each held by R of its nodes; each is one openraft group whose
//! committed entries are applied by a [`CommandHandler`] into a per-partition event log at dense
//! [`LogOffset`]s. Which nodes hold which partitions is the partition map's to say, kept in a
//! Raft group of its own ([`placement`]). All groups of a node share one RocksDB (`engine`) and
//! one tonic connection per peer ([`network`]).
//! [`LogNode`] is the API the layers above use: propose, read, subscribe, status; and
//! [`DerivedStore`] is where they keep data derived from the log. The storage itself (codec,
//! engine, Raft stores, disk watch) is private: nothing above sees RocksDB or a key layout.
//!
//! Module map:
//! - [`types`]: ids, offsets, proposals and outcomes.
//! - `codec`: crc32 framing and key layouts of the column families.
//! - `wire`: the protobuf form of the log's records and Raft RPC (the data format).
//! - `datadir`: what a data dir is (node, partitions, data format), checked at every start.
//! - `engine`: RocksDB and group commit.
//! - [`derived`]: [`DerivedStore`], the seam for data derived from the log (read models).
//! - `disk`: free space on the data disk: reserve, ballast, waiting out ENOSPC.
//! - `store`: openraft's type config, and its log-storage and state-machine traits on the
//!   engine.
//! - [`apply`]: the command-handler contract.
//! - `error`: [`ProposeError`] and its gRPC status (with a leader hint).
//! - `batcher`: coalesces concurrent proposals to a partition into one Raft entry.
//! - [`network`]: Raft RPC over tonic (client and server) and the cluster secret.
//! - [`placement`]: the partition map, its metadata group, the balancer and the driver that
//!   moves replicas.
//! - [`node`]: a node: its groups, the API above, and its part in placement.
//! - [`remote`]: reads of partitions a node does not hold, from a node that does.

pub mod apply;
pub mod backup;
mod batcher;
mod codec;
mod datadir;
pub mod derived;
mod disk;
pub mod duration_setting;
mod engine;
mod error;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod network;
pub mod node;
pub mod placement;
pub mod remote;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
mod wire;

pub use apply::{
    ApplyContext, CommandHandler, Dispatch, RawAppend, StateEntries, RAW_COMMAND_TAG,
    RAW_EVENT_KIND,
};
pub use codec::CorruptRecord;
pub use derived::{DerivedBatch, DerivedStore, DerivedView, Namespace};
pub use disk::{DiskConfig, DiskFull, DiskState, DiskStatus};
pub use engine::{Durability, EngineConfig, EngineSizes, StoreError};
pub use error::ProposeError;
pub use network::MAX_MESSAGE_BYTES;
pub use node::{
    LogNode, LogNodeConfig, NodeStatus, PartitionStatus, RaftTuning, RepairReport, StorageClosed,
    SyncCounts,
};
pub use remote::{ReadError, Replicas, Space};
pub use store::TypeConfig;
pub use types::{
    CommandOutcome, LogOffset, NodeId, PartitionId, Proposal, ProposalOutcome, RejectCode,
};
pub use wire::DATA_FORMAT;
