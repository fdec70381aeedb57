//! Real-time order of sends within a chat: if send A was acknowledged before send B was invoked,
//! A's seq is below B's.
//!
//! A send retried with the same client_msg_id is one logical operation from its *first*
//! invocation (any attempt may be the one that took effect) to its acknowledgement.

use std::collections::BTreeMap;

use super::Anomaly;
use crate::history::{History, OpType, F};

struct Send<'a> {
    id: &'a str,
    seq: u64,
    invoked: u64,
    completed: u64,
}

pub fn check(h: &History) -> Vec<Anomaly> {
    // A send's operation begins with its first invocation: any attempt may be the one applied.
    let mut first_invoked: BTreeMap<(u64, &str), u64> = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.f == F::Send && o.kind == OpType::Invoke)
    {
        if let Some(id) = op.value.id.as_deref() {
            first_invoked.entry((op.value.chat, id)).or_insert(op.time);
        }
    }
    let mut by_chat: BTreeMap<u64, Vec<Send>> = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.f == F::Send && o.kind == OpType::Ok)
    {
        let (Some(id), Some(seq)) = (op.value.id.as_deref(), op.value.seq) else {
            continue;
        };
        let Some(&invoked) = first_invoked.get(&(op.value.chat, id)) else {
            continue;
        };
        by_chat.entry(op.value.chat).or_default().push(Send {
            id,
            seq,
            invoked,
            completed: op.time,
        });
    }
    let mut anomalies = Vec::new();
    for (chat, sends) in by_chat {
        let mut by_completion: Vec<&Send> = sends.iter().collect();
        by_completion.sort_by_key(|s| s.completed);
        let mut by_invocation: Vec<&Send> = sends.iter().collect();
        by_invocation.sort_by_key(|s| s.invoked);
        // Sweep: for each B in invocation order, the highest seq among sends completed before it.
        let mut done = 0;
        let mut highest: Option<&Send> = None;
        for b in by_invocation {
            while done < by_completion.len() && by_completion[done].completed < b.invoked {
                let a = by_completion[done];
                if highest.is_none_or(|h| a.seq > h.seq) {
                    highest = Some(a);
                }
                done += 1;
            }
            if let Some(a) = highest {
                if a.seq >= b.seq {
                    anomalies.push(Anomaly::new(
                        "realtime-order",
                        format!(
                            "chat {chat}: {} (seq {}) was acknowledged before {} (seq {}) was sent",
                            a.id, a.seq, b.id, b.seq
                        ),
                    ));
                }
            }
        }
    }
    anomalies
}
