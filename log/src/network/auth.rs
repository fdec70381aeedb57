//! The cluster secret: every internal (Raft) and admin RPC must carry it in the
//! `x-cluster-secret` header. Compared in constant time.

use std::sync::Arc;

use chat_proto::CLUSTER_SECRET_HEADER;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// A tonic interceptor that refuses requests without the right cluster secret.
#[derive(Clone)]
pub struct SecretCheck {
    expected: Arc<[u8]>,
}

impl SecretCheck {
    pub fn new(secret: &str) -> Self {
        SecretCheck {
            expected: secret.as_bytes().into(),
        }
    }
}

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(CLUSTER_SECRET_HEADER) {
            None => Err(Status::unauthenticated(format!(
                "missing cluster secret: internal and admin RPCs must carry the {CLUSTER_SECRET_HEADER} header"
            ))),
            Some(given) if bool::from(given.as_bytes().ct_eq(&self.expected)) => Ok(request),
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

/// Attach the cluster secret to an outgoing request.
pub fn with_secret<T>(message: T, secret: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(CLUSTER_SECRET_HEADER, secret.clone());
    request
}
