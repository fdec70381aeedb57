//! A node of the log: the Raft groups of the partitions it holds and of the metadata group, on
//! one [`Engine`], and the API the layers above use — propose, read, subscribe, status,
//! compaction.
//!
//! Which partitions a node holds is the partition map's to say (`crate::placement`): a
//! cluster's first members compute the same first map from their member list and initialize
//! the groups it gives them; afterwards groups open and close here as the map moves replicas
//! (`membership.rs`). The loops beside the groups (disk watch, election grace, heartbeats) are
//! in `tasks.rs`; one group and the registry of them in `partition.rs`.

mod damage;
pub use damage::RepairReport;
mod membership;
mod partition;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chat_proto::log::LogEvent;
use chat_proto::raft::placement_server::PlacementServer;
use chat_proto::raft::raft_service_server::RaftServiceServer;
use openraft::{Config, SnapshotPolicy};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;

use crate::apply::{CommandHandler, StateEntries};
use crate::codec::{self, cf};
use crate::datadir;
use crate::derived::DerivedStore;
use crate::disk::{DiskConfig, DiskGuard, DiskStatus};
use crate::engine::{Engine, EngineConfig, EngineSizes, StoreError};
use crate::error::ProposeError;
use crate::network::{PeerChannels, RaftServer, SecretCheck, MAX_MESSAGE_BYTES};
use crate::placement::{MetaHandler, PartitionMap, PlacementService};
use crate::types::{LogOffset, NodeId, PartitionId, ProposalOutcome};

pub(crate) use partition::{Groups, Partition};

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
    #[serde(deserialize_with = "crate::duration_setting::millis")]
    pub heartbeat_ms: u64,
    #[serde(deserialize_with = "crate::duration_setting::millis")]
    pub election_timeout_min_ms: u64,
    #[serde(deserialize_with = "crate::duration_setting::millis")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Raft log entries kept behind a snapshot for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
    /// Proposals that may wait for one partition's Raft writes; one more is refused
    /// (`ProposeError::Overloaded`) instead of queueing without bound.
    pub proposal_queue: usize,
    /// Bytes of commands that may wait for, or be in, one partition's Raft writes.
    pub proposal_queue_bytes: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 250,
            snapshot_after_logs: 20_000,
            logs_kept_after_snapshot: 5_000,
            proposal_queue: 16_384,
            proposal_queue_bytes: 64 * 1024 * 1024,
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
    /// Whether the operator chose `partitions`. If not (the default was taken), a data dir made
    /// earlier keeps the count it was made with, so a release that changes the default never
    /// strands a node; if so, a data dir made with another count is refused.
    pub partitions_chosen: bool,
    /// Replicas per partition when the cluster forms (fewer if it has fewer members); the
    /// partition map keeps it afterwards. Must be the same on every first member.
    pub replication: u32,
    /// The members the cluster forms with, each with its internal address, this node included.
    /// A node that joins a running cluster (`join`) lists itself and the nodes it may ask.
    pub members: BTreeMap<NodeId, String>,
    /// Join a running cluster instead of forming one: the node starts with no partitions and
    /// waits to be added to the map (`chatctl node add`).
    pub join: bool,
    pub cluster_secret: String,
    /// Source address for outgoing Raft connections (None: let the OS choose).
    pub bind_ip: Option<IpAddr>,
    /// How this node dials others: plaintext, or TLS with its node certificate.
    pub dialer: chat_tls::Dialer,
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
    pub learners: Vec<NodeId>,
    /// Why this replica is damaged (a record failed its check), if it is: it serves no reads
    /// of the partition and leads it not, until `chatctl repair`.
    pub damage: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node_id: NodeId,
    /// The data partitions this node holds.
    pub partitions: Vec<PartitionStatus>,
    /// The metadata group.
    pub meta: Option<PartitionStatus>,
    /// The epoch of this node's partition map (None before the cluster has one).
    pub map_epoch: Option<u64>,
    pub disk: DiskStatus,
}
/// A running node of the partitioned log.
pub struct LogNode {
    config: LogNodeConfig,
    engine: Arc<Engine>,
    derived: DerivedStore,
    /// Applies the data partitions' commands (the metadata group has its own handler).
    handler: Arc<dyn CommandHandler>,
    opener: partition::Opener,
    groups: Groups,
    /// The random id of this node's data dir (registered in the partition map).
    incarnation: u64,
    /// Whether the data dir was created by this start (nothing of the cluster is stored yet).
    fresh: bool,
    /// Whether this start forms the cluster (see `placement_at_start`).
    forming: std::sync::atomic::AtomicBool,
    /// Whether this data dir comes from a release before placement (partitions with Raft
    /// state, no map): its cluster's first map keeps every partition on every member, as
    /// their Raft groups have it.
    upgraded: std::sync::atomic::AtomicBool,
    /// This node's copy of the committed partition map (None until the cluster has one).
    map: watch::Sender<Option<Arc<PartitionMap>>>,
    /// The data partitions this node runs a group of.
    hosted: watch::Sender<BTreeSet<PartitionId>>,
    /// Partitions whose leadership this node is handing over, to whom: no heartbeats, no
    /// proposals until the target has been elected (or the handover given up).
    handovers: Mutex<BTreeMap<PartitionId, NodeId>>,
    /// Set by [`LogNode::shutdown`]; ends the disk watch, heartbeats and placement loop.
    stopped: std::sync::atomic::AtomicBool,
    /// The same, for tasks that wait on something else meanwhile (they give up at once).
    stopping: watch::Sender<bool>,
    /// Set while the disk is below its reserve: no heartbeats, so leaderships move away.
    stepped_away: std::sync::atomic::AtomicBool,
    /// Set once the start-up grace is over (`open_elections`). Whether the groups stand
    /// for election is changed only under this lock, by the grace and by the disk watch.
    elections_open: Mutex<bool>,
    /// Partitions whose replica here failed a check (see `damage.rs`).
    damage: Arc<damage::Damage>,
}

