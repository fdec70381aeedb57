//! A harness for tests that run real `chatd` processes on loopback ports: start, `kill -9`,
//! restart on the same data dir, and talk to the nodes through the admin API.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod load;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_proto::admin::*;
use chat_proto::{connect_admin, AdminClient, LeaderHint};
use tempfile::TempDir;

pub const SECRET: &str = "test-cluster-secret";

/// Raft settings that make failover and snapshot installs happen quickly in tests.
pub const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_after_logs = 64\nlogs_kept_after_snapshot = 0\n";

pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: TempDir,
    pub nodes: Vec<NodeProc>,
    pub partitions: u32,
}

/// Write node `id`'s config to `path`: `extra` TOML (`{id}` stands for the node's id; keys
/// before its first table go to the top level), the test Raft settings, and `peers` (the
/// `[peers]` table's lines).
fn write_config(
    path: &std::path::Path,
    id: u64,
    data_dir: &std::path::Path,
    partitions: u32,
    extra: &str,
    peers: &str,
) {
    let extra = extra.replace("{id}", &id.to_string());
    let (top, tables) = match extra.find('[') {
        Some(i) => extra.split_at(i),
        None => (extra.as_str(), ""),
    };
    std::fs::write(
        path,
        format!(
            "node_id = {id}\ndata_dir = \"{}\"\npartitions = {partitions}\ncluster_secret = \"{SECRET}\"\n{top}{FAST_RAFT}{tables}[peers]\n{peers}",
            data_dir.display()
        ),
    )
    .unwrap();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Write configs for `n` nodes and start them all.
    pub fn start(n: u64, partitions: u32) -> Cluster {
        Cluster::start_with(n, partitions, "")
    }

    /// Like [`Cluster::start`], with `extra` TOML in every config: top-level keys first, then
    /// tables (e.g. `[gateway]`); `{id}` stands for the node's id.
    pub fn start_with(n: u64, partitions: u32, extra: &str) -> Cluster {
        Cluster::start_on(n, partitions, extra, &BTreeMap::new())
    }

    /// Like [`Cluster::start_with`], with some nodes' data dirs elsewhere (node id → dir), e.g.
    /// on a small filesystem.
    pub fn start_on(
        n: u64,
        partitions: u32,
        extra: &str,
        data_dirs: &BTreeMap<u64, PathBuf>,
    ) -> Cluster {
        Cluster::start_each(n, partitions, |_| extra.to_string(), data_dirs)
    }

    /// Like [`Cluster::start_on`], with each node's `extra` TOML from `extra(id)`.
    pub fn start_each(
        n: u64,
        partitions: u32,
        extra: impl Fn(u64) -> String,
        data_dirs: &BTreeMap<u64, PathBuf>,
    ) -> Cluster {
        let dir = TempDir::new().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: String = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{} = \"{a}\"\n", i + 1))
            .collect();
        let nodes = (1..=n)
            .map(|id| {
                let data_dir = data_dirs
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| dir.path().join(format!("n{id}")));
                let config = dir.path().join(format!("n{id}.toml"));
                write_config(&config, id, &data_dir, partitions, &extra(id), &peers);
                NodeProc {
                    id,
                    addr: addrs[id as usize - 1].clone(),
                    data_dir,
                    config,
                    log: dir.path().join(format!("n{id}.log")),
                    child: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            nodes,
            partitions,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Configure a new node (the next id) to join the running cluster — `join = true`, its
    /// own address its only peer — and start it. It holds nothing until it is added to the map
    /// (`AddNode`). Returns its id.
    pub fn add_joining(&mut self, extra: &str) -> u64 {
        let addr = format!("127.0.0.1:{}", free_port());
        self.add_joining_at(extra, &addr)
    }

    /// [`Cluster::add_joining`] on a given address (say, a dead node's: a machine replaced by
    /// a new node id on the same host and port).
    pub fn add_joining_at(&mut self, extra: &str, addr: &str) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let addr = addr.to_string();
        let data_dir = self.dir.path().join(format!("n{id}"));
        let config = self.dir.path().join(format!("n{id}.toml"));
        let extra = format!("join = true\n{extra}");
        let peers = format!("{id} = \"{addr}\"\n");
        write_config(&config, id, &data_dir, self.partitions, &extra, &peers);
        self.nodes.push(NodeProc {
            id,
            addr,
            data_dir,
            config,
            log: self.dir.path().join(format!("n{id}.log")),
            child: None,
        });
        self.spawn(id);
        id
    }

    /// Whether node `id`'s process has exited (and how), without waiting.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[id as usize - 1];
        let status = node.child.as_mut()?.try_wait().unwrap();
        if status.is_some() {
            node.child = None;
        }
        status
    }

    /// Wait until node `id`'s process exits by itself; panics saying `what` after `timeout`.
    pub async fn wait_for_exit(
        &mut self,
        id: u64,
        timeout: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited(id) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partition map as node `via` has it.
    pub async fn map(&self, via: u64) -> chat_proto::log::PartitionMap {
        self.admin(via)
            .await
            .get_map(GetMapRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Wait until node `via`'s map satisfies `done` (polling; panics with the map after
    /// `timeout`).
    pub async fn wait_for_map(
        &self,
        via: u64,
        timeout: Duration,
        what: &str,
        done: impl Fn(&chat_proto::log::PartitionMap) -> bool,
    ) -> chat_proto::log::PartitionMap {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(reply) = self.admin(via).await.get_map(GetMapRequest {}).await {
                let map = reply.into_inner();
                if done(&map) {
                    return map;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {timeout:?}; the map: {map:#?}"
                );
            }
            assert!(Instant::now() < deadline, "{what}: node {via} has no map");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    /// Start (or restart) node `id` on its data dir.
    pub fn spawn(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("--config")
            .arg(&node.config)
            // `CHATD_TEST_LOG` overrides the nodes' log filter when a test needs more detail.
            .env(
                "RUST_LOG",
                std::env::var("CHATD_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chatd");
        node.child = Some(child);
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill9(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("node is running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// Send SIGTERM to node `id` and wait for a clean exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("node is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// An admin client to node `id`, retrying while it starts.
    pub async fn admin(&self, id: u64) -> AdminClient {
        let addr = self.node(id).addr.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match connect_admin(&addr, SECRET).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!(
                    "node {id} at {addr} did not come up: {e}\n{}",
                    self.log_of(id)
                ),
            }
        }
    }

    /// Node `id`'s status, retrying while it (re)starts; panics with its log after 20 s, or
    /// when one try gets no answer in a minute (a node that stopped answering must fail the
    /// test, not hang it).
    pub async fn status(&self, id: u64) -> StatusReply {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let asked = async { self.admin(id).await.status(StatusRequest {}).await };
            let answer = tokio::time::timeout(Duration::from_secs(60), asked)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "node {id} did not answer status in 60 s\n{}",
                        self.log_of(id)
                    )
                });
            match answer {
                Ok(reply) => return reply.into_inner(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("status of node {id}: {e}\n{}", self.log_of(id)),
            }
        }
    }

    /// Wait until every partition has a leader that node `via` knows of; returns partition → leader.
    pub async fn wait_for_leaders(&self, via: u64, timeout: Duration) -> BTreeMap<u32, u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(via).await;
            let leaders = status.leaders();
            if leaders.len() == self.partitions as usize {
                return leaders;
            }
            if Instant::now() >= deadline {
                let log = self.log_of(via);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "no leader for every partition via node {via}: {status:?}\nits log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Append `records` to partition `p` on whichever node leads it, following "not leader" hints
    /// and retrying through elections (only over `alive` nodes) until `timeout`.
    ///
    /// A retry after an ambiguous failure could append twice; callers that count records use
    /// unique payloads and check the log, not the number of calls.
    pub async fn append(
        &self,
        alive: &[u64],
        p: u32,
        records: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> AppendReply {
        let deadline = Instant::now() + timeout;
        let mut target = alive[0];
        let mut last_err = String::new();
        while Instant::now() < deadline {
            let mut client = self.admin(target).await;
            let req = AppendRequest {
                partition: p,
                records: records.clone(),
            };
            match client.append(req).await {
                Ok(reply) => return reply.into_inner(),
                Err(status) => {
                    last_err = status.to_string();
                    let hint = LeaderHint::from_status(&status)
                        .and_then(|h| h.leader_id)
                        .filter(|id| alive.contains(id));
                    target = hint.unwrap_or_else(|| {
                        alive[(alive.iter().position(|&a| a == target).unwrap() + 1) % alive.len()]
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("append to partition {p} did not succeed within {timeout:?}: {last_err}");
    }

    /// Assert that nodes `ids` hold byte-identical event logs of partition `p`. They are compared
    /// at one offset: a replica may not have applied the newest entries yet (follow-ups land in
    /// users' partitions after the sends they follow), so this waits up to `timeout` for the
    /// nodes to report the same last offset first.
    pub async fn assert_identical_replicas(&self, p: u32, ids: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut replies = Vec::new();
            for &id in ids {
                replies.push(self.digest(id, p).await);
            }
            let offsets: Vec<u64> = replies.iter().map(|d| d.last_offset).collect();
            if offsets.windows(2).all(|w| w[0] == w[1]) {
                let digests: std::collections::BTreeSet<&Vec<u8>> =
                    replies.iter().map(|d| &d.sha256).collect();
                assert_eq!(
                    digests.len(),
                    1,
                    "replicas {ids:?} of partition {p} differ at offset {}",
                    offsets[0]
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas {ids:?} of partition {p} stay at different offsets: {offsets:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn digest(&self, id: u64, p: u32) -> DigestReply {
        let mut client = self.admin(id).await;
        client
            .partition_digest(DigestRequest { partition: p })
            .await
            .unwrap()
            .into_inner()
    }

    /// Read every event of `p` from node `id`.
    pub async fn read_all(&self, id: u64, p: u32) -> Vec<chat_proto::log::LogEvent> {
        let mut client = self.admin(id).await;
        let mut events = Vec::new();
        loop {
            let reply = client
                .read_events(ReadEventsRequest {
                    partition: p,
                    from_offset: events.len() as u64 + 1,
                    limit: 5000,
                })
                .await
                .unwrap()
                .into_inner();
            if reply.events.is_empty() {
                return events;
            }
            events.extend(reply.events);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A `chat.v1.Sequencer` client carrying the cluster secret.
pub type SeqClient = chat_proto::chat_v1::sequencer_client::SequencerClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        chat_proto::AttachSecret,
    >,
>;

impl Cluster {
    /// A sequencer client to node `id` (connects lazily: a dead node fails the call, not this).
    pub fn sequencer(&self, id: u64) -> SeqClient {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.node(id).addr))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
        chat_proto::chat_v1::sequencer_client::SequencerClient::with_interceptor(
            channel,
            chat_proto::AttachSecret::new(SECRET).unwrap(),
        )
    }
}

/// Register `handle` through the device API with its first device (id 1): a client that
/// authenticates as that device, and the device's bearer token.
pub async fn register(addr: &str, handle: &str) -> (chat_client::ChatClient, String) {
    let mut client = chat_client::ChatClient::connect(addr).await.unwrap();
    let token = client.register(handle, 1).await.unwrap().token;
    (client.with_token(&token).unwrap(), token)
}

/// A raw device stream to `addr` with no cursors, past its SyncComplete (each frame within
/// `wait`), and the frames before it (the backlog). Panics if the stream ends first.
pub async fn synced_stream(
    addr: &str,
    token: &str,
    wait: Duration,
) -> (
    chat_client::DeviceStream,
    Vec<chat_proto::chat_v1::server_frame::Kind>,
) {
    use chat_proto::chat_v1::server_frame::Kind;
    let mut stream = chat_client::ChatClient::connect(addr)
        .await
        .unwrap()
        .open_stream(token, &BTreeMap::new())
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(Kind::SyncComplete(_)))) => return (stream, before),
            Ok(Some(Ok(frame))) => before.push(frame),
            Ok(other) => panic!("the stream ended before SyncComplete: {other:?}"),
            Err(_) => panic!("no SyncComplete within {wait:?}"),
        }
    }
}

/// The messages among `frames`.
pub fn messages_of(
    frames: Vec<chat_proto::chat_v1::server_frame::Kind>,
) -> Vec<chat_proto::chat_v1::Message> {
    frames
        .into_iter()
        .filter_map(|f| match f {
            chat_proto::chat_v1::server_frame::Kind::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The events of `device` until its SyncComplete (each within `wait`); the backlog messages
/// among them. Panics if the device disconnects or stops first.
pub async fn until_synced(
    device: &mut chat_client::Device,
    wait: Duration,
) -> Vec<chat_proto::chat_v1::Message> {
    use chat_client::DeviceEvent;
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(wait, device.next_event()).await {
            Ok(Some(DeviceEvent::Synced)) => return messages,
            Ok(Some(DeviceEvent::Message(m))) => messages.push(m),
            Ok(Some(DeviceEvent::Disconnected(s))) => panic!("disconnected: {s:?}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("device stopped"),
            Err(_) => panic!("no SyncComplete within {wait:?}"),
        }
    }
}

/// gRPC health's SERVING and NOT_SERVING.
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

/// Poll `addr`'s health until it answers `want`, for up to `wait`.
pub async fn wait_for_health(addr: &str, want: i32, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let now = health(addr).await;
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: health {now:?}, waited for {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's gRPC health for the device API (1 SERVING, 2 NOT_SERVING), or None when it does
/// not answer (not listening, stopped).
pub async fn health(addr: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.Chat".into(),
    };
    Some(client.check(request).await.ok()?.into_inner().status)
}

/// A node's Prometheus page (`metrics_listen` at `addr`), fetched as a scraper would (plain
/// HTTP/1.0 GET).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: chatd\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    page
}

/// A bare gRPC client to `addr`, ready for calls with a [`RawCodec`].
pub async fn raw_grpc(addr: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

/// A gRPC codec that sends messages as the bytes given (so a test can send what is not protobuf)
/// and decodes replies as `D`.
pub struct RawCodec<D>(std::marker::PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        RawCodec(std::marker::PhantomData)
    }
}

pub struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = <tonic_prost::ProstCodec<(), D> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<(), D>::default())
    }
}

/// No partition has a move under way (only voters).
pub fn settled(map: &chat_proto::log::PartitionMap) -> bool {
    map.replicas
        .values()
        .all(|r| r.learners.is_empty() && r.leaving.is_empty())
}

/// Replicas per node that is not removed.
pub fn replica_counts(map: &chat_proto::log::PartitionMap) -> BTreeMap<u64, usize> {
    let removed = chat_proto::log::NodeState::NodeRemoved as i32;
    let mut counts: BTreeMap<u64, usize> = map
        .nodes
        .iter()
        .filter(|(_, n)| n.state != removed)
        .map(|(id, _)| (*id, 0))
        .collect();
    for r in map.replicas.values() {
        for v in &r.voters {
            *counts.entry(*v).or_default() += 1;
        }
    }
    counts
}

/// Settled, and the replicas spread over the nodes not removed within one of each other.
pub fn balanced(map: &chat_proto::log::PartitionMap) -> bool {
    let counts = replica_counts(map);
    let (min, max) = (counts.values().min(), counts.values().max());
    settled(map) && max.unwrap_or(&0) - min.unwrap_or(&0) <= 1
}

/// Run `python3 <repo>/<script> args…` to its end; whether it succeeded, its stdout, its stderr.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn run_python(script: &str, args: &[&str]) -> (bool, String, String) {
    let script = format!("{}/../{script}", env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .args(&args)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
