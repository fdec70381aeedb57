//! Device authentication: a bearer token `<user>.<device>.<secret>` is checked against the
//! device record in the user's partition (which stores only sha256(secret)).
//!
//! The record is read from a replica of the user's partition that is known to have caught up
//! with the partition's leader within the revocation bound ([`Gateway::read_confirmed`]): a
//! device revoked through any node is refused by every node within that bound, a node cut off
//! from the leader included — it cannot confirm, so it refuses (UNAVAILABLE) rather than trust
//! what it last knew. A device registered or linked through another node may not be applied
//! there yet, so a miss is retried from a replica that has applied a fresh read index before
//! the token is refused. Open streams check again every bound (`session.rs`).

use chat_model::ids::{DeviceId, UserId};
use chat_proto::token::DeviceToken;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::gateway::Gateway;

/// An authenticated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    pub user: UserId,
    pub device: DeviceId,
}

/// sha256 of a token's secret: what the device record stores.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token of a unary call's `authorization: Bearer <token>` metadata.
pub fn bearer<T>(request: &tonic::Request<T>) -> Result<&str, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <device token>"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Status::unauthenticated("authorization must be Bearer <device token>"))
}

/// Check `token` and return the device it names.
pub async fn authenticate(gw: &Gateway, token: &str) -> Result<Device, Status> {
    let token: DeviceToken = token
        .parse()
        .map_err(|e: chat_proto::token::TokenError| Status::unauthenticated(e.to_string()))?;
    let (user, device) = (UserId(token.user_id), DeviceId(token.device_id));
    let record = gw
        .read_confirmed(gw.reads.partition(user.0), |reads| async move {
            reads.device(user, device).await
        })
        .await?;
    let Some(record) = record else {
        return Err(Status::unauthenticated(format!(
            "user {user} has no device {device}"
        )));
    };
    let digest = secret_digest(&token.secret);
    if !bool::from(digest.ct_eq(record.token_sha256.as_slice())) {
        return Err(Status::unauthenticated("the device token does not match"));
    }
    if record.revoked {
        return Err(Status::unauthenticated(format!(
            "device {device} of user {user} has been revoked"
        )));
    }
    Ok(Device { user, device })
}
