//! The connection registry: which node holds which device's stream, kept at each user's *home
//! node*, so a presence lookup asks one node per user instead of every node.
//!
//! A user's home is chosen by rendezvous hashing over the cluster's nodes (the partition map's,
//! removed nodes left out): every node computes the same home, and a node joining or leaving
//! re-homes only the users whose home it becomes or was. Each node's hub reports its streams
//! opening and closing ([`StreamChange`]); the [`Announcer`] sends them to their users' homes
//! (`chat.v1.GatewayPeer/Announce`), and every [`REFRESH`] — and at once when the node set
//! changes — sends each home the full list of its users' streams on this node, which replaces
//! what the home held from this node. The home keeps each entry for [`TTL`] after its last
//! refresh, so the streams of a node that died leave the registry within that time (a device
//! that reconnects elsewhere moves its entry at once).
//!
//! A home is *complete* once it has been up, with the same node set, for longer than a refresh:
//! every node has sent it a full list since. Until then, or when a home does not answer, the
//! lookup falls back to asking every node (see `presence.rs`): presence stays right through
//! restarts and membership changes, and costs O(N) only then.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_log::{LogNode, NodeId};
use chat_model::ids::{DeviceId, UserId};
use chat_proto::chat_v1::{self as pb};
use moka::sync::Cache;
use tokio::sync::mpsc;

use crate::hub::{last_seen_cache, now_ms, Hub, Presence};
use crate::presence::ClusterPresence;

/// How often every node sends each home the full list of its streams.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long a home keeps a stream nobody refreshed (its node died or cannot reach the home).
pub const TTL: Duration = Duration::from_secs(15);
/// How long an announcement waits for the home.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(500);

/// A device stream opened or closed on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamChange {
    pub user: UserId,
    pub device: DeviceId,
    pub open: bool,
}

/// The home of `user` among `nodes`: the node with the highest hash of (user, node).
pub fn home_of(user: UserId, nodes: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    nodes
        .into_iter()
        .max_by_key(|&node| (mix(user.0 ^ mix(node)), node))
}

/// splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit value.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A user homed here came online (its first stream anywhere opened) or went offline (its last
/// one closed), and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub user: UserId,
    pub online: bool,
    pub at_ms: u64,
}

/// One stream as its home holds it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    node: NodeId,
    refreshed: Instant,
}

/// The home side: the streams of the users homed at this node, wherever they are held.
pub struct Registry {
    streams: Mutex<HashMap<UserId, HashMap<DeviceId, Entry>>>,
    /// When each user's last stream (anywhere) closed, as this home saw it.
    last_seen: Cache<UserId, u64>,
    /// Since when this home has held what every node sent it (its start, or the last change of
    /// the node set, whichever is later).
    since: Mutex<Instant>,
    /// Where users coming online and going offline are reported (see `presence_push.rs`).
    transitions: std::sync::OnceLock<mpsc::UnboundedSender<Transition>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            streams: Mutex::default(),
            last_seen: last_seen_cache(),
            since: Mutex::new(Instant::now()),
            transitions: std::sync::OnceLock::new(),
        }
    }
}

impl Registry {
    /// Whether every node has sent this home a full list since its start or the last change of
    /// the node set: only then is "no stream" here an answer.
    pub fn complete(&self) -> bool {
        self.since.lock().expect("registry lock").elapsed() > REFRESH + Duration::from_secs(1)
    }

    /// Report users coming online and going offline from now on.
    pub fn set_transitions(&self, to: mpsc::UnboundedSender<Transition>) {
        let _ = self.transitions.set(to);
    }

    fn report(&self, user: UserId, online: bool, at_ms: u64) {
        if let Some(to) = self.transitions.get() {
            let _ = to.send(Transition {
                user,
                online,
                at_ms,
            });
        }
    }

    /// The node set changed: users may have moved here whose streams were announced elsewhere.
    pub fn nodes_changed(&self) {
        *self.since.lock().expect("registry lock") = Instant::now();
    }

