//! One replication link per peer node: the AppendEntries calls of every partition this node leads
//! and the peer follows travel on one long-lived `Replicate` stream.
//!
//! Why: a unary gRPC call costs an HTTP/2 stream, a HEADERS frame each way with the secret, the
//! protocol version and a timeout, and trailers; with P partitions that is P such calls per
//! peer per round of replication. On the stream a call is one `AppendCall` in a DATA frame, and
//! the calls handed to the link while it was writing the previous batch leave together in one
//! `AppendBatch` (the coalescing TiKV and CockroachDB do for their Raft messages).
//!
//! The link task opens the stream on the first call (an idle peer costs nothing), writes
//! batches, and hands each answer to the caller waiting for its id. A broken stream fails every
//! call in flight as unreachable (openraft backs off and retries) and the next call opens a new
//! one; the tonic channel underneath reconnects by itself. Each caller bounds its own wait with
//! the TTL openraft gives it, exactly as it bounded a unary call.

use std::collections::HashMap;

use chat_proto::protocol::is_protocol_mismatch;
use chat_proto::raft::{self as pb, raft_service_client::RaftServiceClient};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::auth::with_secret;
use crate::types::NodeId;

/// Most calls packed into one stream message.
const MAX_BATCH: usize = 256;

/// Why a call on the link got no answer from the peer's Raft.
#[derive(Debug, Clone)]
pub enum LinkError {
    /// The peer could not be reached or the stream broke: try again later.
    Unreachable(String),
    /// The peer refused this node's protocol version: retrying cannot help until an upgrade.
    ProtocolRefused(String),
    /// The peer answered, but not with a Raft reply (unknown partition, malformed request).
    Refused(String),
}

type Answer = Result<pb::AppendEntriesReply, LinkError>;

struct Call {
    request: pb::AppendEntriesRequest,
    answer: oneshot::Sender<Answer>,
}

/// The handle the partitions' network clients share; cheap to clone.
#[derive(Clone)]
pub struct PeerLink {
    calls: mpsc::UnboundedSender<Call>,
}

impl PeerLink {
    /// Start the link task for the peer `target` behind `client`.
    pub fn start(
        target: NodeId,
        client: RaftServiceClient<Channel>,
        secret: MetadataValue<Ascii>,
    ) -> PeerLink {
        let (calls, rx) = mpsc::unbounded_channel();
        let task = LinkTask {
            target,
            client,
            secret,
            next_id: 0,
            protocol_refused: false,
        };
        tokio::spawn(task.run(rx));
        PeerLink { calls }
    }

    /// Send one AppendEntries and wait for its answer (the caller bounds the wait).
    pub async fn append(&self, request: pb::AppendEntriesRequest) -> Answer {
        let (answer, rx) = oneshot::channel();
        self.calls
            .send(Call { request, answer })
            .map_err(|_| LinkError::Unreachable("the replication link has stopped".into()))?;
        rx.await.unwrap_or_else(|_| {
            Err(LinkError::Unreachable(
                "the replication stream broke before the answer".into(),
            ))
        })
    }
}

struct LinkTask {
    target: NodeId,
    client: RaftServiceClient<Channel>,
    secret: MetadataValue<Ascii>,
    next_id: u64,
    /// Whether the peer's refusal of our protocol was logged already (once per link).
    protocol_refused: bool,
}

/// Calls sent on the current stream and not answered yet.
type Pending = HashMap<u64, oneshot::Sender<Answer>>;

impl LinkTask {
    async fn run(mut self, mut calls: mpsc::UnboundedReceiver<Call>) {
        // One stream per iteration; it is opened when a call comes.
        while let Some(first) = calls.recv().await {
            let mut pending = Pending::new();
            let (batches, outgoing) = mpsc::channel::<pb::AppendBatch>(16);
            let batch = self.pack(first, &mut calls, &mut pending);
            // Queue the first batch before the stream exists: it leaves with the request.
            let _ = batches.try_send(batch);
            let request = with_secret(ReceiverStream::new(outgoing), &self.secret);
            let mut answers = match self.client.replicate(request).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    self.fail(pending, &status);
                    continue;
                }
            };
            let broke = loop {
                tokio::select! {
                    call = calls.recv() => {
                        let Some(call) = call else { return };
                        let batch = self.pack(call, &mut calls, &mut pending);
                        if batches.send(batch).await.is_err() {
                            break tonic::Status::unavailable("the replication stream closed");
                        }
                    }
                    message = answers.message() => match message {
                        Ok(Some(m)) => answer(m, &mut pending),
                        Ok(None) => break tonic::Status::unavailable("the peer ended the replication stream"),
                        Err(status) => break status,
                    },
                }
            };
            self.fail(pending, &broke);
        }
    }

    /// `first` and every call already queued behind it, as one batch.
    fn pack(
        &mut self,
        first: Call,
        calls: &mut mpsc::UnboundedReceiver<Call>,
        pending: &mut Pending,
    ) -> pb::AppendBatch {
        // Callers that gave up (their TTL ran out) leave entries only a reply would clear.
        if pending.len() > 4 * MAX_BATCH {
            pending.retain(|_, waiter| !waiter.is_closed());
        }
        let mut batch = pb::AppendBatch {
            calls: Vec::with_capacity(1),
        };
        let mut next = Some(first);
        while let Some(call) = next {
            self.next_id += 1;
            pending.insert(self.next_id, call.answer);
            batch.calls.push(pb::AppendCall {
                id: self.next_id,
                request: Some(call.request),
            });
            next = if batch.calls.len() < MAX_BATCH {
                calls.try_recv().ok()
            } else {
                None
            };
        }
        batch
    }

    /// Every call in flight fails with why the stream broke.
    fn fail(&mut self, pending: Pending, status: &tonic::Status) {
        let error = if is_protocol_mismatch(status) {
            if !std::mem::replace(&mut self.protocol_refused, true) {
                tracing::error!(
                    target = self.target,
                    "replication refused: {}",
                    status.message()
                );
            }
            LinkError::ProtocolRefused(status.message().to_string())
        } else {
            LinkError::Unreachable(format!(
                "replication stream to node {}: {status}",
                self.target
            ))
        };
        for (_, waiter) in pending {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

fn answer(answers: pb::AppendAnswers, pending: &mut Pending) {
    for a in answers.answers {
        let Some(waiter) = pending.remove(&a.id) else {
            continue; // its caller gave up, or a confused peer: nobody to tell
        };
        let result = match a.answer {
            Some(pb::append_answer::Answer::Reply(reply)) => Ok(reply),
            Some(pb::append_answer::Answer::Refused(why)) => Err(LinkError::Refused(why)),
            None => Err(LinkError::Refused("an empty answer".into())),
        };
        let _ = waiter.send(result);
    }
}
