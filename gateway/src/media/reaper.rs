//! The media reaper: deletes blobs no message refers to any more.
//!
//! Expiring or deleting a message emits a `MediaReleased` event with the keys its sender
//! uploaded (see `chat_model::media`). On every node, a task per partition it holds reads the
//! log (once a second when caught up) and deletes the released keys whose `n<node>` is this node, from its store (its files;
//! with a shared bucket, the objects this node's gateway granted). It records how far it got in
//! the node's derived data, so after a restart it goes on from there; deleting twice is
//! harmless, so what it did after the last record is simply done again. A delete that fails
//! (the bucket unreachable) is tried again a few seconds later, before anything after it.

use std::sync::Arc;
use std::time::Duration;

use chat_log::{Durability, LogNode, LogOffset, Namespace, PartitionId};
use chat_model::media::ObjectKey;
use chat_model::ChatEventAt;
use chat_proto::chat_v1::chat_event;

use super::BlobStore;

/// The reaper's key space in the derived data (next to the projections' ids).
const REAPER: Namespace = Namespace(0xF0);
const PROGRESS_KEY: &[u8] = b"released-up-to";
/// The progress is recorded after each release and at least every this many events.
const RECORD_EVERY: u64 = 4096;
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often a caught-up reaper looks for new events, and how many it reads at a time.
const POLL_EVERY: Duration = Duration::from_secs(1);
const READ_BATCH: usize = 1024;

/// Follow every partition this node holds and delete this node's released blobs.
pub fn start(node: Arc<LogNode>, store: Arc<dyn BlobStore>) {
    let weak = Arc::downgrade(&node);
    node.spawn_per_partition(move |p| {
        let (node, store) = (weak.upgrade(), store.clone());
        async move {
            if let Some(node) = node {
                follow(node, store, p).await;
            }
        }
    });
}

async fn follow(node: Arc<LogNode>, store: Arc<dyn BlobStore>, p: PartitionId) {
    let mut done = match progress(&node, p) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(partition = p.0, error = %e, "media reaper: reading its progress");
            return;
        }
    };
    let mut unrecorded = 0u64;
    // Polled, not woken by every apply: releases are rare and a second late is soon enough,
    // while a follower woken per event costs every send a little on every replica.
    while node.hosts(p) && !node.is_stopped() {
        let events = match node.read_events(p, LogOffset(done.0 + 1), READ_BATCH) {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(partition = p.0, error = %e, "media reaper: reading the log");
                return;
            }
        };
        if events.is_empty() {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        }
        for event in events {
            done = LogOffset(event.offset);
            unrecorded += 1;
            if !is_media_released(&event.payload) {
                continue;
            }
            if let Ok(Some(ChatEventAt {
                kind: chat_event::Kind::MediaReleased(released),
                ..
            })) = ChatEventAt::decode(&event)
            {
                for key in released.object_keys {
                    delete_own(&node, store.as_ref(), &key).await;
                }
                unrecorded = RECORD_EVERY;
            }
        }
        if unrecorded >= RECORD_EVERY {
            if let Err(e) = record(&node, p, done) {
                tracing::warn!(partition = p.0, error = %e, "media reaper: recording its progress");
            }
            unrecorded = 0;
        }
    }
}

/// Whether a chat event's bytes may be a `MediaReleased` (`ChatEvent.media_released`, field 12,
/// length-delimited: its first byte is the key 12 << 3 | 2), so the other events — nearly all —
/// are not decoded at all.
fn is_media_released(payload: &[u8]) -> bool {
    payload.first() == Some(&((12 << 3) | 2))
}

/// Delete `key` if this node owns it, trying until it is done (or the node stops).
async fn delete_own(node: &LogNode, store: &dyn BlobStore, key: &str) {
    let Ok(parsed) = ObjectKey::parse(key) else {
        return;
    };
    if parsed.node != node.node_id() {
        return;
    }
    loop {
        match store.delete(&parsed).await {
            Ok(()) => {
                metrics::counter!("chatd_media_blobs_deleted_total").increment(1);
                tracing::debug!(%key, "media reaper: deleted a released blob");
                return;
            }
            Err(e) if node.is_stopped() => {
                tracing::info!(%key, error = %e, "media reaper: stopping before a delete");
                return;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "media reaper: delete failed; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

fn progress(node: &LogNode, p: PartitionId) -> Result<LogOffset, chat_log::StoreError> {
    let value = node.derived().get(p, REAPER, PROGRESS_KEY)?;
    Ok(LogOffset(
        value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
    ))
}

fn record(node: &LogNode, p: PartitionId, done: LogOffset) -> Result<(), chat_log::StoreError> {
    let derived = node.derived();
    let mut batch = derived.batch(p, REAPER);
    batch.put(PROGRESS_KEY, &done.0.to_be_bytes());
    derived.commit(batch, Durability::Buffered)
}

#[cfg(test)]
mod tests {
    use chat_proto::chat_v1::{self as pb, chat_event};
    use prost::Message;

    use super::is_media_released;

    #[test]
    fn the_first_byte_tells_a_media_release_from_every_other_event() {
        let event = |kind| pb::ChatEvent { kind: Some(kind) }.encode_to_vec();
        let released = event(chat_event::Kind::MediaReleased(pb::MediaReleased {
            chat_id: 1,
            object_keys: vec!["n1/u2/00000000000000000000000000000003".into()],
        }));
        assert!(is_media_released(&released));
        let message = event(chat_event::Kind::Message(pb::Message {
            chat_id: 1,
            payload: vec![(12 << 3) | 2; 4],
            ..Default::default()
        }));
        assert!(!is_media_released(&message));
        let hidden = event(chat_event::Kind::MessagesHidden(
            pb::MessagesHidden::default(),
        ));
        assert!(!is_media_released(&hidden));
    }
}
