//! Order agreement: every observation of a chat (acks, stream polls, final drains) must agree on
//! which message holds each seq, and each message must hold exactly one seq.

use std::collections::{BTreeMap, BTreeSet};

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    let mut by_seq: BTreeMap<(u64, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut by_id: BTreeMap<(u64, &str), BTreeSet<u64>> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for op in h.ops.iter().filter(|o| o.kind == OpType::Ok) {
        let chat = op.value.chat;
        match op.f {
            F::Send => {
                if let (Some(id), Some(seq)) = (&op.value.id, op.value.seq) {
                    by_seq.entry((chat, seq)).or_default().insert(id);
                    by_id.entry((chat, id)).or_default().insert(seq);
                }
            }
            F::Poll | F::Drain => {
                let mut in_this_read = BTreeSet::new();
                for m in &op.value.messages {
                    by_seq.entry((chat, m.seq)).or_default().insert(&m.id);
                    by_id.entry((chat, &m.id)).or_default().insert(m.seq);
                    if !in_this_read.insert(&m.id) {
                        anomalies.push(Anomaly::new(
                            "duplicate",
                            format!(
                                "op {}: message {} appears twice in one read of chat {chat}",
                                op.index, m.id
                            ),
                        ));
                    }
                }
            }
            F::Receipt => {}
        }
    }
    for ((chat, seq), ids) in by_seq {
        if ids.len() > 1 {
            anomalies.push(Anomaly::new(
                "inconsistent-seq",
                format!("chat {chat} seq {seq} holds {ids:?}"),
            ));
        }
    }
    for ((chat, id), seqs) in by_id {
        if seqs.len() > 1 {
            anomalies.push(Anomaly::new(
                "duplicate",
                format!("chat {chat} message {id} at seqs {seqs:?}"),
            ));
        }
    }
    anomalies
}
