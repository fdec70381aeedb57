//! `chat.v1.Sequencer` over gRPC: how other nodes forward commands to a partition's leader, and
//! how tests and the benchmark drive the write path from outside the process. Behind the
//! cluster secret (it is internal: devices will talk to the gateway).

use std::sync::Arc;

use std::pin::Pin;

use chat_log::network::mux::answer_stream;
use chat_log::PartitionId;
use chat_proto::chat_v1::forward_answer::Answer;
use chat_proto::chat_v1::sequencer_server::{Sequencer as SequencerRpc, SequencerServer};
use chat_proto::chat_v1::{
    self as pb, CommandReply, HistoryReply, HistoryRequest, ReadIndexReply, ReadIndexRequest,
    SubmitRequest,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{refusal, SeqError};
use crate::sequencer::Sequencer;
use chat_model::ids::{ChatId, ChatSeq};

pub struct SequencerService {
    sequencer: Arc<Sequencer>,
}

impl SequencerService {
    pub fn server(sequencer: Arc<Sequencer>) -> SequencerServer<SequencerService> {
        // A forwarding stream's message carries up to `mux::MAX_BATCH` calls: far past tonic's
        // 4 MiB default once sends are big or batched.
        SequencerServer::new(SequencerService { sequencer })
            .max_decoding_message_size(chat_log::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl SequencerRpc for SequencerService {
    type ForwardStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardAnswers, Status>> + Send>>;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let sequencer = self.sequencer.clone();
        Ok(Response::new(answer_stream(
            request.into_inner(),
            |batch| batch.calls,
            move |call: pb::ForwardCall| {
                let sequencer = sequencer.clone();
                async move {
                    let answer = match call.command {
                        None => Answer::Refused(refusal(Status::invalid_argument(
                            "a forwarded call needs a command",
                        ))),
                        Some(command) => match sequencer.submit(command, true).await {
                            Ok(reply) => Answer::Reply(reply),
                            Err(e) => Answer::Refused(refusal(e.into())),
                        },
                    };
                    pb::ForwardAnswer {
                        id: call.id,
                        answer: Some(answer),
                    }
                }
            },
            |answers| pb::ForwardAnswers { answers },
        )))
    }

    async fn grant_sends(
        &self,
        request: Request<pb::GrantSendsRequest>,
    ) -> Result<Response<pb::GrantSendsReply>, Status> {
        let r = request.into_inner();
        let reply = self.sequencer.grant_sends(r.user_id, r.want)?;
        Ok(Response::new(reply))
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let SubmitRequest { command, forwarded } = request.into_inner();
        let command =
            command.ok_or_else(|| Status::invalid_argument("SubmitRequest needs a command"))?;
        let reply = self.sequencer.submit(command, forwarded).await?;
        Ok(Response::new(reply))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let r = request.into_inner();
        let reply = self
            .sequencer
            .history(
                ChatId(r.chat_id),
                ChatSeq(r.after_seq),
                ChatSeq::bound(r.before_seq),
                r.limit,
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let p = PartitionId(request.into_inner().partition);
        let offset = self
            .sequencer
            .node()
            .read_index(p)
            .await
            .map_err(SeqError::from)?;
        Ok(Response::new(ReadIndexReply { offset: offset.0 }))
    }
}
