//! `chat-sequencer`: the write path from "a device sends" to "one tick".
//!
//! - [`ids`]: user, device, chat ids, their derivation, and routing to partitions.
//! - [`state`]: the chat layer's keys and records in partition state.
//! - [`handler`]: [`ChatHandler`], applying chat commands deterministically on every replica.
//! - [`sequencer`]: [`Sequencer`], validating, rate limiting, routing and proposing commands
//!   (forwarding to the partition leader when this node is not it), and reading history.
//! - [`service`]: the `chat.v1.Sequencer` gRPC service over a [`Sequencer`].
//! - [`reads`]: [`StateReader`], typed reads of chat state from this node's replica.

pub mod handler;
pub mod ids;
pub mod reads;
pub mod sequencer;
pub mod service;
pub mod state;

pub use handler::{ApplyLimits, ChatHandler, CHAT_COMMAND_TAG, CHAT_EVENT_KIND};
pub use reads::StateReader;
pub use sequencer::{SeqError, Sequencer, SequencerConfig};
