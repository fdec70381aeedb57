//! The `.proto` contracts of the chat system, compiled with tonic/prost.
//!
//! - [`raft`]: node-to-node Raft RPC, one connection per peer multiplexed by partition id.
//! - [`log`]: the records the partitioned log stores and serves.
//! - [`admin`]: the node admin API behind `chatctl`, the benchmark and the tests.
//! - [`chat_v1`]: chat commands, events and replies, the sequencer's internal service, and the
//!   client API devices use (`chat.v1.Chat`).
//! - [`token`]: the device bearer token format.
//! - [`leader`]: [`LeaderHint`], where a partition's leader is, on a "not the leader" answer.
//! - [`protocol`]: the node-to-node protocol version and its check.
//! - [`codec`]: the protobuf codec every service and client uses (small initial buffers).
//!
//! Internal and admin RPCs carry the cluster secret in [`CLUSTER_SECRET_HEADER`]; internal ones
//! also carry the protocol version in [`PROTOCOL_HEADER`].

/// Metadata header that carries the cluster secret on internal and admin RPCs.
pub const CLUSTER_SECRET_HEADER: &str = "x-cluster-secret";

/// Generated code, nested as the proto packages are so cross-package references resolve.
pub mod chat {
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("chat.raft.v1");
        }
    }
    pub mod log {
        pub mod v1 {
            tonic::include_proto!("chat.log.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("chat.admin.v1");
        }
    }
    pub mod v1 {
        tonic::include_proto!("chat.v1");
    }
}

pub mod codec;
pub mod leader;
pub mod protocol;
pub mod token;

pub use leader::LeaderHint;
pub use protocol::{PROTOCOL_ACCEPTS, PROTOCOL_HEADER, PROTOCOL_VERSION};

/// Every compiled .proto as a `FileDescriptorSet`, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_descriptor");

pub use chat::admin::v1 as admin;
pub use chat::log::v1 as log;
pub use chat::raft::v1 as raft;
pub use chat::v1 as chat_v1;

/// A client interceptor that attaches the cluster secret (and this release's protocol version)
/// to every request.
#[derive(Clone)]
pub struct AttachSecret(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl AttachSecret {
    /// Fails if the secret is not printable ASCII (it travels in an HTTP/2 header).
    pub fn new(secret: &str) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        Ok(AttachSecret(secret.parse()?))
    }
}

impl tonic::service::Interceptor for AttachSecret {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert(CLUSTER_SECRET_HEADER, self.0.clone());
        protocol::stamp_protocol(request.metadata_mut());
        Ok(request)
    }
}

/// An admin client that sends the cluster secret with every call.
pub type AdminClient = admin::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AttachSecret>,
>;

/// Connect an [`AdminClient`] to `addr` (host:port).
pub async fn connect_admin(
    addr: &str,
    secret: &str,
) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    connect_admin_with(addr, secret, None).await
}

/// [`connect_admin`], every call on the client given up after `timeout` (DEADLINE_EXCEEDED),
/// and the connection too if that is shorter than the usual 2 s.
pub async fn connect_admin_with(
    addr: &str,
    secret: &str,
    timeout: Option<std::time::Duration>,
) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    let connect = std::time::Duration::from_secs(2);
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout.map_or(connect, |t| t.min(connect)))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    admin_client(endpoint.connect().await?, secret)
}

/// An [`AdminClient`] over `channel` (made however the caller dials: plaintext or TLS).
pub fn admin_client(
    channel: tonic::transport::Channel,
    secret: &str,
) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    Ok(
        admin::admin_client::AdminClient::with_interceptor(channel, AttachSecret::new(secret)?)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

impl admin::StatusReply {
    /// Partition → leader id, for the partitions whose leader this node knows.
    pub fn leaders(&self) -> std::collections::BTreeMap<u32, u64> {
        self.partitions
            .iter()
            .filter(|p| p.leader_id != 0)
            .map(|p| (p.partition, p.leader_id))
            .collect()
    }
}
