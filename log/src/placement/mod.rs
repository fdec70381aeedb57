//! Placement: which nodes hold which partitions, and how that changes while the cluster runs.
//!
//! - `map`: the [`PartitionMap`] (nodes, each partition's replicas, an epoch) and the rules of
//!   changing it — plain data, tested without a cluster.
//! - `handler`: the metadata group's command handler. The map lives in a Raft group of its own
//!   ([`crate::PartitionId::META`]) on the same storage and links as the partitions, as
//!   CockroachDB keeps its meta range and TiKV its placement driver; every node holds a replica
//!   (voter or learner), so each routes by a local copy.
//! - `balance`: what to move next — replicas off draining nodes, up to the replication factor,
//!   evenly across nodes; leaders evenly across replicas.
//! - `driver`: run by the metadata group's leader: forms the first map, keeps every node in the
//!   metadata group, and carries moves out step by step (learner, catch-up, joint voter change,
//!   map), resuming from the map after a crash.
//! - `client` and `service`: the node-to-node `Placement` RPC the driver and the admin API use.
//!
//! The node side — opening and closing groups as the map changes, the Raft calls of a move —
//! is in `crate::node::membership`.

mod balance;
mod client;
pub(crate) mod driver;
mod handler;
mod map;
mod service;

pub use balance::{next_move, next_transfer};
pub(crate) use client::PeerCalls;
pub use handler::META_EVENT_KIND;
pub(crate) use handler::{read_map, MetaHandler};
pub use map::{ClusterNode, MapChange, MapEpoch, NodeState, PartitionMap, Refused, Replicas};
pub use service::PlacementService;