    /// Take `node`'s announcement. With `full`, `opened` is every stream of this home's users
    /// on `node`, and whatever else the home held from `node` is gone.
    pub fn announce(
        &self,
        node: NodeId,
        opened: &[(UserId, DeviceId)],
        closed: &[(UserId, DeviceId)],
        full: bool,
    ) {
        let now = Instant::now();
        let mut streams = self.streams.lock().expect("registry lock");
        if full {
            let listed: BTreeSet<(UserId, DeviceId)> = opened.iter().copied().collect();
            let gone: Vec<(UserId, DeviceId)> = held_where(&streams, |e| e.node == node)
                .into_iter()
                .filter(|s| !listed.contains(s))
                .collect();
            for (user, device) in gone {
                self.close(&mut streams, user, device, Some(node));
            }
        }
        for &(user, device) in opened {
            if streams.get(&user).is_none_or(HashMap::is_empty) {
                self.report(user, true, now_ms());
            }
            streams.entry(user).or_default().insert(
                device,
                Entry {
                    node,
                    refreshed: now,
                },
            );
        }
        for &(user, device) in closed {
            self.close(&mut streams, user, device, Some(node));
        }
    }

    /// Drop `device`'s stream of `user` (only if `node` holds it, when given: the device may
    /// have reconnected elsewhere already); the user was last seen now if it was their last.
    fn close(
        &self,
        streams: &mut HashMap<UserId, HashMap<DeviceId, Entry>>,
        user: UserId,
        device: DeviceId,
        node: Option<NodeId>,
    ) {
        let Some(devices) = streams.get_mut(&user) else {
            return;
        };
        if devices
            .get(&device)
            .is_some_and(|e| node.is_none_or(|n| e.node == n))
        {
            devices.remove(&device);
        }
        if devices.is_empty() {
            streams.remove(&user);
            let now = now_ms();
            self.last_seen.insert(user, now);
            self.report(user, false, now);
        }
    }

    /// Drop the streams nobody refreshed within [`TTL`].
    pub fn expire(&self) {
        let mut streams = self.streams.lock().expect("registry lock");
        let stale = held_where(&streams, |e| e.refreshed.elapsed() > TTL);
        for (user, device) in stale {
            self.close(&mut streams, user, device, None);
        }
    }

