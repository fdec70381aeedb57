//! Which peer nodes answer: since when each has left this node's Raft calls unanswered.
//!
//! The placement driver runs on the metadata group's leader, and that group has every node as a
//! voter or learner, so the leader calls every node at least once a heartbeat. Its view tells
//! the driver which nodes are down: it moves no replica onto one, promotes none to a metadata
//! voter, and gives up a move whose new replica's node went silent (see `placement/driver.rs`),
//! so a node that dies before an operator replaces it does not stall placement.
//!
//! A call that times out or cannot connect counts as unanswered; any reply, an error from the
//! peer's Raft included, counts as answered. A node never called is not silent.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Shared by every partition's network clients on one node.
#[derive(Clone, Default)]
pub struct PeerReach(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl PeerReach {
    /// `node` answered a call.
    pub(crate) fn answered(&self, node: NodeId) {
        let mut silent = self.0.lock().expect("peer reach lock");
        if !silent.is_empty() {
            silent.remove(&node);
        }
    }

    /// A call to `node` went unanswered (the first since its last answer starts the clock).
    pub(crate) fn unanswered(&self, node: NodeId) {
        self.0
            .lock()
            .expect("peer reach lock")
            .entry(node)
            .or_insert_with(Instant::now);
    }

    /// The nodes that have answered none of this node's calls for at least `for_at_least`.
    pub(crate) fn silent(&self, for_at_least: Duration) -> BTreeSet<NodeId> {
        let now = Instant::now();
        self.0
            .lock()
            .expect("peer reach lock")
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= for_at_least)
            .map(|(node, _)| *node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_silent_from_its_first_unanswered_call_until_it_answers() {
        let reach = PeerReach::default();
        reach.unanswered(2);
        std::thread::sleep(Duration::from_millis(30));
        // Later failures do not restart the clock.
        reach.unanswered(2);
        reach.unanswered(3);
        assert_eq!(reach.silent(Duration::from_millis(20)), BTreeSet::from([2]));
        assert_eq!(reach.silent(Duration::ZERO), BTreeSet::from([2, 3]));
        reach.answered(2);
        assert_eq!(reach.silent(Duration::ZERO), BTreeSet::from([3]));
        // Never called: never silent.
        assert!(!reach.silent(Duration::ZERO).contains(&4));
    }
}
