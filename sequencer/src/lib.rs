//! `chat-sequencer`: the write path from "a device sends" to "one tick".
//!
//! - [`sequencer`]: [`Sequencer`], checking, rate limiting (cluster-wide per user: `send_rate.rs`),
//!   routing and proposing commands,
//!   forwarding to the partition leader when this node is not it (`forward.rs`); its typed
//!   helpers and history reads (`ops.rs`).
//! - [`config`]: [`SequencerConfig`]. [`error`]: [`SeqError`] and its mappings onto statuses.
//! - [`service`]: the `chat.v1.Sequencer` gRPC service over a [`Sequencer`].
//! - [`workers`]: background writers that turn what the log says into more commands:
//!   cross-partition follow-ups and the retention sweeper.
//!
//! What a command *is* — its checks and what it does once committed, one file per command —
//! and the ids, the state records and reads of them are the chat model, in `chat-model`.

pub mod config;
pub mod error;
mod forward;
mod ops;
mod send_rate;
pub mod sequencer;
pub mod service;
pub mod workers;

pub use config::SequencerConfig;
pub use error::SeqError;
pub use ops::MemberChange;
pub use sequencer::Sequencer;
