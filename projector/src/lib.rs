//! `chat-projector`: read models derived from the partitioned log, local to each node.
//!
//! - [`store`]: where projections live (each a namespace of the log's derived data): output
//!   and checkpoint in one atomic batch, generations for rebuilds, consistent reads and digests.
//! - [`runner`]: the [`Projection`] trait and the [`Projector`] that runs every projection over
//!   every partition, rebuilds them by replay while serving, and announces [`Change`]s.
//! - [`chats`]: the `chats` projection: chat summaries, members' marks, users' chat rows; the
//!   inbox and the ticks are read from it.
//!
//! Every replica applies the same events, so every node projects locally and deterministically;
//! projections are never replicated or snapshotted, only rebuilt by replay.

pub mod chats;
pub mod runner;
pub mod store;

pub use chats::{ChatsProjection, InboxEntry, CHATS_PROJECTION};
pub use runner::{Change, Projection, ProjectionStatus, Projector};
pub use store::ProjectionId;
