//! A device's sends to one chat get seqs in the order the device wrote them.
//!
//! Each chat a stream sends to has a lane: a task that takes every send queued for that chat
//! (up to [`MAX_BATCH`] messages or [`MAX_BATCH_BYTES`]) and submits them as one `SendBatch`,
//! which the sequencer proposes as one proposal, applied contiguously in that order (forwarded
//! to the leader as one call when another node leads the chat's partition). A lane's next batch
//! waits for its previous one's answer, so a send never overtakes an earlier one however the
//! write path retries. Sends to different chats do not wait on each other. Acks come back in
//! send order within a chat.
//!
//! A batch that ends UNAVAILABLE may still commit later (a leader that took it and lost its
//! quorum). Proposing the sends behind it would let them overtake it, so the lane is fenced:
//! it refuses the chat's later sends, unproposed, until the device resends the first one that
//! failed (or [`FENCE_HOLD`] passes). A client resends its unanswered sends in order (as
//! `chat_client::Device` does), so the resend reopens the lane and everything after it follows
//! in order. A stream that ends stops its lanes after the batch in flight: what was queued was
//! never proposed, and the device resends it on its next stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::ids::ChatId;
use chat_proto::chat_v1::{self as pb, server_frame};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tonic::Code;

use crate::auth::Device;
use crate::gateway::Gateway;
use crate::outbound::Outbound;

/// The most sends one batch carries, and the most payload bytes past which a batch takes no
/// more. A batch is one forwarded call, and a forwarding stream packs up to 256 calls into one
/// message of at most `chat_log::MAX_MESSAGE_BYTES` (64 MiB): 256 × (128 KiB + one 64 KiB
/// payload) stays below it.
const MAX_BATCH: usize = 64;
const MAX_BATCH_BYTES: usize = 128 << 10;
/// How long a fenced lane waits for the resend of the send whose outcome is unknown.
const FENCE_HOLD: Duration = Duration::from_secs(5);
/// Idle lanes are dropped once a stream has this many.
const KEEP_LANES: usize = 64;
/// The most a device may ask a send to wait for a leader (`SendFrame.timeout_ms`).
const MAX_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The send lanes of one device stream, by chat.
pub(crate) struct SendLanes {
    gw: Arc<Gateway>,
    me: Device,
    out: Outbound,
    lanes: HashMap<ChatId, Lane>,
    /// Set when the stream ends: lanes finish the batch in flight and propose nothing more.
    ended: Arc<AtomicBool>,
}

struct Lane {
    queue: mpsc::UnboundedSender<Queued>,
    /// Sends queued or in flight. Only the session adds to it, so zero seen by the session
    /// means the lane has nothing to do and can be dropped without losing a send's place.
    pending: Arc<AtomicUsize>,
}

/// A send waiting in its lane, with its place among the stream's sends in flight.
struct Queued {
    frame: pb::SendFrame,
    _permit: OwnedSemaphorePermit,
}

