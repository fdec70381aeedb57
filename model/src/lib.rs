//! `chat-model`: what the chat domain *is*, independent of how commands reach the log.
//!
//! - [`ids`]: user, device and chat ids, per-chat seqs, their derivation, and routing to
//!   partitions.
//! - [`state`]: the chat layer's keys and records in partition state.
//! - [`event`]: [`ChatEventAt`], a chat event decoded from the log with its offset and time.
//! - [`commands`]: one file per chat command, its checks before proposing beside its
//!   deterministic apply; [`ChatHandler`] applies them on every replica.
//! - [`media`]: media object keys (where a blob lives, who uploaded it).
//! - [`reads`]: [`StateReader`], typed reads of chat state from whichever replica holds it.
//!
//! The write path (validation, rate limits, routing, proposing or forwarding) is `chat-sequencer`;
//! read models are `chat-projector`. Both build on this crate, as do the gateway, the bench and
//! the fault-injection suite, which only need ids.

pub mod commands;
pub mod event;
pub mod ids;
pub mod media;
pub mod reads;
pub mod state;

pub use commands::{ApplyLimits, ChatCommand, ChatHandler, CommandLimits, CHAT_COMMAND_TAG};
pub use event::{ChatEventAt, CHAT_EVENT_KIND};
pub use reads::StateReader;
