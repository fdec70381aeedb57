//! `chat-sequencer`: the write path from "a device sends" to "one tick".
//!
//! - [`sequencer`]: [`Sequencer`], validating, rate limiting, routing and proposing commands
//!   (forwarding to the partition leader when this node is not it), and reading history.
//! - [`service`]: the `chat.v1.Sequencer` gRPC service over a [`Sequencer`].
//! - [`workers`]: background writers that turn what the log says into more commands:
//!   cross-partition follow-ups and the retention sweeper.
//!
//! What a command *does* once committed (the deterministic handler), the ids, the state records
//! and reads of them are the chat model, in `chat-model`.

pub mod sequencer;
pub mod service;
pub mod workers;

pub use sequencer::{SeqError, Sequencer, SequencerConfig};
