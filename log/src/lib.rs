//! `chat-log`: the replicated, partitioned log at the bottom of the chat system.
//!
//! A node hosts P partitions; each is one openraft group whose committed entries are applied by a
//! [`CommandHandler`] into a per-partition event log at dense [`LogOffset`]s. All partitions of a
//! node share one RocksDB ([`engine`]) and one tonic connection per peer ([`network`]).
//! [`LogNode`] is the API the layers above use: propose, read, subscribe, status.
//!
//! Module map:
//! - [`types`]: ids, offsets, proposals and outcomes, the openraft type config.
//! - [`codec`]: crc32 framing and key layouts of the column families.
//! - [`engine`]: RocksDB and group commit.
//! - [`disk`]: free space on the data disk: reserve, ballast, waiting out ENOSPC.
//! - [`store`]: openraft's log-storage and state-machine traits on the engine.
//! - [`apply`]: the command-handler contract.
//! - `error`: [`ProposeError`] and its gRPC status (with a leader hint).
//! - `batcher`: coalesces concurrent proposals to a partition into one Raft entry.
//! - [`network`]: Raft RPC over tonic (client and server) and the cluster secret.
//! - [`node`]: a node hosting every partition.

pub mod apply;
mod batcher;
pub mod codec;
pub mod disk;
pub mod engine;
mod error;
pub mod network;
pub mod node;
pub mod store;
pub mod types;

pub use apply::{
    ApplyContext, CommandHandler, Dispatch, RawAppend, RAW_COMMAND_TAG, RAW_EVENT_KIND,
};
pub use disk::{DiskConfig, DiskFull, DiskState, DiskStatus};
pub use engine::{Durability, Engine, StoreError};
pub use error::ProposeError;
pub use node::{LogNode, LogNodeConfig, NodeStatus, PartitionStatus, RaftTuning};
/// RocksDB write batches, for crates that write next to the log (projections).
pub use rocksdb::WriteBatch;
pub use types::{
    CommandOutcome, LogOffset, NodeId, PartitionId, Proposal, ProposalOutcome, RejectCode,
    TypeConfig,
};
