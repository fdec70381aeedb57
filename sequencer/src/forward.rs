//! Reaching the leader of a partition on another node: one `chat.v1.Sequencer` client per peer
//! address (behind the cluster secret, from this node's bind address), forwarding a command to
//! the leader once (on the peer's `Forward` stream, shared by every forwarded command; see
//! `chat_log::network::mux`), and the read index (the leader's, asked of it where it is).
//!
//! Used by [`Sequencer`](crate::Sequencer), which decides when to forward; uses nothing of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_log::network::mux::{Mux, MuxError, MuxProtocol};
use chat_log::{LogNode, LogOffset, NodeId, PartitionId, ProposeError};
use chat_proto::chat_v1::sequencer_client::SequencerClient;
use chat_proto::chat_v1::{self as pb};
use chat_proto::{AttachSecret, LeaderHint};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::error::SeqError;

type ForwardClient = SequencerClient<InterceptedService<Channel, AttachSecret>>;

/// The longest one forwarded command waits for the leader's answer before the sequencer asks
/// again (an answer this late is from a leader that is slow, or cut off and being replaced).
const FORWARD_TRY: Duration = Duration::from_secs(1);

/// The leader's address when another node leads the partition.
pub(crate) fn leader_elsewhere(e: &ProposeError, me: NodeId) -> Option<String> {
    match e {
        ProposeError::NotLeader(LeaderHint {
            leader_id: Some(id),
            leader_addr: Some(addr),
            ..
        }) if *id != me => Some(addr.clone()),
        _ => None,
    }
}

/// This node's way to the partition leaders on other nodes.
pub(crate) struct Forwarder {
    node: Arc<LogNode>,
    secret: AttachSecret,
    peers: Mutex<HashMap<String, ForwardClient>>,
    streams: Mutex<HashMap<String, Mux<Forwarding>>>,
}

/// `Forward` streams to one leader's node.
struct Forwarding(ForwardClient);

impl MuxProtocol for Forwarding {
    type Request = pb::Command;
    type Reply = pb::CommandReply;
    type Batch = pb::ForwardBatch;
    type Answers = pb::ForwardAnswers;
    const NAME: &'static str = "forwarding";

    fn batch(calls: Vec<(u64, pb::Command)>) -> pb::ForwardBatch {
        pb::ForwardBatch {
            calls: calls
                .into_iter()
                .map(|(id, command)| pb::ForwardCall {
                    id,
                    command: Some(command),
                })
                .collect(),
        }
    }

    fn answers(message: pb::ForwardAnswers) -> Vec<(u64, Result<pb::CommandReply, Status>)> {
        use pb::forward_answer::Answer;
        message
            .answers
            .into_iter()
            .map(|a| {
                let result = match a.answer {
                    Some(Answer::Reply(reply)) => Ok(reply),
                    Some(Answer::Refused(r)) => Err(Status::with_details(
                        tonic::Code::from(r.code),
                        r.message,
                        r.details.into(),
                    )),
                    None => Err(Status::internal("the leader sent an empty answer")),
                };
                (a.id, result)
            })
            .collect()
    }

    async fn open(
        &mut self,
        batches: ReceiverStream<pb::ForwardBatch>,
    ) -> Result<Streaming<pb::ForwardAnswers>, Status> {
        Ok(self.0.forward(batches).await?.into_inner())
    }
}

impl Forwarder {
    pub(crate) fn new(node: Arc<LogNode>, secret: AttachSecret) -> Self {
        Forwarder {
            node,
            secret,
            peers: Mutex::default(),
            streams: Mutex::default(),
        }
    }

    /// Submit `command` to the leader at `addr`, marked forwarded (the leader does not forward
    /// it again); the leader's answer.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        command: &pb::Command,
        deadline: Instant,
    ) -> Result<pb::CommandReply, Status> {
        let stream = self.stream(addr)?;
        // One try is bounded below the whole deadline: a leader cut off from its followers
        // keeps taking commands it cannot commit, and the caller should ask again (by then the
        // others have elected a new leader) rather than wait on it until the deadline.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), FORWARD_TRY);
        match tokio::time::timeout(wait, stream.call(command.clone())).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(MuxError::Refused(status))) => Err(status),
            Ok(Err(MuxError::Unreachable(why))) => Err(Status::unavailable(why)),
            Ok(Err(MuxError::ProtocolRefused(why))) => Err(Status::failed_precondition(why)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the leader at {addr} did not answer within {wait:?}"
            ))),
        }
    }

    fn stream(&self, addr: &str) -> Result<Mux<Forwarding>, Status> {
        let mut streams = self.streams.lock().expect("stream map lock");
        if let Some(s) = streams.get(addr) {
            return Ok(s.clone());
        }
        let stream = Mux::start(addr.to_string(), Forwarding(self.peer(addr)?));
        streams.insert(addr.to_string(), stream.clone());
        Ok(stream)
    }

    fn peer(&self, addr: &str) -> Result<ForwardClient, Status> {
        let mut peers = self.peers.lock().expect("peer map lock");
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad leader address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // The forwarding stream is long-lived: a leader cut off without closing the
            // connection fails it within seconds, so later commands open a fresh stream rather
            // than each waiting out FORWARD_TRY on a dead one.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3));
        let channel = self.node.dialer().lazy(channel, self.node.bind_ip());
        let client = SequencerClient::with_interceptor(channel, self.secret.clone());
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Ask the node at `addr` for tokens of a user's send rate (see `send_rate.rs`).
    pub(crate) async fn grant_sends(
        &self,
        addr: &str,
        request: pb::GrantSendsRequest,
        timeout: Duration,
    ) -> Result<pb::GrantSendsReply, Status> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let mut client = self.peer(addr)?;
        match tokio::time::timeout(timeout, client.grant_sends(request)).await {
            Ok(reply) => Ok(reply?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{addr} did not answer within {timeout:?}"
            ))),
        }
    }

    /// See [`Sequencer::read_index`](crate::Sequencer::read_index); `timeout` bounds the wait.
    pub(crate) async fn read_index(
        &self,
        p: PartitionId,
        timeout: Duration,
    ) -> Result<LogOffset, SeqError> {
        // Without a quorum the leader cannot confirm its term; do not wait for ever.
        let local = tokio::time::timeout(timeout, self.node.read_index(p))
            .await
            .map_err(|_| SeqError::Unavailable {
                message: format!("no quorum confirmed the leader of {p} in time"),
                hint: None,
            })?;
        let offset = match local {
            Ok(offset) => offset,
            Err(e) => match leader_elsewhere(&e, self.node.node_id()) {
                Some(addr) => {
                    let mut request = tonic::Request::new(pb::ReadIndexRequest { partition: p.0 });
                    request.set_timeout(timeout);
                    let reply = self
                        .peer(&addr)
                        .map_err(|s| SeqError::from_status(&s))?
                        .read_index(request)
                        .await
                        .map_err(|s| SeqError::from_status(&s))?;
                    LogOffset(reply.into_inner().offset)
                }
                None => return Err(e.into()),
            },
        };
        Ok(offset)
    }
}
