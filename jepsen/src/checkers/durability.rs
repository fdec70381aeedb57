//! Durability, judged on the final drains (every chat read in full from every node after heal
//! and quiesce): every drain succeeds, no gaps, no acknowledged send missing, no node missing
//! what the others have, and no message a reader saw missing (lost after read: its send may
//! have been ambiguous, but once read it happened).

use std::collections::{BTreeMap, BTreeSet};

use super::Anomaly;
use crate::history::{History, OpType, F};

pub fn check(h: &History) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    // chat → node → ids in that node's drain
    let mut drains: BTreeMap<u64, BTreeMap<Option<u64>, BTreeSet<&str>>> = BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Drain)
    {
        let chat = op.value.chat;
        let seqs: BTreeSet<u64> = op.value.messages.iter().map(|m| m.seq).collect();
        if let Some(&last) = seqs.iter().next_back() {
            let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
            if !missing.is_empty() {
                anomalies.push(Anomaly::new(
                    "gap",
                    format!("op {}: node {:?}'s drain of chat {chat} lacks seqs {missing:?} below {last}", op.index, op.node),
                ));
            }
        }
        drains
            .entry(chat)
            .or_default()
            .entry(op.node)
            .or_default()
            .extend(op.value.messages.iter().map(|m| m.id.as_str()));
    }
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Fail && o.f == F::Drain)
    {
        anomalies.push(Anomaly::new(
            "drain-failed",
            format!(
                "op {}: node {:?} could not be drained of chat {}: {}",
                op.index,
                op.node,
                op.value.chat,
                op.error.as_deref().unwrap_or("no error given")
            ),
        ));
    }
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Poll)
    {
        let chat = op.value.chat;
        let Some(nodes) = drains.get(&chat) else {
            continue;
        };
        for m in &op.value.messages {
            if nodes.values().all(|ids| !ids.contains(m.id.as_str())) {
                anomalies.push(Anomaly::new(
                    "lost-after-read",
                    format!(
                        "chat {chat} message {} (seq {}): read (op {}), in no drain",
                        m.id, m.seq, op.index
                    ),
                ));
            }
        }
    }
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f == F::Send)
    {
        let (chat, Some(id)) = (op.value.chat, op.value.id.as_deref()) else {
            continue;
        };
        let Some(nodes) = drains.get(&chat) else {
            anomalies.push(Anomaly::new(
                "lost",
                format!("chat {chat} message {id}: acknowledged, and no node's drain has the chat"),
            ));
            continue;
        };
        let missing: Vec<Option<u64>> = nodes
            .iter()
            .filter(|(_, ids)| !ids.contains(id))
            .map(|(n, _)| *n)
            .collect();
        if missing.len() == nodes.len() {
            anomalies.push(Anomaly::new(
                "lost",
                format!(
                    "chat {chat} message {id}: acknowledged (op {}), in no drain",
                    op.index
                ),
            ));
        } else if !missing.is_empty() {
            anomalies.push(Anomaly::new(
                "lost-on-node",
                format!("chat {chat} message {id}: acknowledged (op {}), missing from nodes {missing:?}", op.index),
            ));
        }
    }
    // Whatever one node has, every node must have (also for sends whose ack was lost).
    for (chat, nodes) in &drains {
        let all: BTreeSet<&str> = nodes.values().flatten().copied().collect();
        for (node, ids) in nodes {
            let missing: Vec<&&str> = all.difference(ids).collect();
            if !missing.is_empty() {
                anomalies.push(Anomaly::new(
                    "lost-on-node",
                    format!("chat {chat}: node {node:?}'s drain lacks {} messages others have, e.g. {:?}", missing.len(), missing[0]),
                ));
            }
        }
    }
    anomalies.sort_by(|a, b| (a.kind, &a.detail).cmp(&(b.kind, &b.detail)));
    anomalies.dedup();
    anomalies
}
