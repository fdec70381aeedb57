//! Chat commands, one file per `chat.v1.Command` kind (as mini-redis's `cmd/`): each holds the
//! checks the sequencer runs before proposing the command and the deterministic apply every
//! replica runs once it is committed, as an impl of [`ChatCommand`] on the command's message.
//!
//! | file | command |
//! |---|---|
//! | `register_user.rs` | `RegisterUser`: a user for a handle, with its first device |
//! | `add_device.rs`, `revoke_device.rs` | `AddDevice`, `RevokeDevice` |
//! | `delete_user.rs` | `DeleteUser`: account deletion (devices revoked, the handle released later) |
//! | `create_chat.rs` | `CreateChat`: a direct chat or a group |
//! | `change_members.rs` | `ChangeMembers`: an admin adds, removes, promotes, demotes group members; a member leaves |
//! | `update_chat.rs` | `UpdateChat`: a group's name, description, icon; the disappearing-messages timer |
//! | `delete_message.rs` | `DeleteMessage`: delete for everyone (the payload removed in place, a tombstone message) |
//! | `hide_messages.rs` | `HideMessages`: delete for me (hidden from one member's history and devices) |
//! | `set_presence.rs` | `SetPresence`: a user's presence hidden or not, and last seen |
//! | `send_message.rs` | `SendMessage`, with the dedup window (a `SendBatch` is unpacked into these by the sequencer) |
//! | `advance_receipt.rs` | `AdvanceReceipt`: delivered/read watermarks, device cursors |
//! | `expire_messages.rs` | `ExpireMessages`: retention |
//! | `apply_follow_ups.rs`, `follow_ups_sent.rs` | cross-partition follow-ups and their progress |
//!
//! Shared by them: `chat_command.rs` (the [`ChatCommand`] trait, [`CheckContext`],
//! [`CommandLimits`], [`Invalid`]) and `apply.rs` ([`ChatApply`], [`ApplyLimits`], the outcome
//! helpers). This file only dispatches by command kind: [`check`] for the sequencer, and
//! [`ChatHandler`], the log's `CommandHandler` for chat commands.
//!
//! Everything that must agree across replicas is decided at apply, from partition state and
//! the proposal's leader timestamp only: chat existence, membership (so a send racing a removal
//! is decided by log order), per-chat seqs, timestamps, the dedup window, receipts
//! monotonicity. Every command is idempotent, so the sequencer may retry any of them after an
//! ambiguous failure (e.g. a leader that died after committing) without a second effect.

mod add_device;
mod advance_receipt;
mod apply;
mod apply_follow_ups;
mod change_members;
mod chat_command;
mod create_chat;
mod delete_message;
mod delete_user;
mod expire_messages;
mod follow_ups_sent;
mod hide_messages;
mod register_user;
mod revoke_device;
mod send_message;
mod set_presence;
mod update_chat;

use chat_log::{ApplyContext, CommandHandler, PartitionId, RejectCode};
use chat_proto::chat_v1::{self as pb, command};
use prost::Message;

use apply::reject;
pub use apply::{ApplyLimits, ChatApply, Outcome};
pub use chat_command::{ChatCommand, CheckContext, CommandLimits, Invalid};
pub use expire_messages::MAX_EXPIRE_PER_COMMAND;
pub use hide_messages::MAX_HIDDEN_PER_COMMAND;
pub use update_chat::{MAX_DESCRIPTION_BYTES, MAX_DISAPPEAR_SECS};

/// The tag of chat commands in chatd's command dispatcher (`chat_log::Dispatch`).
pub const CHAT_COMMAND_TAG: u8 = 1;

/// Check `command` before proposing it, filling in derived ids; the partition it goes to.
pub fn check(command: &mut pb::Command, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
    match command.kind.as_mut() {
        None => Err(Invalid::new("empty command")),
        Some(command::Kind::RegisterUser(c)) => c.check(cx),
        Some(command::Kind::AddDevice(c)) => c.check(cx),
        Some(command::Kind::RevokeDevice(c)) => c.check(cx),
        Some(command::Kind::CreateChat(c)) => c.check(cx),
        Some(command::Kind::ChangeMembers(c)) => c.check(cx),
        Some(command::Kind::SendMessage(c)) => c.check(cx),
        Some(command::Kind::AdvanceReceipt(c)) => c.check(cx),
        Some(command::Kind::ExpireMessages(c)) => c.check(cx),
        Some(command::Kind::ApplyFollowUps(c)) => c.check(cx),
        Some(command::Kind::FollowUpsSent(c)) => c.check(cx),
        Some(command::Kind::UpdateChat(c)) => c.check(cx),
        Some(command::Kind::DeleteMessage(c)) => c.check(cx),
        Some(command::Kind::SetPresence(c)) => c.check(cx),
        Some(command::Kind::HideMessages(c)) => c.check(cx),
        Some(command::Kind::DeleteUser(c)) => c.check(cx),
        Some(command::Kind::SendBatch(_)) => Err(Invalid::new(
            "a SendBatch is checked message by message (the sequencer unpacks it)",
        )),
    }
}

/// Applies `chat.v1.Command`s on every replica of a partition, deterministically, and emits
/// `chat.v1.ChatEvent`s.
pub struct ChatHandler {
    limits: ApplyLimits,
}

impl ChatHandler {
    pub fn new(limits: ApplyLimits) -> Self {
        ChatHandler { limits }
    }
}

impl CommandHandler for ChatHandler {
    fn apply(&self, ctx: &mut ApplyContext<'_>, bytes: &[u8]) -> Outcome {
        let command = match pb::Command::decode(bytes) {
            Ok(c) => c,
            Err(e) => {
                return reject(
                    RejectCode::InvalidArgument,
                    format!("malformed chat command: {e}"),
                )
            }
        };
        let cx = &mut ChatApply::new(ctx, &self.limits);
        match command.kind {
            Some(command::Kind::RegisterUser(c)) => c.apply(cx),
            Some(command::Kind::AddDevice(c)) => c.apply(cx),
            Some(command::Kind::RevokeDevice(c)) => c.apply(cx),
            Some(command::Kind::CreateChat(c)) => c.apply(cx),
            Some(command::Kind::ChangeMembers(c)) => c.apply(cx),
            Some(command::Kind::ExpireMessages(c)) => c.apply(cx),
            Some(command::Kind::ApplyFollowUps(c)) => c.apply(cx),
            Some(command::Kind::FollowUpsSent(c)) => c.apply(cx),
            Some(command::Kind::SendMessage(c)) => c.apply(cx),
            Some(command::Kind::AdvanceReceipt(c)) => c.apply(cx),
            Some(command::Kind::UpdateChat(c)) => c.apply(cx),
            Some(command::Kind::DeleteMessage(c)) => c.apply(cx),
            Some(command::Kind::SetPresence(c)) => c.apply(cx),
            Some(command::Kind::HideMessages(c)) => c.apply(cx),
            Some(command::Kind::DeleteUser(c)) => c.apply(cx),
            Some(command::Kind::SendBatch(_)) => reject(
                RejectCode::InvalidArgument,
                "a SendBatch is never a log entry: its messages are",
            ),
            None => reject(RejectCode::InvalidArgument, "empty chat command"),
        }
    }
}
