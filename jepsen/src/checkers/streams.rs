//! Device streams deliver each chat in seq order with no skip and no repeat; a stream resumed
//! after seq k starts at k+1 (Jepsen's poll-skip / nonmonotonic-poll, applied per process and
//! chat, also within one batch).

use std::collections::BTreeMap;

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    let mut last: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Poll)
    {
        let key = (op.process, op.value.chat);
        if let Some(k) = op.value.resumed_from {
            if let Some(first) = op.value.messages.first() {
                if first.seq != k + 1 {
                    anomalies.push(Anomaly::new(
                        "bad-resume",
                        format!(
                            "op {}: process {} resumed chat {} after {k} but got seq {} first",
                            op.index, op.process, op.value.chat, first.seq
                        ),
                    ));
                }
            }
            last.insert(key, k);
        }
        for m in &op.value.messages {
            if let Some(&prev) = last.get(&key) {
                if m.seq <= prev {
                    anomalies.push(Anomaly::new(
                        "nonmonotonic-poll",
                        format!(
                            "op {}: process {} chat {}: seq {} after {prev}",
                            op.index, op.process, op.value.chat, m.seq
                        ),
                    ));
                } else if m.seq > prev + 1 {
                    anomalies.push(Anomaly::new(
                        "poll-skip",
                        format!(
                            "op {}: process {} chat {}: seq {} after {prev}, skipping {}..{}",
                            op.index,
                            op.process,
                            op.value.chat,
                            m.seq,
                            prev + 1,
                            m.seq - 1
                        ),
                    ));
                }
            }
            last.insert(key, m.seq);
        }
    }
    anomalies
}