impl SendLanes {
    pub(crate) fn new(gw: Arc<Gateway>, me: Device, out: Outbound) -> SendLanes {
        SendLanes {
            gw,
            me,
            out,
            lanes: HashMap::new(),
            ended: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queue a send behind the earlier sends of its chat; `permit` is held until it is answered.
    pub(crate) fn push(&mut self, frame: pb::SendFrame, permit: OwnedSemaphorePermit) {
        let chat = ChatId(frame.chat_id);
        if !self.lanes.contains_key(&chat) && self.lanes.len() >= KEEP_LANES {
            self.lanes
                .retain(|_, lane| lane.pending.load(Ordering::Acquire) > 0);
        }
        let lane = self.lanes.entry(chat).or_insert_with(|| {
            let (queue, rx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            let runner = LaneRunner {
                gw: self.gw.clone(),
                me: self.me,
                out: self.out.clone(),
                pending: pending.clone(),
                ended: self.ended.clone(),
                fence: None,
            };
            tokio::spawn(runner.run(rx));
            Lane { queue, pending }
        });
        lane.pending.fetch_add(1, Ordering::AcqRel);
        let queued = Queued {
            frame,
            _permit: permit,
        };
        if lane.queue.send(queued).is_err() {
            // The lane's task is gone (it only ends with the stream): nothing to answer on.
            lane.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for SendLanes {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// The send whose outcome is unknown, and since when the lane waits for its resend.
struct Fence {
    client_msg_id: String,
    since: Instant,
}

/// One lane's task.
struct LaneRunner {
    gw: Arc<Gateway>,
    me: Device,
    out: Outbound,
    pending: Arc<AtomicUsize>,
    ended: Arc<AtomicBool>,
    fence: Option<Fence>,
}

impl LaneRunner {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        while let Some(first) = queue.recv().await {
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            let mut bytes = first.frame.payload.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(next) => {
                        bytes += next.frame.payload.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let answers = self.answer(&batch).await;
            for (frame, queued) in answers.into_iter().zip(batch) {
                let _ = self.out.control(frame).await;
                drop(queued);
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Submit what the fence lets through; every send's answer frame, in order.
    async fn answer(&mut self, batch: &[Queued]) -> Vec<server_frame::Kind> {
        let mut answers: Vec<Option<server_frame::Kind>> = vec![None; batch.len()];
        let mut open = 0;
        if let Some(fence) = self.fence.take() {
            let reopened = batch
                .iter()
                .position(|q| q.frame.client_msg_id == fence.client_msg_id);
            open = match reopened {
                Some(i) => i,
                None if fence.since.elapsed() >= FENCE_HOLD => 0,
                None => batch.len(),
            };
            for (answer, q) in answers.iter_mut().zip(batch).take(open) {
                *answer = Some(fenced(&q.frame, &fence.client_msg_id));
            }
            if open == batch.len() {
                self.fence = Some(fence);
            }
        }
        let sends = &batch[open..];
        if !sends.is_empty() {
            let results = self.submit(sends).await;
            let first_unknown = results
                .iter()
                .position(|r| matches!(r, Err(e) if e.code() == Code::Unavailable));
            if let Some(i) = first_unknown {
                self.fence = Some(Fence {
                    client_msg_id: sends[i].frame.client_msg_id.clone(),
                    since: Instant::now(),
                });
            }
            for ((answer, q), result) in answers[open..].iter_mut().zip(sends).zip(results) {
                *answer = Some(answer_frame(&q.frame, result));
            }
        }
        answers.into_iter().flatten().collect()
    }

    async fn submit(&self, sends: &[Queued]) -> Vec<Result<pb::SendAck, chat_sequencer::SeqError>> {
        let within = sends
            .iter()
            .filter(|q| q.frame.timeout_ms > 0)
            .map(|q| Duration::from_millis(u64::from(q.frame.timeout_ms)).min(MAX_SEND_TIMEOUT))
            .min();
        let mut messages: Vec<pb::SendMessage> =
            sends.iter().map(|q| message(self.me, &q.frame)).collect();
        let sequencer = &self.gw.sequencer;
        if messages.len() == 1 {
            let only = messages.pop().expect("one message");
            vec![sequencer.send_within(only, within).await]
        } else {
            sequencer.send_batch_within(messages, within).await
        }
    }
}

fn message(me: Device, s: &pb::SendFrame) -> pb::SendMessage {
    pb::SendMessage {
        chat_id: s.chat_id,
        sender_user: me.user.0,
        sender_device: me.device.0,
        client_msg_id: s.client_msg_id.clone(),
        payload: s.payload.clone(),
        media: s.media.clone(),
    }
}

fn answer_frame(
    s: &pb::SendFrame,
    result: Result<pb::SendAck, chat_sequencer::SeqError>,
) -> server_frame::Kind {
    match result {
        Ok(ack) => server_frame::Kind::SendAck(pb::SendAckFrame {
            client_msg_id: s.client_msg_id.clone(),
            ack: Some(ack),
        }),
        Err(e) => server_frame::Kind::SendError(pb::SendErrorFrame {
            client_msg_id: s.client_msg_id.clone(),
            code: e.code() as i32,
            message: e.to_string(),
        }),
    }
}

/// The answer to a send refused by a fenced lane: never proposed.
fn fenced(s: &pb::SendFrame, waiting_for: &str) -> server_frame::Kind {
    server_frame::Kind::SendError(pb::SendErrorFrame {
        client_msg_id: s.client_msg_id.clone(),
        code: Code::Unavailable as i32,
        message: format!(
            "not sent: an earlier send to this chat ({waiting_for:?}) may or may not have been \
             committed; resend your unanswered sends in order, starting with it"
        ),
    })
}
