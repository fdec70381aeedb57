//! The cluster secret and the protocol version: every internal (Raft, forwarding, gateway peer)
//! and admin RPC must carry the secret in the `x-cluster-secret` header (compared in constant
//! time); internal RPCs must also carry a protocol version this node accepts in
//! `x-chat-protocol` (see `chat_proto::protocol`). The admin API checks the secret only, so an
//! operator's tool of another release still works.
//!
//! Raft and placement calls also name the node they are meant for (`x-chat-to-node`): an address
//! can pass to another node (a dead machine replaced by a new node id on the same host and
//! port), and a message meant for the old node must never be taken by the new one — it would
//! take the old node's log position and votes for its own (the fault-injection suite found a new
//! replica accepting the entries meant for the one it replaced, and its group stopping).

use std::sync::Arc;

use chat_proto::protocol::{check_protocol, stamp_protocol};
use chat_proto::CLUSTER_SECRET_HEADER;

use crate::types::NodeId;

/// The node an internal call is meant for.
pub const TO_NODE_HEADER: &str = "x-chat-to-node";
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// A tonic interceptor that refuses requests without the right cluster secret and, on internal
/// services, without a protocol version this node accepts.
#[derive(Clone)]
pub struct SecretCheck {
    expected: Arc<[u8]>,
    check_protocol: bool,
    /// This node: a call addressed to another is refused.
    me: Option<NodeId>,
}

impl SecretCheck {
    /// For node-to-node services of node `me`: the secret, then the protocol version, then
    /// (when the call names one) the node it is meant for.
    pub fn internal(secret: &str, me: NodeId) -> Self {
        SecretCheck {
            expected: secret.as_bytes().into(),
            check_protocol: true,
            me: Some(me),
        }
    }

    /// For the admin API: the secret only.
    pub fn admin(secret: &str) -> Self {
        SecretCheck {
            expected: secret.as_bytes().into(),
            check_protocol: false,
            me: None,
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
                if let Some(me) = self.me {
                    check_addressee(&request, me)?;
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

/// Refuse a call that names another node than `me` (one that names none is taken: callers that
/// address no node in particular, and releases before the header).
fn check_addressee(request: &Request<()>, me: NodeId) -> Result<(), Status> {
    let Some(to) = request.metadata().get(TO_NODE_HEADER) else {
        return Ok(());
    };
    let to: NodeId = to
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Status::invalid_argument(format!("{TO_NODE_HEADER} is not a node id")))?;
    if to != me {
        return Err(Status::failed_precondition(format!(
            "this is node {me}, not node {to}: its address belongs to another node now"
        )));
    }
    Ok(())
}

/// Name the node an outgoing internal call is meant for.
pub fn address_to<T>(request: &mut Request<T>, node: NodeId) {
    request
        .metadata_mut()
        .insert(TO_NODE_HEADER, MetadataValue::from(node));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn a_call_meant_for_another_node_is_refused() {
        let secret = secret_header("s").unwrap();
        let mut check = SecretCheck::internal("s", 14);
        let call = |to: Option<NodeId>| {
            let mut request = with_secret((), &secret);
            if let Some(to) = to {
                address_to(&mut request, to);
            }
            request
        };
        assert!(check.call(call(Some(14))).is_ok());
        assert!(check.call(call(None)).is_ok(), "callers that name no node");
        let refused = check.call(call(Some(13))).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("not node 13"), "{refused:?}");
        // The admin API names no node and checks none.
        assert!(SecretCheck::admin("s").call(call(Some(13))).is_ok());
    }
}
