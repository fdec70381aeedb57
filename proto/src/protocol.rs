//! The node-to-node protocol version. Every internal RPC (Raft, sequencer forwarding, gateway
//! peers) carries the sender's version in the [`PROTOCOL_HEADER`] header, and a node refuses a
//! version outside [`PROTOCOL_ACCEPTS`] with FAILED_PRECONDITION and a `google.rpc.ErrorInfo`
//! (reason `PROTOCOL_MISMATCH`, domain `chat`, metadata `peer`, `min`, `max`), before the
//! request reaches any handler.
//!
//! A rolling upgrade works between two adjacent releases: release N+1 still accepts N's version
//! (its range is `N..=N+1`) and, while any node of N may remain, sends only what N understands.
//! Records and messages evolve by adding fields, never renumbering them.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::leader::ERROR_DOMAIN;

/// The file `chatctl restore` leaves in a data dir it builds from a backup; a node starting on
/// such a dir runs only as the single node of its cluster (see `chat_log::backup`).
pub const RESTORED_MARKER: &str = "RESTORED_FROM_BACKUP";

/// Metadata header carrying the sender's protocol version on internal RPCs.
pub const PROTOCOL_HEADER: &str = "x-chat-protocol";

/// The version this release speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The versions this release accepts from peers.
pub const PROTOCOL_ACCEPTS: RangeInclusive<u32> = 1..=1;

/// `ErrorInfo.reason` of a refused peer version.
pub const PROTOCOL_MISMATCH_REASON: &str = "PROTOCOL_MISMATCH";

/// Check a request's protocol header. A missing or unreadable header counts as version 0 (a
/// release from before versions were sent).
pub fn check_protocol(metadata: &MetadataMap) -> Result<(), Status> {
    let peer = metadata
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if PROTOCOL_ACCEPTS.contains(&peer) {
        return Ok(());
    }
    let (min, max) = (*PROTOCOL_ACCEPTS.start(), *PROTOCOL_ACCEPTS.end());
    let metadata = HashMap::from([
        ("peer".to_string(), peer.to_string()),
        ("min".to_string(), min.to_string()),
        ("max".to_string(), max.to_string()),
    ]);
    Err(Status::with_error_details(
        Code::FailedPrecondition,
        format!(
            "peer speaks chat protocol {peer}; this node (chatd {}) accepts {min}..={max}; \
             upgrade one release at a time",
            env!("CARGO_PKG_VERSION")
        ),
        ErrorDetails::with_error_info(PROTOCOL_MISMATCH_REASON, ERROR_DOMAIN, metadata),
    ))
}

/// Whether `status` is a refusal of this node's protocol version by a peer.
pub fn is_protocol_mismatch(status: &Status) -> bool {
    status
        .get_details_error_info()
        .is_some_and(|info| info.reason == PROTOCOL_MISMATCH_REASON && info.domain == ERROR_DOMAIN)
}

/// Stamp this release's version on an outgoing request.
pub fn stamp_protocol(metadata: &mut MetadataMap) {
    metadata.insert(PROTOCOL_HEADER, PROTOCOL_VERSION.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(version: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = version {
            m.insert(PROTOCOL_HEADER, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn this_release_is_accepted_and_others_are_refused_with_details() {
        let mut ours = MetadataMap::new();
        stamp_protocol(&mut ours);
        assert!(check_protocol(&ours).is_ok());
        for other in [None, Some("0"), Some("99"), Some("not a number")] {
            let err = check_protocol(&with(other)).unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(is_protocol_mismatch(&err), "{err:?}");
            assert!(err.message().contains("accepts 1..=1"), "{}", err.message());
            let info = err.get_details_error_info().unwrap();
            assert_eq!(info.metadata["max"], PROTOCOL_VERSION.to_string());
        }
    }
}
