//! Damage for tests of damage: reach behind a closed node's back and break a stored record, so a
//! test can check that the node reports it instead of serving it. Only with the `testing`
//! feature (the log's own integration tests turn it on); never in what ships.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::codec::{self, cf};
use crate::types::{LogOffset, PartitionId};

/// Flip one bit in the last byte of the stored event at `offset` of `p`, in the database of a
/// node whose data dir is `data_dir` (the node must be closed).
pub fn corrupt_event(data_dir: &Path, p: PartitionId, offset: LogOffset) {
    let cfs = cf::ALL
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
    let db = DB::open_cf_descriptors(&Options::default(), data_dir.join("db"), cfs)
        .expect("open the closed node's database");
    let events = db.cf_handle(cf::EVENTS).expect("the events column family");
    let key = codec::event_key(p, offset);
    let mut value = db
        .get_cf(events, key)
        .expect("read the event")
        .expect("the event is stored");
    let last = value.len() - 1;
    value[last] ^= 0x20;
    db.put_cf(events, key, value)
        .expect("write the damaged event");
}
