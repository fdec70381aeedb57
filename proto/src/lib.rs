//! The `.proto` contracts of the chat system, compiled with tonic/prost.
//!
//! - [`raft`]: node-to-node Raft RPC, one connection per peer multiplexed by partition id.
//! - [`log`]: the records the partitioned log stores and serves.
//! - [`admin`]: the node admin API behind `chatctl`, the benchmark and the tests.
//!
//! Internal and admin RPCs carry the cluster secret in [`CLUSTER_SECRET_HEADER`].

/// Metadata header that carries the cluster secret on internal and admin RPCs.
pub const CLUSTER_SECRET_HEADER: &str = "x-cluster-secret";
/// Metadata headers naming a partition's leader on an UNAVAILABLE "not leader" answer.
pub const LEADER_ID_HEADER: &str = "x-leader-id";
pub const LEADER_ADDR_HEADER: &str = "x-leader-addr";

/// Generated code, nested as the proto packages are so cross-package references resolve.
pub mod chat {
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("chat.raft.v1");
        }
    }
    pub mod log {
        pub mod v1 {
            tonic::include_proto!("chat.log.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("chat.admin.v1");
        }
    }
}

pub use chat::admin::v1 as admin;
pub use chat::log::v1 as log;
pub use chat::raft::v1 as raft;
