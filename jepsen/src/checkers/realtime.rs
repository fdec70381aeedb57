//! Real-time order of sends within a chat: if send A was acknowledged before send B was invoked,
//! A's seq is below B's.

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
    let mut by_chat: BTreeMap<u64, Vec<Send>> = BTreeMap::new();
    for (done, invoke) in h.pairs() {
        if done.f != F::Send || done.kind != OpType::Ok {
            continue;
        }
        let (Some(id), Some(seq), Some(invoke)) =
            (done.value.id.as_deref(), done.value.seq, invoke)
        else {
            continue;
        };
        by_chat.entry(done.value.chat).or_default().push(Send {
            id,
            seq,
            invoked: invoke.time,
            completed: done.time,
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
