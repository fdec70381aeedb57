//! Reads only show what was sent: a message whose send definitely failed (`fail`) is an aborted
//! read, one never sent at all a phantom.

use std::collections::BTreeMap;

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    // (chat, id) → did any attempt not definitely fail?
    let mut sends: BTreeMap<(u64, &str), bool> = BTreeMap::new();
    for (done, invoke) in h.pairs() {
        if done.f != F::Send {
            continue;
        }
        let value = invoke.map(|i| &i.value).unwrap_or(&done.value);
        let Some(id) = value.id.as_deref() else {
            continue;
        };
        let may_have_happened = done.kind != OpType::Fail;
        *sends.entry((value.chat, id)).or_insert(false) |= may_have_happened;
    }
    // Sends still open at the end (never completed) may have happened too. One pass: an
    // invoke stays open until its process completes an operation.
    let mut open: std::collections::HashMap<u64, &crate::history::Op> =
        std::collections::HashMap::new();
    for op in &h.ops {
        if op.kind == OpType::Invoke {
            open.insert(op.process, op);
        } else {
            open.remove(&op.process);
        }
    }
    for op in open.values().filter(|o| o.f == F::Send) {
        if let Some(id) = op.value.id.as_deref() {
            sends.insert((op.value.chat, id), true);
        }
    }
    let mut anomalies = Vec::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && matches!(o.f, F::Poll | F::Drain))
    {
        for m in &op.value.messages {
            match sends.get(&(op.value.chat, m.id.as_str())) {
                None => anomalies.push(Anomaly::new(
                    "phantom-read",
                    format!(
                        "op {}: chat {} seq {} holds {}, which was never sent",
                        op.index, op.value.chat, m.seq, m.id
                    ),
                )),
                Some(false) => anomalies.push(Anomaly::new(
                    "aborted-read",
                    format!(
                        "op {}: chat {} seq {} holds {}, whose send failed",
                        op.index, op.value.chat, m.seq, m.id
                    ),
                )),
                Some(true) => {}
            }
        }
    }
    anomalies
}
