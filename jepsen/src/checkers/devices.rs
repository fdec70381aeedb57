//! Multi-device agreement: every device of a user ends up with the same messages of each chat
//! — every message of the final drains, each at the seq the drains hold it at. Reader devices
//! catch up after the drains, so a device that never received a message, or got one at another
//! seq than its sibling, shows here (a stream skipping within one connection shows in
//! `streams` too).

use std::collections::{BTreeMap, BTreeSet};

use super::Anomaly;
use crate::history::{History, OpType, F};

/// (user, chat) → device → seq → id, as device streams delivered them.
type Seen<'h> = BTreeMap<(u64, u64), BTreeMap<&'h str, BTreeMap<u64, &'h str>>>;

pub fn check(h: &History) -> Vec<Anomaly> {
    // chat → seq → id, from the drains (`seqs` and `durability` judge the drains themselves).
    let mut drained: BTreeMap<u64, BTreeMap<u64, &str>> = BTreeMap::new();
    let mut seen: Seen = BTreeMap::new();
    for op in h.ops.iter().filter(|o| o.kind == OpType::Ok) {
        match (&op.f, op.value.user, op.value.device.as_deref()) {
            (F::Drain, _, _) => {
                let chat = drained.entry(op.value.chat).or_default();
                for m in &op.value.messages {
                    chat.insert(m.seq, m.id.as_str());
                }
            }
            (F::Poll, Some(user), Some(device)) => {
                let by_seq = seen
                    .entry((user, op.value.chat))
                    .or_default()
                    .entry(device)
                    .or_default();
                for m in &op.value.messages {
                    by_seq.insert(m.seq, m.id.as_str());
                }
            }
            _ => {}
        }
    }
    // Every reader device must have every chat, also one it got nothing of.
    let readers: BTreeSet<(u64, &str)> = seen
        .iter()
        .flat_map(|((user, _), devices)| devices.keys().map(move |d| (*user, *d)))
        .collect();
    let nothing = BTreeMap::new();
    let mut anomalies = Vec::new();
    for (chat, all) in &drained {
        for &(user, device) in &readers {
            let got = seen
                .get(&(user, *chat))
                .and_then(|devices| devices.get(device))
                .unwrap_or(&nothing);
            let missing: BTreeSet<u64> = all
                .keys()
                .filter(|s| !got.contains_key(s))
                .copied()
                .collect();
            if let (Some(first), Some(_)) = (missing.first(), missing.last()) {
                anomalies.push(Anomaly::new(
                    "device-missed",
                    format!(
                        "user {user} device {device} chat {chat}: never got {} of the drains' messages, first seq {first}",
                        missing.len()
                    ),
                ));
            }
            for (seq, id) in got {
                match all.get(seq) {
                    Some(d) if d != id => anomalies.push(Anomaly::new(
                        "device-disagree",
                        format!("user {user} device {device} chat {chat} seq {seq}: got {id}, the drains hold {d}"),
                    )),
                    None => anomalies.push(Anomaly::new(
                        "device-disagree",
                        format!("user {user} device {device} chat {chat} seq {seq}: got {id}, in no drain"),
                    )),
                    _ => {}
                }
            }
        }
    }
    anomalies
}