impl LogNode {
    /// Open the node's storage and start the Raft groups of the metadata group and of the
    /// partitions this node holds. Call [`LogNode::initialize`] once the Raft service is being
    /// served.
    pub async fn open(
        mut config: LogNodeConfig,
        handler: Arc<dyn CommandHandler>,
    ) -> anyhow::Result<Arc<LogNode>> {
        if config.partitions == 0 {
            bail!("a cluster needs at least one partition");
        }
        if config.replication == 0 {
            bail!("replication must be at least 1");
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
        let dir = datadir::check(
            &engine,
            &config.data_dir,
            config.node_id,
            config.partitions,
            config.partitions_chosen,
        )?;
        config.partitions = dir.partitions;
        crate::backup::admit_restored(&engine, &config.data_dir, config.node_id, &config.members)?;
        crate::backup::remove_leftovers(&config.data_dir);
        let derived = DerivedStore::open(engine.clone()).context("open the derived data")?;

        let peers = PeerChannels::new(
            &config.cluster_secret,
            config.bind_ip,
            config.dialer.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let opener = partition::Opener {
            node_id: config.node_id,
            engine: engine.clone(),
            peers,
            raft_config: Arc::new(raft_config(&config.raft)?),
            queue: crate::batcher::QueueBounds {
                proposals: config.raft.proposal_queue,
                bytes: config.raft.proposal_queue_bytes,
            },
            partitions: config.partitions,
            state_cache_mib: config.engine.state_cache_mib,
        };
        let groups = Groups::default();
        groups.insert(
            opener
                .open(PartitionId::META, Arc::new(MetaHandler))
                .await?,
        );
        let node = Arc::new(LogNode {
            config,
            engine,
            derived,
            handler,
            opener,
            groups,
            incarnation: dir.incarnation,
            fresh: dir.created,
            forming: std::sync::atomic::AtomicBool::new(false),
            upgraded: std::sync::atomic::AtomicBool::new(false),
            map: watch::Sender::new(None),
            hosted: watch::Sender::new(BTreeSet::new()),
            handovers: Mutex::default(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            stopping: watch::Sender::new(false),
            stepped_away: std::sync::atomic::AtomicBool::new(false),
            elections_open: Mutex::new(false),
            damage: Arc::default(),
        });
        let held = node.partitions_with_state()?;
        let upgraded = !held.is_empty() && !node.has_raft_state(PartitionId::META)?;
        node.upgraded
            .store(upgraded, std::sync::atomic::Ordering::Relaxed);
        let (placed, forming) = node.placement_at_start().await?;
        node.forming
            .store(forming, std::sync::atomic::Ordering::Relaxed);
        for p in placed.into_iter().chain(held) {
            node.open_partition(p).await?;
        }
        node.map.send_replace(node.stored_map()?.map(Arc::new));
        tracing::info!(
            node = node.config.node_id,
            partitions = node.config.partitions,
            held = node.hosted.borrow().len(),
            data_dir = %node.config.data_dir.display(),
            "log node open"
        );
        tokio::spawn(tasks::open_elections(
            Arc::downgrade(&node),
            tasks::ELECTION_GRACE,
        ));
        let every = Duration::from_millis(node.config.raft.heartbeat_ms);
        tokio::spawn(tasks::send_heartbeats(Arc::downgrade(&node), every));
        tokio::spawn(damage::keep_leaderships_away(
            Arc::downgrade(&node),
            node.damage.clone(),
            node.stopping.subscribe(),
        ));
        tokio::spawn(tasks::publish_map(Arc::downgrade(&node)));
        tokio::spawn(tasks::follow_map(Arc::downgrade(&node)));
        tokio::spawn(crate::placement::driver::run(Arc::downgrade(&node)));
        tokio::spawn(stop_on_engine_failure(
            Arc::downgrade(&node),
            node.engine.failure(),
            node.stopping.subscribe(),
        ));
        let weak = Arc::downgrade(&node);
        std::thread::Builder::new()
            .name("disk-watch".into())
            .spawn(move || tasks::watch_disk(weak))
            .context("start the disk-watch thread")?;
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Whether this node currently leads `p` (as its Raft metrics say; may be stale by an
    /// election).
    pub fn is_leader(&self, p: PartitionId) -> bool {
        self.groups
            .get(p)
            .is_some_and(|part| part.leader() == Some(self.config.node_id))
    }

    /// Who leads `p` as this node knows it, asking no one: the group's own view where this node
    /// holds `p`, else the replica the partition map names (which redirects if it does not
    /// lead). None during an election, or for an unknown partition.
    pub fn leader_hint(&self, p: PartitionId) -> Option<(NodeId, String)> {
        match self.partition(p) {
            Ok(part) => {
                let status = part.status();
                Some((status.leader_id?, status.leader_addr?))
            }
            Err(ProposeError::NotLeader(hint)) => Some((hint.leader_id?, hint.leader_addr?)),
            Err(_) => None,
        }
    }

    /// The source address for connections to other nodes (None: the OS chooses). Every
    /// node-to-node connection (Raft, forwarding, presence) uses it, so faults between node
    /// addresses cut all of them.
    pub fn bind_ip(&self) -> Option<IpAddr> {
        self.config.bind_ip
    }

    /// How this node dials other nodes (plaintext or TLS); every node-to-node channel, Raft's,
    /// forwarding's and the gateways', is made with it.
    pub fn dialer(&self) -> &chat_tls::Dialer {
        &self.config.dialer
    }

    /// The cluster's nodes that are not removed, with their internal addresses, this node
    /// included: from the partition map, or the configured members before there is one.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        match self.map() {
            Some(map) => map
                .nodes
                .iter()
                .filter(|(_, n)| n.state != crate::placement::NodeState::Removed)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            None => self.config.members.clone(),
        }
    }

    /// The cluster's partition count P (partitions are `0..P`; a node holds some of them).
    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    /// The data partitions this node holds a replica of (voter or learner), in id order.
    pub fn hosted(&self) -> Vec<PartitionId> {
        self.hosted.borrow().iter().copied().collect()
    }

    /// Keep one task per partition this node holds: `start(p)` is spawned for each held now
    /// (before this returns) and for each moved here later. A partition's task is started
    /// again only once the previous one has ended, so two never run at once; a task should end
    /// when its partition moves away (its reads and waits then fail). A task that ends while
    /// the partition is still held is started again within a second.
    pub fn spawn_per_partition<F, Fut>(self: &Arc<Self>, start: F)
    where
        F: Fn(PartitionId) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks: BTreeMap<PartitionId, tokio::task::JoinHandle<()>> = self
            .hosted()
            .into_iter()
            .map(|p| (p, tokio::spawn(start(p))))
            .collect();
        let mut hosted = self.watch_hosted();
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    changed = hosted.changed() => if changed.is_err() { return },
                    _ = ticks.tick() => {}
                }
                let Some(node) = node.upgrade() else { return };
                if node.is_stopped() {
                    return;
                }
                tasks.retain(|_, task| !task.is_finished());
                for p in node.hosted() {
                    tasks.entry(p).or_insert_with(|| tokio::spawn(start(p)));
                }
            }
        });
    }

    /// Whether this node holds a replica of `p`.
    pub fn hosts(&self, p: PartitionId) -> bool {
        self.hosted.borrow().contains(&p)
    }

    /// Follow the partitions this node holds as they change (a partition moved here or away).
    pub fn watch_hosted(&self) -> watch::Receiver<BTreeSet<PartitionId>> {
        self.hosted.subscribe()
    }

    /// Read every stored record and check its crc32 (blocking; run it off the runtime): how
    /// many were checked, and one line per damaged record naming its column family and key. The
    /// data partitions with damaged records are marked damaged (see `damage.rs`).
    pub fn verify_checksums(&self) -> Result<(u64, Vec<String>), StoreError> {
        let (checked, damaged) = self.engine.verify_all()?;
        let mut errors = Vec::with_capacity(damaged.len());
        for (partition, record) in damaged {
            errors.push(record.to_string());
            // A data partition this node holds is marked as a read that met the record would.
            if let Some(p) = partition.filter(|p| *p != PartitionId::META && self.hosts(*p)) {
                let _ = self.note::<()>(p, Err(StoreError::Corrupt(record)));
            }
        }
        Ok((checked, errors))
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

    /// The data disk's state now (ok, low, full): what else writes to the data dir (the media
    /// store) stops at `Low` so the log keeps its reserve.
    pub fn disk_state(&self) -> crate::DiskState {
        self.engine.disk().state()
    }

    /// Where layers above keep data derived from the log (read models).
    pub fn derived(&self) -> DerivedStore {
        self.derived.clone()
    }

    /// The tonic service peers call for Raft RPC, behind the cluster-secret check.
    pub fn raft_service(&self) -> InterceptedService<RaftServiceServer<RaftServer>, SecretCheck> {
        let groups = Arc::new(self.groups.clone());
        let server = RaftServiceServer::new(RaftServer::new(groups, self.config.partitions))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, self.internal_check())
    }

    /// The interceptor of this node's other internal services (secret and protocol version).
    pub fn internal_check(&self) -> SecretCheck {
        SecretCheck::internal(&self.config.cluster_secret, self.config.node_id)
    }

    /// The interceptor of the admin API (the secret only).
    pub fn admin_check(&self) -> SecretCheck {
        SecretCheck::admin(&self.config.cluster_secret)
    }

    /// The placement service peers call to change the map and move replicas.
    pub fn placement_service(
        self: &Arc<Self>,
    ) -> InterceptedService<PlacementServer<PlacementService>, SecretCheck> {
        let server = PlacementServer::new(PlacementService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, self.internal_check())
    }

    /// The service peers call to read partitions this node holds (`crate::remote`).
    pub fn replica_service(
        self: &Arc<Self>,
    ) -> InterceptedService<
        chat_proto::raft::replica_server::ReplicaServer<crate::remote::ReplicaService>,
        SecretCheck,
    > {
        InterceptedService::new(
            crate::remote::ReplicaService::server(self.clone()),
            self.internal_check(),
        )
    }

    /// Reads of any partition, from this node's replica or another's.
    pub fn replicas(self: &Arc<Self>) -> crate::remote::Replicas {
        crate::remote::Replicas::new(self.clone())
    }

    /// A client of `node`'s replica-read service, and the secret to send with each request.
    pub(crate) fn replica_client(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<
        (
            chat_proto::raft::replica_client::ReplicaClient<tonic::transport::Channel>,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        ),
        String,
    > {
        self.opener.peers.replica(node, addr)
    }

    /// `p`'s group on this node; a partition held elsewhere answers with a redirect to a
    /// replica the map names (`NotLeader` with the map's epoch).
    fn partition(&self, p: PartitionId) -> Result<Arc<Partition>, ProposeError> {
        if let Some(part) = self.groups.get(p) {
            return Ok(part);
        }
        if p.0 >= self.config.partitions && p != PartitionId::META {
            return Err(ProposeError::UnknownPartition(p));
        }
        Err(self.redirect(p))
    }

    /// Replicate `commands` (in this order, contiguously) and return each one's outcome once
    /// they are committed by a quorum (durably on each counted voter) and applied here.
    /// Concurrent proposals to a partition share Raft entries (see [`crate::batcher`]).
    ///
    /// A leader whose disk is below its reserve refuses with [`ProposeError::DiskFull`]; other
    /// nodes answer `NotLeader` as usual, so a proposal is judged by the disk that takes it first.
    /// The metadata group is exempt: its changes are a few hundred bytes, rare, and what an
    /// operator needs most on a full disk (the first map, moving replicas off a full node).
    pub async fn propose(
        &self,
        p: PartitionId,
        commands: Vec<Vec<u8>>,
    ) -> Result<ProposalOutcome, ProposeError> {
        let part = self.partition(p)?;
        self.refuse_while_handing_over(p)?;
        if p != PartitionId::META && self.is_leader(p) {
            self.engine
                .disk()
                .admit(commands.len())
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
        let read = || {
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
        };
        self.note(p, read())
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
        let value = self.engine.get(
            cf::STATE,
            &codec::state_key(p, codec::StateNs::Handler, key),
        );
        self.note(p, value)
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
        let entries = self
            .engine
            .scan_from(cf::STATE, &start, end)
            .take(limit)
            .map(|item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
            .collect();
        self.note(p, entries)
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
        self.refuse_while_handing_over(p)?;
        part.raft.ensure_linearizable().await.map_err(|e| {
            let status = part.status();
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
        let offset = *part.offsets.borrow();
        Ok(offset)
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
    /// `chatd_state_cache_bytes`), so an SRE sees memory and WAL level off (or not), how many
    /// groups this node leads (`chatd_raft_leading_partitions`), and per group (label
    /// `partition`, `meta` for the metadata group) where it stands: `chatd_raft_term`,
    /// `chatd_raft_role`, the commit and apply lags and the entries since the last snapshot.
    fn publish_sizes(&self) {
        self.engine.publish_metrics();
        let groups = self.groups.all();
        let cached: u64 = groups.iter().map(|p| p.cache.bytes()).sum();
        metrics::gauge!("chatd_state_cache_bytes").set(cached as f64);
        let mut leading = 0;
        for part in &groups {
            let status = part.status();
            let replication_lag = {
                let metrics = part.raft.metrics();
                let m = metrics.borrow();
                m.replication.as_ref().map(|progress| {
                    progress
                        .values()
                        .map(|matched| {
                            let matched = matched.as_ref().map(|l| l.index).unwrap_or_default();
                            status.last_log_index.saturating_sub(matched)
                        })
                        .max()
                        .unwrap_or_default()
                })
            };
            let partition = if part.id == PartitionId::META {
                "meta".to_string()
            } else {
                part.id.0.to_string()
            };
            publish_group(&partition, &status, replication_lag);
            leading += usize::from(status.role == "leader");
        }
        metrics::gauge!("chatd_raft_leading_partitions").set(leading as f64);
    }

    /// Role, term, leader and progress of every group on this node.
    pub fn status(&self) -> NodeStatus {
        let (meta, partitions): (Vec<_>, Vec<_>) = self
            .groups
            .all()
            .iter()
            .map(|part| PartitionStatus {
                damage: self.damage.get(part.id),
                ..part.status()
            })
            .partition(|s| s.partition == PartitionId::META);
        NodeStatus {
            node_id: self.config.node_id,
            partitions,
            meta: meta.into_iter().next(),
            map_epoch: self.map().map(|m| m.epoch.0),
            disk: self.engine.disk().status(),
        }
    }

    /// A consistent checkpoint of this node's whole database, for a backup (blocking: run it
    /// off the runtime). With it: this node's id, partition count, data format, and how many
    /// nodes its partition map names.
    pub fn checkpoint(&self) -> Result<(crate::backup::Checkpoint, BackupInfo), StoreError> {
        let checkpoint = crate::backup::checkpoint(&self.engine, &self.config.data_dir)?;
        let cluster_nodes = self
            .map()
            .map(|m| {
                m.nodes
                    .values()
                    .filter(|n| n.state != crate::placement::NodeState::Removed)
                    .count()
            })
            .unwrap_or(1);
        let info = BackupInfo {
            node_id: self.config.node_id,
            partitions: self.config.partitions,
            data_format: crate::wire::DATA_FORMAT,
            cluster_nodes: cluster_nodes as u32,
        };
        Ok((checkpoint, info))
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
        self.stopping.send_replace(true);
        for part in self.groups.all() {
            if let Err(e) = part.raft.shutdown().await {
                tracing::warn!(partition = %part.id, error = %e, "raft shutdown");
            }
        }
        tracing::info!(node = self.config.node_id, "log node stopped");
    }
}

/// Fail-stop: once the storage engine has failed (a write or WAL sync the disk refused, see
/// `engine.rs`), stop the node, so nothing more is acknowledged and the process exits for its
/// supervisor to start again; the restart recovers what the WAL holds and catches up from peers.
async fn stop_on_engine_failure(
    node: std::sync::Weak<LogNode>,
    mut failure: watch::Receiver<Option<String>>,
    mut stopping: watch::Receiver<bool>,
) {
    let why = tokio::select! {
        failed = failure.wait_for(Option::is_some) => match failed {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => return, // the engine was dropped
        },
        _ = stopping.wait_for(|s| *s) => return,
    };
    let Some(node) = node.upgrade() else { return };
    tracing::error!(
        node = node.config.node_id,
        error = %why,
        "the data disk failed a write or sync: stopping this node so it acknowledges nothing it \
         could not make durable (fail-stop); start it again once the disk is healthy"
    );
    metrics::counter!("chatd_storage_failures_total").increment(1);
    node.shutdown().await;
}

/// One group's gauges. Terms only rise, once per election: a scraper that sees one move counts
/// an election (a stall a client felt) without this node watching every group's metrics.
fn publish_group(partition: &str, s: &PartitionStatus, replication_lag: Option<u64>) {
    let role = match s.role {
        "follower" => 0.0,
        "candidate" => 1.0,
        "leader" => 2.0,
        "learner" => 3.0,
        _ => 4.0,
    };
    let p = partition.to_string();
    metrics::gauge!("chatd_raft_term", "partition" => p.clone()).set(s.term as f64);
    metrics::gauge!("chatd_raft_role", "partition" => p.clone()).set(role);
    // Appended here but not applied yet (uncommitted entries included).
    let apply_lag = s.last_log_index.saturating_sub(s.applied_index);
    metrics::gauge!("chatd_raft_apply_lag_entries", "partition" => p.clone()).set(apply_lag as f64);
    // What a restart or a new replica would replay beyond the snapshot.
    let since = s
        .last_log_index
        .saturating_sub(s.snapshot_index.unwrap_or_default());
    metrics::gauge!("chatd_raft_entries_since_snapshot", "partition" => p.clone())
        .set(since as f64);
    // At the leader: how far its furthest-behind follower is (0 elsewhere).
    metrics::gauge!("chatd_raft_replication_lag_entries", "partition" => p)
        .set(replication_lag.unwrap_or_default() as f64);
}

fn raft_config(t: &RaftTuning) -> anyhow::Result<Config> {
    anyhow::ensure!(
        t.proposal_queue > 0,
        "[raft] proposal_queue must be positive (every write would be refused)"
    );
    anyhow::ensure!(
        (1..=u32::MAX as usize).contains(&t.proposal_queue_bytes),
        "[raft] proposal_queue_bytes must be between 1 and {}",
        u32::MAX
    );
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

/// What a backup records about the node it was taken of.
#[derive(Clone, Copy, Debug)]
pub struct BackupInfo {
    pub node_id: NodeId,
    pub partitions: u32,
    pub data_format: u32,
    pub cluster_nodes: u32,
}
