//! Bad input on the internal and admin APIs gets a clear gRPC status and the node keeps serving:
//! missing or wrong cluster secret, a peer of another protocol version, malformed Raft requests,
//! unknown partitions, empty and oversize appends.

use crate::common;

use std::time::Duration;

use chat_proto::admin::{AppendRequest, ReadEventsRequest};
use chat_proto::raft::raft_service_client::RaftServiceClient;
use chat_proto::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use chat_proto::{connect_admin, AttachSecret, PROTOCOL_HEADER};
use common::Cluster;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::Code;

/// Attaches the secret when there is one.
#[derive(Clone)]
struct MaybeSecret(Option<AttachSecret>);

impl Interceptor for MaybeSecret {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(s) => s.call(request),
            None => Ok(request),
        }
    }
}

async fn raft_client(
    addr: &str,
    secret: Option<&str>,
) -> RaftServiceClient<InterceptedService<Channel, MaybeSecret>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RaftServiceClient::with_interceptor(
        channel,
        MaybeSecret(secret.map(|s| AttachSecret::new(s).unwrap())),
    )
}

fn vote(partition: u32) -> VoteRequest {
    VoteRequest {
        partition,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_internal_and_admin_requests_are_refused_clearly() {
    let cluster = Cluster::start(1, 2);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;
    let addr = cluster.node(1).addr.clone();

    // No secret, wrong secret.
    let err = raft_client(&addr, None)
        .await
        .vote(vote(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing cluster secret"), "{err}");
    let err = raft_client(&addr, Some("not-the-secret"))
        .await
        .append_entries(AppendEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("wrong cluster secret"), "{err}");
    let mut admin_wrong = connect_admin(&addr, "not-the-secret").await.unwrap();
    let err = admin_wrong
        .status(chat_proto::admin::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Right secret, requests missing what Raft needs, bytes that are not protobuf, unknown
    // partitions.
    let mut raft = raft_client(&addr, Some(common::SECRET)).await;
    let err = raft
        .append_entries(AppendEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("malformed payload"), "{err}");
    assert!(err.message().contains("missing vote"), "{err}");
    let err = raft
        .install_snapshot(InstallSnapshotRequest {
            partition: 1,
            vote: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("missing snapshot meta"), "{err}");
    for garbage in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        b"definitely not protobuf",
    ] {
        let err = raw_raft_call(&addr, "Vote", garbage.to_vec()).await;
        assert!(
            matches!(err.code(), Code::Internal | Code::InvalidArgument),
            "{err:?}"
        );
        assert!(err.message().contains("decode"), "{err:?}");
    }
    let err = raft.vote(vote(99)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("partition 99 does not exist (the cluster has"),
        "{err}"
    );
    // The same on the Replicate stream: each bad call gets its own refusal, by id, and the
    // stream goes on answering.
    let calls = [
        (7, AppendEntriesRequest::default()),
        (
            8,
            AppendEntriesRequest {
                partition: 99,
                vote: Some(Default::default()),
                ..Default::default()
            },
        ),
    ];
    let batch = chat_proto::raft::AppendBatch {
        calls: calls
            .into_iter()
            .map(|(id, request)| chat_proto::raft::AppendCall {
                id,
                request: Some(request),
            })
            .chain([chat_proto::raft::AppendCall {
                id: 9,
                request: None,
            }])
            .collect(),
    };
    let mut answers = raft
        .replicate(futures::stream::iter([batch]))
        .await
        .unwrap()
        .into_inner();
    let mut refused = std::collections::BTreeMap::new();
    while let Some(message) = answers.message().await.unwrap() {
        for a in message.answers {
            match a.answer {
                Some(chat_proto::raft::append_answer::Answer::Refused(why)) => {
                    refused.insert(a.id, why);
                }
                other => panic!("call {} was not refused: {other:?}", a.id),
            }
        }
    }
    assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [7, 8, 9]);
    assert!(refused[&7].contains("missing vote"), "{refused:?}");
    assert!(
        refused[&8].contains("partition 99 does not exist"),
        "{refused:?}"
    );
    assert!(refused[&9].contains("without a request"), "{refused:?}");

    // Admin: unknown partition, empty and oversize appends.
    let mut admin = cluster.admin(1).await;
    let err = admin
        .append(AppendRequest {
            partition: 7,
            records: vec![b"x".to_vec()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .append(AppendRequest {
            partition: 0,
            records: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = admin
        .append(AppendRequest {
            partition: 0,
            records: vec![vec![0u8; 2 * 1024 * 1024]],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{err}");
    let err = admin
        .read_events(ReadEventsRequest {
            partition: 5,
            from_offset: 1,
            limit: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The sequencer service: missing command, unknown chat, wrong secret — each a clear code.
    let mut seq = cluster.sequencer(1);
    let err = seq
        .submit(chat_proto::chat_v1::SubmitRequest {
            command: None,
            forwarded: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let send = chat_proto::chat_v1::Command {
        kind: Some(chat_proto::chat_v1::command::Kind::SendMessage(
            chat_proto::chat_v1::SendMessage {
                chat_id: 4242,
                sender_user: 1,
                sender_device: 1,
                client_msg_id: "m".into(),
                payload: b"hello?".to_vec(),
                media: vec![],
            },
        )),
    };
    let err = seq
        .submit(chat_proto::chat_v1::SubmitRequest {
            command: Some(send),
            forwarded: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("chat 4242 does not exist"), "{err}");
    let err = seq
        .history(chat_proto::chat_v1::HistoryRequest {
            chat_id: 4242,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut wrong = chat_proto::chat_v1::sequencer_client::SequencerClient::with_interceptor(
        channel,
        AttachSecret::new("not-the-secret").unwrap(),
    );
    let err = wrong
        .history(chat_proto::chat_v1::HistoryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The node still serves.
    let reply = admin
        .append(AppendRequest {
            partition: 0,
            records: vec![b"still alive".to_vec()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.offsets, vec![1]);
}

/// Call Raft method `method` with `bytes` as the request message; the status it fails with.
async fn raw_raft_call(addr: &str, method: &str, bytes: Vec<u8>) -> tonic::Status {
    // The node answers a request it cannot decode at once, and may reset the stream before the
    // client has finished writing it: hyper then reports the reset (a transport error, "broken
    // pipe") instead of the answer. That race is the client's, not the node's: ask again.
    for _ in 0..5 {
        let status = raw_raft_call_once(addr, method, bytes.clone()).await;
        if !(status.code() == tonic::Code::Unknown && status.message() == "transport error") {
            return status;
        }
    }
    panic!("no answer but transport errors from {addr} for {method}");
}

async fn raw_raft_call_once(addr: &str, method: &str, bytes: Vec<u8>) -> tonic::Status {
    let mut grpc = common::raw_grpc(addr).await;
    let path: http::uri::PathAndQuery = format!("/chat.raft.v1.RaftService/{method}")
        .parse()
        .unwrap();
    let mut request = tonic::Request::new(bytes);
    AttachSecret::new(common::SECRET)
        .unwrap()
        .call(tonic::Request::new(()))
        .unwrap()
        .metadata()
        .clone_into(request.metadata_mut());
    grpc.unary(
        request,
        path,
        common::RawCodec::<chat_proto::raft::VoteReply>::default(),
    )
    .await
    .unwrap_err()
}

/// Sends the right secret and a chosen protocol version (none: no header).
#[derive(Clone)]
struct Protocol(Option<&'static str>);

impl Interceptor for Protocol {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = AttachSecret::new(common::SECRET).unwrap().call(request)?;
        match self.0 {
            Some(v) => {
                request
                    .metadata_mut()
                    .insert(PROTOCOL_HEADER, v.parse().unwrap());
            }
            None => {
                request.metadata_mut().remove(PROTOCOL_HEADER);
            }
        }
        Ok(request)
    }
}

/// A peer of another release (protocol 0: before versions were sent; 99: far newer) is refused
/// on every internal service with FAILED_PRECONDITION and a PROTOCOL_MISMATCH error detail,
/// before its request is looked at; the admin API does not care; the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_protocol_is_refused() {
    use tonic_types::StatusExt;

    let cluster = Cluster::start(1, 2);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;
    let addr = cluster.node(1).addr.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for version in [None, Some("0"), Some("99")] {
        let mut raft = RaftServiceClient::with_interceptor(channel.clone(), Protocol(version));
        let mut seq = chat_proto::chat_v1::sequencer_client::SequencerClient::with_interceptor(
            channel.clone(),
            Protocol(version),
        );
        let refusals = [
            raft.vote(vote(0)).await.unwrap_err(),
            seq.history(chat_proto::chat_v1::HistoryRequest::default())
                .await
                .unwrap_err(),
        ];
        for err in refusals {
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            let peer = version.unwrap_or("0");
            assert!(
                err.message()
                    .contains(&format!("peer speaks chat protocol {peer};")),
                "{err:?}"
            );
            assert!(err.message().contains("accepts 1..=1"), "{err:?}");
            let info = err.get_details_error_info().expect("an ErrorInfo detail");
            assert_eq!(info.reason, "PROTOCOL_MISMATCH");
            assert_eq!(info.domain, "chat");
            assert_eq!(info.metadata["peer"], peer);
        }
        // The admin API checks the secret only.
        let mut admin = chat_proto::admin::admin_client::AdminClient::with_interceptor(
            channel.clone(),
            Protocol(version),
        );
        admin
            .status(chat_proto::admin::StatusRequest {})
            .await
            .unwrap();
    }
    // This release's own version passes, and the node still leads its partitions.
    let mut raft = raft_client(&addr, Some(common::SECRET)).await;
    let err = raft.vote(vote(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    cluster.wait_for_leaders(1, Duration::from_secs(5)).await;
}
