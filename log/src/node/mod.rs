//! A node of the log: every partition's Raft group on one [`Engine`], and the API the layers above
//! use — propose, read, subscribe, status, compaction.
//!
//! Membership is static for now: every node is given the same member list and calls
//! `initialize` on each partition at start-up; openraft accepts identical initial memberships on
//! every node, and a node that already has state skips the step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chat_proto::log::LogEvent;
use chat_proto::raft::raft_service_server::RaftServiceServer;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;

use crate::apply::{CommandHandler, StateEntries};
use crate::batcher::Batcher;
use crate::codec::{self, cf};
use crate::datadir;
use crate::derived::DerivedStore;
use crate::disk::{DiskConfig, DiskGuard, DiskState, DiskStatus};
use crate::engine::{Engine, EngineConfig, EngineSizes, StoreError};
use crate::error::ProposeError;
use crate::network::{NetworkFactory, PeerChannels, RaftServer, SecretCheck, MAX_MESSAGE_BYTES};
use crate::store::{Leading, PartitionLogStore, PartitionStateMachine, StateCache, TypeConfig};
use crate::types::{LogOffset, NodeId, PartitionId, ProposalOutcome};

/// Raft timing and log-compaction knobs.
///
/// Failover time follows from the timing: a follower that has heard nothing from its leader for
/// its lease (`election_timeout_max_ms`) plus a random election timeout (min..max) stands for
/// election, and openraft looks at its timers every 1.5 × `heartbeat_ms`. With the defaults a
/// partition whose leader died takes writes again about 0.5 s later (0.63 s at most over 20
/// kills: `chat-bench failover`, docs/benchmarks.md).
/// `heartbeat_ms` is also how long openraft waits for one AppendEntries answer before sending
/// again, so it must stay above a follower's append-and-fsync time under load.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Raft log entries kept behind a snapshot for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 250,
            snapshot_after_logs: 20_000,
            logs_kept_after_snapshot: 5_000,
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct LogNodeConfig {
    pub node_id: NodeId,
    /// Where the node keeps its RocksDB (`<data_dir>/db`).
    pub data_dir: PathBuf,
    /// Partitions of the cluster (fixed when the data dir is first initialised).
    pub partitions: u32,
    /// Every voter with its Raft RPC address, this node included.
    pub members: BTreeMap<NodeId, String>,
    pub cluster_secret: String,
    /// Source address for outgoing Raft connections (None: let the OS choose).
    pub bind_ip: Option<IpAddr>,
    pub raft: RaftTuning,
    /// Free-space reserve and ballast of the data disk.
    pub disk: DiskConfig,
    /// Memory and WAL caps of the storage engine.
    pub engine: EngineConfig,
}

/// Group-commit counters: WAL syncs, and the waiters they completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub syncs: u64,
    pub waiters: u64,
}

/// Whether a node's database is closed; see [`LogNode::storage_closed`].
pub struct StorageClosed(std::sync::Weak<Engine>);

impl StorageClosed {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// Wait until the database is closed; false if it still is not after `timeout`.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Status of one partition replica on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub last_offset: LogOffset,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<NodeId>,
}

#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub partitions: Vec<PartitionStatus>,
    pub disk: DiskStatus,
}

