//! Bad input on the internal and admin APIs gets a clear gRPC status and the node keeps serving:
//! missing or wrong cluster secret, malformed Raft payloads, unknown partitions, empty and
//! oversize appends.

mod common;

use std::time::Duration;

use chat_proto::admin::{AppendRequest, ReadEventsRequest};
use chat_proto::raft::raft_service_client::RaftServiceClient;
use chat_proto::raft::RaftRequest;
use chat_proto::{connect_admin, AttachSecret};
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

fn request(partition: u32, payload: &[u8]) -> RaftRequest {
    RaftRequest {
        partition,
        payload: payload.to_vec(),
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
        .vote(request(0, b""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing cluster secret"), "{err}");
    let err = raft_client(&addr, Some("not-the-secret"))
        .await
        .append_entries(request(0, b""))
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

    // Right secret, malformed payloads and unknown partitions.
    let mut raft = raft_client(&addr, Some(common::SECRET)).await;
    for garbage in [
        &b""[..],
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"definitely not bincode",
    ] {
        let err = raft.append_entries(request(0, garbage)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("malformed payload"), "{err}");
        let err = raft
            .install_snapshot(request(1, garbage))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    let err = raft.vote(request(99, b"")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("partition 99 does not exist"),
        "{err}"
    );

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
