//! Raft RPC between nodes over tonic.
//!
//! - [`client`]: openraft's network traits. One tonic channel (one HTTP/2 connection) per peer
//!   node is shared by the clients of every partition; each request names its partition.
//!   AppendEntries go over [`link`]: one long-lived stream per peer that packs the calls of
//!   every partition into batches ([`mux`]: many calls on one stream, also used to forward
//!   commands to partition leaders).
//! - [`server`]: the `RaftService` that routes incoming requests to the right partition's Raft.
//! - [`reach`]: which peers answer (the placement driver's view of which nodes are down).
//! - [`auth`]: the cluster-secret (and, internally, protocol-version) check every internal and
//!   admin RPC passes through.
//!
//! Requests and replies are `chat.raft.v1` messages (proto/proto/raft.proto), converted from and
//! to openraft's types by the crate's `wire` module.

pub mod auth;
pub mod client;
pub mod link;
pub mod mux;
pub mod reach;
pub mod server;

/// Largest gRPC message a node accepts or sends (append batches and snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub use auth::SecretCheck;
pub use client::{NetworkFactory, PeerChannels};
pub use server::{RaftGroups, RaftServer};
