//! `FollowUpsSent`: how far a partition's follow-ups have been applied at their targets, so a
//! new leader of the partition resumes sending from there (`chat_sequencer::workers::followups`).
//!
//! Check: the partition exists; the command goes to that partition.
//!
//! Apply: moves the mark (`P`) forward only; a mark at or below the recorded one writes nothing.
//! Emits no event. Reply: `FollowUpReply` (`applied`: whether the mark moved).

use chat_log::PartitionId;
use chat_proto::chat_v1::{self as pb, command, command_reply};

use super::apply::{applied, ChatApply, Outcome};
use super::chat_command::{ChatCommand, CheckContext, Invalid};
use crate::state;

impl ChatCommand for pb::FollowUpsSent {
    type Reply = pb::FollowUpReply;

    fn check(&mut self, cx: &CheckContext<'_>) -> Result<PartitionId, Invalid> {
        if self.partition >= cx.partitions {
            return Err(Invalid::new(format!(
                "partition {} does not exist",
                self.partition
            )));
        }
        Ok(PartitionId(self.partition))
    }

    fn apply(self, cx: &mut ChatApply<'_, '_>) -> Outcome {
        let current = cx.get_u64("follow-ups sent", state::FOLLOW_UPS_SENT_KEY)?;
        if self.up_to_offset > current {
            cx.put(
                state::FOLLOW_UPS_SENT_KEY,
                self.up_to_offset.to_be_bytes().to_vec(),
            );
        }
        let reply = command_reply::Kind::FollowUp(pb::FollowUpReply {
            applied: self.up_to_offset > current,
        });
        applied(None, 0, reply)
    }

    fn into_kind(self) -> command::Kind {
        command::Kind::FollowUpsSent(self)
    }

    fn reply(kind: command_reply::Kind) -> Result<pb::FollowUpReply, command_reply::Kind> {
        match kind {
            command_reply::Kind::FollowUp(r) => Ok(r),
            other => Err(other),
        }
    }
}
