//! Receipt watermarks: as one observer sees them they never decrease; read ≤ delivered ≤ the
//! chat's last seq at the time; and never past a seq that exists (judged on the final drains).

use std::collections::BTreeMap;

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    let mut max_seq: BTreeMap<u64, u64> = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Drain)
    {
        let last = op.value.messages.iter().map(|m| m.seq).max().unwrap_or(0);
        let e = max_seq.entry(op.value.chat).or_default();
        *e = (*e).max(last);
    }
    let mut seen: BTreeMap<(u64, u64, u64), (u64, u64)> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Receipt)
    {
        let v = &op.value;
        let (Some(user), Some(delivered), Some(read)) = (v.user, v.delivered, v.read) else {
            continue;
        };
        let at = format!("op {}: chat {} user {user}", op.index, v.chat);
        if read > delivered {
            anomalies.push(Anomaly::new(
                "receipt-order",
                format!("{at}: read {read} > delivered {delivered}"),
            ));
        }
        if let Some(last) = v.last_seq {
            if delivered > last {
                anomalies.push(Anomaly::new(
                    "receipt-beyond-last",
                    format!("{at}: delivered {delivered} > last seq {last}"),
                ));
            }
        }
        if let Some(&max) = max_seq.get(&v.chat) {
            if delivered > max {
                anomalies.push(Anomaly::new(
                    "receipt-beyond-last",
                    format!("{at}: delivered {delivered}, but the chat ends at {max}"),
                ));
            }
        }
        let key = (op.process, v.chat, user);
        if let Some(&(d0, r0)) = seen.get(&key) {
            if delivered < d0 || read < r0 {
                anomalies.push(Anomaly::new(
                    "receipt-regression",
                    format!("{at}: watermarks went from (delivered {d0}, read {r0}) to ({delivered}, {read})"),
                ));
            }
        }
        seen.insert(key, (delivered, read));
    }
    anomalies
}
