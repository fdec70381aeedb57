//! Where a partition's leader is, carried on a "not the leader" answer so the caller can retry
//! there.
//!
//! The hint travels as the standard gRPC rich error model (`google.rpc.Status` in the
//! `grpc-status-details-bin` trailer) with one `google.rpc.ErrorInfo`: reason `NOT_LEADER`,
//! domain `chat`, metadata `partition`, and when known `leader_id`, `leader_addr` and `map_epoch`
//! (the answering node does not host the partition and routed by its partition map of that
//! epoch: a caller whose map is older should read it again before routing). Any gRPC
//! client can read it with its language's error-details helper; nothing here is specific to
//! Rust. It lives in `chat-proto` because the client library depends on nothing else.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.reason` of a "not the leader" answer.
pub const NOT_LEADER_REASON: &str = "NOT_LEADER";
/// `ErrorInfo.domain` of every structured error this system produces.
pub const ERROR_DOMAIN: &str = "chat";

/// The leader of a partition as the answering node knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderHint {
    pub partition: u32,
    /// None while an election is in progress.
    pub leader_id: Option<u64>,
    /// The leader's advertised address (where clients and peers reach it).
    pub leader_addr: Option<String>,
    /// Set when the answering node does not hold the partition: the epoch of the partition map
    /// its hint comes from.
    pub map_epoch: Option<u64>,
}

impl LeaderHint {
    /// A status with `code` and `message`, carrying this hint as its error details.
    pub fn to_status(&self, code: Code, message: impl Into<String>) -> Status {
        let mut metadata = HashMap::from([("partition".to_string(), self.partition.to_string())]);
        if let Some(id) = self.leader_id {
            metadata.insert("leader_id".into(), id.to_string());
        }
        if let Some(addr) = &self.leader_addr {
            metadata.insert("leader_addr".into(), addr.clone());
        }
        if let Some(epoch) = self.map_epoch {
            metadata.insert("map_epoch".into(), epoch.to_string());
        }
        let details = ErrorDetails::with_error_info(NOT_LEADER_REASON, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }

    /// The hint a status carries, if it is a "not the leader" answer with one.
    pub fn from_status(status: &Status) -> Option<LeaderHint> {
        let info = status.get_details_error_info()?;
        if info.reason != NOT_LEADER_REASON || info.domain != ERROR_DOMAIN {
            return None;
        }
        Some(LeaderHint {
            partition: info.metadata.get("partition")?.parse().ok()?,
            leader_id: info.metadata.get("leader_id").and_then(|v| v.parse().ok()),
            leader_addr: info.metadata.get("leader_addr").cloned(),
            map_epoch: info.metadata.get("map_epoch").and_then(|v| v.parse().ok()),
        })
    }
}

impl std::fmt::Display for LeaderHint {
    /// The human half of the hint, for error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.leader_id, &self.leader_addr) {
            (Some(id), Some(addr)) => write!(f, "the leader is node {id} at {addr}"),
            (Some(id), None) => write!(f, "the leader is node {id}"),
            _ => write!(f, "no leader is known yet (election in progress)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_survives_the_status() {
        let hint = LeaderHint {
            partition: 3,
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7402".into()),
            map_epoch: Some(7),
        };
        let status = hint.to_status(Code::Unavailable, "not the leader");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "not the leader");
        assert_eq!(LeaderHint::from_status(&status), Some(hint));

        let unknown = LeaderHint {
            partition: 1,
            ..LeaderHint::default()
        };
        let status = unknown.to_status(Code::Unavailable, "election");
        assert_eq!(LeaderHint::from_status(&status), Some(unknown));
    }

    #[test]
    fn other_statuses_carry_no_hint() {
        assert_eq!(LeaderHint::from_status(&Status::unavailable("down")), None);
        let other = Status::with_error_details(
            Code::FailedPrecondition,
            "protocol",
            ErrorDetails::with_error_info("PROTOCOL_MISMATCH", ERROR_DOMAIN, HashMap::new()),
        );
        assert_eq!(LeaderHint::from_status(&other), None);
    }
}
