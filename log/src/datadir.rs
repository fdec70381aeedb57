//! What a data dir is: the node record written on first start and checked on every start, so a
//! node never runs on a dir of another node, another partition count (routing would silently
//! change) or a data format it does not read.
//!
//! The record is the protobuf `NodeRecord` (proto/proto/log.proto) under the key `record` of
//! cf `node`. Releases before 0.2 wrote a bincode record under the key `node` (data format 0);
//! such a dir is refused with a message saying so rather than misread.

use std::path::Path;

use anyhow::{bail, Context};
use chat_proto::log::NodeRecord;
use prost::Message;

use crate::codec::cf;
use crate::engine::{Durability, Engine};
use crate::types::NodeId;
use crate::wire::DATA_FORMAT;

const RECORD_KEY: &[u8] = b"record";
/// Where format 0 (bincode, before 0.2) kept its node record.
const LEGACY_RECORD_KEY: &[u8] = b"node";

/// What [`check`] found.
#[derive(Debug)]
pub(crate) struct DataDir {
    /// The dir's random id (see `NodeRecord.incarnation`).
    pub(crate) incarnation: u64,
    /// Whether the dir was created by this start.
    pub(crate) created: bool,
    /// The dir's partition count.
    pub(crate) partitions: u32,
}

fn new_incarnation() -> u64 {
    // Never 0: that means "not chosen yet".
    rand::random::<u64>().max(1)
}

fn write_record(engine: &Engine, record: &NodeRecord) -> anyhow::Result<()> {
    let mut batch = rocksdb::WriteBatch::default();
    engine.put_framed(&mut batch, cf::NODE, RECORD_KEY, &record.encode_to_vec());
    engine.write(batch, Durability::Sync)?;
    Ok(())
}

/// Check the data dir at `dir` (open as `engine`) is node `node_id` in [`DATA_FORMAT`] with
/// `partitions` partitions — or, unless `chosen`, with whatever count it was made with; record it
/// so on first start.
pub(crate) fn check(
    engine: &Engine,
    dir: &Path,
    node_id: NodeId,
    partitions: u32,
    chosen: bool,
) -> anyhow::Result<DataDir> {
    let dir = dir.display();
    let Some(bytes) = engine.get(cf::NODE, RECORD_KEY)? else {
        if engine.get(cf::NODE, LEGACY_RECORD_KEY)?.is_some() {
            bail!(
                "data dir {dir} was written by a chatd release before 0.2 (data format 0, bincode); \
                 this release reads data format {DATA_FORMAT}. Start this release on a new data dir \
                 (the old release's data cannot be upgraded in place)"
            );
        }
        let record = NodeRecord {
            format: DATA_FORMAT,
            node_id,
            partitions,
            incarnation: new_incarnation(),
        };
        write_record(engine, &record)?;
        return Ok(DataDir {
            incarnation: record.incarnation,
            created: true,
            partitions,
        });
    };
    let mut have = NodeRecord::decode(bytes.as_slice())
        .with_context(|| format!("data dir {dir}: decode its node record"))?;
    if have.format != DATA_FORMAT {
        bail!(
            "data dir {dir} is in data format {}; this release reads data format {DATA_FORMAT} \
             (was it written by a newer release?)",
            have.format
        );
    }
    if have.node_id != node_id {
        bail!(
            "data dir {dir} belongs to node {}; refusing to start it as node {node_id}",
            have.node_id,
        );
    }
    if chosen && have.partitions != partitions {
        bail!(
            "data dir {dir} was made with {} partitions; refusing to start it with {partitions} \
             (the count is fixed when a cluster forms; leave --partitions out to use the dir's)",
            have.partitions,
        );
    }
    if have.incarnation == 0 {
        // A dir of a release before incarnations: it is the dir the cluster knows (nothing
        // was registered for it), so choosing one now is safe.
        have.incarnation = new_incarnation();
        write_record(engine, &have)?;
    }
    Ok(DataDir {
        incarnation: have.incarnation,
        created: false,
        partitions: have.partitions,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::{DiskConfig, DiskGuard};

    fn open(dir: &Path) -> Arc<Engine> {
        let config = DiskConfig {
            reserve_mib: 0,
            ballast_mib: 0,
        };
        Engine::open(dir, Arc::new(DiskGuard::open(dir, config).unwrap())).unwrap()
    }

    fn put(engine: &Engine, key: &[u8], value: &[u8]) {
        let mut batch = rocksdb::WriteBatch::default();
        engine.put_framed(&mut batch, cf::NODE, key, value);
        engine.write(batch, Durability::Sync).unwrap();
    }

    #[test]
    fn a_dir_is_recorded_once_and_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let first = check(&engine, dir.path(), 1, 8, true).unwrap();
        assert!(first.created && first.incarnation != 0);
        assert_eq!(first.partitions, 8);
        let again = check(&engine, dir.path(), 1, 8, true).unwrap();
        assert!(!again.created);
        assert_eq!(again.incarnation, first.incarnation);
        let err = check(&engine, dir.path(), 2, 8, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to node 1;"), "{err}");
        let err = check(&engine, dir.path(), 1, 4, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("made with 8 partitions"), "{err}");
    }

    #[test]
    fn a_dir_keeps_its_partition_count_unless_another_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        // Made when the default was 8; opened by a release whose default is 64.
        check(&engine, dir.path(), 1, 8, false).unwrap();
        let reopened = check(&engine, dir.path(), 1, 64, false).unwrap();
        assert!(!reopened.created);
        assert_eq!(reopened.partitions, 8);
        assert!(check(&engine, dir.path(), 1, 64, true).is_err());
        // A new dir takes the count it is given, chosen or not.
        let other = tempfile::tempdir().unwrap();
        let engine = open(other.path());
        assert_eq!(
            check(&engine, other.path(), 1, 64, false)
                .unwrap()
                .partitions,
            64
        );
    }

    #[test]
    fn other_data_formats_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        // Format 0: the 12-byte bincode record of releases before 0.2.
        put(
            &engine,
            LEGACY_RECORD_KEY,
            &[1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0],
        );
        let err = check(&engine, dir.path(), 1, 8, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("before 0.2 (data format 0"), "{err}");

        let newer = NodeRecord {
            format: DATA_FORMAT + 1,
            node_id: 1,
            partitions: 8,
            incarnation: 5,
        };
        put(&engine, RECORD_KEY, &newer.encode_to_vec());
        let err = check(&engine, dir.path(), 1, 8, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("data format {}", DATA_FORMAT + 1)),
            "{err}"
        );
    }
}
