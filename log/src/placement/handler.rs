//! The command handler of the metadata group: applies [`MetaCommand`]s to the partition map it
//! keeps as its one state record, and keeps each applied command as an event (the map's
//! history: what moved, when, on which epoch).
//!
//! Like every handler it runs on every replica of the group and must be deterministic: the map
//! is read from the group's state, never from anything local.

use chat_proto::log as pb;
use prost::Message;

use super::map::{MapChange, MapEpoch, PartitionMap};
use crate::apply::{ApplyContext, CommandHandler};
use crate::engine::StoreError;
use crate::types::{CommandOutcome, RejectCode};

/// Where the group keeps the map.
pub(crate) const MAP_KEY: &[u8] = b"map";

/// The event kind of an applied map change (its payload is the `MetaCommand`).
pub const META_EVENT_KIND: u32 = 16;

/// Applies map changes; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MetaHandler;

/// The map as the group's state holds it (None before the cluster is bootstrapped).
pub(crate) fn read_map(
    get: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Option<PartitionMap>, StoreError> {
    let Some(bytes) = get(MAP_KEY)? else {
        return Ok(None);
    };
    let record = pb::PartitionMap::decode(bytes.as_slice())
        .map_err(|e| StoreError::decode("partition map", e))?;
    PartitionMap::from_pb(record)
        .map(Some)
        .map_err(|e| StoreError::decode("partition map", e))
}

fn rejected(code: RejectCode, message: impl Into<String>) -> CommandOutcome {
    CommandOutcome::Rejected {
        code,
        message: message.into(),
    }
}

impl CommandHandler for MetaHandler {
    fn apply(
        &self,
        ctx: &mut ApplyContext<'_>,
        command: &[u8],
    ) -> Result<CommandOutcome, StoreError> {
        let Ok(cmd) = pb::MetaCommand::decode(command) else {
            return Ok(rejected(
                RejectCode::InvalidArgument,
                "not a metadata command",
            ));
        };
        let Some(change) = cmd.change.clone() else {
            return Ok(rejected(
                RejectCode::InvalidArgument,
                "a metadata command without a change",
            ));
        };
        let current = read_map(|k| ctx.get(k))?;
        let next = match (current, change) {
            (None, pb::meta_command::Change::Bootstrap(first)) => {
                match PartitionMap::from_pb(first) {
                    Ok(map) => map,
                    Err(e) => return Ok(rejected(RejectCode::InvalidArgument, e)),
                }
            }
            (Some(map), pb::meta_command::Change::Bootstrap(_)) => {
                return Ok(rejected(
                    RejectCode::AlreadyExists,
                    format!("the cluster already has a partition map ({})", map.epoch),
                ))
            }
            (None, _) => {
                return Ok(rejected(
                    RejectCode::FailedPrecondition,
                    "the cluster has no partition map yet (it is being formed)",
                ))
            }
            (Some(mut map), change) => {
                let change = match MapChange::from_pb(change) {
                    Ok(c) => c,
                    Err(e) => return Ok(rejected(RejectCode::InvalidArgument, e)),
                };
                if let Err(refused) = map.apply(MapEpoch(cmd.expected_epoch), change) {
                    let code = if refused.stale {
                        RejectCode::Aborted
                    } else {
                        RejectCode::FailedPrecondition
                    };
                    return Ok(rejected(code, refused.message));
                }
                map
            }
        };
        ctx.put(MAP_KEY, next.to_pb().encode_to_vec());
        let offset = ctx.emit_kind(META_EVENT_KIND, command.to_vec());
        Ok(CommandOutcome::Applied {
            first_offset: Some(offset),
            events: 1,
            reply: next.epoch.0.to_be_bytes().to_vec(),
        })
    }
}