/// Keep `leading` equal to whether this node leads the partition whose metrics these are, until
/// the Raft group stops.
async fn track_leading(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
    leading: Leading,
) {
    loop {
        leading.set(metrics.borrow_and_update().state == ServerState::Leader);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Once a second: publish what the storage engine and caches hold, re-read free space (probing
/// RocksDB after ENOSPC), and while the disk is below its reserve, step away from leading. A leader that cannot take client writes should not keep its partitions: it stops
/// sending heartbeats and standing for election, so once the followers' leader lease runs out one
/// of them (with a disk that can write) is elected. When space is back, both are enabled again.
/// A partition with no other voter keeps its leader (and refuses writes until space is freed).
///
/// A thread of its own, not a tokio task: when the disk fills, RocksDB may stall writes on the
/// runtime's worker threads, and this watch is what releases the ballast that ends the stall.
fn watch_disk(node: std::sync::Weak<LogNode>) {
    let mut stepped_away = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        node.publish_sizes();
        let disk = node.engine.disk();
        disk.refresh();
        if disk.waiting_for_space() {
            // Fails (and changes nothing) until RocksDB has resumed; see `Engine::probe`.
            let _ = node.engine.probe();
        }
        disk.publish_metrics();
        let low = disk.state() != DiskState::Ok;
        if low == stepped_away {
            continue;
        }
        stepped_away = low;
        let open = node.elections_open.lock().expect("elections lock");
        for part in &node.partitions {
            if part.voters().len() < 2 {
                continue;
            }
            part.raft.runtime_config().elect(!low && *open);
        }
        // Heartbeats are the node's (`send_heartbeats`): stop them all, so the followers' leases
        // run out and they elect a leader that can write.
        node.stepped_away
            .store(low, std::sync::atomic::Ordering::Relaxed);
        drop(open);
        if low {
            tracing::warn!(disk = ?disk.status(), "disk below its reserve: refusing client writes and handing leaderships to other nodes");
        } else {
            tracing::info!(disk = ?disk.status(), "disk has room again: taking client writes and standing for election");
        }
    }
}

/// How long a node that has just started waits before its partitions stand for election.
const ELECTION_GRACE: Duration = Duration::from_secs(1);

/// After `grace`, let every partition stand for election (unless the disk watch has stepped the
/// node away); a partition whose only voter is this node, as soon as its membership is loaded.
///
/// A node that restarts while the others run has missed nothing but heartbeats, yet its election
/// timers start before its leaders have reconnected to it; if one ran out first, the node would
/// stand with a higher term and unseat a healthy leader (openraft 0.9 has no pre-vote). Waiting a
/// grace first costs nothing then: it still votes, and the leaders reach it well within the
/// grace. When the whole cluster restarts at once there is no leader to hear from, and elections
/// start `grace` later than they could. A first start initializes its partitions explicitly and
/// is not delayed; a single node has nobody to unseat and is not delayed either.
async fn open_elections(node: std::sync::Weak<LogNode>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut opened: Vec<bool> = Vec::new();
    loop {
        let over = tokio::time::Instant::now() >= deadline;
        {
            let Some(node) = node.upgrade() else { return };
            opened.resize(node.partitions.len(), false);
            let mut open = node.elections_open.lock().expect("elections lock");
            *open |= over;
            let stepped_away = node.stepped_away.load(std::sync::atomic::Ordering::Relaxed);
            for (part, opened) in node.partitions.iter().zip(opened.iter_mut()) {
                let alone = part.voters() == [node.config.node_id];
                // The disk watch keeps a group of one leading (it has no one to hand over to).
                if !*opened && ((over && !stepped_away) || alone) {
                    part.raft.runtime_config().elect(true);
                    *opened = true;
                }
            }
        }
        if over {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `every`, a heartbeat from each partition this node leads, all at the same instant.
///
/// openraft can time heartbeats itself, but per group, each on its own timer: P partitions then
/// send P messages per peer per interval at scattered times. Triggered together, they are ready
/// at once and the peer link (`network/mux.rs`) carries them in one frame per peer, so a node's
/// heartbeat cost per peer does not grow with its partitions.
async fn send_heartbeats(node: std::sync::Weak<LogNode>, every: Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.stopped.load(Relaxed) {
            return;
        }
        if node.stepped_away.load(Relaxed) {
            continue;
        }
        for part in node.partitions.iter().filter(|p| p.leading.get()) {
            // Fails only once the group has stopped (shutdown or a fatal storage error).
            let _ = part.raft.trigger().heartbeat().await;
        }
    }
}

struct Partition {
    raft: Raft<TypeConfig>,
    /// Whether this node leads the partition (from its Raft metrics).
    leading: Leading,
    batcher: Batcher,
    offsets: watch::Receiver<LogOffset>,
    /// The state machine's cache, kept here to report its size.
    cache: StateCache,
}

impl Partition {
    /// The partition's voters, as its Raft metrics say (none before it is initialized).
    fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }
}

/// A running node of the partitioned log.
pub struct LogNode {
    config: LogNodeConfig,
    engine: Arc<Engine>,
    derived: DerivedStore,
    partitions: Vec<Partition>,
    rafts: Arc<[Raft<TypeConfig>]>,
    /// Set by [`LogNode::shutdown`]; ends the disk watch and the heartbeats.
    stopped: std::sync::atomic::AtomicBool,
    /// Set while the disk is below its reserve: no heartbeats, so leaderships move away.
    stepped_away: std::sync::atomic::AtomicBool,
    /// Set once the start-up grace is over (`open_elections`). Whether the partitions stand
    /// for election is changed only under this lock, by the grace and by the disk watch.
    elections_open: Mutex<bool>,
}

impl LogNode {
    /// Open the node's storage and start a Raft group per partition. Call [`LogNode::initialize`]
    /// once the Raft service is being served.
    pub async fn open(
        config: LogNodeConfig,
        handler: Arc<dyn CommandHandler>,
    ) -> anyhow::Result<Arc<LogNode>> {
        if config.partitions == 0 {
            bail!("a cluster needs at least one partition");
        }
        if !config.members.contains_key(&config.node_id) {
            bail!(
                "node {} is not in the member list {:?}",
                config.node_id,
                config.members
            );
        }
        let db_path = config.data_dir.join("db");
        std::fs::create_dir_all(&db_path)
            .with_context(|| format!("create {}", db_path.display()))?;
        let disk = DiskGuard::open(&config.data_dir, config.disk.clone())
            .with_context(|| format!("read free space of {}", config.data_dir.display()))?;
        config.engine.check().map_err(anyhow::Error::msg)?;
        let engine = Engine::open_with(&db_path, Arc::new(disk), &config.engine)
            .with_context(|| format!("open RocksDB at {}", db_path.display()))?;
        datadir::check(&engine, &config.data_dir, config.node_id, config.partitions)?;
        let derived = DerivedStore::open(engine.clone()).context("open the derived data")?;

        let peers = PeerChannels::new(&config.cluster_secret, config.bind_ip)
            .map_err(anyhow::Error::msg)?;
        let raft_config = Arc::new(raft_config(&config.raft)?);
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in (0..config.partitions).map(PartitionId) {
            let leading = Leading::default();
            let log = PartitionLogStore::new(engine.clone(), p, leading.clone());
            let cache = StateCache::for_one_of(config.partitions, config.engine.state_cache_mib);
            let (sm, offsets) = PartitionStateMachine::open(
                engine.clone(),
                p,
                handler.clone(),
                leading.clone(),
                cache.clone(),
            )
            .with_context(|| format!("open state machine of {p}"))?;
            let network = NetworkFactory::new(p, peers.clone());
            let raft = Raft::new(config.node_id, raft_config.clone(), network, log, sm)
                .await
                .with_context(|| format!("start Raft of {p}"))?;
            // Not a candidate until its leaders have had time to reach it: `open_elections`.
            raft.runtime_config().elect(false);
            tokio::spawn(track_leading(raft.metrics(), leading.clone()));
            let batcher = Batcher::spawn(p, raft.clone());
            partitions.push(Partition {
                raft,
                leading,
                batcher,
                offsets,
                cache,
            });
        }
        let rafts: Arc<[Raft<TypeConfig>]> = partitions.iter().map(|p| p.raft.clone()).collect();
        tracing::info!(node = config.node_id, partitions = config.partitions, data_dir = %config.data_dir.display(), "log node open");
        let node = Arc::new(LogNode {
            config,
            engine,
            derived,
            partitions,
            rafts,
            stopped: std::sync::atomic::AtomicBool::new(false),
            stepped_away: std::sync::atomic::AtomicBool::new(false),
            elections_open: Mutex::new(false),
        });
        tokio::spawn(open_elections(Arc::downgrade(&node), ELECTION_GRACE));
        let every = Duration::from_millis(node.config.raft.heartbeat_ms);
        tokio::spawn(send_heartbeats(Arc::downgrade(&node), every));
        let weak = Arc::downgrade(&node);
        std::thread::Builder::new()
            .name("disk-watch".into())
            .spawn(move || watch_disk(weak))
            .context("start the disk-watch thread")?;
        Ok(node)
    }

    /// Form the cluster on first start: every partition gets the configured members. A partition
    /// that already has Raft state (a restart) is left as it is.
    ///
    /// openraft starts an election on the node that initializes, so to spread leadership the
    /// partition's preferred node (members in id order, round-robin by partition) initializes at
    /// once and the others only after two maximum election timeouts, and only if by then they
    /// have heard nothing (the preferred node may be down). Initializing with the same members on
    /// several nodes is safe: openraft accepts identical initial memberships.
    pub async fn initialize(&self) -> anyhow::Result<()> {
        let members: BTreeMap<NodeId, BasicNode> = self
            .config
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        let ids: Vec<NodeId> = members.keys().copied().collect();
        // Long enough for nodes started together to all be up (3 s), whatever the election
        // timeouts: a partition initialized by the wrong node still works, but leaderships then
        // gather on whichever node came up first.
        let grace = Duration::from_millis((2 * self.config.raft.election_timeout_max_ms).max(3000));
        for (i, part) in self.partitions.iter().enumerate() {
            if part.raft.is_initialized().await? {
                continue;
            }
            let raft = part.raft.clone();
            let members = members.clone();
            if ids[i % ids.len()] == self.config.node_id {
                initialize_partition(&raft, members).await?;
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Err(e) = initialize_partition(&raft, members).await {
                        tracing::error!(partition = i, error = %e, "initialize");
                    }
                });
            }
        }
        Ok(())
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Whether this node currently leads `p` (as its Raft metrics say; may be stale by an
    /// election).
    pub fn is_leader(&self, p: PartitionId) -> bool {
        self.partition(p)
            .map(|part| part.raft.metrics().borrow().current_leader == Some(self.config.node_id))
            .unwrap_or(false)
    }

    /// The source address for connections to other nodes (None: the OS chooses). Every
    /// node-to-node connection (Raft, forwarding, presence) uses it, so faults between node
    /// addresses cut all of them.
    pub fn bind_ip(&self) -> Option<IpAddr> {
        self.config.bind_ip
    }

    /// Every configured voter and its address, this node included.
    pub fn members(&self) -> &BTreeMap<NodeId, String> {
        &self.config.members
    }

    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    /// Read every stored record and check its crc32 (blocking; run it off the runtime): how
    /// many were checked, and one line per damaged record naming its column family and key.
    pub fn verify_checksums(&self) -> Result<(u64, Vec<String>), StoreError> {
        self.engine.verify_all()
    }

    /// WAL syncs and the waiters they completed since the node opened (group-commit stats).
    pub fn sync_stats(&self) -> SyncCounts {
        let stats = self.engine.stats();
        SyncCounts {
            syncs: stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
            waiters: stats.waiters.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A handle that tells when this node's database has been closed, i.e. every handle to
    /// it dropped after [`LogNode::shutdown`] (RocksDB's lock released, the dir reopenable).
    pub fn storage_closed(&self) -> StorageClosed {
        StorageClosed(Arc::downgrade(&self.engine))
    }

    /// Where layers above keep data derived from the log (read models).
    pub fn derived(&self) -> DerivedStore {
        self.derived.clone()
    }

    /// The tonic service peers call for Raft RPC, behind the cluster-secret check.
    pub fn raft_service(&self) -> InterceptedService<RaftServiceServer<RaftServer>, SecretCheck> {
        let server = RaftServiceServer::new(RaftServer::new(self.rafts.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, self.internal_check())
    }

    /// The interceptor of this node's other internal services (secret and protocol version).
    pub fn internal_check(&self) -> SecretCheck {
        SecretCheck::internal(&self.config.cluster_secret)
    }

    /// The interceptor of the admin API (the secret only).
    pub fn admin_check(&self) -> SecretCheck {
        SecretCheck::admin(&self.config.cluster_secret)
    }

    fn partition(&self, p: PartitionId) -> Result<&Partition, ProposeError> {
        self.partitions
            .get(p.0 as usize)
            .ok_or(ProposeError::UnknownPartition(p))
    }

    /// Replicate `commands` (in this order, contiguously) and return each one's outcome once
    /// they are committed by a quorum (durably on each counted voter) and applied here.
    /// Concurrent proposals to a partition share Raft entries (see [`crate::batcher`]).
    ///
    /// A leader whose disk is below its reserve refuses with [`ProposeError::DiskFull`]; other
    /// nodes answer `NotLeader` as usual, so a proposal is judged by the disk that takes it first.
    pub async fn propose(
        &self,
        p: PartitionId,
        commands: Vec<Vec<u8>>,
    ) -> Result<ProposalOutcome, ProposeError> {
        let part = self.partition(p)?;
        if self.is_leader(p) {
            self.engine
                .disk()
                .admit()
                .map_err(|full| ProposeError::DiskFull {
                    node: self.config.node_id,
                    full,
                })?;
        }
        part.batcher.propose(commands).await
    }

    /// Read up to `limit` events of `p` starting at offset `from` from this node's replica.
    pub fn read_events(
        &self,
        p: PartitionId,
        from: LogOffset,
        limit: usize,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let from = from.max(LogOffset(1));
        let start = codec::event_key(p, from);
        let mut events = Vec::new();
        for item in self
            .engine
            .scan_from(cf::EVENTS, &start, codec::partition_end(p))
            .take(limit)
        {
            let (key, payload) = item?;
            let event = LogEvent::decode(payload.as_slice())
                .map_err(|e| StoreError::decode(codec::describe_key(cf::EVENTS, &key), e))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Read one event of `p` from this node's replica.
    pub fn read_event(
        &self,
        p: PartitionId,
        offset: LogOffset,
    ) -> Result<Option<LogEvent>, StoreError> {
        let events = self.read_events(p, offset, 1)?;
        Ok(events.into_iter().next().filter(|e| e.offset == offset.0))
    }

    /// Read a command handler's state key of `p` from this node's replica.
    pub fn handler_get(&self, p: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(
            cf::STATE,
            &codec::state_key(p, codec::StateNs::Handler, key),
        )
    }

    /// Read up to `limit` of a command handler's state entries of `p` whose keys start with
    /// `prefix`, from this node's replica.
    pub fn handler_scan_prefix(
        &self,
        p: PartitionId,
        prefix: &[u8],
        limit: usize,
    ) -> Result<StateEntries, StoreError> {
        self.handler_scan(p, prefix, &codec::prefix_end(prefix), limit)
    }

    /// Read up to `limit` of a command handler's state entries of `p` with keys in `from..to`,
    /// from this node's replica.
    pub fn handler_scan(
        &self,
        p: PartitionId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<StateEntries, StoreError> {
        let start = codec::state_key(p, codec::StateNs::Handler, from);
        let end = codec::state_key(p, codec::StateNs::Handler, to);
        let skip = start.len() - from.len();
        self.engine
            .scan_from(cf::STATE, &start, end)
            .take(limit)
            .map(|item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
            .collect()
    }

    /// The last offset applied on this node's replica of `p`.
    pub fn last_offset(&self, p: PartitionId) -> Result<LogOffset, ProposeError> {
        Ok(*self.partition(p)?.offsets.borrow())
    }

    /// A read barrier on the leader of `p`: confirm leadership with a quorum, wait until
    /// everything committed before the call is applied here, and answer the last applied offset.
    /// A replica that has applied that offset serves reads that see every write acknowledged
    /// before the barrier (a Raft read index). Fails with `NotLeader` elsewhere.
    pub async fn read_index(&self, p: PartitionId) -> Result<LogOffset, ProposeError> {
        let part = self.partition(p)?;
        part.raft.ensure_linearizable().await.map_err(|e| {
            let status = partition_status(p, part);
            match e {
                openraft::error::RaftError::APIError(_) => {
                    ProposeError::not_leader(p, status.leader_id, status.leader_addr)
                }
                openraft::error::RaftError::Fatal(f) => ProposeError::Stopped {
                    partition: p,
                    message: f.to_string(),
                },
            }
        })?;
        Ok(*part.offsets.borrow())
    }

    /// Wait until this replica of `p` has applied `offset`; false on timeout, an error once the
    /// partition has stopped.
    pub async fn wait_for_offset(
        &self,
        p: PartitionId,
        offset: LogOffset,
        timeout: Duration,
    ) -> Result<bool, ProposeError> {
        let mut offsets = self.partition(p)?.offsets.clone();
        let reached = tokio::time::timeout(timeout, offsets.wait_for(|o| *o >= offset))
            .await
            .map(|r| r.map(|_| ()));
        match reached {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Err(ProposeError::Stopped {
                partition: p,
                message: "the partition's state machine has stopped".into(),
            }),
            Err(_) => Ok(false),
        }
    }

    /// Follow `p`'s committed events from offset `from`: first what is stored, then each event as
    /// it is applied. The stream ends when the receiver is dropped or on a storage error (which
    /// it yields first).
    pub fn subscribe(
        self: &Arc<Self>,
        p: PartitionId,
        from: LogOffset,
    ) -> Result<ReceiverStream<Result<LogEvent, StoreError>>, ProposeError> {
        let mut offsets = self.partition(p)?.offsets.clone();
        let (tx, rx) = mpsc::channel(256);
        let node = self.clone();
        tokio::spawn(async move {
            let mut next = from.max(LogOffset(1));
            loop {
                // Mark the current offset as seen before reading, so an apply that lands after the
                // read wakes the wait below.
                offsets.borrow_and_update();
                let batch = match node.read_events(p, next, 256) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    if offsets.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                for event in batch {
                    next = LogOffset(event.offset + 1);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// What this node's RocksDB holds now (SST and memtable bytes per column family, block
    /// cache, WAL).
    pub fn storage_sizes(&self) -> EngineSizes {
        self.engine.sizes()
    }

    /// Publish what RocksDB and the state caches hold as metrics (`chatd_rocksdb_*`,
    /// `chatd_state_cache_bytes`), so an SRE sees memory and WAL level off (or not).
    fn publish_sizes(&self) {
        self.engine.publish_metrics();
        let cached: u64 = self.partitions.iter().map(|p| p.cache.bytes()).sum();
        metrics::gauge!("chatd_state_cache_bytes").set(cached as f64);
    }

    /// Role, term, leader and progress of every partition.
    pub fn status(&self) -> NodeStatus {
        let partitions = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, part)| partition_status(PartitionId(i as u32), part))
            .collect();
        NodeStatus {
            node_id: self.config.node_id,
            partitions,
            disk: self.engine.disk().status(),
        }
    }

    /// sha256 over this replica's event log of `p` (offset order), with its last offset.
    pub fn digest(&self, p: PartitionId) -> Result<(LogOffset, [u8; 32]), StoreError> {
        let mut hasher = Sha256::new();
        let mut last = LogOffset::ZERO;
        let start = codec::event_key(p, LogOffset(1));
        for item in self
            .engine
            .scan_from(cf::EVENTS, &start, codec::partition_end(p))
        {
            let (key, payload) = item?;
            last = LogOffset(codec::key_u64(&key).unwrap_or_default());
            hasher.update((payload.len() as u64).to_be_bytes());
            hasher.update(&payload);
        }
        Ok((last, hasher.finalize().into()))
    }

    /// Build a snapshot of `p` now; openraft then purges the Raft log behind it (keeping
    /// `logs_kept_after_snapshot` entries), and RocksDB compacts the partition's Raft log range
    /// so the purged entries' space is returned, not just marked deleted. Returns the snapshot's
    /// last log index.
    pub async fn compact(&self, p: PartitionId, timeout: Duration) -> anyhow::Result<u64> {
        let part = self.partition(p)?;
        let target = part.raft.metrics().borrow().last_applied.map(|l| l.index);
        part.raft.trigger().snapshot().await?;
        let metrics = part
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.map(|s| s.index) >= target, "snapshot built")
            .await
            .with_context(|| format!("waiting for the snapshot of {p}"))?;
        let snapshot = metrics.snapshot.map(|s| s.index).unwrap_or_default();
        // openraft purges once no replication still reads the entries; give it the same time.
        let keep = self.config.raft.logs_kept_after_snapshot;
        // With no more than `keep` entries behind the snapshot there is nothing to purge.
        let purged = if snapshot <= keep {
            Ok(())
        } else {
            part.raft
                .wait(Some(timeout))
                .metrics(
                    |m| m.purged.map(|l| l.index + keep) >= Some(snapshot),
                    "raft log purged",
                )
                .await
                .map(drop)
        };
        if purged.is_err() {
            tracing::warn!(partition = %p, "raft log not purged in time; compacting what is");
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_raft_log(p))
            .await
            .context("compaction task")?;
        Ok(snapshot)
    }

    /// Wait until `p` has a leader (any node) and return it.
    pub async fn wait_for_leader(
        &self,
        p: PartitionId,
        timeout: Duration,
    ) -> anyhow::Result<NodeId> {
        let part = self.partition(p)?;
        let m = part
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await?;
        Ok(m.current_leader.expect("waited for a leader"))
    }

    /// Stop every Raft group. Storage is closed when the last handle to the node is dropped.
    pub async fn shutdown(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (i, part) in self.partitions.iter().enumerate() {
            if let Err(e) = part.raft.shutdown().await {
                tracing::warn!(partition = i, error = %e, "raft shutdown");
            }
        }
        tracing::info!(node = self.config.node_id, "log node stopped");
    }
}

/// Initialize one partition's Raft with `members` unless it already has state.
async fn initialize_partition(
    raft: &Raft<TypeConfig>,
    members: BTreeMap<NodeId, BasicNode>,
) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn partition_status(p: PartitionId, part: &Partition) -> PartitionStatus {
    let m = part.raft.metrics().borrow().clone();
    let leader_addr = m.current_leader.and_then(|id| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    });
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    PartitionStatus {
        partition: p,
        role: match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        },
        term: m.current_term,
        leader_id: m.current_leader,
        leader_addr,
        last_log_index: m.last_log_index.unwrap_or_default(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or_default(),
        last_offset: *part.offsets.borrow(),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        voters: voters.into_iter().collect(),
    }
}

fn raft_config(t: &RaftTuning) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "chat".into(),
        heartbeat_interval: t.heartbeat_ms,
        // Heartbeats come from one node-wide timer instead (`send_heartbeats`).
        enable_heartbeat: false,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_after_logs),
        max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    Ok(config.validate()?)
}