    /// What this home knows of each user: the devices with a stream anywhere, and when the last
    /// one closed.
    pub fn presence(&self, users: &[UserId]) -> Vec<Presence> {
        let streams = self.streams.lock().expect("registry lock");
        users
            .iter()
            .map(|user| Presence {
                last_seen_ms: self.last_seen.get(user).unwrap_or(0),
                devices: streams
                    .get(user)
                    .map(|d| d.keys().map(|d| d.0).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Streams held, for metrics.
    pub fn len(&self) -> usize {
        self.streams
            .lock()
            .expect("registry lock")
            .values()
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The (user, device) streams whose entries satisfy `pred`.
fn held_where(
    streams: &HashMap<UserId, HashMap<DeviceId, Entry>>,
    pred: impl Fn(&Entry) -> bool,
) -> Vec<(UserId, DeviceId)> {
    streams
        .iter()
        .flat_map(|(user, devices)| {
            devices
                .iter()
                .filter(|(_, e)| pred(e))
                .map(move |(device, _)| (*user, *device))
        })
        .collect()
}

/// The sending side: this node's stream changes to their users' homes.
pub struct Announcer {
    node: Arc<LogNode>,
    hub: Arc<Hub>,
    peers: Arc<ClusterPresence>,
}

impl Announcer {
    /// Start announcing `hub`'s streams (until the node stops).
    pub fn start(node: Arc<LogNode>, hub: Arc<Hub>, peers: Arc<ClusterPresence>) {
        let (tx, rx) = mpsc::unbounded_channel();
        hub.set_announcer(tx);
        let announcer = Announcer { node, hub, peers };
        tokio::spawn(announcer.run(rx));
    }

    async fn run(self, mut changes: mpsc::UnboundedReceiver<StreamChange>) {
        let mut refresh = tokio::time::interval(REFRESH);
        let mut map = self.node.watch_map();
        let mut nodes: BTreeSet<NodeId> = self.node.members().into_keys().collect();
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    let mut batch = vec![change];
                    while let Ok(more) = changes.try_recv() {
                        batch.push(more);
                    }
                    self.send_changes(&nodes, batch).await;
                }
                _ = refresh.tick() => {
                    let registry = self.peers.registry();
                    registry.expire();
                    metrics::gauge!("chatd_registry_streams").set(registry.len() as f64);
                    self.send_full(&nodes).await;
                }
                changed = map.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now: BTreeSet<NodeId> = self.node.members().into_keys().collect();
                    if now != nodes {
                        nodes = now;
                        self.peers.registry().nodes_changed();
                        self.send_full(&nodes).await;
                    }
                }
                _ = self.node.until_stopped() => return,
            }
        }
    }

    /// Opened and closed streams, grouped by their users' homes.
    async fn send_changes(&self, nodes: &BTreeSet<NodeId>, batch: Vec<StreamChange>) {
        let mut by_home: HashMap<NodeId, (Vec<_>, Vec<_>)> = HashMap::new();
        for c in batch {
            let Some(home) = home_of(c.user, nodes.iter().copied()) else {
                continue;
            };
            let (opened, closed) = by_home.entry(home).or_default();
            if c.open {
                opened.push((c.user, c.device));
            } else {
                closed.push((c.user, c.device));
            }
        }
        for (home, (opened, closed)) in by_home {
            self.send(home, &opened, &closed, false).await;
        }
    }

    /// Every stream on this node, to every home (a home with none of them still hears it, so it
    /// drops what it held from this node).
    async fn send_full(&self, nodes: &BTreeSet<NodeId>) {
        let mut by_home: HashMap<NodeId, Vec<(UserId, DeviceId)>> =
            nodes.iter().map(|&n| (n, Vec::new())).collect();
        for (user, device) in self.hub.streams() {
            if let Some(home) = home_of(user, nodes.iter().copied()) {
                by_home.entry(home).or_default().push((user, device));
            }
        }
        for (home, opened) in by_home {
            self.send(home, &opened, &[], true).await;
        }
    }

    async fn send(
        &self,
        home: NodeId,
        opened: &[(UserId, DeviceId)],
        closed: &[(UserId, DeviceId)],
        full: bool,
    ) {
        let me = self.node.node_id();
        if home == me {
            self.peers.registry().announce(me, opened, closed, full);
            return;
        }
        let Some(addr) = self.node.members().get(&home).cloned() else {
            return;
        };
        let Some(mut client) = self.peers.peer(&addr) else {
            return;
        };
        let entries = |list: &[(UserId, DeviceId)]| {
            list.iter()
                .map(|(u, d)| pb::StreamEntry {
                    user_id: u.0,
                    device_id: d.0,
                })
                .collect()
        };
        let mut request = tonic::Request::new(pb::AnnounceRequest {
            node_id: me,
            opened: entries(opened),
            closed: entries(closed),
            full,
        });
        request.set_timeout(ANNOUNCE_TIMEOUT);
        if let Err(status) = client.announce(request).await {
            // The next refresh sends everything again.
            tracing::debug!(home, %status, "announcing streams to their home");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_moves_only_for_users_of_the_node_that_joined_or_left() {
        let users: Vec<UserId> = (1..=2000).map(UserId).collect();
        let homes = |nodes: &[NodeId]| -> Vec<NodeId> {
            users
                .iter()
                .map(|&u| home_of(u, nodes.iter().copied()).unwrap())
                .collect()
        };
        let three = homes(&[1, 2, 3]);
        let four = homes(&[1, 2, 3, 4]);
        let mut moved = 0;
        for (before, after) in three.iter().zip(&four) {
            if before != after {
                assert_eq!(*after, 4, "a user may move only to the new node");
                moved += 1;
            }
        }
        // About a quarter move to the fourth node; every node gets a fair share.
        assert!((400..600).contains(&moved), "{moved} of 2000 moved");
        for n in 1..=3 {
            let share = three.iter().filter(|h| **h == n).count();
            assert!((550..780).contains(&share), "node {n} homes {share}");
        }
        assert_eq!(home_of(UserId(7), []), None);
    }

    #[test]
    fn a_home_follows_streams_by_node_and_device() {
        let r = Registry::default();
        let (alice, bob) = (UserId(1), UserId(2));
        r.announce(1, &[(alice, DeviceId(10)), (bob, DeviceId(20))], &[], false);
        assert_eq!(r.presence(&[alice])[0].devices, BTreeSet::from([10]));
        // Alice's device reconnects on node 2 before node 1 reports its stream closed: the late
        // close from node 1 does not take the new stream away.
        r.announce(2, &[(alice, DeviceId(10))], &[], false);
        r.announce(1, &[], &[(alice, DeviceId(10))], false);
        assert!(r.presence(&[alice])[0].online());
        // A full list from node 1 without Bob: Bob's stream there is gone, and he was seen now.
        r.announce(1, &[], &[], true);
        let bob_now = r.presence(&[bob]).remove(0);
        assert!(!bob_now.online());
        assert!(bob_now.last_seen_ms > 0);
        assert!(r.presence(&[alice])[0].online());
        r.announce(2, &[], &[(alice, DeviceId(10))], false);
        assert!(r.is_empty());
    }
}
