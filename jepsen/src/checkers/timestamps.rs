//! Server timestamps: leaders assign a message's time from their own realtime clock, which the
//! clock nemesis skews; within a chat, time must still never go backwards as seqs go forwards
//! (judged on the final drains, which carry each message's server time).

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Drain)
    {
        let mut prev: Option<(u64, u64)> = None;
        for m in &op.value.messages {
            let Some(ts) = m.ts else { continue };
            if let Some((seq, t)) = prev {
                if ts < t {
                    anomalies.push(Anomaly::new(
                        "timestamp-regression",
                        format!(
                            "op {}: chat {}: seq {} at {ts} ms after seq {seq} at {t} ms",
                            op.index, op.value.chat, m.seq
                        ),
                    ));
                }
            }
            prev = Some((m.seq, ts));
        }
    }
    anomalies
}
