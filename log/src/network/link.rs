//! The replication link to one peer node: the AppendEntries calls of every partition this node
//! leads and the peer follows travel, packed into batches, on one long-lived `Replicate` stream
//! (see [`super::mux`] for why and how).

use chat_proto::raft::{self as pb, raft_service_client::RaftServiceClient};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::auth::{address_to, with_secret};
use super::mux::{Mux, MuxProtocol};
use crate::types::NodeId;

/// The handle the partitions' network clients share.
pub type PeerLink = Mux<Replication>;

/// `Replicate` streams to one peer.
pub struct Replication {
    target: NodeId,
    client: RaftServiceClient<Channel>,
    secret: MetadataValue<Ascii>,
}

/// Start the replication link to `target` behind `client`.
pub fn start(
    target: NodeId,
    client: RaftServiceClient<Channel>,
    secret: MetadataValue<Ascii>,
) -> PeerLink {
    let replication = Replication {
        target,
        client,
        secret,
    };
    Mux::start(format!("node {target}"), replication)
}

impl MuxProtocol for Replication {
    type Request = pb::AppendEntriesRequest;
    type Reply = pb::AppendEntriesReply;
    type Batch = pb::AppendBatch;
    type Answers = pb::AppendAnswers;
    const NAME: &'static str = "replication";

    fn batch(calls: Vec<(u64, pb::AppendEntriesRequest)>) -> pb::AppendBatch {
        pb::AppendBatch {
            calls: calls
                .into_iter()
                .map(|(id, request)| pb::AppendCall {
                    id,
                    request: Some(request),
                })
                .collect(),
        }
    }

    fn answers(message: pb::AppendAnswers) -> Vec<(u64, Result<pb::AppendEntriesReply, Status>)> {
        use pb::append_answer::Answer;
        message
            .answers
            .into_iter()
            .map(|a| {
                let result = match a.answer {
                    Some(Answer::Reply(reply)) => Ok(reply),
                    Some(Answer::Refused(why)) => Err(Status::invalid_argument(why)),
                    None => Err(Status::invalid_argument("an empty answer")),
                };
                (a.id, result)
            })
            .collect()
    }

    async fn open(
        &mut self,
        batches: ReceiverStream<pb::AppendBatch>,
    ) -> Result<Streaming<pb::AppendAnswers>, Status> {
        let mut request = with_secret(batches, &self.secret);
        address_to(&mut request, self.target);
        Ok(self.client.replicate(request).await?.into_inner())
    }
}
