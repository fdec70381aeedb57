//! The cluster secret and the protocol version: every internal (Raft, forwarding, gateway peer)
//! and admin RPC must carry the secret in the `x-cluster-secret` header (compared in constant
//! time); internal RPCs must also carry a protocol version this node accepts in
//! `x-chat-protocol` (see `chat_proto::protocol`). The admin API checks the secret only, so an
//! operator's tool of another release still works.

use std::sync::Arc;

use chat_proto::protocol::{check_protocol, stamp_protocol};
use chat_proto::CLUSTER_SECRET_HEADER;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// A tonic interceptor that refuses requests without the right cluster secret and, on internal
/// services, without a protocol version this node accepts.
#[derive(Clone)]
pub struct SecretCheck {
    expected: Arc<[u8]>,
    check_protocol: bool,
}

impl SecretCheck {
    /// For node-to-node services: the secret, then the protocol version.
    pub fn internal(secret: &str) -> Self {
        SecretCheck {
            expected: secret.as_bytes().into(),
            check_protocol: true,
        }
    }

    /// For the admin API: the secret only.
    pub fn admin(secret: &str) -> Self {
        SecretCheck {
            expected: secret.as_bytes().into(),
            check_protocol: false,
        }
    }
}

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(CLUSTER_SECRET_HEADER) {
            None => Err(Status::unauthenticated(format!(
                "missing cluster secret: internal and admin RPCs must carry the {CLUSTER_SECRET_HEADER} header"
            ))),
            Some(given) if bool::from(given.as_bytes().ct_eq(&self.expected)) => {
                if self.check_protocol {
                    check_protocol(request.metadata())?;
                }
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated("wrong cluster secret")),
        }
    }
}

/// The secret as a metadata value, for clients. Errors if it is not valid header text.
pub fn secret_header(secret: &str) -> Result<MetadataValue<Ascii>, String> {
    secret.parse().map_err(|_| {
        "the cluster secret must be printable ASCII (it travels in an HTTP/2 header)".to_string()
    })
}

/// Attach the cluster secret and this release's protocol version to an outgoing request.
pub fn with_secret<T>(message: T, secret: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(CLUSTER_SECRET_HEADER, secret.clone());
    stamp_protocol(request.metadata_mut());
    request
}
