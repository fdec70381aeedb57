//! `chat-gateway`: what devices talk to — the `chat.v1.Chat` gRPC service.
//!
//! - [`service`]: the tonic service: unary RPCs (accounts, chats, history, presence) and
//!   `Connect`, which hands each stream to a session.
//! - [`session`]: one device stream: authenticate, backlog per chat from the device's cursors,
//!   `SyncComplete`, then live frames; sends, acks, reads and pings from the device.
//! - [`lanes`]: a device's sends to one chat, batched in the order it wrote them, so they get
//!   seqs in that order.
//! - [`outbound`]: a stream's two outbound queues, control frames (acks, pongs, errors) ahead
//!   of data frames (messages, receipts), so a device's answers never wait behind its deliveries.
//! - [`hub`]: tails every partition (wherever it is held) and offers each event to the sessions
//!   on this node it concerns without ever waiting on one (a full session queue makes it catch
//!   up from the log).
//! - [`auth`]: device bearer tokens checked against the hashed token in the user's partition,
//!   read from a replica confirmed with its leader within the revocation bound.
//! - [`limits`]: rates per user and per address on the unary calls, sizes of names and lists.
//! - [`ticks`]: the projector's tick changes (see `chat-projector`) go to the member's streams:
//!   this node's projector's, and for partitions this node does not hold, a holder's (over
//!   `chat.v1.GatewayPeer.WatchTicks`).
//! - [`typing`]: typing indicators, relayed to the other members' streams on every node and
//!   never stored.
//! - [`notify`]: collapsed notifications for member devices with no stream, and the push sinks
//!   they go to (log, webhook).
//! - [`presence`]: cluster-wide presence: each user's home node answers (the connection
//!   registry), this node's hub adds its own streams; every peer is asked only while a home
//!   cannot answer for sure (`chat.v1.GatewayPeer`).
//! - [`presence_push`]: presence changes pushed to the streams that subscribed, last seen
//!   recorded in the user's partition, hidden presence.
//! - [`registry`]: the connection registry: which node holds which device's stream, kept at
//!   each user's home node (rendezvous hashing over the nodes).
//! - [`media`]: media beside the log: the blob store trait, its embedded (files over HTTP) and
//!   S3 stores, presigned upload/download grants, and the reaper of released blobs.
//! - [`gateway`]: [`Gateway`], what one node's gateway holds and starts, and its config.
//!
//! Writes go through the node's [`Sequencer`] (which forwards to partition leaders); reads go
//! through [`StateReader`] to a replica of the partition that holds the key: this node's when
//! it holds one, another node's otherwise. So a device can use any node, whichever partitions
//! that node holds (docs/architecture.md, "Placement").

pub mod auth;
pub mod gateway;
pub mod hub;
pub mod lanes;
pub mod limits;
pub mod media;
pub mod notify;
pub mod outbound;
pub mod presence;
pub mod presence_push;
pub mod registry;
pub mod service;
pub mod session;
pub mod ticks;
pub mod typing;

pub use gateway::{Gateway, GatewayConfig};
pub use service::ChatService;
