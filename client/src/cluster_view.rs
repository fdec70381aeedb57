//! Several nodes' answers side by side, for `chatctl --endpoints`: the status of every node in
//! one table, and each partition's digest compared across its replicas with divergence flagged.
//!
//! The digests of two replicas can only be compared at the same offset (a digest covers the
//! whole event log): a replica at a lower offset is behind, not divergent; two replicas at the
//! same offset with different digests have diverged, which must never happen.

use std::collections::BTreeMap;

use chat_proto::admin::{DigestReply, StatusReply};

/// One node's status, or why it could not be had.
pub type NodeAnswer = (String, Result<StatusReply, String>);

/// What a node's replica of a partition holds: its address, node id and digest.
#[derive(Debug, Clone)]
pub struct ReplicaDigest {
    pub addr: String,
    pub node_id: u64,
    pub digest: DigestReply,
}

/// What the replicas of one partition say about each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every replica at the highest offset has the same digest, and none is behind.
    Identical,
    /// The replicas at the highest offset agree; these nodes are at lower offsets.
    Behind(Vec<u64>),
    /// Replicas at the same offset have different digests: these nodes, grouped by digest.
    Diverged(Vec<Vec<u64>>),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Behind(_) => "behind",
            Verdict::Diverged(_) => "DIVERGED",
        }
    }
}

/// Judge one partition's replicas. Replicas at the same offset must have the same digest;
/// any two that do not are divergence, whatever the others say.
pub fn verdict(replicas: &[ReplicaDigest]) -> Verdict {
    let mut by_offset: BTreeMap<u64, BTreeMap<&[u8], Vec<u64>>> = BTreeMap::new();
    for r in replicas {
        by_offset
            .entry(r.digest.last_offset)
            .or_default()
            .entry(r.digest.sha256.as_slice())
            .or_default()
            .push(r.node_id);
    }
    let diverged: Vec<Vec<u64>> = by_offset
        .values()
        .filter(|digests| digests.len() > 1)
        .flat_map(|digests| digests.values().cloned())
        .collect();
    if !diverged.is_empty() {
        return Verdict::Diverged(diverged);
    }
    let top = by_offset.keys().next_back().copied().unwrap_or(0);
    let behind: Vec<u64> = replicas
        .iter()
        .filter(|r| r.digest.last_offset < top)
        .map(|r| r.node_id)
        .collect();
    if behind.is_empty() {
        Verdict::Identical
    } else {
        Verdict::Behind(behind)
    }
}

/// Every node's status in one table: what it holds and leads, its map epoch, its disk, and how
/// far its least advanced replica is behind the most advanced replica of that partition.
pub fn format_cluster_status(answers: &[NodeAnswer]) -> String {
    let lag = replica_lag(answers);
    let mut out =
        String::from("node  addr                   held  leading  map_epoch  disk  behind\n");
    for (addr, answer) in answers {
        match answer {
            Ok(s) => {
                let leading = s.partitions.iter().filter(|p| p.role == "leader").count();
                let disk = s.disk.as_ref().map_or("-", |d| d.state.as_str());
                out.push_str(&format!(
                    "{:<5} {addr:<22} {:<5} {leading:<8} {:<10} {disk:<5} {}\n",
                    s.node_id,
                    s.partitions.len(),
                    s.map_epoch,
                    lag.get(&s.node_id).copied().unwrap_or(0)
                ));
            }
            Err(e) => out.push_str(&format!("?     {addr:<22} unreachable: {e}\n")),
        }
    }
    out
}

/// The same as JSON: an array with one object per endpoint.
pub fn cluster_status_json(answers: &[NodeAnswer]) -> serde_json::Value {
    let lag = replica_lag(answers);
    let nodes: Vec<serde_json::Value> = answers
        .iter()
        .map(|(addr, answer)| match answer {
            Ok(s) => serde_json::json!({
                "addr": addr,
                "behind": lag.get(&s.node_id).copied().unwrap_or(0),
                "status": crate::admin::status_json(s),
            }),
            Err(e) => serde_json::json!({"addr": addr, "error": e}),
        })
        .collect();
    serde_json::Value::Array(nodes)
}

/// Per node, the most entries any of its replicas has applied fewer of than the partition's
/// most advanced replica among the answers.
fn replica_lag(answers: &[NodeAnswer]) -> BTreeMap<u64, u64> {
    let mut top: BTreeMap<u32, u64> = BTreeMap::new();
    for s in answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
        for p in &s.partitions {
            let t = top.entry(p.partition).or_default();
            *t = (*t).max(p.applied_index);
        }
    }
    answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .map(|s| {
            let worst = s
                .partitions
                .iter()
                .map(|p| top[&p.partition].saturating_sub(p.applied_index))
                .max()
                .unwrap_or(0);
            (s.node_id, worst)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node_id: u64, last_offset: u64, sha: u8) -> ReplicaDigest {
        ReplicaDigest {
            addr: format!("n{node_id}"),
            node_id,
            digest: DigestReply {
                last_offset,
                sha256: vec![sha; 32],
                applied_index: last_offset,
            },
        }
    }

    #[test]
    fn replicas_are_judged_at_equal_offsets_only() {
        let same = [replica(1, 10, 7), replica(2, 10, 7), replica(3, 10, 7)];
        assert_eq!(verdict(&same), Verdict::Identical);
        let one_behind = [replica(1, 10, 7), replica(2, 8, 3), replica(3, 10, 7)];
        assert_eq!(verdict(&one_behind), Verdict::Behind(vec![2]));
        let split = [replica(1, 10, 7), replica(2, 10, 9), replica(3, 10, 7)];
        assert_eq!(
            verdict(&split),
            Verdict::Diverged(vec![vec![1, 3], vec![2]])
        );
        // Divergence among replicas that are behind is divergence too.
        let behind_split = [replica(1, 12, 1), replica(2, 10, 2), replica(3, 10, 3)];
        assert_eq!(
            verdict(&behind_split),
            Verdict::Diverged(vec![vec![2], vec![3]])
        );
        assert_eq!(verdict(&[]), Verdict::Identical);
    }
}
