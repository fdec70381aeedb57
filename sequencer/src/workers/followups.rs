//! Cross-partition follow-ups: a chat's membership lives in the chat's partition, but each
//! member's own chat list lives in the member's partition. When a chat is created or its members
//! change, the leader of the chat's partition sends the change to each member's partition as an
//! `ApplyFollowUps{source partition, source offset, entries}` command.
//!
//! Exactly-once effect from at-least-once delivery: the sender goes through its partition's
//! events in offset order and waits for each follow-up to be applied before the next; the target
//! remembers, per source partition, the last source offset it applied and ignores anything at
//! or below it. How far the follow-ups got is itself replicated in the source partition
//! (`FollowUpsSent`), so a new leader resumes from there — resending a few, which the targets
//! ignore. Progress is recorded whenever follow-ups were sent, and at least every few seconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_log::{LogOffset, PartitionId};
use chat_model::ids::partition_of;
use chat_model::{ChatEventAt, StateReader};
use chat_proto::chat_v1::{self as pb, chat_event};

use crate::Sequencer;

/// Events read per round and partition.
const BATCH: usize = 4096;
/// Record progress at least this often while events flow without follow-ups.
const RECORD_EVERY: Duration = Duration::from_secs(5);

/// Start the follow-up sender of this node (it acts on the partitions this node leads).
pub fn start(sequencer: Arc<Sequencer>, every: Duration) {
    tokio::spawn(async move {
        let reads = StateReader::new(sequencer.node().clone());
        // Per partition led here: the next offset to look at, and when progress was recorded.
        let mut cursors: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for p in 0..sequencer.node().partition_count() {
                if !sequencer.node().is_leader(PartitionId(p)) {
                    cursors.remove(&p); // resume from the replicated progress if it comes back
                    continue;
                }
                if let Err(e) = round(&sequencer, &reads, PartitionId(p), &mut cursors).await {
                    tracing::warn!(partition = p, error = %e, "follow-ups; retrying");
                    cursors.remove(&p);
                }
            }
        }
    });
}

/// The follow-ups one event calls for, grouped by target partition.
fn follow_ups(
    event: &chat_event::Kind,
    partitions: u32,
) -> BTreeMap<PartitionId, Vec<pb::FollowUp>> {
    let entries: Vec<pb::FollowUp> = match event {
        chat_event::Kind::ChatCreated(c) => c
            .members
            .iter()
            .map(|&user_id| pb::FollowUp {
                user_id,
                chat_id: c.chat_id,
                joined: true,
            })
            .collect(),
        chat_event::Kind::MembersChanged(c) => c
            .added
            .iter()
            .map(|&u| (u, true))
            .chain(c.removed.iter().map(|&u| (u, false)))
            .map(|(user_id, joined)| pb::FollowUp {
                user_id,
                chat_id: c.chat_id,
                joined,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut grouped: BTreeMap<PartitionId, Vec<pb::FollowUp>> = BTreeMap::new();
    for e in entries {
        grouped
            .entry(partition_of(e.user_id, partitions))
            .or_default()
            .push(e);
    }
    grouped
}

async fn round(
    sequencer: &Sequencer,
    reads: &StateReader,
    p: PartitionId,
    cursors: &mut BTreeMap<u32, (u64, Instant)>,
) -> Result<(), String> {
    let node = sequencer.node();
    let (next, recorded) = match cursors.get(&p.0) {
        Some(&c) => c,
        None => (
            reads.follow_ups_sent(p).await.map_err(|e| e.to_string())? + 1,
            Instant::now(),
        ),
    };
    let events = node
        .read_events(p, LogOffset(next), BATCH)
        .map_err(|e| e.to_string())?;
    let Some(last) = events.last().map(|e| e.offset) else {
        cursors.insert(p.0, (next, recorded));
        return Ok(());
    };
    let mut sent = false;
    for event in &events {
        let Ok(Some(chat_event)) = ChatEventAt::decode(event) else {
            continue;
        };
        for (_, entries) in follow_ups(&chat_event.kind, node.partition_count()) {
            let command = pb::ApplyFollowUps {
                source_partition: p.0,
                source_offset: event.offset,
                entries,
            };
            sequencer
                .submit_typed(command)
                .await
                .map_err(|e| format!("follow-up of offset {}: {e}", event.offset))?;
            sent = true;
        }
    }
    let mut recorded_at = recorded;
    if sent || recorded.elapsed() >= RECORD_EVERY {
        let command = pb::FollowUpsSent {
            partition: p.0,
            up_to_offset: last,
        };
        sequencer
            .submit_typed(command)
            .await
            .map_err(|e| format!("recording follow-up progress: {e}"))?;
        recorded_at = Instant::now();
    }
    cursors.insert(p.0, (last + 1, recorded_at));
    Ok(())
}
