//! Reaching the leader of a partition on another node: one `chat.v1.Sequencer` client per peer
//! address (behind the cluster secret, from this node's bind address), forwarding a command to
//! the leader once, and the read barrier (the leader's Raft read index, then a wait for the
//! local apply).
//!
//! Used by [`Sequencer`](crate::Sequencer), which decides when to forward; uses nothing of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_log::{LogNode, LogOffset, NodeId, PartitionId, ProposeError};
use chat_proto::chat_v1::sequencer_client::SequencerClient;
use chat_proto::chat_v1::{self as pb};
use chat_proto::{AttachSecret, LeaderHint};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::error::SeqError;

type ForwardClient = SequencerClient<InterceptedService<Channel, AttachSecret>>;

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
}

impl Forwarder {
    pub(crate) fn new(node: Arc<LogNode>, secret: AttachSecret) -> Self {
        Forwarder {
            node,
            secret,
            peers: Mutex::default(),
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
        let mut client = self.peer(addr)?;
        let mut request = tonic::Request::new(pb::SubmitRequest {
            command: Some(command.clone()),
            forwarded: true,
        });
        request.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        );
        client
            .submit(request)
            .await
            .map(tonic::Response::into_inner)
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
            .local_address(self.node.bind_ip())
            .connect_lazy();
        let client = SequencerClient::with_interceptor(channel, self.secret.clone());
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// See [`Sequencer::read_barrier`](crate::Sequencer::read_barrier); `timeout` bounds each
    /// wait.
    pub(crate) async fn read_barrier(
        &self,
        p: PartitionId,
        timeout: Duration,
    ) -> Result<(), SeqError> {
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
        if self.node.wait_for_offset(p, offset, timeout).await? {
            Ok(())
        } else {
            Err(SeqError::Unavailable {
                message: format!("this node's replica of {p} is behind offset {offset}"),
                hint: None,
            })
        }
    }
}
