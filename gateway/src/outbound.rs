//! The frames a device stream sends, in two queues: control before data.
//!
//! A device's stream carries two kinds of frame. *Control* frames answer the device itself:
//! `Welcome`, send acks and send errors, pongs, error frames, and the status that ends the
//! stream. *Data* frames are what the chats produce: messages, receipts, ticks, chat updates,
//! the backlog's `SyncComplete`. A member of a busy group can have thousands of data frames waiting for its
//! connection; if its own acks queued behind them, every send would look seconds slow while the
//! server had committed it in milliseconds. So each kind has its own bounded queue and the
//! stream tonic writes takes from the control queue whenever it has something.
//!
//! Order is kept within each queue (a chat's messages, updates and receipts stay in log order)
//! but not across them: an ack may overtake the message it acknowledges on the way to the
//! sender's own device, which a client must accept anyway (acks come from other tasks).

use chat_proto::chat_v1::{self as pb, server_frame};
use futures::stream::{self, PollNext, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A frame as queued: boxed, because a channel allocates its first block of 32 slots up front,
/// and a slot the size of a whole `ServerFrame` made that block 4 KiB of every idle connection.
type Queued = Result<Box<pb::ServerFrame>, Status>;

/// Control frames queued per stream. Few are ever waiting: a device has at most
/// `max_sends_in_flight` acks outstanding and answers pings one at a time.
const CONTROL_FRAMES: usize = 16;

/// How long a frame may wait for room by default: a device that has read nothing of its
/// stream for this long is not reading (see [`Outbound::with_write_deadline`]).
pub const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The sending side of one device stream. Cheap to clone (two channel senders).
#[derive(Clone)]
pub struct Outbound {
    control: mpsc::Sender<Queued>,
    data: mpsc::Sender<Queued>,
    write_deadline: std::time::Duration,
}

/// The stream tonic writes to the device.
pub type FrameStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

impl Outbound {
    /// A new pair of queues (`data_frames` deep for data) and the stream that drains them,
    /// control first.
    pub fn new(data_frames: usize) -> (Outbound, FrameStream) {
        let (control, control_rx) = mpsc::channel::<Queued>(CONTROL_FRAMES);
        let (data, data_rx) = mpsc::channel(data_frames);
        let frames = stream::select_with_strategy(
            ReceiverStream::new(control_rx),
            ReceiverStream::new(data_rx),
            |_: &mut ()| PollNext::Left,
        )
        .map(|frame| frame.map(|boxed| *boxed));
        let out = Outbound {
            control,
            data,
            write_deadline: WRITE_DEADLINE,
        };
        (out, Box::pin(frames))
    }

    /// These queues with another write deadline: a frame that finds no room for this long
    /// fails with DEADLINE_EXCEEDED, which ends the session, so a client that stops reading
    /// (its HTTP/2 window full, then these queues) stops costing the node anything but the
    /// queued frames instead of holding a session, its hub registration and its catch-up reads.
    pub fn with_write_deadline(mut self, deadline: std::time::Duration) -> Outbound {
        self.write_deadline = deadline;
        self
    }

    /// Queue a control frame (waits while 16 are queued: the device is not reading at all),
    /// for up to the write deadline.
    pub async fn control(&self, kind: server_frame::Kind) -> Result<(), Status> {
        self.queue(&self.control, kind).await
    }

    /// Queue a data frame (waits while the data queue is full), for up to the write deadline.
    pub async fn data(&self, kind: server_frame::Kind) -> Result<(), Status> {
        self.queue(&self.data, kind).await
    }

    /// Queue a control frame if there is room now; dropped otherwise (for frames that must not
    /// wait, e.g. from a destructor).
    pub fn try_control(&self, kind: server_frame::Kind) {
        let _ = self
            .control
            .try_send(Ok(Box::new(pb::ServerFrame { kind: Some(kind) })));
    }

    /// End the stream with `status` (after the control frames already queued; given up after
    /// the write deadline, when the device is not reading anyway).
    pub async fn end(&self, status: Status) {
        let _ = tokio::time::timeout(self.write_deadline, self.control.send(Err(status))).await;
    }

    async fn queue(
        &self,
        queue: &mpsc::Sender<Queued>,
        kind: server_frame::Kind,
    ) -> Result<(), Status> {
        let frame = Ok(Box::new(pb::ServerFrame { kind: Some(kind) }));
        // Most frames find room: only one that must wait starts the write deadline's clock
        // (every message to every device comes through here).
        let frame = match queue.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::cancelled("the device went away"))
            }
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        match tokio::time::timeout(self.write_deadline, queue.send(frame)).await {
            Ok(sent) => sent.map_err(|_| Status::cancelled("the device went away")),
            Err(_) => {
                metrics::counter!("chatd_device_stream_write_timeouts_total").increment(1);
                Err(Status::deadline_exceeded(format!(
                    "the device has read nothing of its stream for {:?}",
                    self.write_deadline
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(nonce: u64) -> server_frame::Kind {
        server_frame::Kind::Pong(pb::Pong { nonce })
    }

    fn message(seq: u64) -> server_frame::Kind {
        server_frame::Kind::Message(pb::Message {
            seq,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn control_frames_overtake_queued_data_and_each_queue_keeps_its_order() {
        let (out, mut frames) = Outbound::new(64);
        for seq in 1..=10 {
            out.data(message(seq)).await.unwrap();
        }
        out.control(pong(1)).await.unwrap();
        out.control(pong(2)).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..12 {
            match frames.next().await.unwrap().unwrap().kind.unwrap() {
                server_frame::Kind::Pong(p) => seen.push(format!("pong {}", p.nonce)),
                server_frame::Kind::Message(m) => seen.push(format!("msg {}", m.seq)),
                other => panic!("unexpected {other:?}"),
            }
        }
        let expected: Vec<String> = ["pong 1", "pong 2"]
            .into_iter()
            .map(String::from)
            .chain((1..=10).map(|s| format!("msg {s}")))
            .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_full_data_queue_does_not_block_control_frames() {
        let (out, mut frames) = Outbound::new(2);
        out.data(message(1)).await.unwrap();
        out.data(message(2)).await.unwrap();
        // The data queue is full: a third data frame would wait, a control frame does not.
        let third = out.data(message(3));
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        out.control(pong(7)).await.unwrap();
        let first = frames.next().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(server_frame::Kind::Pong(_))));
    }

    #[tokio::test]
    async fn a_frame_that_finds_no_room_within_the_write_deadline_fails() {
        let (out, _frames) = Outbound::new(1);
        let out = out.with_write_deadline(std::time::Duration::from_millis(50));
        out.data(message(1)).await.unwrap();
        // Nobody takes from the stream: the device is not reading.
        let err = out.data(message(2)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
        for nonce in 0..16 {
            out.control(pong(nonce)).await.unwrap();
        }
        let err = out.control(pong(99)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
        // Ending it does not hang either.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            out.end(Status::cancelled("x")),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn the_stream_ends_after_an_ending_status_and_once_both_senders_are_gone() {
        let (out, mut frames) = Outbound::new(4);
        out.data(message(1)).await.unwrap();
        out.end(Status::unauthenticated("revoked")).await;
        drop(out);
        let first = frames.next().await.unwrap();
        assert_eq!(first.unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(
            frames.next().await.unwrap().is_ok(),
            "the queued data frame"
        );
        assert!(frames.next().await.is_none());
    }
}
