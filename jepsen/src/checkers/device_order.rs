//! Per-device order: one device's messages to one chat get increasing seqs in the order the
//! device sent them (docs/protocol.md), also across resends after reconnects and failovers.
//! The order a device sent in is the order of each message's first invocation; it is held to
//! the seqs of the acknowledged sends and to the order of every final drain (which also holds
//! the sends whose acks were lost).

use std::collections::{BTreeMap, HashMap};

use super::Anomaly;
use crate::history::{History, OpType, F};

/// Where each message stands in its device's order: id → (device, chat, position).
fn send_order(h: &History) -> HashMap<&str, (&str, u64, usize)> {
    let mut order: HashMap<&str, (&str, u64, usize)> = HashMap::new();
    let mut next: HashMap<(&str, u64), usize> = HashMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Invoke && o.f == F::Send)
    {
        let (Some(device), Some(id)) = (op.value.device.as_deref(), op.value.id.as_deref()) else {
            continue;
        };
        order.entry(id).or_insert_with(|| {
            let n = next.entry((device, op.value.chat)).or_default();
            *n += 1;
            (device, op.value.chat, *n)
        });
    }
    order
}

/// Per (device, chat): position in the device's order → (seq, id), from the acks.
type Acked<'h> = BTreeMap<(&'h str, u64), BTreeMap<usize, (u64, &'h str)>>;

pub fn check(h: &History) -> Vec<Anomaly> {
    let order = send_order(h);
    let mut anomalies = Vec::new();
    let mut acked: Acked = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Send)
    {
        let (Some(id), Some(seq)) = (op.value.id.as_deref(), op.value.seq) else {
            continue;
        };
        if let Some(&(device, chat, at)) = order.get(id) {
            acked
                .entry((device, chat))
                .or_default()
                .insert(at, (seq, id));
        }
    }
    for ((device, chat), by_position) in &acked {
        for (a, b) in by_position.values().zip(by_position.values().skip(1)) {
            if b.0 <= a.0 {
                anomalies.push(Anomaly::new(
                    "device-order",
                    format!(
                        "device {device} chat {chat}: sent {} before {}, acknowledged at seqs {} and {}",
                        a.1, b.1, a.0, b.0
                    ),
                ));
            }
        }
    }
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Drain)
    {
        let mut messages: Vec<_> = op.value.messages.iter().collect();
        messages.sort_by_key(|m| m.seq);
        // (device, chat) → the last (position, seq, id) in this drain.
        let mut last: HashMap<(&str, u64), (usize, u64, &str)> = HashMap::new();
        for m in messages {
            let Some(&(device, chat, at)) = order.get(m.id.as_str()) else {
                continue;
            };
            if let Some(&(prev, prev_seq, prev_id)) = last.get(&(device, chat)) {
                if at < prev {
                    anomalies.push(Anomaly::new(
                        "device-order",
                        format!(
                            "op {}: node {:?}'s drain of chat {chat} holds {prev_id} (seq {prev_seq}) before {} (seq {}), which device {device} sent first",
                            op.index, op.node, m.id, m.seq
                        ),
                    ));
                }
            }
            last.insert((device, chat), (at, m.seq, m.id.as_str()));
        }
    }
    anomalies.sort_by(|a, b| (a.kind, &a.detail).cmp(&(b.kind, &b.detail)));
    anomalies.dedup();
    anomalies
}
