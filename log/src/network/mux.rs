//! Many calls on one long-lived gRPC stream: the node-to-node paths that carry a call per
//! message (Raft's AppendEntries, commands forwarded to a partition leader) use it instead of a
//! unary RPC each.
//!
//! Why: a unary gRPC call costs an HTTP/2 stream, a HEADERS frame each way (the secret, the
//! protocol version, a timeout) and trailers. On a stream a call is one entry of a DATA frame,
//! and the calls handed over while the previous batch was being written leave together in one
//! message (the coalescing TiKV and CockroachDB do for their Raft messages).
//!
//! The client side ([`Mux`]) is a task per peer: it opens the stream on the first call (an idle
//! peer costs nothing), writes batches, and hands each answer to the caller waiting for its id.
//! A broken stream fails every call in flight as unreachable and the next call opens a new one;
//! the tonic channel underneath reconnects by itself. Callers bound their own waits. The server
//! side ([`answer_stream`]) runs each call on its own task, so one slow call (one partition)
//! never holds up the others, and packs the answers that are ready together.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use chat_proto::protocol::is_protocol_mismatch;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Status, Streaming};

/// Most calls (or answers) packed into one stream message.
pub const MAX_BATCH: usize = 256;

/// What one kind of multiplexed stream sends and receives.
pub trait MuxProtocol: Send + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// One outgoing stream message.
    type Batch: Send + 'static;
    /// One incoming stream message.
    type Answers: Send + 'static;

    /// Name for logs and errors ("replication", "forwarding").
    const NAME: &'static str;

    fn batch(calls: Vec<(u64, Self::Request)>) -> Self::Batch;
    /// The (id, answer) pairs of a message; an answer that is not a reply is the peer's refusal.
    fn answers(message: Self::Answers) -> Vec<(u64, Result<Self::Reply, Status>)>;
    /// Open a stream that sends `batches`.
    fn open(
        &mut self,
        batches: ReceiverStream<Self::Batch>,
    ) -> impl Future<Output = Result<Streaming<Self::Answers>, Status>> + Send;
}

/// Why a call got no reply.
#[derive(Debug, Clone)]
pub enum MuxError {
    /// The peer could not be reached or the stream broke: try again later.
    Unreachable(String),
    /// The peer refused this node's protocol version: retrying cannot help until an upgrade.
    ProtocolRefused(String),
    /// The peer answered the call with an error.
    Refused(Status),
}

type Answer<P> = Result<<P as MuxProtocol>::Reply, MuxError>;

struct Call<P: MuxProtocol> {
    request: P::Request,
    answer: oneshot::Sender<Answer<P>>,
}

/// The handle callers share; cheap to clone.
pub struct Mux<P: MuxProtocol> {
    calls: mpsc::UnboundedSender<Call<P>>,
}

impl<P: MuxProtocol> Clone for Mux<P> {
    fn clone(&self) -> Self {
        Mux {
            calls: self.calls.clone(),
        }
    }
}

impl<P: MuxProtocol> Mux<P> {
    /// Start the task that talks to `peer` (a name for logs) through `protocol`.
    pub fn start(peer: String, protocol: P) -> Mux<P> {
        let (calls, rx) = mpsc::unbounded_channel();
        let task = MuxTask {
            peer,
            protocol,
            next_id: 0,
            protocol_refused: false,
        };
        tokio::spawn(task.run(rx));
        Mux { calls }
    }

    /// Send one call and wait for its answer (the caller bounds the wait).
    pub async fn call(&self, request: P::Request) -> Answer<P> {
        let (answer, rx) = oneshot::channel();
        self.calls
            .send(Call { request, answer })
            .map_err(|_| MuxError::Unreachable(format!("the {} task has stopped", P::NAME)))?;
        rx.await.unwrap_or_else(|_| {
            Err(MuxError::Unreachable(format!(
                "the {} stream broke before the answer",
                P::NAME
            )))
        })
    }
}

struct MuxTask<P> {
    peer: String,
    protocol: P,
    next_id: u64,
    /// Whether the peer's refusal of our protocol was logged already (once per peer).
    protocol_refused: bool,
}

/// Calls sent on the current stream and not answered yet.
type Pending<P> = HashMap<u64, oneshot::Sender<Answer<P>>>;

impl<P: MuxProtocol> MuxTask<P> {
    async fn run(mut self, mut calls: mpsc::UnboundedReceiver<Call<P>>) {
        // One stream per iteration; it is opened when a call comes.
        while let Some(first) = calls.recv().await {
            let mut pending = Pending::<P>::new();
            let (batches, outgoing) = mpsc::channel::<P::Batch>(16);
            let batch = self.pack(first, &mut calls, &mut pending);
            // Queued before the stream exists: it leaves with the request.
            let _ = batches.try_send(batch);
            let mut answers = match self.protocol.open(ReceiverStream::new(outgoing)).await {
                Ok(stream) => stream,
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
                            break Status::unavailable("the stream closed");
                        }
                    }
                    message = answers.message() => match message {
                        Ok(Some(m)) => answer::<P>(m, &mut pending),
                        Ok(None) => break Status::unavailable("the peer ended the stream"),
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
        first: Call<P>,
        calls: &mut mpsc::UnboundedReceiver<Call<P>>,
        pending: &mut Pending<P>,
    ) -> P::Batch {
        // Callers that gave up (their deadline passed) leave entries only an answer would clear.
        if pending.len() > 4 * MAX_BATCH {
            pending.retain(|_, waiter| !waiter.is_closed());
        }
        let mut batch = Vec::with_capacity(1);
        let mut next = Some(first);
        while let Some(call) = next {
            // A caller that gave up while the stream was stuck must not have its stale call
            // delivered late (a forwarded command it will retry, an old AppendEntries).
            if !call.answer.is_closed() {
                self.next_id += 1;
                pending.insert(self.next_id, call.answer);
                batch.push((self.next_id, call.request));
            }
            next = if batch.len() < MAX_BATCH {
                calls.try_recv().ok()
            } else {
                None
            };
        }
        P::batch(batch)
    }

    /// Every call in flight fails with why the stream broke.
    fn fail(&mut self, pending: Pending<P>, status: &Status) {
        let error = if is_protocol_mismatch(status) {
            if !std::mem::replace(&mut self.protocol_refused, true) {
                tracing::error!(peer = %self.peer, "{} refused: {}", P::NAME, status.message());
            }
            MuxError::ProtocolRefused(status.message().to_string())
        } else {
            MuxError::Unreachable(format!("{} stream to {}: {status}", P::NAME, self.peer))
        };
        for (_, waiter) in pending {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

fn answer<P: MuxProtocol>(message: P::Answers, pending: &mut Pending<P>) {
    for (id, result) in P::answers(message) {
        // Absent: its caller gave up.
        if let Some(waiter) = pending.remove(&id) {
            let _ = waiter.send(result.map_err(MuxError::Refused));
        }
    }
}

/// The server side: every call of every incoming message answered by `handle` on its own task,
/// the answers ready together packed by `pack`. The answer stream ends once the peer has closed
/// its side and every call is answered; a malformed message ends it early (the peer reopens).
pub fn answer_stream<Batch, Call, Answer, Answers, H, Fut>(
    mut incoming: Streaming<Batch>,
    calls: fn(Batch) -> Vec<Call>,
    handle: H,
    pack: fn(Vec<Answer>) -> Answers,
) -> Pin<Box<dyn Stream<Item = Result<Answers, Status>> + Send>>
where
    Batch: Send + 'static,
    Call: Send + 'static,
    Answer: Send + 'static,
    Answers: Send + 'static,
    H: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let (answers, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(batch)) = incoming.message().await {
            for call in calls(batch) {
                let (handle, answers) = (handle.clone(), answers.clone());
                tokio::spawn(async move {
                    let _ = answers.send(handle(call).await);
                });
            }
        }
    });
    Box::pin(
        UnboundedReceiverStream::new(outgoing)
            .ready_chunks(MAX_BATCH)
            .map(move |answers| Ok(pack(answers))),
    )
}
